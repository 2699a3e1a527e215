"""The heatmap codec's decoding helpers: what the decoded landmarks are, the peak refinements,
the template rule's NCC, the learned presence logit and the paper's discrete visibility.

The codec (silr.model.codec_decode, the decoding half of silr.model.codec.HeatmapCodec)
calls them, and silr.model.codec re-exports the public ones; the losses' hard visibility and
silr.inference.predictor reach the same functions, so every v_hat and every refined position
comes from one place.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from silr.core import anatomy
from silr.core.choices import PRESENCE_SOURCES

__all__ = [
    "DecodedLandmarks",
    "bones_on",
    "centroid",
    "discrete_visibility",
    "on_own_bone",
    "parabola_offset",
    "presence_logit",
    "segmentation_labels",
    "template_ncc",
]

NCC_EPS = 1e-12


class DecodedLandmarks(NamedTuple):
    """xy: (B, L, 2) float (column, row) in input pixels; present: (B, L) bool; score: (B, L),
    the score of the presence rule in force. The scores of every rule the inputs allow, NaN
    where one does not apply: threshold_score, template_ncc, presence_prob (B, L); xy_bone
    (B, L, 2): the argmax restricted to the landmark's own bone (NaN without labels or bone);
    shape_present (B, L): 1/0, the shape rule's call (silr.model.shape_prior), NaN without a
    prior."""

    xy: Tensor
    present: Tensor
    score: Tensor
    threshold_score: Tensor | None = None
    template_ncc: Tensor | None = None
    presence_prob: Tensor | None = None
    xy_bone: Tensor | None = None
    shape_present: Tensor | None = None


def segmentation_labels(segmentation: Tensor) -> Tensor:
    """(B, H, W) int64 labels: the class of highest logit or probability of (B, C, H, W) maps,
    the first class on ties. `max(dim=1).indices` is argmax(dim=1) (same indices, ties included)
    at about a sixth of its time on the CPU, where an argmax over channels was 9% of the
    robustness stage (benchmarks/results/argmax.txt)."""
    return segmentation.max(dim=1).indices


def presence_logit(heatmaps: Tensor, presence_logits: Tensor, source: str) -> Tensor:
    """The learned presence logit z (B, L), differentiable: the head's logit (`head`), or for a
    null cell of logit n appended to the softmax over every heatmap pixel (`null_cell`, as the
    kl_null term trains it) z = logsumexp(H) - n, so that sigmoid(z) = 1 - p(null)."""
    if source == "head":
        return presence_logits
    if source == "null_cell":
        return torch.logsumexp(heatmaps.flatten(2), dim=-1) - presence_logits
    raise ValueError(f"presence source must be one of {', '.join(PRESENCE_SOURCES)}, "
                     f"got {source!r}")


def discrete_visibility(decoded: DecodedLandmarks, seg_labels: Tensor,
                        landmark_bones: Sequence[int] = anatomy.LANDMARK_BONE_INDEX) -> Tensor:
    """The paper's v_hat in {0, 0.5, 1}, (B, L) float.

    0 where the landmark is predicted absent, 0.5 where it is predicted present but the
    label at its (rounded) predicted pixel is not its bone, 1 where it is.
    `seg_labels`: (B, H, W) integer labels, e.g. the argmax of the segmentation logits.
    """
    xy, present = decoded.xy, decoded.present
    if xy.ndim != 3 or xy.shape[-1] != 2 or present.shape != xy.shape[:2]:
        raise ValueError(f"discrete_visibility: expected decoded xy (B, L, 2) and present (B, L), "
                         f"got {tuple(xy.shape)} and {tuple(present.shape)}")
    if (seg_labels.ndim != 3 or seg_labels.shape[0] != xy.shape[0]
            or seg_labels.is_floating_point()):
        raise ValueError(f"discrete_visibility: expected integer seg_labels of shape "
                         f"({xy.shape[0]}, H, W), got {tuple(seg_labels.shape)} {seg_labels.dtype}")
    batch, num_landmarks = present.shape
    if len(landmark_bones) != num_landmarks:
        raise ValueError(f"discrete_visibility: expected one bone label per landmark "
                         f"({num_landmarks}), got {len(landmark_bones)}")
    inside = on_own_bone(xy, seg_labels, landmark_bones).float()
    return present.to(seg_labels.device).float() * (0.5 + 0.5 * inside)


def on_own_bone(xy: Tensor, labels: Tensor,
                landmark_bones: Sequence[int] = anatomy.LANDMARK_BONE_INDEX) -> Tensor:
    """(B, L) bool: the label at each (rounded, clamped) position of (B, L, 2) `xy` is the
    landmark's bone."""
    batch = xy.shape[0]
    height, width = labels.shape[-2:]
    bones = bones_on(labels.device, tuple(int(b) for b in landmark_bones))
    finite = torch.isfinite(xy).all(-1).to(labels.device)
    xy = torch.where(torch.isfinite(xy), xy, torch.zeros_like(xy))
    col = torch.round(xy[..., 0]).long().clamp(0, width - 1).to(labels.device)
    row = torch.round(xy[..., 1]).long().clamp(0, height - 1).to(labels.device)
    label_at = labels.reshape(batch, height * width).gather(1, row * width + col)
    return (label_at == bones[None, :]) & finite


