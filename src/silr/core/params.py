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
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml

from silr.core.errors import ConfigError, quoted

DEFAULT_PARAMS_FILE = "params.yaml"

# The term names a named loss may use (`losses.NAME: {term: weight}`). They are the vocabulary
# of params.yaml, so they live here, and silr.model.losses builds its registry LOSS_TERMS from this
# tuple (it fails at import if a name has no term class or a class no name; a test checks the
# two agree). One list, and every command that reads params rejects a misspelt term at load
# time, without importing silr.model.losses: that would load torch and MONAI (about 2 s) in
# `silr synth` and `silr folds`, and make losses.py a dependency of every stage.
LOSS_TERM_NAMES: tuple[str, ...] = ("dice_ce", "kl", "mse", "ncc", "visibility", "visibility_soft", "kl_null",
                                     "presence_bce", "bone_distance", "visibility_continuous")
# Options a named loss may carry beside its term weights (`losses.NAME: {term: weight, option: value}`),
# with their defaults: `sigma`, the width (px, 180x180 frame) of this loss's target Gaussians (None:
# heatmap.sigma); `mse_foreground_weight`, w of the mse term's pixel weight 1 + w g (0: plain MSE);
# `mse_target_weight`, whether the mse term leaves absent landmarks' maps out (mmpose's
# use_target_weight) or trains them towards zero.
LOSS_OPTION_DEFAULTS: dict[str, Any] = {"sigma": None, "mse_foreground_weight": 0.0, "mse_target_weight": True}
# heatmap.presence: `auto` = `learned` for a network whose loss trains a presence output, else `template`.
PRESENCE_CHOICES: tuple[str, ...] = ("auto", "threshold", "template", "learned")


# ---------------------------------------------------------------- checkers
# Each takes (key, value, *options) and returns the value in its typed form, or raises a
# ConfigError naming the key. A section field names its checker next to its default (`_checked`).

def _fail(key: str, expected: str, got: Any) -> ConfigError:
    return ConfigError(f"{key} must be {expected}, got {quoted(got)}")


# Every number of params.yaml has an upper bound, so a typo (or a hostile file) cannot ask for
# 570 TB of synthetic frames or 1e44 epochs. Integers: below 2**31 unless a field says less
# (seeds must also fit numpy's 32-bit seeds); floats: at most 1e9 unless a field says less.
MAX_INT = 2 ** 31 - 1
MAX_FLOAT = 1.0e9


# A number in exponent form that YAML 1.1 (PyYAML) reads as text: its floats need a dot in the
# mantissa and a sign in the exponent (3.0e-3 is a float; 3e-3, 1e3 and 1.5e3 are strings).
_EXPONENT_NUMBER = re.compile(r"([-+]?(?:\d+\.?\d*|\.\d+))[eE]([-+]?\d+)")


def _number_text_hint(value: Any, integer: bool = False) -> str:
    """For a string that reads as a number: why YAML gave text and what to write instead; else ""."""
    if not isinstance(value, str):
        return ""
    text = value.strip()
    try:
        number = Decimal(text)
    except ArithmeticError:
        return ""
    if not number.is_finite():
        return ""
    plain = format(number.normalize() if number == number.to_integral_value() else number, "f")
    if integer and number != number.to_integral_value():
        return ""  # not an integer however it is written
    match = _EXPONENT_NUMBER.fullmatch(text)
    if match is None:  # a plain number that YAML read as text: it was quoted
        return f" (quoted, so YAML reads it as text: write {text} without quotes)"
    if integer:
        return f" (YAML reads {text} as text: write {plain})"
    mantissa, exponent = match.groups()
    mantissa = mantissa if "." in mantissa else f"{mantissa}.0"
    exponent = exponent if exponent[0] in "+-" else f"+{exponent}"
    return f" (YAML reads {text} as text: write {mantissa}e{exponent} or {plain})"


def _as_int(key: str, value: Any, minimum: int | None = None, maximum: int = MAX_INT) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{_fail(key, 'an integer', value)}{_number_text_hint(value, integer=True)}")
    if minimum is not None and value < minimum:
        raise _fail(key, f">= {minimum}", value)
    if value > maximum:
        raise _fail(key, f"<= {maximum}", value)
    return value


