"""The heatmap codec: landmarks <-> heatmaps, one object used both ways.

`encode` renders training targets from landmark positions and in-frame flags; `decode`
turns heatmap logits into positions, presence and a score. Training, validation,
evaluation and inference all reach `decode` through `silr.inference.predictor`, so the coordinate
convention cannot drift between them: (x, y) = (column, row) in network-input pixels,
pixel centres at integer positions (`silr.core.coords`).

Heatmaps may be coarser than the input by `stride` (1, 2 or 4): heatmap pixel j covers
input pixels [s j, s j + s - 1], so its centre is at input x = (j + 0.5) s - 0.5 (the
area convention of `coords.rescale`). Targets are rendered on the heatmap grid with the
Gaussian's sigma given in input pixels.

Targets (both zero for absent landmarks):
- `peak`: a Gaussian of peak 1 centred at the sub-pixel landmark position (MSE, NCC);
- `normalized`: the same Gaussian divided by its sum over the map (KL).

Decoding: the argmax over the heatmap pixels that touch the frame (the network input is
the frame padded by a border where no landmark can be), optionally refined to sub-pixel
precision, mapped to input pixels and clamped into the frame. What the heatmap values
mean is `kind`:
- `logit`: logits of a probability (KL, Dice-CE mixes); a constant added to a whole map
  changes nothing but its threshold score (softmax is shift-invariant), so an ensemble may
  hand over log mean softmax;
- `value`: the map regresses the peak-1 Gaussian itself (MSE);
- `shape`: only the map's shape is trained (NCC, blind to offset and scale).

Presence (`presence`), one of PRESENCE_RULES; every score the inputs allow is computed
and returned, the rule only says which one decides:
- `threshold` (the paper's reading): score = max sigmoid(H) (`logit`, `shape`) or max H
  (`value`), present when score >= presence_threshold; for `shape` maps every landmark
  is present (a threshold on a map of arbitrary level means nothing);
- `template` (the data set authors' `rule_3`, Grupp et al. 2020): restrict the map to the
  heatmap pixels that touch the landmark's own bone in the predicted labels (absent when
  there is none), take the argmax there, cut the window of `template_window` input pixels
  around it from the map reflect-padded at the borders, and call the landmark present when
  the window's normalised cross-correlation with a Gaussian of the target's sigma is
  >= `template_ncc` (score = that NCC). The window is the authors' 25 x 25 px at 8x
  (scaled by the caller for other factors), divided by the stride, rounded to an odd
  size. Without a trained segmentation (`segmentation_trained=False`: MSE or NCC alone)
  the bone part is skipped and the window sits at the frame argmax. NCC is the plain
  Pearson form (maximum 1), on exp(H - max H) for `logit` maps and on H otherwise;
- `learned`: a presence output the loss trained (`presence_source`): `head` = the
  presence head's logit z, `null_cell` = z = logsumexp(H) - n, n the head's logit of the
  null cell appended to the KL softmax (presence = 1 - p(null) = sigmoid(z)); score =
  sigmoid(a z + b), (a, b) = `calibration` (Platt scaling fitted on the validation frames,
  or (1, 0)), times the network's frame gate sigmoid(g) where it has a trained one (is this a
  projection like the training frames at all?), present when score >= 0.5;
- `shape`: the base rule (`learned` where the network has a presence output, else
  `template`) picks the anchors, the landmarks it calls present; the fold's shape prior
  (`shape_prior`, silr.model.shape_prior: a point-distribution model of the training shapes)
  is fitted to their decoded positions, and a landmark is present when its fitted position
  lies in the frame (a frame with fewer than 3 anchors keeps the base decisions); score = the
  base rule's score. Presence means "inside the frame", and the pelvis is nearly rigid: where
  the visible landmarks are says whether the others are past the border.

Refinement (`refine`):
- `none`: the argmax pixel (the paper);
- `parabola`: a 3-point parabola per axis through log sigmoid(H) (exact for a Gaussian
  probability map at stride 1);
- `centroid`: the centroid of the map turned back into the Gaussian it was trained to
  be (exp(H - max H) for `logit` maps, H itself for `value` and `shape` maps), less its
  minimum, over the window of half-width ceil(3 sigma) heatmap pixels around the argmax:
  accurate at stride 4, where a target Gaussian spans few heatmap pixels.

With predicted labels, `decode` also returns `xy_bone`: the same refined argmax restricted
to the landmark's own bone (the authors' location), so evaluation can measure what the
restriction does to localisation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from silr.core import anatomy
from silr.core.choices import (
    HEATMAP_KINDS,
    PRESENCE_RULES,
    PRESENCE_SOURCES,
    REFINE_MODES,
    TEMPLATE_NCC,
    TEMPLATE_WINDOW_PX,
)
from silr.core.errors import ConfigError
from silr.model.codec_decode import HeatmapDecoder
from silr.model.decode_helpers import (
    DecodedLandmarks,
    discrete_visibility,
    on_own_bone,
    presence_logit,
)
from silr.model.shape_prior import ShapePrior

# The codec's public surface: the decoded landmarks, the discrete visibility and the presence
# logit are its decode helpers (silr.model.decode_helpers), re-exported for the codec's users;
# the choice lists are silr.core.choices'.
__all__ = [
    "DecodedLandmarks",
    "HeatmapCodec",
    "HeatmapTargets",
    "discrete_visibility",
    "on_own_bone",
    "presence_logit",
]

STRIDES = (1, 2, 4)


class HeatmapTargets(NamedTuple):
    """peak, normalized: (B, L, h, w) float on the heatmap grid; present: (B, L) float (1 in
    frame, 0 absent)."""

    peak: Tensor
    normalized: Tensor
    present: Tensor


def _refine_mode(refine: str | bool) -> str:
    # Model cards written before the modes existed hold a bool: True meant the parabola.
    if isinstance(refine, bool):
        return "parabola" if refine else "none"
    if refine not in REFINE_MODES:
        raise ConfigError(f"heatmap.refine must be one of {', '.join(REFINE_MODES)}, "
                          f"got {refine!r}")
    return refine


def _check_maps(size: Sequence[int], sigma: float, kind: str,
                presence_threshold: float) -> tuple[int, ...]:
    """The codec's input size as a tuple; ConfigError for a bad size, sigma, kind or threshold."""
    size = tuple(size)
    if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 3
                                 for s in size):
        raise ConfigError(f"heatmap size must be (H, W) with integers >= 3, got {size!r}")
    if (isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma)
            or sigma <= 0):
        raise ConfigError(f"heatmap.sigma must be a finite number > 0, got {sigma!r}")
    if kind not in HEATMAP_KINDS:
        raise ConfigError(f"heatmap kind must be one of {', '.join(HEATMAP_KINDS)}, got {kind!r}")
    upper = math.inf if kind == "value" else 1.0
    if (isinstance(presence_threshold, bool) or not isinstance(presence_threshold, (int, float))
            or not 0.0 < presence_threshold < upper):
        raise ConfigError(f"heatmap.presence_threshold must be in (0, {upper:g}), "
                          f"got {presence_threshold!r}")
    return size


