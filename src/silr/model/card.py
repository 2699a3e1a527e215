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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from silr import __version__
from silr.core import coords
from silr.core.anatomy import (
    FRAME_SIZE_PX,
    LABEL_NAMES,
    LANDMARK_BONE,
    LANDMARK_NAMES,
    NETWORK_INPUT_PX,
    NUM_CLASSES,
)
from silr.core.errors import CheckpointError, SilrError, quoted
from silr.core.params import Params
from silr.core.params_checks import MAX_CHANNELS
from silr.model.card_specs import (
    INTENSITY_SCALING,
    PADDING,
    HeatmapSpec,
    LossSpec,
    NetworkSpec,
    Preprocessing,
    stored_bool,
)
from silr.model.codec import HeatmapCodec
from silr.model.network import SILRNet, build_model
from silr.model.run_config import codec_for_run, run_params

# The card's parts are silr.model.card_specs', re-exported for the card's readers.
__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_FORMAT_VERSION",
    "ENSEMBLE_DECODE_FIELDS",
    "ENSEMBLE_FIELDS",
    "INTENSITY_SCALING",
    "PADDING",
    "REQUIRED_CARD_KEYS",
    "HeatmapSpec",
    "LossSpec",
    "ModelCard",
    "NetworkSpec",
    "Preprocessing",
]

CHECKPOINT_FORMAT = "silr-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1

# Card keys every reader may rely on.
REQUIRED_CARD_KEYS = (
    "format", "format_version", "landmark_names", "label_names", "model", "input_size",
    "frame_size", "pad_offset", "preprocessing", "heatmap",
)
# What models must share to be averaged into one prediction (silr.inference.predictor.Ensemble).
ENSEMBLE_FIELDS = ("landmark_names", "label_names", "input_size", "frame_size", "pad_offset",
                   "preprocessing")
ENSEMBLE_DECODE_FIELDS = ("presence_threshold", "refine", "stride", "kind", "presence",
                          "template_ncc", "template_window")


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
    def for_run(cls, params: Params, *, loss_name: str, fold: int, data_hash: str,
                params_hash: str, val_score_px: float | None, epoch: int,
                data_source: str = "", codec: HeatmapCodec | None = None) -> ModelCard:
        """The card of a network trained with `params` on one fold; `codec` the run's (with its
        fold's shape prior), by default `codec_for_run` without one."""
        codec = codec if codec is not None else codec_for_run(params, loss_name)
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
                          visibility_mode=losses.visibility_mode,
                          detach_segmentation=losses.detach_segmentation,
                          kl_reduction=losses.kl_reduction,
                          options=params.loss_options(loss_name)),
            fold=fold,
            data_source=data_source,
            params=run_params(params, loss_name),
            params_hash=params_hash,
            data_hash=data_hash,
            val_score_px=val_score_px,
            epoch=epoch,
        )

    def with_run_state(self, *, finished: bool, epochs_planned: int) -> ModelCard:
        return dataclasses.replace(self, finished=bool(finished),
                                   epochs_planned=int(epochs_planned))

    def unfinished_note(self) -> str | None:
        """None for a completed run's weights; else what a reader must know about them."""
        if self.finished is None or self.finished:
            return None
        return (f"is from an unfinished training run (best of the epochs done, epoch {self.epoch} "
                f"of {self.epochs_planned} planned)")

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
            **({} if self.finished is None
               else {"finished": self.finished, "epochs_planned": self.epochs_planned}),
        }

    # -------------------------------------------------------------- reading

    @classmethod
    def from_dict(cls, raw: Any, path: Any = "<card>") -> ModelCard:
        """The one reader of a stored card; CheckpointError naming `path` and the field if unusable.

        Cards written before heatmap strides and kinds existed decode at stride 1 as logits."""
        _check_card_keys(raw, path)

        def field(name: str, build: Callable[[Any], Any]) -> Any:
            return _card_field(raw, path, name, build)

        landmark_names = field("landmark_names", _names)
        unknown = [name for name in landmark_names if name not in LANDMARK_BONE]
        if unknown:
            raise CheckpointError(f"{path}: model card names unknown landmarks {unknown} "
                                  f"(expected names from {', '.join(LANDMARK_BONE)})")
        label_names = field("label_names", _names)
        if len(label_names) != NUM_CLASSES:
            raise CheckpointError(f"{path}: model card has {len(label_names)} labels, "
                                  f"expected {NUM_CLASSES}")
        network = field("model", lambda v: NetworkSpec.read(v, len(landmark_names),
                                                           len(label_names)))
        _check_network_bounds(path, network, len(landmark_names), len(label_names))
        preprocessing = field("preprocessing", Preprocessing.read)
        heatmap = field("heatmap", HeatmapSpec.read)
        loss = None if raw.get("loss") is None else field("loss", LossSpec.read)
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
            finished=None if raw.get("finished") is None else field("finished", stored_bool),
            epochs_planned=field("epochs_planned", int) if "epochs_planned" in raw else 0,
        )
        card.codec(path)  # a codec that cannot exist fails here, naming the file
        if (card.heatmap.presence_source is not None) != card.network.presence_head:
            raise CheckpointError(f"{path}: model card's heatmap presence_source "
                                  f"{card.heatmap.presence_source!r} does not fit its network "
                                  f"(presence_head {card.network.presence_head})")
        return card

    # -------------------------------------------------------------- use

    def codec(self, path: Any = "<card>") -> HeatmapCodec:
        """The HeatmapCodec the model was trained with (sizes, sigma, presence rule, refinement,
        stride)."""
        try:
            spec = self.heatmap
            return HeatmapCodec(size=(self.input_size, self.input_size), sigma=spec.sigma,
                                presence_threshold=spec.presence_threshold, refine=spec.refine,
                                stride=spec.stride, frame=(self.frame_size, self.frame_size),
                                kind=spec.kind, presence=spec.presence,
                                presence_source=spec.presence_source,
                                calibration=spec.calibration, template_ncc=spec.template_ncc,
                                template_window=spec.template_window,
                                segmentation_trained=spec.segmentation_trained,
                                shape_prior=spec.shape_prior)
        except SilrError as exc:
            raise CheckpointError(f"{path}: model card describes a heatmap codec that cannot "
                                  f"exist: {exc}") from None

    def build_network(self, path: Any = "<card>") -> SILRNet:
        """An untrained network of the configuration the card records (timm is imported only
        here, by silr.model.network.build_model)."""
        spec = self.network
        try:
            return build_model(spec.backbone, spec.decoder_channels,
                               num_landmarks=spec.num_landmarks, num_classes=spec.num_classes,
                               init_checkpoint=None, presence_head=spec.presence_head)
        except SilrError as exc:
            raise CheckpointError(f"{path}: cannot build the network its card describes: "
                                  f"{exc}") from None
        except (MemoryError, RuntimeError, ValueError, TypeError) as exc:
            # timm's or torch's own refusal
            raise CheckpointError(f"{path}: cannot build the network its card describes "
                                  f"({type(exc).__name__}: {quoted(str(exc))})") from None

    def ensemble_differences(self, other: ModelCard) -> list[tuple[str, Any, Any]]:
        """(field, mine, theirs) for every field two models must share to be averaged."""
        mine, theirs = self.to_dict(), other.to_dict()
        found = [(key, mine[key], theirs[key]) for key in ENSEMBLE_FIELDS
                 if mine[key] != theirs[key]]
        found += [(f"heatmap.{key}", mine["heatmap"][key], theirs["heatmap"][key])
                  for key in ENSEMBLE_DECODE_FIELDS
                  if mine["heatmap"][key] != theirs["heatmap"][key]]
        return found

    def describe(self, path: Any) -> str:
        """The card as indented `key: value` lines."""
        lines = [f"model card of {path}"]
        _format_mapping(self.to_dict(), lines, indent=1)
        return "\n".join(lines)


