"""The value checkers of params.yaml and the base of its section dataclasses.

Each checker takes (key, value, *options) and returns the value in its typed form, or raises
a ConfigError naming the key (`train.batch_size must be >= 1, got 0`). A section field names
its checker next to its default (`checked`); `Section.from_dict` applies them.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import field
from decimal import Decimal
from typing import Any, ClassVar, TypeVar

from silr.core.errors import ConfigError, quoted

__all__ = [
    "MAX_CHANNELS",
    "MAX_FLOAT",
    "MAX_INT",
    "MAX_SEED",
    "Section",
    "as_bool",
    "as_float",
    "as_int",
    "as_list",
    "as_optional_str",
    "as_range",
    "as_str",
    "checked",
    "fail",
    "section_values",
]

# Every number of params.yaml has an upper bound, so a typo (or a hostile file) cannot ask for
# 570 TB of synthetic frames or 1e44 epochs. Integers: below 2**31 unless a field says less
# (seeds must also fit numpy's 32-bit seeds); floats: at most 1e9 unless a field says less.
MAX_INT = 2 ** 31 - 1
MAX_FLOAT = 1.0e9
MAX_SEED = 2 ** 32 - 1  # numpy's and torch's seeds are 32-bit
MAX_CHANNELS = 4096  # a decoder wider than this would not fit a GPU's memory at 192 x 192

# A number in exponent form that YAML 1.1 (PyYAML) reads as text: its floats need a dot in the
# mantissa and a sign in the exponent (3.0e-3 is a float; 3e-3, 1e3 and 1.5e3 are strings).
_EXPONENT_NUMBER = re.compile(r"([-+]?(?:\d+\.?\d*|\.\d+))[eE]([-+]?\d+)")


def fail(key: str, expected: str, got: Any) -> ConfigError:
    return ConfigError(f"{key} must be {expected}, got {quoted(got)}")


def _number_text_hint(value: Any, integer: bool = False) -> str:
    """For a string that reads as a number: why YAML gave text and what to write instead;
    else ""."""
    if not isinstance(value, str):
        return ""
    text = value.strip()
    try:
        number = Decimal(text)
    except ArithmeticError:
        return ""
    if not number.is_finite():
        return ""
    whole = number == number.to_integral_value()
    plain = format(number.normalize() if whole else number, "f")
    if integer and not whole:
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


def as_int(key: str, value: Any, minimum: int | None = None, maximum: int = MAX_INT) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        hint = _number_text_hint(value, integer=True)
        raise ConfigError(f"{fail(key, 'an integer', value)}{hint}")
    if minimum is not None and value < minimum:
        raise fail(key, f">= {minimum}", value)
    if value > maximum:
        raise fail(key, f"<= {maximum}", value)
    return value


def as_float(key: str, value: Any, minimum: float | None = None,
             maximum: float | None = MAX_FLOAT, strict_min: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{fail(key, 'a finite number', value)}{_number_text_hint(value)}")
    value = float(value)
    if minimum is not None and (value <= minimum if strict_min else value < minimum):
        raise fail(key, f"{'>' if strict_min else '>='} {minimum}", value)
    if maximum is not None and value > maximum:
        raise fail(key, f"<= {maximum}", value)
    return value


def as_bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise fail(key, "true or false", value)
    return value


def as_str(key: str, value: Any, choices: tuple[str, ...] | None = None) -> str:
    if not isinstance(value, str) or not value:
        raise fail(key, "a non-empty string", value)
    if choices is not None and value not in choices:
        raise fail(key, f"one of {', '.join(choices)}", value)
    return value


def as_optional_str(key: str, value: Any) -> str | None:
    """A path or nothing: null and "" both mean none."""
    return None if value is None or value == "" else as_str(key, value)


def as_range(key: str, value: Any, minimum: float,
             maximum: float = MAX_FLOAT) -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise fail(key, "a [low, high] pair", value)
    low = as_float(f"{key}[0]", value[0], minimum, maximum)
    high = as_float(f"{key}[1]", value[1], minimum, maximum)
    if high < low:
        raise fail(key, "a [low, high] pair with low <= high", value)
    return (low, high)


def as_list(key: str, value: Any, what: str, item: Callable[..., Any],
            **options: Any) -> tuple[Any, ...]:
    """A non-empty list (`what` describes it) whose items pass `item(f"{key}[]", v, **options)`."""
    if not isinstance(value, (list, tuple)) or not value:
        raise fail(key, what, value)
    return tuple(item(f"{key}[]", v, **options) for v in value)


def checked(default: Any, check: Callable[..., Any], *options: Any, **kw_options: Any) -> Any:
    """A section field: its default and its rule, `check(key, value, *options, **kw_options)`."""
    def rule(key: str, value: Any) -> Any:
        return check(key, value, *options, **kw_options)
    return field(default=default, metadata={"check": rule})


def section_values(key: str, section: Any, known: set[str] | None) -> dict[str, Any]:
    """The section's mapping (absent or null = empty); with `known`, any other key is an error."""
    if section is None:
        section = {}
    if not isinstance(section, Mapping):
        raise fail(key, "a mapping", section)
    unknown = sorted(set(section) - known) if known is not None else []
    if unknown:
        raise ConfigError(f"{key}: unknown key(s) {', '.join(map(str, unknown))} "
                          f"(known: {', '.join(sorted(known))})")
    return dict(section)


_S = TypeVar("_S", bound="Section")


class Section:
    """Base of the section dataclasses: `from_dict` checks each given key with its field's rule;
    a key left out keeps the field's default."""

    SECTION: ClassVar[str]

    @classmethod
    def from_dict(cls: type[_S], section: Any, key: str | None = None) -> _S:
        key = key or cls.SECTION
        fields = dataclasses.fields(cls)  # type: ignore[arg-type]
        values = section_values(key, section, {f.name for f in fields})
        return cls(**{f.name: f.metadata["check"](f"{key}.{f.name}", values[f.name])
                      for f in fields if f.name in values})
