"""Stage `train`: train one named loss on one fold.

  silr train --loss proposed --fold 1 [--params params.yaml] [--data PATH]
             [--folds data/folds.json] [--out-dir models] [--live-dir dvclive]
             [--resume-dir DIR] [--fresh]

AdamW (train.lr, train.weight_decay, constant rate as in the paper) on the fold's
training frames with the paper's augmentation (silr.training.dataset), batch train.batch_size,
train.epochs epochs. Every train.val_every epochs (and at the last) the network is
validated on the fold's validation frames: mean Euclidean distance in pixels (180x180
frame) between `codec.decode`d and true positions, over in-frame landmarks. The weights
with the lowest validation error are `models/NAME/foldK/best.pt` (with the model card,
silr.model.checkpoint). Every epoch's loss terms, validation error and learning rate go to
dvclive (`dvclive/NAME/foldK/`).

Resume: the run's state in the resume store (silr.training.resume:
`.silr/resume/NAME/foldK/seedS/<run hash>.pt`, or under $SILR_RESUME_DIR) holds everything
the run needs to continue exactly where it stopped (weights, optimiser, RNG states incl. the
augmentation generator, epoch, best weights and score, the metric history); its file name is
the hash of the params, data and code it depends on, so states of other runs are kept beside
it, never overwritten. It is written atomically every train.checkpoint_every epochs. A rerun
resumes from its own state and says so; when only states of other params, data, code or
device are there, it starts from scratch with a message naming what differs. A finished run
deletes the finished states of the other runs of its loss, fold and seed (their results are
in DVC's run-cache; unfinished ones stay). A rerun of a finished run re-emits best.pt and the
dvclive logs from its state without training. `--fresh` ignores the stored state. On the CPU a resumed run ends with
the same weights as an uninterrupted one. SIGINT / SIGTERM stop the run at the next step;
a checkpoint being written is finished first; the exit status is 128 + signal number.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from silr.core.device import DeviceSetup, device_for_run
from silr.core.errors import ConfigError, DataError, SilrError
from silr.core.io import ensure_writable
from silr.core.params import DEFAULT_PARAMS_FILE, Params, load_params
from silr.core.types import Batch, ModelOutput
from silr.model import checkpoint
from silr.model.card import ModelCard, codec_for_run, params_hash_of
from silr.training.dataset import FrameSet, augment, batch_indices, draw_augmentation, frame_set
from silr.training.resume import (
    RunIdentity,
    code_hash,
    data_hash_of,
    find_resume_state,
    prune_finished_states,
    restore_rng_states,
    resume_payload,
    resume_root,
    run_folder,
    seed_everything,
    state_path,
)


class TrainingInterrupted(SilrError):
    """SIGINT or SIGTERM stopped the run; the exit status is 128 + the signal number."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


# ------------------------------------------------------------------ what a run is

@dataclass
class RunPaths:
    best: Path
    live: Path
    resume: Path  # this (loss, fold)'s folder in the resume store (silr.training.resume)
    last: Path  # this run's state in it: <resume>/<run hash>.pt

    @staticmethod
    def of(out_dir: str | Path, live_dir: str | Path, resume_dir: str | Path, loss_name: str, fold: int,
           identity: RunIdentity, seed: int, extra_seed: bool = False) -> RunPaths:
        """The run's paths; an extra seed of the study (`--seed`) writes to `.../fold<k>_seed<s>/`."""
        from silr.evaluation.results import run_dir

        folder = run_folder(resume_dir, loss_name, fold, seed)
        named = seed if extra_seed else None
        return RunPaths(best=run_dir(out_dir, loss_name, fold, named) / "best.pt",
                        live=run_dir(live_dir, loss_name, fold, named), resume=folder,
                        last=state_path(folder, identity))


# ------------------------------------------------------------------ training state

@dataclass
class Progress:
    """What changes from epoch to epoch, besides the network and optimiser."""

    epoch: int = 0  # completed epochs
    best_score: float | None = None
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    history: list[dict[str, float]] = field(default_factory=list)  # one entry per completed epoch


# ------------------------------------------------------------------ one epoch

