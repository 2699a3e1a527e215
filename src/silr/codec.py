"""The heatmap codec: landmarks <-> heatmaps, one object used both ways.

`encode` renders training targets from landmark positions and in-frame flags; `decode`
turns heatmap logits into positions, presence and a score. Training, validation,
evaluation and inference all reach `decode` through `silr.inference`, so the coordinate
convention cannot drift between them: (x, y) = (column, row) in network-input pixels,
pixel centres at integer positions (`silr.coords`).

Heatmaps may be coarser than the input by `stride` (1, 2 or 4): heatmap pixel j covers
input pixels [s j, s j + s - 1], so its centre is at input x = (j + 0.5) s - 0.5 (the
area convention of `coords.rescale`). Targets are rendered on the heatmap grid with the
Gaussian's sigma given in input pixels.

Targets (both zero for absent landmarks):
- `peak`: a Gaussian of peak 1 centred at the sub-pixel landmark position (MSE, NCC);
- `normalized`: the same Gaussian divided by its sum over the map (KL).

Decoding: the argmax over the heatmap pixels that touch the frame (the network input is
the frame padded by a border where no landmark can be), optionally refined to sub-pixel
precision, mapped to input pixels and clamped into the frame. Presence and score depend
on what the heatmap means (`kind`):
- `logit`: logits of a probability (KL, Dice-CE mixes): score = max sigmoid(H), present
  when score >= threshold (the paper);
- `value`: the map regresses the peak-1 Gaussian itself (MSE): score = max H, present
  when score >= threshold (half the target's peak by default);
- `shape`: only the map's shape is trained (NCC, blind to offset and scale): score =
  max sigmoid(H), and presence is not defined (every landmark decodes as present; the
  evaluation reports presence as not applicable).

Refinement (`refine`):
- `none`: the argmax pixel (the paper);
- `parabola`: a 3-point parabola per axis through log sigmoid(H) (exact for a Gaussian
  probability map at stride 1);
- `centroid`: the centroid of the map turned back into the Gaussian it was trained to
  be (exp(H - max H) for `logit` maps, H itself for `value` and `shape` maps), less its
  minimum, over the window of half-width ceil(3 sigma) heatmap pixels around the argmax:
  accurate at stride 4, where a target Gaussian spans few heatmap pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from silr.errors import ConfigError

REFINE_MODES = ("none", "parabola", "centroid")
HEATMAP_KINDS = ("logit", "value", "shape")
STRIDES = (1, 2, 4)
CENTROID_SIGMAS = 3.0   # half-width of the centroid window, in target sigmas


class HeatmapTargets(NamedTuple):
    """peak, normalized: (B, L, h, w) float on the heatmap grid; present: (B, L) float (1 in frame, 0 absent)."""

    peak: Tensor
    normalized: Tensor
    present: Tensor


class DecodedLandmarks(NamedTuple):
    """xy: (B, L, 2) float (column, row) in input pixels; present: (B, L) bool; score: (B, L)."""

    xy: Tensor
    present: Tensor
    score: Tensor


def _refine_mode(refine) -> str:
    # Model cards written before the modes existed hold a bool: True meant the parabola.
    if isinstance(refine, bool):
        return "parabola" if refine else "none"
    if refine not in REFINE_MODES:
        raise ConfigError(f"heatmap.refine must be one of {', '.join(REFINE_MODES)}, got {refine!r}")
    return refine


class HeatmapCodec:
    """Gaussian heatmap targets and frame-aware argmax decoding.

    Args:
        size: (H, W) of the network input.
        sigma: standard deviation of the target Gaussians, in input pixels (> 0).
        presence_threshold: see the module docstring; in (0, 1) for `logit` maps.
        refine: `none`, `parabola` or `centroid` (booleans from old cards: True = parabola).
        stride: input pixels per heatmap pixel (1, 2 or 4; must divide H and W).
        frame: (H_f, W_f) of the frame centred in the input (zero padding around it);
            default: the whole input.
        kind: what the heatmap values mean: `logit`, `value` or `shape`.
    """

    def __init__(self, size: Sequence[int] = (192, 192), sigma: float = 2.5, presence_threshold: float = 0.5,
                 refine: str | bool = "none", stride: int = 1, frame: Sequence[int] | None = None,
                 kind: str = "logit") -> None:
        size = tuple(size)
        if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 3 for s in size):
            raise ConfigError(f"heatmap size must be (H, W) with integers >= 3, got {size!r}")
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma <= 0:
            raise ConfigError(f"heatmap.sigma must be a finite number > 0, got {sigma!r}")
        if kind not in HEATMAP_KINDS:
            raise ConfigError(f"heatmap kind must be one of {', '.join(HEATMAP_KINDS)}, got {kind!r}")
        upper = math.inf if kind == "value" else 1.0
        if (isinstance(presence_threshold, bool) or not isinstance(presence_threshold, (int, float))
                or not 0.0 < presence_threshold < upper):
            raise ConfigError(f"heatmap.presence_threshold must be in (0, {upper:g}), got {presence_threshold!r}")
        if stride not in STRIDES or size[0] % stride or size[1] % stride:
            raise ConfigError(f"heatmap stride must be one of {STRIDES} and divide the input {size}, got {stride!r}")
        frame = size if frame is None else tuple(int(n) for n in frame)
        if len(frame) != 2 or frame[0] > size[0] or frame[1] > size[1] or min(frame) < 1:
            raise ConfigError(f"frame must be (H, W) within the input {size}, got {frame!r}")
        self.size: tuple[int, int] = (int(size[0]), int(size[1]))
        self.sigma = float(sigma)
        self.presence_threshold = float(presence_threshold)
        self.refine = _refine_mode(refine)
        self.stride = int(stride)
        self.frame: tuple[int, int] = (frame[0], frame[1])
        self.kind = kind
        # Where the frame sits in the input (the padding of silr.frames.pad_amounts).
        self.frame_origin = ((self.size[1] - frame[1]) // 2, (self.size[0] - frame[0]) // 2)  # (x0, y0)

    @property
    def heatmap_size(self) -> tuple[int, int]:
        return self.size[0] // self.stride, self.size[1] // self.stride

    @classmethod
    def from_params(cls, params, size: Sequence[int] = (192, 192), *, stride: int = 1,
                    frame: Sequence[int] | None = None, kind: str = "logit") -> HeatmapCodec:
        """The codec of a `silr.params.HeatmapParams` section on inputs of `size` (H, W)."""
        return cls(size=size, sigma=params.sigma, presence_threshold=params.presence_threshold,
                   refine=params.refine, stride=stride, frame=frame, kind=kind)

    def config(self) -> dict:
        """Plain values that rebuild this codec (for model cards and logs)."""
        return {"size": list(self.size), "sigma": self.sigma, "presence_threshold": self.presence_threshold,
                "refine": self.refine, "stride": self.stride, "frame": list(self.frame), "kind": self.kind}

    def __repr__(self) -> str:
        return "HeatmapCodec(" + ", ".join(f"{k}={v!r}" for k, v in self.config().items()) + ")"

    # ------------------------------------------------------------------ coordinates

    def to_heatmap(self, xy: Tensor) -> Tensor:
        """Input pixels -> heatmap pixels: (x + 0.5) / s - 0.5."""
        return (xy + 0.5) / self.stride - 0.5

    def from_heatmap(self, xy: Tensor) -> Tensor:
        """Heatmap pixels -> input pixels: (x + 0.5) s - 0.5."""
        return (xy + 0.5) * self.stride - 0.5

    def to_frame(self, xy: Tensor) -> Tensor:
        """Input pixels -> frame pixels (the padding offset removed)."""
        return xy - xy.new_tensor(self.frame_origin)

    def _frame_mask(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """(h,) and (w,) bool: heatmap rows / columns whose input pixels touch the frame."""
        (height, width), s = self.heatmap_size, self.stride
        masks = []
        for count, origin, extent in ((height, self.frame_origin[1], self.frame[0]),
                                      (width, self.frame_origin[0], self.frame[1])):
            first = torch.arange(count, device=device) * s          # first input pixel of each heatmap pixel
            masks.append((first + s - 1 >= origin) & (first <= origin + extent - 1))
        return masks[0], masks[1]

    # ------------------------------------------------------------------ encode

    def encode(self, landmarks_xy: Tensor, present: Tensor) -> HeatmapTargets:
        """Render the targets of (B, L, 2) input-pixel positions (column, row) and (B, L) in-frame flags.

        Rendered on the heatmap grid, on the device of `landmarks_xy`, in float32. The
        Gaussian is separable, so each map is the outer product of a row and a column profile.
        """
        if landmarks_xy.ndim != 3 or landmarks_xy.shape[-1] != 2:
            raise ValueError(f"landmarks_xy must have shape (B, L, 2), got {tuple(landmarks_xy.shape)}")
        if present.shape != landmarks_xy.shape[:2]:
            raise ValueError(f"present must have shape {tuple(landmarks_xy.shape[:2])} (B, L) to match "
                             f"landmarks_xy, got {tuple(present.shape)}")
        height, width = self.heatmap_size
        device = landmarks_xy.device
        present_f = present.to(device=device, dtype=torch.float32)
        # Absent landmarks may carry NaN or far-away coordinates; park them at 0 so no NaN leaks.
        xy = torch.where(present_f[..., None] > 0, self.to_heatmap(landmarks_xy.to(torch.float32)),
                         torch.zeros((), device=device))
        cols = torch.arange(width, device=device, dtype=torch.float32)
        rows = torch.arange(height, device=device, dtype=torch.float32)
        sigma = self.sigma / self.stride
        inv_two_var = 1.0 / (2.0 * sigma ** 2)
        col_profile = torch.exp(-(cols - xy[..., 0:1]) ** 2 * inv_two_var)  # (B, L, w)
        row_profile = torch.exp(-(rows - xy[..., 1:2]) ** 2 * inv_two_var)  # (B, L, h)
        peak = row_profile[..., :, None] * col_profile[..., None, :] * present_f[..., None, None]
        # Sum of a separable map = product of the profile sums; the clamp only matters for a
        # present landmark so far outside the map that its Gaussian underflows to zero.
        total = (row_profile.sum(-1) * col_profile.sum(-1)).clamp_min(torch.finfo(torch.float32).tiny)
        normalized = peak / total[..., None, None]
        return HeatmapTargets(peak=peak, normalized=normalized, present=present_f)

    # ------------------------------------------------------------------ decode

    def decode(self, logits: Tensor) -> DecodedLandmarks:
        """Positions (input pixels, inside the frame), presence and score of (B, L, h, w) heatmaps."""
        expected = self.heatmap_size
        if logits.ndim != 4 or tuple(logits.shape[-2:]) != expected:
            raise ValueError(f"heatmap logits must have shape (B, L, {expected[0]}, {expected[1]}), "
                             f"got {tuple(logits.shape)}")
        with torch.no_grad():
            logits = logits.detach().float()
            batch, num_landmarks, height, width = logits.shape
            rows_ok, cols_ok = self._frame_mask(logits.device)
            inside = rows_ok[:, None] & cols_ok[None, :]
            masked = logits.masked_fill(~inside, -math.inf)
            flat = masked.reshape(batch, num_landmarks, height * width)
            # sigmoid is monotone: the argmax of the logits is the argmax of sigmoid(H).
            max_logit, index = flat.max(dim=-1)
            row = torch.div(index, width, rounding_mode="floor")
            col = index - row * width
            xy = torch.stack((col, row), dim=-1).to(torch.float32)
            if self.refine == "parabola":
                xy = xy + self._parabola_offset(masked, row, col)
            elif self.refine == "centroid":
                radius = max(1, math.ceil(CENTROID_SIGMAS * self.sigma / self.stride))
                xy = self._centroid(masked, row, col, radius, exponentiate=self.kind == "logit")
            xy = self.from_heatmap(xy)
            low = xy.new_tensor(self.frame_origin)
            high = low + xy.new_tensor((self.frame[1] - 1, self.frame[0] - 1))
            xy = torch.maximum(torch.minimum(xy, high), low)
            if self.kind == "value":
                score = max_logit
                present = score >= self.presence_threshold
            else:
                score = torch.sigmoid(max_logit)
                present = score >= self.presence_threshold
                if self.kind == "shape":
                    present = torch.ones_like(present)
            return DecodedLandmarks(xy=xy, present=present, score=score)

    @staticmethod
    def _centroid(masked: Tensor, row: Tensor, col: Tensor, r: int, exponentiate: bool) -> Tensor:
        """(B, L, 2) centroid (heatmap pixels) of exp(H - max) (or H) less its window minimum,
        over the (2r + 1)^2 window around the argmax."""
        batch, num_landmarks, height, width = masked.shape
        offsets = torch.arange(-r, r + 1, device=masked.device)
        rows = row[..., None] + offsets                                   # (B, L, K)
        cols = col[..., None] + offsets
        rows_valid = (rows >= 0) & (rows < height)
        cols_valid = (cols >= 0) & (cols < width)
        flat_index = rows.clamp(0, height - 1)[..., :, None] * width + cols.clamp(0, width - 1)[..., None, :]
        values = masked.reshape(batch, num_landmarks, -1).gather(-1, flat_index.flatten(-2)).view(
            batch, num_landmarks, 2 * r + 1, 2 * r + 1)
        valid = rows_valid[..., :, None] & cols_valid[..., None, :] & torch.isfinite(values)
        peak = values.amax(dim=(-2, -1), keepdim=True)
        weight = torch.exp(values - peak) if exponentiate else values
        weight = torch.where(valid, weight, torch.zeros_like(values))
        floor = torch.where(valid, weight, torch.full_like(weight, math.inf)).amin(dim=(-2, -1), keepdim=True)
        weight = torch.where(valid, weight - floor, torch.zeros_like(weight))
        total = weight.sum(dim=(-2, -1))
        dy = (weight.sum(-1) * offsets).sum(-1) / total.clamp_min(1e-12)
        dx = (weight.sum(-2) * offsets).sum(-1) / total.clamp_min(1e-12)
        # A flat window (all weights equal) has no peak to refine: keep the argmax.
        dx = torch.where(total > 0, dx, torch.zeros_like(dx))
        dy = torch.where(total > 0, dy, torch.zeros_like(dy))
        return torch.stack((col + dx, row + dy), dim=-1).to(torch.float32)

    @staticmethod
    def _parabola_offset(logits: Tensor, row: Tensor, col: Tensor) -> Tensor:
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
            inside = (position > 0) & (position < extent - 1) & (curvature < 0) & torch.isfinite(curvature)
            offset = 0.5 * (before - after) / torch.where(inside, curvature, torch.ones_like(curvature))
            return torch.where(inside, offset.clamp(-0.5, 0.5), torch.zeros_like(offset))

        dx = axis_offset(col, width, 1)
        dy = axis_offset(row, height, width)
        return torch.stack((dx, dy), dim=-1)
