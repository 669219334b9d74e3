"""``python -m spa.testbeds [NAME ...] [--limit N]``: the dense metrics of the registered beds.

Evaluates each named bed (all by default) on its full evaluation split (or ``--limit``'s
subset) with the unchanged model and prints one line per bed: the metrics, the figures
recorded in :attr:`spa.testbeds.Testbed.dense` and the wall time.
"""

from __future__ import annotations

import argparse
import sys
import time

from spa.errors import UserError
from spa.testbeds import get, names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spa.testbeds", description=__doc__)
    parser.add_argument("beds", nargs="*", metavar="NAME", help=f"beds to run (default: all of {', '.join(names())})")
    parser.add_argument("--limit", type=int, default=None, help="evaluate this bed-specific subset only")
    args = parser.parse_args(argv)
    try:
        for name in args.beds or names():
            bed = get(name)
            start = time.perf_counter()
            scores = bed.evaluate(bed.model_path(), limit=args.limit)
            shown = " ".join(f"{key}={value:.4f}" for key, value in scores.items())
            recorded = " ".join(f"{key}={value:.4f}" for key, value in bed.dense.items())
            print(f"{name:15s} | {shown} | recorded {recorded} | {time.perf_counter() - start:.1f}s",
                  flush=True)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
