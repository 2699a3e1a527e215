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
dvclive logs from its state without training. `--fresh` ignores the stored state. On the CPU
a resumed run ends with the same weights as an uninterrupted one. SIGINT / SIGTERM stop the
run at the next step; a checkpoint being written is finished first; the exit status is
128 + signal number.

The loop itself is silr.training.loop; this module prepares the run, scores the validations
through the inference path (silr.inference.predictor), calibrates the learned presence
(silr.evaluation.presence) and says what it does.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from silr.core.device import DeviceSetup, device_for_run
from silr.core.errors import ConfigError, DataError
from silr.core.io import ensure_writable
from silr.core.params import DEFAULT_PARAMS_FILE, Params, load_params
from silr.data.processed import ProcessedData, read_processed
from silr.data.splits import Fold, load_folds
from silr.evaluation.presence import platt_scaling
from silr.evaluation.results import run_dir
from silr.inference import predictor
from silr.model.codec import HeatmapCodec, presence_logit
from silr.model.losses import WeightedLoss
from silr.model.network import build_model, check_backbone
from silr.model.run_config import codec_for_run, loss_for_run, params_hash_of
from silr.model.shape_prior import ShapePrior
from silr.training.checkpoints import resumed_record, write_best
from silr.training.dataset import FrameSet, batch_indices, frame_set
from silr.training.live_log import LiveLog
from silr.training.loop import StopRequest, build_optimizer, deterministic, run_epochs
from silr.training.presence_refit import refit_presence_head
from silr.training.progress import ProgressDisplay, training_progress
from silr.training.resume import (
    RunIdentity,
    code_hash,
    data_hash_of,
    find_resume_state,
    prune_finished_states,
    resume_root,
    run_folder,
    seed_everything,
    state_path,
)
from silr.training.run import RunPaths, Setup, TrainingRecord, build_like
from silr.training.validation import Validate

__all__ = ["add_arguments", "main", "prepare", "presence_calibration", "run", "run_paths",
           "validation_error"]


# ------------------------------------------------------------------ what a run is

def run_paths(out_dir: str | Path, live_dir: str | Path, resume_dir: str | Path, loss_name: str,
              fold: int, identity: RunIdentity, seed: int, extra_seed: bool = False) -> RunPaths:
    """The run's paths; an extra seed of the study (`--seed`) writes to `.../fold<k>_seed<s>/`."""
    folder = run_folder(resume_dir, loss_name, fold, seed)
    named = seed if extra_seed else None
    return RunPaths(best=run_dir(out_dir, loss_name, fold, named) / "best.pt",
                    live=run_dir(live_dir, loss_name, fold, named), resume=folder,
                    last=state_path(folder, identity))


def prepare(params: Params, *, loss_name: str, fold: int, data_path: str | Path,
            folds_path: str | Path, out_dir: str | Path, live_dir: str | Path,
            resume_dir: str | Path | None = None, seed: int | None = None) -> Setup:
    """Check every argument and build the run; raises SilrError before anything is written.
    `seed` (an extra seed of the study, `--seed`) replaces train.seed and the output paths."""
    if seed is not None:
        params = dataclasses.replace(params, train=dataclasses.replace(params.train, seed=seed))
    codec, loss_fn = _codec_and_loss(params, loss_name)
    check_backbone(params.model.backbone)  # the model registry's check, before any output
    runtime = DeviceSetup(device_for_run(params.train.device))
    data_path, folds_path = Path(data_path), Path(folds_path)
    data = read_processed(data_path)
    split = _fold_split(folds_path, data, fold)
    identity = RunIdentity(params_hash=params_hash_of(params, loss_name),
                           data_hash=data_hash_of(data_path, split), code_hash=code_hash(),
                           device=runtime.device.type)
    paths = run_paths(out_dir, live_dir, resume_root(resume_dir), loss_name, fold, identity,
                      seed=params.train.seed, extra_seed=seed is not None)
    # A blocked output location fails now, not after the first epoch (dvclive writes into live).
    ensure_writable(paths.best, paths.live / "metrics.json", paths.last)
    source = str(data_path)
    # The fold's shape prior (the `shape` presence rule) from its training frames' true shapes;
    # the codec and loss are rebuilt with it (the first build only checked the params).
    codec, loss_fn = _codec_and_loss(params, loss_name, shape_prior_of(data, split.train,
                                                                    data_path))
    train_frames = frame_set(data, split.train, runtime.device, source,
                             with_bone_distance=loss_fn.needs_bone_distance)
    val_frames = frame_set(data, split.val, runtime.device, source) if split.val else None
    seed_everything(params.train.seed, torch.Generator())  # the network's initial weights
    model = build_model(params.model.backbone, params.model.decoder_channels,
                        init_checkpoint=params.model.init_checkpoint,
                        presence_head=codec.presence_source is not None)
    model = model.to(runtime.device, memory_format=runtime.memory_format)
    return Setup(params=params, loss_name=loss_name, fold_number=fold, data_path=data_path,
                 paths=paths, train_frames=train_frames,
                 val_frames=val_frames, identity=identity, runtime=runtime, codec=codec,
                 loss_fn=loss_fn.to(runtime.device), model=model,
                 data_source=getattr(data, "source", source))


