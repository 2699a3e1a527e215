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
  projection like the training frames at all?), present when score >= 0.5.

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

import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from silr.core import anatomy
from silr.core.errors import ConfigError

REFINE_MODES = ("none", "parabola", "centroid")
HEATMAP_KINDS = ("logit", "value", "shape")
PRESENCE_RULES = ("threshold", "template", "learned")
PRESENCE_SOURCES = ("head", "null_cell")
# The data set authors' template rule at 8x: a 25 x 25 px window, NCC >= 0.9 (est_lands_csv.py, rule_3).
TEMPLATE_WINDOW_PX = 25.0
TEMPLATE_NCC = 0.9
LEARNED_THRESHOLD = 0.5
NCC_EPS = 1e-12
STRIDES = (1, 2, 4)
CENTROID_SIGMAS = 3.0   # half-width of the centroid window, in target sigmas


class HeatmapTargets(NamedTuple):
    """peak, normalized: (B, L, h, w) float on the heatmap grid; present: (B, L) float (1 in frame, 0 absent)."""

    peak: Tensor
    normalized: Tensor
    present: Tensor


class DecodedLandmarks(NamedTuple):
    """xy: (B, L, 2) float (column, row) in input pixels; present: (B, L) bool; score: (B, L),
    the score of the presence rule in force. The scores of every rule the inputs allow, NaN
    where one does not apply: threshold_score, template_ncc, presence_prob (B, L); xy_bone
    (B, L, 2): the argmax restricted to the landmark's own bone (NaN without labels or bone)."""

    xy: Tensor
    present: Tensor
    score: Tensor
    threshold_score: Tensor | None = None
    template_ncc: Tensor | None = None
    presence_prob: Tensor | None = None
    xy_bone: Tensor | None = None


def presence_logit(heatmaps: Tensor, presence_logits: Tensor, source: str) -> Tensor:
    """The learned presence logit z (B, L), differentiable: the head's logit (`head`), or for a
    null cell of logit n appended to the softmax over every heatmap pixel (`null_cell`, as the
    kl_null term trains it) z = logsumexp(H) - n, so that sigmoid(z) = 1 - p(null)."""
    if source == "head":
        return presence_logits
    if source == "null_cell":
        return torch.logsumexp(heatmaps.flatten(2), dim=-1) - presence_logits
    raise ValueError(f"presence source must be one of {', '.join(PRESENCE_SOURCES)}, got {source!r}")


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
    if seg_labels.ndim != 3 or seg_labels.shape[0] != xy.shape[0] or seg_labels.is_floating_point():
        raise ValueError(f"discrete_visibility: expected integer seg_labels of shape ({xy.shape[0]}, H, W), "
                         f"got {tuple(seg_labels.shape)} {seg_labels.dtype}")
    batch, num_landmarks = present.shape
    if len(landmark_bones) != num_landmarks:
        raise ValueError(f"discrete_visibility: expected one bone label per landmark ({num_landmarks}), "
                         f"got {len(landmark_bones)}")
    inside = on_own_bone(xy, seg_labels, landmark_bones).float()
    return present.to(seg_labels.device).float() * (0.5 + 0.5 * inside)


def on_own_bone(xy: Tensor, labels: Tensor, landmark_bones: Sequence[int] = anatomy.LANDMARK_BONE_INDEX) -> Tensor:
    """(B, L) bool: the label at each (rounded, clamped) position of (B, L, 2) `xy` is the landmark's bone."""
    batch = xy.shape[0]
    height, width = labels.shape[-2:]
    bones = _bones_on(labels.device, tuple(int(b) for b in landmark_bones))
    finite = torch.isfinite(xy).all(-1).to(labels.device)
    xy = torch.where(torch.isfinite(xy), xy, torch.zeros_like(xy))
    col = torch.round(xy[..., 0]).long().clamp(0, width - 1).to(labels.device)
    row = torch.round(xy[..., 1]).long().clamp(0, height - 1).to(labels.device)
    label_at = labels.reshape(batch, height * width).gather(1, row * width + col)
    return (label_at == bones[None, :]) & finite


