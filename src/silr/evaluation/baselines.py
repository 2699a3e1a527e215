"""Trivial predictors that every result must beat, computed from the data alone.

- frame centre: every landmark at the centre of the frame, ((W - 1) / 2, (H - 1) / 2);
- mean shape: each landmark at its mean in-frame position over a fold's training frames
  (a landmark never in frame there falls back to the frame centre).

`silr report` scores them like a model (`baseline_predictions`: the same predictions table
and Table-2 code); `test_errors_px` gives the same errors from landmarks alone, without a
processed file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from silr.core import coords
from silr.core.types import FramePredictions
from silr.data.processed import ProcessedData
from silr.data.splits import Fold
from silr.evaluation.results import predictions_table

__all__ = ["BASELINES", "baseline_predictions", "frame_centre", "guess", "mean_shape",
           "test_errors_px", "with_seeds"]

BASELINES = ("frame_centre", "mean_shape")


def frame_centre(num_landmarks: int, width: int, height: int) -> np.ndarray:
    """(L, 2): every landmark at the frame's centre."""
    return np.tile([(width - 1) / 2.0, (height - 1) / 2.0], (num_landmarks, 1))


def mean_shape(landmarks_xy: np.ndarray, width: int, height: int) -> np.ndarray:
    """(L, 2) mean in-frame position of each landmark over (N, L, 2) frames."""
    landmarks_xy = np.asarray(landmarks_xy, dtype=np.float64)
    inside = coords.in_frame(landmarks_xy, width, height)
    counts = inside.sum(axis=0)
    sums = np.where(inside[..., None], landmarks_xy, 0.0).sum(axis=0)
    centre = frame_centre(landmarks_xy.shape[1], width, height)
    return np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], centre)


def guess(name: str, train_landmarks_xy: np.ndarray, width: int, height: int) -> np.ndarray:
    """(L, 2) guess of the named baseline from the training frames' landmarks."""
    if name == "frame_centre":
        return frame_centre(train_landmarks_xy.shape[1], width, height)
    if name == "mean_shape":
        return mean_shape(train_landmarks_xy, width, height)
    raise ValueError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}")


def test_errors_px(guess_xy: np.ndarray, test_landmarks_xy: np.ndarray, width: int,
                   height: int) -> np.ndarray:
    """Errors (px) of one guess over every in-frame landmark of (N, L, 2) test frames."""
    test_landmarks_xy = np.asarray(test_landmarks_xy, dtype=np.float64)
    inside = coords.in_frame(test_landmarks_xy, width, height)
    distances = np.linalg.norm(test_landmarks_xy - guess_xy[None], axis=-1)
    return distances[inside]


def baseline_predictions(data: ProcessedData, folds: Mapping[int, Fold],
                         fold_numbers: Sequence[int]) -> pd.DataFrame:
    """Predictions tables of the baselines for every fold: the same columns as a loss's, so
    that Table 2 and the plots score them with the same code."""
    height, width = data.frame_shape
    tables = []
    for name in BASELINES:
        for number in fold_numbers:
            fold = folds[number]
            test = sorted(fold.test)
            gt_xy = np.stack([data.specimens[s].landmarks_xy[i] for s, i in test])
            train_xy = np.stack([data.specimens[s].landmarks_xy[i] for s, i in fold.train])
            guessed = guess(name, train_xy, width, height)
            count, num_landmarks = gt_xy.shape[:2]
            predicted = FramePredictions(xy=np.broadcast_to(guessed, gt_xy.shape).copy(),
                                         present=np.ones((count, num_landmarks), bool),
                                         score=np.full((count, num_landmarks), np.nan),
                                         visibility_hat=np.full((count, num_landmarks), np.nan),
                                         labels=np.zeros((count, 0, 0), np.uint8))
            tables.append(predictions_table(loss=name, fold=number, specimens=[s for s, _ in test],
                                            frame_indices=[i for _, i in test], gt_xy=gt_xy,
                                            predicted=predicted, frame_size=(width, height)))
    return pd.concat(tables, ignore_index=True)


def with_seeds(table: pd.DataFrame, seeds: Sequence[int]) -> pd.DataFrame:
    """A baseline's predictions repeated for every training seed of the study (a baseline has no
    seed; the repetition lets it be paired with every seed of a loss)."""
    return pd.concat([table.assign(seed=int(seed)) for seed in seeds], ignore_index=True)
