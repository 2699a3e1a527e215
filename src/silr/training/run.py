"""What one training run is: its output paths, its validated setup, its record so far, and the
model card of the weights it writes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from silr.core.device import DeviceSetup
from silr.core.params import Params
from silr.model.card import ModelCard
from silr.model.codec import HeatmapCodec
from silr.model.losses import WeightedLoss
from silr.model.network import SILRNet, build_model
from silr.training.dataset import FrameSet
from silr.training.resume import RunIdentity

__all__ = ["RunPaths", "Setup", "TrainingRecord", "build_like", "card_of"]


@dataclass
class RunPaths:
    best: Path
    live: Path
    resume: Path  # this (loss, fold, seed)'s folder in the resume store (silr.training.resume)
    last: Path  # this run's state in it: <resume>/<run hash>.pt


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
    runtime: DeviceSetup  # the device and how the network runs on it
    codec: HeatmapCodec
    loss_fn: WeightedLoss
    model: SILRNet
    data_source: str

    @property
    def name(self) -> str:
        """'<loss> fold <k>', with ' seed <s>' for an extra seed of the study (`--seed`)."""
        extra_seed = "_seed" in self.paths.live.name
        return f"{self.loss_name} fold {self.fold_number}" + (
            f" seed {self.params.train.seed}" if extra_seed else "")


@dataclass
class TrainingRecord:
    """What changes from epoch to epoch, besides the network and optimiser."""

    epoch: int = 0  # completed epochs
    best_score: float | None = None
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    history: list[dict[str, float]] = field(default_factory=list)  # one entry per completed epoch


def build_like(setup: Setup) -> SILRNet:
    """A fresh network of the run's configuration on its device (to hold the best weights)."""
    model = build_model(setup.params.model.backbone, setup.params.model.decoder_channels,
                        presence_head=setup.codec.presence_source is not None)
    return model.to(setup.runtime.device, memory_format=setup.runtime.memory_format)


def card_of(setup: Setup, score: float | None, epoch: int,
            calibration: tuple[float, float] | None = None, *, finished: bool = False) -> ModelCard:
    """The card of the weights being written; `finished` only once the run has completed, so that
    the best.pt of a stopped or killed run says so (evaluate refuses it, predict warns)."""
    card = ModelCard.for_run(setup.params, loss_name=setup.loss_name, fold=setup.fold_number,
                             data_hash=setup.identity.data_hash,
                             params_hash=setup.identity.params_hash,
                             val_score_px=score, epoch=epoch, data_source=setup.data_source,
                             codec=setup.codec)
    card = card.with_run_state(finished=finished, epochs_planned=setup.params.train.epochs)
    return card.with_calibration(calibration) if calibration is not None else card
