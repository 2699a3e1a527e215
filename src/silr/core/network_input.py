"""Network-input preparation shared by training, evaluation and inference.

A line-integral frame (bone bright) is scaled to [0, 1] per frame (min-max) and padded
symmetrically with zeros to the network input size; landmark coordinates move by
`coords.pad_offset`. Padding, not resizing, keeps one input pixel = one frame pixel.
"""

from __future__ import annotations

import numpy as np
import torch

from silr.core.anatomy import NETWORK_INPUT_PX

__all__ = ["pad_amounts", "pad_labels", "scale_unit", "to_network_input"]


def scale_unit(images: np.ndarray) -> np.ndarray:
    """Per-frame min-max scaling of (N, H, W) images to [0, 1] (a constant frame -> 0)."""
    images = np.asarray(images, dtype=np.float32)
    low = images.min(axis=(-2, -1), keepdims=True)
    span = images.max(axis=(-2, -1), keepdims=True) - low
    scaled = np.where(span > 0, (images - low) / np.where(span > 0, span, 1.0), 0.0)
    return scaled.astype(np.float32)


def pad_amounts(height: int, width: int, size: int = NETWORK_INPUT_PX) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) zero padding that centres an H x W frame in size x size."""
    if height > size or width > size:
        raise ValueError(f"frame {height}x{width} is larger than the network input {size}x{size}")
    top, left = (size - height) // 2, (size - width) // 2
    return top, size - height - top, left, size - width - left


def to_network_input(images: np.ndarray, size: int = NETWORK_INPUT_PX) -> torch.Tensor:
    """(N, H, W) line-integral frames -> (N, 1, size, size) float32 tensor in [0, 1], padded."""
    scaled = scale_unit(images)
    top, bottom, left, right = pad_amounts(scaled.shape[-2], scaled.shape[-1], size)
    padded = np.pad(scaled, ((0, 0), (top, bottom), (left, right)))
    return torch.from_numpy(np.ascontiguousarray(padded)).unsqueeze(1)


def pad_labels(labels: np.ndarray, size: int = NETWORK_INPUT_PX) -> torch.Tensor:
    """(N, H, W) uint8 labels -> (N, size, size) int64, padded with background."""
    top, bottom, left, right = pad_amounts(labels.shape[-2], labels.shape[-1], size)
    padded = np.pad(np.asarray(labels), ((0, 0), (top, bottom), (left, right)))
    return torch.from_numpy(padded.astype(np.int64))
