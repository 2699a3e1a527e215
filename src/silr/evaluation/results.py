"""The evaluation's results on disk: where they live, and their readers and writers.

`silr evaluate` writes and `silr report` reads, through this module only (no stage imports
another stage):
- `metrics/predictions/<loss>/fold<k>.csv`: one row per (frame, landmark) in the 180x180
  frame, columns `silr.evaluation.metrics.PREDICTION_COLUMNS`, floats rounded to `metrics.DECIMALS`;
- `metrics/folds/<loss>/fold<k>.json`: the fold's metrics (`fold_metrics`, plus
  what the heatmaps meant, the loss, the fold and the model's epoch and validation score);
- `metrics/segmentation/<loss>/fold<k>.npz`: the predicted label maps of the test frames.
"""

from __future__ import annotations

import io as _io
import json
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from silr.core import coords
from silr.core.anatomy import LANDMARK_BONE_INDEX, LANDMARK_NAMES
from silr.core.errors import DataError
from silr.core.io import write_json, write_with
from silr.core.types import FramePredictions
from silr.evaluation import metrics
from silr.evaluation.dice import dice_summary
from silr.evaluation.presence import presence_by_rule, presence_counts, visibility_accuracy

__all__ = [
    "DEFAULT_FOLDS", "DEFAULT_METRICS", "DEFAULT_MODELS", "OutputPaths", "checkpoint_path",
    "fold_metrics", "output_paths", "predictions_table", "read_fold_metrics", "read_label_maps",
    "read_predictions_csv", "run_dir", "run_name", "write_csv", "write_fold_metrics",
    "write_label_maps", "write_predictions_csv",
]

# Where the pipeline keeps the files the evaluation reads and writes (relative to the project).
DEFAULT_FOLDS = "data/folds.json"
DEFAULT_MODELS = "models"
DEFAULT_METRICS = "metrics"
# Fixed zip member time: the label-map archive is byte-identical for identical predictions.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class OutputPaths:
    predictions: Path
    fold_metrics: Path
    segmentation: Path


def run_name(fold: int, seed: int | None = None) -> str:
    """`fold<k>` for the study's default seed (train.seed), `fold<k>_seed<s>` for an extra one
    (study.seeds): the default run keeps the paths every command and doc names."""
    return f"fold{fold}" if seed is None else f"fold{fold}_seed{seed}"


def output_paths(out_dir: str | Path, loss: str, fold: int,
                 seed: int | None = None) -> OutputPaths:
    """Where `silr evaluate --loss loss --fold fold [--seed s]` writes (the report reads the same
    names)."""
    out_dir = Path(out_dir)
    name = run_name(fold, seed)
    return OutputPaths(predictions=out_dir / "predictions" / loss / f"{name}.csv",
                       fold_metrics=out_dir / "folds" / loss / f"{name}.json",
                       segmentation=out_dir / "segmentation" / loss / f"{name}.npz")


def run_dir(root: str | Path, loss: str, fold: int, seed: int | None = None) -> Path:
    """`<root>/<loss>/fold<k>` (default seed) or `<root>/<loss>/fold<k>_seed<s>`: a run's models
    folder (best.pt) or dvclive folder (beside the default run's, not inside it: DVC outputs may
    not nest)."""
    return Path(root) / loss / run_name(fold, seed)


def checkpoint_path(models_dir: str | Path, loss: str, fold: int, seed: int | None = None) -> Path:
    return run_dir(models_dir, loss, fold, seed) / "best.pt"


# ------------------------------------------------------------------ prediction

