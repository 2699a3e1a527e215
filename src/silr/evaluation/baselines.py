"""Trivial predictors that every result must beat, computed from the data alone.

- frame centre: every landmark at the centre of the frame, ((W - 1) / 2, (H - 1) / 2);
- mean shape: each landmark at its mean in-frame position over a fold's training frames
  (a landmark never in frame there falls back to the frame centre).

`silr report` scores them like a model (the same predictions table and Table-2 code);
`test_errors_px` gives the same errors from landmarks alone, without a processed file.
"""

from __future__ import annotations

import numpy as np

from silr.core import coords

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


def test_errors_px(guess_xy: np.ndarray, test_landmarks_xy: np.ndarray, width: int, height: int) -> np.ndarray:
    """Errors (px) of one guess over every in-frame landmark of (N, L, 2) test frames."""
    test_landmarks_xy = np.asarray(test_landmarks_xy, dtype=np.float64)
    inside = coords.in_frame(test_landmarks_xy, width, height)
    distances = np.linalg.norm(test_landmarks_xy - guess_xy[None], axis=-1)
    return distances[inside]
