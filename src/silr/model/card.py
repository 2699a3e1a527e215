"""The model card: what a trained network is and how it was made, as one typed object.

A card travels inside every checkpoint (silr.model.checkpoint) as plain values, so a model can
be used without params.yaml: landmark and label names, the network configuration, the
input and frame sizes and the padding offset, the ingestion preprocessing the network
expects, the heatmap codec, the loss it was trained with, the fold, the params and data
it depends on (with hashes), and the validation score and epoch of its weights.

`ModelCard.for_run` writes one from a training run's params; `ModelCard.from_dict` is the
one reader (every check of a stored card lives there); `to_dict` gives back the plain
form, key for key as stored, so that equal runs give byte-equal checkpoints.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from silr import __version__
from silr.core import coords
from silr.core.anatomy import FRAME_SIZE_PX, LABEL_NAMES, LANDMARK_BONE, LANDMARK_NAMES, NETWORK_INPUT_PX, NUM_CLASSES
from silr.core.errors import CheckpointError, SilrError, quoted
from silr.core.params import Params, stable_hash, to_dict

CHECKPOINT_FORMAT = "silr-checkpoint"
# heatmap.template_window is given in pixels of this downsampling factor (the authors' 8x files).
TEMPLATE_REFERENCE_DOWNSAMPLE = 8
CHECKPOINT_FORMAT_VERSION = 1
INTENSITY_SCALING = "per-frame min-max to [0, 1]"
PADDING = "zero padding, centred, frame -> input_size (no resizing)"

# Card keys every reader may rely on.
REQUIRED_CARD_KEYS = (
    "format", "format_version", "landmark_names", "label_names", "model", "input_size", "frame_size",
    "pad_offset", "preprocessing", "heatmap",
)
# What models must share to be averaged into one prediction (silr.inference.predictor.Ensemble).
ENSEMBLE_FIELDS = ("landmark_names", "label_names", "input_size", "frame_size", "pad_offset", "preprocessing")
ENSEMBLE_DECODE_FIELDS = ("presence_threshold", "refine", "stride", "kind", "presence", "template_ncc",
                          "template_window")


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


@dataclass(frozen=True)
class Preprocessing:
    """The ingestion a frame needs before the network sees it (silr.stages.ingest's published construction)."""

    crop: int
    i0: float
    downsample: int
    intensity: str = INTENSITY_SCALING
    padding: str = PADDING

    def to_dict(self) -> dict[str, Any]:
        return {"crop": self.crop, "i0": self.i0, "downsample": self.downsample, "intensity": self.intensity,
                "padding": self.padding}


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
    template_ncc: float = 0.9
    template_window: float = 25.0
    segmentation_trained: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"sigma": self.sigma, "presence_threshold": self.presence_threshold, "refine": self.refine,
                "stride": self.stride, "kind": self.kind, "presence": self.presence,
                "presence_source": self.presence_source, "calibration": list(self.calibration),
                "template_ncc": self.template_ncc, "template_window": self.template_window,
                "segmentation_trained": self.segmentation_trained}

    @classmethod
    def of(cls, codec) -> HeatmapSpec:
        return cls(sigma=codec.sigma, presence_threshold=codec.presence_threshold, refine=codec.refine,
                   stride=codec.stride, kind=codec.kind, presence=codec.presence,
                   presence_source=codec.presence_source, calibration=codec.calibration,
                   template_ncc=codec.template_ncc, template_window=codec.template_window,
                   segmentation_trained=codec.segmentation_trained)


@dataclass(frozen=True)
class LossSpec:
    name: str
    weights: Mapping[str, float]
    visibility_mode: str
    detach_segmentation: bool
    kl_reduction: str
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # silr.core.params.LOSS_OPTION_DEFAULTS

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "weights": dict(self.weights), "visibility_mode": self.visibility_mode,
                "detach_segmentation": self.detach_segmentation, "kl_reduction": self.kl_reduction,
                "options": dict(self.options)}


