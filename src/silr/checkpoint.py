"""Model checkpoints and their model cards.

A silr checkpoint is a `torch.save`d dict:

    {"format": "silr-checkpoint", "format_version": 1,
     "card": {...},            # plain Python values only: what the model is and how it was made
     "model_state": {...},     # the network's state dict (CPU tensors)
     ...extra}                 # e.g. "resume" in last.pt (optimiser, RNG states, epoch, ...)

The card says everything a reader needs to use the model without params.yaml: landmark
and label names, the network configuration, the input and frame sizes and the padding
offset, the ingestion preprocessing, the heatmap codec's parameters, the loss it was
trained with, the fold, the params and data it depends on (with their hashes), and the
validation score and epoch of the weights. `load_model` rebuilds the network from the
card alone, so evaluation and inference never need the training params.

Checkpoints are read with `torch.load(weights_only=True)`: a foreign pickle cannot run
code here, and every value we store is a tensor or a plain container of plain values.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch

from silr import __version__, coords
from silr.anatomy import FRAME_SIZE_PX, LABEL_NAMES, LANDMARK_NAMES, NETWORK_INPUT_PX, NUM_CLASSES, NUM_LANDMARKS
from silr.errors import CheckpointError, SilrError
from silr.io import atomic_path
from silr.params import Params, stable_hash, to_dict

CHECKPOINT_FORMAT = "silr-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1
INTENSITY_SCALING = "per-frame min-max to [0, 1]"
PADDING = "zero padding, centred, frame -> input_size (no resizing)"

# Card keys every reader may rely on.
REQUIRED_CARD_KEYS = (
    "format", "format_version", "landmark_names", "label_names", "model", "input_size", "frame_size",
    "pad_offset", "preprocessing", "heatmap",
)


def build_card(
    params: Params,
    *,
    loss_name: str,
    fold: int,
    data_hash: str,
    params_hash: str,
    val_score_px: float | None,
    epoch: int,
    data_source: str = "",
) -> dict[str, Any]:
    """The model card of a network trained with `params` on one fold (plain values only)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "silr_version": __version__,
        "landmark_names": list(LANDMARK_NAMES),
        "label_names": [LABEL_NAMES[value] for value in sorted(LABEL_NAMES)],
        "model": {
            "backbone": params.model.backbone,
            "decoder_channels": list(params.model.decoder_channels),
            "num_landmarks": NUM_LANDMARKS,
            "num_classes": NUM_CLASSES,
        },
        "input_size": NETWORK_INPUT_PX,
        "frame_size": FRAME_SIZE_PX,
        "pad_offset": coords.pad_offset(FRAME_SIZE_PX, NETWORK_INPUT_PX),
        "preprocessing": {
            "crop": params.data.crop,
            "i0": params.data.i0,
            "downsample": params.data.downsample,
            "intensity": INTENSITY_SCALING,
            "padding": PADDING,
        },
        "heatmap": {key: value for key, value in codec_for_run(params, loss_name).config().items()
                    if key not in ("size", "frame")},
        "loss": {"name": loss_name, "weights": params.loss_weights(loss_name),
                 "visibility_mode": params.losses.visibility_mode,
                 "detach_segmentation": params.losses.detach_segmentation,
                 "kl_reduction": params.losses.kl_reduction,
                 "mse_foreground_weight": params.losses.mse_foreground_weight},
        "fold": fold,
        "data_source": data_source,
        "params": run_params(params, loss_name),
        "params_hash": params_hash,
        "data_hash": data_hash,
        "val_score_px": val_score_px,
        "epoch": epoch,
    }


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
            "mse_foreground_weight": params.losses.mse_foreground_weight,
        },
        # The ingestion values are part of what the model expects as input.
        "data": {"crop": params.data.crop, "i0": params.data.i0, "downsample": params.data.downsample},
    }


def params_hash_of(params: Params, loss_name: str) -> str:
    return stable_hash(run_params(params, loss_name))


def save_checkpoint(path: str | Path, model: torch.nn.Module | Mapping[str, torch.Tensor], card: Mapping[str, Any],
                    **extra: Any) -> None:
    """Write model weights (a network or its state dict) + card (+ `extra` entries) to `path` atomically."""
    missing = [key for key in REQUIRED_CARD_KEYS if key not in card]
    if missing:
        raise ValueError(f"model card lacks {', '.join(missing)}")
    reserved = {"format", "format_version", "card", "model_state"} & set(extra)
    if reserved:
        raise ValueError(f"extra checkpoint entries may not be named {sorted(reserved)}")
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "card": dict(card),
        "model_state": model_state_cpu(model) if isinstance(model, torch.nn.Module) else dict(model),
        **extra,
    }
    # Through a file object, not the path: given a path, torch.save names the archive's root
    # folder after the (random) temporary file, so equal checkpoints would differ in bytes and
    # DVC would see a changed output on every rerun.
    with atomic_path(path) as tmp, open(tmp, "wb") as stream:
        torch.save(payload, stream)


