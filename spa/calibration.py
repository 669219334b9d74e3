"""Calibration: feeds, and streamed statistics of a model's activations.

Used by every pass that needs data (pruning criteria, GPTQ/SparseGPT/GQSA,
static quantization). The wanted intermediate values are exposed as extra
graph outputs of a copy of the model, which ONNX Runtime runs once per
calibration sample; each sample's activations are folded into bounded
statistics and dropped, so memory does not grow with the number of samples:

* ``X^T X`` (float64) of a value's rows over its last axis
  (:class:`HessianStatistics`; Q/K/V projections reading the same value share one);
* per-channel moments, optionally ``X^T X`` over the channel axis
  (:class:`ChannelStatistics`);
* ``|x|`` ranges (:class:`RangeStatistics`): ``minmax`` keeps the running
  maximum; ``percentile`` a running 2048-bin histogram (:class:`AbsHistogram`)
  whose range doubles (merging bin pairs, exactly) when a sample exceeds it,
  the threshold being the upper edge of the first bin where the cumulative
  share reaches the percentile; ``entropy`` the same histogram, then the
  KL-divergence threshold search (:func:`entropy_threshold`,
  ``docs/quantization.md``).

A pass states what it needs as a :class:`CalibrationRequest`; the pipeline
(:mod:`spa.workflows.run`) answers it with :func:`calibrate` on the model as
it is when the pass runs, and hands the :class:`CalibrationResult` to the pass.

Calibration sources (:func:`load_calibration`):

* an ``.npz`` file: input name -> array with a leading sample axis
  (``arr[i]`` is one feed for that input, with the model's own input shape);
  for an input whose leading dim is a batch axis (symbolic or 1), an array of
  the input's own rank is read as a batch of samples (``arr[i:i+1]`` is one
  feed: ``images`` of shape ``(N, 3, 224, 224)`` for ``[batch, 3, 224, 224]``);
* a folder of ``.npy`` files named after the inputs (``<input>.npy``, any
  character outside ``[A-Za-z0-9_.-]`` written as ``_``), same convention,
  memory-mapped;
* any Python iterable of feed dicts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import logging
import os
import re
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from spa.errors import UserError
from spa.graph_outputs import declared_dims
from spa.ort import create_session
from spa.ort_segments import maybe_segmented
from spa.progress import track

__all__ = [
    "CALIBRATION_METHODS",
    "MAX_HESSIAN_K",
    "AbsHistogram",
    "CalibrationInputs",
    "CalibrationRequest",
    "CalibrationResult",
    "CalibrationSource",
    "ChannelStatistics",
    "ConvPatches",
    "HessianStatistics",
    "RangeStatistics",
    "calibrate",
    "calibration_shapes",
    "collect_channel_statistics",
    "collect_conv_hessians",
    "collect_hessians",
    "collect_ranges",
    "conv_patches",
    "entropy_threshold",
    "file_name_for_input",
    "hash_samples",
    "hessian_size_reason",
    "load_calibration",
    "model_inputs",
    "percentile_threshold",
]

logger = logging.getLogger(__name__)

Feeds = Mapping[str, np.ndarray]
CalibrationSource = str | os.PathLike[str] | Iterable[Feeds]

_PROTO_LIMIT = 1_800_000_000
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
HISTOGRAM_BINS = 2048
#: Largest reduction size K whose K x K input Hessian GPTQ, SparseGPT and GQSA collect:
#: one is 2 GiB in float64 at 16384, and accumulating and factoring it takes a few copies.
#: VGG's first fully connected layer (K = 25088, 5 GiB per copy) ran a 24 GiB machine out of
#: memory; LLM projections up to K = 14336 (Mistral's FFN) stay under the cap.
MAX_HESSIAN_K = 16384


def hessian_size_reason(k: int) -> str:
    """Why an input of ``k`` features gets no Hessian ('' when it does)."""
    if k <= MAX_HESSIAN_K:
        return ""
    return f"K={k} > {MAX_HESSIAN_K}: its K x K Hessian would take {k * k * 8 / 2**30:.1f} GiB"


@dataclasses.dataclass
class HessianStatistics:
    """``X^T X`` of one value over ``rows`` activation rows; ``hessian`` is ``2 X^T X / rows``."""

    xtx: np.ndarray
    rows: int = 0

    @property
    def hessian(self) -> np.ndarray:
        return 2.0 * self.xtx / max(self.rows, 1)


@dataclasses.dataclass
class ChannelStatistics:
    """Streamed per-channel moments of one activation over ``rows`` rows.

    A row is one position of the activation (a token, a pixel); its channel
    axis gives the columns. ``xtx`` (``C x C``, uncentred) is kept only when
    asked for; the diagonal ``sum_squares`` always is.
    """

    sums: np.ndarray
    sum_squares: np.ndarray
    xtx: np.ndarray | None = None
    rows: int = 0

    @property
    def mean(self) -> np.ndarray:
        return self.sums / max(self.rows, 1)

    @property
    def second_moment(self) -> np.ndarray:
        """``E[x x^T]`` over rows (needs ``xtx``)."""
        assert self.xtx is not None, "collected without the full X^T X"
        return self.xtx / max(self.rows, 1)

    @property
    def norms(self) -> np.ndarray:
        """``||X_c||_2`` per channel over all rows."""
        return np.sqrt(self.sum_squares)

    @property
    def variance(self) -> np.ndarray:
        """Per-channel variance over rows (the FLAP fluctuation)."""
        rows = max(self.rows, 1)
        return np.maximum(self.sum_squares / rows - self.mean**2, 0.0)

    def add(self, rows: np.ndarray) -> None:
        """Fold a ``[n, C]`` block of rows in (float64) and forget it."""
        rows = rows.astype(np.float64, copy=False)
        self.sums += rows.sum(axis=0)
        self.sum_squares += np.einsum("ij,ij->j", rows, rows)
        if self.xtx is not None:
            self.xtx += rows.T @ rows
        self.rows += rows.shape[0]


class AbsHistogram:
    """A histogram of ``|x|`` over ``[0, top)`` in ``bins`` equal bins, ``top`` growing.

    Bin ``i`` holds ``[i * width, (i + 1) * width)``. ``top`` starts at the power
    of two above the first batch's largest value; when a batch reaches ``top``,
    ``top`` doubles and bin pairs merge, which keeps every count in the bin that
    contains its value (the same counts as binning all data at once over the
    final range): no data is re-read.
    """

    def __init__(self, bins: int = HISTOGRAM_BINS) -> None:
        if bins < 2 or bins % 2:
            raise ValueError(f"bins must be an even number >= 2, got {bins}")
        self.counts = np.zeros(bins, dtype=np.int64)
        self.top = 0.0
        self.amax = 0.0

    @property
    def bins(self) -> int:
        return len(self.counts)

    @property
    def width(self) -> float:
        return self.top / self.bins

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def _double(self) -> None:
        merged = self.counts.reshape(-1, 2).sum(axis=1)
        self.counts = np.concatenate([merged, np.zeros(self.bins // 2, dtype=np.int64)])
        self.top *= 2.0

    def add(self, values: np.ndarray) -> None:
        magnitudes = np.abs(np.asarray(values, dtype=np.float64)).ravel()
        magnitudes = magnitudes[np.isfinite(magnitudes)]
        if not magnitudes.size:
            return
        largest = float(magnitudes.max())
        self.amax = max(self.amax, largest)
        if largest == 0.0 and self.top == 0.0:
            self.counts[0] += magnitudes.size  # zeros belong in bin 0 whatever top becomes
            return
        if self.top == 0.0:  # the power of two above the first batch: dyadic bin edges
            self.top = float(2.0 ** (np.floor(np.log2(largest)) + 1))
        while largest >= self.top:
            self._double()
        index = np.minimum((magnitudes / self.width).astype(np.int64), self.bins - 1)
        self.counts += np.bincount(index, minlength=self.bins)


def percentile_threshold(histogram: AbsHistogram, percentile: float) -> float:
    """Upper edge of the first bin where the cumulative share of ``|x|`` reaches ``percentile``."""
    if not 0.0 < percentile <= 100.0:
        raise UserError(f"--percentile {percentile}: give a value in (0, 100], e.g. 99.99")
    total = histogram.total
    if total == 0 or histogram.top == 0.0:
        return histogram.amax
    cumulative = np.cumsum(histogram.counts) / total
    index = int(np.searchsorted(cumulative, percentile / 100.0 - 1e-12, side="left"))
    return min((index + 1) * histogram.width, histogram.amax)


def entropy_threshold(histogram: AbsHistogram, levels: int = 128) -> float:
    """The clipping threshold minimising KL(P || Q) over the histogram (TensorRT-style).

    For every candidate ``i`` from ``levels`` to ``bins``: ``P`` is the first ``i``
    bins with the counts beyond them added to bin ``i - 1``; ``Q`` is the first ``i``
    bins merged into ``levels`` groups, each group's count spread evenly over its
    non-empty bins. The threshold is the upper edge of the best ``i``.
    """
    counts = histogram.counts.astype(np.float64)
    bins = len(counts)
    if histogram.total == 0 or histogram.top == 0.0:
        return histogram.amax
    last = int(np.flatnonzero(counts)[-1]) + 1  # beyond the last non-empty bin nothing changes
    best_index, best_divergence = bins, np.inf
    suffix = np.concatenate([np.cumsum(counts[::-1])[::-1], [0.0]])
    for index in range(levels, max(levels, last) + 1):
        kept = counts[:index]
        reference = kept.copy()
        reference[-1] += suffix[index]
        groups = (np.arange(index) * levels) // index
        occupied = kept > 0
        sums = np.bincount(groups, weights=kept, minlength=levels)
        filled = np.bincount(groups, weights=occupied, minlength=levels)
        candidate = np.where(occupied, sums[groups] / np.maximum(filled[groups], 1), 0.0)
        p = reference / reference.sum()
        q_total = candidate.sum()
        if q_total == 0:
            continue
        q = candidate / q_total
        mask = p > 0
        divergence = float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))
        if divergence < best_divergence:
            best_index, best_divergence = index, divergence
    return min(best_index * histogram.width, histogram.amax)


@dataclasses.dataclass
class RangeStatistics:
    """Calibrated ``amax`` per value name, with how it was found; ``low``/``high``
    the signed minimum and maximum seen (every method), for asymmetric ranges."""

    amax: dict[str, float]
    method: str
    samples: int
    low: dict[str, float] = dataclasses.field(default_factory=dict)
    high: dict[str, float] = dataclasses.field(default_factory=dict)


def _method_check(method: str, percentile: float) -> None:
    if method not in CALIBRATION_METHODS:
        raise UserError(f"--calib-method {method}: choose one of {', '.join(CALIBRATION_METHODS)}")
    if method == "percentile" and not 0.0 < percentile <= 100.0:
        raise UserError(f"--percentile {percentile}: give a value in (0, 100], e.g. 99.99")


def channel_rows(value: np.ndarray, channel_axis: int) -> np.ndarray:
    """``value`` as ``[positions, channels]`` with channels on ``channel_axis``."""
    moved = np.moveaxis(value, channel_axis, -1)
    return moved.reshape(-1, moved.shape[-1])


def file_name_for_input(name: str) -> str:
    """The ``.npy`` file name that holds input ``name`` in a calibration folder."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) + ".npy"


