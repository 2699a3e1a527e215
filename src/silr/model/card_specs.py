"""The parts of a model card (silr.model.card.ModelCard): the network, the preprocessing, the
heatmap codec and the loss, each with its stored form (`to_dict`) and its reader (`read`).

The stored forms are part of every checkpoint's bytes: their keys, key order and values must
not change. A reader raises KeyError, TypeError, ValueError or AttributeError for an unusable
part; ModelCard.from_dict turns those into a CheckpointError naming the file and the field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from silr.core.choices import (
    DEFAULT_DETACH_SEGMENTATION,
    DEFAULT_KL_REDUCTION,
    DEFAULT_VISIBILITY_MODE,
    MSE_FOREGROUND_WEIGHT,
    TEMPLATE_NCC,
    TEMPLATE_WINDOW_PX,
)
from silr.model.codec import HeatmapCodec
from silr.model.shape_prior import ShapePrior

__all__ = [
    "INTENSITY_SCALING",
    "PADDING",
    "HeatmapSpec",
    "LossSpec",
    "NetworkSpec",
    "Preprocessing",
    "stored_bool",
]

INTENSITY_SCALING = "per-frame min-max to [0, 1]"
PADDING = "zero padding, centred, frame -> input_size (no resizing)"


def stored_bool(value: Any) -> bool:
    """A stored true or false; TypeError for anything else (1 and "yes" included)."""
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {value!r}")
    return value


@dataclass(frozen=True)
class NetworkSpec:
    backbone: str
    decoder_channels: tuple[int, ...]
    num_landmarks: int
    num_classes: int
    presence_head: bool = False

    def to_dict(self) -> dict[str, Any]:
        spec = {"backbone": self.backbone, "decoder_channels": list(self.decoder_channels),
                "num_landmarks": self.num_landmarks, "num_classes": self.num_classes}
        if self.presence_head:  # only then: cards of networks without one keep their bytes
            spec["presence_head"] = True
        return spec

    @classmethod
    def read(cls, v: Any, landmarks: int, labels: int) -> NetworkSpec:
        """The stored form; a card without the counts has `landmarks` and `labels`."""
        return cls(backbone=str(v["backbone"]),
                   decoder_channels=tuple(int(c) for c in v["decoder_channels"]),
                   num_landmarks=int(v.get("num_landmarks", landmarks)),
                   num_classes=int(v.get("num_classes", labels)),
                   presence_head=stored_bool(v.get("presence_head", False)))


@dataclass(frozen=True)
class Preprocessing:
    """The ingestion a frame needs before the network sees it (silr.stages.ingest's published
    construction)."""

    crop: int
    i0: float
    downsample: int
    intensity: str = INTENSITY_SCALING
    padding: str = PADDING

    def to_dict(self) -> dict[str, Any]:
        return {"crop": self.crop, "i0": self.i0, "downsample": self.downsample,
                "intensity": self.intensity, "padding": self.padding}

    @classmethod
    def read(cls, v: Any) -> Preprocessing:
        return cls(crop=int(v["crop"]), i0=float(v["i0"]), downsample=int(v["downsample"]),
                   intensity=str(v.get("intensity", INTENSITY_SCALING)),
                   padding=str(v.get("padding", PADDING)))


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _floats(value: Any) -> tuple[float, ...]:
    return tuple(float(c) for c in value)


@dataclass(frozen=True)
class HeatmapSpec:
    """The codec's settings (silr.model.codec.HeatmapCodec); cards older than the presence rules
    decode with the threshold rule and no learned presence."""

    sigma: float
    presence_threshold: float
    refine: str = "none"
    stride: int = 1
    kind: str = "logit"
    presence: str = "threshold"
    presence_source: str | None = None
    calibration: tuple[float, float] = (1.0, 0.0)
    template_ncc: float = TEMPLATE_NCC
    template_window: float = TEMPLATE_WINDOW_PX
    segmentation_trained: bool = True
    # The fold's shape prior (the `shape` presence rule); None in cards from before it.
    shape_prior: ShapePrior | None = None

    def to_dict(self) -> dict[str, Any]:
        spec = {"sigma": self.sigma, "presence_threshold": self.presence_threshold,
                "refine": self.refine, "stride": self.stride, "kind": self.kind,
                "presence": self.presence, "presence_source": self.presence_source,
                "calibration": list(self.calibration), "template_ncc": self.template_ncc,
                "template_window": self.template_window,
                "segmentation_trained": self.segmentation_trained}
        if self.shape_prior is not None:  # only then: older cards keep their bytes
            spec["shape_prior"] = self.shape_prior.to_dict()
        return spec

    @classmethod
    def of(cls, codec: HeatmapCodec) -> HeatmapSpec:
        return cls(sigma=codec.sigma, presence_threshold=codec.presence_threshold,
                   refine=codec.refine, stride=codec.stride, kind=codec.kind,
                   presence=codec.presence, presence_source=codec.presence_source,
                   calibration=codec.calibration, template_ncc=codec.template_ncc,
                   template_window=codec.template_window,
                   segmentation_trained=codec.segmentation_trained,
                   shape_prior=codec.shape_prior)

    @classmethod
    def read(cls, v: Any) -> HeatmapSpec:
        """The stored form; a key an older card lacks keeps the field's default."""
        sigma, presence_threshold = float(v["sigma"]), float(v["presence_threshold"])
        given = {key: read(v[key]) for key, read in _HEATMAP_OPTIONAL_KEYS if key in v}
        return cls(sigma=sigma, presence_threshold=presence_threshold, **given)


# The heatmap keys a card may lack (cards older than the key), each with its reader, in the order
# they are read.
_HEATMAP_OPTIONAL_KEYS: tuple[tuple[str, Callable[[Any], Any]], ...] = (
    ("refine", str), ("stride", int), ("kind", str), ("presence", str),
    ("presence_source", _optional_str), ("calibration", _floats), ("template_ncc", float),
    ("template_window", float), ("segmentation_trained", stored_bool),
    ("shape_prior", ShapePrior.read),
)


@dataclass(frozen=True)
class LossSpec:
    name: str
    weights: Mapping[str, float]
    visibility_mode: str
    detach_segmentation: bool
    kl_reduction: str
    # The named loss's options (silr.core.choices.LOSS_OPTION_DEFAULTS).
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "weights": dict(self.weights),
                "visibility_mode": self.visibility_mode,
                "detach_segmentation": self.detach_segmentation, "kl_reduction": self.kl_reduction,
                "options": dict(self.options)}

    @classmethod
    def read(cls, v: Any) -> LossSpec:
        """The stored form; a setting a card lacks is the default of params
        (silr.core.choices)."""
        return cls(
            name=str(v["name"]), weights={str(k): float(w) for k, w in v["weights"].items()},
            visibility_mode=str(v.get("visibility_mode", DEFAULT_VISIBILITY_MODE)),
            detach_segmentation=bool(v.get("detach_segmentation", DEFAULT_DETACH_SEGMENTATION)),
            kl_reduction=str(v.get("kl_reduction", DEFAULT_KL_REDUCTION)),
            # cards before per-loss options held the mse foreground weight at this level
            options=dict(v.get("options", {"mse_foreground_weight": float(
                v.get("mse_foreground_weight", MSE_FOREGROUND_WEIGHT))})))
