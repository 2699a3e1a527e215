"""Leave-one-specimen-out folds: make_folds, the folds.json file, load_folds validation."""

import json
from pathlib import Path

import numpy as np
import pytest

from silr import cli
from silr.core.errors import DataError
from silr.core.params import FoldsParams
from silr.data.deepfluoro import ATTR_DOWNSAMPLE
from silr.data.processed import SpecimenFrames, read_processed, write_processed
from silr.data.splits import load_folds, make_folds, validation_count
from silr.stages import folds as folds_stage


def write_small_processed(path: Path, frames_per_specimen: dict[int, int]) -> Path:
    specimens = [
        SpecimenFrames(
            n,
            np.zeros((c, 6, 6), np.float32),
            np.zeros((c, 6, 6), np.uint8),
            np.full((c, 14, 2), 2.0),
        )
        for n, c in frames_per_specimen.items()
    ]
    write_processed(path, specimens, {ATTR_DOWNSAMPLE: 8})
    return path


@pytest.mark.parametrize(
    "pool, fraction, expected",
    [
        (60, 0.1, 6),
        (9, 0.25, 2),
        (2, 0.1, 1),
        (1, 0.1, 0),
        (10, 0.9, 9),
        (5, 0.0, 0),
        (14, 0.1, 1),
        (15, 0.1, 2),
    ],
)
def test_validation_count(pool, fraction, expected):
    assert validation_count(pool, fraction) == expected


def test_every_frame_once_per_fold():
    counts = {1: 3, 2: 4, 3: 5}
    folds = make_folds(counts, val_fraction=0.25, seed=0)
    assert sorted(folds) == [1, 2, 3]
    for k, fold in folds.items():
        assert fold.number == k and fold.test_specimen == k
        assert fold.test == tuple((k, i) for i in range(counts[k]))
        pool = {(s, i) for s, c in counts.items() if s != k for i in range(c)}
        assert set(fold.train) | set(fold.val) == pool
        assert not set(fold.train) & set(fold.val)
        assert len(fold.train) + len(fold.val) == len(pool)
        assert len(fold.val) == validation_count(len(pool), 0.25)
    # Fold 1 trains on 4 + 5 = 9 frames: round(0.25 * 9) = 2 go to validation.
    assert len(folds[1].val) == 2 and len(folds[1].train) == 7


def test_seeded_and_two_specimens():
    counts = {1: 30, 2: 30, 3: 30}
    assert make_folds(counts, 0.1, 0) == make_folds(counts, 0.1, 0)
    assert make_folds(counts, 0.1, 0)[1].val != make_folds(counts, 0.1, 1)[1].val
    two = make_folds({4: 1, 9: 2}, 0.1, 0)
    assert sorted(two[4].train + two[4].val) == [(9, 0), (9, 1)]
    assert len(two[4].val) == 1 and len(two[9].val) == 0 and two[9].train == ((4, 0),)
    with pytest.raises(DataError, match="at least 2 specimens"):
        make_folds({1: 5}, 0.1, 0)


def test_cli_writes_folds_json_that_loads_back(tmp_path, capsys):
    data = write_small_processed(tmp_path / "ds.h5", {1: 4, 2: 6, 7: 10})
    params = tmp_path / "params.yaml"
    params.write_text("folds:\n  val_fraction: 0.2\n  seed: 3\n")
    out = tmp_path / "folds.json"
    assert cli.main(["folds", "--data", str(data), "--out", str(out), "--params", str(params)]) == 0
    raw = json.loads(out.read_text())
    assert raw["val_fraction"] == 0.2 and raw["seed"] == 3 and raw["specimens"] == [1, 2, 7]
    assert raw["folds"]["7"]["test"] == [[7, i] for i in range(10)]
    # 0.2 * 10, 0.2 * 16
    assert len(raw["folds"]["7"]["val"]) == 2 and len(raw["folds"]["1"]["val"]) == 3
    folds = load_folds(out, read_processed(data))
    assert folds[2].test_specimen == 2 and len(folds[2].train) == 11

    # --seed overrides params.yaml; --val-fraction is validated like params.yaml.
    assert (
        cli.main(
            [
                "folds",
                "--data",
                str(data),
                "--out",
                str(out),
                "--params",
                str(params),
                "--seed",
                "4",
            ]
        )
        == 0
    )
    assert json.loads(out.read_text())["seed"] == 4
    assert cli.main(["folds", "--data", str(data), "--out", str(out), "--val-fraction", "1.5"]) == 2
    assert "folds.val_fraction" in capsys.readouterr().err


def test_load_folds_rejects_frames_missing_from_data(tmp_path):
    data = write_small_processed(tmp_path / "ds.h5", {1: 4, 2: 6})
    out = tmp_path / "folds.json"
    folds_stage.run(FoldsParams(0.1, 0), data, out)
    smaller = read_processed(write_small_processed(tmp_path / "small.h5", {1: 4, 2: 5}))
    with pytest.raises(DataError, match=r"folds\.json: fold \d .* frame \[2, 5\].*has 5 frames"):
        load_folds(out, smaller)
    other = read_processed(write_small_processed(tmp_path / "other.h5", {1: 4, 3: 6}))
    with pytest.raises(
        DataError, match=r"folds\.json: .*frame \[2, \d\].*specimen 2 does not exist"
    ):
        load_folds(out, other)
    larger = read_processed(write_small_processed(tmp_path / "large.h5", {1: 5, 2: 6}))
    with pytest.raises(DataError, match=r"leaves frame \[1, 4\]"):
        load_folds(out, larger)


def test_load_folds_rejects_a_frame_in_two_sets(tmp_path):
    path = tmp_path / "folds.json"
    path.write_text(
        json.dumps(
            {
                "folds": {
                    "1": {
                        "test_specimen": 1,
                        "train": [[2, 0], [2, 1]],
                        "val": [[2, 1]],
                        "test": [[1, 0]],
                    }
                }
            }
        )
    )
    with pytest.raises(
        DataError, match=r"folds\.json: folds\.1: frame \[2, 1\] is in both train and val"
    ):
        load_folds(path)
    path.write_text(
        json.dumps(
            {"folds": {"1": {"test_specimen": 1, "train": [[1, 3]], "val": [], "test": [[1, 0]]}}}
        )
    )
    with pytest.raises(DataError, match=r"frame \[1, 3\] breaks leave-one-out"):
        load_folds(path)
