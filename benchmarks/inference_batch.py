"""Inference speed of silr's one prediction path (silr.inference.predict_frames, as evaluate and
robustness call it) against its batch size, on the CPU.

  .venv/bin/python benchmarks/inference_batch.py --checkpoint models/proposed_plus/fold1/best.pt
      [--data data/processed/ds_8x.h5] [--frames 176] [--threads 1] [--repeats 2]

Loads the checkpoint as the stages do (batch norm folded, channels_last), predicts the first
`--frames` processed frames at batch sizes 4, 8 and 16 in turn, each round all three so that a
noisy machine affects all alike (the first round only warms up), and prints ms per frame, the
ratio to batch 16, and how far each batch size's landmarks and presence calls are from batch 16's
(the kernels sum in another order per batch shape, so they agree to float32 rounding).
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from silr.data.processed import read_processed
from silr.inference.predictor import predict_frames
from silr.model.checkpoint import load_model

BATCH_SIZES = (4, 8, 16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", default="data/processed/ds_8x.h5")
    parser.add_argument("--frames", type=int, default=176)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, card = load_model(args.checkpoint, fused=True)
    codec = card.codec(args.checkpoint)
    data = read_processed(args.data)
    specimens = data.specimens.values() if isinstance(data.specimens, dict) else data.specimens
    images = np.concatenate([s.images for s in specimens])[:args.frames].astype(np.float32)
    print(f"python {platform.python_version()}, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}, {args.threads} thread(s); "
          f"model: {args.checkpoint}; {len(images)} frames {images.shape[1]}x{images.shape[2]}")
    seconds = dict.fromkeys(BATCH_SIZES, 0.0)
    outputs = {}
    for repeat in range(args.repeats + 1):
        for batch in BATCH_SIZES:
            started = time.perf_counter()
            outputs[batch] = predict_frames(model, codec, images, batch_size=batch)
            if repeat:  # the first round warms up every batch size
                seconds[batch] += time.perf_counter() - started
    per_frame = {b: 1000 * s / (args.repeats * len(images)) for b, s in seconds.items()}
    reference = outputs[16]
    for batch in BATCH_SIZES:
        xy_gap = float(np.nanmax(np.abs(outputs[batch].xy - reference.xy)))
        same_calls = bool(np.array_equal(outputs[batch].present, reference.present))
        print(f"batch {batch:2d}: {per_frame[batch]:.1f} ms/frame "
              f"({per_frame[16] / per_frame[batch]:.2f}x batch 16); largest landmark difference "
              f"from batch 16 {xy_gap:.1e} px; presence calls equal: {same_calls}")


if __name__ == "__main__":
    main()
