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
- `mse`: MSE between the raw heatmap H and the peak-1 Gaussian (zero maps out of frame),
  mean over every pixel, as HRNet-style heatmap regression trains it.
- `ncc`: 1 - normalised cross-correlation between H and the peak-1 Gaussian, per in-frame
  landmark, mean over them.

Each term also says what it makes the heatmap mean (`heatmap_kind`, see silr.codec):
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

from silr import anatomy
from silr.codec import DecodedLandmarks, HeatmapCodec, HeatmapTargets
from silr.errors import ConfigError
from silr.params import LOSS_TERM_NAMES
from silr.types import Batch, ModelOutput

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


def mse_loss(logits: Tensor, target_peak: Tensor, foreground_weight: float = 0.0) -> Tensor:
    """Mean over every pixel of every map of w (H - g)^2, g the peak-1 Gaussian (zero maps out of
    frame) and w = 1 + foreground_weight * g: the pixels under the Gaussian weigh more, so that
    the few of them are not drowned by the background (0: plain MSE)."""
    _check_maps("mse", logits, target_peak)
    target = target_peak.float()
    squared = (logits.float() - target) ** 2
    if foreground_weight:
        squared = squared * (1.0 + foreground_weight * target)
    return squared.mean()


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


def _bone_index(num_landmarks: int, landmark_bones: Sequence[int], device: torch.device) -> Tensor:
    if len(landmark_bones) != num_landmarks:
        raise ValueError(f"visibility: expected one bone label per landmark ({num_landmarks}), "
                         f"got {len(landmark_bones)}")
    return _bone_tensor(tuple(int(b) for b in landmark_bones), device)


@functools.lru_cache(maxsize=16)
def _bone_tensor(landmark_bones: tuple[int, ...], device: torch.device) -> Tensor:
    # Cached per device: a training step on a GPU makes no host-to-device copy for it.
    return torch.tensor(landmark_bones, dtype=torch.long, device=device)


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
    height, width = seg_labels.shape[-2:]
    bones = _bone_index(num_landmarks, landmark_bones, seg_labels.device)
    col = torch.round(xy[..., 0]).long().clamp(0, width - 1).to(seg_labels.device)
    row = torch.round(xy[..., 1]).long().clamp(0, height - 1).to(seg_labels.device)
    label_at = seg_labels.reshape(batch, height * width).gather(1, row * width + col)
    inside = (label_at == bones[None, :]).float()
    return present.to(seg_labels.device).float() * (0.5 + 0.5 * inside)


def soft_visibility(heatmap_logits: Tensor, seg_logits: Tensor, *, detach_segmentation: bool = True,
                    landmark_bones: Sequence[int] = anatomy.LANDMARK_BONE_INDEX) -> Tensor:
    """Differentiable v_hat (B, L) = p_present * (0.5 + 0.5 * p_inside).

    p_present = sigmoid(max H_i); p_inside = sum over pixels of softmax(H_i) times the
    segmentation probability of landmark i's bone. With `detach_segmentation` the
    segmentation is a constant here, so the term cannot pull the masks to the landmarks.
    It tends to the discrete v_hat as the heatmap softmax and sigmoid sharpen.
    """
    if heatmap_logits.ndim != 4 or seg_logits.ndim != 4 or heatmap_logits.shape[0] != seg_logits.shape[0] \
            or seg_logits.shape[2] % heatmap_logits.shape[2] or seg_logits.shape[3] % heatmap_logits.shape[3] \
            or seg_logits.shape[2] // heatmap_logits.shape[2] != seg_logits.shape[3] // heatmap_logits.shape[3]:
        raise ValueError(f"soft_visibility: expected heatmaps (B, L, h, w) and segmentation (B, C, H, W) of the "
                         f"same B, with H, W the same multiple of h, w, got {tuple(heatmap_logits.shape)} and "
                         f"{tuple(seg_logits.shape)}")
    heatmaps = heatmap_logits.float().flatten(2)  # (B, L, HW)
    bones = _bone_index(heatmaps.shape[1], landmark_bones, heatmaps.device)
    if max(landmark_bones) >= seg_logits.shape[1]:
        raise ValueError(f"soft_visibility: bone label {max(landmark_bones)} needs at least "
                         f"{max(landmark_bones) + 1} segmentation classes, got {seg_logits.shape[1]}")
    seg_prob = torch.softmax(seg_logits.float(), dim=1)
    stride = seg_logits.shape[2] // heatmap_logits.shape[2]
    if stride > 1:  # heatmaps at a coarser stride: the bone probability of each heatmap pixel's area
        seg_prob = F.avg_pool2d(seg_prob, stride)
    seg_prob = seg_prob.flatten(2)  # (B, C, hw)
    if detach_segmentation:
        seg_prob = seg_prob.detach()
    bone_prob = seg_prob.index_select(1, bones)  # (B, L, HW)
    p_inside = (torch.softmax(heatmaps, dim=-1) * bone_prob).sum(-1)
    p_present = torch.sigmoid(heatmaps.amax(-1))
    return p_present * (0.5 + 0.5 * p_inside)


