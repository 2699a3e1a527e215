"""Validation during training: when it runs, what it adds to the epoch's entry, and the best
weights it keeps.

The scoring itself (decoding through the inference path) is the stage's: it comes in as a
`Validate` function, since this layer may not import silr.inference or silr.evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch

from silr.model import checkpoint
from silr.training.progress import ProgressDisplay
from silr.training.run import Setup, TrainingRecord

__all__ = ["Validate", "keep_if_best", "validate_epoch", "validates_after"]

# The network -> {"error_px": mean error over in-frame landmarks, "presence_accuracy": ...}.
Validate = Callable[[torch.nn.Module], Mapping[str, float]]


def validates_after(epoch: int, setup: Setup) -> bool:
    """Whether the run validates after `epoch`: every train.val_every epochs and at the last, when
    the fold has validation frames."""
    train = setup.params.train
    return setup.val_frames is not None and (epoch % train.val_every == 0
                                             or epoch == train.epochs)


def keep_if_best(record: TrainingRecord, score: float, epoch: int,
                 model: torch.nn.Module) -> bool:
    """Keep the weights of `model` in `record` when `score` is finite and the best so far."""
    if math.isfinite(score) and (record.best_score is None or score < record.best_score):
        record.best_score, record.best_epoch = score, epoch
        record.best_state = checkpoint.model_state_cpu(model)
        return True
    return False


def validate_epoch(setup: Setup, record: TrainingRecord, entry: dict[str, float], epoch: int,
                   validate: Validate, bar: ProgressDisplay) -> bool:
    """Validate after `epoch` when due: the scores go into `entry`, the weights into `record` when
    they are the best so far (then True)."""
    if not validates_after(epoch, setup):
        return False
    scores = validate(setup.model)
    entry["val/error_px"] = scores["error_px"]
    entry["val/presence_accuracy"] = scores["presence_accuracy"]
    score = scores["error_px"]
    improved = keep_if_best(record, score, epoch, setup.model)
    bar.set_postfix_str(f"loss {entry['train/loss']:.4g} val {score:.2f}px", refresh=False)
    return improved