@functools.lru_cache(maxsize=32)
def bones_on(device: torch.device, landmark_bones: tuple[int, ...]) -> Tensor:
    """The long tensor of `landmark_bones` (bone labels, or indices into a list of them) on
    `device`: the one index tensor of the codec's and the losses' bone look-ups."""
    # Cached per device: a training step on a GPU makes no host-to-device copy for it.
    return torch.tensor(landmark_bones, dtype=torch.long, device=device)


# ------------------------------------------------------------------ refinement

def centroid(masked: Tensor, row: Tensor, col: Tensor, r: int, exponentiate: bool) -> Tensor:
    """(B, L, 2) centroid (heatmap pixels) of exp(H - max) (or H) less its window minimum,
    over the (2r + 1)^2 window around the argmax."""
    batch, num_landmarks, height, width = masked.shape
    offsets = torch.arange(-r, r + 1, device=masked.device)
    rows = row[..., None] + offsets                                   # (B, L, K)
    cols = col[..., None] + offsets
    rows_valid = (rows >= 0) & (rows < height)
    cols_valid = (cols >= 0) & (cols < width)
    flat_index = (rows.clamp(0, height - 1)[..., :, None] * width
                  + cols.clamp(0, width - 1)[..., None, :])
    values = masked.reshape(batch, num_landmarks, -1).gather(-1, flat_index.flatten(-2)).view(
        batch, num_landmarks, 2 * r + 1, 2 * r + 1)
    valid = rows_valid[..., :, None] & cols_valid[..., None, :] & torch.isfinite(values)
    peak = values.amax(dim=(-2, -1), keepdim=True)
    weight = torch.exp(values - peak) if exponentiate else values
    weight = torch.where(valid, weight, torch.zeros_like(values))
    floor = torch.where(valid, weight, torch.full_like(weight, math.inf)).amin(dim=(-2, -1),
                                                                               keepdim=True)
    weight = torch.where(valid, weight - floor, torch.zeros_like(weight))
    total = weight.sum(dim=(-2, -1))
    dy = (weight.sum(-1) * offsets).sum(-1) / total.clamp_min(1e-12)
    dx = (weight.sum(-2) * offsets).sum(-1) / total.clamp_min(1e-12)
    # A flat window (all weights equal) has no peak to refine: keep the argmax.
    dx = torch.where(total > 0, dx, torch.zeros_like(dx))
    dy = torch.where(total > 0, dy, torch.zeros_like(dy))
    return torch.stack((col + dx, row + dy), dim=-1).to(torch.float32)


