"""Typed, validated params: `params.yaml` is read here and nowhere else.

Each section of `params.yaml` becomes a frozen dataclass. Every value is checked once,
at the CLI boundary, with a message naming the key (`train.batch_size must be >= 1,
got 0`); the typed objects are passed down. Unknown keys are errors, so a typo never
silently falls back to a default. The checkers are silr.core.params_checks, the file reader
silr.core.params_yaml, the codec's and the losses' choice lists silr.core.choices.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from silr.core.choices import (
    DEFAULT_DETACH_SEGMENTATION,
    DEFAULT_KL_REDUCTION,
    DEFAULT_VISIBILITY_MODE,
    KL_REDUCTIONS,
    LOSS_OPTION_DEFAULTS,
    LOSS_TERM_NAMES,
    PRESENCE_CHOICES,
    REFINE_MODES,
    TEMPLATE_NCC,
    TEMPLATE_WINDOW_PX,
    VISIBILITY_MODES,
)
from silr.core.errors import ConfigError, quoted
from silr.core.params_checks import (
    MAX_CHANNELS,
    MAX_SEED,
    Section,
    as_bool,
    as_float,
    as_int,
    as_list,
    as_optional_str,
    as_range,
    as_str,
    checked,
    fail,
    section_values,
)
from silr.core.params_yaml import read_yaml
from silr.core.robustness_params import RobustnessParams

__all__ = [
    "DEFAULT_PARAMS_FILE",
    "SECTIONS",
    "AugmentParams",
    "DataParams",
    "EvaluateParams",
    "FoldsParams",
    "HeatmapParams",
    "LossesParams",
    "ModelParams",
    "Params",
    "RobustnessParams",
    "StudyParams",
    "SynthParams",
    "TrainParams",
    "load_params",
    "params_from_dict",
    "read_yaml",
    "stable_hash",
    "to_dict",
]

DEFAULT_PARAMS_FILE = "params.yaml"

# The synthetic phantom's size: the real set has 6 specimens of at most 111 frames; 9999 x 10000
# frames of 1536 x 1536 float32 would already be far beyond any disk.
MAX_SPECIMENS = 9999
MAX_FRAMES_PER_SPECIMEN = 10000


# ---------------------------------------------------------------- section-specific checkers

def _as_counts(key: str, value: Any) -> tuple[int, ...]:
    """A list of frame counts (>= 1), one per specimen, at least two specimens."""
    if not isinstance(value, (list, tuple)) or len(value) < 2:
        raise fail(key, "a list of frame counts, one per specimen, at least two "
                        "(e.g. [22, 21, 5, 10, 11, 5])", value)
    if len(value) > MAX_SPECIMENS:
        raise fail(key, f"at most {MAX_SPECIMENS} specimens", value)
    return tuple(as_int(f"{key}[{i}]", count, 1, MAX_FRAMES_PER_SPECIMEN)
                 for i, count in enumerate(value))


def _as_seeds(key: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)):
        raise fail(key, "a list of training seeds (e.g. [1, 2]; [] for train.seed alone)", value)
    seeds = tuple(as_int(f"{key}[{i}]", v, 0, MAX_SEED) for i, v in enumerate(value))
    if len(set(seeds)) != len(seeds):
        raise fail(key, "a list of distinct seeds", list(value))
    return seeds


def _as_channels(key: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or len(value) > 2:
        raise fail(key, "a list of at most 2 channel counts ([] = heads at stride 4)", value)
    return tuple(as_int(f"{key}[{i}]", c, 1, MAX_CHANNELS) for i, c in enumerate(value))


def _as_weights(key: str, terms: Any) -> dict[str, float]:
    """{term: weight} of a named loss: terms from LOSS_TERM_NAMES, numbers >= 0, not all 0.
    (silr.model.losses.build_loss checks the names again against its registry, whose
    decorator takes its names from the same tuple.)"""
    if not isinstance(terms, Mapping):
        raise fail(key, "a mapping of term -> weight", terms)
    if not terms:
        raise ConfigError(f"{key}: a loss needs at least one term")
    for term in terms:
        if term not in LOSS_TERM_NAMES:
            raise ConfigError(f"{key}: unknown term {term!r} "
                              f"(known: {', '.join(sorted(LOSS_TERM_NAMES))}; "
                              f"options: {', '.join(LOSS_OPTION_DEFAULTS)})")
    weights = {str(term): as_float(f"{key}.{term}", weight, 0.0, 1.0e6)
               for term, weight in terms.items()}
    if all(w == 0 for w in weights.values()):
        raise ConfigError(f"{key}: every term weight is 0; a loss needs a positive weight")
    return weights


def _as_loss_options(key: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The options of a named loss (LOSS_OPTION_DEFAULTS), each checked."""
    checked_options: dict[str, Any] = {}
    for name, value in options.items():
        if name == "sigma":
            checked_options[name] = as_float(f"{key}.sigma", value, 0.1, 180.0)
        elif name == "refine":
            checked_options[name] = as_str(f"{key}.refine", value, REFINE_MODES)
        elif name == "mse_foreground_weight":
            checked_options[name] = as_float(f"{key}.mse_foreground_weight", value, 0.0, 1.0e6)
        else:
            checked_options[name] = as_bool(f"{key}.{name}", value)
    return checked_options


