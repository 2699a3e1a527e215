"""Training progress on stderr: a tqdm bar on a terminal, one plain line per epoch otherwise.

A log file or a CI console cannot render a bar: tqdm's carriage-return redraws become
kilobytes of one unreadable line. `training_progress` picks the form from
`stream.isatty()`; both forms take the same calls (`update`, `set_postfix_str`,
`end_epoch`, `close`).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from typing import Any, TextIO

from tqdm import tqdm

__all__ = ["EpochLines", "ProgressDisplay", "StepBar", "training_progress"]


class EpochLines:
    """The non-terminal form: `end_epoch` writes 'train <desc>: epoch k/N, loss .., val .. px'."""

    def __init__(self, *, desc: str, epochs: int, stream: TextIO) -> None:
        self.desc, self.epochs, self.stream = desc, epochs, stream

    def update(self, n: int = 1) -> None:
        """Steps are not reported line by line."""

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        """The epoch line says it all."""

    def end_epoch(self, entry: Mapping[str, Any]) -> None:
        parts = [f"epoch {int(entry['epoch'])}/{self.epochs}"]
        loss = entry.get("train/loss")
        if loss is not None:
            parts.append(f"loss {loss:.4g}")
        val = entry.get("val/error_px")
        if val is not None and math.isfinite(val):
            parts.append(f"val {val:.2f} px")
        self.stream.write(f"{self.desc}: {', '.join(parts)}\n")
        self.stream.flush()

    def close(self) -> None:
        """Nothing to tear down."""


class StepBar:
    """The terminal form: tqdm, with `end_epoch` a no-op (the bar's postfix shows the epoch)."""

    def __init__(self, bar: tqdm) -> None:
        self.bar = bar

    def update(self, n: int = 1) -> None:
        self.bar.update(n)

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self.bar.set_postfix_str(text, refresh=refresh)

    def end_epoch(self, entry: Mapping[str, Any]) -> None:
        pass

    def close(self) -> None:
        self.bar.close()


ProgressDisplay = EpochLines | StepBar


def training_progress(*, total: int, initial: int, desc: str, epochs: int, enabled: bool,
                      stream: TextIO | None = None) -> ProgressDisplay:
    """A step bar on a terminal (or when disabled: a silent one), epoch lines elsewhere."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    if enabled and not (callable(isatty) and isatty()):
        return EpochLines(desc=desc, epochs=epochs, stream=stream)
    return StepBar(tqdm(total=total, initial=initial, desc=desc, unit="step", file=stream,
                        disable=not enabled, mininterval=1.0, dynamic_ncols=True))
