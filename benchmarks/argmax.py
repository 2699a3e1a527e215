"""argmax over the class channel against max(dim=1).indices, the labels of every decode.

  .venv/bin/python benchmarks/argmax.py

On (16, 7, 192, 192) float32 segmentation logits, one thread (what a DVC worker uses):
both give the same indices (ties included: the first class), and the ratio says what
silr.model.decode_helpers.segmentation_labels saves. Results: benchmarks/results/argmax.txt.
"""

from __future__ import annotations

import time

import torch


def main() -> int:
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 7, 192, 192, generator=generator)
    logits[:, 3] = logits[:, 1]  # ties between two classes everywhere
    ways = {"argmax(dim=1)": lambda: logits.argmax(dim=1),
            "max(dim=1).indices": lambda: logits.max(dim=1).indices}
    assert torch.equal(ways["argmax(dim=1)"](), ways["max(dim=1).indices"]())
    times = {}
    for name, way in ways.items():
        way()
        start = time.perf_counter()
        for _ in range(20):
            way()
        times[name] = (time.perf_counter() - start) / 20
        print(f"{name:20s} {1000 * times[name]:7.2f} ms per (16, 7, 192, 192) batch")
    print(f"same indices (ties included); argmax / max ratio in this run: "
          f"{times['argmax(dim=1)'] / times['max(dim=1).indices']:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
