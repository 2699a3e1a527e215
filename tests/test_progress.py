"""Training progress: a bar on a terminal, one plain line per epoch in a log."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

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


def _setup_of(live: str) -> SimpleNamespace:
    """What `silr train`'s progress display reads of a run: its loss, fold, folder and schedule."""
    train = SimpleNamespace(epochs=25, batch_size=4)
    return SimpleNamespace(loss_name="proposed", fold_number=1, train_frames=[0] * 8,
                           paths=SimpleNamespace(live=Path("dvclive") / "proposed" / live),
                           params=SimpleNamespace(train=train))


def test_extra_seeds_of_one_fold_report_apart_so_silr_parallel_counts_both(tmp_path):
    # silr parallel's time left counts epochs per run name: seed 0 and seed 1 of fold 1 running
    # side by side must not overwrite each other's count.
    from silr.core.dvc_workspace import WorkerLogs
    from silr.stages.train import _progress_display
    from silr.training.run import TrainingRecord

    log = tmp_path / ".dvc" / "tmp" / "exps" / "run" / "abc" / "abc.out"
    log.parent.mkdir(parents=True)
    with open(log, "w") as stream:
        for live, epochs in (("fold1", 3), ("fold1_seed1", 2)):
            display = _progress_display(_setup_of(live), TrainingRecord(), enabled=True)
            assert isinstance(display, EpochLines)
            display.stream = stream
            for epoch in range(1, epochs + 1):
                display.end_epoch({"epoch": epoch, "train/loss": 1.0})
    logs = WorkerLogs(tmp_path, trainings=2, epochs=25, started=0.0)
    lines = logs.new_lines()
    assert lines[0] == "train proposed/fold1: epoch 1/25, loss 1"
    assert lines[-1] == "train proposed/fold1_seed1: epoch 2/25, loss 1"
    assert logs.epochs_done == {"proposed/fold1": 3, "proposed/fold1_seed1": 2}