def train_epoch(model: torch.nn.Module, loss_fn: torch.nn.Module, optimizer: torch.optim.Optimizer,
                frames: FrameSet, params: Params, generator: torch.Generator, setup: DeviceSetup,
                stop: StopRequest | None = None, on_step=None) -> dict[str, torch.Tensor] | None:
    """One pass over the training frames; the mean of every loss term (device tensors).

    Sums stay on the device (no per-step host sync). Returns None when `stop` was
    requested before the epoch's last step (the partial epoch is abandoned).
    """
    model.train()
    sums: dict[str, torch.Tensor] = {}
    steps = 0
    indices = list(batch_indices(len(frames), params.train.batch_size, generator, frames.device))
    for step, index in enumerate(indices):
        batch = augment(frames.batch(index), draw_augmentation(params.augment, len(index), generator))
        total, terms = loss_of(model, loss_fn, batch, setup)
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


def loss_of(model: torch.nn.Module, loss_fn: torch.nn.Module, batch: Batch,
            setup: DeviceSetup) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    images = batch.images.contiguous(memory_format=setup.memory_format)
    with setup.autocast():
        output = model(images)
    # The losses (softmax over 36k pixels, Dice sums) run in float32 outside autocast.
    def as_float(tensor):
        return tensor.float() if tensor is not None else None

    output = ModelOutput(*(as_float(t) for t in output))
    return loss_fn(output, batch)


@torch.no_grad()
def validation_error(model: torch.nn.Module, frames: FrameSet, codec, batch_size: int,
                     setup: DeviceSetup) -> dict[str, float]:
    """Mean Euclidean error (px) over in-frame landmarks of `frames`, and presence accuracy,
    decoded by the one inference path (silr.inference.predictor) as evaluation and predict decode."""
    from silr.inference import predictor

    was_training = model.training
    model.eval()
    error_sum = torch.zeros((), device=frames.device)
    counted = torch.zeros((), device=frames.device)
    presence_right = torch.zeros((), device=frames.device)
    for index in batch_indices(len(frames), batch_size, None, frames.device):
        batch = frames.batch(index)
        with setup.autocast():
            output = model(batch.images.contiguous(memory_format=setup.memory_format))
        decoded = predictor.decode_output(output, codec)
        distance = torch.linalg.vector_norm(decoded.xy_frame - codec.to_frame(batch.landmarks_xy), dim=-1)
        error_sum += (distance * batch.present).sum()
        counted += batch.present.sum()
        presence_right += (decoded.present == batch.present).sum()
    model.train(was_training)
    total = len(frames) * frames.present.shape[1]
    values = torch.stack([error_sum / counted.clamp_min(1), counted, presence_right / total]).tolist()
    return {"error_px": values[0] if values[1] > 0 else math.nan, "presence_accuracy": values[2]}


# ------------------------------------------------------------------ signals

