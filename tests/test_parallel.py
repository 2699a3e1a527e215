"""Parallel and distributed runs (silr.stages.parallel, silr.core.device placement, the resume
store).

The fast tests check the pieces: how the study is split, the workers' environment, the
GPU claims, the lock probe, and that train and evaluate stages are ones DVC's run-cache
records. The slow ones run the real thing on a tiny study: `silr parallel --jobs 2`
against a serial `dvc repro` with the same threads per training (identical metrics, no
stage retrained), and two "machines" sharing the run-cache through a local remote.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from silr.core import device
from silr.core.errors import ConfigError
from silr.stages import parallel

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ the pieces


def test_the_study_splits_into_experiments_by_fold_loss_or_run():
    by_fold = parallel.split_study(["proposed", "mse"], [1, 2, 3], "fold", "t")
    assert [(p.name, p.overrides) for p in by_fold] == [
        ("t-fold1", ("study.folds=[1]",)),
        ("t-fold2", ("study.folds=[2]",)),
        ("t-fold3", ("study.folds=[3]",)),
    ]
    by_loss = parallel.split_study(["proposed", "mse"], [1, 2, 3], "loss", "t")
    assert [p.overrides for p in by_loss] == [("study.losses=[proposed]",), ("study.losses=[mse]",)]
    by_run = parallel.split_study(["proposed", "mse"], [1, 2], "run", "t")
    assert len(by_run) == 4 and by_run[1].overrides == (
        "study.losses=[proposed]",
        "study.folds=[2]",
    )
    with pytest.raises(ConfigError, match="--split must be one of fold, loss, run"):
        parallel.split_study(["proposed"], [1], "specimen", "t")


def test_workers_share_one_resume_store_and_get_their_threads(tmp_path):
    env = parallel.worker_environment(
        {"PATH": "/bin"}, threads=3, resume_dir=tmp_path / "store", gpus="0,1"
    )
    assert env["SILR_THREADS"] == env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "3"
    assert env["SILR_RESUME_DIR"] == str(
        (tmp_path / "store").resolve()
    )  # absolute: every workspace
    assert env["SILR_GPU_POOL"] == "0,1" and env["PATH"] == "/bin"


def test_gpu_claims_give_each_process_its_own_gpu(tmp_path):
    # flock claims conflict between open files even in one process, as between workers.
    held = len(device._HELD_CLAIMS)
    try:
        assert device.claim_gpu([0, 1], tmp_path) == 0
        assert device.claim_gpu([0, 1], tmp_path) == 1
        assert device.claim_gpu([0, 1], tmp_path) is None
        # Another process sees both taken, and gets the GPU back once the holder lets go.
        probe = [
            sys.executable,
            "-c",
            "import sys; from silr.core import device; "
            f"print(device.claim_gpu([0, 1], {str(tmp_path)!r}))",
        ]
        assert subprocess.run(probe, capture_output=True, text=True).stdout.strip() == "None"
        device._HELD_CLAIMS.pop(held).close()  # the worker on GPU 0 exits
        assert subprocess.run(probe, capture_output=True, text=True).stdout.strip() == "0"
    finally:
        while len(device._HELD_CLAIMS) > held:
            device._HELD_CLAIMS.pop().close()


def test_placement_comes_from_the_environment_not_the_params(monkeypatch):
    monkeypatch.setenv("SILR_DEVICE", "cpu")
    monkeypatch.setenv("SILR_THREADS", "1")
    before = torch.get_num_threads()
    try:
        assert device.device_for_run("cuda").type == "cpu"  # SILR_DEVICE wins over train.device
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    monkeypatch.setenv("SILR_THREADS", "many")
    with pytest.raises(ConfigError, match="SILR_THREADS must be a whole number >= 1, got 'many'"):
        device.device_for_run("cpu")
    monkeypatch.setenv("SILR_THREADS", "1")
    monkeypatch.setenv("SILR_DEVICE", "tpu")
    with pytest.raises(ConfigError, match="SILR_DEVICE must be one of"):
        device.device_for_run("cpu")
    with pytest.raises(ConfigError, match="SILR_GPU_POOL must list GPU indices"):
        device.parse_gpu_pool("0,x")


def test_a_held_dvc_lock_is_named_not_a_traceback(tmp_path, capsys):
    from silr import cli

    (tmp_path / ".dvc" / "tmp").mkdir(parents=True)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    lock = tmp_path / ".dvc" / "tmp" / "lock"
    with open(lock, "w") as handle:
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a running dvc command holds
        assert parallel.lock_holder(tmp_path).startswith(f"pid {os.getpid()} (")
        cwd = os.getcwd()
        os.chdir(tmp_path)
        try:
            assert cli.main(["parallel", "--jobs", "2"]) == 1
        finally:
            os.chdir(cwd)
    err = capsys.readouterr().err
    assert (
        err.startswith("silr: error: another DVC command is running in") and "Traceback" not in err
    )
    assert len(err.strip().splitlines()) == 1
    assert parallel.lock_holder(tmp_path) is None  # released with the handle


def test_train_and_evaluate_stages_are_recorded_by_the_run_cache():
    # DVC's run-cache skips stages with a persist output or an uncached one that is not a
    # metric or plot (dvc/stage/cache.py, dvc/stage/__init__.py): neither may come back.
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name in ("train", "evaluate"):
        for out in stages[name]["outs"]:
            if isinstance(out, dict):
                ((path, options),) = out.items()
                assert not options.get("persist") and options.get("cache", True), f"{name}: {path}"


# ------------------------------------------------------------------ the real thing (slow)


def _env(**extra: str) -> dict[str, str]:
    bin_dir = Path(sys.executable).parent
    return {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "DVC_NO_ANALYTICS": "1",
        "DVC_NO_UPDATER": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t.invalid",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t.invalid",
        **extra,
    }


def _run(
    args: list[str], cwd: Path, env: dict[str, str], timeout: float = 1800
) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(args)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def _tiny_study(root: Path) -> Path:
    """A fresh copy of the repository with a tiny study (2 losses x 2 folds, 1 epoch), committed."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_e2e import fresh_copy, tiny_params

    fresh_copy(root)
    tiny_params(root / "params.yaml", ["proposed", "mse"], [1, 2])
    _run(["git", "add", "-A"], root, _env())
    _run(["git", "commit", "-qm", "tiny study"], root, _env())
    return root


