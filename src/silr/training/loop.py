"""The training loop: one optimiser step, one epoch, the epochs of a run with its validations and
checkpoints, and stopping on SIGINT / SIGTERM at the next safe point."""

from __future__ import annotations

import contextlib
import math
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import torch

from silr.core.device import DeviceSetup
from silr.core.errors import ConfigError, SilrError
from silr.core.params import Params
from silr.core.types import Batch, ModelOutput
from silr.training.checkpoints import write_best, write_last
from silr.training.dataset import FrameSet, augment, batch_indices, draw_augmentation
from silr.training.live_log import LiveLog
from silr.training.progress import ProgressDisplay
from silr.training.run import Setup, TrainingRecord
from silr.training.validation import Validate, validate_epoch

__all__ = [
    "StopRequest", "TrainingInterrupted", "build_optimizer", "deterministic", "epoch_entry",
    "interrupted", "loss_of", "run_epochs", "train_epoch",
]


class TrainingInterrupted(SilrError):
    """SIGINT or SIGTERM stopped the run; the exit status is 128 + the signal number."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


class StopRequest:
    """SIGINT / SIGTERM set a flag; the loop stops at the next safe point."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.signum = signum
        # A second signal acts at once (the user really wants out).
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopRequest]:
        if threading.current_thread() is not threading.main_thread():
            yield self  # signal handlers can only be set from the main thread
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        try:
            yield self
        finally:
            for sig, previous in self._previous.items():
                signal.signal(sig, previous)
            self._previous.clear()


def interrupted(stop: StopRequest, setup: Setup, record: TrainingRecord,
                mid_epoch: int | None) -> TrainingInterrupted:
    """The error of a run `stop` ended: during epoch `mid_epoch`, or after the record's epoch."""
    name = signal.Signals(stop.signum).name
    if mid_epoch is not None:
        where = f"during epoch {mid_epoch} (the partial epoch is dropped)"
    else:
        where = f"after epoch {record.epoch}"
    if setup.paths.last.exists():
        saved = f"{setup.paths.last} holds the state to resume from"
    else:
        saved = "no checkpoint was written yet"
    return TrainingInterrupted(f"stopped by {name} {where}; {saved}; rerun the same command to "
                               f"resume", stop.signum)


@contextlib.contextmanager
def deterministic(runtime: DeviceSetup) -> Iterator[None]:
    """Deterministic kernels on the CPU (restored afterwards); CUDA keeps its fast kernels."""
    runtime.configure()
    if runtime.is_cuda:
        yield
        return
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def build_optimizer(model: torch.nn.Module, params: Params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=params.train.lr,
                             weight_decay=params.train.weight_decay)


# ------------------------------------------------------------------ one step, one epoch

def loss_of(model: torch.nn.Module, loss_fn: torch.nn.Module, batch: Batch,
            runtime: DeviceSetup) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    images = batch.images.contiguous(memory_format=runtime.memory_format)
    with runtime.autocast():
        output = model(images)
    # The losses (softmax over 36k pixels, Dice sums) run in float32 outside autocast.
    def as_float(tensor: torch.Tensor | None) -> torch.Tensor | None:
        return tensor.float() if tensor is not None else None

    output = ModelOutput(*(as_float(t) for t in output))
    return loss_fn(output, batch)


def train_epoch(model: torch.nn.Module, loss_fn: torch.nn.Module,
                optimizer: torch.optim.Optimizer, frames: FrameSet, params: Params,
                generator: torch.Generator, runtime: DeviceSetup, stop: StopRequest | None = None,
                on_step: Callable[[torch.Tensor], None] | None = None,
                ) -> dict[str, torch.Tensor] | None:
    """One pass over the training frames; the mean of every loss term (device tensors).

    Sums stay on the device (no per-step host sync). Returns None when `stop` was
    requested before the epoch's last step (the partial epoch is abandoned).
    """
    model.train()
    sums: dict[str, torch.Tensor] = {}
    steps = 0
    indices = list(batch_indices(len(frames), params.train.batch_size, generator, frames.device))
    for step, index in enumerate(indices):
        batch = frames.batch(index)
        batch = augment(batch, draw_augmentation(params.augment, len(index), generator))
        total, terms = loss_of(model, loss_fn, batch, runtime)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        for name, value in (("loss", total.detach()), *terms.items()):
            sums[name] = sums[name] + value if name in sums else value.clone()
        steps += 1
        if on_step is not None:
            on_step(total.detach())
        if stop is not None and stop.requested and step < len(indices) - 1:
            return None
    return {name: value / steps for name, value in sums.items()}


def epoch_entry(epoch: int, optimizer: torch.optim.Optimizer,
                means: dict[str, torch.Tensor], lr: float) -> dict[str, float]:
    """The history entry of `epoch` (learning rate, mean loss terms); ConfigError when the loss
    diverged (`lr`: train.lr, for the message)."""
    entry = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"]}
    entry.update({f"train/{name}": value for name, value in
                  zip(means, torch.stack(list(means.values())).tolist())})
    if not math.isfinite(entry["train/loss"]):
        raise ConfigError(f"training diverged: the loss is {entry['train/loss']} at epoch {epoch} "
                          f"(try a lower train.lr, now {lr})")
    return entry


# ------------------------------------------------------------------ the epochs of a run

def run_epochs(setup: Setup, optimizer: torch.optim.Optimizer, generator: torch.Generator,
               record: TrainingRecord, *, validate: Validate, live: LiveLog,
               bar: ProgressDisplay, stop: StopRequest,
               on_step: Callable[[torch.Tensor], None]) -> None:
    """Train from `record.epoch` to train.epochs, validating when due (`validate`), logging every
    epoch and writing the resume state every train.checkpoint_every epochs, at the last and when
    stopped, and best.pt whenever the validation error improved. TrainingInterrupted when `stop`
    was requested (after the state is written, or during an epoch, which is dropped)."""
    train = setup.params.train
    while record.epoch < train.epochs:
        epoch = record.epoch + 1
        means = train_epoch(setup.model, setup.loss_fn, optimizer, setup.train_frames,
                            setup.params, generator, setup.runtime, stop, on_step)
        if means is None:
            raise interrupted(stop, setup, record, mid_epoch=epoch)
        entry = epoch_entry(epoch, optimizer, means, train.lr)
        improved = validate_epoch(setup, record, entry, epoch, validate, bar)
        record.epoch = epoch
        record.history.append(entry)
        live.log(entry)
        bar.end_epoch(entry)
        if epoch % train.checkpoint_every == 0 or epoch == train.epochs or stop.requested:
            write_last(setup, optimizer, record, generator, finished=epoch == train.epochs)
        if improved:
            write_best(setup, record)
        if stop.requested and epoch < train.epochs:
            raise interrupted(stop, setup, record, mid_epoch=None)
