"""Pure metric functions: arrays and prediction tables in, numbers out.

No files, no params, no torch. `silr evaluate` and `silr report` call these, and the
tests recompute every published number from the predictions CSVs with them (or with a
few lines of pandas that must agree with them).

Conventions, all of them written once here:
- An error is the Euclidean distance in 180x180 frame pixels between the predicted
  location (the heatmap argmax, whether or not the landmark is predicted present) and
  the ground truth, for ground-truth landmarks inside the frame only (the paper's
  number). Out-of-frame ground truth has no error (NaN in memory, empty in the CSV).
- mm = px * the processed file's pixel spacing (1.552 mm per 8x pixel).
- Table 2: per test specimen the mean error over its in-frame landmarks; across
  specimens the mean and the population standard deviation (ddof = 0), which is what
  reproduces the paper's own Mean +- Std row.
- Dice per bone of a frame: 2|P n T| / (|P| + |T|). A frame where the bone is absent
  from both the prediction and the ground truth has no Dice for that bone (NaN) and is
  left out of that bone's mean; a bone predicted where there is none (or missed where
  there is one) counts as 0.
- Discrete visibility is correct when v_hat equals v (v = 1 in frame, 0 outside);
  v_hat = 0.5 (present but outside its bone) is never correct.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from silr.core.anatomy import BONE_LABELS, LABEL_NAMES, LANDMARK_NAMES

# The predictions CSV, one row per (frame, landmark), in this column order.
PREDICTION_COLUMNS: tuple[str, ...] = (
    "loss", "fold", "seed", "specimen", "frame", "landmark",
    "gt_x", "gt_y", "gt_in_frame",
    "pred_x", "pred_y", "pred_present", "score", "visibility_hat", "error_px",
    # every presence rule's score (NaN where a rule does not apply; silr.model.codec)
    "threshold_score", "template_ncc", "presence_prob",
    # the argmax restricted to the landmark's own predicted bone, and its error
    "bone_x", "bone_y", "error_bone_px",
    # 1 where the ground-truth label under the (rounded) prediction / under the true position
    # is the landmark's own bone, 0 where not, empty out of frame or without labels
    "pred_on_bone", "gt_on_bone",
)
# The float columns of the predictions CSV (rounded to DECIMALS).
PREDICTION_FLOAT_COLUMNS: tuple[str, ...] = (
    "gt_x", "gt_y", "pred_x", "pred_y", "score", "visibility_hat", "error_px", "threshold_score",
    "template_ncc", "presence_prob", "bone_x", "bone_y", "error_bone_px", "pred_on_bone", "gt_on_bone")
# An error beyond this many mm is an outlier (the outlier rate of error_summary).
OUTLIER_MM = 10.0
# Decimal places of every float written to a metrics file (byte-stable across runs).
DECIMALS = 6

# The paper's Table 2 (Euclidean error in 8x pixels, per held-out test specimen).
# Published numbers, copied for side-by-side display; nothing is computed from them.
PAPER_TABLE2: dict[str, dict[str, Any]] = {
    "proposed": {"per_specimen_px": {6: 18.28, 5: 18.41, 4: 6.54, 3: 6.39, 2: 5.13, 1: 6.76},
                 "mean_px": 10.25, "std_px": 5.79},
    "mse": {"per_specimen_px": {6: 32.26, 5: 34.92, 4: 22.46, 3: 27.07, 2: 23.85, 1: 17.22},
            "mean_px": 26.30, "std_px": 6.04},
    "ncc": {"per_specimen_px": {6: 42.01, 5: 45.48, 4: 45.61, 3: 42.81, 2: 28.52, 1: 26.17},
            "mean_px": 38.43, "std_px": 7.98},
}
# The paper's row order (test specimen 6 first) and column titles.
PAPER_SPECIMEN_ORDER: tuple[int, ...] = (6, 5, 4, 3, 2, 1)
LOSS_TITLES: dict[str, str] = {"proposed": "Proposed", "proposed_plus": "Proposed+", "mse": "MSE", "ncc": "NCC",
                               "frame_centre": "Frame centre (baseline)", "mean_shape": "Mean shape (baseline)"}


def loss_title(name: str) -> str:
    """Column title of a named loss ('proposed' -> 'Proposed'; user-defined names as they are)."""
    return LOSS_TITLES.get(name, name)


# ------------------------------------------------------------------ small helpers

def rounded(value: Any, decimals: int = DECIMALS) -> Any:
    """`value` with every float rounded (recursively), NaN/inf -> None: byte-stable JSON."""
    if isinstance(value, Mapping):
        return {str(k): rounded(v, decimals) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v, decimals) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if not math.isfinite(value):
            return None
        # + 0.0 turns -0.0 into 0.0 so equal numbers print equally.
        return round(value, decimals) + 0.0
    return value


def threshold_key(mm: float) -> str:
    """Key of a success rate: 2.0 -> 'within_2mm', 2.5 -> 'within_2.5mm'."""
    return f"within_{mm:g}mm"


def _mean(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()) if values.size else math.nan


def _median(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    return float(np.median(values)) if values.size else math.nan


# ------------------------------------------------------------------ landmark errors

def landmark_errors(gt_xy: np.ndarray, pred_xy: np.ndarray, gt_in_frame: np.ndarray) -> np.ndarray:
    """(..., 2) ground truth and prediction, (...) in-frame mask -> (...) Euclidean error, NaN outside."""
    gt_xy = np.asarray(gt_xy, dtype=np.float64)
    pred_xy = np.asarray(pred_xy, dtype=np.float64)
    gt_in_frame = np.asarray(gt_in_frame, dtype=bool)
    if gt_xy.shape != pred_xy.shape or gt_xy.shape[-1] != 2:
        raise ValueError(f"landmark arrays must both be (..., 2), got {gt_xy.shape} and {pred_xy.shape}")
    if gt_in_frame.shape != gt_xy.shape[:-1]:
        raise ValueError(f"in-frame mask must be {gt_xy.shape[:-1]}, got {gt_in_frame.shape}")
    distance = np.linalg.norm(pred_xy - gt_xy, axis=-1)
    return np.where(gt_in_frame, distance, np.nan)


def on_own_bone(xy: np.ndarray, labels: np.ndarray, landmark_bones: Sequence[int]) -> np.ndarray:
    """(N, L) float: 1 where the label under each (rounded, clamped) position of (N, L, 2) `xy` in
    (N, H, W) `labels` is the landmark's bone, 0 where it is not, NaN where `xy` is not finite."""
    xy = np.asarray(xy, dtype=np.float64)
    labels = np.asarray(labels)
    if xy.ndim != 3 or xy.shape[-1] != 2 or labels.ndim != 3 or labels.shape[0] != xy.shape[0]:
        raise ValueError(f"on_own_bone: expected xy (N, L, 2) and labels (N, H, W), got {xy.shape} and {labels.shape}")
    height, width = labels.shape[1:]
    finite = np.isfinite(xy).all(-1)
    safe = np.where(np.isfinite(xy), xy, 0.0)
    col = np.clip(np.round(safe[..., 0]).astype(np.int64), 0, width - 1)
    row = np.clip(np.round(safe[..., 1]).astype(np.int64), 0, height - 1)
    label_at = labels[np.arange(len(labels))[:, None], row, col]
    result = (label_at == np.asarray(landmark_bones)[None, :]).astype(np.float64)
    return np.where(finite, result, np.nan)


