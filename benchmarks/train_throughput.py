"""Training and inference throughput of the silr network, and what it means for a study.

  .venv/bin/python benchmarks/train_throughput.py [--backbone hrnet_w18_small]
      [--decoder-channels 16 8] [--batch-size 8] [--device auto] [--steps 6] [--loss proposed]

Times, on random 192x192 frames resident on the device:
- training images/s: the step `silr train` runs (batched augmentation on the device,
  forward in bf16 autocast + channels_last on CUDA, the named loss with its targets,
  backward, AdamW) via `silr.training.loop.loss_of`;
- inference frames/s: forward + `HeatmapCodec.decode` in eval mode, no gradient;
then projects the wall time of the default pipeline's 18 training runs (params.yaml:
study losses x folds, train.epochs on a default fold's 54 frames, its validations, and
the measured start-up of one process: imports + model build) and of the paper's protocol
(18 runs x 1000 epochs on 366 frames, as the issue counts it; a fold really trains on
~275 of them). Defaults for every model and training value come from params.yaml.
Figures on a busy machine are pessimistic: two OpenMP threads competing with other
processes for two cores can run several times slower.
"""

from __future__ import annotations

import time

START = time.perf_counter()  # before the heavy imports: start-up is part of every run

import argparse  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402

import torch  # noqa: E402

from silr.core.anatomy import NETWORK_INPUT_PX, NUM_CLASSES, NUM_LANDMARKS  # noqa: E402
from silr.core.device import DeviceSetup, select_device  # noqa: E402
from silr.core.params import load_params  # noqa: E402
from silr.model.codec import HeatmapCodec  # noqa: E402
from silr.model.losses import build_loss  # noqa: E402
from silr.model.network import build_model  # noqa: E402
from silr.model.run_config import codec_for_run  # noqa: E402
from silr.training.dataset import FrameSet, augment, draw_augmentation  # noqa: E402
from silr.training.loop import loss_of  # noqa: E402

PAPER_RUNS, PAPER_EPOCHS, PAPER_FRAMES = 18, 1000, 366
# A fold of the paper's data trains on 90% of the five other specimens' frames.
PAPER_FOLD_FRAMES = round(PAPER_FRAMES * 5 / 6 * 0.9)
PAPER_MINUTES = 30


def random_frames(count: int, device: torch.device, generator: torch.Generator) -> FrameSet:
    size = NETWORK_INPUT_PX
    return FrameSet(
        images=torch.rand(count, 1, size, size, generator=generator).to(device),
        labels=torch.randint(0, NUM_CLASSES, (count, size, size),
                             generator=generator).to(torch.uint8).to(device),
        landmarks_xy=(6 + 179 * torch.rand(count, NUM_LANDMARKS, 2,
                                           generator=generator)).to(device),
        present=torch.ones(count, NUM_LANDMARKS, dtype=torch.bool).to(device),
        keys=[(1, i) for i in range(count)],
    )


class CpuBf16Setup(DeviceSetup):
    """The CPU with bfloat16 autocast (for measuring whether it pays)."""

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast("cpu", dtype=torch.bfloat16)

    def describe(self) -> str:
        return f"cpu ({torch.get_num_threads()} threads, bf16 autocast)"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def timed(step, device: torch.device, steps: int, warmup: int) -> float:
    """Seconds per step after `warmup` untimed steps (allocator, oneDNN / cuDNN kernel choice)."""
    for _ in range(warmup):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return (time.perf_counter() - start) / steps


def training_rate(model, loss_fn, frames: FrameSet, params, setup: DeviceSetup, batch_size: int,
                  steps: int, warmup: int, generator: torch.Generator) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=params.train.lr,
                                  weight_decay=params.train.weight_decay)
    model.train()

    def step() -> None:
        index = torch.randperm(len(frames), device=frames.device, generator=generator)[:batch_size]
        batch = augment(frames.batch(index),
                        draw_augmentation(params.augment, batch_size, generator))
        total, _ = loss_of(model, loss_fn, batch, setup)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()

    return batch_size / timed(step, setup.device, steps, warmup)


@torch.no_grad()
def inference_rate(model, codec: HeatmapCodec, frames: FrameSet, setup: DeviceSetup,
                   batch_size: int, steps: int, warmup: int) -> float:
    model.eval()
    images = frames.images[torch.arange(batch_size, device=frames.device) % len(frames)]
    images = images.contiguous(memory_format=setup.memory_format)

    def step() -> None:
        with setup.autocast():
            output = model(images)
        # what evaluation decodes: the predicted labels feed the template and shape rules
        codec.decode(output.heatmaps.float(), labels=output.segmentation.argmax(dim=1))

    return batch_size / timed(step, setup.device, steps, warmup)