# ---------------------------------------------------------------- sections
# The defaults are the values of the committed `params.yaml` (the CPU demo; its comments and the
# README give the paper's values): tests/test_anatomy_params.py keeps the two equal.

@dataclass(frozen=True)
class SynthParams(Section):
    SECTION: ClassVar[str] = "synth"
    # Frames of each specimen, one entry per specimen: the real set's 111/104/24/48/55/24
    # (anatomy.DEEPFLUORO_FRAMES) scaled by 1/5 for the CPU budget.
    frames: tuple[int, ...] = checked((22, 21, 5, 10, 11, 5), _as_counts)
    seed: int = checked(0, as_int, 0, MAX_SEED)

    @property
    def specimens(self) -> int:
        return len(self.frames)


@dataclass(frozen=True)
class DataParams(Section):
    SECTION: ClassVar[str] = "data"
    raw: str = checked("data/synthetic/phantom_full_res.h5", as_str)
    processed: str = checked("data/processed/ds_8x.h5", as_str)
    downsample: int = checked(8, as_int, 1, 64)
    crop: int = checked(50, as_int, 0, 4096)
    i0: float = checked(65487.0, as_float, 0.0, strict_min=True)


@dataclass(frozen=True)
class FoldsParams(Section):
    SECTION: ClassVar[str] = "folds"
    val_fraction: float = checked(0.1, as_float, 0.0, 0.9)
    seed: int = checked(0, as_int, 0, MAX_SEED)


@dataclass(frozen=True)
class ModelParams(Section):
    SECTION: ClassVar[str] = "model"
    # The backbone name is checked by the model registry (silr.model.network.BACKBONES), which
    # loads torch.
    backbone: str = checked("hrnet_w18_small", as_str)
    # Channels after each 2x upsampling step of a decoder (stride 4 -> 2 -> 1); () = heads at
    # stride 4.
    decoder_channels: tuple[int, ...] = checked((), _as_channels)
    init_checkpoint: str | None = checked(None, as_optional_str)


@dataclass(frozen=True)
class TrainParams(Section):
    SECTION: ClassVar[str] = "train"
    epochs: int = checked(25, as_int, 1, 100_000)
    batch_size: int = checked(4, as_int, 1, 4096)
    # beyond 10 AdamW diverges at once
    lr: float = checked(0.003, as_float, 0.0, 10.0, strict_min=True)
    weight_decay: float = checked(0.01, as_float, 0.0, 10.0)
    val_every: int = checked(1, as_int, 1, 100_000)
    seed: int = checked(0, as_int, 0, MAX_SEED)
    device: str = checked("auto", as_str, ("auto", "cpu", "cuda", "mps"))
    checkpoint_every: int = checked(5, as_int, 1, 100_000)
    # After training, the presence head (if any) is refitted alone on the best weights, frozen and
    # in eval mode, for this many epochs of batches of presence_refit_batch (0: no refit).
    presence_refit_epochs: int = checked(10, as_int, 0, 100_000)
    presence_refit_batch: int = checked(8, as_int, 1, 4096)
    # Outlier frames added to each refit batch to train the head's frame gate (0: no gate).
    presence_outliers: int = checked(2, as_int, 0, 1000)