def _codec_and_loss(params: Params, loss_name: str, shape_prior: ShapePrior | None = None
                    ) -> tuple[HeatmapCodec, WeightedLoss]:
    """The run's codec and loss (ConfigError naming losses.<loss_name> for a bad one)."""
    codec = codec_for_run(params, loss_name, shape_prior)
    return codec, loss_for_run(params, loss_name, codec)


def shape_prior_of(data: ProcessedData, keys: Iterable[tuple[int, int]],
                   where: object = "<data>") -> ShapePrior:
    """The shape prior of the (specimen, frame) `keys`' true landmark positions (frame
    pixels, those past the border included); DataError when they cannot make one."""
    keys = sorted(keys)
    shapes = np.stack([data.specimens[specimen].landmarks_xy[frame]
                       for specimen, frame in keys]).astype(np.float64)
    try:
        return ShapePrior.fit(shapes)
    except ValueError as exc:
        raise DataError(f"{where}: no shape prior from the fold's training landmarks: "
                        f"{exc}") from None


def _fold_split(folds_path: Path, data: ProcessedData, fold: int) -> Fold:
    folds = load_folds(folds_path, data)
    if fold not in folds:
        raise ConfigError(f"{folds_path}: no fold {fold} (folds: {', '.join(map(str, folds))})")
    split = folds[fold]
    if not split.train:
        raise DataError(f"{folds_path}: fold {fold} has no training frames")
    return split


# ------------------------------------------------------------------ validation, calibration

@torch.no_grad()
def validation_error(model: torch.nn.Module, frames: FrameSet, codec: HeatmapCodec,
                     batch_size: int, runtime: DeviceSetup) -> dict[str, float]:
    """Mean Euclidean error (px) over in-frame landmarks of `frames`, and presence accuracy,
    decoded by the one inference path (silr.inference.predictor) as evaluation and predict
    decode."""
    was_training = model.training
    model.eval()
    error_sum = torch.zeros((), device=frames.device)
    counted = torch.zeros((), device=frames.device)
    presence_right = torch.zeros((), device=frames.device)
    for index in batch_indices(len(frames), batch_size, None, frames.device):
        batch = frames.batch(index)
        with runtime.autocast():
            output = model(batch.images.contiguous(memory_format=runtime.memory_format))
        decoded = predictor.decode_output(output, codec)
        truth = codec.to_frame(batch.landmarks_xy)
        distance = torch.linalg.vector_norm(decoded.xy_frame - truth, dim=-1)
        error_sum += (distance * batch.present).sum()
        counted += batch.present.sum()
        presence_right += (decoded.present == batch.present).sum()
    model.train(was_training)
    total = len(frames) * frames.present.shape[1]
    values = torch.stack([error_sum / counted.clamp_min(1), counted,
                          presence_right / total]).tolist()
    return {"error_px": values[0] if values[1] > 0 else math.nan,
            "presence_accuracy": values[2]}


