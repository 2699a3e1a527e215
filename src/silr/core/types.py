"""Small containers passed between the data, model, loss and evaluation code."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import NamedTuple

import numpy as np
from torch import Tensor

__all__ = ["Batch", "FramePredictions", "ModelOutput"]


class Batch(NamedTuple):
    """A batch in network-input coordinates (the 180x180 frame padded to 192x192).

    images: (B, 1, H, W) float in [0, 1]; labels: (B, H, W) int64 in 0..6;
    landmarks_xy: (B, L, 2) float (x = column, y = row) in input pixels;
    present: (B, L) bool, True where the landmark lies inside the (augmented) frame;
    bone_distance: (B, K, H, W) float or None: per bone of anatomy.LANDMARK_BONE_LABELS, the
    Euclidean distance (input pixels) of every pixel to that bone in `labels` (0 on it;
    anatomy-free frames hold BONE_DISTANCE_ABSENT), for the bone_distance term only.
    """

    images: Tensor
    labels: Tensor
    landmarks_xy: Tensor
    present: Tensor
    bone_distance: Tensor | None = None


class ModelOutput(NamedTuple):
    """heatmaps: (B, L, H, W) landmark logits; segmentation: (B, C, H, W) class logits;
    presence: (B, L) logits of the presence head, or None for a network without one
    (what they mean is the codec's `presence_source`: silr.model.codec); presence_xy: (B, L, 2) the
    head's estimate of every landmark's position, in or out of the frame (x, y in [-1, 1]
    over the input; silr.model.network.PresenceHead), or None; presence_frame: (B,) logit that the
    frame is a projection like the training frames at all (the head's frame gate, trained with
    outlier frames when the head is refitted), or None before that."""

    heatmaps: Tensor
    segmentation: Tensor
    presence: Tensor | None = None
    presence_xy: Tensor | None = None
    presence_frame: Tensor | None = None


@dataclass(frozen=True)
class FramePredictions:
    """Predictions for N frames, in frame coordinates (NumPy, for files and metrics).

    xy (N, L, 2) decoded position; present (N, L) bool; score (N, L) of the presence rule in
    force; visibility_hat (N, L) discrete v_hat in {0, 0.5, 1}; labels uint8 (N, H, W); the
    scores of every presence rule (N, L), NaN where one does not apply: threshold_score,
    template_ncc, presence_prob; xy_bone (N, L, 2) the argmax restricted to the landmark's own
    predicted bone (NaN where there is none); shape_present (N, L) 1/0, the shape rule's call
    (NaN without a shape prior).
    """

    xy: np.ndarray
    present: np.ndarray
    score: np.ndarray
    visibility_hat: np.ndarray
    labels: np.ndarray
    threshold_score: np.ndarray | None = None
    template_ncc: np.ndarray | None = None
    presence_prob: np.ndarray | None = None
    xy_bone: np.ndarray | None = None
    shape_present: np.ndarray | None = None

    def __post_init__(self) -> None:
        # Callers that know only one score (baselines, tests) leave the others out: NaN.
        for name, shape in (("threshold_score", self.score.shape),
                            ("template_ncc", self.score.shape),
                            ("presence_prob", self.score.shape), ("xy_bone", self.xy.shape),
                            ("shape_present", self.score.shape)):
            if getattr(self, name) is None:
                object.__setattr__(self, name, np.full(shape, np.nan))

    @classmethod
    def concatenate(cls, parts: list[FramePredictions]) -> FramePredictions:
        return cls(**{f.name: np.concatenate([getattr(p, f.name) for p in parts])
                      for f in fields(cls)})