def hardware(device: torch.device) -> str:
    lines = [f"python {platform.python_version()}, torch {torch.__version__}, "
             f"{platform.platform()}"]
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        lines.append(f"GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB")
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    lines.append(f"CPU: {cpu}, {os.cpu_count()} logical cores, "
                 f"torch threads {torch.get_num_threads()}, "
                 f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (1/5/15 min)")
    return "\n".join(lines)


def duration(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds < 2 * 3600 else f"{seconds / 3600:.1f} h"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--backbone", default=None, help="default: model.backbone")
    parser.add_argument("--decoder-channels", type=int, nargs="*", default=None,
                        help="default: model.decoder_channels "
                             "(none given: heads on the stride-4 map)")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast on the CPU too")
    parser.add_argument("--batch-size", type=int, default=None, help="default: train.batch_size")
    parser.add_argument("--device", default=None,
                        help="auto | cpu | cuda | cuda:N | mps (default: train.device)")
    parser.add_argument("--loss", default="proposed", help="named loss whose terms are computed")
    parser.add_argument("--steps", type=int, default=6, help="timed steps (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=2,
                        help="untimed steps first (default: %(default)s)")
    args = parser.parse_args(argv)

    params = load_params(args.params)
    backbone = args.backbone or params.model.backbone
    channels = tuple(params.model.decoder_channels if args.decoder_channels is None
                     else args.decoder_channels)
    params = dataclasses.replace(params, model=dataclasses.replace(params.model,
                                                                   decoder_channels=channels))
    batch_size = args.batch_size or params.train.batch_size
    setup = DeviceSetup(select_device(args.device or params.train.device, key="--device"))
    setup.configure()
    torch.manual_seed(0)
    model = build_model(backbone, channels).to(setup.device, memory_format=setup.memory_format)
    startup = time.perf_counter() - START  # imports + model build: paid once per `silr train`
    if args.bf16 and setup.device.type == "cpu":
        setup = CpuBf16Setup(setup.device)
    codec = codec_for_run(params, args.loss)
    loss_fn = build_loss(params.loss_weights(args.loss), codec=codec,
                         visibility_mode=params.losses.visibility_mode,
                         detach_segmentation=params.losses.detach_segmentation).to(setup.device)
    frames = random_frames(max(2 * batch_size, 16), setup.device, torch.Generator().manual_seed(0))
    generator = torch.Generator(device=setup.device).manual_seed(0)

    print(hardware(setup.device))
    print(f"model: {backbone}, decoder {list(channels)}, device {setup.describe()}, "
          f"batch {batch_size}, loss {args.loss}")
    train_rate = training_rate(model, loss_fn, frames, params, setup, batch_size, args.steps,
                               args.warmup, generator)
    infer_batch = max(batch_size, 16)
    infer_rate = inference_rate(model, codec, frames, setup, infer_batch, args.steps, args.warmup)
    print(f"training:  {train_rate:8.1f} images/s  ({args.steps} steps of {batch_size} after "
          f"{args.warmup} warm-up)")
    print(f"inference: {infer_rate:8.1f} frames/s  (batch {infer_batch}, forward + decode)")
    print(f"start-up (imports + model build): {startup:.1f} s per run")
    print_projections(params, startup, train_rate, infer_rate)
    return 0


def print_projections(params, startup: float, train_rate: float, infer_rate: float) -> None:
    """The default pipeline's training time and the paper protocol's, at the measured rates."""
    runs = len(params.study.losses) * len(params.study.folds)
    # A fold's pool: the frames of the five other specimens, on average over the folds.
    pool = round(sum(params.synth.frames) * (params.synth.specimens - 1) / params.synth.specimens)
    val_frames = max(1, round(pool * params.folds.val_fraction))
    fold_frames = pool - val_frames
    validations = sum(1 for e in range(1, params.train.epochs + 1)
                      if e % params.train.val_every == 0 or e == params.train.epochs)
    per_run = (startup + params.train.epochs * fold_frames / train_rate
               + validations * val_frames / infer_rate)
    print(f"default pipeline training: {runs} runs x ({startup:.0f} s start-up + "
          f"{params.train.epochs} epochs x {fold_frames} frames + {validations} validations x "
          f"{val_frames} frames) = {per_run:.0f} s per run, {duration(runs * per_run)} in all")
    for label, frames_per_epoch in (
            ("366 frames (the issue's count)", PAPER_FRAMES),
            (f"{PAPER_FOLD_FRAMES} frames (a fold's training set)", PAPER_FOLD_FRAMES)):
        images = PAPER_RUNS * PAPER_EPOCHS * frames_per_epoch
        print(f"paper protocol, {PAPER_RUNS} runs x {PAPER_EPOCHS} epochs x {label}: {images} "
              f"images -> {duration(images / train_rate)} on this device; {PAPER_MINUTES} min "
              f"needs {images / (PAPER_MINUTES * 60):.0f} images/s")


if __name__ == "__main__":
    sys.exit(main())
