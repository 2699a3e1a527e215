"""Presence scoring: is a landmark in the frame, and how well does each rule say so?

Pure functions, no files. The absent class is a landmark whose true position lies outside
the frame. Discrete visibility is correct when v_hat equals v (v = 1 in frame, 0 outside);
v_hat = 0.5 (present but outside its bone) is never correct. The presence rules (threshold,
template, learned) and their score columns are those of silr.model.codec; the predictions
table is silr.evaluation.metrics.PREDICTION_COLUMNS.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from silr.core.choices import PRESENCE_RULES
from silr.evaluation.metrics import mean_or_nan

__all__ = [
    "DETECTION_HIT_MM", "ECE_BINS", "PLATT_MAX_SLOPE", "auroc",
    "expected_calibration_error", "platt_scaling", "presence_by_rule", "presence_counts",
    "presence_metrics", "presence_rules_of", "visibility_accuracy",
]

# Equal-width probability bins of the expected calibration error.
ECE_BINS = 10
# Detection F1: a hit is a landmark called present within this many mm of its true position.
DETECTION_HIT_MM = 4.0
# A Platt slope beyond this sharpens the raw presence logits more than a handful of validation
# landmarks can justify.
PLATT_MAX_SLOPE = 20.0


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
    """Fraction of landmarks whose discrete v_hat in {0, 0.5, 1} equals v (1 in frame, 0
    outside)."""
    truth = np.asarray(gt_in_frame, dtype=np.float64).ravel()
    v_hat = np.asarray(visibility_hat, dtype=np.float64).ravel()
    if truth.shape != v_hat.shape:
        raise ValueError(f"visibility arrays differ in size: {truth.size} and {v_hat.size}")
    return float((v_hat == truth).mean()) if truth.size else math.nan


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


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray,
                               bins: int = ECE_BINS) -> float:
    """ECE of presence probabilities: sum over `bins` equal-width bins of (share of samples) x
    |mean predicted probability - observed frequency of presence|; NaN if any is not in [0, 1]."""
    labels = np.asarray(labels, dtype=np.float64).ravel()
    probabilities = np.asarray(probabilities, dtype=np.float64).ravel()
    if labels.shape != probabilities.shape:
        raise ValueError(f"expected_calibration_error: {labels.size} labels but "
                         f"{probabilities.size} probabilities")
    if (not labels.size or not np.isfinite(probabilities).all() or probabilities.min() < 0
            or probabilities.max() > 1):
        return math.nan
    # Bin i holds (i/bins, (i+1)/bins]; 0 goes to the first bin.
    index = np.clip(np.ceil(probabilities * bins).astype(int) - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        members = index == b
        if members.any():
            total += members.mean() * abs(probabilities[members].mean() - labels[members].mean())
    return float(total)


def platt_scaling(logits: np.ndarray, present: np.ndarray,
                  iterations: int = 100) -> tuple[float, float] | None:
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
    detection_f1 = (2 * hit_count / (2 * hit_count + false_calls + misses)
                    if truth.any() or detections else math.nan)
    errors_px = errors_mm / mm_per_px
    return {
        **counts,
        "absent_precision": precision,
        "absent_recall": recall,
        "absent_f1": f1,
        "balanced_accuracy": (tpr + tnr) / 2 if np.isfinite(tpr) and np.isfinite(tnr) else math.nan,
        "auroc": auroc(truth, score),
        "ece": expected_calibration_error(truth, score) if probability else None,
        "mean_px_called_present": mean_or_nan(errors_px[truth & called]),
        "mean_px_in_frame": mean_or_nan(errors_px[truth]),
        "detection_f1": detection_f1,
        "detection_hit_mm": float(hit_mm),
    }


def presence_rules_of(codec_config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The presence rules that apply to a model, from its codec's config (silr.model.codec): per
    rule, the predictions-CSV column of its score, the cut (present when score >= cut) and
    whether the score is a probability (ECE is reported only then); the `shape` rule decides by
    its own column (`decision`, 1/0) and is scored by its base rule's score."""
    kind = codec_config["kind"]
    rules: dict[str, dict[str, Any]] = {}
    if kind != "shape":  # a threshold on a map of arbitrary level (NCC) means nothing
        rules["threshold"] = {"column": "threshold_score",
                              "cut": float(codec_config["presence_threshold"]),
                              "probability": kind == "logit"}
    rules["template"] = {"column": "template_ncc", "cut": float(codec_config["template_ncc"]),
                         "probability": False}
    if codec_config.get("presence_source") is not None:
        rules["learned"] = {"column": "presence_prob", "cut": 0.5, "probability": True}
    if codec_config.get("shape_prior") is not None:
        base = rules["learned" if "learned" in rules else "template"]
        rules["shape"] = {**base, "decision": "shape_present"}
    return rules


def presence_by_rule(table: pd.DataFrame, rules: Mapping[str, Mapping[str, Any]],
                     mm_per_px: float) -> dict[str, dict[str, Any]]:
    """`presence_metrics` of every rule in `rules` (as `presence_rules_of` gives them) over a
    predictions table."""
    truth = table["gt_in_frame"].to_numpy(dtype=bool)
    errors_mm = table["error_px"].to_numpy(dtype=np.float64) * mm_per_px
    result = {}
    ranked = sorted(rules, key=lambda n: PRESENCE_RULES.index(n) if n in PRESENCE_RULES else 99)
    for name in ranked:
        rule = rules[name]
        score = table[rule["column"]].to_numpy(dtype=np.float64)
        called = (table[rule["decision"]].to_numpy(dtype=np.float64) >= 0.5 if "decision" in rule
                  else score >= rule["cut"])
        result[name] = presence_metrics(truth, called, score, errors_mm,
                                        probability=bool(rule["probability"]), mm_per_px=mm_per_px)
    return result