class StopRequest:
    """SIGINT / SIGTERM set a flag; the loop stops at the next safe point."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, _frame) -> None:
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


# ------------------------------------------------------------------ the stage

@dataclass
class Setup:
    """A validated run: everything checked before any output is written."""

    params: Params
    loss_name: str
    fold_number: int
    data_path: Path
    paths: RunPaths
    train_frames: FrameSet
    val_frames: FrameSet | None
    identity: RunIdentity
    device: DeviceSetup
    codec: Any
    loss_fn: torch.nn.Module
    model: torch.nn.Module
    data_source: str


def prepare(params: Params, *, loss_name: str, fold: int, data_path: str | Path, folds_path: str | Path,
            out_dir: str | Path, live_dir: str | Path, resume_dir: str | Path | None = None,
            seed: int | None = None) -> Setup:
    """Check every argument and build the run; raises SilrError before anything is written.
    `seed` (an extra seed of the study, `--seed`) replaces train.seed and the output paths."""
    if seed is not None:
        params = dataclasses.replace(params, train=dataclasses.replace(params.train, seed=seed))
    from silr.data.deepfluoro import read_processed
    from silr.data.splits import load_folds
    from silr.model.losses import build_loss
    from silr.model.network import build_model, check_backbone

    weights = params.loss_weights(loss_name)
    codec = codec_for_run(params, loss_name)
    loss_fn = build_loss(weights, codec=codec, visibility_mode=params.losses.visibility_mode,
                         detach_segmentation=params.losses.detach_segmentation,
                         kl_reduction=params.losses.kl_reduction,
                         mse_foreground_weight=params.loss_options(loss_name)["mse_foreground_weight"],
                         mse_target_weight=params.loss_options(loss_name)["mse_target_weight"],
                         key=f"losses.{loss_name}")
    check_backbone(params.model.backbone)  # the model registry's check, before any output is written
    device = DeviceSetup(device_for_run(params.train.device))
    data_path, folds_path = Path(data_path), Path(folds_path)
    data = read_processed(data_path)
    folds = load_folds(folds_path, data)
    if fold not in folds:
        raise ConfigError(f"{folds_path}: no fold {fold} (folds: {', '.join(map(str, folds))})")
    split = folds[fold]
    if not split.train:
        raise DataError(f"{folds_path}: fold {fold} has no training frames")
    identity = RunIdentity(params_hash=params_hash_of(params, loss_name),
                           data_hash=data_hash_of(data_path, split), code_hash=code_hash(),
                           device=device.device.type)
    paths = RunPaths.of(out_dir, live_dir, resume_root(resume_dir), loss_name, fold, identity,
                        seed=params.train.seed, extra_seed=seed is not None)
    # A blocked output location fails now, not after the first epoch (dvclive writes into live).
    ensure_writable(paths.best, paths.live / "metrics.json", paths.last)
    source = str(data_path)
    train_frames = frame_set(data, split.train, device.device, source,
                             with_bone_distance=loss_fn.needs_bone_distance)
    val_frames = frame_set(data, split.val, device.device, source) if split.val else None
    seed_everything(params.train.seed, torch.Generator())  # the network's initial weights
    model = build_model(params.model.backbone, params.model.decoder_channels,
                        init_checkpoint=params.model.init_checkpoint,
                        presence_head=codec.presence_source is not None)
    model = model.to(device.device, memory_format=device.memory_format)
    return Setup(params=params, loss_name=loss_name, fold_number=fold, data_path=data_path,
                 paths=paths, train_frames=train_frames,
                 val_frames=val_frames, identity=identity, device=device, codec=codec,
                 loss_fn=loss_fn.to(device.device), model=model, data_source=getattr(data, "source", source))


def build_optimizer(model: torch.nn.Module, params: Params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=params.train.lr, weight_decay=params.train.weight_decay)


def card_of(setup: Setup, score: float | None, epoch: int,
            calibration: tuple[float, float] | None = None, *, finished: bool = False) -> ModelCard:
    """The card of the weights being written; `finished` only once the run has completed, so that
    the best.pt of a stopped or killed run says so (evaluate refuses it, predict warns)."""
    card = ModelCard.for_run(setup.params, loss_name=setup.loss_name, fold=setup.fold_number,
                             data_hash=setup.identity.data_hash, params_hash=setup.identity.params_hash,
                             val_score_px=score, epoch=epoch, data_source=setup.data_source)
    card = card.with_run_state(finished=finished, epochs_planned=setup.params.train.epochs)
    return card.with_calibration(calibration) if calibration is not None else card


def write_last(setup: Setup, optimizer: torch.optim.Optimizer, progress: Progress,
               generator: torch.Generator, finished: bool) -> None:
    resume = resume_payload(setup.identity, epoch=progress.epoch, finished=finished, optimizer=optimizer,
                            generator=generator, best_score=progress.best_score, best_epoch=progress.best_epoch,
                            best_state=progress.best_state, history=progress.history)
    score = progress.history[-1].get("val/error_px") if progress.history else None
    checkpoint.save_checkpoint(setup.paths.last, setup.model,
                               card_of(setup, score, progress.epoch, finished=finished), resume=resume)


def write_best(setup: Setup, progress: Progress, calibration: tuple[float, float] | None = None, *,
               finished: bool = False) -> None:
    """best.pt from the best weights seen so far (the last ones when nothing was validated);
    `finished` for the final write of a completed run."""
    if progress.best_state is not None:
        checkpoint.save_checkpoint(setup.paths.best, progress.best_state,
                                   card_of(setup, progress.best_score, progress.best_epoch, calibration,
                                           finished=finished))
    else:
        checkpoint.save_checkpoint(setup.paths.best, setup.model,
                                   card_of(setup, None, progress.epoch, calibration, finished=finished))


def refit_presence_head(setup: Setup, progress: Progress) -> dict[str, torch.Tensor] | None:
    """The best weights with the presence head retrained alone (train.presence_refit_epochs) on the
    augmented training frames, every other weight frozen and every batch norm in eval mode, so that
    the head learns from the features it will see at test time (in training, batch norm normalises
    with the batch's own statistics). Each batch also holds train.presence_outliers outlier frames
    (silr.training.dataset.outlier_frames), which train the head's frame gate (outlier frame -> 0, training
    frame -> 1; the landmark logits learn from the training frames only). None when there is no
    head or no refit. Deterministic: its own generator, seeded with train.seed."""
    from silr.model.codec import presence_logit
    from silr.model.losses import presence_bce_loss
    from silr.training.dataset import outlier_frames

    train = setup.params.train
    codec = setup.codec
    if codec.presence_source is None or train.presence_refit_epochs == 0:
        return None
    model = build_like(setup)
    model.load_state_dict(progress.best_state if progress.best_state is not None
                          else checkpoint.model_state_cpu(setup.model))
    model.eval()
    head = model.presence_head
    optimizer = torch.optim.AdamW(head.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    generator = torch.Generator(device=setup.device.device)
    generator.manual_seed(train.seed)
    frames = setup.train_frames
    for _ in range(train.presence_refit_epochs):
        for index in batch_indices(len(frames), train.presence_refit_batch, generator, frames.device):
            batch = augment(frames.batch(index), draw_augmentation(setup.params.augment, len(index), generator))
            images = batch.images
            if train.presence_outliers:
                images = torch.cat((images, outlier_frames(images, train.presence_outliers, generator)))
            with torch.no_grad(), setup.device.autocast():
                features = model.encode(images.contiguous(memory_format=setup.device.memory_format))
                heatmaps = model.heatmap_decoder(features)
            logits, position, gate = head(features, heatmaps)
            real = len(index)
            z = presence_logit(heatmaps[:real].float(), logits[:real].float(), codec.presence_source)
            loss = presence_bce_loss(z, batch.present, position[:real], batch.landmarks_xy, codec.size[1])
            if train.presence_outliers:
                in_domain = torch.zeros_like(gate, dtype=torch.float32)
                in_domain[:real] = 1.0
                loss = loss + torch.nn.functional.binary_cross_entropy_with_logits(gate.float(), in_domain)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    if train.presence_outliers:
        head.frame_gate_trained.fill_(True)
    return checkpoint.model_state_cpu(model)


def presence_calibration(setup: Setup, progress: Progress) -> tuple[float, float] | None:
    """Platt scaling (a, b) of the best weights' learned presence on the validation frames
    (heatmap.calibrate), or None: no learned presence, calibration off, or nothing to fit on."""
    from silr.evaluation.metrics import platt_scaling
    from silr.model.codec import presence_logit

    codec = setup.codec
    if codec.presence_source is None or not setup.params.heatmap.calibrate or setup.val_frames is None:
        return None
    model = setup.model
    if progress.best_state is not None:
        model = build_like(setup)
        model.load_state_dict(progress.best_state)
    model.eval()
    logits, flags = [], []
    with torch.no_grad():
        for index in batch_indices(len(setup.val_frames), setup.params.train.batch_size, None,
                                   setup.val_frames.device):
            batch = setup.val_frames.batch(index)
            with setup.device.autocast():
                output = model(batch.images.contiguous(memory_format=setup.device.memory_format))
            logits.append(presence_logit(output.heatmaps.float(), output.presence.float(), codec.presence_source))
            flags.append(batch.present)
    setup.model.train()
    return platt_scaling(torch.cat(logits).double().cpu().numpy().ravel(),
                         torch.cat(flags).cpu().numpy().ravel())


def build_like(setup: Setup) -> torch.nn.Module:
    """A fresh network of the run's configuration on its device (to hold the best weights)."""
    from silr.model.network import build_model

    model = build_model(setup.params.model.backbone, setup.params.model.decoder_channels,
                        presence_head=setup.codec.presence_source is not None)
    return model.to(setup.device.device, memory_format=setup.device.memory_format)