def _check_grid(size: tuple[int, ...], stride: int,
                frame: Sequence[int] | None) -> tuple[int, ...]:
    """The frame (default: the whole input); ConfigError for a bad stride or frame."""
    if stride not in STRIDES or size[0] % stride or size[1] % stride:
        raise ConfigError(f"heatmap stride must be one of {STRIDES} and divide the input {size}, "
                          f"got {stride!r}")
    frame = size if frame is None else tuple(int(n) for n in frame)
    if len(frame) != 2 or frame[0] > size[0] or frame[1] > size[1] or min(frame) < 1:
        raise ConfigError(f"frame must be (H, W) within the input {size}, got {frame!r}")
    return frame


def _check_presence(presence: str, presence_source: str | None, calibration: Sequence[float],
                    template_ncc: float, template_window: float,
                    shape_prior: ShapePrior | None = None,
                    num_landmarks: int = anatomy.NUM_LANDMARKS) -> tuple[float, ...]:
    """The calibration as floats; ConfigError for a bad presence rule, source or setting."""
    if presence not in PRESENCE_RULES:
        raise ConfigError(f"heatmap.presence must be one of {', '.join(PRESENCE_RULES)}, "
                          f"got {presence!r}")
    if presence_source is not None and presence_source not in PRESENCE_SOURCES:
        raise ConfigError(f"presence source must be one of {', '.join(PRESENCE_SOURCES)} or none, "
                          f"got {presence_source!r}")
    if presence == "learned" and presence_source is None:
        raise ConfigError("heatmap.presence: learned needs a network whose loss trains a presence "
                          "output (a presence_bce or kl_null term); use template or threshold")
    if presence == "shape" and shape_prior is None:
        raise ConfigError("heatmap.presence: shape needs the fold's shape prior, which silr train "
                          "stores in the model card; use learned, template or threshold")
    if shape_prior is not None and (not isinstance(shape_prior, ShapePrior)
                                    or shape_prior.num_landmarks != num_landmarks):
        raise ConfigError(f"the shape prior must be a ShapePrior of {num_landmarks} landmarks, "
                          f"got {shape_prior!r:.80}")
    calibration = tuple(float(c) for c in calibration)
    if (len(calibration) != 2 or not all(math.isfinite(c) for c in calibration)
            or calibration[0] <= 0):
        raise ConfigError(f"presence calibration must be (a > 0, b), finite, got {calibration!r}")
    if not (isinstance(template_ncc, (int, float)) and -1.0 < template_ncc < 1.0):
        raise ConfigError(f"heatmap.template_ncc must be in (-1, 1), got {template_ncc!r}")
    if not (isinstance(template_window, (int, float)) and math.isfinite(template_window)
            and template_window >= 3):
        raise ConfigError(f"heatmap.template_window must be a number of pixels >= 3, "
                          f"got {template_window!r}")
    return calibration