def outside_own_bone_rate(table: pd.DataFrame) -> float:
    """Share of in-frame landmarks whose predicted position is not on their own bone (ground-truth labels)."""
    rows = table[table["gt_in_frame"].astype(bool)]["pred_on_bone"].to_numpy(dtype=np.float64)
    rows = rows[np.isfinite(rows)]
    return float(1.0 - rows.mean()) if rows.size else math.nan


def success_rates(errors_mm: np.ndarray, thresholds_mm: Iterable[float]) -> dict[str, float]:
    """Fraction of (finite) errors <= each threshold; NaN when there are no errors."""
    errors_mm = np.asarray(errors_mm, dtype=np.float64)
    errors_mm = errors_mm[np.isfinite(errors_mm)]
    return {threshold_key(t): (float((errors_mm <= t).mean()) if errors_mm.size else math.nan)
            for t in thresholds_mm}


def presence_counts(gt_in_frame: np.ndarray, pred_present: np.ndarray) -> dict[str, int]:
    """Presence detection against in-frame ground truth: true/false positives/negatives."""
    truth = np.asarray(gt_in_frame, dtype=bool).ravel()
    predicted = np.asarray(pred_present, dtype=bool).ravel()
    if truth.shape != predicted.shape:
        raise ValueError(f"presence arrays differ in size: {truth.size} and {predicted.size}")
    return {
        "true_positive": int((truth & predicted).sum()),
        "false_positive": int((~truth & predicted).sum()),
        "false_negative": int((truth & ~predicted).sum()),
        "true_negative": int((~truth & ~predicted).sum()),
    }


