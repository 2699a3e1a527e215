"""Determinism on the CPU: the same params and data give byte-identical `metrics/` files.

The default test runs train -> evaluate -> report of the tiny configuration (smallest
HRNet, [8, 8] decoders, 1 epoch, 3 specimens x 2 frames) twice: once in the test process
(after whatever other tests did to its global state) and once in a fresh Python process
with another PYTHONHASHSEED, each in its own directory with relative paths (as `dvc repro`
runs them). It compares every file under metrics/ byte for byte, the PNGs under plots/,
and the trained weights bit for bit. The slow test does the same with
`dvc repro` of the whole pipeline (synth and ingest included) in two fresh copies of the
repository.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from tiny_project import make_project  # noqa: E402

# One process runs the stages as dvc.yaml does, with paths relative to the project.
STAGES = [
    [
        "train",
        "--loss",
        "proposed",
        "--fold",
        "1",
        "--data",
        "ds_8x.h5",
        "--folds",
        "folds.json",
        "--out-dir",
        "models",
        "--live-dir",
        "dvclive",
        "--no-progress",
    ],
    [
        "evaluate",
        "--loss",
        "proposed",
        "--fold",
        "1",
        "--data",
        "ds_8x.h5",
        "--folds",
        "folds.json",
        "--models",
        "models",
        "--out",
        "metrics",
    ],
    [
        "report",
        "--metrics",
        "metrics",
        "--out-plots",
        "plots",
        "--data",
        "ds_8x.h5",
        "--live",
        "dvclive",
        "--folds",
        "folds.json",
    ],
]
RUNNER = """
import json, sys
from silr import cli
for argv in json.loads(sys.argv[1]):
    status = cli.main(argv)
    if status:
        sys.exit(status)
"""


def files_under(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def run_stages(project: Path, hash_seed: str) -> None:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    result = subprocess.run(
        [sys.executable, "-c", RUNNER, json.dumps(STAGES)],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_two_cpu_runs_give_byte_identical_metrics(tmp_path, monkeypatch, capsys):
    from silr import cli

    first = make_project(tmp_path / "first", frames=2, params={"data": {"processed": "ds_8x.h5"}})
    second = tmp_path / "second"
    shutil.copytree(first.root, second)  # the same data and params, byte for byte

    monkeypatch.chdir(first.root)
    for argv in STAGES:
        assert cli.main(argv) == 0, capsys.readouterr().err[-3000:]
    monkeypatch.undo()
    run_stages(second, "2")

    metrics_a, metrics_b = files_under(first.root / "metrics"), files_under(second / "metrics")
    expected = {
        "predictions/proposed/fold1.csv",
        "folds/proposed/fold1.json",
        "segmentation/proposed/fold1.npz",
        "summary/proposed.json",
        "details.json",
        "table2.md",
        "per_specimen.csv",
        "curves/train_loss.csv",
        "curves/val_error_px.csv",
    }
    assert expected <= set(metrics_a), sorted(metrics_a)
    assert sorted(metrics_a) == sorted(metrics_b)
    differing = [name for name in metrics_a if metrics_a[name] != metrics_b[name]]
    assert differing == [], f"metrics files differ between two identical CPU runs: {differing}"

    plots_a, plots_b = files_under(first.root / "plots"), files_under(second / "plots")
    assert plots_a and [n for n in plots_a if plots_a[n] != plots_b.get(n)] == []

    # The metrics are rounded; the weights themselves must agree to the bit.
    states = [
        (
            root / "models/proposed/fold1/best.pt",
            *(root / ".silr/resume/proposed/fold1/seed0").glob("*.pt"),
        )
        for root in (first.root, second)
    ]
    assert [len(s) for s in states] == [2, 2]
    assert states[0][1].name == states[1][1].name  # same run hash
    for path_a, path_b in zip(*states):
        name = path_a.name
        a = torch.load(path_a, weights_only=True)["model_state"]
        b = torch.load(path_b, weights_only=True)["model_state"]
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    # The run validated (the best weights were chosen on the validation frames).
    curve = (first.root / "metrics/curves/val_error_px.csv").read_text().splitlines()
    assert curve[0] == "epoch,proposed" and len(curve) == 2


@pytest.mark.slow
def test_dvc_repro_twice_gives_byte_identical_metrics(tmp_path):
    from test_e2e import checked, fresh_copy, tiny_params

    runs = []
    for name in ("first", "second"):
        root = fresh_copy(tmp_path / name)
        tiny_params(root / "params.yaml", ["proposed", "mse"], [1, 2])
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
        checked(["dvc", "repro"], root, timeout=1500)
        runs.append(files_under(root / "metrics"))
    first, second = runs
    assert "details.json" in first and sorted(first) == sorted(second)
    assert [name for name in first if first[name] != second[name]] == []
