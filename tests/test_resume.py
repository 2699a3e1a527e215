"""Resume: an interrupted `silr train` continues where it stopped and ends where an
uninterrupted run ends (CPU, bit for bit); a last.pt of other params/data is never resumed.

The SIGKILL test runs the real command in subprocesses and kills it at several points
(before the first checkpoint, right after one, in the middle of an epoch); it is slow.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import code_deps
import silr
from conftest import resume_state, train_argv, write_tiny_run
from silr import cli
from silr.core.errors import CheckpointError
from silr.model import checkpoint
from silr.stages import train
from silr.training import resume
from silr.training.resume import ResumeState, RunIdentity, read_resume_state

pytestmark = pytest.mark.usefixtures("one_thread")


class RunFiles(dict):
    """best.pt, the dvclive folder and (looked up when asked, since its name is the run hash)
    the run's state in the resume store."""

    def __init__(self, run: dict, loss: str, fold: int) -> None:
        base = run["models"] / loss / f"fold{fold}"
        super().__init__(
            best=base / "best.pt",
            live=run["live"] / loss / f"fold{fold}",
            resume=run["resume"] / loss / f"fold{fold}" / "seed0",
        )
        self.run, self.loss, self.fold = run, loss, fold

    def __missing__(self, key: str) -> Path:
        if key != "last":
            raise KeyError(key)
        states = sorted(self["resume"].glob("*.pt"))
        return states[0] if len(states) == 1 else self["resume"] / "no-single-state.pt"


def run_paths(run: dict, loss: str = "proposed", fold: int = 1) -> RunFiles:
    return RunFiles(run, loss, fold)


def states_equal(a: Path, b: Path) -> bool:
    first, second = checkpoint.read_checkpoint(a), checkpoint.read_checkpoint(b)
    a, b = first["model_state"], second["model_state"]
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def history_of(path: Path) -> list[dict]:
    return checkpoint.read_checkpoint(path)["resume"]["history"]