#: The model inputs a calibration source is read for: name -> the input's rank
#: when its leading dim is a batch axis (symbolic, unknown or 1), else None
#: (:func:`model_inputs`). A plain list of names reads every array with one
#: leading sample axis.
CalibrationInputs = Mapping[str, int | None] | list[str]


def model_inputs(model: onnx.ModelProto | Any) -> dict[str, int | None]:
    """The graph inputs that are not initializers (an ``onnx.ModelProto`` or an
    ``onnx_ir.Model``), each with its rank where its leading dim is a batch axis."""
    found: dict[str, int | None] = {}
    if isinstance(model, onnx.ModelProto):
        initializers = {init.name for init in model.graph.initializer}
        for info in model.graph.input:
            if info.name not in initializers:
                found[info.name] = _batch_rank(declared_dims(info))
        return found
    graph = model.graph
    for value in graph.inputs:
        if value.name in graph.initializers:
            continue
        shape = value.shape
        dims = None if shape is None else tuple(d if isinstance(d, int) else None for d in shape)
        found[value.name or ""] = _batch_rank(dims)
    return found


def _batch_rank(dims: tuple[int | None, ...] | None) -> int | None:
    if not dims or dims[0] not in (None, 1):
        return None
    return len(dims)


def _batched(inputs: CalibrationInputs, name: str, ndim: int) -> bool:
    """Whether an array of ``ndim`` dims for input ``name`` is a batch of samples
    (the input's own rank, its leading dim a batch axis)."""
    return isinstance(inputs, Mapping) and inputs.get(name) is not None and inputs[name] == ndim