def presence_calibration(setup: Setup, record: TrainingRecord) -> tuple[float, float] | None:
    """Platt scaling (a, b) of the best weights' learned presence on the validation frames
    (heatmap.calibrate), or None: no learned presence, calibration off, or nothing to fit on."""
    codec, frames, runtime = setup.codec, setup.val_frames, setup.runtime
    if codec.presence_source is None or not setup.params.heatmap.calibrate or frames is None:
        return None
    model = setup.model
    if record.best_state is not None:
        model = build_like(setup)
        model.load_state_dict(record.best_state)
    model.eval()
    logits, flags = [], []
    with torch.no_grad():
        for index in batch_indices(len(frames), setup.params.train.batch_size, None,
                                   frames.device):
            batch = frames.batch(index)
            with runtime.autocast():
                output = model(batch.images.contiguous(memory_format=runtime.memory_format))
            logits.append(presence_logit(output.heatmaps.float(), output.presence.float(),
                                         codec.presence_source))
            flags.append(batch.present)
    setup.model.train()
    return platt_scaling(torch.cat(logits).double().cpu().numpy().ravel(),
                         torch.cat(flags).cpu().numpy().ravel())


# ------------------------------------------------------------------ the run

def _say(message: str) -> None:
    tqdm.write(f"silr train: {message}", file=sys.stderr)


def run(params: Params, *, loss_name: str, fold: int, data_path: str | Path,
        folds_path: str | Path, out_dir: str | Path = "models", live_dir: str | Path = "dvclive",
        resume_dir: str | Path | None = None, fresh: bool = False, progress_bar: bool = True,
        seed: int | None = None) -> TrainingRecord:
    """Train (or resume, or re-emit) one run; returns its final record."""
    setup = prepare(params, loss_name=loss_name, fold=fold, data_path=data_path,
                    folds_path=folds_path, out_dir=out_dir, live_dir=live_dir,
                    resume_dir=resume_dir, seed=seed)
    with deterministic(setup.runtime):
        return _train(setup, fresh=fresh, progress_bar=progress_bar)


def _train(setup: Setup, *, fresh: bool, progress_bar: bool) -> TrainingRecord:
    generator = torch.Generator(device=setup.runtime.device)
    seed_everything(setup.params.train.seed, generator)
    optimizer = build_optimizer(setup.model, setup.params)
    record, resumed = _resume(setup, optimizer, generator, fresh=fresh)
    _announce(setup, record, resumed=resumed)
    live = LiveLog(setup.paths.live, record.history)
    bar = _progress_display(setup, record, enabled=progress_bar)
    stop = StopRequest()
    try:
        with stop.installed():
            run_epochs(setup, optimizer, generator, record, validate=_validator(setup), live=live,
                       bar=bar, stop=stop, on_step=_step_reporter(setup, bar, progress_bar))
    finally:
        bar.close()
    _finish(setup, record, live)
    return record


def _resume(setup: Setup, optimizer: torch.optim.Optimizer, generator: torch.Generator, *,
            fresh: bool) -> tuple[TrainingRecord, bool]:
    """(the record to go on from, whether it was resumed from the run's stored state)."""
    state, why_not = (None, "") if fresh else find_resume_state(setup.paths.resume, setup.identity)
    if why_not:
        _say(why_not)
    if state is None:
        return TrainingRecord(), False
    return resumed_record(setup, optimizer, generator, state), True


def _announce(setup: Setup, record: TrainingRecord, *, resumed: bool) -> None:
    params, train = setup.params, setup.params.train
    if resumed and record.epoch >= train.epochs:
        _say(f"{setup.name} already trained ({record.epoch} epochs, {setup.paths.last}); "
             f"re-emitting {setup.paths.best} and the dvclive logs")
    elif resumed:
        _say(f"resuming {setup.name} from {setup.paths.last} at epoch {record.epoch + 1} of "
             f"{train.epochs}")
    else:
        val = len(setup.val_frames) if setup.val_frames is not None else 0
        _say(f"{setup.name} on {setup.runtime.describe()}: {len(setup.train_frames)} training / "
             f"{val} validation frames, {train.epochs} epochs, batch {train.batch_size}, "
             f"{params.model.backbone} {list(params.model.decoder_channels)}")
    if setup.val_frames is None:
        _say("the fold has no validation frames: best.pt will hold the last epoch's weights")


