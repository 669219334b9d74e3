"""Weight-only INT4 on the Shakespeare LM test bed: GPTQ beats RTN in perplexity.

A trained byte-level Llama-style model (models/testbeds/shakespeare_lm.onnx)
on real text: held-out perplexity (ONNX Runtime) after W4 block-128 (asymmetric)
RTN and after W4 block-128 GPTQ with calibration windows from the training plays.
"""

from __future__ import annotations

from pathlib import Path

from spa.testbeds import shakespeare
from spa.workflows.quantize import quantize_model

LM = Path(__file__).resolve().parent.parent / "models" / "testbeds" / "shakespeare_lm.onnx"
WINDOWS = 48


def test_w4_gptq_has_lower_perplexity_than_rtn(tmp_path: Path) -> None:
    text = shakespeare.heldout_text()
    dense = shakespeare.perplexity(LM, text, max_windows=WINDOWS)
    perplexity = {}
    for method in ("rtn", "gptq"):
        output = tmp_path / f"{method}.onnx"
        result = quantize_model(
            LM, output, bits=4, block=128, method=method, symmetric=False,
            calib=shakespeare.calibration_feeds(16, 128, seed=0) if method == "gptq" else None,
            verify=False,
        )
        assert result.mac_coverage > 0.9
        perplexity[method] = shakespeare.perplexity(output, text, max_windows=WINDOWS)
    assert dense < perplexity["gptq"] < perplexity["rtn"], (dense, perplexity)