def visibility_accuracy(gt_in_frame: np.ndarray, visibility_hat: np.ndarray) -> float:
    """Fraction of landmarks whose discrete v_hat in {0, 0.5, 1} equals v (1 in frame, 0 outside)."""
    truth = np.asarray(gt_in_frame, dtype=np.float64).ravel()
    v_hat = np.asarray(visibility_hat, dtype=np.float64).ravel()
    if truth.shape != v_hat.shape:
        raise ValueError(f"visibility arrays differ in size: {truth.size} and {v_hat.size}")
    return float((v_hat == truth).mean()) if truth.size else math.nan


# ------------------------------------------------------------------ presence

ECE_BINS = 10
# The order presence rules are listed in (silr.model.codec.PRESENCE_RULES, without importing torch).
PRESENCE_RULE_ORDER = ("threshold", "template", "learned")
DETECTION_HIT_MM = 4.0


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of `scores` for the positive `labels` (ties count half: the
    Mann-Whitney U statistic / (n+ n-)); NaN without both classes or with a non-finite score."""
    labels = np.asarray(labels, dtype=bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"auroc: {labels.size} labels but {scores.size} scores")
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0 or not np.isfinite(scores).all():
        return math.nan
    ranks = pd.Series(scores).rank(method="average").to_numpy()
    u = ranks[labels].sum() - positives * (positives + 1) / 2.0
    return float(u / (positives * negatives))


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE of presence probabilities: sum over `bins` equal-width bins of (share of samples) x
    |mean predicted probability - observed frequency of presence|; NaN if any is not in [0, 1]."""
    labels = np.asarray(labels, dtype=np.float64).ravel()
    probabilities = np.asarray(probabilities, dtype=np.float64).ravel()
    if labels.shape != probabilities.shape:
        raise ValueError(f"expected_calibration_error: {labels.size} labels but {probabilities.size} probabilities")
    if not labels.size or not np.isfinite(probabilities).all() or probabilities.min() < 0 or probabilities.max() > 1:
        return math.nan
    # Bin i holds (i/bins, (i+1)/bins]; 0 goes to the first bin.
    index = np.clip(np.ceil(probabilities * bins).astype(int) - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        members = index == b
        if members.any():
            total += members.mean() * abs(probabilities[members].mean() - labels[members].mean())
    return float(total)


def platt_scaling(logits: np.ndarray, present: np.ndarray, iterations: int = 100) -> tuple[float, float] | None:
    """(a, b) minimising the cross-entropy of sigmoid(a z + b) against the in-frame flags, with
    Platt's smoothed targets ((n+ + 1) / (n+ + 2) and 1 / (n- + 2), which keep a separable set
    finite), by Newton's method with a backtracking line search; None without both classes, or
    when the fit leaves a outside (0, PLATT_MAX_SLOPE] (a few validation frames that cannot
    support a calibration: the raw presence is kept)."""
    z = np.asarray(logits, dtype=np.float64).ravel()
    y = np.asarray(present, dtype=bool).ravel()
    if z.shape != y.shape:
        raise ValueError(f"platt_scaling: {z.size} logits but {y.size} flags")
    positives, negatives = int(y.sum()), int((~y).sum())
    if positives == 0 or negatives == 0 or not np.isfinite(z).all():
        return None
    target = np.where(y, (positives + 1.0) / (positives + 2.0), 1.0 / (negatives + 2.0))
    design = np.stack([z, np.ones_like(z)], axis=1)

    def objective(params: np.ndarray) -> float:
        t = design @ params
        # cross-entropy of sigmoid(t) against the targets, written to stay finite for large |t|
        return float(np.sum(np.logaddexp(0.0, t) - target * t))

    params = np.array([1.0, 0.0])
    value = objective(params)
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(design @ params)))
        gradient = design.T @ (p - target)
        hessian = design.T @ (design * (p * (1 - p))[:, None]) + 1e-9 * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        scale = 1.0
        while scale > 1e-8 and objective(params - scale * step) > value:
            scale /= 2.0
        params = params - scale * step
        new_value = objective(params)
        if abs(value - new_value) < 1e-12 * max(1.0, abs(value)):
            break
        value = new_value
    a, b = float(params[0]), float(params[1])
    if not (math.isfinite(a) and math.isfinite(b)) or not 0 < a <= PLATT_MAX_SLOPE:
        return None
    return a, b