def _progress_display(setup: Setup, record: TrainingRecord, *, enabled: bool) -> ProgressDisplay:
    train = setup.params.train
    steps_per_epoch = len(list(batch_indices(len(setup.train_frames), train.batch_size,
                                             torch.Generator().manual_seed(0), "cpu")))
    return training_progress(total=train.epochs * steps_per_epoch,
                             initial=record.epoch * steps_per_epoch,
                             # the run's folder (fold1 or fold1_seed1): silr parallel counts
                             # each run's epochs by this name, so two seeds must not share it
                             desc=f"train {setup.loss_name}/{setup.paths.live.name}",
                             epochs=train.epochs, enabled=enabled)


def _step_reporter(setup: Setup, bar: ProgressDisplay,
                   show_loss: bool) -> Callable[[torch.Tensor], None]:
    """What each training step reports: the bar moves; with `show_loss`, the bar shows the loss."""
    # Showing the loss needs a host copy: every step on the CPU (free), every 10th on a GPU.
    show_every = 1 if not setup.runtime.is_cuda else 10
    steps = 0

    def on_step(total: torch.Tensor) -> None:
        nonlocal steps
        bar.update(1)
        steps += 1
        if show_loss and steps % show_every == 0:
            bar.set_postfix_str(f"loss {float(total):.4g}", refresh=False)

    return on_step


def _validator(setup: Setup) -> Validate:
    """The run's validation: `validation_error` on its validation frames."""
    def validate(model: torch.nn.Module) -> dict[str, float]:
        return validation_error(model, setup.val_frames, setup.codec, setup.params.train.batch_size,
                                setup.runtime)

    return validate


def _finish(setup: Setup, record: TrainingRecord, live: LiveLog) -> None:
    """After the epochs: refit the presence head, calibrate, write the final best.pt, close the
    logs, prune the other runs' finished states and say where the weights are."""
    refitted = refit_presence_head(setup, record)
    if refitted is not None:
        _say(f"{setup.name}: presence head refitted for {setup.params.train.presence_refit_epochs} "
             f"epochs on the frozen best weights")
        if record.best_state is not None:
            record.best_state = refitted
        else:  # nothing was validated: best.pt holds the last weights, now with the refitted head
            setup.model.load_state_dict(refitted)
    calibration = presence_calibration(setup, record)
    if calibration is not None:
        _say(f"{setup.name}: learned presence calibrated on the validation frames: "
             f"sigmoid({calibration[0]:.3g} z {calibration[1]:+.3g})")
    write_best(setup, record, calibration, finished=True)
    live.close(record)
    prune_finished_states(setup.paths.resume, keep=setup.paths.last)
    if record.best_score is not None:
        _say(f"{setup.name}: best validation error {record.best_score:.2f} px at epoch "
             f"{record.best_epoch} -> {setup.paths.best}")
    else:
        _say(f"{setup.name}: finished -> {setup.paths.best}")


# ------------------------------------------------------------------ the command

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--loss", required=True, metavar="NAME",
                        help="a loss named under `losses` in params.yaml")
    parser.add_argument("--fold", required=True, type=int, metavar="K",
                        help="fold number (tests specimen K)")
    parser.add_argument("--params", default=DEFAULT_PARAMS_FILE,
                        help="params file (default: %(default)s)")
    parser.add_argument("--data", default=None,
                        help="processed 8x file (default: params data.processed)")
    parser.add_argument("--folds", default="data/folds.json",
                        help="folds file (default: %(default)s)")
    parser.add_argument("--out-dir", default="models",
                        help="checkpoint root (default: %(default)s)")
    parser.add_argument("--live-dir", default="dvclive", help="dvclive root (default: %(default)s)")
    parser.add_argument("--resume-dir", default=None, metavar="DIR",
                        help="resume store (default: $SILR_RESUME_DIR, else .silr/resume)")
    parser.add_argument("--fresh", action="store_true",
                        help="ignore a resumable state and start from scratch")
    parser.add_argument("--seed", type=int, default=None, metavar="S",
                        help="an extra training seed of the study (study.seeds): replaces "
                             "train.seed and writes to <out-dir>/<loss>/fold<k>_seed<S>/ and "
                             "<live-dir>/<loss>/fold<k>_seed<S>/")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    params = load_params(args.params)
    run(params, loss_name=args.loss, fold=args.fold, data_path=args.data or params.data.processed,
        folds_path=args.folds, out_dir=args.out_dir, live_dir=args.live_dir,
        resume_dir=args.resume_dir, fresh=args.fresh, progress_bar=not args.no_progress,
        seed=args.seed)
    return 0
