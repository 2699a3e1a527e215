"""`silr exps`: DVC experiments compared in a table that fits 120 columns (issue 24)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from silr import cli
from silr.stages import exps

SUMMARY = {"dice": 0.86, "mean_mm": 5.5, "mean_px": 3.565069, "n_folds": 6, "n_frames": 74,
           "n_seeds": 1, "std_px": 0.79}


def _data(params: dict, **mean_px: float) -> dict:
    metrics = {f"metrics/summary/{loss}.json": {"data": {**SUMMARY, "mean_px": value}}
               for loss, value in mean_px.items()}
    metrics["metrics/summary/baseline_mean_shape.json"] = {"data": {**SUMMARY, "mean_px": 35.0}}
    return {"params": {"params.yaml": {"data": params}}, "metrics": metrics}


def _shown() -> list[dict]:
    base = {"study": {"folds": [1, 2, 3, 4, 5, 6],
                      "losses": ["proposed", "proposed_plus", "mse", "ncc"]},
            "losses": {"proposed_plus": {"bone_distance": 0.05}}, "train": {"epochs": 25}}
    smoke = {**base, "study": {"folds": [1], "losses": ["proposed"]}, "train": {"epochs": 2}}
    weight = {**base, "losses": {"proposed_plus": {"bone_distance": 0.1}}}
    four = {"proposed": 3.77, "proposed_plus": 3.57, "mse": 16.96, "ncc": 6.12}
    return [
        {"rev": "workspace", "name": None, "data": _data(base, **four), "experiments": None},
        {"rev": "a" * 40, "name": "main", "data": _data(base, **four), "experiments": [
            {"name": "smoke", "revs": [{"rev": "b" * 40, "name": "brisk-oak",
                                        "data": _data(smoke, proposed=9.87)}]},
            {"name": "w", "revs": [{"rev": "c" * 40, "name": None,
                                    "data": _data(weight, **{**four, "proposed_plus": 3.41})}]},
        ]},
    ]


def test_rows_name_every_commit_and_experiment_and_leave_the_baselines_out():
    rows = exps.rows_of(_shown())
    assert [(r.name, r.depth) for r in rows] == [("workspace", 0), ("main", 0), ("brisk-oak", 1),
                                                ("ccccccc", 1)]
    assert set(rows[0].metrics) == {"proposed", "proposed_plus", "mse", "ncc"}
    assert exps.changed_params(rows) == ["losses.proposed_plus.bone_distance", "study.folds",
                                         "study.losses", "train.epochs"]


def test_the_table_fits_its_width_and_says_what_each_cell_covers():
    table = exps.format_table(exps.rows_of(_shown()), 120)
    lines = table.splitlines()
    assert max(len(line) for line in lines) <= 120
    assert lines[0].split()[:5] == ["experiment", "proposed", "proposed_plus", "mse", "ncc"]
    smoke = next(line for line in lines if "brisk-oak" in line)
    assert "9.87/6" in smoke and smoke.split()[3:6] == ["-", "-", "-"]
    assert "3.41/6" in next(line for line in lines if "ccccccc" in line)
    assert "train.epochs=2" in table and "bone_distance=0.1" in table
    assert "baseline" not in lines[0]
    narrow = exps.format_table(exps.rows_of(_shown()), 80)
    assert max(len(line) for line in narrow.splitlines()) <= 80


def test_no_experiments_and_bad_width():
    assert "no experiments" in exps.format_table([])
    assert cli.main(["exps", "--width", "10"]) == 2


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_silr_exps_on_a_real_dvc_repository(tmp_path, capsys, monkeypatch):
    """A two-experiment DVC repository: `silr exps` lists both with their changed params."""
    dvc = Path(sys.executable).with_name("dvc")
    env = {**os.environ, "PATH": f"{dvc.parent}{os.pathsep}{os.environ.get('PATH', '')}"}

    def run(*command: str) -> None:
        subprocess.run(command, cwd=tmp_path, env=env, check=True, capture_output=True)

    (tmp_path / "params.yaml").write_text("losses:\n  proposed_plus:\n    bone_distance: 0.05\n")
    (tmp_path / "gen.py").write_text(
        "import json, os, yaml\n"
        "w = yaml.safe_load(open('params.yaml'))['losses']['proposed_plus']['bone_distance']\n"
        "os.makedirs('metrics/summary', exist_ok=True)\n"
        "json.dump({'mean_px': 3.5 + w, 'n_folds': 6},"
        " open('metrics/summary/proposed_plus.json', 'w'))\n")
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  gen:\n    cmd: python gen.py\n    deps: [gen.py]\n"
        "    params: [losses.proposed_plus.bone_distance]\n"
        "    metrics:\n      - metrics/summary:\n          cache: false\n")
    run("git", "init", "-q")
    run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m",
        "empty")
    run(str(dvc), "init", "-q")
    run(str(dvc), "repro", "-q")
    run("git", "add", "-A")
    run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "base")
    run(str(dvc), "exp", "run", "-q", "-n", "heavier", "-S",
        "losses.proposed_plus.bone_distance=0.1")
    monkeypatch.setenv("PATH", env["PATH"])
    monkeypatch.chdir(tmp_path)
    assert cli.main(["exps", "--width", "100"]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 100
    heavier = next(line for line in out.splitlines() if "heavier" in line)
    assert "3.60/6" in heavier and "bone_distance=0.1" in heavier
    assert json.loads((tmp_path / "metrics/summary/proposed_plus.json").read_text())