def _as_float(key: str, value: Any, minimum: float | None = None, maximum: float | None = MAX_FLOAT,
              strict_min: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{_fail(key, 'a finite number', value)}{_number_text_hint(value)}")
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
    if len(value) > MAX_SPECIMENS:
        raise _fail(key, f"at most {MAX_SPECIMENS} specimens", value)
    return tuple(_as_int(f"{key}[{i}]", count, 1, MAX_FRAMES_PER_SPECIMEN) for i, count in enumerate(value))


# The synthetic phantom's size: the real set has 6 specimens of at most 111 frames; 9999 x 10000
# frames of 1536 x 1536 float32 would already be far beyond any disk.
MAX_SPECIMENS = 9999
MAX_FRAMES_PER_SPECIMEN = 10000


def _as_seeds(key: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)):
        raise _fail(key, "a list of training seeds (e.g. [1, 2]; [] for train.seed alone)", value)
    seeds = tuple(_as_int(f"{key}[{i}]", v, 0, MAX_SEED) for i, v in enumerate(value))
    if len(set(seeds)) != len(seeds):
        raise _fail(key, "a list of distinct seeds", list(value))
    return seeds


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


def _as_optional_str(key: str, value: Any) -> str | None:
    """A path or nothing: null and "" both mean none."""
    return None if value is None or value == "" else _as_str(key, value)


def _as_range(key: str, value: Any, minimum: float, maximum: float = MAX_FLOAT) -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise _fail(key, "a [low, high] pair", value)
    low = _as_float(f"{key}[0]", value[0], minimum, maximum)
    high = _as_float(f"{key}[1]", value[1], minimum, maximum)
    if high < low:
        raise _fail(key, "a [low, high] pair with low <= high", value)
    return (low, high)


def _as_list(key: str, value: Any, what: str, item: Callable[..., Any], **options: Any) -> tuple[Any, ...]:
    """A non-empty list (`what` describes it) whose items pass `item(f"{key}[]", v, **options)`."""
    if not isinstance(value, (list, tuple)) or not value:
        raise _fail(key, what, value)
    return tuple(item(f"{key}[]", v, **options) for v in value)


