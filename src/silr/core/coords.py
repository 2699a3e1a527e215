"""Coordinate conventions, in one place and pinned by tests (tests/test_coords.py,
tests/test_ingest.py's marker tests).

- A landmark is (x, y) = (column, row) in pixels; pixel centres lie at integer
  positions, so pixel (c, r) covers [c - 0.5, c + 0.5] x [r - 0.5, r + 0.5].
- A landmark is in the frame when 0 <= x <= W - 1 and 0 <= y <= H - 1 (the data set's
  rule); files keep the projected position of out-of-frame landmarks.
- Full resolution -> downsampled by `factor` after cropping `crop` px per border, as the
  published DeepFluoro files were made (the authors' downsampled camera): pixel i of the
  small frame is centred on cropped full-resolution pixel factor * i, so
  x_ds = (x - crop) / factor (same for y). The small frame has
  round((size - 2 crop) / factor) pixels per axis (1436 -> 180 at 8x).
- A frame stored with `rot-180-for-up` = 1 is turned after downsampling, in the small
  frame: (x, y) -> (W_ds - 1 - x, H_ds - 1 - y). `ingested_landmarks` and its inverse
  `ingested_to_fullres` combine both steps; nothing else should.
- The network sees the 180x180 frame padded symmetrically to 192x192: padded
  coordinates are frame coordinates + `pad_offset`.
"""

from __future__ import annotations

import math

import numpy as np

from silr.core.anatomy import FRAME_SIZE_PX, NETWORK_INPUT_PX

__all__ = [
    "downsampled_length", "downsampled_to_fullres", "fullres_to_downsampled", "in_frame",
    "ingested_landmarks", "ingested_to_fullres", "pad_offset", "rescale", "rotate180",
]


def downsampled_length(size: int, crop: int, factor: int) -> int:
    """Pixels per axis after cropping `crop` per border and downsampling by `factor`:
    round((size - 2 crop) / factor), halves rounded up (1436 -> 718, 359, 180, 90)."""
    return int(math.floor((size - 2 * crop) / factor + 0.5))


def fullres_to_downsampled(xy: np.ndarray, crop: int, factor: int) -> np.ndarray:
    """Map (..., 2) full-resolution (x, y) into the cropped, downsampled (not turned) frame."""
    return (np.asarray(xy, dtype=np.float64) - crop) / factor


def downsampled_to_fullres(xy: np.ndarray, crop: int, factor: int) -> np.ndarray:
    """Inverse of `fullres_to_downsampled`."""
    return np.asarray(xy, dtype=np.float64) * factor + crop


def rotate180(xy: np.ndarray, width: int, height: int) -> np.ndarray:
    """(x, y) -> (W - 1 - x, H - 1 - y): the landmark under a 180-degree turn of a W x H frame."""
    xy = np.asarray(xy, dtype=np.float64)
    return np.stack([width - 1 - xy[..., 0], height - 1 - xy[..., 1]], axis=-1)


def ingested_landmarks(xy: np.ndarray, *, crop: int, factor: int, turned: bool,
                       fullres_size: tuple[int, int]) -> np.ndarray:
    """(..., 2) landmarks of a stored full-resolution frame of size (W, H) -> the ingested
    frame: mapped through the downsampled camera, then turned in the small frame."""
    small = fullres_to_downsampled(xy, crop, factor)
    if turned:
        width, height = (downsampled_length(n, crop, factor) for n in fullres_size)
        small = rotate180(small, width, height)
    return small


def ingested_to_fullres(xy: np.ndarray, *, crop: int, factor: int, turned: bool,
                        fullres_size: tuple[int, int]) -> np.ndarray:
    """Inverse of `ingested_landmarks`: ingested-frame (x, y) -> the stored full-resolution
    frame."""
    xy = np.asarray(xy, dtype=np.float64)
    if turned:
        width, height = (downsampled_length(n, crop, factor) for n in fullres_size)
        xy = rotate180(xy, width, height)
    return downsampled_to_fullres(xy, crop, factor)


def in_frame(xy: np.ndarray, width: int, height: int) -> np.ndarray:
    """Boolean (...,) mask: landmark inside [0, W-1] x [0, H-1] (and finite)."""
    xy = np.asarray(xy, dtype=np.float64)
    x, y = xy[..., 0], xy[..., 1]
    return (np.isfinite(x) & np.isfinite(y) & (x >= 0) & (x <= width - 1) & (y >= 0)
            & (y <= height - 1))


def pad_offset(frame_px: int = FRAME_SIZE_PX, padded_px: int = NETWORK_INPUT_PX) -> int:
    """Offset added to frame coordinates when a frame is padded to the network input."""
    if padded_px < frame_px:
        raise ValueError(f"padded size {padded_px} is smaller than the frame {frame_px}")
    return (padded_px - frame_px) // 2


def rescale(xy: np.ndarray, from_size: tuple[int, int], to_size: tuple[int, int]) -> np.ndarray:
    """Map (x, y) between two samplings of the same field of view (sizes as (W, H)),
    keeping pixel-centre conventions: x' = (x + 0.5) * W' / W - 0.5."""
    xy = np.asarray(xy, dtype=np.float64)
    sx = to_size[0] / from_size[0]
    sy = to_size[1] / from_size[1]
    return np.stack([(xy[..., 0] + 0.5) * sx - 0.5, (xy[..., 1] + 0.5) * sy - 0.5], axis=-1)
