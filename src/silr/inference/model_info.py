"""What `silr predict` says about its models, all read from their cards: which checkpoint
files the --model values name, each model's facts (fold, loss, validation error, training
data), and `--info`, which prints them and what the models share without building a network.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from silr.core.errors import CheckpointError, ConfigError, DataError

if TYPE_CHECKING:  # annotations only: the card (params, yaml) loads with the models, not --help
    from silr.model.card import ModelCard

__all__ = [
    "DATA_KIND_NAMES", "INFO_FIELDS", "PER_MODEL_FIELDS", "ModelFacts", "card_facts", "card_fields",
    "data_kind", "describe_facts", "print_info", "resolve_models",
]

# The training data kinds a card can name, in words.
DATA_KIND_NAMES = {"synthetic": "the synthetic phantom", "deepfluoro": "DeepFluoro"}
# The card fields --info summarises: what a user needs to know to trust an ensemble's models.
INFO_FIELDS = ("loss.name", "loss.weights", "model.backbone", "model.decoder_channels",
               "model.presence_head", "heatmap.sigma", "heatmap.stride", "heatmap.refine",
               "heatmap.presence", "preprocessing.downsample", "input_size", "frame_size",
               "data_source", "data_hash", "silr_version")
# Fields that differ between the folds of one study by design.
PER_MODEL_FIELDS = ("fold", "val_score_px", "epoch", "params_hash", "params", "finished",
                    "epochs_planned")


class ModelFacts(TypedDict):
    """What predict reports about one model (the json's `model_facts`, the summary's lines)."""

    path: str
    fold: int | None
    loss: str | None
    val_score_px: float | None
    epoch: int
    epochs_planned: int | None
    finished: bool | None
    data_source: str | None
    data_kind: str
    data_kind_guessed: bool


def resolve_models(paths: Sequence[Path]) -> list[Path]:
    """--model values -> checkpoint files: a folder means its best.pt, else its fold*/best.pt
    (sorted)."""
    resolved: list[Path] = []
    for path in paths:
        if not path.is_dir():
            if not path.is_file():  # checked here, before anything loads
                raise CheckpointError(f"{path}: no such checkpoint file")
            resolved.append(path)
            continue
        if (path / "best.pt").is_file():
            resolved.append(path / "best.pt")
            continue
        folds = sorted((p for p in path.glob("fold*/best.pt") if p.is_file()), key=_natural_key)
        if not folds:
            raise ConfigError(f"predict: --model {path} is a folder without best.pt or "
                              f"fold*/best.pt")
        resolved.extend(folds)
    return resolved


def _natural_key(path: Path) -> tuple[int, str]:
    digits = "".join(c for c in path.parent.name if c.isascii() and c.isdigit())
    return (int(digits) if digits else -1, str(path))


def data_kind(data_source: str) -> tuple[str, bool]:
    """(kind, guessed) of the training data a card names: the file's silr-data-kind root
    attribute where the file can be read here, else a guess from its name (`guessed` says
    which)."""
    # h5py loads here, not at import: `silr predict --help` and --info on cards whose data is
    # not on this machine never pay for it
    from silr.data import deepfluoro

    if not data_source:
        return "unknown", False
    path = Path(data_source)
    if path.is_file():
        try:
            with deepfluoro.open_hdf5(path) as f:
                if deepfluoro.ATTR_DATA_KIND in f.attrs:
                    value = f.attrs[deepfluoro.ATTR_DATA_KIND]
                    return (value.decode() if isinstance(value, bytes) else str(value)), False
        except (DataError, OSError, ValueError):
            pass  # unreadable here: fall back to the name, said to be a guess
    name = path.name.lower()
    if "synth" in name or "phantom" in name:
        return "synthetic", True
    if "deepfluoro" in name or "ipcai" in name:
        return "deepfluoro", True
    return "unknown", False


def card_facts(path: Path, card: ModelCard) -> ModelFacts:
    """What predict reports about one model, all read from its card (a checkpoint file's date
    says when it was copied or checked out, not when it was trained, so none is reported)."""
    kind, guessed = data_kind(card.data_source)
    return {"path": str(path), "fold": card.fold, "loss": card.loss.name if card.loss else None,
            "val_score_px": card.val_score_px, "epoch": card.epoch,
            "epochs_planned": card.epochs_planned or None, "finished": card.finished,
            "data_source": card.data_source or None, "data_kind": kind,
            "data_kind_guessed": guessed}


def describe_facts(facts: ModelFacts) -> str:
    """One line: fold, loss, validation error and the training data."""
    if facts["val_score_px"] is not None:
        planned = f" of {facts['epochs_planned']}" if facts.get("epochs_planned") else ""
        score = (f"validation error {facts['val_score_px']:.2f} px (180x180 frame) at epoch "
                 f"{facts['epoch']}{planned}")
    else:
        score = "no validation error recorded"
    if facts.get("finished") is False:
        score += " (run not finished)"
    kind = DATA_KIND_NAMES.get(facts["data_kind"], "data of unknown kind")
    source = ""
    if facts["data_source"]:
        guessed = ", kind guessed from its name" if facts["data_kind_guessed"] else ""
        source = f" ({facts['data_source']}{guessed})"
    return (f"{facts['path']}: fold {facts['fold']}, loss {facts['loss']}, {score}; "
            f"trained on {kind}{source}")


def print_info(models: Sequence[Path], full: bool = False) -> int:
    """One line per model, then what the models share and where they differ; `full`: every
    card. Only the cards are read: no network is built."""
    # torch loads here (checkpoints are torch files), not at import: `silr predict --help`
    from silr.model.checkpoint import read_checkpoint

    cards = [read_checkpoint(path)["card"] for path in models]
    if full:
        for path, card in zip(models, cards):
            print(card.describe(path))
        return 0
    for path, card in zip(models, cards):
        print(describe_facts(card_facts(path, card)))
    shared, differing = card_fields(cards)
    print(f"shared by the {len(cards)} models:" if len(cards) > 1 else "model:")
    for key, value in shared.items():
        print(f"  {key}: {value}")
    if differing:
        print(f"differing between them (besides fold and validation): {', '.join(differing)}")
    print("(--info --full prints every card in full)")
    return 0


def _flat(mapping: dict[str, object], prefix: str = "") -> dict[str, object]:
    """A card's nested fields as dotted keys, one line each; loss weights stay one mapping."""
    flat = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and not name.endswith("weights"):
            flat.update(_flat(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _format_value(value: object) -> str:
    """One field on one line: a mapping as `key value, ...`, a list as `[a, b]`."""
    if isinstance(value, dict):
        return ", ".join(f"{k} {v:g}" if isinstance(v, (int, float)) else f"{k} {v}"
                         for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


def card_fields(cards: Sequence[ModelCard]) -> tuple[dict[str, str], list[str]]:
    """(the INFO_FIELDS every card has alike, formatted; the other fields that differ between
    cards)."""
    flats = [_flat(card.to_dict()) for card in cards]
    keys = [k for k in flats[0] if all(k in f for f in flats)]
    same = {k for k in keys if all(f[k] == flats[0][k] for f in flats)}
    shared = {k: _format_value(flats[0][k]) for k in INFO_FIELDS if k in same}
    differing = sorted(k for k in set().union(*flats)
                       if k not in same and k.split(".")[0] not in PER_MODEL_FIELDS)
    return shared, differing