class HeatmapCodec(HeatmapDecoder):
    """Gaussian heatmap targets, frame-aware argmax decoding and the presence rules (the
    decoding is its base class, silr.model.codec_decode.HeatmapDecoder).

    Args:
        size: (H, W) of the network input.
        sigma: standard deviation of the target Gaussians, in input pixels (> 0).
        presence_threshold: see the module docstring; in (0, 1) for `logit` maps.
        refine: `none`, `parabola` or `centroid` (booleans from old cards: True = parabola).
        stride: input pixels per heatmap pixel (1, 2 or 4; must divide H and W).
        frame: (H_f, W_f) of the frame centred in the input (zero padding around it);
            default: the whole input.
        kind: what the heatmap values mean: `logit`, `value` or `shape`.
        presence: the rule that decides presence (PRESENCE_RULES).
        presence_source: what the network's presence logits mean (PRESENCE_SOURCES), or None
            for a network without a trained presence output (then `learned` is refused).
        calibration: (a, b) of the learned presence score sigmoid(a z + b).
        template_ncc, template_window: the template rule's NCC bar and window (input pixels).
        segmentation_trained: whether the template rule may use the predicted labels.
        landmark_bones: label value of each landmark's bone (silr.core.anatomy), for the bone
            rules.
        shape_prior: the fold's silr.model.shape_prior.ShapePrior (the `shape` rule), or None.
    """

    def __init__(self, size: Sequence[int] = (192, 192), sigma: float = 2.5,
                 presence_threshold: float = 0.5, refine: str | bool = "none", stride: int = 1,
                 frame: Sequence[int] | None = None, kind: str = "logit",
                 presence: str = "threshold", presence_source: str | None = None,
                 calibration: Sequence[float] = (1.0, 0.0), template_ncc: float = TEMPLATE_NCC,
                 template_window: float = TEMPLATE_WINDOW_PX, segmentation_trained: bool = True,
                 landmark_bones: Sequence[int] = anatomy.LANDMARK_BONE_INDEX,
                 shape_prior: ShapePrior | None = None) -> None:
        size = _check_maps(size, sigma, kind, presence_threshold)
        frame = _check_grid(size, stride, frame)
        calibration = _check_presence(presence, presence_source, calibration, template_ncc,
                                      template_window, shape_prior, len(landmark_bones))
        self.size: tuple[int, int] = (int(size[0]), int(size[1]))
        self.sigma = float(sigma)
        self.presence_threshold = float(presence_threshold)
        self.refine = _refine_mode(refine)
        self.stride = int(stride)
        self.frame: tuple[int, int] = (frame[0], frame[1])
        self.kind = kind
        self.presence = presence
        self.presence_source = presence_source
        self.calibration: tuple[float, float] = (calibration[0], calibration[1])
        self.template_ncc = float(template_ncc)
        self.template_window = float(template_window)
        self.segmentation_trained = bool(segmentation_trained)
        self.landmark_bones: tuple[int, ...] = tuple(int(b) for b in landmark_bones)
        self.shape_prior = shape_prior
        # Where the frame sits in the input (the padding of
        # silr.core.network_input.pad_amounts): (x0, y0).
        self.frame_origin = ((self.size[1] - frame[1]) // 2, (self.size[0] - frame[0]) // 2)

    def config(self) -> dict:
        """Plain values that rebuild this codec (for model cards and logs)."""
        return {"size": list(self.size), "sigma": self.sigma,
                "presence_threshold": self.presence_threshold, "refine": self.refine,
                "stride": self.stride, "frame": list(self.frame), "kind": self.kind,
                "presence": self.presence, "presence_source": self.presence_source,
                "calibration": list(self.calibration), "template_ncc": self.template_ncc,
                "template_window": self.template_window,
                "segmentation_trained": self.segmentation_trained,
                **({} if self.shape_prior is None else {"shape_prior": self.shape_prior.to_dict()})}

    def __repr__(self) -> str:
        return "HeatmapCodec(" + ", ".join(f"{k}={v!r}" for k, v in self.config().items()) + ")"

    # ------------------------------------------------------------------ encode

    def encode(self, landmarks_xy: Tensor, present: Tensor) -> HeatmapTargets:
        """Render the targets of (B, L, 2) input-pixel positions (column, row) and (B, L)
        in-frame flags.

        Rendered on the heatmap grid, on the device of `landmarks_xy`, in float32. The
        Gaussian is separable, so each map is the outer product of a row and a column profile.
        """
        if landmarks_xy.ndim != 3 or landmarks_xy.shape[-1] != 2:
            raise ValueError(f"landmarks_xy must have shape (B, L, 2), "
                             f"got {tuple(landmarks_xy.shape)}")
        if present.shape != landmarks_xy.shape[:2]:
            raise ValueError(f"present must have shape {tuple(landmarks_xy.shape[:2])} (B, L) to "
                             f"match landmarks_xy, got {tuple(present.shape)}")
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
        total = (row_profile.sum(-1) * col_profile.sum(-1)).clamp_min(
            torch.finfo(torch.float32).tiny)
        normalized = peak / total[..., None, None]
        return HeatmapTargets(peak=peak, normalized=normalized, present=present_f)
