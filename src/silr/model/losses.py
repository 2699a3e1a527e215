"""The loss library: every term of the paper's losses, and named mixes of them.

Terms (registry `LOSS_TERMS` of silr.model.loss_terms; their names, used in `params.yaml`
`losses.NAME: {term: weight}`, are silr.core.choices.LOSS_TERM_NAMES):

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

from collections.abc import Mapping

from torch import Tensor, nn

from silr.core.choices import (
    DEFAULT_DETACH_SEGMENTATION,
    DEFAULT_KL_REDUCTION,
    DEFAULT_VISIBILITY_MODE,
    KL_REDUCTIONS,
    MSE_FOREGROUND_WEIGHT,
    MSE_TARGET_WEIGHT,
    VISIBILITY_MODES,
)
from silr.core.errors import ConfigError
from silr.core.types import Batch, ModelOutput
from silr.model.codec import HeatmapCodec
from silr.model.loss_functions import (
    bone_distance_loss,
    continuous_visibility,
    dice_ce_loss,
    kl_loss,
    kl_null_loss,
    mse_loss,
    ncc_loss,
    presence_bce_loss,
    soft_visibility,
    visibility_loss,
)
from silr.model.loss_terms import LOSS_TERMS, LossOptions

# The loss library's public surface: the builder here, the registry and the functional terms
# from silr.model.loss_terms and silr.model.loss_functions.
__all__ = [
    "LOSS_TERMS",
    "LossOptions",
    "WeightedLoss",
    "bone_distance_loss",
    "build_loss",
    "continuous_visibility",
    "dice_ce_loss",
    "heatmap_kind",
    "kl_loss",
    "kl_null_loss",
    "mse_loss",
    "ncc_loss",
    "presence_bce_loss",
    "presence_source",
    "soft_visibility",
    "trains_segmentation",
    "visibility_loss",
]


def heatmap_kind(weights: Mapping[str, float], key: str = "losses.NAME") -> str:
    """What a named loss makes the heatmaps mean (silr.core.choices.HEATMAP_KINDS), from its
    terms.

    `value` (MSE) and `logit` terms cannot be mixed: decoding could serve only one of them.
    A loss with no heatmap term (Dice-CE alone) decodes its untrained maps as logits.
    """
    kinds = {LOSS_TERMS[n].heatmap_kind for n, w in weights.items()
             if n in LOSS_TERMS and w > 0} - {None}
    if {"value", "logit"} <= kinds:
        logit_terms = [n for n in weights
                       if n in LOSS_TERMS and LOSS_TERMS[n].heatmap_kind == "logit"]
        raise ConfigError(f"{key}: mixes mse (the heatmap regresses the Gaussian's values) with "
                          f"terms that treat it as logits ({', '.join(logit_terms)}); decoding "
                          f"can serve only one")
    for kind in ("value", "logit", "shape"):
        if kind in kinds:
            return kind
    return "logit"


def presence_source(weights: Mapping[str, float], key: str = "losses.NAME") -> str | None:
    """What the network's presence logits mean for a named loss
    (silr.core.choices.PRESENCE_SOURCES), or None when no term trains them: `null_cell` with a
    kl_null term, else `head`."""
    sources = {LOSS_TERMS[n].presence_source for n, w in weights.items()
               if n in LOSS_TERMS and w > 0} - {None}
    if "null_cell" in sources:
        if weights.get("kl", 0) > 0:
            raise ConfigError(f"{key}: kl and kl_null both train the heatmap softmax; use one "
                              f"of them")
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
        weights = ", ".join(f"{n}={w:g}" for n, w in self.weights.items())
        return weights + f", options={self.options}"

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
            raise ValueError(f"loss: expected heatmaps (B, L, {expected[0]}, {expected[1]}) "
                             f"matching the codec, got {tuple(heatmaps.shape)}")
        if (batch.landmarks_xy.shape != (*heatmaps.shape[:2], 2)
                or batch.present.shape != heatmaps.shape[:2]):
            raise ValueError(f"loss: expected batch landmarks_xy {(*heatmaps.shape[:2], 2)} and "
                             f"present {tuple(heatmaps.shape[:2])} to match the heatmaps, got "
                             f"{tuple(batch.landmarks_xy.shape)} and {tuple(batch.present.shape)}")


def _check_loss_settings(weights: Mapping[str, float], visibility_mode: str, kl_reduction: str,
                         codec: HeatmapCodec, key: str) -> None:
    """ConfigError (TypeError for a codec that is not one) for settings build_loss cannot use."""
    known = ", ".join(sorted(LOSS_TERMS))
    if not isinstance(weights, Mapping):
        raise ConfigError(f"{key}: expected a mapping of term -> weight (known terms: {known}), "
                          f"got {weights!r}")
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
        raise ConfigError(f"{key}: its terms train presence as {source!r} but the codec decodes "
                          f"it as {codec.presence_source!r}")


def build_loss(weights: Mapping[str, float], *, codec: HeatmapCodec,
               visibility_mode: str = DEFAULT_VISIBILITY_MODE,
               detach_segmentation: bool = DEFAULT_DETACH_SEGMENTATION,
               kl_reduction: str = DEFAULT_KL_REDUCTION,
               mse_foreground_weight: float = MSE_FOREGROUND_WEIGHT,
               mse_target_weight: bool = MSE_TARGET_WEIGHT,
               key: str = "losses.NAME") -> WeightedLoss:
    """A WeightedLoss from {term: weight}; ConfigError naming `key` for an unknown term.

    The weights themselves (numbers >= 0, not all 0) are checked once, by silr.core.params; the
    term names are checked here, where the registry (LOSS_TERMS) lives.
    """
    _check_loss_settings(weights, visibility_mode, kl_reduction, codec, key)
    options = LossOptions(codec=codec, visibility_mode=visibility_mode,
                          detach_segmentation=bool(detach_segmentation), kl_reduction=kl_reduction,
                          mse_foreground_weight=float(mse_foreground_weight),
                          mse_target_weight=bool(mse_target_weight))
    return WeightedLoss({n: float(w) for n, w in weights.items()}, options)