def calibration_shapes(
    source: CalibrationSource, inputs: CalibrationInputs
) -> dict[str, tuple[int, ...]]:
    """Shape of one sample of each input in an ``.npz``, an ``.npy`` folder or a folder
    of ``.npz`` samples (its first archive), read from the array headers (nothing is
    loaded); inputs it lacks are left out, and an iterable source gives nothing (its first
    sample would be consumed). A batch of samples (see :func:`load_calibration`) gives the
    shape of one, batch axis 1."""
    if not isinstance(source, str | os.PathLike):
        return {}
    path = Path(source)
    shapes: dict[str, tuple[int, ...]] = {}
    input_names = list(inputs)
    try:
        archives = _sample_archives(path, input_names)
        if archives:
            return _archive_shapes(archives[0], inputs)
        if path.is_dir():
            for name in input_names:
                file = path / file_name_for_input(name)
                if file.is_file():
                    shape = tuple(np.load(file, mmap_mode="r").shape)
                    shapes[name] = _sample_shape(inputs, name, shape)
        elif path.is_file():
            return _archive_shapes(path, inputs)
    except (OSError, ValueError, zipfile.BadZipFile):
        return {}  # load_calibration gives the one-line error
    return shapes


def _archive_shapes(path: Path, inputs: CalibrationInputs) -> dict[str, tuple[int, ...]]:
    """:func:`calibration_shapes` of one ``.npz``, from its array headers."""
    shapes: dict[str, tuple[int, ...]] = {}
    with zipfile.ZipFile(path) as archive:
        for name in inputs:
            if f"{name}.npy" not in archive.namelist():
                continue
            with archive.open(f"{name}.npy") as handle:
                version = np.lib.format.read_magic(handle)
                read = (
                    np.lib.format.read_array_header_1_0
                    if version == (1, 0)
                    else np.lib.format.read_array_header_2_0
                )
                shape, _, _ = read(handle)
            shapes[name] = _sample_shape(inputs, name, tuple(shape))
    return shapes


