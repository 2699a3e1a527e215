"""One fold's held-out frames and their trained model: what `silr evaluate` and `silr robustness`
score. Reads and checks the folds file, the processed data and `models/<loss>/fold<k>/best.pt`
(the card must be the model of that loss, fold and seed), with errors that say which command
makes a missing checkpoint; and the command-line arguments the two stages share."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from silr.core.anatomy import LANDMARK_NAMES
from silr.core.device import device_for_run, select_device
from silr.core.errors import CheckpointError, ConfigError, DataError
from silr.core.params import DEFAULT_PARAMS_FILE, Params, load_params
from silr.data.processed import ProcessedData, read_processed
from silr.data.splits import check_against_data, load_folds
from silr.evaluation.results import (
    DEFAULT_FOLDS,
    DEFAULT_METRICS,
    DEFAULT_MODELS,
    checkpoint_path,
)
from silr.inference.predictor import INFERENCE_BATCH_SIZE
from silr.model import checkpoint
from silr.model.card import ModelCard
from silr.model.codec import HeatmapCodec

__all__ = ["FoldModel", "add_fold_arguments", "fold_params", "load_fold_model"]


def _check_card(path: Path, card: ModelCard, loss: str, fold: int) -> None:
    # A best.pt copied between folders would silently score the wrong model.
    trained_loss = card.loss.name if card.loss is not None else None
    if trained_loss not in (None, loss) or card.fold not in (None, fold):
        raise CheckpointError(f"{path}: holds the model of loss {trained_loss!r} fold "
                              f"{card.fold!r}, expected loss {loss!r} fold {fold}")
    note = card.unfinished_note()
    if note is not None:
        raise CheckpointError(f"{path}: {note}; finish it with `silr train` (or `dvc repro`), "
                              "which resumes it")
    if list(card.landmark_names) != list(LANDMARK_NAMES):
        raise CheckpointError(f"{path}: model predicts landmarks {list(card.landmark_names)}, "
                              f"expected {list(LANDMARK_NAMES)}")


def _numbers(values: Iterable[int]) -> str:
    return ", ".join(map(str, sorted(values)))


def _how_to_train(params: Params, loss: str, fold: int) -> str:
    """The command that makes the missing checkpoint: a dvc.yaml stage only where the study has
    one."""
    if loss in params.study.losses and fold in params.study.folds:
        return f"train it first with `dvc repro train@{loss}-{fold}`"
    missing = [f"study.losses ({', '.join(params.study.losses)})"
               if loss not in params.study.losses else "",
               f"study.folds ({_numbers(params.study.folds)})"
               if fold not in params.study.folds else ""]
    return (f"dvc.yaml has no stage train@{loss}-{fold}, as it is not in "
            f"{' and '.join(m for m in missing if m)}: add it there to run it with the pipeline, "
            f"or train it first with `silr train --loss {loss} --fold {fold}`")


@dataclass
class FoldModel:
    """One (loss, fold[, seed]) model with its held-out frames: what evaluate and robustness
    score."""

    data: ProcessedData
    test: list[tuple[int, int]]     # (specimen, frame index) of the held-out frames, sorted
    model: torch.nn.Module
    card: ModelCard
    codec: HeatmapCodec
    trained_seed: int

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def stacked(self, field_name: str) -> np.ndarray:
        """(N, ...) stack of one per-frame field (images, labels, landmarks_xy) of the test
        frames."""
        return np.stack([getattr(self.data.specimens[s], field_name)[i] for s, i in self.test])


def load_fold_model(params: Params, *, loss: str, fold: int, data_path: str | Path,
                    folds_path: str | Path, models_dir: str | Path, device: str | None = None,
                    seed: int | None = None) -> FoldModel:
    """Read and check the fold, the data and the model of one (loss, fold[, seed])."""
    # The fold first: for a fold the folds file lacks, no training would help.
    folds = load_folds(folds_path)
    if fold not in folds:
        raise ConfigError(f"{folds_path}: no fold {fold} (folds: {_numbers(folds)}; "
                          f"study.folds: {_numbers(params.study.folds)})")
    ckpt = checkpoint_path(models_dir, loss, fold, seed)
    if not ckpt.is_file():
        raise CheckpointError(f"{ckpt}: no trained model for loss {loss!r} fold {fold}; "
                              f"{_how_to_train(params, loss, fold)}")
    data = read_processed(data_path)
    check_against_data(folds, data, Path(folds_path))
    test = sorted(folds[fold].test)
    if not test:
        raise DataError(f"{folds_path}: fold {fold} has no test frames")

    # --device wins; else train.device, with the placement of silr.core.device ($SILR_DEVICE,
    # $SILR_THREADS).
    torch_device = (select_device(device, key="--device") if device
                    else device_for_run(params.train.device))
    model, card = checkpoint.load_model(ckpt, torch_device, fused=True)
    _check_card(ckpt, card, loss, fold)
    trained_seed = int((card.params or {}).get("train", {}).get("seed", params.train.seed))
    if seed is not None and trained_seed != seed:
        raise CheckpointError(f"{ckpt}: holds the model of training seed {trained_seed}, "
                              f"expected seed {seed}")
    return FoldModel(data=data, test=test, model=model, card=card, codec=card.codec(ckpt),
                     trained_seed=trained_seed)


# ------------------------------------------------------------------ command line

def add_fold_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `silr evaluate` and `silr robustness`: which (loss, fold), the inputs,
    the metrics directory and the device."""
    parser.add_argument("--loss", required=True,
                        help="named loss (a key of losses: in params.yaml)")
    parser.add_argument("--fold", required=True, type=int, help="fold number k (tests specimen k)")
    parser.add_argument("--params", default=DEFAULT_PARAMS_FILE,
                        help="params file (default: %(default)s)")
    parser.add_argument("--data", default=None,
                        help="processed HDF5 file (default: data.processed in params)")
    parser.add_argument("--folds", default=DEFAULT_FOLDS, help="folds file (default: %(default)s)")
    parser.add_argument("--models", default=DEFAULT_MODELS,
                        help="models directory (default: %(default)s)")
    parser.add_argument("--out", default=DEFAULT_METRICS,
                        help="metrics directory (default: %(default)s)")
    parser.add_argument("--device", default=None,
                        help="auto, cpu, cuda[:N] or mps (default: train.device)")
    parser.add_argument("--batch-size", type=int, default=INFERENCE_BATCH_SIZE,
                        help="frames per forward pass (default: %(default)s)")


def fold_params(args: argparse.Namespace) -> Params:
    """The params of `add_fold_arguments`' command line, with --loss and --batch-size checked."""
    params = load_params(args.params)
    params.loss_weights(args.loss)  # ConfigError naming losses.<name> if it is not defined
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    return params
