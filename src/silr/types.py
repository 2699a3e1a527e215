"""Small containers passed between the data, model, loss and evaluation code."""

from __future__ import annotations

from typing import NamedTuple

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
