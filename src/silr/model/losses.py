"""The loss library: every term of the paper's losses, and named mixes of them.

Terms (registry `LOSS_TERMS`, the names used in `params.yaml` `losses.NAME: {term: weight}`):

- `dice_ce`: MONAI DiceCELoss over the 7 classes (softmax, one-hot labels).
- `kl`: KL(target || q) with the target the sum-1 Gaussian and q the softmax of the heatmap
  logits over all pixels (via log-softmax); in-frame landmarks only. How the per-pixel
  terms are reduced is `losses.kl_reduction` (KL_REDUCTIONS): `landmark` (the default:
  summed over pixels, averaged over in-frame landmarks, i.e. the mean KL per landmark),
  `batchmean` (summed over every pixel and landmark, divided by the batch size, as
  `torch.nn.functional.kl_div(reduction="batchmean")`) or `mean` (averaged over every
  element, `kl_div(reduction="mean")`, about h * w * L times smaller than `landmark`).
- `visibility`: the paper's weighted MAE between predicted and true visibility (weight 2
  where the landmark is out of frame, 1 where it is in frame), with v_hat computed as
  `losses.visibility_mode` says: `hard` (the default, the paper's literal {0, 0.5, 1};
  piecewise constant, so it is reported but gives no gradient at all) or `soft`.
- `visibility_soft`: the same MAE on a differentiable v_hat = sigmoid(max H) *
  (0.5 + 0.5 p_inside), an extension of ours (the paper's discussion asks for a
  continuous visibility), whatever `losses.visibility_mode` says.
- `kl_null`: the KL term with a null cell (an extension of ours): the softmax runs over every
  heatmap pixel and one more cell whose logit n is the presence head's output; an in-frame
  landmark's target is the sum-1 Gaussian on the pixels (0 on the null cell), an absent
  one's puts all its mass on the null cell, so absent landmarks get a training signal and
  the map's level is trained: presence = 1 - p(null). Mean over every landmark.
- `presence_bce`: binary cross-entropy between the presence head's logits and the in-frame
  flags, mean over every landmark (mmpose's `VisPredictHead` pattern), plus the smooth-L1
  error of the head's position estimate of every landmark whose position is known, absent
  ones included (silr.model.network.PresenceHead).
- `bone_distance`: the anatomical-consistency term the paper's discussion asks for, a
  penalty growing with the distance to the bone: sum over pixels x of softmax(H_i)(x) d_i(x),
  d_i the Euclidean distance (input pixels) from x to landmark i's bone in the ground-truth
  labels (computed once per frame, moved with the labels by the augmentation, averaged over
  each heatmap pixel's area); mean over in-frame landmarks whose bone is in view.
  Differentiable everywhere the softmax has mass, unlike the paper's look-up at the argmax.
- `visibility_continuous`: the paper's weighted MAE on a continuous v_hat = p_present *
  (0.5 + 0.5 p_inside), p_present the learned presence sigmoid(z) (silr.model.codec.presence_logit),
  p_inside = sum over pixels of softmax(H_i) times the predicted probability of landmark
  i's bone (detached with `losses.detach_segmentation`).
- `mse`: MSE between the raw heatmap H and the peak-1 Gaussian, mean over the pixels of the
  in-frame landmarks' maps (target weights, as mmpose's `KeypointMSELoss(use_target_weight=True)`;
  option `mse_target_weight: false` trains absent maps towards zero), optionally with the
  foreground weight 1 + w g (option `mse_foreground_weight`), as HRNet-style heatmap
  regression trains it; its target width is the named loss's `sigma` option.
- `ncc`: 1 - normalised cross-correlation between H and the peak-1 Gaussian, per in-frame
  landmark, mean over them.

Each term also says what it makes the heatmap mean (`heatmap_kind`, see silr.model.codec):
logits of a probability (`kl`, the visibility terms), the Gaussian's values (`mse`) or
only its shape (`ncc`); decoding follows the loss's kind (`heatmap_kind`).

Terms that average over in-frame landmarks return 0 (still attached to the graph) when a
batch has none. Every term computes in float32, whatever the autocast dtype of the logits.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from silr.core import anatomy
from silr.core.errors import ConfigError
from silr.core.params import LOSS_TERM_NAMES
from silr.core.types import Batch, ModelOutput
from silr.model.codec import HeatmapCodec, HeatmapTargets, discrete_visibility, presence_logit

# Weight of a visibility error where the landmark is out of frame (v = 0): false positives
# cost twice as much as misses (paper, section 2.2).
FALSE_POSITIVE_WEIGHT = 2.0
# Denominator guard of the NCC for a constant map (e.g. an untrained network's output).
NCC_EPS = 1e-8


# ------------------------------------------------------------------ functional terms

def _check_maps(name: str, logits: Tensor, target: Tensor) -> None:
    if logits.ndim != 4 or logits.shape != target.shape:
        raise ValueError(f"{name}: expected heatmap logits and target of the same shape (B, L, H, W), "
                         f"got {tuple(logits.shape)} and {tuple(target.shape)}")


def _check_present(name: str, logits: Tensor, present: Tensor) -> None:
    if present.shape != logits.shape[:2]:
        raise ValueError(f"{name}: expected present of shape {tuple(logits.shape[:2])} (B, L), "
                         f"got {tuple(present.shape)}")


def _masked_mean(per_landmark: Tensor, present: Tensor) -> Tensor:
    """Mean of (B, L) values over the in-frame landmarks; 0 (with grad) when there are none."""
    mask = present.to(per_landmark.dtype)
    return (per_landmark * mask).sum() / mask.sum().clamp_min(1.0)


def dice_ce_loss(seg_logits: Tensor, labels: Tensor, _loss: nn.Module | None = None) -> Tensor:
    """MONAI DiceCELoss of (B, C, H, W) logits against (B, H, W) integer labels."""
    if seg_logits.ndim != 4 or labels.shape != (seg_logits.shape[0], *seg_logits.shape[2:]):
        raise ValueError(f"dice_ce: expected logits (B, C, H, W) and labels (B, H, W) of the same B, H, W, "
                         f"got {tuple(seg_logits.shape)} and {tuple(labels.shape)}")
    if labels.is_floating_point():
        raise ValueError(f"dice_ce: expected integer class labels, got dtype {labels.dtype}")
    loss = _loss if _loss is not None else _dice_ce_module()
    return loss(seg_logits.float(), labels[:, None].long())


def _dice_ce_module() -> nn.Module:
    from monai.losses import DiceCELoss

    return DiceCELoss(to_onehot_y=True, softmax=True)


KL_REDUCTIONS = ("landmark", "batchmean", "mean")


def kl_loss(logits: Tensor, target_normalized: Tensor, present: Tensor, reduction: str = "landmark") -> Tensor:
    """KL(target || softmax over all pixels of the logits), in-frame landmarks only, reduced
    as `reduction` says (KL_REDUCTIONS; `landmark`: mean over in-frame landmarks of the sum over pixels)."""
    _check_maps("kl", logits, target_normalized)
    _check_present("kl", logits, present)
    if reduction not in KL_REDUCTIONS:
        raise ValueError(f"kl: reduction must be one of {', '.join(KL_REDUCTIONS)}, got {reduction!r}")
    log_q = torch.log_softmax(logits.float().flatten(2), dim=-1)
    target = target_normalized.float().flatten(2)
    # xlogy gives 0 * log 0 = 0 where the target vanishes.
    per_pixel = (torch.xlogy(target, target) - target * log_q) * present.float()[..., None]
    if reduction == "landmark":
        return _masked_mean(per_pixel.sum(-1), present)
    if reduction == "batchmean":
        return per_pixel.sum() / logits.shape[0]
    return per_pixel.mean()


def mse_loss(logits: Tensor, target_peak: Tensor, foreground_weight: float = 0.0,
             present: Tensor | None = None) -> Tensor:
    """Mean over pixels of w (H - g)^2, g the peak-1 Gaussian (zero maps out of frame) and
    w = 1 + foreground_weight * g (0: plain MSE; > 0 weighs the few pixels under the Gaussian up
    so that the background does not drown them). With `present` (B, L) the maps of absent
    landmarks are left out (target weights, as mmpose's KeypointMSELoss(use_target_weight=True));
    without it every map counts, the absent ones trained towards zero."""
    _check_maps("mse", logits, target_peak)
    target = target_peak.float()
    squared = (logits.float() - target) ** 2
    if foreground_weight:
        squared = squared * (1.0 + foreground_weight * target)
    if present is None:
        return squared.mean()
    _check_present("mse", logits, present)
    return _masked_mean(squared.mean(dim=(-2, -1)), present)


def ncc_loss(logits: Tensor, target_peak: Tensor, present: Tensor) -> Tensor:
    """Mean over in-frame landmarks of 1 - NCC(H, peak-1 Gaussian)."""
    _check_maps("ncc", logits, target_peak)
    _check_present("ncc", logits, present)
    h = logits.float().flatten(2)
    g = target_peak.float().flatten(2)
    h = h - h.mean(-1, keepdim=True)
    g = g - g.mean(-1, keepdim=True)
    ncc = (h * g).sum(-1) / torch.sqrt((h * h).sum(-1) * (g * g).sum(-1) + NCC_EPS)
    return _masked_mean(1.0 - ncc, present)


def visibility_loss(v_hat: Tensor, v: Tensor) -> Tensor:
    """The paper's L_vis: mean over the batch of (1/L) sum_i w_i |v_hat_i - v_i|, w = 2 where v = 0, else 1."""
    if v_hat.ndim != 2 or v_hat.shape != v.shape:
        raise ValueError(f"visibility_loss: expected v_hat and v of the same shape (B, L), "
                         f"got {tuple(v_hat.shape)} and {tuple(v.shape)}")
    v = v.to(v_hat.dtype)
    weight = torch.where(v > 0, torch.ones_like(v), torch.full_like(v, FALSE_POSITIVE_WEIGHT))
    return (weight * (v_hat - v).abs()).mean(-1).mean()


def kl_null_loss(logits: Tensor, null_logits: Tensor, target_normalized: Tensor, present: Tensor) -> Tensor:
    """Mean over every landmark of KL(target || softmax over [pixels, null cell]): in frame, the
    sum-1 Gaussian on the pixels; absent, all mass on the null cell (-log p(null))."""
    _check_maps("kl_null", logits, target_normalized)
    _check_present("kl_null", logits, present)
    if null_logits is None or null_logits.shape != logits.shape[:2]:
        raise ValueError(f"kl_null: expected null-cell logits of shape {tuple(logits.shape[:2])} (B, L) from the "
                         f"presence head, got {None if null_logits is None else tuple(null_logits.shape)}")
    cells = torch.cat((logits.float().flatten(2), null_logits.float()[..., None]), dim=-1)
    log_q = torch.log_softmax(cells, dim=-1)
    target = target_normalized.float().flatten(2)
    inside = present.float()
    kl_present = (torch.xlogy(target, target) - target * log_q[..., :-1]).sum(-1)
    return (inside * kl_present + (1.0 - inside) * -log_q[..., -1]).mean()


def presence_bce_loss(presence_logits: Tensor, present: Tensor, presence_xy: Tensor | None = None,
                      landmarks_xy: Tensor | None = None, size: int | None = None) -> Tensor:
    """Mean binary cross-entropy of (B, L) presence logits against the (B, L) in-frame flags, plus,
    when the head's position estimate `presence_xy` (B, L, 2, [-1, 1] over an input of `size`
    pixels) is given, its smooth-L1 error against the true input-pixel positions `landmarks_xy`
    of every landmark whose position is known (absent ones included)."""
    if presence_logits is None or presence_logits.shape != present.shape:
        raise ValueError(f"presence_bce: expected presence logits of shape {tuple(present.shape)} (B, L) from the "
                         f"presence head, got {None if presence_logits is None else tuple(presence_logits.shape)}")
    loss = F.binary_cross_entropy_with_logits(presence_logits.float(), present.float())
    if presence_xy is None:
        return loss
    if landmarks_xy is None or size is None or presence_xy.shape != landmarks_xy.shape:
        raise ValueError(f"presence_bce: expected true positions of shape {tuple(presence_xy.shape)} and the input "
                         f"size with the position estimate")
    target = (2.0 * landmarks_xy.float() + 1.0) / size - 1.0  # pixel centres -> [-1, 1], as the head's grid
    known = (landmarks_xy.abs() < POSITION_KNOWN_LIMIT).all(-1).float()
    error = F.smooth_l1_loss(presence_xy.float(), target, reduction="none", beta=POSITION_BETA).sum(-1)
    return loss + _masked_mean(error, known)


# presence_bce's position estimate: positions beyond this (input pixels) are stand-ins for unknown
# ones (silr.training.dataset.UNKNOWN_POSITION); smooth-L1 is quadratic within POSITION_BETA (about 5 px on a
# 192-px input in the [-1, 1] units of the head).
POSITION_KNOWN_LIMIT = 1.0e5
POSITION_BETA = 0.05


def bone_distance_loss(logits: Tensor, bone_distance: Tensor, present: Tensor,
                       landmark_bones: Sequence[int] = anatomy.LANDMARK_BONE_INDEX,
                       bone_labels: Sequence[int] = anatomy.LANDMARK_BONE_LABELS) -> Tensor:
    """Mean over in-frame landmarks whose bone is in view of E_softmax(H_i)[d_i] (input pixels).

    bone_distance: (B, K, H, W) distance of every input pixel to bone k of `bone_labels`
    (silr.training.dataset.bone_distance_maps, moved by the augmentation); a heatmap pixel's distance is
    the mean over the input pixels it covers, so a cell half outside the bone costs half as much.
    """
    if logits.ndim != 4:
        raise ValueError(f"bone_distance: expected heatmap logits (B, L, h, w), got {tuple(logits.shape)}")
    _check_present("bone_distance", logits, present)
    if bone_distance is None:
        raise ValueError("bone_distance: the batch carries no distance maps (build the frames with "
                         "with_bone_distance=True)")
    if (bone_distance.ndim != 4 or bone_distance.shape[:2] != (logits.shape[0], len(bone_labels))
            or bone_distance.shape[-2] % logits.shape[-2] or bone_distance.shape[-1] % logits.shape[-1]):
        raise ValueError(f"bone_distance: expected distance maps ({logits.shape[0]}, {len(bone_labels)}, H, W) "
                         f"with H, W multiples of the heatmaps' {tuple(logits.shape[-2:])}, "
                         f"got {tuple(bone_distance.shape)}")
    if len(landmark_bones) != logits.shape[1]:
        raise ValueError(f"bone_distance: expected one bone per landmark ({logits.shape[1]}), "
                         f"got {len(landmark_bones)}")
    stride = bone_distance.shape[-1] // logits.shape[-1]
    distance = bone_distance.float()
    if stride > 1:
        distance = F.avg_pool2d(distance, stride)
    slots = _bones_index(tuple(tuple(bone_labels).index(int(b)) for b in landmark_bones), distance.device)
    distance = distance.index_select(1, slots).flatten(2)  # (B, L, hw)
    # A bone nowhere near the frame (silr.training.dataset.BONE_DISTANCE_ABSENT) leaves its landmarks out.
    in_view = distance.amin(-1) < BONE_DISTANCE_IN_VIEW
    q = torch.softmax(logits.float().flatten(2), dim=-1)
    expected = (q * distance).sum(-1)
    return _masked_mean(expected, present.float() * in_view.float())


# Distances this large mean the bone is not in the frame at all (the sentinel is 4096 px).
BONE_DISTANCE_IN_VIEW = 1024.0


@functools.lru_cache(maxsize=16)
def _bones_index(slots: tuple[int, ...], device: torch.device) -> Tensor:
    # Cached per device: a training step on a GPU makes no host-to-device copy for it.
    return torch.tensor(slots, dtype=torch.long, device=device)


def continuous_visibility(heatmap_logits: Tensor, presence_logits: Tensor, seg_logits: Tensor, *,
                          source: str, detach_segmentation: bool = True,
                          landmark_bones: Sequence[int] = anatomy.LANDMARK_BONE_INDEX) -> Tensor:
    """Differentiable v_hat (B, L) = sigmoid(z) * (0.5 + 0.5 * p_inside), z the learned presence logit."""
    if presence_logits is None:
        raise ValueError("visibility_continuous: the network has no presence head (the loss must train one)")
    p_present = torch.sigmoid(presence_logit(heatmap_logits.float(), presence_logits.float(), source))
    return p_present * (0.5 + 0.5 * _bone_mass(heatmap_logits, seg_logits, detach_segmentation, landmark_bones))


def _bone_index(num_landmarks: int, landmark_bones: Sequence[int], device: torch.device) -> Tensor:
    if len(landmark_bones) != num_landmarks:
        raise ValueError(f"visibility: expected one bone label per landmark ({num_landmarks}), "
                         f"got {len(landmark_bones)}")
    return _bone_tensor(tuple(int(b) for b in landmark_bones), device)


@functools.lru_cache(maxsize=16)
def _bone_tensor(landmark_bones: tuple[int, ...], device: torch.device) -> Tensor:
    # Cached per device: a training step on a GPU makes no host-to-device copy for it.
    return torch.tensor(landmark_bones, dtype=torch.long, device=device)


def soft_visibility(heatmap_logits: Tensor, seg_logits: Tensor, *, detach_segmentation: bool = True,
                    landmark_bones: Sequence[int] = anatomy.LANDMARK_BONE_INDEX) -> Tensor:
    """Differentiable v_hat (B, L) = p_present * (0.5 + 0.5 * p_inside).

    p_present = sigmoid(max H_i); p_inside = sum over pixels of softmax(H_i) times the
    segmentation probability of landmark i's bone. With `detach_segmentation` the
    segmentation is a constant here, so the term cannot pull the masks to the landmarks.
    It tends to the discrete v_hat as the heatmap softmax and sigmoid sharpen.
    """
    p_inside = _bone_mass(heatmap_logits, seg_logits, detach_segmentation, landmark_bones)
    p_present = torch.sigmoid(heatmap_logits.float().flatten(2).amax(-1))
    return p_present * (0.5 + 0.5 * p_inside)


def _bone_mass(heatmap_logits: Tensor, seg_logits: Tensor, detach_segmentation: bool,
               landmark_bones: Sequence[int]) -> Tensor:
    """(B, L): sum over heatmap pixels of softmax(H_i) times the predicted probability of landmark i's bone."""
    if heatmap_logits.ndim != 4 or seg_logits.ndim != 4 or heatmap_logits.shape[0] != seg_logits.shape[0] \
            or seg_logits.shape[2] % heatmap_logits.shape[2] or seg_logits.shape[3] % heatmap_logits.shape[3] \
            or seg_logits.shape[2] // heatmap_logits.shape[2] != seg_logits.shape[3] // heatmap_logits.shape[3]:
        raise ValueError(f"visibility: expected heatmaps (B, L, h, w) and segmentation (B, C, H, W) of the "
                         f"same B, with H, W the same multiple of h, w, got {tuple(heatmap_logits.shape)} and "
                         f"{tuple(seg_logits.shape)}")
    heatmaps = heatmap_logits.float().flatten(2)  # (B, L, HW)
    bones = _bone_index(heatmaps.shape[1], landmark_bones, heatmaps.device)
    if max(landmark_bones) >= seg_logits.shape[1]:
        raise ValueError(f"visibility: bone label {max(landmark_bones)} needs at least "
                         f"{max(landmark_bones) + 1} segmentation classes, got {seg_logits.shape[1]}")
    seg_prob = torch.softmax(seg_logits.float(), dim=1)
    stride = seg_logits.shape[2] // heatmap_logits.shape[2]
    if stride > 1:  # heatmaps at a coarser stride: the bone probability of each heatmap pixel's area
        seg_prob = F.avg_pool2d(seg_prob, stride)
    seg_prob = seg_prob.flatten(2)  # (B, C, hw)
    if detach_segmentation:
        seg_prob = seg_prob.detach()
    bone_prob = seg_prob.index_select(1, bones)  # (B, L, HW)
    return (torch.softmax(heatmaps, dim=-1) * bone_prob).sum(-1)


# ------------------------------------------------------------------ terms (modules)

@dataclass(frozen=True)
class LossOptions:
    """What a term may need besides the network output and the batch."""

    codec: HeatmapCodec
    visibility_mode: str = "hard"
    detach_segmentation: bool = True
    kl_reduction: str = "landmark"
    mse_foreground_weight: float = 0.0
    mse_target_weight: bool = True


class LossTerm(nn.Module):
    """One unweighted term: forward(output, batch, targets) -> scalar tensor."""

    # Whether the term reads the codec's rendered targets (rendering is skipped otherwise).
    needs_targets = True
    # What the term makes the heatmap values mean (silr.model.codec.HEATMAP_KINDS); None: it does not train them.
    heatmap_kind: str | None = "logit"
    # Whether the term reads the batch's bone distance maps (the frames are built with them).
    needs_bone_distance = False
    # What the term makes the presence head's logits mean (silr.model.codec.PRESENCE_SOURCES); None: it
    # does not train a presence output (a loss with such a term gets a network with the head).
    presence_source: str | None = None

    def __init__(self, options: LossOptions) -> None:
        super().__init__()
        self.options = options

    def forward(self, output: ModelOutput, batch: Batch, targets: HeatmapTargets | None) -> Tensor:
        raise NotImplementedError


class DiceCE(LossTerm):
    needs_targets = False
    heatmap_kind = None

    def __init__(self, options: LossOptions) -> None:
        super().__init__(options)
        self.loss = _dice_ce_module()

    def forward(self, output, batch, targets):
        return dice_ce_loss(output.segmentation, batch.labels, self.loss)


class HeatmapKL(LossTerm):
    def forward(self, output, batch, targets):
        return kl_loss(output.heatmaps, targets.normalized, targets.present, self.options.kl_reduction)


class HeatmapMSE(LossTerm):
    heatmap_kind = "value"

    def forward(self, output, batch, targets):
        return mse_loss(output.heatmaps, targets.peak, self.options.mse_foreground_weight,
                        targets.present if self.options.mse_target_weight else None)


class HeatmapNCC(LossTerm):
    heatmap_kind = "shape"

    def forward(self, output, batch, targets):
        return ncc_loss(output.heatmaps, targets.peak, targets.present)


def _soft_v_hat(output: ModelOutput, options: LossOptions) -> Tensor:
    return soft_visibility(output.heatmaps, output.segmentation, detach_segmentation=options.detach_segmentation)


def _hard_v_hat(output: ModelOutput, options: LossOptions) -> Tensor:
    # The paper's v_hat from the same decoding as evaluation (silr.model.codec's presence rule in force).
    codec = options.codec
    labels = output.segmentation.detach().argmax(dim=1)
    decoded = codec.decode(output.heatmaps, labels=labels,
                           presence_prob=codec.presence_probability(output.heatmaps, output.presence,
                                                                    output.presence_frame))
    return discrete_visibility(decoded, labels, codec.landmark_bones)


# losses.visibility_mode -> how v_hat is computed from the network output.
VISIBILITY_MODES: dict[str, Callable[[ModelOutput, LossOptions], Tensor]] = {
    "soft": _soft_v_hat,
    "hard": _hard_v_hat,
}


class Visibility(LossTerm):
    needs_targets = False
    mode: str | None = None  # None: losses.visibility_mode

    def forward(self, output, batch, targets):
        v_hat = VISIBILITY_MODES[self.mode or self.options.visibility_mode](output, self.options)
        loss = visibility_loss(v_hat, batch.present.to(v_hat.device).float())
        if not loss.requires_grad and output.heatmaps.requires_grad:
            # Hard mode is piecewise constant: it contributes its value but no gradient. The
            # zero-valued link keeps `total.backward()` valid when it is the only term.
            loss = loss + 0.0 * output.heatmaps.float().sum()
        return loss


class SoftVisibility(Visibility):
    mode = "soft"


class HeatmapKLNull(LossTerm):
    presence_source = "null_cell"

    def forward(self, output, batch, targets):
        return kl_null_loss(output.heatmaps, output.presence, targets.normalized, targets.present)


class PresenceBCE(LossTerm):
    needs_targets = False
    heatmap_kind = None
    presence_source = "head"

    def forward(self, output, batch, targets):
        device = output.heatmaps.device
        return presence_bce_loss(output.presence, batch.present.to(device), output.presence_xy,
                                 batch.landmarks_xy.to(device), self.options.codec.size[1])


class BoneDistance(LossTerm):
    needs_targets = False
    needs_bone_distance = True

    def forward(self, output, batch, targets):
        return bone_distance_loss(output.heatmaps, batch.bone_distance, batch.present.to(output.heatmaps.device),
                                  self.options.codec.landmark_bones)


class ContinuousVisibility(LossTerm):
    needs_targets = False
    # It trains the presence output too (through p_present), as the head's logit unless a
    # kl_null term of the same loss makes it a null cell.
    presence_source = "head"

    def forward(self, output, batch, targets):
        source = self.options.codec.presence_source or "head"
        v_hat = continuous_visibility(output.heatmaps, output.presence, output.segmentation, source=source,
                                      detach_segmentation=self.options.detach_segmentation,
                                      landmark_bones=self.options.codec.landmark_bones)
        return visibility_loss(v_hat, batch.present.to(v_hat.device).float())


_TERM_CLASSES: dict[str, type[LossTerm]] = {
    "dice_ce": DiceCE,
    "kl": HeatmapKL,
    "mse": HeatmapMSE,
    "ncc": HeatmapNCC,
    "visibility": Visibility,
    "visibility_soft": SoftVisibility,
    "kl_null": HeatmapKLNull,
    "presence_bce": PresenceBCE,
    "bone_distance": BoneDistance,
    "visibility_continuous": ContinuousVisibility,
}
if set(_TERM_CLASSES) != set(LOSS_TERM_NAMES):
    # The names params.yaml may use are silr.core.params.LOSS_TERM_NAMES (checked when params are
    # loaded, without torch); a term added here must be named there too, and the reverse.
    raise ImportError(f"silr.model.losses: term classes {sorted(_TERM_CLASSES)} do not match "
                      f"silr.core.params.LOSS_TERM_NAMES {sorted(LOSS_TERM_NAMES)}")
# Term name (params.yaml `losses.NAME: {term: weight}`, the names of silr.core.params.LOSS_TERM_NAMES) -> term class.
LOSS_TERMS: dict[str, type[LossTerm]] = {name: _TERM_CLASSES[name] for name in LOSS_TERM_NAMES}


def heatmap_kind(weights: Mapping[str, float], key: str = "losses.NAME") -> str:
    """What a named loss makes the heatmaps mean (silr.model.codec.HEATMAP_KINDS), from its terms.

    `value` (MSE) and `logit` terms cannot be mixed: decoding could serve only one of them.
    A loss with no heatmap term (Dice-CE alone) decodes its untrained maps as logits.
    """
    kinds = {LOSS_TERMS[n].heatmap_kind for n, w in weights.items() if n in LOSS_TERMS and w > 0} - {None}
    if {"value", "logit"} <= kinds:
        logit_terms = [n for n in weights if n in LOSS_TERMS and LOSS_TERMS[n].heatmap_kind == "logit"]
        raise ConfigError(f"{key}: mixes mse (the heatmap regresses the Gaussian's values) with terms that "
                          f"treat it as logits ({', '.join(logit_terms)}); decoding can serve only one")
    for kind in ("value", "logit", "shape"):
        if kind in kinds:
            return kind
    return "logit"


def presence_source(weights: Mapping[str, float], key: str = "losses.NAME") -> str | None:
    """What the network's presence logits mean for a named loss (silr.model.codec.PRESENCE_SOURCES), or
    None when no term trains them: `null_cell` with a kl_null term, else `head`."""
    sources = {LOSS_TERMS[n].presence_source for n, w in weights.items() if n in LOSS_TERMS and w > 0} - {None}
    if "null_cell" in sources:
        if weights.get("kl", 0) > 0:
            raise ConfigError(f"{key}: kl and kl_null both train the heatmap softmax; use one of them")
        return "null_cell"
    return "head" if sources else None


def trains_segmentation(weights: Mapping[str, float]) -> bool:
    """Whether a named loss trains the segmentation head (its dice_ce term)."""
    return weights.get("dice_ce", 0) > 0


class WeightedLoss(nn.Module):
    """sum_term weight * term(output, batch); zero-weight terms are never computed.

    forward(output, batch) -> (total, {term: unweighted value, detached}); targets are
    rendered from `batch.landmarks_xy` / `batch.present` with the codec, after augmentation.
    """

    def __init__(self, weights: Mapping[str, float], options: LossOptions) -> None:
        super().__init__()
        self.weights: dict[str, float] = dict(weights)
        self.options = options
        self.terms_needed: tuple[str, ...] = tuple(n for n, w in self.weights.items() if w > 0)
        self.terms = nn.ModuleDict({n: LOSS_TERMS[n](options) for n in self.terms_needed})
        self.needs_targets = any(term.needs_targets for term in self.terms.values())
        self.needs_bone_distance = any(term.needs_bone_distance for term in self.terms.values())

    def extra_repr(self) -> str:
        return ", ".join(f"{n}={w:g}" for n, w in self.weights.items()) + f", options={self.options}"

    def forward(self, output: ModelOutput, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        self._check(output, batch)
        targets = None
        if self.needs_targets:
            targets = self.options.codec.encode(batch.landmarks_xy.to(output.heatmaps.device),
                                                batch.present.to(output.heatmaps.device))
        total: Tensor | None = None
        values: dict[str, Tensor] = {}
        for name, term in self.terms.items():
            value = term(output, batch, targets)
            weighted = self.weights[name] * value
            total = weighted if total is None else total + weighted
            values[name] = value.detach()
        return total, values

    def _check(self, output: ModelOutput, batch: Batch) -> None:
        heatmaps = output.heatmaps
        expected = tuple(self.options.codec.heatmap_size)
        if heatmaps.ndim != 4 or tuple(heatmaps.shape[-2:]) != expected:
            raise ValueError(f"loss: expected heatmaps (B, L, {expected[0]}, {expected[1]}) matching the codec, "
                             f"got {tuple(heatmaps.shape)}")
        if batch.landmarks_xy.shape != (*heatmaps.shape[:2], 2) or batch.present.shape != heatmaps.shape[:2]:
            raise ValueError(f"loss: expected batch landmarks_xy {(*heatmaps.shape[:2], 2)} and present "
                             f"{tuple(heatmaps.shape[:2])} to match the heatmaps, got "
                             f"{tuple(batch.landmarks_xy.shape)} and {tuple(batch.present.shape)}")


def build_loss(weights: Mapping[str, float], *, codec: HeatmapCodec, visibility_mode: str = "hard",
               detach_segmentation: bool = True, kl_reduction: str = "landmark",
               mse_foreground_weight: float = 0.0, mse_target_weight: bool = True,
               key: str = "losses.NAME") -> WeightedLoss:
    """A WeightedLoss from {term: weight}; ConfigError naming `key` for an unknown term.

    The weights themselves (numbers >= 0, not all 0) are checked once, by silr.core.params; the term
    names are checked here, where the registry (LOSS_TERMS) lives.
    """
    known = ", ".join(sorted(LOSS_TERMS))
    if not isinstance(weights, Mapping):
        raise ConfigError(f"{key}: expected a mapping of term -> weight (known terms: {known}), got {weights!r}")
    for name in weights:
        if name not in LOSS_TERMS:
            raise ConfigError(f"{key}: unknown term {name!r} (known: {known})")
    if visibility_mode not in VISIBILITY_MODES:
        raise ConfigError(f"losses.visibility_mode: unknown mode {visibility_mode!r} "
                          f"(known: {', '.join(VISIBILITY_MODES)})")
    if kl_reduction not in KL_REDUCTIONS:
        raise ConfigError(f"losses.kl_reduction: unknown reduction {kl_reduction!r} "
                          f"(known: {', '.join(KL_REDUCTIONS)})")
    if not isinstance(codec, HeatmapCodec):
        raise TypeError(f"build_loss: codec must be a HeatmapCodec, got {type(codec).__name__}")
    heatmap_kind(weights, key)
    source = presence_source(weights, key)
    if source != codec.presence_source:
        raise ConfigError(f"{key}: its terms train presence as {source!r} but the codec decodes it as "
                          f"{codec.presence_source!r}")
    options = LossOptions(codec=codec, visibility_mode=visibility_mode,
                          detach_segmentation=bool(detach_segmentation), kl_reduction=kl_reduction,
                          mse_foreground_weight=float(mse_foreground_weight),
                          mse_target_weight=bool(mse_target_weight))
    return WeightedLoss({n: float(w) for n, w in weights.items()}, options)
