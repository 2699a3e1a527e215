"""Typed, validated params: `params.yaml` is read here and nowhere else.

Each section of `params.yaml` becomes a frozen dataclass. Every value is checked once,
at the CLI boundary, with a message naming the key (`train.batch_size must be >= 1,
got 0`); the typed objects are passed down. Unknown keys are errors, so a typo never
silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from silr.errors import ConfigError

DEFAULT_PARAMS_FILE = "params.yaml"


# The defaults are the values of the committed `params.yaml` (the CPU demo; its comments and the
# README give the paper's values): tests/test_anatomy_params.py keeps the two equal.

@dataclass(frozen=True)
class SynthParams:
    # Frames of each specimen, one entry per specimen: the real set's 111/104/24/48/55/24
    # (anatomy.DEEPFLUORO_FRAMES) scaled by 1/5 for the CPU budget.
    frames: tuple[int, ...] = (22, 21, 5, 10, 11, 5)
    seed: int = 0

    @property
    def specimens(self) -> int:
        return len(self.frames)


@dataclass(frozen=True)
class DataParams:
    raw: str = "data/synthetic/phantom_full_res.h5"
    processed: str = "data/processed/ds_8x.h5"
    downsample: int = 8
    crop: int = 50
    i0: float = 65487.0


@dataclass(frozen=True)
class FoldsParams:
    val_fraction: float = 0.1
    seed: int = 0


@dataclass(frozen=True)
class ModelParams:
    backbone: str = "hrnet_w18_small"
    # Channels after each 2x upsampling step of a decoder (stride 4 -> 2 -> 1); () = heads at stride 4.
    decoder_channels: tuple[int, ...] = ()
    init_checkpoint: str | None = None


@dataclass(frozen=True)
class TrainParams:
    epochs: int = 25
    batch_size: int = 4
    lr: float = 0.003
    weight_decay: float = 0.01
    val_every: int = 1
    seed: int = 0
    device: str = "auto"
    checkpoint_every: int = 1


@dataclass(frozen=True)
class AugmentParams:
    prob: float = 0.5
    zoom: tuple[float, float] = (1.0, 1.3)
    rotate: float = 0.17  # radians, symmetric range (-rotate, +rotate)
    gamma: tuple[float, float] = (0.7, 1.5)


@dataclass(frozen=True)
class HeatmapParams:
    sigma: float = 2.5
    presence_threshold: float = 0.5
    refine: str = "centroid"   # none | parabola | centroid (silr.codec)


@dataclass(frozen=True)
class LossesParams:
    # Named loss -> {term: weight}. Term names are checked by silr.losses.build_loss.
    named: Mapping[str, Mapping[str, float]] = field(default_factory=lambda: {
        "proposed": {"dice_ce": 1.0, "kl": 0.1, "visibility": 10.0},
        "mse": {"mse": 1.0},
        "ncc": {"ncc": 1.0},
        "dice_ce_kl": {"dice_ce": 1.0, "kl": 0.1},
        "proposed_soft": {"dice_ce": 1.0, "kl": 0.1, "visibility_soft": 10.0},
        "dice_ce_mse": {"dice_ce": 1.0, "mse": 1.0},
        "dice_ce_ncc": {"dice_ce": 1.0, "ncc": 1.0},
    })
    visibility_mode: str = "hard"
    kl_reduction: str = "landmark"
    mse_foreground_weight: float = 1000.0
    detach_segmentation: bool = True


@dataclass(frozen=True)
class StudyParams:
    losses: tuple[str, ...] = ("proposed", "mse", "ncc")
    folds: tuple[int, ...] = (1, 2, 3, 4, 5, 6)


@dataclass(frozen=True)
class EvaluateParams:
    success_mm: tuple[float, ...] = (2.0, 4.0, 8.0)


@dataclass(frozen=True)
class Params:
    synth: SynthParams = field(default_factory=SynthParams)
    data: DataParams = field(default_factory=DataParams)
    folds: FoldsParams = field(default_factory=FoldsParams)
    model: ModelParams = field(default_factory=ModelParams)
    train: TrainParams = field(default_factory=TrainParams)
    augment: AugmentParams = field(default_factory=AugmentParams)
    heatmap: HeatmapParams = field(default_factory=HeatmapParams)
    losses: LossesParams = field(default_factory=LossesParams)
    study: StudyParams = field(default_factory=StudyParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)

    def loss_weights(self, name: str) -> dict[str, float]:
        """Term weights of the named loss; ConfigError naming the key if it is not defined."""
        if name not in self.losses.named:
            raise ConfigError(
                f"losses.{name}: no such loss in params.yaml (defined: {', '.join(sorted(self.losses.named))})"
            )
        return dict(self.losses.named[name])


# ---------------------------------------------------------------- validation helpers

def _fail(key: str, expected: str, got: Any) -> ConfigError:
    return ConfigError(f"{key} must be {expected}, got {got!r}")


def _as_int(key: str, value: Any, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(key, "an integer", value)
    if minimum is not None and value < minimum:
        raise _fail(key, f">= {minimum}", value)
    return value


def _as_float(key: str, value: Any, minimum: float | None = None, maximum: float | None = None,
              strict_min: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(key, "a finite number", value)
    value = float(value)
    if minimum is not None and (value <= minimum if strict_min else value < minimum):
        raise _fail(key, f"{'>' if strict_min else '>='} {minimum}", value)
    if maximum is not None and value > maximum:
        raise _fail(key, f"<= {maximum}", value)
    return value


def _as_counts(key: str, value: Any) -> tuple[int, ...]:
    """A list of frame counts (>= 1), one per specimen, at least two specimens."""
    if not isinstance(value, (list, tuple)) or len(value) < 2:
        raise _fail(key, "a list of frame counts, one per specimen, at least two (e.g. [22, 21, 5, 10, 11, 5])",
                    value)
    return tuple(_as_int(f"{key}[{i}]", count, 1) for i, count in enumerate(value))


def _as_bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(key, "true or false", value)
    return value


def _as_str(key: str, value: Any, choices: tuple[str, ...] | None = None) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(key, "a non-empty string", value)
    if choices is not None and value not in choices:
        raise _fail(key, f"one of {', '.join(choices)}", value)
    return value


def _as_range(key: str, value: Any, minimum: float) -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise _fail(key, "a [low, high] pair", value)
    low = _as_float(f"{key}[0]", value[0], minimum)
    high = _as_float(f"{key}[1]", value[1], minimum)
    if high < low:
        raise _fail(key, "a [low, high] pair with low <= high", value)
    return (low, high)


def _section(raw: Mapping[str, Any], name: str, cls: type) -> dict[str, Any]:
    value = raw.get(name, {})
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise _fail(name, "a mapping", value)
    known = {f.name for f in dataclasses.fields(cls)}
    if cls is LossesParams:
        return dict(value)
    unknown = sorted(set(value) - known)
    if unknown:
        raise ConfigError(f"{name}: unknown key(s) {', '.join(map(str, unknown))} (known: {', '.join(sorted(known))})")
    return dict(value)


def _parse_losses(section: dict[str, Any]) -> LossesParams:
    defaults = LossesParams()
    mode = _as_str("losses.visibility_mode", section.pop("visibility_mode", defaults.visibility_mode),
                   ("soft", "hard"))
    detach = _as_bool("losses.detach_segmentation",
                      section.pop("detach_segmentation", defaults.detach_segmentation))
    kl_reduction = _as_str("losses.kl_reduction", section.pop("kl_reduction", defaults.kl_reduction),
                           ("landmark", "batchmean", "mean"))
    foreground = _as_float("losses.mse_foreground_weight",
                           section.pop("mse_foreground_weight", defaults.mse_foreground_weight), 0.0)
    named: dict[str, dict[str, float]] = {}
    source = section if section else {k: dict(v) for k, v in defaults.named.items()}
    for loss_name, terms in source.items():
        key = f"losses.{loss_name}"
        if not isinstance(terms, Mapping):
            raise _fail(key, "a mapping of term -> weight", terms)
        if not terms:
            raise ConfigError(f"{key}: a loss needs at least one term")
        weights: dict[str, float] = {}
        for term, weight in terms.items():
            weights[str(term)] = _as_float(f"{key}.{term}", weight, minimum=0.0)
        if all(w == 0 for w in weights.values()):
            raise ConfigError(f"{key}: every term weight is 0; a loss needs a positive weight")
        named[str(loss_name)] = weights
    return LossesParams(named=named, visibility_mode=mode, detach_segmentation=detach, kl_reduction=kl_reduction,
                        mse_foreground_weight=foreground)


def params_from_dict(raw: Mapping[str, Any]) -> Params:
    """Validate a params mapping (as read from YAML) into typed `Params`."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"params must be a mapping of sections, got {type(raw).__name__}")

    s = _section(raw, "synth", SynthParams)
    d0 = SynthParams()
    synth = SynthParams(
        frames=_as_counts("synth.frames", s.get("frames", d0.frames)),
        seed=_as_int("synth.seed", s.get("seed", d0.seed), 0),
    )

    s = _section(raw, "data", DataParams)
    d1 = DataParams()
    data = DataParams(
        raw=_as_str("data.raw", s.get("raw", d1.raw)),
        processed=_as_str("data.processed", s.get("processed", d1.processed)),
        downsample=_as_int("data.downsample", s.get("downsample", d1.downsample), 1),
        crop=_as_int("data.crop", s.get("crop", d1.crop), 0),
        i0=_as_float("data.i0", s.get("i0", d1.i0), 0.0, strict_min=True),
    )

    s = _section(raw, "folds", FoldsParams)
    d2 = FoldsParams()
    folds = FoldsParams(
        val_fraction=_as_float("folds.val_fraction", s.get("val_fraction", d2.val_fraction), 0.0, 0.9),
        seed=_as_int("folds.seed", s.get("seed", d2.seed), 0),
    )

    s = _section(raw, "model", ModelParams)
    d3 = ModelParams()
    channels = s.get("decoder_channels", list(d3.decoder_channels))
    if not isinstance(channels, (list, tuple)) or len(channels) > 2:
        raise _fail("model.decoder_channels", "a list of at most 2 channel counts ([] = heads at stride 4)",
                    channels)
    init = s.get("init_checkpoint", d3.init_checkpoint)
    model = ModelParams(
        backbone=_as_str("model.backbone", s.get("backbone", d3.backbone)),
        decoder_channels=tuple(_as_int(f"model.decoder_channels[{i}]", c, 1) for i, c in enumerate(channels)),
        init_checkpoint=None if init in (None, "") else _as_str("model.init_checkpoint", init),
    )

    s = _section(raw, "train", TrainParams)
    d4 = TrainParams()
    train = TrainParams(
        epochs=_as_int("train.epochs", s.get("epochs", d4.epochs), 1),
        batch_size=_as_int("train.batch_size", s.get("batch_size", d4.batch_size), 1),
        lr=_as_float("train.lr", s.get("lr", d4.lr), 0.0, strict_min=True),
        weight_decay=_as_float("train.weight_decay", s.get("weight_decay", d4.weight_decay), 0.0),
        val_every=_as_int("train.val_every", s.get("val_every", d4.val_every), 1),
        seed=_as_int("train.seed", s.get("seed", d4.seed), 0),
        device=_as_str("train.device", s.get("device", d4.device), ("auto", "cpu", "cuda", "mps")),
        checkpoint_every=_as_int("train.checkpoint_every", s.get("checkpoint_every", d4.checkpoint_every), 1),
    )

    s = _section(raw, "augment", AugmentParams)
    d5 = AugmentParams()
    augment = AugmentParams(
        prob=_as_float("augment.prob", s.get("prob", d5.prob), 0.0, 1.0),
        zoom=_as_range("augment.zoom", s.get("zoom", list(d5.zoom)), 0.0),
        rotate=_as_float("augment.rotate", s.get("rotate", d5.rotate), 0.0, math.pi),
        gamma=_as_range("augment.gamma", s.get("gamma", list(d5.gamma)), 0.0),
    )

    s = _section(raw, "heatmap", HeatmapParams)
    d6 = HeatmapParams()
    heatmap = HeatmapParams(
        sigma=_as_float("heatmap.sigma", s.get("sigma", d6.sigma), 0.0, strict_min=True),
        presence_threshold=_as_float("heatmap.presence_threshold",
                                     s.get("presence_threshold", d6.presence_threshold), 0.0, 1.0),
        refine=_as_str("heatmap.refine", s.get("refine", d6.refine), ("none", "parabola", "centroid")),
    )

    losses = _parse_losses(_section(raw, "losses", LossesParams))

    s = _section(raw, "study", StudyParams)
    d7 = StudyParams()
    study_losses = s.get("losses", list(d7.losses))
    study_folds = s.get("folds", list(d7.folds))
    if not isinstance(study_losses, (list, tuple)) or not study_losses:
        raise _fail("study.losses", "a non-empty list of loss names", study_losses)
    if not isinstance(study_folds, (list, tuple)) or not study_folds:
        raise _fail("study.folds", "a non-empty list of fold numbers", study_folds)
    for name in study_losses:
        if name not in losses.named:
            raise ConfigError(f"study.losses: {name!r} is not a loss defined under losses "
                              f"(defined: {', '.join(sorted(losses.named))})")
    study = StudyParams(
        losses=tuple(_as_str("study.losses[]", n) for n in study_losses),
        folds=tuple(_as_int("study.folds[]", k, 1) for k in study_folds),
    )

    s = _section(raw, "evaluate", EvaluateParams)
    d8 = EvaluateParams()
    success = s.get("success_mm", list(d8.success_mm))
    if not isinstance(success, (list, tuple)) or not success:
        raise _fail("evaluate.success_mm", "a non-empty list of distances in mm", success)
    evaluate = EvaluateParams(
        success_mm=tuple(_as_float("evaluate.success_mm[]", v, 0.0, strict_min=True) for v in success))

    return Params(synth=synth, data=data, folds=folds, model=model, train=train, augment=augment,
                  heatmap=heatmap, losses=losses, study=study, evaluate=evaluate)


def load_params(path: str | Path = DEFAULT_PARAMS_FILE) -> Params:
    """Read and validate `params.yaml`. A missing file gives the documented defaults."""
    path = Path(path)
    if not path.exists():
        return Params()
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    try:
        return params_from_dict(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def to_dict(obj: Any) -> Any:
    """Plain (JSON-ready) form of a params dataclass."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def stable_hash(obj: Any) -> str:
    """Short SHA-256 of the canonical JSON form of `obj` (params, data identities)."""
    text = json.dumps(to_dict(obj), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
