"""The choice lists and defaults of the heatmap codec and the losses, spelled once.

They are the vocabulary of `params.yaml` (`heatmap:` and `losses:`), so they live in `core`,
the lowest layer: silr.core.params checks a params file against them without importing torch,
and silr.model.codec, silr.model.losses and silr.model.card import the same tuples and
defaults for their own checks, their dispatch and the model card's fallbacks for old cards.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

__all__ = [
    "DEFAULT_DETACH_SEGMENTATION",
    "DEFAULT_KL_REDUCTION",
    "DEFAULT_VISIBILITY_MODE",
    "HEATMAP_KINDS",
    "KL_REDUCTIONS",
    "LOSS_OPTION_DEFAULTS",
    "LOSS_TERM_NAMES",
    "MSE_FOREGROUND_WEIGHT",
    "MSE_TARGET_WEIGHT",
    "PRESENCE_CHOICES",
    "PRESENCE_RULES",
    "PRESENCE_SOURCES",
    "REFINE_MODES",
    "TEMPLATE_NCC",
    "TEMPLATE_WINDOW_PX",
    "VISIBILITY_MODES",
]

# ---------------------------------------------------------------- the codec (heatmap:)

# heatmap.refine: how the argmax is refined (silr.model.codec).
REFINE_MODES: tuple[str, ...] = ("none", "parabola", "centroid")
# What the heatmap values mean, as the loss trains them (silr.model.codec).
HEATMAP_KINDS: tuple[str, ...] = ("logit", "value", "shape")
# The rules that decide presence (silr.model.codec), in the order results list them. `shape`
# fits the fold's shape prior (silr.model.shape_prior) to the landmarks its base rule calls
# present (SHAPE_BASE_RULE) and calls present those whose fitted position lies in the frame.
PRESENCE_RULES: tuple[str, ...] = ("threshold", "template", "learned", "shape")
# heatmap.presence: `auto` = `shape` for a model with a shape prior (every model silr train writes
# now), else `learned` for a network whose loss trains a presence output, else `template`.
PRESENCE_CHOICES: tuple[str, ...] = ("auto", *PRESENCE_RULES)
# What a network's presence logits mean (silr.model.codec.presence_logit).
PRESENCE_SOURCES: tuple[str, ...] = ("head", "null_cell")
# The data set authors' template rule at 8x: a 25 x 25 px window, NCC >= 0.9 (est_lands_csv.py,
# rule_3).
TEMPLATE_WINDOW_PX = 25.0
TEMPLATE_NCC = 0.9

# ---------------------------------------------------------------- the losses (losses:)

# losses.visibility_mode: how the `visibility` term computes v_hat (silr.model.losses).
VISIBILITY_MODES: tuple[str, ...] = ("soft", "hard")
DEFAULT_VISIBILITY_MODE = "hard"
# losses.kl_reduction: how the `kl` term reduces its per-pixel terms (silr.model.losses).
KL_REDUCTIONS: tuple[str, ...] = ("landmark", "batchmean", "mean")
DEFAULT_KL_REDUCTION = "landmark"
# losses.detach_segmentation: whether the visibility terms treat the segmentation as a constant.
DEFAULT_DETACH_SEGMENTATION = True

# The term names a named loss may use (`losses.NAME: {term: weight}`), the one list of them.
# silr.model.losses fills its registry LOSS_TERMS with a decorator, @register_term(name), that
# refuses a name not in this tuple, so the names params.yaml may use are written here and a term
# class can only claim one of them. The list lives in core, not in the registry, because params
# (core) cannot import silr.model.losses (model): that would load torch and MONAI (about 2 s) in
# `silr synth` and `silr folds` and make losses.py a dependency of every stage. A test checks
# that every name here has its class.
LOSS_TERM_NAMES: tuple[str, ...] = (
    "dice_ce", "kl", "mse", "ncc", "visibility", "visibility_soft", "kl_null", "presence_bce",
    "bone_distance", "visibility_continuous",
)

# Options a named loss may carry beside its term weights (`losses.NAME: {term: weight, option:
# value}`), with their defaults: `sigma`, the width (px, 180x180 frame) of this loss's target
# Gaussians (None: heatmap.sigma); `refine`, its sub-pixel decoding (REFINE_MODES; None:
# heatmap.refine); `mse_foreground_weight`, w of the mse term's pixel weight
# 1 + w g (0: plain MSE); `mse_target_weight`, whether the mse term leaves absent landmarks'
# maps out (mmpose's use_target_weight) or trains them towards zero.
MSE_FOREGROUND_WEIGHT = 0.0
MSE_TARGET_WEIGHT = True
LOSS_OPTION_DEFAULTS: Mapping[str, Any] = MappingProxyType({
    "sigma": None,
    "refine": None,
    "mse_foreground_weight": MSE_FOREGROUND_WEIGHT,
    "mse_target_weight": MSE_TARGET_WEIGHT,
})
