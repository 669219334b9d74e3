"""Weight-only block quantization: RTN and GPTQ, packed for ORT, TensorRT and ONNX QDQ.

The layouts are specified in ``docs/formats.md``. Heavy work (ORT sessions for
calibration and verification) happens inside functions, not at import time.
"""

from __future__ import annotations

from spa.quant.blockwise import QuantizedWeight, dequantize, quantize_rtn

__all__ = ["QuantizedWeight", "dequantize", "quantize_rtn"]
