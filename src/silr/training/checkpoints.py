"""The files a run writes as it goes, and the way back from them: its state in the resume store
(silr.training.resume) and best.pt with its model card (silr.model.checkpoint)."""

from __future__ import annotations

import torch

from silr.model import checkpoint
from silr.training.resume import ResumeState, restore_rng_states, rng_states
from silr.training.run import Setup, TrainingRecord, card_of

__all__ = ["resumed_record", "write_best", "write_last"]


def resumed_record(setup: Setup, optimizer: torch.optim.Optimizer, generator: torch.Generator,
                   state: ResumeState) -> TrainingRecord:
    """Put the network, the optimiser and every random state back where `state` left them; the
    run's record at that point."""
    setup.model.load_state_dict(state.model_state)
    optimizer.load_state_dict(state.optimizer)
    restore_rng_states(state.rng, generator)
    return TrainingRecord(epoch=state.epoch, best_score=state.best_score,
                          best_epoch=state.best_epoch, best_state=state.best_state,
                          history=list(state.history))


def write_last(setup: Setup, optimizer: torch.optim.Optimizer, record: TrainingRecord,
               generator: torch.Generator, finished: bool) -> None:
    """The run's state in the resume store (atomically): weights, optimiser, random states,
    record."""
    state = ResumeState(identity=setup.identity, epoch=record.epoch, finished=finished,
                        optimizer=optimizer.state_dict(), rng=rng_states(generator),
                        best_score=record.best_score, best_epoch=record.best_epoch,
                        best_state=record.best_state, history=record.history)
    score = record.history[-1].get("val/error_px") if record.history else None
    checkpoint.save_checkpoint(setup.paths.last, setup.model,
                               card_of(setup, score, record.epoch, finished=finished),
                               resume=state.to_dict())


def write_best(setup: Setup, record: TrainingRecord,
               calibration: tuple[float, float] | None = None, *, finished: bool = False) -> None:
    """best.pt from the best weights seen so far (the last ones when nothing was validated);
    `finished` for the final write of a completed run."""
    if record.best_state is not None:
        checkpoint.save_checkpoint(setup.paths.best, record.best_state,
                                   card_of(setup, record.best_score, record.best_epoch,
                                           calibration, finished=finished))
    else:
        checkpoint.save_checkpoint(setup.paths.best, setup.model,
                                   card_of(setup, None, record.epoch, calibration,
                                           finished=finished))