# ------------------------------------------------------------------ terms (modules)

@dataclass(frozen=True)
class LossOptions:
    """What a term may need besides the network output and the batch."""

    codec: HeatmapCodec
    visibility_mode: str = "hard"
    detach_segmentation: bool = True
    kl_reduction: str = "landmark"
    mse_foreground_weight: float = 0.0


class LossTerm(nn.Module):
    """One unweighted term: forward(output, batch, targets) -> scalar tensor."""

    # Whether the term reads the codec's rendered targets (rendering is skipped otherwise).
    needs_targets = True
    # What the term makes the heatmap values mean (silr.codec.HEATMAP_KINDS); None: it does not train them.
    heatmap_kind: str | None = "logit"

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
        return mse_loss(output.heatmaps, targets.peak, self.options.mse_foreground_weight)


class HeatmapNCC(LossTerm):
    heatmap_kind = "shape"

    def forward(self, output, batch, targets):
        return ncc_loss(output.heatmaps, targets.peak, targets.present)


def _soft_v_hat(output: ModelOutput, options: LossOptions) -> Tensor:
    return soft_visibility(output.heatmaps, output.segmentation, detach_segmentation=options.detach_segmentation)


def _hard_v_hat(output: ModelOutput, options: LossOptions) -> Tensor:
    decoded = options.codec.decode(output.heatmaps)
    return discrete_visibility(decoded, output.segmentation.detach().argmax(dim=1))


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


_TERM_CLASSES: dict[str, type[LossTerm]] = {
    "dice_ce": DiceCE,
    "kl": HeatmapKL,
    "mse": HeatmapMSE,
    "ncc": HeatmapNCC,
    "visibility": Visibility,
    "visibility_soft": SoftVisibility,
}
if set(_TERM_CLASSES) != set(LOSS_TERM_NAMES):
    # The names params.yaml may use are silr.params.LOSS_TERM_NAMES (checked when params are
    # loaded, without torch); a term added here must be named there too, and the reverse.
    raise ImportError(f"silr.losses: term classes {sorted(_TERM_CLASSES)} do not match "
                      f"silr.params.LOSS_TERM_NAMES {sorted(LOSS_TERM_NAMES)}")
# Term name (params.yaml `losses.NAME: {term: weight}`, the names of silr.params.LOSS_TERM_NAMES) -> term class.
LOSS_TERMS: dict[str, type[LossTerm]] = {name: _TERM_CLASSES[name] for name in LOSS_TERM_NAMES}


def heatmap_kind(weights: Mapping[str, float], key: str = "losses.NAME") -> str:
    """What a named loss makes the heatmaps mean (silr.codec.HEATMAP_KINDS), from its terms.

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
               mse_foreground_weight: float = 0.0, key: str = "losses.NAME") -> WeightedLoss:
    """A WeightedLoss from {term: weight}; ConfigError naming `key` for an unknown term.

    The weights themselves (numbers >= 0, not all 0) are checked once, by silr.params; the term
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
    options = LossOptions(codec=codec, visibility_mode=visibility_mode,
                          detach_segmentation=bool(detach_segmentation), kl_reduction=kl_reduction,
                          mse_foreground_weight=float(mse_foreground_weight))
    return WeightedLoss({n: float(w) for n, w in weights.items()}, options)
