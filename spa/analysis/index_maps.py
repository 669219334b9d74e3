"""Index maps: how the channels of a group's root land in one member's axis.

The analyzer couples channel spaces (one axis of one value). Each coupling is
labelled with a map from the indices of one space to the indices of another;
a group member carries the composition of the maps along its path from the
root. A plan keeps a set of root indices; ``forward`` turns it into the
indices to keep on each member.

All maps act on sets of indices (sorted, unique ``int64`` arrays) because some
are one-to-many: a channel feeding a Flatten becomes ``block`` features, a KV
head becomes ``n_rep`` query heads. ``inverse`` is the set of source indices
whose whole image lies inside the given target set, so
``forward(inverse(T)) ⊆ T`` for every map, and ``inverse(forward(S)) == S``
for every map that drops no index (all but a Slice window, where the round
trip holds inside the window).

Kinds:

* :class:`Identity`: elementwise ops, normalisation, pooling.
* :class:`Offset`: a source placed at ``offset`` in a larger axis (Concat), or
  a window of a larger axis (Split/Slice, with a negative offset).
* :class:`Block`: index ``i`` -> ``i*block … i*block+block-1`` (Flatten before
  Gemm; heads -> channels with ``block=head_dim``; GQA KV head -> query heads).
* :class:`Tile`: index ``i`` -> ``i + k*period`` for ``k < count`` (head_dim ->
  channels across heads; RoPE half-pairs with ``period=head_dim/2, count=2``).
* :class:`Permutation`: channel shuffle, explicit index maps.
* :class:`Composed`: maps applied left to right.
* :class:`Lookup`: an explicit table, what groups store for their members.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = [
    "Block",
    "Composed",
    "Identity",
    "IndexMap",
    "Lookup",
    "Offset",
    "Permutation",
    "Tile",
    "as_index_set",
    "compose",
]

IndexSet = np.ndarray


def as_index_set(indices: Iterable[int] | np.ndarray) -> IndexSet:
    """Sorted unique int64 array."""
    return np.unique(
        np.asarray(
            list(indices) if not isinstance(indices, np.ndarray) else indices, dtype=np.int64
        )
    )


@runtime_checkable
class IndexMap(Protocol):
    """A map between the index sets of two channel spaces."""

    @property
    def source_size(self) -> int: ...

    @property
    def target_size(self) -> int: ...

    def forward(self, indices: IndexSet) -> IndexSet: ...

    def inverse(self, indices: IndexSet) -> IndexSet: ...


def _check_range(indices: IndexSet, size: int, where: str) -> IndexSet:
    indices = as_index_set(indices)
    if indices.size and (indices[0] < 0 or indices[-1] >= size):
        raise IndexError(f"{where}: indices outside [0, {size})")
    return indices


def _contained_preimage(index_map: IndexMap, indices: IndexSet) -> IndexSet:
    """Source indices whose whole image lies in ``indices`` (generic inverse)."""
    target = _check_range(indices, index_map.target_size, "inverse")
    keep = [
        i
        for i in range(index_map.source_size)
        if np.isin(index_map.forward(np.array([i], dtype=np.int64)), target).all()
    ]
    return np.asarray(keep, dtype=np.int64)


@dataclasses.dataclass(frozen=True)
class Identity:
    size: int

    @property
    def source_size(self) -> int:
        return self.size

    @property
    def target_size(self) -> int:
        return self.size

    def forward(self, indices: IndexSet) -> IndexSet:
        return _check_range(indices, self.size, "Identity.forward")

    def inverse(self, indices: IndexSet) -> IndexSet:
        return _check_range(indices, self.size, "Identity.inverse")


@dataclasses.dataclass(frozen=True)
class Offset:
    """``i -> i + offset``; indices that fall outside the target are dropped."""

    source: int
    target: int
    offset: int

    @property
    def source_size(self) -> int:
        return self.source

    @property
    def target_size(self) -> int:
        return self.target

    def forward(self, indices: IndexSet) -> IndexSet:
        shifted = _check_range(indices, self.source, "Offset.forward") + self.offset
        return shifted[(shifted >= 0) & (shifted < self.target)]

    def inverse(self, indices: IndexSet) -> IndexSet:
        back = _check_range(indices, self.target, "Offset.inverse") - self.offset
        inside = back[(back >= 0) & (back < self.source)]
        if self.offset < 0 or self.source + self.offset > self.target:
            # A window: source indices outside it have an empty image, hence belong.
            outside = np.setdiff1d(np.arange(self.source), self._window())
            inside = np.union1d(inside, outside)
        return inside.astype(np.int64)

    def _window(self) -> IndexSet:
        start, stop = max(0, -self.offset), min(self.source, self.target - self.offset)
        return np.arange(start, max(start, stop), dtype=np.int64)


@dataclasses.dataclass(frozen=True)
class Block:
    """``i -> {i*block + k : k < block}`` (source ``count`` blocks)."""

    count: int
    block: int

    @property
    def source_size(self) -> int:
        return self.count

    @property
    def target_size(self) -> int:
        return self.count * self.block

    def forward(self, indices: IndexSet) -> IndexSet:
        indices = _check_range(indices, self.count, "Block.forward")
        return (indices[:, None] * self.block + np.arange(self.block)[None, :]).ravel()

    def inverse(self, indices: IndexSet) -> IndexSet:
        indices = _check_range(indices, self.target_size, "Block.inverse")
        blocks, counts = np.unique(indices // self.block, return_counts=True)
        return blocks[counts == self.block].astype(np.int64)


@dataclasses.dataclass(frozen=True)
class Tile:
    """``i -> {i + k*period : k < count}`` (source size ``period``)."""

    period: int
    count: int

    @property
    def source_size(self) -> int:
        return self.period

    @property
    def target_size(self) -> int:
        return self.period * self.count

    def forward(self, indices: IndexSet) -> IndexSet:
        indices = _check_range(indices, self.period, "Tile.forward")
        return np.sort((np.arange(self.count)[:, None] * self.period + indices[None, :]).ravel())

    def inverse(self, indices: IndexSet) -> IndexSet:
        indices = _check_range(indices, self.target_size, "Tile.inverse")
        residues, counts = np.unique(indices % self.period, return_counts=True)
        return residues[counts == self.count].astype(np.int64)


@dataclasses.dataclass(frozen=True)
class Permutation:
    """``i -> perm[i]`` (a bijection of ``range(len(perm))``)."""

    perm: tuple[int, ...]

    def __post_init__(self) -> None:
        if sorted(self.perm) != list(range(len(self.perm))):
            raise ValueError("Permutation needs each index of range(n) exactly once")

    @property
    def source_size(self) -> int:
        return len(self.perm)

    @property
    def target_size(self) -> int:
        return len(self.perm)

    def forward(self, indices: IndexSet) -> IndexSet:
        indices = _check_range(indices, len(self.perm), "Permutation.forward")
        return np.sort(np.asarray(self.perm, dtype=np.int64)[indices])

    def inverse(self, indices: IndexSet) -> IndexSet:
        indices = _check_range(indices, len(self.perm), "Permutation.inverse")
        inverse_perm = np.argsort(np.asarray(self.perm, dtype=np.int64))
        return np.sort(inverse_perm[indices])


@dataclasses.dataclass(frozen=True)
class Composed:
    """``maps[0]`` first, then ``maps[1]``, …"""

    maps: tuple[IndexMap, ...]

    def __post_init__(self) -> None:
        for first, second in zip(self.maps, self.maps[1:], strict=False):
            if first.target_size != second.source_size:
                raise ValueError(
                    f"cannot compose {first} (target {first.target_size}) with "
                    f"{second} (source {second.source_size})"
                )

    @property
    def source_size(self) -> int:
        return self.maps[0].source_size

    @property
    def target_size(self) -> int:
        return self.maps[-1].target_size

    def forward(self, indices: IndexSet) -> IndexSet:
        for index_map in self.maps:
            indices = index_map.forward(indices)
        return indices

    def inverse(self, indices: IndexSet) -> IndexSet:
        # Composition of "contained preimages" is the contained preimage of the composition
        # only for maps whose images of distinct indices are disjoint; Offset windows are not,
        # so use the generic definition.
        return _contained_preimage(self, indices)


def compose(*maps: IndexMap) -> IndexMap:
    """Compose maps left to right, dropping identities and flattening nests."""
    flat: list[IndexMap] = []
    for index_map in maps:
        parts = index_map.maps if isinstance(index_map, Composed) else (index_map,)
        flat.extend(part for part in parts if not isinstance(part, Identity))
    if not flat:
        return maps[0] if maps else Identity(0)
    if len(flat) == 1:
        return flat[0]
    return Composed(tuple(flat))


@dataclasses.dataclass(frozen=True, eq=False)
class Lookup:
    """An explicit map: row ``i`` lists the target indices of source index ``i``.

    ``rows`` is an int64 array ``[source, width]``, each row sorted with -1
    padding at the end. Groups store their members' composed maps this way so
    that long chains (DenseNet's nested Concats) cost one array each.
    """

    target: int
    rows: np.ndarray

    @staticmethod
    def identity(size: int) -> Lookup:
        return Lookup(size, np.arange(size, dtype=np.int64)[:, None])

    @staticmethod
    def of(index_map: IndexMap) -> Lookup:
        if isinstance(index_map, Lookup):
            return index_map
        if isinstance(index_map, (Identity, Offset, Block, Tile, Permutation)):
            return Lookup.identity(index_map.source_size).then(index_map)
        if isinstance(index_map, Composed):
            lookup = Lookup.identity(index_map.source_size)
            for part in index_map.maps:
                lookup = lookup.then(part)
            return lookup
        images = [
            index_map.forward(np.array([i], dtype=np.int64)) for i in range(index_map.source_size)
        ]
        return Lookup(index_map.target_size, _pack_rows(images))

    @property
    def source_size(self) -> int:
        return int(self.rows.shape[0])

    @property
    def target_size(self) -> int:
        return self.target

    def forward(self, indices: IndexSet) -> IndexSet:
        indices = _check_range(indices, self.source_size, "Lookup.forward")
        picked = self.rows[indices].ravel()
        return np.unique(picked[picked >= 0])

    def inverse(self, indices: IndexSet) -> IndexSet:
        target = _check_range(indices, self.target, "Lookup.inverse")
        inside = np.isin(self.rows, target) | (self.rows < 0)
        return np.flatnonzero(inside.all(axis=1)).astype(np.int64)

    def then(self, index_map: IndexMap) -> Lookup:
        """This map followed by ``index_map`` (vectorised for the basic kinds)."""
        rows, valid = self.rows, self.rows >= 0
        if isinstance(index_map, Identity):
            return self
        if isinstance(index_map, Offset):
            shifted = rows + index_map.offset
            keep = valid & (shifted >= 0) & (shifted < index_map.target)
            return Lookup(index_map.target, _normalise(np.where(keep, shifted, -1)))
        if isinstance(index_map, Permutation):
            perm = np.asarray(index_map.perm, dtype=np.int64)
            return Lookup(len(perm), _normalise(np.where(valid, perm[np.maximum(rows, 0)], -1)))
        if isinstance(index_map, (Block, Tile)):
            if isinstance(index_map, Block):
                spread = rows[:, :, None] * index_map.block + np.arange(index_map.block)
            else:
                spread = rows[:, :, None] + np.arange(index_map.count) * index_map.period
            spread = np.where(valid[:, :, None], spread, -1).reshape(rows.shape[0], -1)
            return Lookup(index_map.target_size, _normalise(spread))
        images = [index_map.forward(row[row >= 0]) for row in rows]
        return Lookup(index_map.target_size, _pack_rows(images))

    def restricted_to(self, allowed: IndexSet) -> Lookup:
        """The same map with target indices outside ``allowed`` dropped."""
        if len(allowed) == self.target and np.array_equal(allowed, np.arange(self.target)):
            return self  # every target index allowed (an identity edge's image)
        keep = np.isin(self.rows, allowed) & (self.rows >= 0)
        return Lookup(self.target, _normalise(np.where(keep, self.rows, -1)))

    def union(self, other: Lookup) -> Lookup:
        """Row-wise union (a Concat output mapped through each of its inputs)."""
        if self.target != other.target or self.rows.shape[0] != other.rows.shape[0]:
            raise ValueError("union of lookups with different sizes")
        merged = np.sort(np.concatenate([self.rows, other.rows], axis=1), axis=1)
        duplicate = np.zeros_like(merged, dtype=bool)
        duplicate[:, 1:] = (merged[:, 1:] == merged[:, :-1]) & (merged[:, 1:] >= 0)
        return Lookup(self.target, _normalise(np.where(duplicate, -1, merged)))

    def same_as(self, other: Lookup) -> bool:
        if self.target != other.target or self.rows.shape[0] != other.rows.shape[0]:
            return False
        if self.rows.shape[1] == other.rows.shape[1]:
            return bool(np.array_equal(self.rows, other.rows))
        width = max(self.rows.shape[1], other.rows.shape[1])
        return bool(np.array_equal(_pad(self.rows, width), _pad(other.rows, width)))


def _pad(rows: np.ndarray, width: int) -> np.ndarray:
    """``rows`` widened to ``width`` columns with -1 (np.pad costs 100x more on small rows)."""
    padded = np.full((rows.shape[0], width), -1, dtype=rows.dtype)
    padded[:, : rows.shape[1]] = rows
    return padded


def _normalise(rows: np.ndarray) -> np.ndarray:
    """Sort each row with -1 padding last and drop all-padding columns."""
    big = np.iinfo(np.int64).max
    ordered = np.sort(np.where(rows < 0, big, rows), axis=1)
    ordered[ordered == big] = -1
    width = int((ordered >= 0).sum(axis=1).max()) if ordered.size else 0
    return ordered[:, : max(width, 1)] if ordered.shape[0] else ordered.reshape(0, 1)


def _pack_rows(images: list[np.ndarray]) -> np.ndarray:
    width = max((len(image) for image in images), default=1) or 1
    rows = np.full((len(images), width), -1, dtype=np.int64)
    for i, image in enumerate(images):
        rows[i, : len(image)] = np.sort(image)
    return rows
