"""End to end: `dvc repro` of the whole pipeline in a fresh copy of the repository.

A tiny configuration (3 phantom specimens x 2 frames, 1 epoch, the smallest HRNet) runs
every stage (synth, ingest, folds, train, evaluate, report) through DVC itself, then
checks the metrics, the plots, and that `dvc metrics diff` and `dvc plots show` work.
The default variant trains one loss on two folds (about two minutes on two CPU cores);
the `slow` variant runs the paper's study layout: three losses, folds 1-3.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from silr.evaluation import metrics
from silr.stages import report

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin: silr and dvc live there
REPRO_TIMEOUT_S = 1500


def run_cmd(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        # no analytics, no update checks, no pager: the run stays local and quiet
        "DVC_NO_ANALYTICS": "1",
        "DVC_NO_UPDATER": "1",
        "DVC_PAGER": "cat",
        "PAGER": "cat",
        "GIT_AUTHOR_NAME": "silr-test",
        "GIT_AUTHOR_EMAIL": "test@example.invalid",
        "GIT_COMMITTER_NAME": "silr-test",
        "GIT_COMMITTER_EMAIL": "test@example.invalid",
    }
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def checked(args: list[str], cwd: Path, timeout: float = 300) -> str:
    result = run_cmd(args, cwd, timeout)
    assert result.returncode == 0, (
        f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
        f"{result.stderr[-3000:]}"
    )
    return result.stdout


# Results of an earlier run (committed or not) stay behind: every output must be made here.
RESULT_PATHS = ("dvc.lock", "metrics/", "plots/")


def fresh_copy(destination: Path) -> Path:
    """The working tree's source files (tracked, and new ones git does not ignore) in a new git
    repo."""
    listed = checked(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], REPO)
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if name.startswith(RESULT_PATHS):
            continue
        if source.is_file():  # deleted-but-tracked files are listed too
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    checked(["git", "init", "-q"], destination)
    if not (destination / ".dvc" / "config").exists():
        checked(["dvc", "init", "-q"], destination)
    return destination


def tiny_params(path: Path, losses: list[str], folds: list[int]) -> None:
    params = yaml.safe_load(path.read_text())
    params["synth"].update({"frames": [2, 2, 2]})
    params["model"].update({"backbone": "hrnet_w18_small", "decoder_channels": [8, 8]})
    params["train"].update({"epochs": 1, "val_every": 1, "batch_size": 4, "device": "cpu"})
    params["study"].update({"losses": losses, "folds": folds})
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def all_finite(value) -> bool:
    if isinstance(value, dict):
        return all(all_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(all_finite(v) for v in value)
    if isinstance(value, float):
        return math.isfinite(value)
    return True


def run_pipeline(root: Path, losses: list[str], folds: list[int]) -> None:
    fresh_copy(root)
    tiny_params(root / "params.yaml", losses, folds)
    checked(["git", "add", "-A"], root)
    checked(
        [
            "git",
            "-c",
            "user.name=silr tests",
            "-c",
            "user.email=tests@silr.invalid",
            "commit",
            "-qm",
            "tiny configuration",
        ],
        root,
    )

    checked(["dvc", "repro"], root, timeout=REPRO_TIMEOUT_S)

    # Every stage ran and the lock file says so.
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    for loss in losses:
        for fold in folds:
            assert f"train@{loss}-{fold}" in lock and f"evaluate@{loss}-{fold}" in lock
    assert {"synth", "ingest", "folds", "report"} <= set(lock)

    # Predictions: exact columns, one row per (test frame, landmark), errors where in frame.
    for loss in losses:
        for fold in folds:
            table = pd.read_csv(root / "metrics" / "predictions" / loss / f"fold{fold}.csv")
            assert tuple(table.columns) == metrics.PREDICTION_COLUMNS
            assert len(table) == 2 * 14 and set(table["specimen"]) == {fold}
            in_frame = table["gt_in_frame"] == 1
            assert table.loc[in_frame, "error_px"].notna().all()
            assert table.loc[~in_frame, "error_px"].isna().all()
            fold_json = json.loads(
                (root / "metrics" / "folds" / loss / f"fold{fold}.json").read_text()
            )
            assert fold_json["counts"]["frames"] == 2 and all_finite(fold_json)

    summary = json.loads((root / "metrics" / "details.json").read_text())
    assert {"table2", "baselines", "dataset", "paper_table2", "segmentation_dice"} <= set(summary)
    assert summary["dataset"]["kind"] == "synthetic"
    assert summary["dataset"]["settings"]["epochs"] == 1
    for loss in losses:
        entry = summary["table2"][loss]
        assert sorted(entry["per_specimen_px"]) == [str(f) for f in folds]
        assert math.isfinite(entry["mean_px"]) and math.isfinite(entry["std_px"])
        compact = json.loads((root / "metrics" / "summary" / f"{loss}.json").read_text())
        assert compact["mean_px"] == entry["mean_px"] and compact["std_px"] == entry["std_px"]
    assert "Mean ± Std" in (root / "metrics" / "table2.md").read_text()
    for name in report.PLOT_NAMES:
        assert (root / "plots" / name).stat().st_size > 10_000, name

    # The researcher's loop: nothing left to do, metrics diff against the last commit, plots.
    # Nothing stale but `show`, the always-changed stage that prints the results at the end of a
    # repro.
    status = json.loads(checked(["dvc", "status", "--json"], root))
    assert status == {"show": ["always changed"]}, status
    diff = checked(["dvc", "metrics", "diff", "--json"], root)
    assert "metrics/summary/proposed.json" in diff and "details.json" not in diff
    plots = json.loads(checked(["dvc", "plots", "show", "--json"], root))
    assert not plots.get("errors"), plots.get("errors")
    shown = json.dumps(plots)
    assert "per_specimen.csv" in shown and "figure1.png" in shown


def test_dvc_repro_one_loss_two_folds(tmp_path):
    run_pipeline(tmp_path / "repo", ["proposed"], [1, 2])


@pytest.mark.slow
def test_dvc_repro_three_losses_three_folds(tmp_path):
    run_pipeline(tmp_path / "repo", ["proposed", "mse", "ncc"], [1, 2, 3])
