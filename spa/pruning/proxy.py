"""Data-free second moments of a consumer's input (the OBSPA Hessian proxy).

Derivation (docs/criteria.md): the input ``x`` of a consumer is traced back
through pass-through ops (Identity, Dropout, MaxPool, AveragePool) and at
most one Relu-like op (Relu, Gelu, SiLU as ``Mul(z, Sigmoid(z))``, ...) to its
producer; a product of two traced values (the SwiGLU ``act(gate) * up``) takes
the elementwise product of their moments (independent factors):

* BatchNormalization / LayerNormalization / RMS-style normalisation with scale
  ``gamma`` and shift ``beta``: each channel is modelled as an independent
  ``N(beta_c, gamma_c^2)`` (the normalised value has zero mean and unit
  variance), so ``E[x x^T] = diag(gamma^2) + beta beta^T``;
* a linear producer ``x = W u + b`` (Conv, Gemm, MatMul with a constant
  weight) under white inputs ``E[u u^T] = I``: ``E[x x^T] = W W^T + b b^T``;
* through a Relu, independent Gaussian channels use the rectified-Gaussian
  moments; correlated (linear-producer) channels use the first-order
  arc-cosine kernel of the zero-mean Gaussian (the bias is neglected);
* anything else: ``E[x x^T] = I`` (reconstruction then equals plain removal
  and the score is the squared weight norm).
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from spa.model_io import read_array

__all__ = ["proxy_moments"]

_PASS_THROUGH = {"Identity", "Dropout", "MaxPool", "AveragePool"}
# treated as Relu (they agree with it away from 0): Gelu, SiLU, ...
_RELU_LIKE = {"Relu", "Gelu", "FastGelu", "BiasGelu", "QuickGelu", "Softplus", "Elu", "Selu"}
_NORMS = {
    "BatchNormalization": (1, 2),
    "LayerNormalization": (1, 2),
    "RMSNormalization": (1, None),
    "SimplifiedLayerNormalization": (1, None),
    "SkipLayerNormalization": (2, 3),
    "SkipSimplifiedLayerNormalization": (2, None),
}


def _constant(value: ir.Value | None) -> np.ndarray | None:
    if value is None or value.const_value is None:
        return None
    return read_array(value.const_value, np.float64)


def _normal_cdf(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def _normal_pdf(x: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * x**2) / math.sqrt(2.0 * math.pi)


def _rectified(mean: np.ndarray, std: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``E[relu(z)]`` and ``E[relu(z)^2]`` for ``z ~ N(mean, std^2)``."""
    std = np.maximum(std, 1e-12)
    alpha = mean / std
    cdf, pdf = _normal_cdf(alpha), _normal_pdf(alpha)
    first = mean * cdf + std * pdf
    second = (mean**2 + std**2) * cdf + mean * std * pdf
    return first, second


