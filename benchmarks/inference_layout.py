"""Inference speed of the silr network: NCHW against channels_last (NHWC) memory layout, and
channels_last with batch norm folded into the convolutions (checkpoint.fused_for_inference).

  .venv/bin/python benchmarks/inference_layout.py [--checkpoint models/proposed/fold1/best.pt]
      [--threads 1] [--repeats 3]

Times forward passes in eval mode without gradient on random 192x192 inputs, for batches of
4 and 16, in each variant, interleaved so that a noisy machine affects all alike; prints the
ms per frame, the ratios to NCHW, and the largest difference from NCHW's outputs (the
kernels sum in another order, so they agree to float32 rounding, not to the bit). Without a
checkpoint a randomly initialised network of params.yaml's model section is timed.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from silr.core.params import load_params
from silr.model.checkpoint import fused_for_inference, load_model
from silr.model.network import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.checkpoint:
        model, _ = load_model(args.checkpoint)
        source = args.checkpoint
    else:
        params = load_params("params.yaml")
        torch.manual_seed(0)
        model = build_model(params.model.backbone, params.model.decoder_channels).eval()
        source = f"random {params.model.backbone}"
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(16, 1, 192, 192, generator=generator)
    print(f"python {platform.python_version()}, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}, {args.threads} thread(s); "
          f"model: {source}")
    fused = fused_for_inference(model)
    variants = {
        "NCHW": (model, torch.contiguous_format),
        "channels_last": (model, torch.channels_last),
        "channels_last+fused": (fused, torch.channels_last),
    }
    for batch in (4, 16):
        seconds = {name: 0.0 for name in variants}
        outputs = {}
        with torch.inference_mode():
            for repeat in range(args.repeats + 1):
                for name, (network, layout) in variants.items():
                    network = network.to(memory_format=layout)
                    inputs = images[:batch].contiguous(memory_format=layout)
                    started = time.perf_counter()
                    output = network(inputs)
                    if repeat:  # the first round warms up every variant
                        seconds[name] += time.perf_counter() - started
                    outputs[name] = output
        per_frame = {name: 1000 * s / (args.repeats * batch) for name, s in seconds.items()}
        parts = []
        for name in variants:
            difference = max(float((a.float() - b.float()).abs().max())
                             for a, b in zip(outputs["NCHW"], outputs[name]) if a is not None)
            parts.append(f"{name} {per_frame[name]:.1f} ms/frame ("
                         f"{per_frame['NCHW'] / per_frame[name]:.2f}x, largest difference "
                         f"{difference:.1e})")
        print(f"batch {batch:2d}: " + "; ".join(parts))


if __name__ == "__main__":
    main()
