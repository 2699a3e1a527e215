"""`dvc exp run -S losses.proposed_plus.bone_distance=0.1` must make exactly the proposed_plus
stages stale.

Each train stage declares only the params it uses (`losses.${item.loss}`, not all of
`losses`), so changing one named loss's weights must leave the other losses' trained
models valid. The test records a lock for the committed dvc.yaml/params.yaml with
placeholder files, changes the weight, and asks `dvc status` what changed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DVC = Path(sys.executable).with_name("dvc")


def _always_changed(root: Path) -> set[str]:
    """Stages that run on every `dvc repro` by design (`silr show` writes nothing)."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    return {name for name, stage in stages.items() if stage.get("always_changed")}


def _stale(root: Path) -> set[str]:
    return set(json.loads(_dvc(root, "status", "--json"))) - _always_changed(root)


def _dvc(root: Path, *args: str) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    done = subprocess.run(
        [str(DVC), *args], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"dvc {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def locked_project(tmp_path_factory) -> Path:
    if not DVC.exists():
        pytest.skip(f"dvc is not installed next to {sys.executable}")
    root = tmp_path_factory.mktemp("stale")
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, root / name)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    _dvc(root, "init", "-q")

    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    # Placeholder deps and outs: a path with a suffix is a file, one without a directory.
    with Repo(str(root)) as repo:
        stages = list(repo.index.stages)
        paths = {
            Path(p.def_path)
            for stage in stages
            for p in (*stage.deps, *stage.outs)
            if not isinstance(p, ParamsDependency)
        }
    for path in sorted(paths):
        target = root / path
        if target.suffix:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(f"placeholder {path}\n")
        else:
            target.mkdir(parents=True, exist_ok=True)
            (target / "placeholder.txt").write_text(f"placeholder {path}\n")
    _dvc(root, "commit", "-f")
    assert _always_changed(root) == {"show"}
    assert _stale(root) == set(), "a fresh lock must leave nothing stale"
    return root


def _stale_after(root: Path, edit) -> set[str]:
    params_path = root / "params.yaml"
    original = params_path.read_text()
    params = yaml.safe_load(original)
    edit(params)
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        return _stale(root)
    finally:
        params_path.write_text(original)


def test_changing_one_loss_weight_stales_only_that_loss(locked_project):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    folds = params["study"]["folds"]

    stale = _stale_after(
        locked_project, lambda p: p["losses"]["proposed_plus"].update(bone_distance=0.1)
    )
    assert stale == {f"train@proposed_plus-{k}" for k in folds}
    stale = _stale_after(locked_project, lambda p: p["losses"]["proposed"].update(visibility=5.0))
    assert stale == {f"train@proposed-{k}" for k in folds}

    stale = _stale_after(locked_project, lambda p: p["losses"]["mse"].update(mse=2.0))
    assert stale == {f"train@mse-{k}" for k in folds}


def test_shared_training_params_stale_every_train_stage(locked_project):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    expected = {
        f"train@{loss}-{k}" for loss in params["study"]["losses"] for k in params["study"]["folds"]
    }
    assert _stale_after(locked_project, lambda p: p["train"].update(lr=0.5)) == expected
    assert (
        _stale_after(locked_project, lambda p: p["losses"].update(visibility_mode="soft"))
        == expected
    )


def test_evaluate_and_report_follow_their_train_stage(locked_project):
    # What follows a stale train stage: its evaluate stage reads its best.pt, and report
    # reads every evaluate stage's outputs, so DVC reruns them once best.pt changes.
    from dvc.repo import Repo

    with Repo(str(locked_project)) as repo:
        graph = repo.index.graph
        by_name = {stage.name: stage for stage in graph.nodes}
        train = by_name["train@proposed-1"]
        evaluate = by_name["evaluate@proposed-1"]
        report = by_name["report"]
        # networkx edges point from a stage to the stages it depends on.
        assert graph.has_edge(evaluate, train)
        assert graph.has_edge(report, evaluate)
        assert not graph.has_edge(by_name["evaluate@mse-1"], train)
