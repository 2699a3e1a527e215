"""Start-up and first-prediction times of the `silr` command, each the median of a few runs.

    python benchmarks/startup.py --model models/proposed/fold1/best.pt \
        --fullres data/synthetic/phantom_full_res.h5 [--repeats 3]

Prints one line per case: `silr --help`, `silr predict --help`, predict on a missing input
(must fail before any model loads), the first prediction of one 180 x 180 PNG with one model
(a fresh process: imports, model load, one frame, outputs), and one raw full-resolution frame
of an HDF5 file. Run from the project root with the venv's python; SILR overrides the
executable (default: the `silr` beside this python).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def timed(argv: list[str], repeats: int, expect: int | None = 0) -> tuple[float, int]:
    seconds, code = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True)
        seconds.append(time.perf_counter() - start)
        code = done.returncode
        if expect is not None and code != expect:
            raise SystemExit(f"{' '.join(argv)} exited {code}, expected {expect}:\n"
                             f"{done.stderr[-2000:]}")
    return statistics.median(seconds), code


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--fullres", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    silr = os.environ.get("SILR", str(Path(sys.executable).parent / "silr"))
    work = Path(tempfile.mkdtemp(prefix="silr-startup-"))
    frame = work / "frame.png"
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((180, 180)) * 255).astype(np.uint8)).save(frame)
    predict = [silr, "predict", "--model", str(args.model), "--out"]
    cases = [
        ("silr --help", [silr, "--help"], 0),
        ("silr predict --help", [silr, "predict", "--help"], 0),
        ("predict on a missing input", [*predict, str(work / "o0"), str(work / "missing.png")], 1),
        ("first prediction, one 180x180 PNG, one model",
         [*predict, str(work / "o1"), str(frame)], 0),
        ("one raw full-resolution frame (HDF5), one model",
         [*predict, str(work / "o2"), "--specimen", "1", "--frames", "0", str(args.fullres)], 0),
    ]
    print(f"silr start-up, median of {args.repeats} runs, {os.cpu_count()} CPUs, "
          f"{time.strftime('%Y-%m-%d')}")
    for name, argv, expect in cases:
        seconds, code = timed(argv, args.repeats, expect)
        print(f"{name:<50} {seconds:6.2f} s  (exit {code})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
