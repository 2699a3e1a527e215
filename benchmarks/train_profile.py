"""Where a training step's time goes, on the default study's own data and settings.

  python benchmarks/train_profile.py [--loss proposed_plus] [--fold 1] [--epochs 2] [--threads 1]

Builds the run exactly as `silr train --loss L --fold K` does (silr.stages.train.prepare: the
fold's training frames, params.yaml's model, augmentation and named loss), then times the phases
of every step of `--epochs` epochs after one warm-up epoch: drawing and applying the
augmentation, the forward pass, the loss, the backward pass and the optimiser step (the same calls
as silr.training.loop.train_epoch, each timed on its own; on the CPU they are synchronous). A
second pass under torch.profiler splits the forward and backward work by operator kind
(convolution, batch norm, everything else), to say how much of a step any change outside the
convolutions could ever buy. Prints its figures; nothing is written.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections import defaultdict

import torch

from silr.core.params import load_params
from silr.stages import train as train_stage
from silr.training.dataset import augment, batch_indices, draw_augmentation
from silr.training.loop import build_optimizer, deterministic

PHASES = ("augment", "forward", "loss", "backward", "optimizer")
# Operator kinds of the profiler's table, by the name of the aten op (self CPU time).
KINDS = (("convolution", ("conv",)), ("batch norm", ("batch_norm",)),
         ("upsampling", ("upsample",)))


def kind_of(op_name: str) -> str:
    for kind, needles in KINDS:
        if any(needle in op_name for needle in needles):
            return kind
    return "other"


def forward_and_loss(setup, batch):
    """silr.training.loop.loss_of split in two: the forward pass, then the named loss on its
    output (float32, as there)."""
    images = batch.images.contiguous(memory_format=setup.runtime.memory_format)
    start = time.perf_counter()
    with setup.runtime.autocast():
        output = setup.model(images)
    mid = time.perf_counter()
    output = type(output)(*(t.float() if t is not None else None for t in output))
    total, _ = setup.loss_fn(output, batch)
    return total, mid - start, time.perf_counter() - mid


def timed_epoch(setup, optimizer, generator, seconds: dict[str, float]) -> int:
    frames, params = setup.train_frames, setup.params
    steps = 0
    for index in batch_indices(len(frames), params.train.batch_size, generator, frames.device):
        start = time.perf_counter()
        batch = augment(frames.batch(index),
                        draw_augmentation(params.augment, len(index), generator))
        seconds["augment"] += time.perf_counter() - start
        total, forward_s, loss_s = forward_and_loss(setup, batch)
        seconds["forward"] += forward_s
        seconds["loss"] += loss_s
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        seconds["backward"] += time.perf_counter() - start
        start = time.perf_counter()
        optimizer.step()
        seconds["optimizer"] += time.perf_counter() - start
        steps += 1
    return steps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loss", default="proposed_plus")
    parser.add_argument("--fold", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    params = load_params(args.params)
    with tempfile.TemporaryDirectory() as scratch:
        setup = train_stage.prepare(
            params, loss_name=args.loss, fold=args.fold, data_path=params.data.processed,
            folds_path="data/folds.json", out_dir=os.path.join(scratch, "models"),
            live_dir=os.path.join(scratch, "live"), resume_dir=os.path.join(scratch, "resume"))
    optimizer = build_optimizer(setup.model, setup.params)
    generator = torch.Generator(device=setup.train_frames.device).manual_seed(0)
    setup.model.train()
    print(f"python {platform.python_version()}, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s), "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{args.loss} fold {args.fold}: {len(setup.train_frames)} training frames, batch "
          f"{params.train.batch_size}, {params.model.backbone}, {setup.runtime.describe()}")
    with deterministic(setup.runtime):
        timed_epoch(setup, optimizer, generator, defaultdict(float))  # warm-up
        seconds: dict[str, float] = defaultdict(float)
        steps = sum(timed_epoch(setup, optimizer, generator, seconds)
                    for _ in range(args.epochs))
        total = sum(seconds.values())
        print(f"{steps} steps over {args.epochs} epoch(s): {total / steps * 1000:.0f} ms a step, "
              f"{total / args.epochs:.1f} s an epoch")
        for phase in PHASES:
            print(f"  {phase:10s} {seconds[phase] / steps * 1000:7.1f} ms  "
                  f"{seconds[phase] / total:6.1%}")
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            timed_epoch(setup, optimizer, generator, defaultdict(float))
    by_kind: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        by_kind[kind_of(event.key)] += event.self_cpu_time_total
    profiled = sum(by_kind.values())
    print("one more epoch under torch.profiler, self CPU time by operator kind "
          "(forward and backward together, augmentation, loss and optimiser included):")
    for kind, _ in (*KINDS, ("other", ())):
        print(f"  {kind:12s} {by_kind[kind] / 1e6:6.2f} s  {by_kind[kind] / profiled:6.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
