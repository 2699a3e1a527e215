"""Coordinate conventions, in one place and pinned by tests (tests/test_coords.py).

- A landmark is (x, y) = (column, row) in pixels; pixel centres lie at integer
  positions, so pixel (c, r) covers [c - 0.5, c + 0.5] x [r - 0.5, r + 0.5].
- A landmark is in the frame when 0 <= x <= W - 1 and 0 <= y <= H - 1 (the data set's
  rule); files keep the projected position of out-of-frame landmarks.
- Full resolution -> downsampled by `factor` after cropping `crop` px per border:
  x_ds = (x - crop + 0.5) / factor - 0.5 (same for y). The area mean of a factor x factor
  block puts the block's centre at exactly this position.
- Turning a W x H frame by 180 degrees maps (x, y) -> (W - 1 - x, H - 1 - y); it is
  applied in full-resolution coordinates, before the crop.
- The network sees the 180x180 frame padded symmetrically to 192x192: padded
  coordinates are frame coordinates + `pad_offset`.
"""

from __future__ import annotations

import numpy as np

from silr.anatomy import FRAME_SIZE_PX, NETWORK_INPUT_PX


def fullres_to_downsampled(xy: np.ndarray, crop: int, factor: int) -> np.ndarray:
    """Map (..., 2) full-resolution (x, y) to the cropped, downsampled frame."""
    return (np.asarray(xy, dtype=np.float64) - crop + 0.5) / factor - 0.5


def downsampled_to_fullres(xy: np.ndarray, crop: int, factor: int) -> np.ndarray:
    """Inverse of `fullres_to_downsampled`."""
    return (np.asarray(xy, dtype=np.float64) + 0.5) * factor - 0.5 + crop


def rotate180(xy: np.ndarray, width: int, height: int) -> np.ndarray:
    """(x, y) -> (W - 1 - x, H - 1 - y): the landmark under a 180-degree turn of the frame."""
    xy = np.asarray(xy, dtype=np.float64)
    return np.stack([width - 1 - xy[..., 0], height - 1 - xy[..., 1]], axis=-1)


def in_frame(xy: np.ndarray, width: int, height: int) -> np.ndarray:
    """Boolean (...,) mask: landmark inside [0, W-1] x [0, H-1] (and finite)."""
    xy = np.asarray(xy, dtype=np.float64)
    x, y = xy[..., 0], xy[..., 1]
    return np.isfinite(x) & np.isfinite(y) & (x >= 0) & (x <= width - 1) & (y >= 0) & (y <= height - 1)


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
