"""The `robustness` section of params.yaml: the corruption benchmark's types, seed and steps.

Checked with the rules and messages of silr.core.params (its checkers and `_Section`), but read here
rather than in `silr.core.params.Params`: the benchmark was added without changing the modules that
the training stages import, so that the committed models did not have to be trained again.
A later restructuring may fold the section into `Params`; the checks stay the same.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from silr.core.errors import ConfigError
from silr.core.params import (
    DEFAULT_PARAMS_FILE,
    _as_float,
    _as_int,
    _as_list,
    _as_str,
    _checked,
    _fail,
    _Section,
    read_yaml,
)

# The corruption types, in the suite's order (silr.evaluation.corruptions registers one function per name
# and checks at import that the two agree).
CORRUPTION_NAMES: tuple[str, ...] = ("quantum_noise", "scatter", "detector_blur", "motion_blur", "contrast",
                                     "instruments", "collimation")


def _as_steps(key: str, value: Any, item: Callable[..., Any], *, increasing: bool = True,
              **options: Any) -> tuple[Any, ...]:
    """Five severity steps (robustness), each passing `item`, monotone in the direction of harm."""
    if not isinstance(value, (list, tuple)) or len(value) != 5:
        raise _fail(key, "a list of 5 values, one per severity 1-5", value)
    steps = tuple(item(f"{key}[{i}]", v, **options) for i, v in enumerate(value))
    ordered = all((b >= a) if increasing else (b <= a) for a, b in zip(steps, steps[1:]))
    if not ordered:
        raise _fail(key, f"{'non-decreasing' if increasing else 'non-increasing'} steps (severity 1 to 5 must "
                         f"not get milder)", list(value))
    return steps


def _as_corruptions(key: str, value: Any) -> tuple[str, ...]:
    # The names are silr.evaluation.corruptions' registry; listed here so that params load without numpy/scipy.
    names = _as_list(key, value, "a non-empty list of corruption names", _as_str, choices=CORRUPTION_NAMES)
    if len(set(names)) != len(names):
        raise _fail(key, "a list of distinct corruption names", list(value))
    return names


@dataclass(frozen=True)
class RobustnessParams(_Section):
    """The corruption benchmark (silr.evaluation.corruptions, silr.stages.robustness): which types, their seed and
    their five severity steps each."""
    SECTION: ClassVar[str] = "robustness"
    corruptions: tuple[str, ...] = _checked(CORRUPTION_NAMES, _as_corruptions)
    seed: int = _checked(0, _as_int, 0)
    photons_air: float = _checked(100000.0, _as_float, 1.0)
    scatter_to_primary: tuple[float, ...] = _checked((0.25, 0.5, 1.0, 2.0, 4.0), _as_steps, _as_float,
                                                     minimum=0.0)
    scatter_sigma_px: float = _checked(25.0, _as_float, 0.0, strict_min=True)
    detector_blur_px: tuple[float, ...] = _checked((0.5, 1.0, 1.5, 2.0, 3.0), _as_steps, _as_float, minimum=0.0)
    motion_blur_px: tuple[float, ...] = _checked((2.0, 4.0, 6.0, 9.0, 12.0), _as_steps, _as_float, minimum=0.0)
    contrast_gamma: tuple[float, ...] = _checked((1.5, 2.0, 2.5, 3.0, 4.0), _as_steps, _as_float, minimum=1.0)
    contrast_levels: tuple[int, ...] = _checked((64, 32, 16, 8, 4), _as_steps, _as_int, increasing=False,
                                                minimum=2)
    instruments: tuple[int, ...] = _checked((1, 2, 3, 4, 6), _as_steps, _as_int, minimum=0)
    collimation_fraction: tuple[float, ...] = _checked((0.1, 0.2, 0.3, 0.4, 0.5), _as_steps, _as_float,
                                                       minimum=0.0, maximum=0.9)


def robustness_params(section: Any) -> RobustnessParams:
    """A `robustness` mapping (as read from YAML; None = every default) -> typed settings."""
    return RobustnessParams.from_dict(section)


def load_robustness_params(path: str | Path = DEFAULT_PARAMS_FILE) -> RobustnessParams:
    """The `robustness` section of a params file (a missing file or section: the defaults)."""
    path = Path(path)
    if not path.exists():
        return RobustnessParams()
    raw = read_yaml(path)  # params' own reader: aliases, duplicates and bad bytes refused alike
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: params must be a mapping of sections, got {type(raw).__name__}")
    try:
        return robustness_params(raw.get("robustness"))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