# A Platt slope beyond this sharpens the raw presence logits more than a handful of validation
# landmarks can justify.
PLATT_MAX_SLOPE = 20.0


def presence_metrics(gt_in_frame: np.ndarray, pred_present: np.ndarray, score: np.ndarray,
                     errors_mm: np.ndarray, *, probability: bool, hit_mm: float = DETECTION_HIT_MM,
                     mm_per_px: float = 1.0) -> dict[str, Any]:
    """Presence of one rule: counts; precision, recall and F1 of the *absent* class; balanced
    accuracy; AUROC of the score; ECE when the score is a probability (`probability`); the mean
    error (px) over in-frame landmarks called present beside that over all in-frame ones; and
    detection F1, a hit being a landmark called present within `hit_mm` of its true position
    (a present call that is not a hit is a false positive, an in-frame landmark without a hit a
    false negative)."""
    truth = np.asarray(gt_in_frame, dtype=bool).ravel()
    called = np.asarray(pred_present, dtype=bool).ravel()
    score = np.asarray(score, dtype=np.float64).ravel()
    errors_mm = np.asarray(errors_mm, dtype=np.float64).ravel()
    counts = presence_counts(truth, called)
    absent_called, absent_true = ~called, ~truth
    tp_absent = int((absent_called & absent_true).sum())
    precision = tp_absent / int(absent_called.sum()) if absent_called.any() else math.nan
    recall = tp_absent / int(absent_true.sum()) if absent_true.any() else math.nan
    f1 = (2 * precision * recall / (precision + recall)
          if np.isfinite(precision) and np.isfinite(recall) and precision + recall > 0 else
          (0.0 if absent_true.any() else math.nan))
    tpr = counts["true_positive"] / int(truth.sum()) if truth.any() else math.nan
    tnr = tp_absent / int(absent_true.sum()) if absent_true.any() else math.nan
    hits = called & truth & (np.nan_to_num(errors_mm, nan=np.inf) <= hit_mm)
    detections = int(called.sum())
    hit_count = int(hits.sum())
    misses = int(truth.sum()) - hit_count
    false_calls = detections - hit_count
    detection_f1 = 2 * hit_count / (2 * hit_count + false_calls + misses) if truth.any() or detections else math.nan
    errors_px = errors_mm / mm_per_px
    return {
        **counts,
        "absent_precision": precision,
        "absent_recall": recall,
        "absent_f1": f1,
        "balanced_accuracy": (tpr + tnr) / 2 if np.isfinite(tpr) and np.isfinite(tnr) else math.nan,
        "auroc": auroc(truth, score),
        "ece": expected_calibration_error(truth, score) if probability else None,
        "mean_px_called_present": _mean(errors_px[truth & called]),
        "mean_px_in_frame": _mean(errors_px[truth]),
        "detection_f1": detection_f1,
        "detection_hit_mm": float(hit_mm),
    }