def test_sigterm_then_rerun_matches_an_uninterrupted_run(
    trained_tiny_run, tmp_path, monkeypatch, capsys
):
    ref = run_paths(trained_tiny_run)

    run = write_tiny_run(tmp_path / "interrupted")
    paths = run_paths(run)
    real_validation = train.validation_error
    calls = []

    def validation_then_sigterm(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # during epoch 2's validation
            os.kill(os.getpid(), signal.SIGTERM)
        return real_validation(*args, **kwargs)

    monkeypatch.setattr(train, "validation_error", validation_then_sigterm)
    assert cli.main(train_argv(run)) == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert "stopped by SIGTERM after epoch 2" in err and "rerun the same command to resume" in err
    assert [e["epoch"] for e in history_of(paths["last"])] == [1, 2]

    monkeypatch.setattr(train, "validation_error", real_validation)
    assert cli.main(train_argv(run)) == 0
    assert "resuming proposed fold 1 from" in capsys.readouterr().err
    assert states_equal(paths["best"], ref["best"])
    assert states_equal(paths["last"], ref["last"])
    assert history_of(paths["last"]) == history_of(ref["last"])
    card, ref_card = (checkpoint.read_checkpoint(p)["card"] for p in (paths["best"], ref["best"]))
    assert (card.val_score_px, card.epoch) == (ref_card.val_score_px, ref_card.epoch)
    # The dvclive logs were rebuilt from the checkpoint: one row per epoch, no repeats.
    lines = (paths["live"] / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()
    step = lines[0].split("\t").index("step")
    assert [line.split("\t")[step] for line in lines[1:]] == ["0", "1", "2"]

    # A finished run's rerun re-emits best.pt (DVC deletes it before the stage runs).
    paths["best"].unlink()
    assert cli.main(train_argv(run)) == 0
    assert "already trained (3 epochs" in capsys.readouterr().err
    assert states_equal(paths["best"], ref["best"])


def test_last_checkpoint_of_other_params_data_or_code_is_ignored(
    trained_tiny_run, tmp_path, capsys
):
    last = run_paths(trained_tiny_run)["last"]
    stored = checkpoint.read_checkpoint(last)["resume"]["identity"]
    same = RunIdentity(stored["params"], stored["data"], stored["code"], stored["device"])
    state, message = read_resume_state(last, same)
    assert state is not None and state.epoch == 3 and state.finished and message == ""
    assert state.identity == same and state.history == history_of(last)
    assert state.model_state.keys() == checkpoint.read_checkpoint(last)["model_state"].keys()
    # to_dict writes the entry as stored, and from_dict reads it back
    entry = state.to_dict()
    assert sorted(entry) == sorted(checkpoint.read_checkpoint(last)["resume"])
    again = ResumeState.from_dict(entry, state.model_state)
    assert (again.identity, again.epoch, again.best_epoch, again.history) == (
        state.identity,
        state.epoch,
        state.best_epoch,
        state.history,
    )
    for field, label in (
        ("params_hash", "params"),
        ("data_hash", "data"),
        ("code_hash", "code"),
        ("device", "device"),
    ):
        other = RunIdentity(**{**same.__dict__, field: "0" * 16})
        state, message = read_resume_state(last, other)
        assert state is None
        assert f"ignoring {last}: it was written for different {label}" in message

    # Through the command: another learning rate starts from scratch, and says so; the
    # other run's finished state is pruned (DVC's run-cache holds its result).
    run = write_tiny_run(tmp_path, params={"train": {"epochs": 1, "lr": 0.002}})
    copied = run_paths(run)["resume"] / last.name
    copied.parent.mkdir(parents=True)
    shutil.copyfile(last, copied)
    assert cli.main(train_argv(run)) == 0
    err = capsys.readouterr().err
    assert f"ignoring {copied}: it was written for different params" in err
    assert "starting from scratch" in err
    own = resume_state(run)
    assert own != copied and not copied.exists()
    assert history_of(own)[-1]["epoch"] == 1 and history_of(own)[-1]["lr"] == 0.002


def test_a_state_missing_an_entry_is_ignored(trained_tiny_run, tmp_path):
    payload = torch.load(resume_state(trained_tiny_run), weights_only=True)
    identity = RunIdentity.from_dict(payload["resume"]["identity"])
    del payload["resume"]["optimizer"]
    broken = tmp_path / f"{identity.run_hash}.pt"
    torch.save(payload, broken)
    state, message = read_resume_state(broken, identity)
    assert state is None
    assert message == (
        f"ignoring {broken}: it holds no resume state this silr can read; starting from scratch"
    )


def test_corrupt_last_checkpoint_is_ignored(tmp_path):
    last = tmp_path / "last.pt"
    last.write_bytes(b"PK\x03\x04 truncated")
    identity = RunIdentity("p", "d", "c", "cpu")
    state, message = read_resume_state(last, identity)
    assert state is None and "not a readable silr checkpoint" in message
    assert "starting from scratch" in message
    with pytest.raises(CheckpointError):
        checkpoint.read_checkpoint(last)


# ------------------------------------------------------------------ SIGKILL, real processes


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    return env


def _command(run: dict) -> list[str]:
    return [sys.executable, "-m", "silr", *train_argv(run)]


def _last_epoch(path: Path) -> int:
    try:
        return int(checkpoint.read_checkpoint(path)["resume"]["epoch"])
    except (CheckpointError, KeyError):
        return 0


def _kill_when(run: dict, ready, timeout: float = 300.0) -> None:
    process = subprocess.Popen(
        _command(run), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + timeout
    try:
        while not ready() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()


def _finish(run: dict) -> subprocess.CompletedProcess:
    done = subprocess.run(_command(run), env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def _evaluate(run: dict, out: Path) -> bytes:
    argv = [
        "evaluate",
        "--loss",
        "proposed",
        "--fold",
        "1",
        "--params",
        str(run["params"]),
        "--folds",
        str(run["folds"]),
        "--models",
        str(run["models"]),
        "--out",
        str(out),
        "--device",
        "cpu",
    ]
    assert cli.main(argv) == 0
    return (out / "folds" / "proposed" / "fold1.json").read_bytes()


@pytest.mark.slow
def test_sigkill_anywhere_then_rerun_gives_the_same_best_checkpoint(tmp_path):
    params = {"train": {"epochs": 4}}
    reference = write_tiny_run(tmp_path / "reference", params=params)
    _finish(reference)
    ref = run_paths(reference)
    reference_metrics = _evaluate(reference, tmp_path / "reference" / "metrics")

    kill_points = {
        "before-first-checkpoint": lambda paths, started: time.monotonic() - started > 4.0,
        "right-after-epoch-1": lambda paths, started: _last_epoch(paths["last"]) >= 1,
        "mid-epoch-3": lambda paths, started: (
            _last_epoch(paths["last"]) >= 2 and time.sleep(0.4) is None
        ),
    }
    for name, condition in kill_points.items():
        run = write_tiny_run(tmp_path / name, params=params)
        paths = run_paths(run)
        started = time.monotonic()
        _kill_when(
            run, lambda condition=condition, paths=paths, started=started: condition(paths, started)
        )
        killed_at = _last_epoch(paths["last"])
        done = _finish(run)
        if killed_at:
            resumed = f"resuming proposed fold 1 from {paths['last']} at epoch {killed_at + 1}"
            assert resumed in done.stderr, name
        assert states_equal(paths["best"], ref["best"]), name
        assert history_of(paths["last"]) == history_of(ref["last"]), name
        assert _evaluate(run, tmp_path / name / "metrics") == reference_metrics, name


# ------------------------------------------------------------------ code identity


def test_code_identity_covers_every_module_the_training_stage_imports():
    modules = resume.imported_modules()
    # The modules the old hand-written list left out are there, found by reading the imports.
    assert {
        "silr.stages.train",
        "silr.core.coords",
        "silr.core.network_input",
        "silr.core.anatomy",
        "silr.data.deepfluoro",
        "silr.data.splits",
        "silr.model.card",
        "silr.training.resume",
        "silr.inference.predictor",
        "silr",
        "silr.core",
    } <= set(modules)
    # Nothing that training does not run (the report, predict) is in it.
    assert not {
        "silr.stages.report",
        "silr.stages.predict",
        "silr.evaluation.plots",
        "silr.stages.evaluate",
    } & set(modules)
    assert resume.code_hash() == resume.code_hash(modules.items())


@pytest.mark.parametrize("stage", sorted(code_deps.STAGE_MODULES))
def test_dvc_yaml_lists_exactly_the_modules_a_stage_imports(stage):
    """DVC reruns a stage when a dependency changes: every silr file the stage's code imports (as
    the resume identity finds them) must be a dependency, and nothing else, so that a stage reruns
    when and only when its code changes."""
    import yaml

    deps = yaml.safe_load((code_deps.ROOT / "dvc.yaml").read_text())["stages"][stage]["deps"]
    listed = [dep for dep in deps if dep.startswith("src/")]
    expected = code_deps.code_deps(stage)
    assert sorted(listed) == sorted(expected), (
        f"dvc.yaml's {stage} stage lists {sorted(set(listed) - set(expected))} it does not import "
        f"and "
        f"misses {sorted(set(expected) - set(listed))}; run `python tests/code_deps.py --write`"
    )


def test_code_deps_name_a_folder_only_when_the_stage_imports_all_of_it():
    # synth imports every module of the phantom; train imports only part of silr.evaluation.
    assert "src/silr/phantom" in code_deps.code_deps("synth")
    train = code_deps.code_deps("train")
    assert "src/silr/evaluation" not in train and "src/silr/evaluation/metrics.py" in train


def test_editing_an_imported_module_makes_the_rerun_retrain(tmp_path):
    """A copy of the package; after a finished run, an edit to silr/core/coords.py (which DVC would
    see as a changed dependency) makes the rerun start from scratch instead of handing back
    the old best.pt."""
    package = tmp_path / "src" / "silr"
    shutil.copytree(
        Path(silr.__file__).resolve().parent, package, ignore=shutil.ignore_patterns("__pycache__")
    )
    run = write_tiny_run(tmp_path / "run", params={"train": {"epochs": 1}})
    env = dict(_env(), PYTHONPATH=str(tmp_path / "src"))

    def train_once() -> str:
        done = subprocess.run(_command(run), env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stderr

    first = train_once()
    where = subprocess.run(
        [sys.executable, "-c", "import silr; print(silr.__file__)"],
        env=env,
        capture_output=True,
        text=True,
    ).stdout
    assert str(package) in where  # the copy is what runs
    assert "best validation error" in first
    assert "already trained (1 epochs" in train_once()  # unchanged code: nothing to retrain

    coords_py = package / "core" / "coords.py"
    coords_py.write_text(coords_py.read_text() + "\n# an edit DVC sees as a changed dependency\n")
    after_edit = train_once()
    assert "it was written for different code" in after_edit
    assert "starting from scratch" in after_edit
    assert "best validation error" in after_edit and "already trained" not in after_edit


# ------------------------------------------------------------------ the resume store


def test_states_live_in_the_store_keyed_by_run_hash(trained_tiny_run, tmp_path):
    state = resume_state(trained_tiny_run)
    identity = RunIdentity.from_dict(checkpoint.read_checkpoint(state)["resume"]["identity"])
    folder = trained_tiny_run["resume"] / "proposed" / "fold1" / "seed0"
    assert state == resume.state_path(folder, identity)
    assert state.name == f"{identity.run_hash}.pt"
    # Nothing in the DVC output folder but best.pt: the run-cache can record the stage.
    outputs = trained_tiny_run["models"] / "proposed" / "fold1"
    assert [p.name for p in outputs.iterdir()] == ["best.pt"]


def test_store_location_from_argument_environment_or_default(monkeypatch, tmp_path):
    monkeypatch.delenv("SILR_RESUME_DIR", raising=False)
    assert resume.resume_root() == Path(".silr/resume")
    monkeypatch.setenv("SILR_RESUME_DIR", str(tmp_path / "shared"))
    assert resume.resume_root() == tmp_path / "shared"
    assert resume.resume_root(tmp_path / "mine") == tmp_path / "mine"


def test_unfinished_states_of_other_runs_survive_pruning(trained_tiny_run, tmp_path):
    folder = tmp_path / "proposed" / "fold1"
    folder.mkdir(parents=True)
    finished = folder / "aaaa.pt"
    shutil.copyfile(resume_state(trained_tiny_run), finished)
    unfinished = folder / "bbbb.pt"
    payload = torch.load(finished, weights_only=True)
    payload["resume"]["finished"] = False
    torch.save(payload, unfinished)
    junk = folder / "cccc.pt"
    junk.write_bytes(b"being written")
    keep = folder / "dddd.pt"
    shutil.copyfile(finished, keep)
    assert resume.prune_finished_states(folder, keep) == [finished]
    assert sorted(p.name for p in folder.iterdir()) == ["bbbb.pt", "cccc.pt", "dddd.pt"]