@dataclass(frozen=True)
class ModelCard:
    landmark_names: tuple[str, ...]
    label_names: tuple[str, ...]
    network: NetworkSpec
    input_size: int
    frame_size: int
    pad_offset: int
    preprocessing: Preprocessing
    heatmap: HeatmapSpec
    loss: LossSpec | None = None
    fold: int | None = None
    data_source: str = ""
    params: Mapping[str, Any] | None = None
    params_hash: str = ""
    data_hash: str = ""
    val_score_px: float | None = None
    epoch: int = 0
    silr_version: str = __version__
    # Whether the training run that wrote these weights completed (None: a card from before the
    # flag existed, taken as finished), and the epochs it was to train.
    finished: bool | None = None
    epochs_planned: int = 0

    # -------------------------------------------------------------- writing

    @classmethod
    def for_run(cls, params: Params, *, loss_name: str, fold: int, data_hash: str, params_hash: str,
                val_score_px: float | None, epoch: int, data_source: str = "") -> ModelCard:
        """The card of a network trained with `params` on one fold."""
        codec = codec_for_run(params, loss_name)
        losses = params.losses
        return cls(
            landmark_names=tuple(LANDMARK_NAMES),
            label_names=tuple(LABEL_NAMES[value] for value in sorted(LABEL_NAMES)),
            network=NetworkSpec(backbone=params.model.backbone,
                                decoder_channels=tuple(params.model.decoder_channels),
                                num_landmarks=len(LANDMARK_NAMES), num_classes=NUM_CLASSES,
                                presence_head=codec.presence_source is not None),
            input_size=NETWORK_INPUT_PX,
            frame_size=FRAME_SIZE_PX,
            pad_offset=coords.pad_offset(FRAME_SIZE_PX, NETWORK_INPUT_PX),
            preprocessing=Preprocessing(crop=params.data.crop, i0=params.data.i0,
                                        downsample=params.data.downsample),
            heatmap=HeatmapSpec.of(codec),
            loss=LossSpec(name=loss_name, weights=params.loss_weights(loss_name),
                          visibility_mode=losses.visibility_mode, detach_segmentation=losses.detach_segmentation,
                          kl_reduction=losses.kl_reduction, options=params.loss_options(loss_name)),
            fold=fold,
            data_source=data_source,
            params=run_params(params, loss_name),
            params_hash=params_hash,
            data_hash=data_hash,
            val_score_px=val_score_px,
            epoch=epoch,
        )

    def with_run_state(self, *, finished: bool, epochs_planned: int) -> ModelCard:
        return dataclasses.replace(self, finished=bool(finished), epochs_planned=int(epochs_planned))

    def unfinished_note(self) -> str | None:
        """None for a completed run's weights; else what a reader must know about them."""
        if self.finished is None or self.finished:
            return None
        return (f"is from an unfinished training run (best of the epochs done, epoch {self.epoch} of "
                f"{self.epochs_planned} planned)")

    def with_calibration(self, calibration: tuple[float, float]) -> ModelCard:
        """The same card with the learned presence's Platt scaling (a, b)."""
        return dataclasses.replace(self, heatmap=dataclasses.replace(
            self.heatmap, calibration=(float(calibration[0]), float(calibration[1]))))

    def to_dict(self) -> dict[str, Any]:
        """The stored form (plain values; the key order is part of the checkpoint's bytes)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_FORMAT_VERSION,
            "silr_version": self.silr_version,
            "landmark_names": list(self.landmark_names),
            "label_names": list(self.label_names),
            "model": self.network.to_dict(),
            "input_size": self.input_size,
            "frame_size": self.frame_size,
            "pad_offset": self.pad_offset,
            "preprocessing": self.preprocessing.to_dict(),
            "heatmap": self.heatmap.to_dict(),
            "loss": self.loss.to_dict() if self.loss is not None else None,
            "fold": self.fold,
            "data_source": self.data_source,
            "params": self.params,
            "params_hash": self.params_hash,
            "data_hash": self.data_hash,
            "val_score_px": self.val_score_px,
            "epoch": self.epoch,
            **({} if self.finished is None else {"finished": self.finished, "epochs_planned": self.epochs_planned}),
        }

    # -------------------------------------------------------------- reading

    @classmethod
    def from_dict(cls, raw: Any, path: Any = "<card>") -> ModelCard:
        """The one reader of a stored card; CheckpointError naming `path` and the field if unusable.

        Cards written before heatmap strides and kinds existed decode at stride 1 as logits."""
        if not isinstance(raw, Mapping):
            raise CheckpointError(f"{path}: model card must be a mapping, got {type(raw).__name__}")
        missing = [key for key in REQUIRED_CARD_KEYS if key not in raw]
        if missing:
            raise CheckpointError(f"{path}: model card lacks {', '.join(missing)}")

        def field(name: str, build):
            try:
                return build(raw[name])
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                detail = f"missing {exc}" if isinstance(exc, KeyError) else type(exc).__name__
                raise CheckpointError(f"{path}: model card field {name!r} is unusable ({detail}): "
                                      f"{quoted(raw.get(name))}") from None

        landmark_names = field("landmark_names", lambda v: tuple(str(n) for n in v))
        unknown = [name for name in landmark_names if name not in LANDMARK_BONE]
        if unknown:
            raise CheckpointError(f"{path}: model card names unknown landmarks {unknown} "
                                  f"(expected names from {', '.join(LANDMARK_BONE)})")
        label_names = field("label_names", lambda v: tuple(str(n) for n in v))
        if len(label_names) != NUM_CLASSES:
            raise CheckpointError(f"{path}: model card has {len(label_names)} labels, expected {NUM_CLASSES}")
        network = field("model", lambda v: NetworkSpec(
            backbone=str(v["backbone"]), decoder_channels=tuple(int(c) for c in v["decoder_channels"]),
            num_landmarks=int(v.get("num_landmarks", len(landmark_names))),
            num_classes=int(v.get("num_classes", len(label_names))),
            presence_head=_as_bool(v.get("presence_head", False))))
        _check_network_bounds(path, network, len(landmark_names), len(label_names))
        preprocessing = field("preprocessing", lambda v: Preprocessing(
            crop=int(v["crop"]), i0=float(v["i0"]), downsample=int(v["downsample"]),
            intensity=str(v.get("intensity", INTENSITY_SCALING)), padding=str(v.get("padding", PADDING))))
        heatmap = field("heatmap", lambda v: HeatmapSpec(
            sigma=float(v["sigma"]), presence_threshold=float(v["presence_threshold"]),
            refine=str(v.get("refine", "none")), stride=int(v.get("stride", 1)), kind=str(v.get("kind", "logit")),
            presence=str(v.get("presence", "threshold")),
            presence_source=None if v.get("presence_source") is None else str(v["presence_source"]),
            calibration=tuple(float(c) for c in v.get("calibration", (1.0, 0.0))),
            template_ncc=float(v.get("template_ncc", 0.9)), template_window=float(v.get("template_window", 25.0)),
            segmentation_trained=_as_bool(v.get("segmentation_trained", True))))
        loss = None
        if raw.get("loss") is not None:
            loss = field("loss", lambda v: LossSpec(
                name=str(v["name"]), weights={str(k): float(w) for k, w in v["weights"].items()},
                visibility_mode=str(v.get("visibility_mode", "soft")),
                detach_segmentation=bool(v.get("detach_segmentation", True)),
                kl_reduction=str(v.get("kl_reduction", "landmark")),
                # cards before per-loss options held the mse foreground weight at this level
                options=dict(v.get("options", {"mse_foreground_weight": float(v.get("mse_foreground_weight", 0.0))}))))
        score = raw.get("val_score_px")
        card = cls(
            landmark_names=landmark_names,
            label_names=label_names,
            network=network,
            input_size=field("input_size", int),
            frame_size=field("frame_size", int),
            pad_offset=field("pad_offset", int),
            preprocessing=preprocessing,
            heatmap=heatmap,
            loss=loss,
            fold=None if raw.get("fold") is None else field("fold", int),
            data_source=str(raw.get("data_source", "")),
            params=raw.get("params"),
            params_hash=str(raw.get("params_hash", "")),
            data_hash=str(raw.get("data_hash", "")),
            val_score_px=None if score is None else field("val_score_px", float),
            epoch=field("epoch", int) if "epoch" in raw else 0,
            silr_version=str(raw.get("silr_version", "")),
            finished=None if raw.get("finished") is None else field("finished", _as_bool),
            epochs_planned=field("epochs_planned", int) if "epochs_planned" in raw else 0,
        )
        card.codec(path)  # a codec that cannot exist fails here, naming the file
        if (card.heatmap.presence_source is not None) != card.network.presence_head:
            raise CheckpointError(f"{path}: model card's heatmap presence_source {card.heatmap.presence_source!r} "
                                  f"does not fit its network (presence_head {card.network.presence_head})")
        return card

    # -------------------------------------------------------------- use

    def codec(self, path: Any = "<card>"):
        """The HeatmapCodec the model was trained with (sizes, sigma, presence rule, refinement, stride)."""
        from silr.model.codec import HeatmapCodec

        try:
            spec = self.heatmap
            return HeatmapCodec(size=(self.input_size, self.input_size), sigma=spec.sigma,
                                presence_threshold=spec.presence_threshold, refine=spec.refine,
                                stride=spec.stride, frame=(self.frame_size, self.frame_size), kind=spec.kind,
                                presence=spec.presence, presence_source=spec.presence_source,
                                calibration=spec.calibration, template_ncc=spec.template_ncc,
                                template_window=spec.template_window,
                                segmentation_trained=spec.segmentation_trained)
        except SilrError as exc:
            raise CheckpointError(f"{path}: model card describes a heatmap codec that cannot exist: {exc}") from None

    def build_network(self, path: Any = "<card>"):
        """An untrained network of the configuration the card records."""
        from silr.model.network import build_model  # heavy (timm); only needed when a model is built

        spec = self.network
        try:
            return build_model(spec.backbone, spec.decoder_channels, num_landmarks=spec.num_landmarks,
                               num_classes=spec.num_classes, init_checkpoint=None,
                               presence_head=spec.presence_head)
        except SilrError as exc:
            raise CheckpointError(f"{path}: cannot build the network its card describes: {exc}") from None
        except (MemoryError, RuntimeError, ValueError, TypeError) as exc:  # timm's or torch's own refusal
            raise CheckpointError(f"{path}: cannot build the network its card describes "
                                  f"({type(exc).__name__}: {quoted(str(exc))})") from None

    def ensemble_differences(self, other: ModelCard) -> list[tuple[str, Any, Any]]:
        """(field, mine, theirs) for every field two models must share to be averaged."""
        mine, theirs = self.to_dict(), other.to_dict()
        found = [(key, mine[key], theirs[key]) for key in ENSEMBLE_FIELDS if mine[key] != theirs[key]]
        found += [(f"heatmap.{key}", mine["heatmap"][key], theirs["heatmap"][key])
                  for key in ENSEMBLE_DECODE_FIELDS if mine["heatmap"][key] != theirs["heatmap"][key]]
        return found

    def describe(self, path: Any) -> str:
        """The card as indented `key: value` lines."""
        lines = [f"model card of {path}"]
        _format_mapping(self.to_dict(), lines, indent=1)
        return "\n".join(lines)


# The widest decoder a card may ask for (params.MAX_CHANNELS): a hostile card asking for 1e8
# channels or 1e9 landmarks must fail here, before the network is built.
MAX_CARD_CHANNELS = 4096


def _check_network_bounds(path: Any, network: NetworkSpec, landmarks: int, labels: int) -> None:
    channels = network.decoder_channels
    if len(channels) > 2 or any(not 1 <= c <= MAX_CARD_CHANNELS for c in channels):
        raise CheckpointError(f"{path}: model card field 'model.decoder_channels' must be at most 2 counts in "
                              f"1..{MAX_CARD_CHANNELS}, got {quoted(list(channels))}")
    if network.num_landmarks != landmarks or network.num_classes != labels:
        raise CheckpointError(f"{path}: model card's network has {quoted(network.num_landmarks)} landmarks and "
                              f"{quoted(network.num_classes)} classes, but names {landmarks} and {labels}")


def _as_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {value!r}")
    return value


def _format_mapping(mapping: Mapping[str, Any], lines: list[str], indent: int) -> None:
    pad = "  " * indent
    for key, value in mapping.items():
        if isinstance(value, Mapping) and value:
            lines.append(f"{pad}{key}:")
            _format_mapping(value, lines, indent + 1)
        elif isinstance(value, (list, tuple)):
            lines.append(f"{pad}{key}: {', '.join(str(v) for v in value) if value else '[]'}")
        else:
            lines.append(f"{pad}{key}: {value}")


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
        "data": {"crop": params.data.crop, "i0": params.data.i0, "downsample": params.data.downsample},
    }


def params_hash_of(params: Params, loss_name: str) -> str:
    return stable_hash(run_params(params, loss_name))


def codec_for_run(params: Params, loss_name: str):
    """The HeatmapCodec a training run of `loss_name` uses: the heatmap params, the model's
    heatmap stride, the frame inside the padded input, and what the loss makes the maps mean."""
    from silr.model.codec import HeatmapCodec
    from silr.model.losses import heatmap_kind, presence_source, trains_segmentation
    from silr.model.network import heatmap_stride

    weights, key = params.loss_weights(loss_name), f"losses.{loss_name}"
    source = presence_source(weights, key)
    rule = params.heatmap.presence
    if rule == "auto":
        rule = "learned" if source is not None else "template"
    heatmap = params.heatmap
    # A named loss may carry its own target width (the field's MSE: 2 heatmap pixels at stride 4).
    sigma = params.loss_options(loss_name)["sigma"] or heatmap.sigma
    return HeatmapCodec(size=(NETWORK_INPUT_PX, NETWORK_INPUT_PX), sigma=sigma,
                        presence_threshold=heatmap.presence_threshold, refine=heatmap.refine,
                        stride=heatmap_stride(params.model.decoder_channels), frame=(FRAME_SIZE_PX, FRAME_SIZE_PX),
                        kind=heatmap_kind(weights, key), presence=rule, presence_source=source,
                        template_ncc=heatmap.template_ncc,
                        # The authors' window is in 8x pixels: the same anatomy spans 8 / f times as many at f.
                        template_window=heatmap.template_window * TEMPLATE_REFERENCE_DOWNSAMPLE
                        / params.data.downsample,
                        segmentation_trained=trains_segmentation(weights))
