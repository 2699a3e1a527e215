"""The loss terms as modules, and their registry `LOSS_TERMS` (term name -> class).

A term class is registered by the decorator `@register_term(name)`, as timm registers its
models. The names themselves are written once, in silr.core.choices.LOSS_TERM_NAMES: params
(in core, the lowest layer) checks a params file's term names against that tuple when it is
loaded, without importing torch or this module, and the decorator refuses any name not in it
(or one already taken), so a class can only claim a name params accepts. The registry's order
is the order the classes are defined in, the order of LOSS_TERM_NAMES (a test checks that
every name has its class).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from torch import Tensor, nn

from silr.core.choices import (
    DEFAULT_DETACH_SEGMENTATION,
    DEFAULT_KL_REDUCTION,
    DEFAULT_VISIBILITY_MODE,
    LOSS_TERM_NAMES,
    MSE_FOREGROUND_WEIGHT,
    MSE_TARGET_WEIGHT,
)
from silr.core.types import Batch, ModelOutput
from silr.model.codec import HeatmapCodec, HeatmapTargets
from silr.model.decode_helpers import discrete_visibility, segmentation_labels
from silr.model.loss_functions import (
    bone_distance_loss,
    continuous_visibility,
    dice_ce_loss,
    dice_ce_module,
    kl_loss,
    kl_null_loss,
    mse_loss,
    ncc_loss,
    presence_bce_loss,
    soft_visibility,
    visibility_loss,
)

__all__ = ["LOSS_TERMS", "V_HAT_RULES", "LossOptions", "LossTerm", "register_term"]


@dataclass(frozen=True)
class LossOptions:
    """What a term may need besides the network output and the batch."""

    codec: HeatmapCodec
    visibility_mode: str = DEFAULT_VISIBILITY_MODE
    detach_segmentation: bool = DEFAULT_DETACH_SEGMENTATION
    kl_reduction: str = DEFAULT_KL_REDUCTION
    mse_foreground_weight: float = MSE_FOREGROUND_WEIGHT
    mse_target_weight: bool = MSE_TARGET_WEIGHT


class LossTerm(nn.Module):
    """One unweighted term: forward(output, batch, targets) -> scalar tensor."""

    # Whether the term reads the codec's rendered targets (rendering is skipped otherwise).
    needs_targets = True
    # What the term makes the heatmap values mean (silr.core.choices.HEATMAP_KINDS); None: it
    # does not train them.
    heatmap_kind: str | None = "logit"
    # Whether the term reads the batch's bone distance maps (the frames are built with them).
    needs_bone_distance = False
    # What the term makes the presence head's logits mean (silr.core.choices.PRESENCE_SOURCES);
    # None: it does not train a presence output (a loss with such a term gets a network with
    # the head).
    presence_source: str | None = None

    def __init__(self, options: LossOptions) -> None:
        super().__init__()
        self.options = options

    def forward(self, output: ModelOutput, batch: Batch, targets: HeatmapTargets | None) -> Tensor:
        raise NotImplementedError


# Term name (params.yaml `losses.NAME: {term: weight}`) -> term class, filled by register_term.
LOSS_TERMS: dict[str, type[LossTerm]] = {}

_Term = TypeVar("_Term", bound=type[LossTerm])


def register_term(name: str) -> Callable[[_Term], _Term]:
    """Class decorator: the LossTerm subclass is the term `name`, one of LOSS_TERM_NAMES."""
    if name not in LOSS_TERM_NAMES:
        raise ValueError(f"register_term: {name!r} is not a term name of "
                         f"silr.core.choices.LOSS_TERM_NAMES ({', '.join(LOSS_TERM_NAMES)})")
    if name in LOSS_TERMS:
        raise ValueError(f"register_term: {name!r} is already {LOSS_TERMS[name].__name__}")

    def register(cls: _Term) -> _Term:
        LOSS_TERMS[name] = cls
        return cls
    return register


@register_term("dice_ce")
class DiceCE(LossTerm):
    needs_targets = False
    heatmap_kind = None

    def __init__(self, options: LossOptions) -> None:
        super().__init__(options)
        self.loss = dice_ce_module()

    def forward(self, output: ModelOutput, batch: Batch,
                targets: HeatmapTargets | None) -> Tensor:
        return dice_ce_loss(output.segmentation, batch.labels, self.loss)


@register_term("kl")
class HeatmapKL(LossTerm):
    def forward(self, output: ModelOutput, batch: Batch,
                targets: HeatmapTargets | None) -> Tensor:
        return kl_loss(output.heatmaps, targets.normalized, targets.present,
                       self.options.kl_reduction)


@register_term("mse")
class HeatmapMSE(LossTerm):
    heatmap_kind = "value"

    def forward(self, output: ModelOutput, batch: Batch,
                targets: HeatmapTargets | None) -> Tensor:
        return mse_loss(output.heatmaps, targets.peak, self.options.mse_foreground_weight,
                        targets.present if self.options.mse_target_weight else None)


@register_term("ncc")
class HeatmapNCC(LossTerm):
    heatmap_kind = "shape"

    def forward(self, output: ModelOutput, batch: Batch,
                targets: HeatmapTargets | None) -> Tensor:
        return ncc_loss(output.heatmaps, targets.peak, targets.present)


def _soft_v_hat(output: ModelOutput, options: LossOptions) -> Tensor:
    return soft_visibility(output.heatmaps, output.segmentation,
                           detach_segmentation=options.detach_segmentation)


def _hard_v_hat(output: ModelOutput, options: LossOptions) -> Tensor:
    # The paper's v_hat from the same decoding as evaluation (silr.model.codec's presence rule in
    # force).
    codec = options.codec
    labels = segmentation_labels(output.segmentation.detach())
    presence_prob = codec.presence_probability(output.heatmaps, output.presence,
                                               output.presence_frame)
    decoded = codec.decode(output.heatmaps, labels=labels, presence_prob=presence_prob)
    return discrete_visibility(decoded, labels, codec.landmark_bones)


# losses.visibility_mode (one of silr.core.choices.VISIBILITY_MODES) -> how v_hat is computed
# from the network output (tests/test_losses.py checks that every mode has its rule).
V_HAT_RULES: dict[str, Callable[[ModelOutput, LossOptions], Tensor]] = {
    "soft": _soft_v_hat,
    "hard": _hard_v_hat,
}


@register_term("visibility")
class Visibility(LossTerm):
    needs_targets = False
    mode: str | None = None  # None: losses.visibility_mode

    def forward(self, output: ModelOutput, batch: Batch,
                targets: HeatmapTargets | None) -> Tensor:
        v_hat = V_HAT_RULES[self.mode or self.options.visibility_mode](output, self.options)
        loss = visibility_loss(v_hat, batch.present.to(v_hat.device).float())
        if not loss.requires_grad and output.heatmaps.requires_grad:
            # Hard mode is piecewise constant: it contributes its value but no gradient. The
            # zero-valued link keeps `total.backward()` valid when it is the only term.
            loss = loss + 0.0 * output.heatmaps.float().sum()
        return loss


@register_term("visibility_soft")
class SoftVisibility(Visibility):
    mode = "soft"


@register_term("kl_null")
class HeatmapKLNull(LossTerm):
    presence_source = "null_cell"

    def forward(self, output: ModelOutput, batch: Batch,
                targets: HeatmapTargets | None) -> Tensor:
        return kl_null_loss(output.heatmaps, output.presence, targets.normalized, targets.present)


@register_term("presence_bce")
class PresenceBCE(LossTerm):
    needs_targets = False
    heatmap_kind = None
    presence_source = "head"

    def forward(self, output: ModelOutput, batch: Batch,
                targets: HeatmapTargets | None) -> Tensor:
        device = output.heatmaps.device
        return presence_bce_loss(output.presence, batch.present.to(device), output.presence_xy,
                                 batch.landmarks_xy.to(device), self.options.codec.size[1])


@register_term("bone_distance")
class BoneDistance(LossTerm):
    needs_targets = False
    needs_bone_distance = True

    def forward(self, output: ModelOutput, batch: Batch,
                targets: HeatmapTargets | None) -> Tensor:
        return bone_distance_loss(output.heatmaps, batch.bone_distance,
                                  batch.present.to(output.heatmaps.device),
                                  self.options.codec.landmark_bones)


@register_term("visibility_continuous")
class ContinuousVisibility(LossTerm):
    needs_targets = False
    # It trains the presence output too (through p_present), as the head's logit unless a
    # kl_null term of the same loss makes it a null cell.
    presence_source = "head"

    def forward(self, output: ModelOutput, batch: Batch,
                targets: HeatmapTargets | None) -> Tensor:
        source = self.options.codec.presence_source or "head"
        v_hat = continuous_visibility(output.heatmaps, output.presence, output.segmentation,
                                      source=source,
                                      detach_segmentation=self.options.detach_segmentation,
                                      landmark_bones=self.options.codec.landmark_bones)
        return visibility_loss(v_hat, batch.present.to(v_hat.device).float())
