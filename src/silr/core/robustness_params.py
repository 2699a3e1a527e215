"""The `robustness` section of params.yaml: the corruption benchmark's types, seed and steps.

One section of `silr.core.params.Params` (`params.robustness`), read with the others by
`load_params`; it has a module of its own only because it is long.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from silr.core.params_checks import Section, as_float, as_int, as_list, as_str, checked, fail

__all__ = ["CORRUPTION_NAMES", "RobustnessParams"]

# The corruption types, in the suite's order (silr.evaluation.corruptions registers one function
# per name and checks at import that the two agree).
CORRUPTION_NAMES: tuple[str, ...] = ("quantum_noise", "scatter", "detector_blur", "motion_blur",
                                     "contrast", "instruments", "collimation")


def _as_steps(key: str, value: Any, item: Callable[..., Any], *, increasing: bool = True,
              **options: Any) -> tuple[Any, ...]:
    """Five severity steps (robustness), each passing `item`, monotone in the direction of harm."""
    if not isinstance(value, (list, tuple)) or len(value) != 5:
        raise fail(key, "a list of 5 values, one per severity 1-5", value)
    steps = tuple(item(f"{key}[{i}]", v, **options) for i, v in enumerate(value))
    ordered = all((b >= a) if increasing else (b <= a) for a, b in zip(steps, steps[1:]))
    if not ordered:
        direction = "non-decreasing" if increasing else "non-increasing"
        raise fail(key, f"{direction} steps (severity 1 to 5 must not get milder)", list(value))
    return steps


def _as_corruptions(key: str, value: Any) -> tuple[str, ...]:
    # The names are silr.evaluation.corruptions' registry; listed here so that params load
    # without numpy/scipy.
    names = as_list(key, value, "a non-empty list of corruption names", as_str,
                    choices=CORRUPTION_NAMES)
    if len(set(names)) != len(names):
        raise fail(key, "a list of distinct corruption names", list(value))
    return names


@dataclass(frozen=True)
class RobustnessParams(Section):
    """The corruption benchmark (silr.evaluation.corruptions, silr.stages.robustness): which
    types, their seed and their five severity steps each."""
    SECTION: ClassVar[str] = "robustness"
    corruptions: tuple[str, ...] = checked(CORRUPTION_NAMES, _as_corruptions)
    seed: int = checked(0, as_int, 0)
    photons_air: float = checked(100000.0, as_float, 1.0)
    scatter_to_primary: tuple[float, ...] = checked((0.25, 0.5, 1.0, 2.0, 4.0), _as_steps,
                                                    as_float, minimum=0.0)
    scatter_sigma_px: float = checked(25.0, as_float, 0.0, strict_min=True)
    detector_blur_px: tuple[float, ...] = checked((0.5, 1.0, 1.5, 2.0, 3.0), _as_steps, as_float,
                                                  minimum=0.0)
    motion_blur_px: tuple[float, ...] = checked((2.0, 4.0, 6.0, 9.0, 12.0), _as_steps, as_float,
                                                minimum=0.0)
    contrast_gamma: tuple[float, ...] = checked((1.5, 2.0, 2.5, 3.0, 4.0), _as_steps, as_float,
                                                minimum=1.0)
    contrast_levels: tuple[int, ...] = checked((64, 32, 16, 8, 4), _as_steps, as_int,
                                               increasing=False, minimum=2)
    instruments: tuple[int, ...] = checked((1, 2, 3, 4, 6), _as_steps, as_int, minimum=0)
    collimation_fraction: tuple[float, ...] = checked((0.1, 0.2, 0.3, 0.4, 0.5), _as_steps,
                                                      as_float, minimum=0.0, maximum=0.9)