def presence_rules_of(codec_config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The presence rules that apply to a model, from its codec's config (silr.model.codec): per rule,
    the predictions-CSV column of its score, the cut (present when score >= cut) and whether
    the score is a probability (ECE is reported only then)."""
    kind = codec_config["kind"]
    rules: dict[str, dict[str, Any]] = {}
    if kind != "shape":  # a threshold on a map of arbitrary level (NCC) means nothing
        rules["threshold"] = {"column": "threshold_score", "cut": float(codec_config["presence_threshold"]),
                              "probability": kind == "logit"}
    rules["template"] = {"column": "template_ncc", "cut": float(codec_config["template_ncc"]), "probability": False}
    if codec_config.get("presence_source") is not None:
        rules["learned"] = {"column": "presence_prob", "cut": 0.5, "probability": True}
    return rules


def presence_by_rule(table: pd.DataFrame, rules: Mapping[str, Mapping[str, Any]],
                     mm_per_px: float) -> dict[str, dict[str, Any]]:
    """`presence_metrics` of every rule in `rules` (as `presence_rules_of` gives them) over a predictions table."""
    truth = table["gt_in_frame"].to_numpy(dtype=bool)
    errors_mm = table["error_px"].to_numpy(dtype=np.float64) * mm_per_px
    result = {}
    for name in sorted(rules, key=lambda n: PRESENCE_RULE_ORDER.index(n) if n in PRESENCE_RULE_ORDER else 99):
        rule = rules[name]
        score = table[rule["column"]].to_numpy(dtype=np.float64)
        result[name] = presence_metrics(truth, score >= rule["cut"], score, errors_mm,
                                        probability=bool(rule["probability"]), mm_per_px=mm_per_px)
    return result


def consistency_summary(table: pd.DataFrame) -> dict[str, Any]:
    """Anatomical consistency of a predictions table: the share of in-frame landmarks predicted
    off their own bone (ground-truth labels), the same for the true positions (the floor the
    labels allow), and the error of the argmax restricted to the predicted own bone."""
    in_frame = table[table["gt_in_frame"].astype(bool)]
    gt_rows = in_frame["gt_on_bone"].to_numpy(dtype=np.float64)
    gt_rows = gt_rows[np.isfinite(gt_rows)]
    bone_errors = in_frame["error_bone_px"].to_numpy(dtype=np.float64)
    return {
        "outside_own_bone_rate": outside_own_bone_rate(table),
        "gt_outside_own_bone_rate": float(1.0 - gt_rows.mean()) if gt_rows.size else math.nan,
        "mean_px_bone_restricted": _mean(bone_errors[np.isfinite(bone_errors)]),
        "mean_px_same_landmarks": _mean(in_frame["error_px"].to_numpy(dtype=np.float64)[np.isfinite(bone_errors)]),
        "landmarks_without_bone": int((~np.isfinite(bone_errors)).sum()),
    }


# ------------------------------------------------------------------ segmentation

def dice_per_bone(predicted: np.ndarray, truth: np.ndarray,
                  bones: Sequence[int] = BONE_LABELS) -> np.ndarray:
    """(N, H, W) label maps -> (N, len(bones)) Dice; NaN where a bone is in neither map."""
    predicted = np.asarray(predicted)
    truth = np.asarray(truth)
    if predicted.shape != truth.shape or predicted.ndim != 3:
        raise ValueError(f"label maps must both be (N, H, W), got {predicted.shape} and {truth.shape}")
    result = np.full((predicted.shape[0], len(bones)), np.nan)
    for column, bone in enumerate(bones):
        p = (predicted == bone).reshape(len(predicted), -1)
        t = (truth == bone).reshape(len(truth), -1)
        total = p.sum(axis=1) + t.sum(axis=1)
        overlap = (p & t).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            result[:, column] = np.where(total > 0, 2.0 * overlap / total, np.nan)
    return result


def dice_summary(per_frame: np.ndarray, bones: Sequence[int] = BONE_LABELS) -> dict[str, dict[str, float]]:
    """Per bone name: mean Dice over the frames that define it, and how many frames that is."""
    per_frame = np.asarray(per_frame, dtype=np.float64)
    summary = {}
    for column, bone in enumerate(bones):
        values = per_frame[:, column]
        values = values[np.isfinite(values)]
        summary[LABEL_NAMES[bone]] = {"mean": _mean(values), "frames": int(values.size)}
    return summary


# ------------------------------------------------------------------ prediction tables

def check_predictions(table: pd.DataFrame, source: str = "predictions") -> None:
    """ValueError naming `source` unless `table` has exactly the predictions columns."""
    if tuple(table.columns) != PREDICTION_COLUMNS:
        raise ValueError(f"{source}: columns must be {', '.join(PREDICTION_COLUMNS)}; "
                         f"got {', '.join(map(str, table.columns))}")


def error_summary(table: pd.DataFrame, mm_per_px: float, success_mm: Iterable[float]) -> dict[str, Any]:
    """Pooled error statistics over the in-frame rows of a predictions table."""
    errors_px = table.loc[table["gt_in_frame"].astype(bool), "error_px"].to_numpy(dtype=np.float64)
    errors_mm = errors_px * mm_per_px
    return {
        "mean_px": _mean(errors_px),
        "median_px": _median(errors_px),
        "mean_mm": _mean(errors_mm),
        "median_mm": _median(errors_mm),
        "success_rate": success_rates(errors_mm, success_mm),
        # an outlier: more than OUTLIER_MM from the true position
        "outlier_rate": float((errors_mm > OUTLIER_MM).mean()) if errors_mm.size else math.nan,
        "landmarks_in_frame": int(errors_px.size),
    }


def per_landmark_mean_px(table: pd.DataFrame) -> dict[str, float]:
    """Mean in-frame error per landmark name, in canonical landmark order (NaN if never in frame)."""
    in_frame = table[table["gt_in_frame"].astype(bool)]
    means = in_frame.groupby("landmark")["error_px"].mean()
    return {name: float(means.get(name, math.nan)) for name in LANDMARK_NAMES}


def fold_metrics(table: pd.DataFrame, *, mm_per_px: float, success_mm: Iterable[float],
                 dice_per_frame: np.ndarray | None = None,
                 presence_rules: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Everything `metrics/folds/<loss>/fold<k>.json` holds, from one fold's predictions table."""
    check_predictions(table)
    success_mm = tuple(success_mm)
    summary = error_summary(table, mm_per_px, success_mm)
    frames = table[["specimen", "frame"]].drop_duplicates()
    result: dict[str, Any] = {
        "error": {key: summary[key] for key in ("mean_px", "median_px", "mean_mm", "median_mm")},
        "success_rate": summary["success_rate"],
        "per_landmark_mean_px": per_landmark_mean_px(table),
        "presence": presence_counts(table["gt_in_frame"], table["pred_present"]),
        "visibility_accuracy": visibility_accuracy(table["gt_in_frame"], table["visibility_hat"]),
        "counts": {
            "frames": int(len(frames)),
            "landmarks": int(len(table)),
            "landmarks_in_frame": summary["landmarks_in_frame"],
        },
        "mm_per_px": float(mm_per_px),
    }
    if dice_per_frame is not None:
        result["dice"] = dice_summary(dice_per_frame)
    if presence_rules is not None:
        result["presence_rules"] = {name: dict(rule) for name, rule in presence_rules.items()}
        result["presence_by_rule"] = presence_by_rule(table, presence_rules, mm_per_px)
    result["consistency"] = consistency_summary(table)
    return result


def table2(table: pd.DataFrame, *, losses: Sequence[str], mm_per_px: float,
           success_mm: Iterable[float]) -> dict[str, dict[str, Any]]:
    """Table 2 from the concatenated predictions of every (loss, fold), one entry per loss.

    per_specimen_px: test specimen -> mean error over its in-frame landmarks; mean_px and
    std_px (ddof = 0) over those specimen means; the same in mm; `pooled`: statistics over
    all in-frame landmarks of the loss at once (a specimen with more frames weighs more).
    """
    check_predictions(table)
    success_mm = tuple(success_mm)
    result: dict[str, dict[str, Any]] = {}
    for loss in losses:
        rows = table[table["loss"] == loss]
        if rows.empty:
            raise ValueError(f"no predictions for loss {loss!r}")
        in_frame = rows[rows["gt_in_frame"].astype(bool)]
        per_specimen = in_frame.groupby("specimen")["error_px"].mean().sort_index()
        specimen_means = per_specimen.to_numpy(dtype=np.float64)
        result[loss] = {
            "per_specimen_px": {int(s): float(v) for s, v in per_specimen.items()},
            "mean_px": _mean(specimen_means),
            # A spread over one specimen is undefined, not zero.
            "std_px": float(np.std(specimen_means, ddof=0)) if specimen_means.size > 1 else math.nan,
            "per_specimen_mm": {int(s): float(v) * mm_per_px for s, v in per_specimen.items()},
            "mean_mm": _mean(specimen_means) * mm_per_px,
            "std_mm": (float(np.std(specimen_means, ddof=0)) * mm_per_px if specimen_means.size > 1 else math.nan),
            "specimens": int(specimen_means.size),
            "folds": sorted(int(k) for k in rows["fold"].unique()),
            "seeds": sorted(int(k) for k in rows["seed"].unique()) if "seed" in rows else [0],
            "frames": int(len(rows[["fold", "specimen", "frame"]].drop_duplicates())),
            "pooled": error_summary(rows, mm_per_px, success_mm),
            "per_landmark_mean_mm": {name: value * mm_per_px for name, value in per_landmark_mean_px(rows).items()},
        }
    return result


def per_specimen_rows(summary_table2: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Tidy (loss, specimen, specimen_loss, mean_px, mean_mm) rows of a `table2` result.

    For DVC's native plots: `specimen_loss` ('specimen 6 / Proposed') gives every bar of a
    bar chart its own row, since DVC's templates cannot group bars by a column.
    """
    rows = []
    for loss, entry in summary_table2.items():
        for specimen, mean_px in entry["per_specimen_px"].items():
            rows.append({"loss": loss, "specimen": int(specimen),
                         "specimen_loss": f"specimen {int(specimen)} / {loss_title(loss)}",
                         "mean_px": mean_px, "mean_mm": entry["per_specimen_mm"][specimen]})
    table = pd.DataFrame(rows, columns=["loss", "specimen", "specimen_loss", "mean_px", "mean_mm"])
    return table.sort_values(["specimen", "loss"], kind="stable", ignore_index=True)


def showcase_frames(table: pd.DataFrame) -> dict[int, int]:
    """Specimen -> the frame shown in Figure 1: most in-frame ground-truth landmarks, then lowest index.

    Chosen from the ground truth alone, so no loss gets to pick its best-looking frame.
    """
    frames = (table[["specimen", "frame", "landmark", "gt_in_frame"]]
              .drop_duplicates(["specimen", "frame", "landmark"])
              .groupby(["specimen", "frame"])["gt_in_frame"].sum()
              .reset_index())
    frames = frames.sort_values(["specimen", "gt_in_frame", "frame"], ascending=[True, False, True])
    first = frames.groupby("specimen").head(1)
    return {int(s): int(f) for s, f in zip(first["specimen"], first["frame"])}
