"""The one inference path: network outputs -> landmarks, presence and labels in the frame.

Every caller goes through here: validation inside `silr train`, `silr evaluate`,
`silr predict` and its ensembles. The codec (`silr.codec`) knows where the frame sits in
the padded network input, so the argmax only considers heatmap pixels that touch the
frame, its refinement is the one configured, and positions come back in frame pixels
(x = column, y = row of the 180 x 180 frame), clamped into it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from silr import frames
from silr.codec import HeatmapCodec
from silr.losses import discrete_visibility


class Decoded(NamedTuple):
    """One batch, decoded. xy_frame (B, L, 2) frame pixels; present (B, L) bool; score (B, L);
    visibility_hat (B, L) in {0, 0.5, 1}; labels (B, H_f, W_f) int64 (argmax of the segmentation)."""

    xy_frame: Tensor
    present: Tensor
    score: Tensor
    visibility_hat: Tensor
    labels: Tensor


def decode(heatmaps: Tensor, segmentation: Tensor, codec: HeatmapCodec) -> Decoded:
    """Decode (B, L, h, w) heatmaps and (B, C, H, W) segmentation logits or probabilities
    (the argmax is the same for both) of padded network inputs."""
    if segmentation.ndim != 4 or tuple(segmentation.shape[-2:]) != codec.size \
            or segmentation.shape[0] != heatmaps.shape[0]:
        raise ValueError(f"segmentation must have shape ({heatmaps.shape[0]}, C, {codec.size[0]}, {codec.size[1]}) "
                         f"for heatmaps {tuple(heatmaps.shape)}, got {tuple(segmentation.shape)}")
    with torch.no_grad():
        landmarks = codec.decode(heatmaps)
        seg_labels = segmentation.argmax(dim=1)
        visibility = discrete_visibility(landmarks, seg_labels)
        (x0, y0), (height, width) = codec.frame_origin, codec.frame
        return Decoded(xy_frame=codec.to_frame(landmarks.xy), present=landmarks.present, score=landmarks.score,
                       visibility_hat=visibility, labels=seg_labels[:, y0:y0 + height, x0:x0 + width])


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
    def of(cls, decoded: Decoded) -> "FramePredictions":
        return cls(xy=decoded.xy_frame.detach().cpu().double().numpy(),
                   present=decoded.present.detach().cpu().numpy().astype(bool),
                   score=decoded.score.detach().cpu().double().numpy(),
                   visibility_hat=decoded.visibility_hat.detach().cpu().double().numpy(),
                   labels=decoded.labels.detach().cpu().numpy().astype(np.uint8))

    @classmethod
    def concatenate(cls, parts: list["FramePredictions"]) -> "FramePredictions":
        return cls(**{name: np.concatenate([getattr(p, name) for p in parts])
                      for name in ("xy", "present", "score", "visibility_hat", "labels")})


@torch.no_grad()
def predict_frames(model: torch.nn.Module, codec: HeatmapCodec, images: np.ndarray, *,
                   device: torch.device | str = "cpu", batch_size: int = 16) -> FramePredictions:
    """Run one network on (N, H, W) line-integral frames (the codec's frame size) and decode them."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 3 or len(images) == 0:
        raise ValueError(f"images must be a non-empty (N, H, W) stack, got shape {images.shape}")
    if tuple(images.shape[1:]) != codec.frame:
        raise ValueError(f"frames must be {codec.frame[0]}x{codec.frame[1]} (the model's frame), "
                         f"got {images.shape[1]}x{images.shape[2]}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    was_training = model.training
    model.eval()
    parts = []
    for start in range(0, len(images), batch_size):
        inputs = frames.to_network_input(images[start:start + batch_size], codec.size[0]).to(device)
        output = model(inputs)
        parts.append(FramePredictions.of(decode(output.heatmaps.float(), output.segmentation.float(), codec)))
    model.train(was_training)
    return FramePredictions.concatenate(parts)