def _as_channels(key: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or len(value) > 2:
        raise _fail(key, "a list of at most 2 channel counts ([] = heads at stride 4)", value)
    return tuple(_as_int(f"{key}[{i}]", c, 1, MAX_CHANNELS) for i, c in enumerate(value))


MAX_SEED = 2 ** 32 - 1  # numpy's and torch's seeds are 32-bit
MAX_CHANNELS = 4096  # a decoder wider than this would not fit a GPU's memory at 192 x 192


def _as_weights(key: str, terms: Any) -> dict[str, float]:
    """{term: weight} of a named loss: terms from LOSS_TERM_NAMES, numbers >= 0, not all 0.
    (silr.model.losses.build_loss checks the names again against its registry, built from the same tuple.)"""
    if not isinstance(terms, Mapping):
        raise _fail(key, "a mapping of term -> weight", terms)
    if not terms:
        raise ConfigError(f"{key}: a loss needs at least one term")
    for term in terms:
        if term not in LOSS_TERM_NAMES:
            raise ConfigError(f"{key}: unknown term {term!r} (known: {', '.join(sorted(LOSS_TERM_NAMES))}; "
                              f"options: {', '.join(LOSS_OPTION_DEFAULTS)})")
    weights = {str(term): _as_float(f"{key}.{term}", weight, 0.0, 1.0e6) for term, weight in terms.items()}
    if all(w == 0 for w in weights.values()):
        raise ConfigError(f"{key}: every term weight is 0; a loss needs a positive weight")
    return weights


def _as_loss_options(key: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The options of a named loss (LOSS_OPTION_DEFAULTS), each checked."""
    checked: dict[str, Any] = {}
    for name, value in options.items():
        if name == "sigma":
            checked[name] = _as_float(f"{key}.sigma", value, 0.1, 180.0)
        elif name == "mse_foreground_weight":
            checked[name] = _as_float(f"{key}.mse_foreground_weight", value, 0.0, 1.0e6)
        else:
            checked[name] = _as_bool(f"{key}.{name}", value)
    return checked


def _checked(default: Any, check: Callable[..., Any], *options: Any, **kw_options: Any) -> Any:
    """A section field: its default and its rule, `check(key, value, *options, **kw_options)`."""
    def rule(key: str, value: Any) -> Any:
        return check(key, value, *options, **kw_options)
    return field(default=default, metadata={"check": rule})


def _section_values(key: str, section: Any, known: set[str] | None) -> dict[str, Any]:
    """The section's mapping (absent or null = empty); with `known`, any other key is an error."""
    if section is None:
        section = {}
    if not isinstance(section, Mapping):
        raise _fail(key, "a mapping", section)
    unknown = sorted(set(section) - known) if known is not None else []
    if unknown:
        raise ConfigError(f"{key}: unknown key(s) {', '.join(map(str, unknown))} (known: {', '.join(sorted(known))})")
    return dict(section)


_S = TypeVar("_S", bound="_Section")


class _Section:
    """Base of the section dataclasses: `from_dict` checks each given key with its field's rule;
    a key left out keeps the field's default."""

    SECTION: ClassVar[str]

    @classmethod
    def from_dict(cls: type[_S], section: Any, key: str | None = None) -> _S:
        key = key or cls.SECTION
        fields = dataclasses.fields(cls)  # type: ignore[arg-type]
        values = _section_values(key, section, {f.name for f in fields})
        return cls(**{f.name: f.metadata["check"](f"{key}.{f.name}", values[f.name])
                      for f in fields if f.name in values})


# ---------------------------------------------------------------- sections
# The defaults are the values of the committed `params.yaml` (the CPU demo; its comments and the
# README give the paper's values): tests/test_anatomy_params.py keeps the two equal.

@dataclass(frozen=True)
class SynthParams(_Section):
    SECTION: ClassVar[str] = "synth"
    # Frames of each specimen, one entry per specimen: the real set's 111/104/24/48/55/24
    # (anatomy.DEEPFLUORO_FRAMES) scaled by 1/5 for the CPU budget.
    frames: tuple[int, ...] = _checked((22, 21, 5, 10, 11, 5), _as_counts)
    seed: int = _checked(0, _as_int, 0, MAX_SEED)

    @property
    def specimens(self) -> int:
        return len(self.frames)


@dataclass(frozen=True)
class DataParams(_Section):
    SECTION: ClassVar[str] = "data"
    raw: str = _checked("data/synthetic/phantom_full_res.h5", _as_str)
    processed: str = _checked("data/processed/ds_8x.h5", _as_str)
    downsample: int = _checked(8, _as_int, 1, 64)
    crop: int = _checked(50, _as_int, 0, 4096)
    i0: float = _checked(65487.0, _as_float, 0.0, strict_min=True)


@dataclass(frozen=True)
class FoldsParams(_Section):
    SECTION: ClassVar[str] = "folds"
    val_fraction: float = _checked(0.1, _as_float, 0.0, 0.9)
    seed: int = _checked(0, _as_int, 0, MAX_SEED)


@dataclass(frozen=True)
class ModelParams(_Section):
    SECTION: ClassVar[str] = "model"
    # The backbone name is checked by the model registry (silr.model.network.BACKBONES), which loads torch.
    backbone: str = _checked("hrnet_w18_small", _as_str)
    # Channels after each 2x upsampling step of a decoder (stride 4 -> 2 -> 1); () = heads at stride 4.
    decoder_channels: tuple[int, ...] = _checked((), _as_channels)
    init_checkpoint: str | None = _checked(None, _as_optional_str)


@dataclass(frozen=True)
class TrainParams(_Section):
    SECTION: ClassVar[str] = "train"
    epochs: int = _checked(25, _as_int, 1, 100_000)
    batch_size: int = _checked(4, _as_int, 1, 4096)
    lr: float = _checked(0.003, _as_float, 0.0, 10.0, strict_min=True)  # beyond 10 AdamW diverges at once
    weight_decay: float = _checked(0.01, _as_float, 0.0, 10.0)
    val_every: int = _checked(1, _as_int, 1, 100_000)
    seed: int = _checked(0, _as_int, 0, MAX_SEED)
    device: str = _checked("auto", _as_str, ("auto", "cpu", "cuda", "mps"))
    checkpoint_every: int = _checked(1, _as_int, 1, 100_000)
    # After training, the presence head (if any) is refitted alone on the best weights, frozen and
    # in eval mode, for this many epochs of batches of presence_refit_batch (0: no refit).
    presence_refit_epochs: int = _checked(10, _as_int, 0, 100_000)
    presence_refit_batch: int = _checked(8, _as_int, 1, 4096)
    # Outlier frames added to each refit batch to train the head's frame gate (0: no gate).
    presence_outliers: int = _checked(2, _as_int, 0, 1000)


@dataclass(frozen=True)
class AugmentParams(_Section):
    SECTION: ClassVar[str] = "augment"
    prob: float = _checked(0.5, _as_float, 0.0, 1.0)
    zoom: tuple[float, float] = _checked((1.0, 1.3), _as_range, 0.0, 10.0)
    rotate: float = _checked(0.17, _as_float, 0.0, math.pi)  # radians, symmetric range (-rotate, +rotate)
    gamma: tuple[float, float] = _checked((0.7, 1.5), _as_range, 0.0, 10.0)


@dataclass(frozen=True)
class HeatmapParams(_Section):
    SECTION: ClassVar[str] = "heatmap"
    sigma: float = _checked(2.5, _as_float, 0.1, 180.0)  # px of the 180 x 180 frame; below 0.1 px the
    # Gaussian underflows to zero everywhere
    presence_threshold: float = _checked(0.5, _as_float, 0.0, 1.0)
    # none | parabola | centroid (silr.model.codec)
    refine: str = _checked("centroid", _as_str, ("none", "parabola", "centroid"))
    # Which rule decides presence (silr.model.codec.PRESENCE_RULES, or auto).
    presence: str = _checked("auto", _as_str, PRESENCE_CHOICES)
    # The template rule (the data set authors'): NCC bar, and window in px at 8x (scaled by 8 / downsample).
    template_ncc: float = _checked(0.9, _as_float, -1.0, 1.0)
    template_window: float = _checked(25.0, _as_float, 3.0, 1000.0)
    # Fit the learned presence's Platt scaling (a, b) on the fold's validation frames (off: measured
    # worse on the phantom, whose folds hold 5 to 19 absent validation landmarks; docs/method.md).
    calibrate: bool = _checked(False, _as_bool)


@dataclass(frozen=True)
class LossesParams(_Section):
    SECTION: ClassVar[str] = "losses"
    # Named loss -> {term: weight}: every key of the section that is not an option below.
    # Term names (LOSS_TERM_NAMES) and weights are checked by _as_weights.
    named: Mapping[str, Mapping[str, float]] = field(default_factory=lambda: {
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
    })
    # Named loss -> its options (LOSS_OPTION_DEFAULTS), only those it sets.
    named_options: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: {
        "mse": {"sigma": 16.0},
        "mse_weighted": {"mse_foreground_weight": 1000.0, "mse_target_weight": False},
    })
    visibility_mode: str = _checked("hard", _as_str, ("soft", "hard"))
    kl_reduction: str = _checked("landmark", _as_str, ("landmark", "batchmean", "mean"))
    detach_segmentation: bool = _checked(True, _as_bool)

    @classmethod
    def from_dict(cls, section: Any, key: str | None = None) -> LossesParams:
        key = key or cls.SECTION
        values = _section_values(key, section, None)  # any key that is not an option names a loss
        options = {f.name: f.metadata["check"](f"{key}.{f.name}", values.pop(f.name))
                   for f in dataclasses.fields(cls) if "check" in f.metadata and f.name in values}
        named, named_options = {}, {}
        for name, entry in values.items():
            if not isinstance(entry, Mapping):
                raise _fail(f"{key}.{name}", "a mapping of term -> weight (and loss options)", entry)
            given = {k: v for k, v in entry.items() if k in LOSS_OPTION_DEFAULTS}
            named[str(name)] = _as_weights(f"{key}.{name}", {k: v for k, v in entry.items() if k not in given})
            if given:
                named_options[str(name)] = _as_loss_options(f"{key}.{name}", given)
        # A section that names no loss keeps the default ones.
        return cls(**options, **({"named": named, "named_options": named_options} if named else {}))


@dataclass(frozen=True)
class StudyParams(_Section):
    SECTION: ClassVar[str] = "study"
    # Each must name a loss under `losses` (checked by params_from_dict: it spans two sections).
    losses: tuple[str, ...] = _checked(("proposed", "proposed_plus", "mse", "ncc"), _as_list,
                                       "a non-empty list of loss names", _as_str)
    folds: tuple[int, ...] = _checked((1, 2, 3, 4, 5, 6), _as_list, "a non-empty list of fold numbers",
                                      _as_int, minimum=1)
    # Training seeds run besides train.seed, each (loss, fold, seed) its own train_seed / evaluate_seed
    # stage (train.seed itself, if listed, is re-emitted from the resume store, not trained again).
    seeds: tuple[int, ...] = _checked((), _as_seeds)


@dataclass(frozen=True)
class EvaluateParams(_Section):
    SECTION: ClassVar[str] = "evaluate"
    success_mm: tuple[float, ...] = _checked((2.0, 4.0, 8.0), _as_list, "a non-empty list of distances in mm",
                                             _as_float, minimum=0.0, strict_min=True)


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

    def loss_options(self, name: str) -> dict[str, Any]:
        """The options of the named loss (LOSS_OPTION_DEFAULTS, then what it sets)."""
        self.loss_weights(name)
        return {**LOSS_OPTION_DEFAULTS, **self.losses.named_options.get(name, {})}


# The sections of params.yaml, in order: (name, class); each class validates its own section.
SECTIONS: tuple[tuple[str, type[_Section]], ...] = tuple((cls.SECTION, cls) for cls in (
    SynthParams, DataParams, FoldsParams, ModelParams, TrainParams, AugmentParams, HeatmapParams, LossesParams,
    StudyParams, EvaluateParams))


# Top-level sections read elsewhere (silr.core.robustness_params), known so that a misspelt section
# (`trian:`) is an error here rather than silently ignored.
OTHER_SECTIONS: tuple[str, ...] = ("robustness",)


def params_from_dict(raw: Mapping[str, Any]) -> Params:
    """Validate a params mapping (as read from YAML) into typed `Params`."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"params must be a mapping of sections, got {type(raw).__name__}")
    known = [name for name, _ in SECTIONS] + list(OTHER_SECTIONS)
    unknown = [str(key) for key in raw if key not in known]
    if unknown:
        raise ConfigError(f"unknown section(s) {quoted(', '.join(unknown))} (known: {', '.join(known)})")
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


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader without aliases and without duplicate keys.

    An alias (`*name`) lets 344 bytes expand to gigabytes (a "billion laughs"), and params.yaml
    (written by hand or by `dvc exp run -S`) never needs one; a duplicate key would let the last
    one win silently."""

    def compose_node(self, parent, index):  # noqa: ANN001 - PyYAML's signature
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.MarkedYAMLError(problem="YAML aliases (*name) are not allowed in params",
                                       problem_mark=event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):  # noqa: ANN001 - PyYAML's signature
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.MarkedYAMLError(problem=f"duplicate key {quoted(key)}", problem_mark=key_node.start_mark)
            if isinstance(key, (str, int, float, bool)):
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


# A params file larger than this is not a params file.
MAX_PARAMS_BYTES = 1024 * 1024


def read_yaml(path: Path) -> Any:
    """The YAML of `path` (aliases and duplicate keys refused); ConfigError naming the file, line
    and problem for anything that is not small, UTF-8, valid YAML."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if len(data) > MAX_PARAMS_BYTES:
        raise ConfigError(f"{path}: {len(data):,} bytes, more than a params file holds ({MAX_PARAMS_BYTES:,})")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}, line {line})") from None
    try:
        return yaml.load(text, Loader=_StrictLoader) or {}  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be params") from None


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
