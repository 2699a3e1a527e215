"""Dice of the predicted bone segmentation: label maps in, numbers out (no files).

Dice per bone of a frame: 2|P n T| / (|P| + |T|). A frame where the bone is absent from
both the prediction and the ground truth has no Dice for that bone (NaN) and is left out
of that bone's mean; a bone predicted where there is none (or missed where there is one)
counts as 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from silr.core.anatomy import BONE_LABELS, LABEL_NAMES
from silr.evaluation.metrics import mean_or_nan

__all__ = ["dice_per_bone", "dice_summary"]


def dice_per_bone(predicted: np.ndarray, truth: np.ndarray,
                  bones: Sequence[int] = BONE_LABELS) -> np.ndarray:
    """(N, H, W) label maps -> (N, len(bones)) Dice; NaN where a bone is in neither map."""
    predicted = np.asarray(predicted)
    truth = np.asarray(truth)
    if predicted.shape != truth.shape or predicted.ndim != 3:
        raise ValueError(f"label maps must both be (N, H, W), got {predicted.shape} and "
                         f"{truth.shape}")
    result = np.full((predicted.shape[0], len(bones)), np.nan)
    for column, bone in enumerate(bones):
        p = (predicted == bone).reshape(len(predicted), -1)
        t = (truth == bone).reshape(len(truth), -1)
        total = p.sum(axis=1) + t.sum(axis=1)
        overlap = (p & t).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            result[:, column] = np.where(total > 0, 2.0 * overlap / total, np.nan)
    return result


def dice_summary(per_frame: np.ndarray,
                 bones: Sequence[int] = BONE_LABELS) -> dict[str, dict[str, float]]:
    """Per bone name: mean Dice over the frames that define it, and how many frames that is."""
    per_frame = np.asarray(per_frame, dtype=np.float64)
    summary = {}
    for column, bone in enumerate(bones):
        values = per_frame[:, column]
        values = values[np.isfinite(values)]
        summary[LABEL_NAMES[bone]] = {"mean": mean_or_nan(values), "frames": int(values.size)}
    return summary