def _results(root: Path) -> dict[str, bytes]:
    """The committed record of a run: dvc.lock's stage outputs and every file under metrics/."""
    files = {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted((root / "metrics").rglob("*"))
        if path.is_file() and path.name != ".gitignore"
    }
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    files["dvc.lock outs"] = json.dumps(
        {name: stage.get("outs") for name, stage in lock.items()}, sort_keys=True
    ).encode()
    return files


@pytest.mark.slow
def test_parallel_study_equals_the_serial_one_and_retrains_nothing(tmp_path):
    serial = _tiny_study(tmp_path / "serial")
    _run(["dvc", "repro"], serial, _env(SILR_THREADS="1", OMP_NUM_THREADS="1"))

    fanned = _tiny_study(tmp_path / "parallel")
    done = _run(
        [str(Path(sys.executable).parent / "silr"), "parallel", "--jobs", "2"], fanned, _env()
    )
    assert "experiments (fold split of 2 losses x 2 folds), 2 workers x 1 threads" in done.stderr
    assert (
        "silr parallel: 12 train/evaluate/robustness stages restored from the run-cache, "
        "0 run again"
        in done.stderr
    )
    assert "Running stage 'train@" not in done.stdout and "Running stage 'report'" in done.stdout
    assert _results(fanned) == _results(serial)
    # The workers kept their training state in this workspace's store, one per run.
    assert len(list((fanned / ".silr" / "resume").rglob("*.pt"))) == 4


@pytest.mark.slow
def test_two_machines_share_the_run_cache_through_a_remote(tmp_path):
    remote = tmp_path / "remote"
    remote.mkdir()
    env = _env(SILR_THREADS="1", OMP_NUM_THREADS="1")
    machines = {}
    for name in ("a", "b", "reference"):
        machines[name] = _tiny_study(tmp_path / name)
        _run(["dvc", "remote", "add", "-d", "shared", str(remote)], machines[name], env)

    # Machine A trains and evaluates the proposed loss only, and pushes what it ran.
    a = machines["a"]
    _run(["dvc", "repro", "evaluate@proposed-1", "evaluate@proposed-2"], a, env)
    _run(["dvc", "push", "--run-cache"], a, env)

    # Machine B fetches A's run-cache and completes the study: A's stages are restored (their
    # outputs pulled), not rerun.
    b = machines["b"]
    _run(["dvc", "fetch", "--run-cache"], b, env)
    done = _run(["dvc", "repro", "--pull"], b, env)
    for stage in (
        "synth",
        "ingest",
        "folds",
        "train@proposed-1",
        "train@proposed-2",
        "evaluate@proposed-1",
        "evaluate@proposed-2",
    ):
        assert f"Stage '{stage}' is cached - skipping run" in done.stdout, stage
    assert "Running stage 'train@mse-1'" in done.stdout

    # The same study run on one machine from scratch gives the same record.
    _run(["dvc", "repro"], machines["reference"], env)
    assert _results(b) == _results(machines["reference"])
