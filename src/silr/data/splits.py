"""Leave-one-specimen-out splits: how they are made, their file and its reader.

Fold k tests every frame of specimen k. The frames of the other specimens are shuffled
(seeded per fold) and split into training and validation: round(val_fraction x n) frames
go to validation, at least one when there are two or more training frames and
val_fraction > 0, never all of them. Every frame is in exactly one set of each fold.

`data/folds.json` (written by the `folds` stage, read by train, evaluate and report):
    {"data": path, "val_fraction": f, "seed": s, "specimens": [1, ...],
     "frames_per_specimen": {"1": n, ...},
     "folds": {"1": {"test_specimen": 1, "train": [[specimen, frame], ...], "val": [...],
                     "test": [...]}}}
Frames are (specimen number, index of the frame in that specimen's `projs`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from silr.core.errors import DataError, quoted
from silr.data.processed import ProcessedData

__all__ = ["SETS", "Fold", "FrameId", "check_against_data", "folds_to_json", "load_folds",
           "make_folds", "parse_folds", "validation_count"]

FrameId = tuple[int, int]  # (specimen number, frame index)
SETS = ("train", "val", "test")


@dataclass(frozen=True)
class Fold:
    number: int
    test_specimen: int
    train: tuple[FrameId, ...]
    val: tuple[FrameId, ...]
    test: tuple[FrameId, ...]


def validation_count(pool: int, val_fraction: float) -> int:
    """Frames of a pool of training frames that go to validation."""
    if val_fraction <= 0 or pool < 2:
        return 0
    return min(pool - 1, max(1, math.floor(val_fraction * pool + 0.5)))


def make_folds(frames_per_specimen: dict[int, int], val_fraction: float,
               seed: int) -> dict[int, Fold]:
    """Pure logic: one fold per specimen, numbered by the specimen it tests."""
    if len(frames_per_specimen) < 2:
        raise DataError(f"leave-one-specimen-out needs at least 2 specimens, "
                        f"got {len(frames_per_specimen)}")
    empty = [number for number, count in frames_per_specimen.items() if count < 1]
    if empty:
        raise DataError(f"specimen(s) {empty} have no frames")
    folds: dict[int, Fold] = {}
    for test_specimen in sorted(frames_per_specimen):
        pool = [(s, i) for s in sorted(frames_per_specimen) if s != test_specimen
                for i in range(frames_per_specimen[s])]
        # One generator per fold, so a fold's split does not depend on how many folds there are.
        order = np.random.default_rng([seed, test_specimen]).permutation(len(pool))
        n_val = validation_count(len(pool), val_fraction)
        val = sorted(pool[i] for i in order[:n_val])
        train = sorted(pool[i] for i in order[n_val:])
        test = [(test_specimen, i) for i in range(frames_per_specimen[test_specimen])]
        folds[test_specimen] = Fold(test_specimen, test_specimen, tuple(train), tuple(val),
                                    tuple(test))
    return folds


def folds_to_json(folds: dict[int, Fold], *, data: str, val_fraction: float, seed: int,
                  frames_per_specimen: dict[int, int]) -> dict[str, Any]:
    return {
        "data": data,
        "val_fraction": val_fraction,
        "seed": seed,
        "specimens": sorted(frames_per_specimen),
        "frames_per_specimen": {str(n): c for n, c in sorted(frames_per_specimen.items())},
        "folds": {str(k): {"test_specimen": fold.test_specimen,
                           **{name: [list(frame) for frame in getattr(fold, name)]
                              for name in SETS}}
                  for k, fold in sorted(folds.items())},
    }


def _frame_list(value: Any, path: Path, where: str) -> tuple[FrameId, ...]:
    if not isinstance(value, list):
        raise DataError(f"{path}: {where} must be a list of [specimen, frame] pairs, "
                        f"found {type(value).__name__}")
    frames = []
    for item in value:
        if (not isinstance(item, list) or len(item) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in item)):
            raise DataError(f"{path}: {where} has {item!r}, expected a [specimen, frame] pair "
                            f"of integers")
        frames.append((item[0], item[1]))
    return tuple(frames)


def parse_folds(raw: Any, path: Path) -> dict[int, Fold]:
    """Folds from the JSON object, checking that no frame is in two sets of a fold."""
    if not isinstance(raw, dict) or not isinstance(raw.get("folds"), dict) or not raw["folds"]:
        raise DataError(f"{path}: expected an object with a non-empty 'folds' mapping "
                        f"(written by `silr folds`)")
    folds: dict[int, Fold] = {}
    for key, entry in raw["folds"].items():
        where = f"folds.{key}"
        # ASCII digits only: '²'.isdigit() is True
        if not (key.isascii() and key.isdigit()) or not isinstance(entry, dict):
            raise DataError(f"{path}: {where}: expected a fold number mapped to an object")
        missing = [name for name in ("test_specimen", *SETS) if name not in entry]
        if missing:
            raise DataError(f"{path}: {where} has no {', '.join(missing)}")
        test_specimen = entry["test_specimen"]
        if not isinstance(test_specimen, int) or isinstance(test_specimen, bool):
            raise DataError(f"{path}: {where}.test_specimen must be a specimen number, "
                            f"found {test_specimen!r}")
        sets = {name: _frame_list(entry[name], path, f"{where}.{name}") for name in SETS}
        seen: dict[FrameId, str] = {}
        for name, frames in sets.items():
            for frame in frames:
                if frame in seen:
                    raise DataError(f"{path}: {where}: frame {list(frame)} is in both "
                                    f"{seen[frame]} and {name}")
                seen[frame] = name
        wrong = [f for f in sets["test"] if f[0] != test_specimen] + \
                [f for f in sets["train"] + sets["val"] if f[0] == test_specimen]
        if wrong:
            raise DataError(f"{path}: {where}: frame {list(wrong[0])} breaks leave-one-out "
                            f"(test specimen {test_specimen})")
        folds[int(key)] = Fold(int(key), test_specimen, sets["train"], sets["val"], sets["test"])
    return dict(sorted(folds.items()))


def check_against_data(folds: dict[int, Fold], data: ProcessedData, path: Path) -> None:
    """Every frame named exists in the data, and each fold uses every frame exactly once."""
    available = {(s, i) for s, count in data.frames_per_specimen.items() for i in range(count)}
    for k, fold in folds.items():
        named = {frame: name for name in SETS for frame in getattr(fold, name)}
        for frame, name in named.items():
            if frame not in available:
                detail = (f"specimen {frame[0]} does not exist "
                          f"(the data holds {sorted(data.specimens)})"
                          if frame[0] not in data.specimens else
                          f"specimen {frame[0]} has {data.frames_per_specimen[frame[0]]} frames")
                raise DataError(f"{path}: fold {k} {name} names frame {list(frame)}, but {detail}; "
                                f"rerun `silr folds` (dvc repro folds)")
        unused = sorted(available - set(named))
        if unused:
            raise DataError(f"{path}: fold {k} leaves frame {list(unused[0])} of the data in no "
                            f"set ({len(unused)} in all); rerun `silr folds` (dvc repro folds)")


def load_folds(path: str | Path, data: ProcessedData | None = None) -> dict[int, Fold]:
    """Read a folds file; with `data`, also check it against the data set."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file; write it with `silr folds` (dvc repro folds)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a readable JSON folds file ({quoted(str(exc))})") from None
    except RecursionError:
        raise DataError(f"{path}: nested too deeply to be a folds file") from None
    folds = parse_folds(raw, path)
    if data is not None:
        check_against_data(folds, data, path)
    return folds