def _sample_archives(path: Path, input_names: list[str]) -> list[Path]:
    """The ``.npz`` files of a folder holding no ``<input>.npy``: one archive per sample
    (or per batch of equal-shaped samples), for inputs whose shapes vary between
    samples (text lines of different widths, prompts of different lengths)."""
    if not path.is_dir() or any((path / file_name_for_input(n)).is_file() for n in input_names):
        return []
    return sorted(path.glob("*.npz"))


def _archive_arrays(path: Path, names: list[str], load: bool = True) -> dict[str, np.ndarray]:
    """The arrays named ``names`` of one ``.npz`` (a one-line error when one is missing);
    ``load=False`` checks the names only."""
    try:
        with np.load(path) as archive:
            missing = sorted(set(names) - set(archive.files))
            if missing:
                raise UserError(
                    f"--calib {path}: no array for input(s) {missing} "
                    f"(it has {sorted(archive.files)}); name arrays after the model inputs"
                )
            return {name: archive[name] for name in names} if load else {}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise UserError(f"--calib {path}: not a readable .npz ({error}); save it with numpy.savez") from error


def _sample_shape(inputs: CalibrationInputs, name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    return (1, *shape[1:]) if _batched(inputs, name, len(shape)) else shape[1:]


def _samples(
    arrays: Mapping[str, np.ndarray], inputs: CalibrationInputs
) -> Iterator[dict[str, np.ndarray]]:
    counts = {name: len(array) for name, array in arrays.items()}
    if len(set(counts.values())) > 1:
        raise UserError(
            f"calibration arrays have different sample counts {counts}; "
            "give every input the same leading sample axis"
        )
    batched = {name for name, array in arrays.items() if _batched(inputs, name, array.ndim)}
    for index in range(next(iter(counts.values()), 0)):
        yield {
            name: np.asarray(array[index : index + 1] if name in batched else array[index])
            for name, array in arrays.items()
        }


def load_calibration(source: CalibrationSource, inputs: CalibrationInputs) -> Iterable[Feeds]:
    """Feed dicts from an ``.npz``, a folder of ``.npy`` files, a folder of ``.npz``
    files (each one or more samples; shapes may differ between files), or an iterable.

    ``inputs`` names the model inputs to read; given as :func:`model_inputs`, an
    array of an input's own rank whose leading dim is a batch axis is read as a
    batch of samples, one feed per row with batch 1 (``(N, 3, H, W)`` for
    ``[batch, 3, H, W]``), besides the ``(N, 1, 3, H, W)`` form."""
    if not isinstance(source, str | os.PathLike):
        return source
    input_names = list(inputs)
    path = Path(source)
    if not path.exists():
        raise UserError(
            f"--calib {path}: not an .npz file or a folder of .npy files (nothing is there); "
            "save calibration inputs with numpy.savez"
        )
    archives = _sample_archives(path, input_names)
    if archives:
        for archive in archives:  # every file names the inputs, before any statistic runs
            _archive_arrays(archive, input_names, load=False)
        return (
            feed
            for archive in archives
            for feed in _samples(_archive_arrays(archive, input_names), inputs)
        )
    if path.is_dir():
        arrays: dict[str, np.ndarray] = {}
        for name in input_names:
            file = path / file_name_for_input(name)
            if not file.is_file():
                raise UserError(
                    f"--calib {path}: no '{file.name}' for input '{name}'; "
                    "save one .npy per model input (leading sample axis), or one .npz "
                    "per sample"
                )
            arrays[name] = np.load(file, mmap_mode="r")
        return _samples(arrays, inputs)
    if path.suffix == ".npz" and path.is_file():
        return _samples(_archive_arrays(path, input_names), inputs)
    raise UserError(
        f"--calib {path}: not an .npz file or a folder of .npy files; "
        "save calibration inputs with numpy.savez"
    )


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph also outputs ``names`` (type float, any shape)."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    existing = {output.name for output in exposed.graph.output}
    element_types = {
        info.name: info.type.tensor_type.elem_type
        for info in [*exposed.graph.value_info, *exposed.graph.input]
    }
    for name in names:
        if name not in existing:
            element = element_types.get(name) or onnx.TensorProto.FLOAT
            exposed.graph.output.append(onnx.helper.make_tensor_value_info(name, element, None))
    return exposed


def _create_session(model: onnx.ModelProto, folder: Path) -> Any:
    """One ORT session, or for a very large graph a chain of segment sessions
    (:mod:`spa.ort_segments`: ORT's session creation is superlinear in size)."""
    chained = maybe_segmented(model, create_session, folder)
    if chained is not None:
        return chained
    if model.ByteSize() < _PROTO_LIMIT:
        return create_session(model.SerializeToString())
    path = folder / "calibration.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location="calibration.data")
    return create_session(path)


def collect_hessians(
    model: onnx.ModelProto,
    value_names: Iterable[str],
    feeds: Iterable[Feeds],
    *,
    max_samples: int | None = None,
) -> dict[str, HessianStatistics]:
    """Accumulate ``X^T X`` (float64) of each value in ``value_names`` over ``feeds``.

    ``model`` must hold its weights (load external data first). A value's
    activation ``[..., K]`` contributes its rows ``reshape(-1, K)``.
    """
    names = sorted(set(value_names))
    statistics: dict[str, HessianStatistics] = {}
    if not names:
        return statistics
    for _, outputs in _calibration_runs(model, names, feeds, max_samples, len(names)):
        for name in names:
            _accumulate(statistics, name, np.asarray(outputs[name]))
        del outputs
    return statistics


@dataclasses.dataclass(frozen=True)
class ConvPatches:
    """How a 2-D ``Conv`` with group 1 (a 1-D one as height 1) reads its input ``value``
    ``[N, C, H, W]``: its im2col patches, whose ``X^T X`` is the Conv's input Hessian
    (SparseGPT on Conv weights). Patch columns are in ``(kh, kw, c)`` order, so a run of
    4 consecutive columns is 4 input channels at one kernel position."""

    value: str
    kernel: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right
    dilations: tuple[int, int] = (1, 1)


def conv_patches(
    x: np.ndarray, spec: ConvPatches, max_rows: int | None = None, seed: int = 0
) -> np.ndarray:
    """``[rows, kh*kw*C]`` im2col patches of ``x[N, C, H, W]`` (``[N, C, L]``: height 1) in
    ``(kh, kw, c)`` order, one row per output position; at most ``max_rows`` of them (a
    seeded uniform choice)."""
    if x.ndim == 3:
        x = x[:, :, None, :]
    n, channels, height, width = x.shape
    (kh, kw), (sh, sw), (dh, dw) = spec.kernel, spec.strides, spec.dilations
    top, left, bottom, right = spec.pads
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    out_h = (height + top + bottom - dh * (kh - 1) - 1) // sh + 1
    out_w = (width + left + right - dw * (kw - 1) - 1) // sw + 1
    positions = n * out_h * out_w
    chosen = np.arange(positions)
    if max_rows is not None and positions > max_rows:
        chosen = np.sort(np.random.default_rng(seed).choice(positions, max_rows, replace=False))
    b, rest = np.divmod(chosen, out_h * out_w)
    y, xx = np.divmod(rest, out_w)
    rows = np.empty((chosen.size, kh, kw, channels), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            rows[:, i, j, :] = padded[b, :, y * sh + i * dh, xx * sw + j * dw]
    return rows.reshape(chosen.size, kh * kw * channels)


def collect_conv_hessians(
    model: onnx.ModelProto,
    convs: Mapping[str, ConvPatches],
    feeds: Iterable[Feeds],
    *,
    max_samples: int | None = None,
    max_rows: int = 4096,
) -> dict[str, HessianStatistics]:
    """``X^T X`` of each Conv's im2col patches (key -> :class:`ConvPatches`) over ``feeds``,
    at most ``max_rows`` output positions per sample and Conv (seeded)."""
    statistics: dict[str, HessianStatistics] = {}
    if not convs:
        return statistics
    graph_inputs = {value.name for value in model.graph.input}
    names = sorted({spec.value for spec in convs.values()} - graph_inputs)
    runs = _calibration_runs(model, names, feeds, max_samples, len(convs))
    for sample, (inputs, outputs) in enumerate(runs):
        for key, spec in convs.items():
            x = np.asarray(inputs[spec.value] if spec.value in graph_inputs else outputs[spec.value])
            _accumulate(statistics, key, conv_patches(x.astype(np.float64), spec, max_rows, sample))
    return statistics


def collect_channel_statistics(
    model: onnx.ModelProto,
    values: Mapping[str, int],
    feeds: Iterable[Feeds],
    *,
    full: bool = False,
    max_samples: int | None = None,
) -> dict[str, ChannelStatistics]:
    """Per-channel statistics of each value in ``values`` (name -> channel axis).

    The values are exposed as extra outputs and ONNX Runtime runs one feed
    (a batch) at a time; each result is folded into running sums and dropped,
    so memory is ``O(C)`` per value, or ``O(C^2)`` with ``full`` (``X^T X``; not for a
    value of more than :data:`MAX_HESSIAN_K` channels, which keeps its diagonal only).
    """
    statistics: dict[str, ChannelStatistics] = {}
    if not values:
        return statistics
    graph_inputs = {value.name for value in model.graph.input}
    names = sorted(name for name in values if name not in graph_inputs)
    for inputs, outputs in _calibration_runs(model, names, feeds, max_samples, len(values)):
        for name, axis in values.items():
            value = outputs[name] if name in outputs else inputs[name]
            rows = channel_rows(np.asarray(value), axis)
            entry = statistics.get(name)
            if entry is None:
                channels = rows.shape[1]
                entry = statistics[name] = ChannelStatistics(
                    np.zeros(channels),
                    np.zeros(channels),
                    np.zeros((channels, channels)) if full and channels <= MAX_HESSIAN_K else None,
                )
            entry.add(rows)
            del value, rows
        del inputs, outputs
    return statistics


def _calibration_runs(
    model: onnx.ModelProto,
    names: list[str],
    feeds: Iterable[Feeds],
    max_samples: int | None,
    activations: int,
) -> Iterator[tuple[dict[str, np.ndarray], dict[str, Any]]]:
    """Run ``model`` with ``names`` exposed as outputs on each feed (at most
    ``max_samples``), yielding ``(inputs, outputs by name)`` one feed at a time.

    One-line :class:`UserError` for a feed that lacks a model input and for
    calibration data with no samples; ``activations`` is only for the log line.
    """
    exposed = _with_outputs(model, names)
    with tempfile.TemporaryDirectory(prefix="spa-calib-") as folder:
        session = _create_session(exposed, Path(folder))
        wanted = {value.name for value in session.get_inputs()}
        seen = 0
        for feed in track(feeds, description="calibrate"):
            if max_samples is not None and seen >= max_samples:
                break
            missing = sorted(wanted - set(feed))
            if missing:
                raise UserError(
                    f"calibration sample {seen} lacks input(s) {missing}; give every model input"
                )
            inputs = {key: np.asarray(feed[key]) for key in wanted}
            outputs = dict(zip(names, session.run(names, inputs) if names else [], strict=True))
            yield inputs, outputs
            del inputs, outputs  # one feed's activations in memory at a time
            seen += 1
    logger.info("calibration: %d samples, %d activations", seen, activations if seen else 0)
    if seen == 0:
        raise UserError("calibration data holds no samples; give at least one")


def _accumulate(statistics: dict[str, HessianStatistics], name: str, value: np.ndarray) -> None:
    rows = value.reshape(-1, value.shape[-1]).astype(np.float64)
    entry = statistics.get(name)
    if entry is None:
        entry = statistics[name] = HessianStatistics(np.zeros((rows.shape[1],) * 2))
    entry.xtx += rows.T @ rows
    entry.rows += rows.shape[0]


def collect_ranges(
    model: onnx.ModelProto,
    value_names: Iterable[str],
    feeds: Iterable[Feeds],
    *,
    method: str = "minmax",
    percentile: float = 99.99,
    levels: int = 128,
    max_samples: int | None = None,
) -> RangeStatistics:
    """Run ``model`` in ORT on ``feeds`` and return the calibrated ``amax`` of each value.

    ``model`` must hold its weights. Values that are graph inputs are read from
    the feeds. Memory stays at one histogram (or one float) per value.
    """
    _method_check(method, percentile)
    names = sorted(set(value_names))
    graph_inputs = {value.name for value in model.graph.input}
    computed = [name for name in names if name not in graph_inputs]
    histograms = {name: AbsHistogram() for name in names}
    low = dict.fromkeys(names, np.inf)
    high = dict.fromkeys(names, -np.inf)
    samples = 0
    for inputs, outputs in _calibration_runs(model, computed, feeds, max_samples, len(names)):
        for name in names:
            array = outputs[name] if name in outputs else inputs[name]
            signed = np.asarray(array, dtype=np.float64)
            signed = signed[np.isfinite(signed)]
            if signed.size:
                low[name] = min(low[name], float(signed.min()))
                high[name] = max(high[name], float(signed.max()))
            if method == "minmax":
                finite = np.abs(np.asarray(array, dtype=np.float64))
                finite = finite[np.isfinite(finite)]
                if finite.size:
                    histograms[name].amax = max(histograms[name].amax, float(finite.max()))
            else:
                histograms[name].add(array)
        samples += 1
    amax: dict[str, float] = {}
    for name, histogram in histograms.items():
        if method == "percentile":
            amax[name] = percentile_threshold(histogram, percentile)
        elif method == "entropy":
            amax[name] = entropy_threshold(histogram, levels)
        else:
            amax[name] = histogram.amax
    logger.info("calibration (%s): %d samples, %d values", method, samples, len(amax))
    seen = [name for name in names if np.isfinite(low[name])]
    return RangeStatistics(
        amax, method, samples, {n: low[n] for n in seen}, {n: high[n] for n in seen}
    )


@dataclasses.dataclass(frozen=True)
class CalibrationRequest:
    """What one pass needs measured on calibration data (all optional).

    ``hessians``: values whose ``X^T X`` over the last axis is wanted;
    ``channels``: value -> channel axis for per-channel moments (``full_channels``
    adds ``X^T X`` over channels); ``ranges``: values whose ``|x|`` range is
    wanted, by ``range_method`` (and ``percentile``). Without ``required`` a
    pass given no data runs data-free (its own fallback).
    """

    hessians: tuple[str, ...] = ()
    #: key -> the im2col patches of a Conv, whose ``X^T X`` is wanted (collect_conv_hessians)
    conv_hessians: Mapping[str, ConvPatches] = dataclasses.field(default_factory=dict)
    channels: Mapping[str, int] = dataclasses.field(default_factory=dict)
    full_channels: bool = False
    ranges: tuple[str, ...] = ()
    range_method: str = "minmax"
    percentile: float = 99.99
    #: The pass cannot run without these statistics: without real data the
    #: pipeline measures them on seeded random inputs (with a warning).
    required: bool = False
    #: Up to this many raw calibration feeds, for a measurement that runs
    #: variants of the model (sensitivity allocation); never random ones.
    samples: int = 0
    #: Measure on this variant of the model (an ``ir.Model``) instead of the one
    #: the pass rewrites: a pass that calibrates in rounds (sequential slicing)
    #: measures each round on the model as the earlier rounds left it.
    model: Any = None

    @property
    def empty(self) -> bool:
        return not (self.hessians or self.conv_hessians or self.channels or self.ranges or self.samples)


@dataclasses.dataclass
class CalibrationResult:
    """The statistics a :class:`CalibrationRequest` asked for, and where they came from."""

    hessians: dict[str, HessianStatistics] = dataclasses.field(default_factory=dict)
    conv_hessians: dict[str, HessianStatistics] = dataclasses.field(default_factory=dict)
    channels: dict[str, ChannelStatistics] = dataclasses.field(default_factory=dict)
    ranges: RangeStatistics | None = None
    source: str = ""
    samples: list[dict[str, np.ndarray]] = dataclasses.field(default_factory=list)


def calibrate(
    model: onnx.ModelProto,
    request: CalibrationRequest,
    feeds: Callable[[], Iterable[Feeds]],
    *,
    max_samples: int | None = None,
    source: str = "",
) -> CalibrationResult:
    """Answer ``request`` on ``model`` (weights loaded) with the feeds ``feeds()`` gives.

    Each kind of statistic streams over its own pass of the feeds (so a
    request costs one ORT session per kind it asks for).
    """
    result = CalibrationResult(source=source)
    if request.samples:
        for feed in itertools.islice(feeds(), request.samples):
            result.samples.append({name: np.asarray(array) for name, array in feed.items()})
    if request.hessians:
        result.hessians = collect_hessians(
            model, request.hessians, feeds(), max_samples=max_samples
        )
    if request.conv_hessians:
        result.conv_hessians = collect_conv_hessians(
            model, request.conv_hessians, feeds(), max_samples=max_samples
        )
    if request.channels:
        result.channels = collect_channel_statistics(
            model, request.channels, feeds(), full=request.full_channels, max_samples=max_samples
        )
    if request.ranges:
        result.ranges = collect_ranges(
            model, request.ranges, feeds(), method=request.range_method,
            percentile=request.percentile, max_samples=max_samples,
        )  # fmt: skip
    return result


def hash_samples(samples: Iterable[Mapping[str, np.ndarray]]) -> str:
    """SHA-256 of feed dicts: each input's name, dtype, shape and bytes, in order."""
    digest = hashlib.sha256()
    for sample in samples:
        for name in sorted(sample):
            array = np.ascontiguousarray(sample[name])
            digest.update(f"{name}:{array.dtype}:{array.shape}".encode())
            digest.update(array.tobytes())
    return digest.hexdigest()
