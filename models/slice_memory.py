"""Peak memory of ``spa slice`` against the number of calibration windows.

    python models/slice_memory.py                 # 64 and 512 windows, ~2 min on two cores

The PCA statistics are ``X^T X`` per norm output, accumulated in float64 one
calibration sample at a time, so the memory of ``spa slice`` should not grow
with the number of samples. This runs ``spa slice`` on the Shakespeare LM
(``--ratio 0.25 --no-exactness``) in a fresh process per count, with a ``--calib``
``.npz`` of that many 128-byte training windows, and reads the child's peak
resident set size from ``wait4``. Prints a Markdown table and writes
``models/results/slice_memory.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from spa.testbeds import shakespeare

__all__ = ["main", "peak_rss_mib"]

MODEL = Path(__file__).resolve().parent / "testbeds" / "shakespeare_lm.onnx"
RESULTS = Path(__file__).resolve().parent / "results"


def peak_rss_mib(command: list[str]) -> tuple[float, float]:
    """Run ``command``; its peak resident set size (MiB) and wall time (s). Fails if it fails."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        assert process.stderr is not None
        raise RuntimeError(f"{' '.join(command)} failed: {process.stderr.read().decode()[-2000:]}")
    return usage.ru_maxrss / 1024.0, seconds  # ru_maxrss is in KiB on Linux


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    spa = shutil.which("spa") or str(Path(sys.executable).with_name("spa"))
    rows = []
    with tempfile.TemporaryDirectory(prefix="spa-slice-memory-") as tmp:
        for count in args.windows:
            calib = Path(tmp) / f"calib-{count}.npz"
            feeds = shakespeare.calibration_feeds(count, seed=0)
            np.savez(calib, input_ids=np.stack([feed["input_ids"] for feed in feeds]))
            command = [spa, "slice", str(MODEL), "-o", str(Path(tmp) / f"out-{count}.onnx"),
                       "--ratio", "0.25", "--no-exactness", "--calib", str(calib)]  # fmt: skip
            peak, seconds = peak_rss_mib(command)
            rows.append({"windows": count, "calibrated": count - round(count * 0.25),
                         "held_out": round(count * 0.25), "peak_rss_mib": round(peak, 1),
                         "seconds": round(seconds, 1)})  # fmt: skip
            print(rows[-1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "slice_memory.json").write_text(json.dumps(rows, indent=2) + "\n")
    print("| calibration windows (PCA / held out) | peak RSS | time |\n|---|---|---|")
    for row in rows:
        print(f"| {row['windows']} ({row['calibrated']} / {row['held_out']}) | "
              f"{row['peak_rss_mib']:.0f} MiB | {row['seconds']:.0f} s |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
