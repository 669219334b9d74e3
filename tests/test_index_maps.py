"""Property tests for index maps: round trips, composition, hand examples."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spa.analysis.index_maps import (
    Block,
    Composed,
    Identity,
    Offset,
    Permutation,
    Tile,
    as_index_set,
    compose,
)

SIZES = st.integers(min_value=1, max_value=24)


@st.composite
def lossless_maps(draw, source: int | None = None):
    """A map that drops no index, with the given source size."""
    size = source if source is not None else draw(SIZES)
    kind = draw(st.sampled_from(["identity", "offset", "block", "tile", "perm"]))
    if kind == "identity":
        return Identity(size)
    if kind == "offset":
        offset = draw(st.integers(0, 8))
        return Offset(size, size + offset + draw(st.integers(0, 8)), offset)
    if kind == "block":
        return Block(size, draw(st.integers(1, 4)))
    if kind == "tile":
        return Tile(size, draw(st.integers(1, 4)))
    return Permutation(tuple(draw(st.permutations(range(size)))))


@st.composite
def chains(draw):
    first = draw(lossless_maps())
    maps = [first]
    for _ in range(draw(st.integers(0, 3))):
        maps.append(draw(lossless_maps(source=maps[-1].target_size)))
    return compose(*maps)


def subsets(size: int):
    return st.lists(st.integers(0, size - 1), max_size=size).map(as_index_set)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_round_trip_of_lossless_maps(data) -> None:
    index_map = data.draw(chains())
    kept = data.draw(subsets(index_map.source_size))
    image = index_map.forward(kept)
    np.testing.assert_array_equal(index_map.inverse(image), kept)
    assert image.size == 0 or image.max() < index_map.target_size


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_forward_of_inverse_is_contained(data) -> None:
    index_map = data.draw(chains())
    target = data.draw(subsets(index_map.target_size))
    back = index_map.forward(index_map.inverse(target))
    assert np.isin(back, target).all()


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_composition_is_associative(data) -> None:
    first = data.draw(lossless_maps())
    second = data.draw(lossless_maps(source=first.target_size))
    third = data.draw(lossless_maps(source=second.target_size))
    kept = data.draw(subsets(first.source_size))
    left = compose(compose(first, second), third).forward(kept)
    right = compose(first, compose(second, third)).forward(kept)
    np.testing.assert_array_equal(left, right)


@settings(max_examples=100, deadline=None)
@given(size=st.integers(4, 20), start=st.integers(0, 10), data=st.data())
def test_slice_window_round_trip_inside_window(size: int, start: int, data) -> None:
    length = data.draw(st.integers(1, max(1, size - min(start, size - 1))))
    start = min(start, size - 1)
    window = Offset(size, length, -start)  # Slice [start, start + length)
    kept = data.draw(subsets(size))
    inside = kept[(kept >= start) & (kept < start + length)]
    back = window.inverse(window.forward(kept))
    np.testing.assert_array_equal(back[(back >= start) & (back < start + length)], inside)


def test_hand_examples() -> None:
    # Concat of a 3-channel value after a 2-channel one: channels 0, 2 -> 2, 4.
    np.testing.assert_array_equal(Offset(3, 5, 2).forward(np.array([0, 2])), [2, 4])
    # Flatten of 2 channels x 3 pixels before Gemm.
    np.testing.assert_array_equal(Block(2, 3).forward(np.array([1])), [3, 4, 5])
    assert Block(2, 3).inverse(np.array([0, 1, 2, 3])).tolist() == [0]  # block 1 incomplete
    # head_dim index 1 of 3 heads with head_dim 4 -> channels 1, 5, 9.
    np.testing.assert_array_equal(Tile(4, 3).forward(np.array([1])), [1, 5, 9])
    # RoPE half pairs (head_dim 8): rotary index 1 keeps 1 and 5 together.
    np.testing.assert_array_equal(Tile(4, 2).forward(np.array([1])), [1, 5])
    # GQA: 2 KV heads each serving 3 query heads; kv head 1 -> query heads 3, 4, 5.
    np.testing.assert_array_equal(Block(2, 3).forward(np.array([1])), [3, 4, 5])
    # ShuffleNet channel shuffle (groups 2, 3 channels per group).
    shuffle = Permutation((0, 2, 4, 1, 3, 5))
    np.testing.assert_array_equal(shuffle.forward(np.array([1, 3])), [1, 2])
    np.testing.assert_array_equal(shuffle.inverse(np.array([1, 2])), [1, 3])
    chain = compose(Identity(2), Block(2, 3), Offset(6, 10, 4))
    assert isinstance(chain, Composed) and len(chain.maps) == 2
    np.testing.assert_array_equal(chain.forward(np.array([0])), [4, 5, 6])


def test_errors() -> None:
    with pytest.raises(ValueError, match="exactly once"):
        Permutation((0, 0, 1))
    with pytest.raises(ValueError, match="cannot compose"):
        Composed((Block(2, 3), Identity(5)))
    with pytest.raises(IndexError, match="outside"):
        Identity(3).forward(np.array([3]))
