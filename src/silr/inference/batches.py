"""`silr predict`'s reading of its inputs: each one read, checked and prepared as the model's
frame (an input that fails does so alone, in one line), gathered into batches whose decoded
pixels stay within a share of the memory budget.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from silr.core import limits
from silr.core.errors import DataError, SilrError, SilrWarning
from silr.inference.checks import frame_warnings, raw_warnings
from silr.inference.inputs import Failure, InputSpec, PreparedFrame, prepare_frame

if TYPE_CHECKING:  # torch and tqdm: imported where models load and the batch runs, not with --help
    from tqdm import tqdm

    from silr.inference.predictor import Ensemble

__all__ = ["HELD_INPUT_SHARE", "PreparedInput", "load_and_prepare", "prepared_batches"]

# The decoded input pixels a batch may hold, as a share of silr.core.limits' memory budget: the
# rest is left to the models, the label maps on the input grid and the overlays being drawn.
HELD_INPUT_SHARE = 0.25


class PreparedInput(NamedTuple):
    """One input ready for the models, what its reading found, and the seconds it took."""

    prepared: PreparedFrame
    warnings: list[str]
    seconds: float


def load_and_prepare(spec: InputSpec, ensemble: Ensemble) -> tuple[PreparedFrame, list[str]]:
    """Read and prepare one input; SilrError (with a one-line reason) for anything that fails."""
    preprocessing = ensemble.card.preprocessing
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", SilrWarning)
            frame = spec.load()
            if float(frame.pixels.max()) == float(frame.pixels.min()):
                raise DataError(f"{spec.source}: constant frame (every pixel is "
                                f"{float(frame.pixels.min()):g}): nothing to predict")
            found = raw_warnings(frame, preprocessing)
            prepared = prepare_frame(frame, ensemble.frame_size, preprocessing)
        if float(np.ptp(prepared.frame)) == 0.0:
            raise DataError(f"{spec.source}: the prepared frame is constant: nothing to predict")
    except SilrError:
        raise
    except MemoryError:
        raise DataError(f"{spec.source}: out of memory while reading or preparing it") from None
    except Exception as exc:  # a hostile or odd file fails alone, in one line, never a traceback
        detail = (str(exc).splitlines() or [""])[0][:200]
        raise DataError(f"{spec.source}: cannot be read ({type(exc).__name__}: {detail})") \
            from None
    found += [str(w.message) for w in caught if issubclass(w.category, SilrWarning)]
    return prepared, found + frame_warnings(prepared)


def prepared_batches(todo: Sequence[InputSpec], ensemble: Ensemble, batch_size: int,
                     failures: list[Failure], bar: tqdm) -> Iterator[list[PreparedInput]]:
    """Load and prepare inputs into batches of at most `batch_size` frames whose decoded pixels
    stay under HELD_INPUT_SHARE of the memory budget (an 8000 x 8000 frame holds 256 MB as
    float32; sixteen of them in one batch would need 4 GiB before the overlays are drawn).
    An input that fails is appended to `failures` and counted on `bar`."""
    budget = HELD_INPUT_SHARE * limits.memory_budget_bytes()
    batch: list[PreparedInput] = []
    held = 0
    for spec in todo:
        start = time.perf_counter()
        try:
            item, item_warnings = load_and_prepare(spec, ensemble)
        except SilrError as exc:
            failures.append(Failure(spec.source, str(exc), spec.stem))
            bar.update(1)
            continue
        batch.append(PreparedInput(item, item_warnings, time.perf_counter() - start))
        held += item.input.pixels.nbytes
        if len(batch) >= batch_size or held >= budget:
            yield batch
            batch, held = [], 0
    if batch:
        yield batch
