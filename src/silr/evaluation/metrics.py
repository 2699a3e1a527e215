"""Pure metric functions: arrays and prediction tables in, numbers out.

No files, no params, no torch. `silr evaluate` and `silr report` call these, and the
tests recompute every published number from the predictions CSVs with them (or with a
few lines of pandas that must agree with them).

Conventions of the localisation error, all of them written once here:
- An error is the Euclidean distance in 180x180 frame pixels between the predicted
  location (the heatmap argmax, whether or not the landmark is predicted present) and
  the ground truth, for ground-truth landmarks inside the frame only (the paper's
  number). Out-of-frame ground truth has no error (NaN in memory, empty in the CSV).
- mm = px * the processed file's pixel spacing (1.552 mm per 8x pixel).
- Table 2: per test specimen the mean error over its in-frame landmarks; across
  specimens the mean and the population standard deviation (ddof = 0), which is what
  reproduces the paper's own Mean +- Std row.

Presence, its rules and the discrete visibility are scored in `silr.evaluation.presence`,
Dice in `silr.evaluation.dice`; a fold's metrics JSON is assembled in
`silr.evaluation.results.fold_metrics`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from silr.core.anatomy import LANDMARK_NAMES

__all__ = [
    "DECIMALS", "LOSS_TITLES", "OUTLIER_MM", "PAPER_SPECIMEN_ORDER", "PAPER_TABLE2",
    "PREDICTION_COLUMNS", "PREDICTION_FLOAT_COLUMNS", "check_predictions", "consistency_summary",
    "error_summary", "landmark_errors", "loss_title", "mean_or_nan", "on_own_bone",
    "outside_own_bone_rate", "per_landmark_mean_px", "per_specimen_rows", "rounded",
    "showcase_frames", "success_rates", "table2", "threshold_key",
]

# The predictions CSV, one row per (frame, landmark), in this column order.
PREDICTION_COLUMNS: tuple[str, ...] = (
    "loss", "fold", "seed", "specimen", "frame", "landmark",
    "gt_x", "gt_y", "gt_in_frame",
    "pred_x", "pred_y", "pred_present", "score", "visibility_hat", "error_px",
    # every presence rule's score (NaN where a rule does not apply; silr.model.codec)
    "threshold_score", "template_ncc", "presence_prob",
    # the shape rule's call: 1 where the fold's shape prior puts the landmark in the frame
    "shape_present",
    # the argmax restricted to the landmark's own predicted bone, and its error
    "bone_x", "bone_y", "error_bone_px",
    # 1 where the ground-truth label under the (rounded) prediction / under the true position
    # is the landmark's own bone, 0 where not, empty out of frame or without labels
    "pred_on_bone", "gt_on_bone",
)
# The float columns of the predictions CSV (rounded to DECIMALS).
PREDICTION_FLOAT_COLUMNS: tuple[str, ...] = (
    "gt_x", "gt_y", "pred_x", "pred_y", "score", "visibility_hat", "error_px", "threshold_score",
    "template_ncc", "presence_prob", "shape_present", "bone_x", "bone_y", "error_bone_px",
    "pred_on_bone", "gt_on_bone")
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
LOSS_TITLES: dict[str, str] = {"proposed": "Proposed", "proposed_plus": "Proposed+", "mse": "MSE",
                               "ncc": "NCC", "frame_centre": "Frame centre (baseline)",
                               "mean_shape": "Mean shape (baseline)"}


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


def mean_or_nan(values: np.ndarray) -> float:
    """The mean of `values`; NaN for none."""
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()) if values.size else math.nan


def _median(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    return float(np.median(values)) if values.size else math.nan


# ------------------------------------------------------------------ landmark errors

def landmark_errors(gt_xy: np.ndarray, pred_xy: np.ndarray, gt_in_frame: np.ndarray) -> np.ndarray:
    """(..., 2) ground truth and prediction, (...) in-frame mask -> (...) Euclidean error, NaN
    outside."""
    gt_xy = np.asarray(gt_xy, dtype=np.float64)
    pred_xy = np.asarray(pred_xy, dtype=np.float64)
    gt_in_frame = np.asarray(gt_in_frame, dtype=bool)
    if gt_xy.shape != pred_xy.shape or gt_xy.shape[-1] != 2:
        raise ValueError(f"landmark arrays must both be (..., 2), got {gt_xy.shape} and "
                         f"{pred_xy.shape}")
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
        raise ValueError(f"on_own_bone: expected xy (N, L, 2) and labels (N, H, W), got "
                         f"{xy.shape} and {labels.shape}")
    height, width = labels.shape[1:]
    finite = np.isfinite(xy).all(-1)
    safe = np.where(np.isfinite(xy), xy, 0.0)
    col = np.clip(np.round(safe[..., 0]).astype(np.int64), 0, width - 1)
    row = np.clip(np.round(safe[..., 1]).astype(np.int64), 0, height - 1)
    label_at = labels[np.arange(len(labels))[:, None], row, col]
    result = (label_at == np.asarray(landmark_bones)[None, :]).astype(np.float64)
    return np.where(finite, result, np.nan)


def outside_own_bone_rate(table: pd.DataFrame) -> float:
    """Share of in-frame landmarks whose predicted position is not on their own bone (ground-truth
    labels)."""
    rows = table[table["gt_in_frame"].astype(bool)]["pred_on_bone"].to_numpy(dtype=np.float64)
    rows = rows[np.isfinite(rows)]
    return float(1.0 - rows.mean()) if rows.size else math.nan


def success_rates(errors_mm: np.ndarray, thresholds_mm: Iterable[float]) -> dict[str, float]:
    """Fraction of (finite) errors <= each threshold; NaN when there are no errors."""
    errors_mm = np.asarray(errors_mm, dtype=np.float64)
    errors_mm = errors_mm[np.isfinite(errors_mm)]
    return {threshold_key(t): (float((errors_mm <= t).mean()) if errors_mm.size else math.nan)
            for t in thresholds_mm}


def consistency_summary(table: pd.DataFrame) -> dict[str, Any]:
    """Anatomical consistency of a predictions table: the share of in-frame landmarks predicted
    off their own bone (ground-truth labels), the same for the true positions (the floor the
    labels allow), and the error of the argmax restricted to the predicted own bone."""
    in_frame = table[table["gt_in_frame"].astype(bool)]
    gt_rows = in_frame["gt_on_bone"].to_numpy(dtype=np.float64)
    gt_rows = gt_rows[np.isfinite(gt_rows)]
    bone_errors = in_frame["error_bone_px"].to_numpy(dtype=np.float64)
    errors = in_frame["error_px"].to_numpy(dtype=np.float64)
    return {
        "outside_own_bone_rate": outside_own_bone_rate(table),
        "gt_outside_own_bone_rate": float(1.0 - gt_rows.mean()) if gt_rows.size else math.nan,
        "mean_px_bone_restricted": mean_or_nan(bone_errors[np.isfinite(bone_errors)]),
        "mean_px_same_landmarks": mean_or_nan(errors[np.isfinite(bone_errors)]),
        "landmarks_without_bone": int((~np.isfinite(bone_errors)).sum()),
    }


# ------------------------------------------------------------------ prediction tables

def check_predictions(table: pd.DataFrame, source: str = "predictions") -> None:
    """ValueError naming `source` unless `table` has exactly the predictions columns."""
    if tuple(table.columns) != PREDICTION_COLUMNS:
        raise ValueError(f"{source}: columns must be {', '.join(PREDICTION_COLUMNS)}; "
                         f"got {', '.join(map(str, table.columns))}")


def error_summary(table: pd.DataFrame, mm_per_px: float,
                  success_mm: Iterable[float]) -> dict[str, Any]:
    """Pooled error statistics over the in-frame rows of a predictions table."""
    errors_px = table.loc[table["gt_in_frame"].astype(bool), "error_px"].to_numpy(dtype=np.float64)
    errors_mm = errors_px * mm_per_px
    return {
        "mean_px": mean_or_nan(errors_px),
        "median_px": _median(errors_px),
        "mean_mm": mean_or_nan(errors_mm),
        "median_mm": _median(errors_mm),
        "success_rate": success_rates(errors_mm, success_mm),
        # an outlier: more than OUTLIER_MM from the true position
        "outlier_rate": float((errors_mm > OUTLIER_MM).mean()) if errors_mm.size else math.nan,
        "landmarks_in_frame": int(errors_px.size),
    }


def per_landmark_mean_px(table: pd.DataFrame) -> dict[str, float]:
    """Mean in-frame error per landmark name, in canonical landmark order (NaN if never in
    frame)."""
    in_frame = table[table["gt_in_frame"].astype(bool)]
    means = in_frame.groupby("landmark")["error_px"].mean()
    return {name: float(means.get(name, math.nan)) for name in LANDMARK_NAMES}


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
        # A spread over one specimen is undefined, not zero.
        std = float(np.std(specimen_means, ddof=0)) if specimen_means.size > 1 else math.nan
        result[loss] = {
            "per_specimen_px": {int(s): float(v) for s, v in per_specimen.items()},
            "mean_px": mean_or_nan(specimen_means),
            "std_px": std,
            "per_specimen_mm": {int(s): float(v) * mm_per_px for s, v in per_specimen.items()},
            "mean_mm": mean_or_nan(specimen_means) * mm_per_px,
            "std_mm": std * mm_per_px if specimen_means.size > 1 else math.nan,
            "specimens": int(specimen_means.size),
            "folds": sorted(int(k) for k in rows["fold"].unique()),
            "seeds": sorted(int(k) for k in rows["seed"].unique()) if "seed" in rows else [0],
            "frames": int(len(rows[["fold", "specimen", "frame"]].drop_duplicates())),
            "pooled": error_summary(rows, mm_per_px, success_mm),
            "per_landmark_mean_mm": {name: value * mm_per_px
                                     for name, value in per_landmark_mean_px(rows).items()},
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
    """Specimen -> the frame shown in Figure 1: most in-frame ground-truth landmarks, then lowest
    index.

    Chosen from the ground truth alone, so no loss gets to pick its best-looking frame.
    """
    frames = (table[["specimen", "frame", "landmark", "gt_in_frame"]]
              .drop_duplicates(["specimen", "frame", "landmark"])
              .groupby(["specimen", "frame"])["gt_in_frame"].sum()
              .reset_index())
    frames = frames.sort_values(["specimen", "gt_in_frame", "frame"], ascending=[True, False, True])
    first = frames.groupby("specimen").head(1)
    return {int(s): int(f) for s, f in zip(first["specimen"], first["frame"])}
