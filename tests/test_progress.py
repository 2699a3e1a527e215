"""Training progress: a bar on a terminal, one plain line per epoch in a log."""

from __future__ import annotations

import io

from silr.training.progress import EpochLines, training_progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _drive(bar, epochs: int = 3, steps: int = 5) -> None:
    for epoch in range(1, epochs + 1):
        for _ in range(steps):
            bar.update(1)
            bar.set_postfix_str("loss 1", refresh=False)
        bar.end_epoch({"epoch": epoch, "train/loss": 2.0 / epoch, "val/error_px": 10.0 + epoch})
    bar.close()


def test_a_log_gets_one_plain_line_per_epoch():
    stream = io.StringIO()
    bar = training_progress(
        total=15, initial=0, desc="train proposed/fold1", epochs=3, enabled=True, stream=stream
    )
    assert isinstance(bar, EpochLines)
    _drive(bar)
    assert "\r" not in stream.getvalue()
    assert stream.getvalue().splitlines() == [
        "train proposed/fold1: epoch 1/3, loss 2, val 11.00 px",
        "train proposed/fold1: epoch 2/3, loss 1, val 12.00 px",
        "train proposed/fold1: epoch 3/3, loss 0.6667, val 13.00 px",
    ]


def test_an_epoch_without_validation_has_no_val_part():
    stream = io.StringIO()
    bar = training_progress(
        total=1, initial=0, desc="train mse/fold2", epochs=100, enabled=True, stream=stream
    )
    bar.end_epoch({"epoch": 7, "train/loss": 0.5})
    assert stream.getvalue() == "train mse/fold2: epoch 7/100, loss 0.5\n"


def test_a_terminal_keeps_the_bar_and_disabled_is_silent():
    terminal = _Terminal()
    _drive(
        training_progress(
            total=15, initial=0, desc="train x", epochs=3, enabled=True, stream=terminal
        )
    )
    assert "15/15" in terminal.getvalue() and "epoch 1/3" not in terminal.getvalue()
    quiet = io.StringIO()
    _drive(
        training_progress(
            total=15, initial=0, desc="train x", epochs=3, enabled=False, stream=quiet
        )
    )
    assert quiet.getvalue() == ""
