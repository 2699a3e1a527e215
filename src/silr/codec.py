"""The heatmap codec: landmarks <-> heatmaps, one object used both ways.

`encode` renders training targets from landmark positions and in-frame flags; `decode`
turns heatmap logits into positions, presence and a score. Training, validation,
evaluation and inference all call these two methods, so the coordinate convention cannot
drift between them: (x, y) = (column, row) in network-input pixels, pixel centres at
integer positions (`silr.coords`).

Targets (both zero for absent landmarks):
- `peak`: a Gaussian of peak 1 centred at the sub-pixel landmark position (MSE, NCC);
- `normalized`: the same Gaussian divided by its sum over the map (KL).

Decoding follows the paper: position = argmax of sigmoid(H), present = max sigmoid(H) >=
threshold. With `refine=True` the argmax is refined to sub-pixel precision by a parabola
through log sigmoid(H) at the argmax and its two neighbours along each axis; for a
Gaussian-shaped probability map log p is exactly quadratic, so the fit is exact there.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
from torch import Tensor

from silr.errors import ConfigError


class HeatmapTargets(NamedTuple):
    """peak, normalized: (B, L, H, W) float; present: (B, L) float (1 in frame, 0 absent)."""

    peak: Tensor
    normalized: Tensor
    present: Tensor


class DecodedLandmarks(NamedTuple):
    """xy: (B, L, 2) float (column, row); present: (B, L) bool; score: (B, L) max sigmoid."""

    xy: Tensor
    present: Tensor
    score: Tensor


class HeatmapCodec:
    """Gaussian heatmap targets and argmax decoding on a fixed (H, W) map.

    Args:
        size: (H, W) of the heatmaps, i.e. of the network input.
        sigma: standard deviation of the target Gaussians, in pixels (> 0).
        presence_threshold: a landmark decodes as present when max sigmoid(H) >= this (in (0, 1)).
        refine: sub-pixel refinement of the argmax (parabola fit on log sigmoid).
    """

    def __init__(self, size: Sequence[int] = (192, 192), sigma: float = 2.5,
                 presence_threshold: float = 0.5, refine: bool = False) -> None:
        size = tuple(size)
        if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 3 for s in size):
            raise ConfigError(f"heatmap size must be (H, W) with integers >= 3, got {size!r}")
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma <= 0:
            raise ConfigError(f"heatmap.sigma must be a finite number > 0, got {sigma!r}")
        if (isinstance(presence_threshold, bool) or not isinstance(presence_threshold, (int, float))
                or not 0.0 < presence_threshold < 1.0):
            raise ConfigError(f"heatmap.presence_threshold must be in (0, 1), got {presence_threshold!r}")
        self.size: tuple[int, int] = (int(size[0]), int(size[1]))
        self.sigma = float(sigma)
        self.presence_threshold = float(presence_threshold)
        self.refine = bool(refine)

    @classmethod
    def from_params(cls, params, size: Sequence[int] = (192, 192)) -> "HeatmapCodec":
        """The codec of a `silr.params.HeatmapParams` section on maps of `size` (H, W)."""
        return cls(size=size, sigma=params.sigma, presence_threshold=params.presence_threshold,
                   refine=params.refine)

    def config(self) -> dict:
        """Plain values that rebuild this codec (for model cards and logs)."""
        return {"size": list(self.size), "sigma": self.sigma,
                "presence_threshold": self.presence_threshold, "refine": self.refine}

    def __repr__(self) -> str:
        return (f"HeatmapCodec(size={self.size}, sigma={self.sigma}, "
                f"presence_threshold={self.presence_threshold}, refine={self.refine})")

    # ------------------------------------------------------------------ encode

    def encode(self, landmarks_xy: Tensor, present: Tensor) -> HeatmapTargets:
        """Render the targets of (B, L, 2) positions (column, row) and (B, L) in-frame flags.

        Rendered on the device of `landmarks_xy`, in float32. The Gaussian is separable,
        so each map is the outer product of a row profile and a column profile.
        """
        if landmarks_xy.ndim != 3 or landmarks_xy.shape[-1] != 2:
            raise ValueError(f"landmarks_xy must have shape (B, L, 2), got {tuple(landmarks_xy.shape)}")
        if present.shape != landmarks_xy.shape[:2]:
            raise ValueError(f"present must have shape {tuple(landmarks_xy.shape[:2])} (B, L) to match "
                             f"landmarks_xy, got {tuple(present.shape)}")
        height, width = self.size
        device = landmarks_xy.device
        present_f = present.to(device=device, dtype=torch.float32)
        # Absent landmarks may carry NaN or far-away coordinates; park them at 0 so no NaN leaks.
        xy = torch.where(present_f[..., None] > 0, landmarks_xy.to(torch.float32),
                         torch.zeros((), device=device))
        cols = torch.arange(width, device=device, dtype=torch.float32)
        rows = torch.arange(height, device=device, dtype=torch.float32)
        inv_two_var = 1.0 / (2.0 * self.sigma ** 2)
        col_profile = torch.exp(-(cols - xy[..., 0:1]) ** 2 * inv_two_var)  # (B, L, W)
        row_profile = torch.exp(-(rows - xy[..., 1:2]) ** 2 * inv_two_var)  # (B, L, H)
        peak = row_profile[..., :, None] * col_profile[..., None, :] * present_f[..., None, None]
        # Sum of a separable map = product of the profile sums; the clamp only matters for a
        # present landmark so far outside the map that its Gaussian underflows to zero.
        total = (row_profile.sum(-1) * col_profile.sum(-1)).clamp_min(torch.finfo(torch.float32).tiny)
        normalized = peak / total[..., None, None]
        return HeatmapTargets(peak=peak, normalized=normalized, present=present_f)

    # ------------------------------------------------------------------ decode

    def decode(self, logits: Tensor) -> DecodedLandmarks:
        """Positions, presence and score of (B, L, H, W) heatmap logits (no gradient)."""
        if logits.ndim != 4:
            raise ValueError(f"heatmap logits must have shape (B, L, H, W), got {tuple(logits.shape)}")
        with torch.no_grad():
            logits = logits.detach().float()
            batch, num_landmarks, height, width = logits.shape
            flat = logits.reshape(batch, num_landmarks, height * width)
            # sigmoid is monotone: the argmax of the logits is the argmax of sigmoid(H).
            max_logit, index = flat.max(dim=-1)
            score = torch.sigmoid(max_logit)
            row = torch.div(index, width, rounding_mode="floor")
            col = index - row * width
            xy = torch.stack((col, row), dim=-1).to(torch.float32)
            if self.refine:
                xy = xy + self._subpixel_offset(logits, row, col)
            return DecodedLandmarks(xy=xy, present=score >= self.presence_threshold, score=score)

    @staticmethod
    def _subpixel_offset(logits: Tensor, row: Tensor, col: Tensor) -> Tensor:
        """(B, L, 2) offsets in [-0.5, 0.5] from a 3-point parabola per axis on log sigmoid(H)."""
        batch, num_landmarks, height, width = logits.shape
        log_prob = torch.nn.functional.logsigmoid(logits).reshape(batch, num_landmarks, height * width)

        def axis_offset(position: Tensor, extent: Tensor | int, stride: int) -> Tensor:
            # Neighbours are clamped at the border; an offset is then zeroed where a neighbour is missing.
            prev_pos = (position - 1).clamp_min(0)
            next_pos = (position + 1).clamp_max(extent - 1)
            base = (row * width + col) - position * stride
            centre = log_prob.gather(-1, (base + position * stride)[..., None])[..., 0]
            before = log_prob.gather(-1, (base + prev_pos * stride)[..., None])[..., 0]
            after = log_prob.gather(-1, (base + next_pos * stride)[..., None])[..., 0]
            curvature = before - 2.0 * centre + after
            inside = (position > 0) & (position < extent - 1) & (curvature < 0)
            offset = 0.5 * (before - after) / torch.where(inside, curvature, torch.ones_like(curvature))
            return torch.where(inside, offset.clamp(-0.5, 0.5), torch.zeros_like(offset))

        dx = axis_offset(col, width, 1)
        dy = axis_offset(row, height, width)
        return torch.stack((dx, dy), dim=-1)
