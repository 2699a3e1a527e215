"""Model checkpoints and their model cards.

A silr checkpoint is a `torch.save`d dict:

    {"format": "silr-checkpoint", "format_version": 1,
     "card": {...},         # silr.model.card.ModelCard as plain values: what the model
                            # is and how it was made
     "model_state": {...},  # the network's state dict (CPU tensors)
     ...extra}              # e.g. "resume" in last.pt (optimiser, RNG states, epoch, ...)

The card (silr.model.card) says everything a reader needs to use the model without params.yaml.
`load_model` rebuilds the network from the card alone, so evaluation and inference never
need the training params.

Checkpoints are read with `torch.load(weights_only=True)`: a foreign pickle cannot run
code here, and every value we store is a tensor or a plain container of plain values.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from silr import __version__
from silr.core.device import NETWORK_MEMORY_FORMAT
from silr.core.errors import CheckpointError, quoted
from silr.core.io import atomic_path
from silr.model.card import CHECKPOINT_FORMAT, CHECKPOINT_FORMAT_VERSION, ModelCard

__all__ = ["fused_for_inference", "load_model", "model_state_cpu", "read_checkpoint",
           "save_checkpoint"]

# What torch.load raises for a file that is not a checkpoint it can read safely.
_UNREADABLE = (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, ValueError,
               MemoryError, OSError, AttributeError, ImportError, TypeError, IndexError, KeyError,
               RecursionError)


def save_checkpoint(path: str | Path, model: torch.nn.Module | Mapping[str, torch.Tensor],
                    card: ModelCard, **extra: Any) -> None:
    """Write model weights (a network or its state dict) + card (+ `extra` entries) to `path`
    atomically."""
    if not isinstance(card, ModelCard):
        raise TypeError(f"card must be a silr.model.card.ModelCard, got {type(card).__name__}")
    reserved = {"format", "format_version", "card", "model_state"} & set(extra)
    if reserved:
        raise ValueError(f"extra checkpoint entries may not be named {sorted(reserved)}")
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "card": card.to_dict(),
        "model_state": (model_state_cpu(model) if isinstance(model, torch.nn.Module)
                        else dict(model)),
        **extra,
    }
    # Through a file object, not the path: given a path, torch.save names the archive's root
    # folder after the (random) temporary file, so equal checkpoints would differ in bytes and
    # DVC would see a changed output on every rerun.
    with atomic_path(path) as tmp, open(tmp, "wb") as stream:
        torch.save(payload, stream)


def model_state_cpu(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as contiguous CPU tensors (a channels_last CUDA model saves like any
    other)."""
    return {key: value.detach().to("cpu").contiguous().clone()
            for key, value in model.state_dict().items()}


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict, checked to be a silr checkpoint of a version we can read; its "card"
    is read into a `ModelCard` (CheckpointError naming the file and field if it is unusable)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except _UNREADABLE as exc:
        # torch's own messages run to paragraphs; the exception type is enough to tell them apart.
        kind = type(exc).__name__
        raise CheckpointError(f"{path}: not a readable silr checkpoint (corrupt, truncated, not a "
                              f"torch file or holding foreign objects: {kind})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path}: not a silr checkpoint (expected format "
                              f"{CHECKPOINT_FORMAT!r}, found {found!r})")
    version = payload.get("format_version")
    if version != CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {version!r} is not supported "
                              f"(this silr {__version__} reads version "
                              f"{CHECKPOINT_FORMAT_VERSION})")
    card, state = payload.get("card"), payload.get("model_state")
    if not isinstance(card, dict) or not isinstance(state, dict):
        raise CheckpointError(f"{path}: silr checkpoint lacks its model card or weights "
                              f"(incomplete file)")
    payload["card"] = ModelCard.from_dict(card, path)
    return payload


def load_model(path: str | Path, device: str | torch.device = "cpu", *,
               fused: bool = False) -> tuple[torch.nn.Module, ModelCard]:
    """(network in eval mode on `device`, model card) from a silr checkpoint; CheckpointError if
    unusable. `fused`: the network for inference alone, batch norm folded into the convolutions
    (`fused_for_inference`; its state dict is no longer the checkpoint's)."""
    payload = read_checkpoint(path)
    card = payload["card"]
    model = card.build_network(path)
    for name, value in payload["model_state"].items():
        # NaN or inf weights give every landmark at (0, 0) with score NaN and exit 0: refuse them
        if (isinstance(value, torch.Tensor) and value.is_floating_point()
                and not bool(torch.isfinite(value).all())):
            raise CheckpointError(f"{path}: holds non-finite weights in {quoted(str(name))} "
                                  f"(NaN or inf); the run that wrote it diverged or the file is "
                                  f"damaged")
    try:
        model.load_state_dict(payload["model_state"], strict=True)
    except (RuntimeError, TypeError, KeyError, AttributeError) as exc:
        first = str(exc).strip().splitlines()
        reason = first[1].strip() if len(first) > 1 else first[0][:160]
        raise CheckpointError(f"{path}: weights do not fit the network its card describes "
                              f"({reason})") from None
    if fused:
        model = fused_for_inference(model)
    return model.to(device).to(memory_format=NETWORK_MEMORY_FORMAT).eval(), card


def fused_for_inference(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of a SILRNet in eval mode whose encoder has every batch norm folded into the
    convolution before it (torch.fx's conv-BN fusion; in eval mode batch norm is a fixed affine
    map). It computes what the network computes in eval mode, to float rounding (about 1e-5),
    and faster (benchmarks/results/inference_layout.txt); evaluation, the corruption benchmark
    and predict run it. Training cannot: there batch norm normalises with each batch's own
    statistics. An encoder that torch.fx cannot trace stays as it is."""
    import contextlib
    import copy

    from torch.fx.experimental.optimization import fuse

    # The caller's network stays as it is: its copy gets the fused encoder. fuse itself works on
    # a copy of the encoder (not inplace=True, which rewrites the parent modules one by one), so
    # an error half-way leaves the copy's encoder whole and it runs unfused, never half-fused.
    fused = copy.deepcopy(model).eval()
    with contextlib.suppress(Exception):  # any error of torch.fx's tracing: it runs unfused
        fused.encoder = fuse(fused.encoder)
    return fused