def model_state_cpu(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as contiguous CPU tensors (a channels_last CUDA model saves like any other)."""
    return {key: value.detach().to("cpu").contiguous().clone() for key, value in model.state_dict().items()}


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw checkpoint dict, checked to be a silr checkpoint of a version we can read."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, ValueError,
            OSError, AttributeError, ImportError, TypeError) as exc:
        # torch's own messages run to paragraphs; the exception type is enough to tell them apart.
        raise CheckpointError(f"{path}: not a readable silr checkpoint (corrupt, truncated, not a torch "
                              f"file or holding foreign objects: {type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path}: not a silr checkpoint (expected format {CHECKPOINT_FORMAT!r}, "
                              f"found {found!r})")
    version = payload.get("format_version")
    if version != CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {version!r} is not supported "
                              f"(this silr {__version__} reads version {CHECKPOINT_FORMAT_VERSION})")
    card, state = payload.get("card"), payload.get("model_state")
    if not isinstance(card, dict) or not isinstance(state, dict):
        raise CheckpointError(f"{path}: silr checkpoint lacks its model card or weights (incomplete file)")
    missing = [key for key in REQUIRED_CARD_KEYS if key not in card]
    if missing:
        raise CheckpointError(f"{path}: model card lacks {', '.join(missing)}")
    return payload


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """(network in eval mode on `device`, model card) from a silr checkpoint; CheckpointError if unusable."""
    payload = read_checkpoint(path)
    card = payload["card"]
    model = model_from_card(card, path)
    try:
        model.load_state_dict(payload["model_state"], strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise CheckpointError(f"{path}: weights do not fit the network its card describes "
                              f"({first[1].strip() if len(first) > 1 else first[0][:160]})") from None
    return model.to(device).eval(), card


def model_from_card(card: Mapping[str, Any], path: str | Path = "<card>") -> torch.nn.Module:
    """An untrained network of the configuration the card records."""
    from silr.model import build_model  # heavy (timm); only needed when a model is built

    config = card["model"]
    try:
        backbone = str(config["backbone"])
        decoder_channels = tuple(int(c) for c in config["decoder_channels"])
        num_landmarks = int(config.get("num_landmarks", len(card["landmark_names"])))
        num_classes = int(config.get("num_classes", len(card["label_names"])))
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{path}: model card 'model' must hold backbone and decoder_channels, "
                              f"got {config!r}") from None
    try:
        return build_model(backbone, decoder_channels, num_landmarks=num_landmarks, num_classes=num_classes,
                           init_checkpoint=None)
    except SilrError as exc:
        raise CheckpointError(f"{path}: cannot build the network its card describes: {exc}") from None


def codec_for_run(params: Params, loss_name: str):
    """The HeatmapCodec a training run of `loss_name` uses: the heatmap params, the model's
    heatmap stride, the frame inside the padded input, and what the loss makes the maps mean."""
    from silr.codec import HeatmapCodec
    from silr.losses import heatmap_kind
    from silr.model import heatmap_stride

    return HeatmapCodec.from_params(params.heatmap, (NETWORK_INPUT_PX, NETWORK_INPUT_PX),
                                    stride=heatmap_stride(params.model.decoder_channels),
                                    frame=(FRAME_SIZE_PX, FRAME_SIZE_PX),
                                    kind=heatmap_kind(params.loss_weights(loss_name), f"losses.{loss_name}"))


def codec_from_card(card: Mapping[str, Any]):
    """The HeatmapCodec the model was trained with (sizes, sigma, presence rule, refinement, stride).

    Cards written before heatmap strides and kinds existed decode at stride 1 as logits."""
    from silr.codec import HeatmapCodec

    heatmap = card["heatmap"]
    size, frame = int(card["input_size"]), int(card["frame_size"])
    try:
        return HeatmapCodec(size=(size, size), sigma=float(heatmap["sigma"]),
                            presence_threshold=float(heatmap["presence_threshold"]),
                            refine=heatmap.get("refine", "none"), stride=int(heatmap.get("stride", 1)),
                            frame=(frame, frame), kind=str(heatmap.get("kind", "logit")))
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"model card 'heatmap' must hold sigma and presence_threshold, "
                              f"got {heatmap!r}") from None
    except SilrError as exc:
        raise CheckpointError(f"model card describes a heatmap codec that cannot exist: {exc}") from None
