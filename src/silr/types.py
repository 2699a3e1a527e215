"""Small containers passed between the data, model, loss and evaluation code."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from torch import Tensor


class Batch(NamedTuple):
    """A batch in network-input coordinates (the 180x180 frame padded to 192x192).

    images: (B, 1, H, W) float in [0, 1]; labels: (B, H, W) int64 in 0..6;
    landmarks_xy: (B, L, 2) float (x = column, y = row) in input pixels;
    present: (B, L) bool, True where the landmark lies inside the (augmented) frame.
    """

    images: Tensor
    labels: Tensor
    landmarks_xy: Tensor
    present: Tensor


class ModelOutput(NamedTuple):
    """heatmaps: (B, L, H, W) landmark logits; segmentation: (B, C, H, W) class logits."""

    heatmaps: Tensor
    segmentation: Tensor


@dataclass(frozen=True)
class FramePredictions:
    """Predictions for N frames, in frame coordinates (NumPy, for files and metrics).

    xy (N, L, 2) decoded position; present (N, L) bool; score (N, L); visibility_hat (N, L)
    discrete v_hat in {0, 0.5, 1}; labels uint8 (N, H, W).
    """

    xy: np.ndarray
    present: np.ndarray
    score: np.ndarray
    visibility_hat: np.ndarray
    labels: np.ndarray

    @classmethod
    def concatenate(cls, parts: list[FramePredictions]) -> FramePredictions:
        return cls(**{name: np.concatenate([getattr(p, name) for p in parts])
                      for name in ("xy", "present", "score", "visibility_hat", "labels")})