def _arc_cosine(covariance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``E[relu(x) relu(x)^T]`` and ``E[relu(x)]`` for ``x ~ N(0, covariance)``."""
    std = np.sqrt(np.maximum(np.diag(covariance), 1e-24))
    cosine = np.clip(covariance / np.outer(std, std), -1.0, 1.0)
    theta = np.arccos(cosine)
    kernel = np.outer(std, std) / (2 * math.pi) * (np.sin(theta) + (math.pi - theta) * cosine)
    return kernel, std / math.sqrt(2 * math.pi)


def _linear_weight(node: ir.Node) -> np.ndarray | None:
    """The producer's weight as ``[out_channels, fan_in]``."""
    weight = _constant(node.inputs[1] if len(node.inputs) > 1 else None)
    if weight is None or weight.ndim < 2:
        return None
    if node.op_type == "Conv":
        return weight.reshape(weight.shape[0], -1)
    if node.op_type == "Gemm":
        trans = node.attributes.get("transB")
        return weight if trans is not None and trans.value else weight.T
    return weight.T if weight.ndim == 2 else None


Moments = tuple[np.ndarray, np.ndarray, str]


def _producer_moments(producer: ir.Node, channels: int, rectify: str | None) -> Moments | None:
    """Moments of a normalisation or linear producer's output, optionally through
    the Relu-like op ``rectify``."""
    op = producer.op_type
    through = f" through {rectify}" if rectify else ""
    if op in _NORMS:
        scale_index, bias_index = _NORMS[op]
        gamma = _constant(
            producer.inputs[scale_index] if len(producer.inputs) > scale_index else None
        )
        beta = None
        if bias_index is not None and len(producer.inputs) > bias_index:
            beta = _constant(producer.inputs[bias_index])
        if gamma is None or gamma.size != channels:
            return None
        gamma = gamma.reshape(-1)
        beta = np.zeros(channels) if beta is None or beta.size != channels else beta.reshape(-1)
        if rectify:
            first, second = _rectified(beta, np.abs(gamma))
            moment = np.outer(first, first)
            np.fill_diagonal(moment, second)
            return moment, first, f"{op} statistics{through}"
        return np.diag(gamma**2) + np.outer(beta, beta), beta, f"{op} statistics"
    if op in ("Conv", "Gemm", "MatMul") and producer.domain == "":
        weight = _linear_weight(producer)
        if weight is None or weight.shape[0] != channels:
            return None
        bias = None
        if op in ("Conv", "Gemm") and len(producer.inputs) > 2:
            bias = _constant(producer.inputs[2])
        bias = np.zeros(channels) if bias is None or bias.size != channels else bias.reshape(-1)
        covariance = weight @ weight.T
        if rectify:
            moment, first = _arc_cosine(covariance)
            return moment, first, f"{op} weights{through}"
        return covariance + np.outer(bias, bias), bias, f"{op} weights"
    return None


def _skip(value: ir.Value | None) -> ir.Node | None:
    """The first producer of ``value`` that is not a pass-through op."""
    producer = value.producer() if value is not None else None
    while producer is not None and producer.op_type in _PASS_THROUGH:
        source = producer.inputs[0]
        producer = source.producer() if source is not None else None
    return producer


def _gate_input(node: ir.Node) -> ir.Value | None:
    """``z`` when ``node`` is ``Mul(z, Sigmoid(z))`` (a decomposed SiLU/Swish)."""
    for index in (0, 1):
        other = node.inputs[1 - index]
        gate = other.producer() if other is not None else None
        if gate is not None and gate.op_type == "Sigmoid" and gate.inputs[0] is node.inputs[index]:
            return node.inputs[index]
    return None


def _trace(value: ir.Value | None, channels: int, depth: int = 0) -> Moments | None:
    producer = _skip(value)
    if producer is None or depth > 6 or producer.domain not in ("", "com.microsoft"):
        return None
    rectify = producer.op_type if producer.op_type in _RELU_LIKE else None
    if producer.op_type == "Mul":
        gated = _gate_input(producer)
        if gated is not None:
            rectify, inner = "SiLU", _skip(gated)
            return None if inner is None else _producer_moments(inner, channels, rectify)
        if producer.inputs[0] is producer.inputs[1] or any(
            _constant(v) is not None for v in producer.inputs
        ):
            return None  # a square, or a scaling: not two independent factors
        left = _trace(producer.inputs[0], channels, depth + 1)
        right = _trace(producer.inputs[1], channels, depth + 1)
        if left is None or right is None:
            return None
        # independent factors: E[(a b)(a b)^T] = E[a a^T] * E[b b^T] elementwise
        return left[0] * right[0], left[1] * right[1], f"({left[2]}) x ({right[2]})"
    if rectify:
        inner = _skip(producer.inputs[0])
        return None if inner is None else _producer_moments(inner, channels, rectify)
    return _producer_moments(producer, channels, None)


def proxy_moments(value: ir.Value, channels: int) -> Moments:
    """``(E[x x^T], E[x], source)`` of ``value``'s ``channels`` without data."""
    found = _trace(value, channels)
    return found if found is not None else (np.eye(channels), np.zeros(channels), "identity")
