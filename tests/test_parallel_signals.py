"""`silr parallel` checks its own arguments first, stops DVC's queue workers when it is
interrupted, and keeps `dvc repro`'s restore chatter out of the log."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from silr import cli
from silr.stages import parallel


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--threads", "-3"], "--threads must be 1..1024, got -3"),
        (["--jobs", "0"], "--jobs must be 1..64, got 0"),
        (["--jobs", "100000"], "--jobs must be 1..64, got 100000"),
    ],
)
def test_bad_arguments_fail_before_anything_starts(argv, words, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # not a DVC project: the argument check must come first
    calls = []
    monkeypatch.setattr(parallel, "_dvc", lambda *a, **k: calls.append(a))
    assert cli.main(["parallel", *argv]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"silr: error: {words}" and calls == []


def test_sigterm_while_waiting_stops_the_queue_and_exits_143(tmp_path, monkeypatch):
    commands: list[list[str]] = []
    statuses = {
        "exp-fold1": "Running",
        "exp-fold2": "Queued",
        "exp-fold3": "Success",
        "other": "Running",
    }

    def fake_dvc(args, repo, env, echo=False):
        commands.append(list(args))
        stdout = "\n".join(f"{name}  {status}" for name, status in statuses.items())
        return subprocess.CompletedProcess(args, 0, stdout, "")

    monkeypatch.setattr(parallel, "_dvc", fake_dvc)
    monkeypatch.setattr(parallel, "queue_status", lambda repo, env: dict(statuses))

    def wait(repo, env, names, logs=None, jobs=None):
        os.kill(os.getpid(), signal.SIGTERM)  # as `kill PID` would, mid-queue
        raise AssertionError("the signal did not interrupt the wait")

    monkeypatch.setattr(parallel, "_wait", wait)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(parallel.Interrupted) as caught:
        parallel.wait_or_stop(tmp_path, {}, {"exp-fold1", "exp-fold2", "exp-fold3"})
    assert caught.value.exit_code == 143 and "stopped the queue's workers and 2 pending" in str(
        caught.value
    )
    assert ["queue", "kill", "exp-fold1"] in commands  # ours only: "other" is not touched
    assert ["queue", "stop", "--kill"] in commands and ["queue", "remove", "exp-fold2"] in commands
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is put back


def test_the_final_repro_output_drops_restore_chatter():
    text = (
        "Stage 'train@proposed-1' is cached - skipping run, checking out outputs\n\n"
        "Stage 'train@proposed-2' is cached - skipping run, checking out outputs\n\n"
        "Running stage 'show':\n> silr show --metrics metrics\n\n| Mean ± Std | 3.77 |\n"
    )
    out = parallel.quiet_repro_output(text)
    assert "is cached" not in out and out.startswith("Running stage 'show'")
    assert "| Mean ± Std | 3.77 |" in out and "\n\n\n" not in out


def test_the_filter_matches_dvcs_wording():
    """The phrase the filter drops is the one dvc prints (checked in dvc's own source)."""
    import importlib.util

    source = Path(
        importlib.util.find_spec("dvc.stage.cache").origin
    ).read_text()  # dvc comes with the project
    assert "is cached - skipping run, checking out outputs" in source


def test_worker_progress_lines_stream_with_the_time_left(tmp_path):
    from silr.stages.parallel import WorkerLogs

    run_dir = tmp_path / ".dvc" / "tmp" / "exps" / "run" / "abc123"
    run_dir.mkdir(parents=True)
    out = run_dir / "abc123.out"
    logs = WorkerLogs(tmp_path, trainings=2, epochs=10, started=0.0)
    assert logs.new_lines() == [] and logs.time_left(5.0) == "time left: not known yet"
    out.write_text(
        "Running stage 'train@proposed-1':\n> silr train --loss proposed --fold 1\n"
        "train proposed/fold1: epoch 1/10, loss 4.81, val 9.12 px\ntrain proposed/fold1: epo"
    )
    assert logs.new_lines() == ["train proposed/fold1: epoch 1/10, loss 4.81, val 9.12 px"]
    with open(out, "a") as handle:  # the half-written line, completed, and an evaluation line
        handle.write(
            "ch 2/10, loss 3.10, val 7.00 px\nevaluate proposed fold 1 seed 2: mean error 3.1 px\n"
        )
    assert logs.new_lines() == [
        "train proposed/fold1: epoch 2/10, loss 3.10, val 7.00 px",
        "evaluate proposed fold 1 seed 2: mean error 3.1 px",
    ]
    assert logs.new_lines() == []
    # 2 of 20 epochs in 60 s: 18 epochs at 30 s each are left
    assert logs.time_left(60.0) == "2/20 epochs, about 9 min left"


def test_a_worker_that_quit_with_tasks_queued_is_replaced(tmp_path, monkeypatch):
    from silr.stages import parallel

    states = iter([{"a": "Running", "b": "Queued"}] * 3 + [{"a": "Success", "b": "Success"}])
    monkeypatch.setattr(parallel, "queue_status", lambda repo, env: next(states))
    monkeypatch.setattr(parallel, "POLL_S", 0.0)
    monkeypatch.setattr(parallel, "IDLE_WORKER_S", 0.0)
    started = []
    monkeypatch.setattr(parallel.subprocess, "run", lambda argv, **kw: started.append(argv[1:]))
    assert parallel._wait(tmp_path, {}, {"a", "b"}, jobs=2) == {"a": "Success", "b": "Success"}
    assert started and all(argv == ["queue", "start", "--jobs", "1"] for argv in started)


def test_the_final_repro_output_drops_dvcs_git_hints():
    """Table 2 must stay in the last 30 lines of `make repro`: DVC's closing hints go."""
    text = (
        "| Mean ± Std | 3.77 |\n\nWhere the outputs are:\n  metrics/table2.md\n"
        "Updating lock file 'dvc.lock'\n\nTo track the changes with git, run:\n\n"
        "\tgit add dvc.lock metrics/robustness/mse/.gitignore\n\n"
        "To enable auto staging, run:\n\n\tdvc config core.autostage true\n"
        "Use `dvc push` to send your updates to remote storage.\n"
    )
    out = parallel.quiet_repro_output(text)
    assert "git add" not in out and "autostage" not in out and "dvc push" not in out
    assert out.rstrip().endswith("Updating lock file 'dvc.lock'")
    assert "| Mean ± Std | 3.77 |" in out and "Where the outputs are:" in out