@dataclass(frozen=True)
class AugmentParams(Section):
    SECTION: ClassVar[str] = "augment"
    prob: float = checked(0.5, as_float, 0.0, 1.0)
    zoom: tuple[float, float] = checked((1.0, 1.3), as_range, 0.0, 10.0)
    # radians, symmetric range (-rotate, +rotate)
    rotate: float = checked(0.17, as_float, 0.0, math.pi)
    gamma: tuple[float, float] = checked((0.7, 1.5), as_range, 0.0, 10.0)


@dataclass(frozen=True)
class HeatmapParams(Section):
    SECTION: ClassVar[str] = "heatmap"
    # px of the 180 x 180 frame; below 0.1 px the Gaussian underflows to zero everywhere
    sigma: float = checked(2.5, as_float, 0.1, 180.0)
    presence_threshold: float = checked(0.5, as_float, 0.0, 1.0)
    # none | parabola | centroid (silr.model.codec)
    refine: str = checked("centroid", as_str, REFINE_MODES)
    # Which rule decides presence (silr.core.choices.PRESENCE_RULES, or auto).
    presence: str = checked("auto", as_str, PRESENCE_CHOICES)
    # The template rule (the data set authors'): NCC bar, and window in px at 8x (scaled by
    # 8 / downsample).
    template_ncc: float = checked(TEMPLATE_NCC, as_float, -1.0, 1.0)
    template_window: float = checked(TEMPLATE_WINDOW_PX, as_float, 3.0, 1000.0)
    # Fit the learned presence's Platt scaling (a, b) on the fold's validation frames (off:
    # measured worse on the phantom, whose folds hold 5 to 19 absent validation landmarks;
    # docs/method.md).
    calibrate: bool = checked(False, as_bool)


def _default_named_losses() -> dict[str, dict[str, float]]:
    return {
        "proposed": {"dice_ce": 1.0, "kl": 0.1, "visibility": 10.0},
        "proposed_plus": {"dice_ce": 1.0, "kl": 0.1, "visibility": 10.0, "bone_distance": 0.05,
                          "presence_bce": 1.0},
        "mse": {"mse": 1.0},
        "ncc": {"ncc": 1.0},
        "mse_weighted": {"mse": 1.0},
        "dice_ce_kl": {"dice_ce": 1.0, "kl": 0.1},
        "dice_ce_kl_presence": {"dice_ce": 1.0, "kl": 0.1, "presence_bce": 1.0},
        "dice_ce_kl_null": {"dice_ce": 1.0, "kl_null": 0.1},
        "proposed_continuous": {"dice_ce": 1.0, "kl": 0.1, "visibility_continuous": 10.0},
        "proposed_soft": {"dice_ce": 1.0, "kl": 0.1, "visibility_soft": 10.0},
        "dice_ce_mse": {"dice_ce": 1.0, "mse": 1.0},
        "dice_ce_ncc": {"dice_ce": 1.0, "ncc": 1.0},
    }


@dataclass(frozen=True)
class LossesParams(Section):
    SECTION: ClassVar[str] = "losses"
    # Named loss -> {term: weight}: every key of the section that is not an option below.
    # Term names (LOSS_TERM_NAMES) and weights are checked by _as_weights.
    named: Mapping[str, Mapping[str, float]] = field(default_factory=_default_named_losses)
    # Named loss -> its options (LOSS_OPTION_DEFAULTS), only those it sets.
    named_options: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: {
        "mse": {"sigma": 16.0, "refine": "parabola"},
        "mse_weighted": {"mse_foreground_weight": 1000.0, "mse_target_weight": False},
    })
    visibility_mode: str = checked(DEFAULT_VISIBILITY_MODE, as_str, VISIBILITY_MODES)
    kl_reduction: str = checked(DEFAULT_KL_REDUCTION, as_str, KL_REDUCTIONS)
    detach_segmentation: bool = checked(DEFAULT_DETACH_SEGMENTATION, as_bool)

    @classmethod
    def from_dict(cls, section: Any, key: str | None = None) -> LossesParams:
        key = key or cls.SECTION
        values = section_values(key, section, None)  # any key that is not an option names a loss
        options = {f.name: f.metadata["check"](f"{key}.{f.name}", values.pop(f.name))
                   for f in dataclasses.fields(cls) if "check" in f.metadata and f.name in values}
        named, named_options = {}, {}
        for name, entry in values.items():
            if not isinstance(entry, Mapping):
                raise fail(f"{key}.{name}", "a mapping of term -> weight (and loss options)", entry)
            given = {k: v for k, v in entry.items() if k in LOSS_OPTION_DEFAULTS}
            named[str(name)] = _as_weights(f"{key}.{name}",
                                           {k: v for k, v in entry.items() if k not in given})
            if given:
                named_options[str(name)] = _as_loss_options(f"{key}.{name}", given)
        # A section that names no loss keeps the default ones.
        defined = {"named": named, "named_options": named_options} if named else {}
        return cls(**options, **defined)