def parabola_offset(logits: Tensor, row: Tensor, col: Tensor) -> Tensor:
    """(B, L, 2) offsets in [-0.5, 0.5] from a 3-point parabola per axis on log sigmoid(H)."""
    batch, num_landmarks, height, width = logits.shape
    log_prob = F.logsigmoid(logits).reshape(batch, num_landmarks, height * width)

    def axis_offset(position: Tensor, extent: Tensor | int, stride: int) -> Tensor:
        # Neighbours are clamped at the border; an offset is then zeroed where a neighbour is
        # missing.
        prev_pos = (position - 1).clamp_min(0)
        next_pos = (position + 1).clamp_max(extent - 1)
        base = (row * width + col) - position * stride
        centre = log_prob.gather(-1, (base + position * stride)[..., None])[..., 0]
        before = log_prob.gather(-1, (base + prev_pos * stride)[..., None])[..., 0]
        after = log_prob.gather(-1, (base + next_pos * stride)[..., None])[..., 0]
        curvature = before - 2.0 * centre + after
        inside = ((position > 0) & (position < extent - 1) & (curvature < 0)
                  & torch.isfinite(curvature))
        offset = 0.5 * (before - after) / torch.where(inside, curvature, torch.ones_like(curvature))
        return torch.where(inside, offset.clamp(-0.5, 0.5), torch.zeros_like(offset))

    dx = axis_offset(col, width, 1)
    dy = axis_offset(row, height, width)
    return torch.stack((dx, dy), dim=-1)


def template_ncc(masked: Tensor, row: Tensor, col: Tensor, centre: Tensor, *, radius: int,
                 sigma: float, exponentiate: bool) -> Tensor:
    """(B, L) Pearson NCC of the window of half-width `radius` around pixel (row, col),
    reflect-padded, with a Gaussian of `sigma` (heatmap pixels) rendered at `centre` (B, L, 2),
    the refined position in heatmap pixels: at stride 4 the Gaussian is 0.625 heatmap px wide,
    and one centred on the window's middle pixel instead would lose up to 0.2 of NCC on a
    perfect peak half a pixel off the grid. `exponentiate`: NCC on exp(H - max H) (logit
    maps), else on H."""
    batch, num_landmarks, height, width = masked.shape
    r = radius
    values = masked
    if exponentiate:
        values = torch.exp(masked - masked.flatten(2).amax(-1)[..., None, None])
    values = torch.where(torch.isfinite(values), values, torch.zeros_like(values))
    pad = min(r, height - 1, width - 1)
    padded = F.pad(values.reshape(batch * num_landmarks, 1, height, width), (pad, pad, pad, pad),
                   mode="reflect").reshape(batch, num_landmarks, height + 2 * pad, width + 2 * pad)
    offsets = torch.arange(-r, r + 1, device=masked.device)
    rows = (row[..., None] + pad + offsets).clamp(0, height + 2 * pad - 1)
    cols = (col[..., None] + pad + offsets).clamp(0, width + 2 * pad - 1)
    index = rows[..., :, None] * (width + 2 * pad) + cols[..., None, :]
    window = padded.flatten(2).gather(-1, index.flatten(-2))  # (B, L, K*K)
    # Where the window's pixels are relative to the refined centre (the refinement stays
    # within a pixel or so of the argmax; a window cut at a clamped border keeps its offsets).
    dx = (col[..., None] + offsets).to(torch.float32) - centre[..., 0:1]  # (B, L, K)
    dy = (row[..., None] + offsets).to(torch.float32) - centre[..., 1:2]
    template = torch.exp(-(dy[..., :, None] ** 2 + dx[..., None, :] ** 2)
                         / (2 * sigma ** 2)).flatten(-2)
    template = template - template.mean(-1, keepdim=True)
    window = window - window.mean(-1, keepdim=True)
    denominator = torch.sqrt((window * window).sum(-1) * (template * template).sum(-1)) + NCC_EPS
    return (window * template).sum(-1) / denominator
