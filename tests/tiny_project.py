"""A tiny silr project in a temporary directory, for tests that run the real stages.

`make_project(root)` writes a processed file in the published 8x layout (conftest's
`write_tiny_processed`: 180x180 frames, a dot on every landmark), a folds file in which
fold k tests specimen k, and a params.yaml of the smallest configuration (hrnet_w18_small,
decoder channels [8, 8], one epoch, CPU). `TinyProject.argv(stage)` gives the command line
of each stage with every path pointing into the project, so tests run exactly what
`dvc repro` would run, only smaller.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from conftest import tiny_folds, write_tiny_processed  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# The smallest configuration that trains the real network.
TINY_PARAMS: dict[str, Any] = {
    "model": {"backbone": "hrnet_w18_small", "decoder_channels": [8, 8], "init_checkpoint": None},
    "train": {
        "epochs": 1,
        "batch_size": 4,
        "lr": 0.0001,
        "weight_decay": 0.01,
        "val_every": 1,
        "seed": 0,
        "device": "cpu",
        "checkpoint_every": 1,
    },
    "study": {"losses": ["proposed"], "folds": [1]},
}


def deep_update(base: dict, changes: dict) -> dict:
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_update(base[key], value)
        else:
            base[key] = value
    return base


@dataclass
class TinyProject:
    root: Path
    params: Path
    processed: Path
    folds: Path

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def live(self) -> Path:
        return self.root / "dvclive"

    @property
    def resume(self) -> Path:
        return self.root / "resume"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    def write_params(self, changes: dict | None = None, *, text: str | None = None) -> Path:
        """params.yaml = the repository's params, the tiny configuration, then `changes`."""
        if text is None:
            params = yaml.safe_load((REPO / "params.yaml").read_text())
            deep_update(params, json.loads(json.dumps(TINY_PARAMS)))
            params["data"]["processed"] = str(self.processed)
            deep_update(params, changes or {})
            text = yaml.safe_dump(params, sort_keys=False)
        self.params.write_text(text)
        return self.params

    def argv(self, stage: str, loss: str = "proposed", fold: int = 1) -> list[str]:
        """The stage's command line (as dvc.yaml runs it), every path inside the project."""
        common = [
            "--params",
            str(self.params),
            "--data",
            str(self.processed),
            "--folds",
            str(self.folds),
        ]
        run = ["--loss", loss, "--fold", str(fold), *common]
        if stage == "train":
            return [
                "train",
                *run,
                "--out-dir",
                str(self.models),
                "--live-dir",
                str(self.live),
                "--resume-dir",
                str(self.resume),
                "--no-progress",
            ]
        if stage in ("evaluate", "robustness"):
            return [
                stage,
                *run,
                "--models",
                str(self.models),
                "--out",
                str(self.metrics),
                "--device",
                "cpu",
            ]
        if stage == "report":
            return [
                "report",
                "--metrics",
                str(self.metrics),
                "--out-plots",
                str(self.plots),
                *common,
                "--live",
                str(self.live),
            ]
        raise ValueError(stage)


def make_project(
    root: Path, specimens: tuple[int, ...] = (1, 2, 3), frames: int = 1, params: dict | None = None
) -> TinyProject:
    """A processed file of `specimens` x `frames`, its folds (no validation frames when
    frames == 1) and the tiny params.yaml, under `root`."""
    root.mkdir(parents=True, exist_ok=True)
    project = TinyProject(
        root=root,
        params=root / "params.yaml",
        processed=root / "ds_8x.h5",
        folds=root / "folds.json",
    )
    write_tiny_processed(project.processed, specimens=specimens, frames=frames)
    document = tiny_folds(specimens, frames=frames, val_per_fold=1 if frames > 1 else 0)
    document["data"] = str(project.processed)
    project.folds.write_text(json.dumps(document, indent=2))
    project.write_params(params)
    return project
