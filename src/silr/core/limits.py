"""Resource limits shared by every reader: what a declared size may cost before it is read.

A small hostile file can declare a huge array (an HDF5 dataset of 120 x 4096 x 4096, a PNG of
8000 x 8000 px compressed to 400 KB). Readers compare the declared size with these limits
before reading any pixel, and `silr predict` keeps the frames it holds at once under
MEMORY_BUDGET_BYTES.
"""

from __future__ import annotations

import os

from silr.core.errors import ConfigError, DataError

__all__ = ["DEFAULT_MEMORY_BUDGET_BYTES", "MEMORY_BUDGET_ENV", "check_declared_bytes",
           "memory_budget_bytes"]

# What one command may hold of decoded input at once: 4 GiB by default, or SILR_MEMORY_BUDGET_MB.
DEFAULT_MEMORY_BUDGET_BYTES = 4 * 1024 ** 3
MEMORY_BUDGET_ENV = "SILR_MEMORY_BUDGET_MB"


def memory_budget_bytes() -> int:
    """The decoded-input budget in bytes (SILR_MEMORY_BUDGET_MB overrides the default)."""
    text = os.environ.get(MEMORY_BUDGET_ENV)
    if text is None:
        return DEFAULT_MEMORY_BUDGET_BYTES
    try:
        megabytes = int(text)
    except ValueError:
        megabytes = 0
    if not 64 <= megabytes <= 1024 ** 2:
        raise ConfigError(f"{MEMORY_BUDGET_ENV} must be a whole number of MB in 64..1048576, "
                          f"got {text[:20]!r}")
    return megabytes * 1024 ** 2


def check_declared_bytes(where: str, shape: tuple[int, ...], itemsize: int,
                         what: str = "dataset") -> int:
    """The bytes `shape` x `itemsize` would take; DataError naming `where` if beyond the budget."""
    count = 1
    for side in shape:
        count *= int(side)
    size = count * int(itemsize)
    budget = memory_budget_bytes()
    if size > budget:
        dims = " x ".join(str(int(s)) for s in shape)
        raise DataError(f"{where}: the {what} declares {dims} ({size / 1024 ** 3:.1f} GiB), beyond "
                        f"the memory budget of {budget / 1024 ** 3:.1f} GiB ({MEMORY_BUDGET_ENV} "
                        f"raises it); not read")
    return size