class LiveLog:
    """dvclive for one run, rebuilt from the checkpoint's history so resumed logs have no gaps or repeats."""

    def __init__(self, directory: Path, history: list[dict[str, float]]) -> None:
        from dvclive import Live

        # dvcyaml=None: the pipeline's dvc.yaml declares the plots; dvclive must never edit it.
        self.live = Live(str(directory), save_dvc_exp=False, dvcyaml=None)
        for entry in history:
            self.log(entry)

    def log(self, entry: dict[str, float]) -> None:
        for name, value in entry.items():
            if name != "epoch" and value is not None and math.isfinite(value):
                self.live.log_metric(name, value)
        self.live.next_step()

    def close(self, progress: Progress) -> None:
        if progress.best_score is not None:
            self.live.summary["best"] = {"val_error_px": progress.best_score, "epoch": progress.best_epoch}
        self.live.end()


def _say(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(f"silr train: {message}", file=sys.stderr)


def run(params: Params, *, loss_name: str, fold: int, data_path: str | Path, folds_path: str | Path,
        out_dir: str | Path = "models", live_dir: str | Path = "dvclive", resume_dir: str | Path | None = None,
        fresh: bool = False, progress_bar: bool = True, seed: int | None = None) -> Progress:
    """Train (or resume, or re-emit) one run; returns its final progress."""
    setup = prepare(params, loss_name=loss_name, fold=fold, data_path=data_path, folds_path=folds_path,
                    out_dir=out_dir, live_dir=live_dir, resume_dir=resume_dir, seed=seed)
    with _deterministic(setup.device):
        return _train(setup, fresh=fresh, progress_bar=progress_bar)


@contextlib.contextmanager
def _deterministic(setup: DeviceSetup) -> Iterator[None]:
    """Deterministic kernels on the CPU (restored afterwards); CUDA keeps its fast kernels."""
    setup.configure()
    if setup.is_cuda:
        yield
        return
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def _train(setup: Setup, *, fresh: bool, progress_bar: bool) -> Progress:
    from silr.training.progress import training_progress

    params, train = setup.params, setup.params.train
    generator = torch.Generator(device=setup.device.device)
    seed_everything(train.seed, generator)
    optimizer = build_optimizer(setup.model, params)
    progress = Progress()

    resume, why_not = (None, "") if fresh else find_resume_state(setup.paths.resume, setup.identity)
    if why_not:
        _say(why_not)
    if resume is not None:
        setup.model.load_state_dict(resume["model_state"])
        optimizer.load_state_dict(resume["optimizer"])
        restore_rng_states(resume["rng"], generator)
        progress = Progress(epoch=int(resume["epoch"]), best_score=resume["best_score"],
                            best_epoch=int(resume["best_epoch"]), best_state=resume["best_state"],
                            history=list(resume["history"]))
    run_name = f"{setup.loss_name} fold {setup.fold_number}" + (
        f" seed {train.seed}" if "_seed" in setup.paths.live.name else "")
    if resume is not None and progress.epoch >= train.epochs:
        _say(f"{run_name} already trained ({progress.epoch} epochs, {setup.paths.last}); "
             f"re-emitting {setup.paths.best} and the dvclive logs")
    elif resume is not None:
        _say(f"resuming {run_name} from {setup.paths.last} at epoch {progress.epoch + 1} of {train.epochs}")
    else:
        val = len(setup.val_frames) if setup.val_frames is not None else 0
        _say(f"{run_name} on {setup.device.describe()}: {len(setup.train_frames)} training / {val} validation "
             f"frames, {train.epochs} epochs, batch {train.batch_size}, {params.model.backbone} "
             f"{list(params.model.decoder_channels)}")
    if setup.val_frames is None:
        _say("the fold has no validation frames: best.pt will hold the last epoch's weights")

    live = LiveLog(setup.paths.live, progress.history)
    steps_per_epoch = len(list(batch_indices(len(setup.train_frames), train.batch_size,
                                             torch.Generator().manual_seed(0), "cpu")))
    bar = training_progress(total=train.epochs * steps_per_epoch, initial=progress.epoch * steps_per_epoch,
                            desc=f"train {setup.loss_name}/fold{setup.fold_number}", epochs=train.epochs,
                            enabled=progress_bar)
    stop = StopRequest()
    # Showing the loss needs a host copy: every step on the CPU (free), every 10th on a GPU.
    show_every = 1 if not setup.device.is_cuda else 10
    step_counter = [0]

    def on_step(total: torch.Tensor) -> None:
        bar.update(1)
        step_counter[0] += 1
        if progress_bar and step_counter[0] % show_every == 0:
            bar.set_postfix_str(f"loss {float(total):.4g}", refresh=False)

    try:
        with stop.installed():
            while progress.epoch < train.epochs:
                epoch = progress.epoch + 1
                means = train_epoch(setup.model, setup.loss_fn, optimizer, setup.train_frames, params, generator,
                                    setup.device, stop, on_step)
                if means is None:
                    raise _interrupted(stop, setup, progress, mid_epoch=epoch)
                entry = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"]}
                entry.update({f"train/{name}": value for name, value in
                              zip(means, torch.stack(list(means.values())).tolist())})
                if not math.isfinite(entry["train/loss"]):
                    raise ConfigError(f"training diverged: the loss is {entry['train/loss']} at epoch {epoch} "
                                      f"(try a lower train.lr, now {train.lr})")
                improved = False
                if setup.val_frames is not None and (epoch % train.val_every == 0 or epoch == train.epochs):
                    scores = validation_error(setup.model, setup.val_frames, setup.codec, train.batch_size,
                                              setup.device)
                    entry["val/error_px"] = scores["error_px"]
                    entry["val/presence_accuracy"] = scores["presence_accuracy"]
                    score = scores["error_px"]
                    if math.isfinite(score) and (progress.best_score is None or score < progress.best_score):
                        progress.best_score, progress.best_epoch = score, epoch
                        progress.best_state = checkpoint.model_state_cpu(setup.model)
                        improved = True
                    bar.set_postfix_str(f"loss {entry['train/loss']:.4g} val {score:.2f}px", refresh=False)
                progress.epoch = epoch
                progress.history.append(entry)
                live.log(entry)
                bar.end_epoch(entry)
                if epoch % train.checkpoint_every == 0 or epoch == train.epochs or stop.requested:
                    write_last(setup, optimizer, progress, generator, finished=epoch == train.epochs)
                if improved:
                    write_best(setup, progress)
                if stop.requested and epoch < train.epochs:
                    raise _interrupted(stop, setup, progress, mid_epoch=None)
    finally:
        bar.close()
    refitted = refit_presence_head(setup, progress)
    if refitted is not None:
        _say(f"{run_name}: presence head refitted for {train.presence_refit_epochs} epochs on the frozen best weights")
        if progress.best_state is not None:
            progress.best_state = refitted
        else:  # nothing was validated: best.pt holds the last weights, now with the refitted head
            setup.model.load_state_dict(refitted)
    calibration = presence_calibration(setup, progress)
    if calibration is not None:
        _say(f"{run_name}: learned presence calibrated on the validation frames: "
             f"sigmoid({calibration[0]:.3g} z {calibration[1]:+.3g})")
    write_best(setup, progress, calibration, finished=True)
    live.close(progress)
    prune_finished_states(setup.paths.resume, keep=setup.paths.last)
    if progress.best_score is not None:
        _say(f"{run_name}: best validation error {progress.best_score:.2f} px at epoch {progress.best_epoch} "
             f"-> {setup.paths.best}")
    else:
        _say(f"{run_name}: finished -> {setup.paths.best}")
    return progress


def _interrupted(stop: StopRequest, setup: Setup, progress: Progress, mid_epoch: int | None) -> TrainingInterrupted:
    name = signal.Signals(stop.signum).name
    if mid_epoch is not None:
        where = f"during epoch {mid_epoch} (the partial epoch is dropped)"
    else:
        where = f"after epoch {progress.epoch}"
    if setup.paths.last.exists():
        saved = f"{setup.paths.last} holds the state to resume from"
    else:
        saved = "no checkpoint was written yet"
    return TrainingInterrupted(f"stopped by {name} {where}; {saved}; rerun the same command to resume",
                               stop.signum)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--loss", required=True, metavar="NAME", help="a loss named under `losses` in params.yaml")
    parser.add_argument("--fold", required=True, type=int, metavar="K", help="fold number (tests specimen K)")
    parser.add_argument("--params", default=DEFAULT_PARAMS_FILE, help="params file (default: %(default)s)")
    parser.add_argument("--data", default=None, help="processed 8x file (default: params data.processed)")
    parser.add_argument("--folds", default="data/folds.json", help="folds file (default: %(default)s)")
    parser.add_argument("--out-dir", default="models", help="checkpoint root (default: %(default)s)")
    parser.add_argument("--live-dir", default="dvclive", help="dvclive root (default: %(default)s)")
    parser.add_argument("--resume-dir", default=None, metavar="DIR",
                        help="resume store (default: $SILR_RESUME_DIR, else .silr/resume)")
    parser.add_argument("--fresh", action="store_true", help="ignore a resumable state and start from scratch")
    parser.add_argument("--seed", type=int, default=None, metavar="S",
                        help="an extra training seed of the study (study.seeds): replaces train.seed and writes "
                             "to <out-dir>/<loss>/fold<k>_seed<S>/ and <live-dir>/<loss>/fold<k>_seed<S>/")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    params = load_params(args.params)
    run(params, loss_name=args.loss, fold=args.fold, data_path=args.data or params.data.processed,
        folds_path=args.folds, out_dir=args.out_dir, live_dir=args.live_dir, resume_dir=args.resume_dir,
        fresh=args.fresh, progress_bar=not args.no_progress, seed=args.seed)
    return 0
