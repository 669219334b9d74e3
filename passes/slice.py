"""SliceGPT: rotate the residual stream and slice its hidden size.

Ashkboos et al., "SliceGPT: Compress Large Language Models by Deleting Rows
and Columns", ICLR 2024 (arXiv 2401.15024). Two passes, run in this order
(``spa slice`` does; a recipe may too):

``rotation-invariant``
    Finds the residual stream (:func:`spa.analysis.residual.find_residual_stream`;
    a graph outside the invariance is a one-line error naming the node), folds
    every norm's scale and bias into its readers, centres a LayerNorm stream so
    each LayerNorm becomes an RMSNorm with the same eps, and unties shared
    weights. The model computes the same function.

``rotate-slice``
    Multiplies every writer by ``Q`` and every reader by ``Q^T``. ``Q`` comes
    from PCA of the norms' outputs on calibration data (``rotation="pca"``: the
    eigenvectors of ``sum_l C_l / tr(C_l)``, ``C_l = X_l^T X_l`` streamed in
    float64 by the pipeline), or is a seeded random orthogonal matrix
    (``rotation="random"``, the exactness check), or the identity with the channels
    ordered by their energy (``rotation="none"``: hidden-size pruning without
    rotation, the baseline). ``ratio`` of the hidden
    channels (the directions of least variance) are dropped: embeddings,
    writers, readers and the head shrink from ``D`` to ``D'``, readers gain
    ``sqrt(D / D')`` and eps ``D / D'`` so the norms see the same scale.

``bases="shared"`` (the default) uses **one** ``Q`` for the whole stream, so
the residual skips need no shortcut matrices. ``bases="per-norm"`` is the
paper's form: one ``Q_l`` per norm (norms reading the same value share one),
each writer in the basis of the value it is summed into, and ``Q_a^T Q_b``
(``D' x D'``) on every residual edge that changes basis. Attention internals (RoPE, GQA, KV-cache
inputs and outputs) are never touched: they live inside the blocks.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import onnx_ir as ir

from spa.analysis.residual import ResidualStream, find_residual_stream
from spa.calibration import CalibrationRequest, CalibrationResult
from spa.errors import UserError
from spa.model_io import copy_model
from spa.pass_manager import SpaPass, SpaPassResult, register_pass
from spa.passes.slice_rewrite import (
    enter_streams,
    fold_layer_scales,
    make_invariant,
    norm_groups,
    read_output_norms,
    rotate,
    split_embedding_norms,
    unfuse_skip_norms,
)

__all__ = [
    "BASES",
    "ROTATIONS",
    "RotateSlicePass",
    "RotationInvariantPass",
    "channel_selection",
    "kept_channels",
    "pca_rotation",
    "random_rotation",
    "residual_stream_or_error",
]

logger = logging.getLogger(__name__)

#: ``none`` keeps the hidden channels of most energy unrotated: hidden-size pruning,
#: the baseline beside slicing.
ROTATIONS = ("pca", "random", "none")
#: ``shared``: one Q for the whole stream; ``per-norm``: one per norm (per group of
#: norms reading the same value), with ``Q_a^T Q_b`` on the residual skips.
BASES = ("shared", "per-norm")


def residual_stream_or_error(model: ir.Model, stream: ResidualStream | None = None) -> ResidualStream:
    """The stream of ``model`` (``stream``: its analysis, already made), or a one-line
    :class:`UserError` saying why there is none."""
    stream = find_residual_stream(model) if stream is None else stream
    if stream.reason is not None:
        raise UserError(f"cannot slice this model: {stream.reason}")
    return stream


def kept_channels(hidden: int, ratio: float, round_to: int = 1) -> int:
    """``D'``: ``hidden * (1 - ratio)`` rounded to the nearest multiple of ``round_to`` (>= 1 step)."""
    if not 0.0 <= ratio < 1.0:
        raise UserError(f"--ratio {ratio}: give a share in [0, 1), e.g. 0.25")
    if round_to < 1:
        raise UserError(f"--round-to {round_to}: give a positive multiple")
    kept = round(hidden * (1.0 - ratio) / round_to) * round_to
    return min(hidden, max(round_to, kept))


def random_rotation(hidden: int, seed: int = 0) -> np.ndarray:
    """A seeded Haar-random orthogonal ``hidden x hidden`` matrix (float64)."""
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.standard_normal((hidden, hidden)))
    return q * np.sign(np.diag(r))