@dataclass(frozen=True)
class StudyParams(Section):
    SECTION: ClassVar[str] = "study"
    # Each must name a loss under `losses` (checked by params_from_dict: it spans two sections).
    losses: tuple[str, ...] = checked(("proposed", "proposed_plus", "mse", "ncc"), as_list,
                                      "a non-empty list of loss names", as_str)
    folds: tuple[int, ...] = checked((1, 2, 3, 4, 5, 6), as_list,
                                     "a non-empty list of fold numbers", as_int, minimum=1)
    # Training seeds run besides train.seed, each (loss, fold, seed) its own train_seed /
    # evaluate_seed stage (train.seed itself, if listed, is re-emitted from the resume store,
    # not trained again).
    seeds: tuple[int, ...] = checked((), _as_seeds)


@dataclass(frozen=True)
class EvaluateParams(Section):
    SECTION: ClassVar[str] = "evaluate"
    success_mm: tuple[float, ...] = checked((2.0, 4.0, 8.0), as_list,
                                            "a non-empty list of distances in mm", as_float,
                                            minimum=0.0, strict_min=True)


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
    # The corruption benchmark (silr.core.robustness_params).
    robustness: RobustnessParams = field(default_factory=RobustnessParams)

    def loss_weights(self, name: str) -> dict[str, float]:
        """Term weights of the named loss; ConfigError naming the key if it is not defined."""
        if name not in self.losses.named:
            raise ConfigError(f"losses.{name}: no such loss in params.yaml "
                              f"(defined: {', '.join(sorted(self.losses.named))})")
        return dict(self.losses.named[name])

    def loss_options(self, name: str) -> dict[str, Any]:
        """The options of the named loss (LOSS_OPTION_DEFAULTS, then what it sets)."""
        self.loss_weights(name)
        return {**LOSS_OPTION_DEFAULTS, **self.losses.named_options.get(name, {})}


# The sections of params.yaml, in order: (name, class); each class validates its own section.
SECTIONS: tuple[tuple[str, type[Section]], ...] = tuple((cls.SECTION, cls) for cls in (
    SynthParams, DataParams, FoldsParams, ModelParams, TrainParams, AugmentParams, HeatmapParams,
    LossesParams, StudyParams, EvaluateParams, RobustnessParams))


def params_from_dict(raw: Mapping[str, Any]) -> Params:
    """Validate a params mapping (as read from YAML) into typed `Params`."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"params must be a mapping of sections, got {type(raw).__name__}")
    known = [name for name, _ in SECTIONS]
    unknown = [str(key) for key in raw if key not in known]
    if unknown:
        raise ConfigError(f"unknown section(s) {quoted(', '.join(unknown))} "
                          f"(known: {', '.join(known)})")
    params = Params(**{name: cls.from_dict(raw.get(name), name) for name, cls in SECTIONS})
    for name in params.study.losses:
        if name not in params.losses.named:
            raise ConfigError(f"study.losses: {name!r} is not a loss defined under losses "
                              f"(defined: {', '.join(sorted(params.losses.named))})")
    return params


def load_params(path: str | Path = DEFAULT_PARAMS_FILE) -> Params:
    """Read and validate `params.yaml`. A missing file gives the documented defaults."""
    path = Path(path)
    if not path.exists():
        return Params()
    raw = read_yaml(path)
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
