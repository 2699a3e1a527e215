"""Training seeds as a study dimension: stages, paths, re-emission of the default seed, the
report's spread."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import train_argv, write_tiny_run
from silr import cli
from silr.core.params import params_from_dict
from silr.evaluation.results import checkpoint_path, output_paths
from silr.evaluation.summary import seed_spread
from silr.model import checkpoint
from silr.stages import report

REPO_DVC_YAML = __import__("pathlib").Path(__file__).resolve().parents[1] / "dvc.yaml"


def test_an_extra_seed_trains_beside_the_default_run_and_the_default_seed_is_re_emitted(
    tmp_path, one_thread, capfd
):
    run = write_tiny_run(tmp_path)
    assert cli.main(train_argv(run)) == 0
    default = checkpoint.read_checkpoint(checkpoint_path(run["models"], "proposed", 1))
    assert cli.main(train_argv(run, "proposed", 1, "--seed", "1")) == 0
    seeded = checkpoint.read_checkpoint(checkpoint_path(run["models"], "proposed", 1, 1))
    assert seeded["card"].params["train"]["seed"] == 1
    assert default["card"].params["train"]["seed"] == 0
    assert (run["live"] / "proposed" / "fold1_seed1").is_dir()
    assert not all(
        np.array_equal(v, seeded["model_state"][k]) for k, v in default["model_state"].items()
    )
    capfd.readouterr()
    # train.seed asked for again as an extra seed: the finished state is found, nothing retrains.
    assert cli.main(train_argv(run, "proposed", 1, "--seed", "0")) == 0
    assert "already trained" in capfd.readouterr().err
    again = checkpoint.read_checkpoint(checkpoint_path(run["models"], "proposed", 1, 0))
    for key, value in default["model_state"].items():
        assert np.array_equal(value, again["model_state"][key]), key

    out = tmp_path / "metrics"
    argv = [
        "evaluate",
        "--loss",
        "proposed",
        "--fold",
        "1",
        "--params",
        str(run["params"]),
        "--data",
        str(run["processed"]),
        "--folds",
        str(run["folds"]),
        "--models",
        str(run["models"]),
        "--out",
        str(out),
    ]
    assert cli.main([*argv, "--seed", "1"]) == 0
    paths = output_paths(out, "proposed", 1, 1)
    assert paths.predictions.name == "fold1_seed1.csv"
    assert set(pd.read_csv(paths.predictions)["seed"]) == {1}
    assert json.loads(paths.fold_metrics.read_text())["seed"] == 1
    # A checkpoint of another seed is refused.
    foreign = checkpoint_path(run["models"], "proposed", 1, 7)
    foreign.parent.mkdir(parents=True)
    foreign.write_bytes(checkpoint_path(run["models"], "proposed", 1, 1).read_bytes())
    assert cli.main([*argv, "--seed", "7"]) == 2


def test_seed_stages_exist_only_for_extra_seeds():
    stages = yaml.safe_load(REPO_DVC_YAML.read_text())["stages"]
    assert stages["train_seed"]["matrix"]["seed"] == "${study.seeds}"
    assert "--seed ${item.seed}" in stages["train_seed"]["cmd"]
    assert "--seed" not in stages["train"]["cmd"]
    params = params_from_dict({"study": {"seeds": [0, 1, 2]}, "train": {"seed": 0}})
    assert report.study_seeds(params) == [None, 1, 2]  # train.seed is the default run


def test_the_report_pools_seeds_and_gives_their_spread():
    rows = []
    for seed, offset in ((0, 1.0), (1, 3.0)):
        for specimen in (1, 2):
            rows += [
                {
                    "loss": "a",
                    "fold": specimen,
                    "seed": seed,
                    "specimen": specimen,
                    "frame": 0,
                    "landmark": "x",
                    "gt_in_frame": 1,
                    "error_px": offset + specimen,
                }
            ]
    table = pd.DataFrame(rows)
    spread = seed_spread(table, ["a"], mm_per_px=1.0)["a"]
    assert spread["seeds"] == [0, 1] and spread["mean_px"] == [2.5, 4.5]
    assert spread["mean_over_seeds_px"] == 3.5
    assert spread["std_over_seeds_px"] == pytest.approx(np.sqrt(2.0))


def test_study_seeds_are_checked():
    from silr.core.errors import ConfigError

    with pytest.raises(ConfigError, match="study.seeds must be a list of distinct seeds"):
        params_from_dict({"study": {"seeds": [1, 1]}})
    with pytest.raises(ConfigError, match=r"study.seeds\[0\] must be >= 0"):
        params_from_dict({"study": {"seeds": [-1]}})