@functools.lru_cache(maxsize=16)
def _bones_on(device: torch.device, landmark_bones: tuple[int, ...]) -> Tensor:
    # Cached per device: a training step on a GPU makes no host-to-device copy for it.
    return torch.tensor(landmark_bones, dtype=torch.long, device=device)


def _refine_mode(refine) -> str:
    # Model cards written before the modes existed hold a bool: True meant the parabola.
    if isinstance(refine, bool):
        return "parabola" if refine else "none"
    if refine not in REFINE_MODES:
        raise ConfigError(f"heatmap.refine must be one of {', '.join(REFINE_MODES)}, got {refine!r}")
    return refine


class HeatmapCodec:
    """Gaussian heatmap targets, frame-aware argmax decoding and the presence rules.

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
        landmark_bones: label value of each landmark's bone (silr.core.anatomy), for the bone rules.
    """

    def __init__(self, size: Sequence[int] = (192, 192), sigma: float = 2.5, presence_threshold: float = 0.5,
                 refine: str | bool = "none", stride: int = 1, frame: Sequence[int] | None = None,
                 kind: str = "logit", presence: str = "threshold", presence_source: str | None = None,
                 calibration: Sequence[float] = (1.0, 0.0), template_ncc: float = TEMPLATE_NCC,
                 template_window: float = TEMPLATE_WINDOW_PX, segmentation_trained: bool = True,
                 landmark_bones: Sequence[int] = anatomy.LANDMARK_BONE_INDEX) -> None:
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
        if presence not in PRESENCE_RULES:
            raise ConfigError(f"heatmap.presence must be one of {', '.join(PRESENCE_RULES)}, got {presence!r}")
        if presence_source is not None and presence_source not in PRESENCE_SOURCES:
            raise ConfigError(f"presence source must be one of {', '.join(PRESENCE_SOURCES)} or none, "
                              f"got {presence_source!r}")
        if presence == "learned" and presence_source is None:
            raise ConfigError("heatmap.presence: learned needs a network whose loss trains a presence output "
                              "(a presence_bce or kl_null term); use template or threshold")
        calibration = tuple(float(c) for c in calibration)
        if len(calibration) != 2 or not all(math.isfinite(c) for c in calibration) or calibration[0] <= 0:
            raise ConfigError(f"presence calibration must be (a > 0, b), finite, got {calibration!r}")
        if not (isinstance(template_ncc, (int, float)) and -1.0 < template_ncc < 1.0):
            raise ConfigError(f"heatmap.template_ncc must be in (-1, 1), got {template_ncc!r}")
        if not (isinstance(template_window, (int, float)) and math.isfinite(template_window)
                and template_window >= 3):
            raise ConfigError(f"heatmap.template_window must be a number of pixels >= 3, got {template_window!r}")
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
        # Where the frame sits in the input (the padding of silr.core.frames.pad_amounts).
        self.frame_origin = ((self.size[1] - frame[1]) // 2, (self.size[0] - frame[0]) // 2)  # (x0, y0)

    @property
    def template_radius(self) -> int:
        """Half-width in heatmap pixels of the template window (window / stride, rounded to an odd size)."""
        return max(1, int(math.floor((self.template_window / self.stride - 1.0) / 2.0 + 0.5)))

    @property
    def heatmap_size(self) -> tuple[int, int]:
        return self.size[0] // self.stride, self.size[1] // self.stride

    def config(self) -> dict:
        """Plain values that rebuild this codec (for model cards and logs)."""
        return {"size": list(self.size), "sigma": self.sigma, "presence_threshold": self.presence_threshold,
                "refine": self.refine, "stride": self.stride, "frame": list(self.frame), "kind": self.kind,
                "presence": self.presence, "presence_source": self.presence_source,
                "calibration": list(self.calibration), "template_ncc": self.template_ncc,
                "template_window": self.template_window, "segmentation_trained": self.segmentation_trained}

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

    def presence_probability(self, heatmaps: Tensor, presence_logits: Tensor | None,
                             frame_logits: Tensor | None = None) -> Tensor | None:
        """The calibrated learned presence sigmoid(a z + b) (B, L) of one network's output, times the
        frame gate sigmoid(g) (B,) where the network has a trained one; None when the network has no
        trained presence output (`presence_source` None)."""
        if self.presence_source is None:
            return None
        if presence_logits is None:
            raise ValueError(f"the codec expects presence logits (source {self.presence_source}) but the "
                             f"network gave none")
        if presence_logits.shape != heatmaps.shape[:2]:
            raise ValueError(f"presence logits must have shape {tuple(heatmaps.shape[:2])} (B, L), "
                             f"got {tuple(presence_logits.shape)}")
        with torch.no_grad():
            z = presence_logit(heatmaps.detach().float(), presence_logits.detach().float(), self.presence_source)
            a, b = self.calibration
            probability = torch.sigmoid(a * z + b)
            if frame_logits is not None:
                probability = probability * torch.sigmoid(frame_logits.detach().float())[:, None]
            return probability

    def threshold_score(self, heatmaps: Tensor) -> Tensor:
        """The paper's presence score (B, L): max sigmoid(H) over the frame (max H for `value` maps)."""
        with torch.no_grad():
            peak = self._masked(heatmaps.detach().float()).flatten(2).amax(-1)
            return peak if self.kind == "value" else torch.sigmoid(peak)

    def decode(self, logits: Tensor, *, labels: Tensor | None = None, presence_prob: Tensor | None = None,
               threshold_score: Tensor | None = None) -> DecodedLandmarks:
        """Positions (input pixels, inside the frame), presence and scores of (B, L, h, w) heatmaps.

        labels: (B, H, W) predicted labels on the input grid (the template rule and xy_bone);
        presence_prob: (B, L) calibrated learned presence (`presence_probability`, or an
        ensemble's mean); threshold_score: (B, L) to use instead of the maps' own (an ensemble's
        mean of its models' scores, whose levels the averaged maps no longer carry).
        """
        expected = self.heatmap_size
        if logits.ndim != 4 or tuple(logits.shape[-2:]) != expected:
            raise ValueError(f"heatmap logits must have shape (B, L, {expected[0]}, {expected[1]}), "
                             f"got {tuple(logits.shape)}")
        if labels is not None and (labels.ndim != 3 or labels.shape[0] != logits.shape[0]
                                   or tuple(labels.shape[-2:]) != self.size):
            raise ValueError(f"labels must have shape ({logits.shape[0]}, {self.size[0]}, {self.size[1]}), "
                             f"got {tuple(labels.shape)}")
        with torch.no_grad():
            logits = logits.detach().float()
            masked = self._masked(logits)
            max_logit, xy, row, col = self._locate(masked)
            nan = torch.full_like(max_logit, math.nan)
            if threshold_score is None:
                threshold_score = max_logit if self.kind == "value" else torch.sigmoid(max_logit)
            threshold_score = threshold_score.to(max_logit)
            bone_cells = self.bone_cells(labels) if labels is not None else None
            xy_bone = torch.full_like(xy, math.nan)
            has_bone = torch.zeros_like(max_logit, dtype=torch.bool)
            if bone_cells is not None:
                has_bone = bone_cells.flatten(2).any(-1)
                bone_max, bone_xy, bone_row, bone_col = self._locate(masked.masked_fill(~bone_cells, -math.inf))
                xy_bone = torch.where(has_bone[..., None], bone_xy, xy_bone)
            template_ncc = nan
            use_bone = bone_cells is not None and self.segmentation_trained
            if labels is not None or not self.segmentation_trained:
                at_row, at_col, at_xy = row, col, xy
                if use_bone:
                    at_row, at_col = torch.where(has_bone, bone_row, row), torch.where(has_bone, bone_col, col)
                    at_xy = torch.where(has_bone[..., None], bone_xy, xy)
                template_ncc = self._template_ncc(masked, at_row, at_col, self.to_heatmap(at_xy))
                if use_bone:
                    template_ncc = torch.where(has_bone, template_ncc, torch.full_like(template_ncc, -1.0))
            if presence_prob is None:
                presence_prob = nan
            presence_prob = presence_prob.to(max_logit)

            if self.presence == "threshold":
                score = threshold_score
                present = score >= self.presence_threshold
                if self.kind == "shape":
                    present = torch.ones_like(present)
            elif self.presence == "template":
                if labels is None and self.segmentation_trained:
                    raise ValueError("the template presence rule needs the predicted labels")
                score = template_ncc
                present = score >= self.template_ncc
            else:
                if not torch.isfinite(presence_prob).all():
                    raise ValueError("the learned presence rule needs presence probabilities")
                score = presence_prob
                present = score >= LEARNED_THRESHOLD
            return DecodedLandmarks(xy=xy, present=present, score=score, threshold_score=threshold_score,
                                    template_ncc=template_ncc, presence_prob=presence_prob, xy_bone=xy_bone)

    def bone_cells(self, labels: Tensor) -> Tensor:
        """(B, L, h, w) bool: heatmap pixels that touch the landmark's own bone in (B, H, W) labels."""
        labels = labels.to(torch.long)
        present_bones = sorted(set(self.landmark_bones))
        per_bone = torch.stack([labels == bone for bone in present_bones], dim=1).float()  # (B, K, H, W)
        if self.stride > 1:
            per_bone = F.max_pool2d(per_bone, self.stride)
        index = _bones_on(labels.device, tuple(present_bones.index(b) for b in self.landmark_bones))
        return per_bone.index_select(1, index) > 0

    # ------------------------------------------------------------------ decoding helpers

    def _masked(self, logits: Tensor) -> Tensor:
        """The maps with every heatmap pixel outside the frame at -inf."""
        rows_ok, cols_ok = self._frame_mask(logits.device)
        inside = rows_ok[:, None] & cols_ok[None, :]
        return logits.masked_fill(~inside, -math.inf)

    def _locate(self, masked: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(max value, refined xy in input pixels clamped into the frame, argmax row, col) of masked maps."""
        batch, num_landmarks, height, width = masked.shape
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
        return max_logit, torch.maximum(torch.minimum(xy, high), low), row, col

    def _template_ncc(self, masked: Tensor, row: Tensor, col: Tensor, centre: Tensor) -> Tensor:
        """(B, L) Pearson NCC of the window around pixel (row, col), reflect-padded, with the target
        Gaussian rendered at `centre` (B, L, 2), the refined position in heatmap pixels: at stride
        4 the Gaussian is 0.625 heatmap px wide, and one centred on the window's middle pixel
        instead would lose up to 0.2 of NCC on a perfect peak half a pixel off the grid."""
        batch, num_landmarks, height, width = masked.shape
        r = self.template_radius
        values = masked
        if self.kind == "logit":
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
        sigma = self.sigma / self.stride
        # Where the window's pixels are relative to the refined centre (the refinement stays
        # within a pixel or so of the argmax; a window cut at a clamped border keeps its offsets).
        dx = (col[..., None] + offsets).to(torch.float32) - centre[..., 0:1]  # (B, L, K)
        dy = (row[..., None] + offsets).to(torch.float32) - centre[..., 1:2]
        template = torch.exp(-(dy[..., :, None] ** 2 + dx[..., None, :] ** 2) / (2 * sigma ** 2)).flatten(-2)
        template = template - template.mean(-1, keepdim=True)
        window = window - window.mean(-1, keepdim=True)
        denominator = torch.sqrt((window * window).sum(-1) * (template * template).sum(-1)) + NCC_EPS
        return (window * template).sum(-1) / denominator

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
