"""The plugin-form spa ops: ONNX op type, domain, attributes and inputs.

One entry per TensorRT plugin; ``plugins/trt/contracts/*.json`` states the same
facts for the C++ side (tests/test_plugins.py checks that they agree), and the
TensorRT ONNX parser finds each plugin by ``op_type`` (plugin version "1",
namespace "").
"""

from __future__ import annotations

import dataclasses

__all__ = ["PLUGIN_OPS", "SPA_DOMAIN", "PluginOp", "plugin_op"]

SPA_DOMAIN = "spa"


@dataclasses.dataclass(frozen=True)
class PluginOp:
    """One plugin-form op: what the rewrite passes write and the plugin reads."""

    kernel: str  # plugins/kernels/<kernel>.cu, plugins/trt/contracts/<kernel>.json
    op_type: str
    attributes: tuple[str, ...]
    inputs: tuple[tuple[str, str], ...]  # (name, ONNX element type; "float" = A's type)


PLUGIN_OPS: tuple[PluginOp, ...] = (
    PluginOp(
        "w4a16",
        "W4A16MatMul",
        ("K", "N", "group_size"),
        (("A", "float"), ("packed", "INT32"), ("scales", "FLOAT16")),
    ),
    PluginOp(
        "w4_sp24",
        "W4Sparse24MatMul",
        ("K", "N", "group_size"),
        (("A", "float"), ("values", "INT32"), ("meta", "INT32"), ("scales", "FLOAT16")),
    ),
    PluginOp(
        "w4_gqsa",
        "GroupSparseQuantMatMul",
        ("K", "N", "group_size", "bits", "layout"),
        (
            ("A", "float"),
            ("values", "INT32"),
            ("group_idx", "INT32"),
            ("row_ptr", "INT32"),
            ("scales", "FLOAT16"),
        ),
    ),
    # Tile-shared GQSA (spa/trt/repack.py, w4_gqsa_tile): its own op type, so each plugin has
    # fixed inputs; ``keep`` is the groups kept per 128-k slab (2 or 4).
    PluginOp(
        "w4_gqsa_tile",
        "GroupSparseTileMatMul",
        ("K", "N", "group_size", "keep"),
        (("A", "float"), ("values", "INT32"), ("positions", "INT32"), ("scales", "FLOAT16")),
    ),
)


def plugin_op(kernel: str) -> PluginOp:
    """The plugin op of ``kernel`` (``w4a16``, ``w4_sp24``, ``w4_gqsa``, ``w4_gqsa_tile``)."""
    for op in PLUGIN_OPS:
        if op.kernel == kernel:
            return op
    raise KeyError(kernel)
