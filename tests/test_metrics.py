"""Pure metric functions, checked on numbers small enough to verify by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from silr.core.anatomy import LANDMARK_NAMES
from silr.evaluation import dice, metrics, presence, results


def make_table(rows: list[dict]) -> pd.DataFrame:
    """A predictions table from partial rows (unspecified columns get neutral values)."""
    defaults = {
        "loss": "proposed",
        "fold": 1,
        "seed": 0,
        "specimen": 1,
        "frame": 0,
        "landmark": "FH-l",
        "gt_x": 0.0,
        "gt_y": 0.0,
        "gt_in_frame": 1,
        "pred_x": 0.0,
        "pred_y": 0.0,
        "pred_present": 1,
        "score": 0.9,
        "visibility_hat": 1.0,
        "error_px": 0.0,
    }
    return pd.DataFrame(
        [{**defaults, **row} for row in rows], columns=list(metrics.PREDICTION_COLUMNS)
    )


def test_landmark_errors_are_euclidean_and_only_for_in_frame_truth():
    gt = np.array([[0.0, 0.0], [10.0, 10.0], [-5.0, 3.0]])
    pred = np.array([[3.0, 4.0], [10.0, 10.0], [0.0, 0.0]])
    errors = metrics.landmark_errors(gt, pred, np.array([True, True, False]))
    assert errors[0] == pytest.approx(5.0)  # the 3-4-5 triangle
    assert errors[1] == 0.0
    assert math.isnan(errors[2])


def test_landmark_errors_reject_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\(\.\.\., 2\)"):
        metrics.landmark_errors(np.zeros((2, 2)), np.zeros((3, 2)), np.ones(2, bool))


def test_success_rates_count_errors_at_or_below_each_threshold():
    rates = metrics.success_rates(np.array([1.0, 2.0, 3.0, 9.0, np.nan]), (2.0, 4.0, 8.0))
    assert rates == {"within_2mm": 0.5, "within_4mm": 0.75, "within_8mm": 0.75}


def test_presence_counts_against_in_frame_truth():
    truth = np.array([1, 1, 0, 0, 1], bool)
    predicted = np.array([1, 0, 1, 0, 1], bool)
    assert presence.presence_counts(truth, predicted) == {
        "true_positive": 2,
        "false_positive": 1,
        "false_negative": 1,
        "true_negative": 1,
    }


def test_visibility_accuracy_never_credits_half():
    truth = np.array([1, 1, 0, 0])
    v_hat = np.array([1.0, 0.5, 0.0, 0.5])
    assert presence.visibility_accuracy(truth, v_hat) == 0.5


def test_dice_per_bone_by_hand_and_empty_frames():
    truth = np.zeros((2, 4, 4), np.uint8)
    predicted = np.zeros((2, 4, 4), np.uint8)
    truth[0, :2, :2] = 1  # 4 pixels of bone 1
    predicted[0, :2, :1] = 1  # 2 of them predicted
    predicted[1, 0, 0] = 2  # bone 2 predicted where there is none
    per_frame = dice.dice_per_bone(predicted, truth)
    assert per_frame.shape == (2, 6)
    assert per_frame[0, 0] == pytest.approx(2 * 2 / (2 + 4))
    assert math.isnan(per_frame[1, 0])  # bone 1 in neither map of frame 1: undefined, left out
    assert per_frame[1, 1] == 0.0  # a false bone counts as 0
    summary = dice.dice_summary(per_frame)
    assert summary["left hemipelvis"] == {"mean": pytest.approx(2 / 3), "frames": 1}
    assert summary["right hemipelvis"] == {"mean": 0.0, "frames": 1}
    assert summary["vertebrae"]["frames"] == 0 and math.isnan(summary["vertebrae"]["mean"])


def test_table2_std_is_population_std_reproducing_the_paper():
    # One landmark per specimen whose error is the paper's per-specimen number: our
    # table must then give the paper's means and its NCC std (38.43 +- 7.98), which only
    # ddof = 0 reproduces. The paper's Proposed (5.79) and MSE (6.04) stds match neither
    # convention from its own rounded column; ddof = 0 is the closer one for both.
    rows = []
    for loss, entry in metrics.PAPER_TABLE2.items():
        for specimen, value in entry["per_specimen_px"].items():
            rows.append({"loss": loss, "fold": specimen, "specimen": specimen, "error_px": value})
    table = make_table(rows)
    result = metrics.table2(
        table, losses=["proposed", "mse", "ncc"], mm_per_px=1.552, success_mm=(2.0,)
    )
    for loss, entry in metrics.PAPER_TABLE2.items():
        assert round(result[loss]["mean_px"], 2) == entry["mean_px"]
    assert round(result["ncc"]["std_px"], 2) == 7.98
    ncc = [42.01, 45.48, 45.61, 42.81, 28.52, 26.17]
    assert round(float(np.std(ncc, ddof=1)), 2) == 8.74  # the sample std would not match
    assert round(result["proposed"]["std_px"], 2) == 5.75
    assert round(result["mse"]["std_px"], 2) == 5.97
    assert result["ncc"]["mean_mm"] == pytest.approx(38.43333 * 1.552, abs=1e-3)
    assert result["ncc"]["std_mm"] == pytest.approx(result["ncc"]["std_px"] * 1.552)
    assert result["ncc"]["folds"] == [1, 2, 3, 4, 5, 6]


def test_table2_averages_within_specimen_before_across():
    table = make_table(
        [
            {"specimen": 1, "fold": 1, "frame": 0, "error_px": 1.0},
            {"specimen": 1, "fold": 1, "frame": 1, "error_px": 3.0},
            {"specimen": 1, "fold": 1, "frame": 2, "error_px": 5.0},
            {"specimen": 1, "fold": 1, "frame": 3, "gt_in_frame": 0, "error_px": np.nan},
            {"specimen": 2, "fold": 2, "frame": 0, "error_px": 10.0},
        ]
    )
    entry = metrics.table2(table, losses=["proposed"], mm_per_px=2.0, success_mm=(4.0,))["proposed"]
    assert entry["per_specimen_px"] == {1: 3.0, 2: 10.0}
    assert entry["mean_px"] == 6.5 and entry["std_px"] == 3.5
    assert entry["pooled"]["mean_px"] == pytest.approx(19 / 4)  # every landmark weighs the same
    assert entry["pooled"]["median_px"] == 4.0
    assert entry["pooled"]["success_rate"] == {"within_4mm": 0.25}  # 1 px = 2 mm only
    assert entry["per_specimen_mm"] == {1: 6.0, 2: 20.0}


def test_table2_names_a_missing_loss():
    with pytest.raises(ValueError, match="'ncc'"):
        metrics.table2(make_table([{}]), losses=["ncc"], mm_per_px=1.0, success_mm=(2.0,))


def test_fold_metrics_by_hand():
    table = make_table(
        [
            {"landmark": "FH-l", "error_px": 2.0, "visibility_hat": 1.0},
            {"landmark": "FH-r", "error_px": 4.0, "visibility_hat": 0.5},
            {
                "landmark": "ASIS-l",
                "gt_in_frame": 0,
                "pred_present": 0,
                "error_px": np.nan,
                "visibility_hat": 0.0,
            },
            {
                "frame": 1,
                "landmark": "FH-l",
                "error_px": 6.0,
                "pred_present": 0,
                "visibility_hat": 0.0,
            },
        ]
    )
    result = results.fold_metrics(table, mm_per_px=0.5, success_mm=(1.0, 2.0))
    assert result["error"] == {"mean_px": 4.0, "median_px": 4.0, "mean_mm": 2.0, "median_mm": 2.0}
    assert result["success_rate"] == {
        "within_1mm": pytest.approx(1 / 3),
        "within_2mm": pytest.approx(2 / 3),
    }
    assert result["per_landmark_mean_px"]["FH-l"] == 4.0
    assert math.isnan(result["per_landmark_mean_px"]["ASIS-l"])
    assert list(result["per_landmark_mean_px"]) == list(LANDMARK_NAMES)
    assert result["presence"] == {
        "true_positive": 2,
        "false_positive": 0,
        "false_negative": 1,
        "true_negative": 1,
    }
    assert result["visibility_accuracy"] == 0.5
    assert result["counts"] == {"frames": 2, "landmarks": 4, "landmarks_in_frame": 3}


def test_showcase_frame_has_most_in_frame_landmarks_then_lowest_index():
    table = make_table(
        [
            {"specimen": 1, "frame": 0, "landmark": "FH-l", "gt_in_frame": 0},
            {"specimen": 1, "frame": 0, "landmark": "FH-r", "gt_in_frame": 1},
            {"specimen": 1, "frame": 4, "landmark": "FH-l", "gt_in_frame": 1},
            {"specimen": 1, "frame": 4, "landmark": "FH-r", "gt_in_frame": 1},
            {"specimen": 2, "frame": 3, "landmark": "FH-l", "gt_in_frame": 1},
            {"specimen": 2, "frame": 1, "landmark": "FH-l", "gt_in_frame": 1},
        ]
    )
    assert metrics.showcase_frames(table) == {1: 4, 2: 1}


def test_rounded_is_stable_for_json():
    assert metrics.rounded(
        {"a": 1.23456789, "b": -0.0000001, "c": float("nan"), 3: (np.float32(0.5),)}
    ) == {"a": 1.234568, "b": 0.0, "c": None, "3": [0.5]}
    assert str(metrics.rounded(-0.0000001)) == "0.0"


def test_check_predictions_names_the_columns():
    with pytest.raises(ValueError, match="error_px"):
        metrics.check_predictions(pd.DataFrame({"loss": []}), "x.csv")
