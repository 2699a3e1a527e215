"""What a training run of one named loss uses, from its params: the heatmap codec, the loss,
the params sections it depends on and their hash.

silr.stages.train builds its run from these, and silr.model.card.ModelCard.for_run records
the same codec and params in the model card, so the run and its card cannot disagree.
"""

from __future__ import annotations

from typing import Any

from silr.core.anatomy import FRAME_SIZE_PX, NETWORK_INPUT_PX
from silr.core.params import Params, stable_hash, to_dict
from silr.model.codec import HeatmapCodec
from silr.model.losses import (
    WeightedLoss,
    build_loss,
    heatmap_kind,
    presence_source,
    trains_segmentation,
)
from silr.model.network import heatmap_stride
from silr.model.shape_prior import ShapePrior

__all__ = [
    "TEMPLATE_REFERENCE_DOWNSAMPLE",
    "codec_for_run",
    "loss_for_run",
    "params_hash_of",
    "run_params",
]

# heatmap.template_window is given in pixels of this downsampling factor (the authors' 8x files).
TEMPLATE_REFERENCE_DOWNSAMPLE = 8


def run_params(params: Params, loss_name: str) -> dict[str, Any]:
    """The params sections a training run depends on (the same ones dvc.yaml lists for it)."""
    return {
        "model": to_dict(params.model),
        "train": to_dict(params.train),
        "augment": to_dict(params.augment),
        "heatmap": to_dict(params.heatmap),
        "losses": {
            loss_name: params.loss_weights(loss_name),
            "visibility_mode": params.losses.visibility_mode,
            "detach_segmentation": params.losses.detach_segmentation,
            "kl_reduction": params.losses.kl_reduction,
            "options": params.loss_options(loss_name),
        },
        # The ingestion values are part of what the model expects as input.
        "data": {"crop": params.data.crop, "i0": params.data.i0,
                 "downsample": params.data.downsample},
    }


def params_hash_of(params: Params, loss_name: str) -> str:
    return stable_hash(run_params(params, loss_name))


def codec_for_run(params: Params, loss_name: str,
                  shape_prior: ShapePrior | None = None) -> HeatmapCodec:
    """The HeatmapCodec a training run of `loss_name` uses: the heatmap params, the model's
    heatmap stride, the frame inside the padded input, what the loss makes the maps mean, and
    the fold's `shape_prior` (silr train fits it on the fold's training frames)."""
    weights, key = params.loss_weights(loss_name), f"losses.{loss_name}"
    source = presence_source(weights, key)
    rule = params.heatmap.presence
    if rule == "auto":
        rule = ("shape" if shape_prior is not None
                else "learned" if source is not None else "template")
    heatmap = params.heatmap
    # A named loss may carry its own target width and sub-pixel refinement (the field's MSE: a
    # Gaussian of 4 heatmap pixels at stride 4, refined by a parabola; docs/method.md#losses).
    options = params.loss_options(loss_name)
    sigma = options["sigma"] or heatmap.sigma
    refine = options["refine"] or heatmap.refine
    return HeatmapCodec(size=(NETWORK_INPUT_PX, NETWORK_INPUT_PX), sigma=sigma,
                        presence_threshold=heatmap.presence_threshold, refine=refine,
                        stride=heatmap_stride(params.model.decoder_channels),
                        frame=(FRAME_SIZE_PX, FRAME_SIZE_PX), kind=heatmap_kind(weights, key),
                        presence=rule, presence_source=source, template_ncc=heatmap.template_ncc,
                        # The authors' window is in 8x pixels: the same anatomy spans 8 / f
                        # times as many at f.
                        template_window=heatmap.template_window * TEMPLATE_REFERENCE_DOWNSAMPLE
                        / params.data.downsample,
                        segmentation_trained=trains_segmentation(weights),
                        shape_prior=shape_prior)


def loss_for_run(params: Params, loss_name: str, codec: HeatmapCodec) -> WeightedLoss:
    """The loss a training run of `loss_name` trains with: its term weights, the `losses`
    section's settings and the loss's own options (silr.core.choices.LOSS_OPTION_DEFAULTS),
    each passed on from params; `codec` is the run's (`codec_for_run`)."""
    options = params.loss_options(loss_name)
    return build_loss(params.loss_weights(loss_name), codec=codec,
                      visibility_mode=params.losses.visibility_mode,
                      detach_segmentation=params.losses.detach_segmentation,
                      kl_reduction=params.losses.kl_reduction,
                      mse_foreground_weight=options["mse_foreground_weight"],
                      mse_target_weight=options["mse_target_weight"],
                      key=f"losses.{loss_name}")