def _bone_columns(gt_xy: np.ndarray, predicted: FramePredictions, gt_in_frame: np.ndarray,
                  true_labels: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """error_bone_px, pred_on_bone and gt_on_bone of N frames, (N, L) each."""
    bone_xy = np.where(np.isfinite(predicted.xy_bone), predicted.xy_bone, np.inf)
    bone_errors = metrics.landmark_errors(gt_xy, bone_xy, gt_in_frame)
    bone_errors = np.where(np.isfinite(bone_errors), bone_errors, np.nan)
    if true_labels is not None:
        pred_on_bone = metrics.on_own_bone(predicted.xy, true_labels, LANDMARK_BONE_INDEX)
        gt_on_bone = metrics.on_own_bone(np.where(gt_in_frame[..., None], gt_xy, np.nan),
                                         true_labels, LANDMARK_BONE_INDEX)
        pred_on_bone = np.where(gt_in_frame, pred_on_bone, np.nan)
    else:
        pred_on_bone = gt_on_bone = np.full(gt_in_frame.shape, np.nan)
    return bone_errors, pred_on_bone, gt_on_bone


def predictions_table(*, loss: str, fold: int, specimens: Sequence[int],
                      frame_indices: Sequence[int], gt_xy: np.ndarray,
                      predicted: FramePredictions, frame_size: tuple[int, int],
                      true_labels: np.ndarray | None = None, seed: int = 0) -> pd.DataFrame:
    """The predictions CSV's rows for N frames: frame-major, landmarks in canonical order.

    `true_labels` (N, H, W), the ground-truth label maps of the frames, give pred_on_bone and
    gt_on_bone (NaN without them). Floats are rounded to `metrics.DECIMALS` here, so the fold
    metrics are computed from exactly the numbers the CSV holds.
    """
    gt_xy = np.asarray(gt_xy, dtype=np.float64)
    count, num_landmarks = gt_xy.shape[:2]
    if num_landmarks != len(LANDMARK_NAMES):
        raise ValueError(f"expected {len(LANDMARK_NAMES)} landmarks per frame, got {num_landmarks}")
    if len(specimens) != count or len(frame_indices) != count or predicted.xy.shape != gt_xy.shape:
        raise ValueError(f"{count} ground-truth frames but {len(specimens)} specimens, "
                         f"{len(frame_indices)} frame indices and predictions of shape "
                         f"{predicted.xy.shape}")
    width, height = frame_size
    gt_in_frame = coords.in_frame(gt_xy, width, height)
    errors = metrics.landmark_errors(gt_xy, predicted.xy, gt_in_frame)
    bone_errors, pred_on_bone, gt_on_bone = _bone_columns(gt_xy, predicted, gt_in_frame,
                                                          true_labels)
    repeat = lambda values: np.repeat(np.asarray(values), num_landmarks)  # noqa: E731 - per-row expansion
    table = pd.DataFrame({
        "loss": loss,
        "fold": int(fold),
        "seed": int(seed),
        "specimen": repeat(specimens).astype(int),
        "frame": repeat(frame_indices).astype(int),
        "landmark": np.tile(np.array(LANDMARK_NAMES), count),
        "gt_x": gt_xy[..., 0].ravel(),
        "gt_y": gt_xy[..., 1].ravel(),
        "gt_in_frame": gt_in_frame.ravel().astype(int),
        "pred_x": predicted.xy[..., 0].ravel(),
        "pred_y": predicted.xy[..., 1].ravel(),
        "pred_present": predicted.present.ravel().astype(int),
        "score": predicted.score.ravel(),
        "visibility_hat": predicted.visibility_hat.ravel(),
        "error_px": errors.ravel(),
        "threshold_score": predicted.threshold_score.ravel(),
        "template_ncc": predicted.template_ncc.ravel(),
        "presence_prob": predicted.presence_prob.ravel(),
        "shape_present": predicted.shape_present.ravel(),
        "bone_x": predicted.xy_bone[..., 0].ravel(),
        "bone_y": predicted.xy_bone[..., 1].ravel(),
        "error_bone_px": bone_errors.ravel(),
        "pred_on_bone": pred_on_bone.ravel(),
        "gt_on_bone": gt_on_bone.ravel(),
    }, columns=list(metrics.PREDICTION_COLUMNS))
    float_columns = list(metrics.PREDICTION_FLOAT_COLUMNS)
    table[float_columns] = table[float_columns].round(metrics.DECIMALS) + 0.0  # + 0.0: no "-0.0"
    return table


# ------------------------------------------------------------------ fold metrics

def fold_metrics(table: pd.DataFrame, *, mm_per_px: float, success_mm: Iterable[float],
                 dice_per_frame: np.ndarray | None = None,
                 presence_rules: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Everything `metrics/folds/<loss>/fold<k>.json` holds, from one fold's predictions table."""
    metrics.check_predictions(table)
    success_mm = tuple(success_mm)
    summary = metrics.error_summary(table, mm_per_px, success_mm)
    frames = table[["specimen", "frame"]].drop_duplicates()
    result: dict[str, Any] = {
        "error": {key: summary[key] for key in ("mean_px", "median_px", "mean_mm", "median_mm")},
        "success_rate": summary["success_rate"],
        "per_landmark_mean_px": metrics.per_landmark_mean_px(table),
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
    result["consistency"] = metrics.consistency_summary(table)
    return result


# ------------------------------------------------------------------ writing

def write_csv(path: str | Path, table: pd.DataFrame) -> None:
    """`table` as a CSV, atomically: no index, floats to `metrics.DECIMALS` places, LF ends."""
    write_with(path, lambda tmp: table.to_csv(tmp, index=False,
                                              float_format=f"%.{metrics.DECIMALS}f",
                                              lineterminator="\n"))


def write_predictions_csv(path: str | Path, table: pd.DataFrame) -> None:
    metrics.check_predictions(table, str(path))
    write_csv(path, table)


def read_predictions_csv(path: str | Path) -> pd.DataFrame:
    """A predictions CSV as written by `write_predictions_csv`; DataError if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such predictions file")
    try:
        table = pd.read_csv(path, dtype={"loss": str, "landmark": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable predictions CSV ({type(exc).__name__})") from None
    try:
        metrics.check_predictions(table, str(path))
    except ValueError as exc:
        raise DataError(str(exc)) from None
    return table


def write_label_maps(path: str | Path, *, specimens: Sequence[int], frame_indices: Sequence[int],
                     labels: np.ndarray) -> None:
    """Predicted label maps as an .npz (deflated, fixed member times: byte-stable)."""
    arrays = {"specimen": np.asarray(specimens, dtype=np.int64),
              "frame": np.asarray(frame_indices, dtype=np.int64),
              "labels": np.asarray(labels, dtype=np.uint8)}

    def writer(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name, array in arrays.items():
                buffer = _io.BytesIO()
                np.lib.format.write_array(buffer, array, allow_pickle=False)
                info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, buffer.getvalue())

    write_with(path, writer)


def read_label_maps(path: str | Path) -> dict[str, np.ndarray]:
    """{'specimen', 'frame', 'labels'} from `write_label_maps`; DataError if missing or
    malformed."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such label-map file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in ("specimen", "frame", "labels")}
    except (KeyError, ValueError, OSError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a label-map archive with specimen, frame and labels "
                        f"({type(exc).__name__})") from None
    return arrays


def write_fold_metrics(path: str | Path, result: Mapping[str, Any]) -> None:
    write_json(path, metrics.rounded(dict(result)))


def read_fold_metrics(path: str | Path, *, loss: str, fold: int) -> dict[str, Any]:
    """A fold metrics JSON as `write_fold_metrics` wrote it; DataError saying how to make it if
    not."""
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        document = None
    if not isinstance(document, dict):
        raise DataError(f"{path}: missing or not a fold metrics JSON; run "
                        f"`dvc repro evaluate@{loss}-{fold}`")
    return document