def pca_rotation(covariances: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvectors (columns, largest eigenvalue first) of ``sum C / tr(C)``, and
    the eigenvalues. Each boundary weighs the same, whatever its scale."""
    total = np.zeros_like(covariances[0], dtype=np.float64)
    for covariance in covariances:
        trace = float(np.trace(covariance))
        total += covariance / trace if trace > 0 else covariance
    values, vectors = np.linalg.eigh((total + total.T) / 2.0)
    order = np.argsort(values)[::-1]
    return vectors[:, order], values[order]


def channel_selection(covariances: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Columns of the identity, the channel of most energy first (the diagonal of
    ``sum C / tr(C)``), and those energies: hidden-size pruning without rotation."""
    total = np.zeros(covariances[0].shape[0], dtype=np.float64)
    for covariance in covariances:
        trace = float(np.trace(covariance))
        total += np.diag(covariance) / trace if trace > 0 else np.diag(covariance)
    order = np.argsort(total, kind="stable")[::-1]
    return np.eye(total.size)[:, order], total[order]


@register_pass
class RotationInvariantPass(SpaPass):
    """Fold norms into readers and centre LayerNorm streams (SliceGPT's invariant form).

    Handles: ``LayerNormalization``, ``RMSNormalization``, ORT's
    ``SimplifiedLayerNormalization``, decomposed RMSNorm, and com.microsoft
    ``SkipLayerNormalization`` / ``SkipSimplifiedLayerNormalization`` (split
    into the residual Add and a plain norm first); writers that are
    constant-weight MatMul/Gemm (with bias), embedding Gathers and constants;
    readers that are constant-weight MatMul/Gemm (through Reshape/Cast). The
    output is numerically the same function (up to float rounding).
    """

    name = "rotation-invariant"
    summary = "SliceGPT step 1: fold norm scales into readers, LayerNorm -> RMSNorm, untie"

    def call(self, model: ir.Model) -> SpaPassResult:
        unfused = unfuse_skip_norms(model)
        embedding_norms = split_embedding_norms(model)
        layer_scales = fold_layer_scales(model)
        output_norms = read_output_norms(model)
        entries, found = enter_streams(model)
        stream = residual_stream_or_error(model, found)
        statistics = make_invariant(model, stream)
        statistics["skip_norms_unfused"] = unfused
        statistics["embedding_norms_split"] = embedding_norms
        statistics["layer_scales_folded"] = layer_scales
        statistics["output_norms_read"] = output_norms
        statistics["stream_entries"] = entries
        statistics["hidden"] = stream.hidden
        return SpaPassResult(model, True, statistics, {"kind": stream.kind})


@register_pass
class RotateSlicePass(SpaPass):
    """Rotate the residual stream by ``Q`` and keep ``1 - ratio`` of its channels.

    Options: ``ratio`` (share of hidden channels removed), ``rotation``
    (``pca``: from calibration statistics; ``random``: seeded orthogonal
    matrices, exact when ``ratio`` is 0; ``none``: no rotation, the channels of
    least energy on calibration data are pruned), ``round_to`` (``D'`` a multiple of it),
    ``seed``, ``bases`` (``shared`` or ``per-norm``, see the module). Needs the ``rotation-invariant`` form (run that pass first).
    """

    name = "rotate-slice"
    summary = "SliceGPT step 2: rotate the residual stream (PCA or random) and slice it"
    fidelity = "lossy"

    def __init__(
        self,
        *,
        ratio: float = 0.25,
        rotation: str = "pca",
        round_to: int = 8,
        seed: int = 0,
        bases: str = "shared",
        sequential: bool = False,
    ) -> None:
        super().__init__()
        if rotation not in ROTATIONS:
            raise UserError(f"rotation {rotation!r}: choose one of {', '.join(ROTATIONS)}")
        if bases not in BASES:
            raise UserError(f"bases {bases!r}: choose one of {', '.join(BASES)}")
        if sequential and (bases != "per-norm" or rotation == "random"):
            raise UserError(
                "--sequential measures one basis per norm on the already-sliced model: "
                "use it with --bases per-norm and --rotation pca or none"
            )
        kept_channels(max(round_to, 1), ratio, round_to)  # validates ratio and round_to
        self.ratio, self.rotation, self.round_to, self.seed = ratio, rotation, round_to, seed
        self.bases, self.sequential = bases, sequential
        self._covariances: dict[str, np.ndarray] = {}
        self._source = ""
        self._round = 0  # sequential: the norm group measured last

    def calibration_request(self, model: ir.Model) -> CalibrationRequest | None:
        if self.rotation == "random" or self._covariances:
            return None
        stream = residual_stream_or_error(model)
        self._round = 0
        return CalibrationRequest(hessians=self._norm_outputs(stream, 0), required=True)

    def _norm_outputs(self, stream: ResidualStream, group: int | None) -> tuple[str, ...]:
        """The norms' outputs to measure: all, or (sequential) those of one group."""
        groups = self._groups(stream)
        return tuple(
            norm.output.name
            for norm, g in zip(stream.norms, groups, strict=True)
            if norm.output.name and (not self.sequential or g == group)
        )

    def use_calibration(self, result: CalibrationResult) -> None:
        self._covariances.update({name: entry.xtx for name, entry in result.hessians.items()})
        self._source = result.source

    def next_calibration_request(self, model: ir.Model) -> CalibrationRequest | None:
        """Sequential (the paper's algorithm): group ``g``'s basis is the PCA of its
        norms' outputs on the model whose groups before ``g`` are already sliced.

        The sliced model is measured at full width: a group with basis
        ``Q'`` (``D x D'``) equals, in the original coordinates, the projection
        ``P = Q' Q'^T`` on its stream values (its norms see ``|x P|``, which is
        ``|x Q'|``, and the readers' ``sqrt(D/D')`` cancels the norm's mean over
        ``D'``), so the variant rotates groups ``< g`` by ``P`` and the rest by
        the identity, and is measured at group ``g``."""
        if not self.sequential:
            return None
        stream = residual_stream_or_error(model)
        groups = self._groups(stream)
        self._round += 1
        if self._round > max(groups):
            return None
        kept = kept_channels(stream.hidden, self.ratio, self.round_to)
        bases, _ = self._rotations(stream, groups, upto=self._round)
        variant = copy_model(model)
        variant_stream = residual_stream_or_error(variant)
        projections = [q[:, :kept] @ q[:, :kept].T for q in bases]
        projections += [np.eye(stream.hidden)] * (max(groups) + 1 - len(projections))
        rotate(variant, variant_stream, projections, groups)
        return CalibrationRequest(
            hessians=self._norm_outputs(stream, self._round), required=True, model=variant
        )

    def _groups(self, stream: ResidualStream) -> list[int]:
        return norm_groups(stream) if self.bases == "per-norm" else [0] * len(stream.norms)

    def _rotations(
        self, stream: ResidualStream, groups: list[int], upto: int | None = None
    ) -> tuple[list[np.ndarray], dict[str, Any]]:
        """One basis per group (the first ``upto`` groups only, when given)."""
        count = max(groups) + 1 if upto is None else upto
        if self.rotation == "random":
            return [random_rotation(stream.hidden, self.seed + g) for g in range(count)], {
                "source": "random"
            }
        members: list[list[np.ndarray]] = [[] for _ in range(count)]
        for norm, group in zip(stream.norms, groups, strict=True):
            if group < count and norm.output.name in self._covariances:
                members[group].append(self._covariances[norm.output.name])
        if not all(members):
            raise UserError(f"rotate-slice with rotation={self.rotation} needs calibration statistics "
                            "for every norm; run it through the pipeline (spa slice --calib DATA)")  # fmt: skip
        choose = pca_rotation if self.rotation == "pca" else channel_selection
        found = [choose(covariances) for covariances in members]
        details: dict[str, Any] = {"source": self._source,
                                   "eigenvalues": [values.tolist() for _, values in found]}  # fmt: skip
        if self.rotation == "none":  # the hidden channels in order of energy, per basis
            details["channel_order"] = [np.argmax(vectors, axis=0).tolist() for vectors, _ in found]
        return [vectors for vectors, _ in found], details

    def call(self, model: ir.Model) -> SpaPassResult:
        stream = residual_stream_or_error(model)
        groups = self._groups(stream)
        bases, details = self._rotations(stream, groups)
        kept = kept_channels(stream.hidden, self.ratio, self.round_to)
        statistics: dict[str, int | float] = dict(
            rotate(model, stream, [q[:, :kept] for q in bases], groups)
        )
        if "eigenvalues" in details:
            shares = [
                sum(values[:kept]) / max(sum(values), 1e-300) for values in details["eigenvalues"]
            ]
            details["variance_kept"] = float(np.mean(shares))
            statistics["variance_kept"] = round(details["variance_kept"], 6)
        logger.info("rotate-slice: hidden %d -> %d (%d bases)", stream.hidden, kept, len(bases))
        return SpaPassResult(model, True, statistics, details)
