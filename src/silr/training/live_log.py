"""A run's dvclive logs (`dvclive/NAME/foldK/`): every epoch's loss terms, validation error and
learning rate, and the best validation error in the summary."""

from __future__ import annotations

import math
from pathlib import Path

from silr.training.run import TrainingRecord

__all__ = ["LiveLog"]


class LiveLog:
    """dvclive for one run, rebuilt from the checkpoint's history so resumed logs have no gaps or
    repeats."""

    def __init__(self, directory: Path, history: list[dict[str, float]]) -> None:
        # Lazy: dvclive pulls in much of dvc (about a second); only a training run needs it.
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

    def close(self, record: TrainingRecord) -> None:
        if record.best_score is not None:
            self.live.summary["best"] = {"val_error_px": record.best_score,
                                         "epoch": record.best_epoch}
        self.live.end()