# The widest decoder a card may ask for (params' own bound): a hostile card asking for 1e8
# channels or 1e9 landmarks must fail here, before the network is built.
MAX_CARD_CHANNELS = MAX_CHANNELS


# ------------------------------------------------------------------ reading a stored card

def _check_card_keys(raw: Any, path: Any) -> None:
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{path}: model card must be a mapping, got {type(raw).__name__}")
    missing = [key for key in REQUIRED_CARD_KEYS if key not in raw]
    if missing:
        raise CheckpointError(f"{path}: model card lacks {', '.join(missing)}")


def _card_field(raw: Mapping[str, Any], path: Any, name: str, build: Callable[[Any], Any]) -> Any:
    """`build(raw[name])`; CheckpointError naming `path` and the field if that fails."""
    try:
        return build(raw[name])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        detail = f"missing {exc}" if isinstance(exc, KeyError) else type(exc).__name__
        raise CheckpointError(f"{path}: model card field {name!r} is unusable ({detail}): "
                              f"{quoted(raw.get(name))}") from None


def _names(value: Any) -> tuple[str, ...]:
    return tuple(str(n) for n in value)


def _check_network_bounds(path: Any, network: NetworkSpec, landmarks: int, labels: int) -> None:
    channels = network.decoder_channels
    if len(channels) > 2 or any(not 1 <= c <= MAX_CARD_CHANNELS for c in channels):
        raise CheckpointError(f"{path}: model card field 'model.decoder_channels' must be at most "
                              f"2 counts in 1..{MAX_CARD_CHANNELS}, got {quoted(list(channels))}")
    if network.num_landmarks != landmarks or network.num_classes != labels:
        raise CheckpointError(f"{path}: model card's network has {quoted(network.num_landmarks)} "
                              f"landmarks and {quoted(network.num_classes)} classes, but names "
                              f"{landmarks} and {labels}")


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

