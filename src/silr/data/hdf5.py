"""Guarded reading of HDF5 files that silr did not write (both DeepFluoro layouts read so).

Every link is checked before it is followed: external and user-defined links (data from any
file on disk), soft-link cycles and dangling links are refused. A dataset's data must lie in
the file itself (no virtual datasets, no external raw storage), and its declared size is
checked against the memory budget (`silr.core.limits`) before a value is read. Every
failure is a DataError naming the file and the HDF5 path.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from silr.core import limits
from silr.core.errors import DataError, quoted

__all__ = ["dataset", "declared_count", "get", "member", "members", "read", "scalar", "shown",
           "text"]


def shown(text: str) -> str:
    """An HDF5 name for a message: as it is when short and printable, else a bounded repr."""
    return text if len(text) <= 80 and text.isprintable() else quoted(text)


def _external_link_error(link: Any, name: str, path: Path) -> DataError:
    target = (f" -> {shown(link.filename)}:{shown(link.path)}"
              if isinstance(link, h5py.ExternalLink) else "")
    return DataError(f"{path}: {shown(name)} is an external link{target}; silr reads only what "
                     f"the file itself holds (copy the data in)")


def member(group: h5py.Group, key: str, path: Path) -> Any:
    """group[key] for one link name, or None; DataError for a link that leaves the file
    (external or user-defined: data from any file on disk must never reach an output) or that
    cannot be resolved (a soft-link cycle, a dangling link, a corrupt file)."""
    name = f"{group.name.rstrip('/')}/{key}".lstrip("/")
    link = None
    try:
        link = group.get(key, getlink=True)
        if link is None:
            return None
        if not isinstance(link, (h5py.HardLink, h5py.SoftLink)):
            raise _external_link_error(link, name, path)
        item = group.get(key)
    except (OSError, RuntimeError, KeyError, ValueError) as exc:
        if isinstance(link, h5py.SoftLink):
            raise DataError(f"{path}: soft link {shown(name)} -> {shown(link.path)} cannot be "
                            f"resolved (a link cycle or a dangling link)") from None
        raise DataError(f"{path}: cannot read {shown(name)} (file truncated or corrupt? "
                        f"{shown(str(exc))})") from None
    if item is None and isinstance(link, h5py.SoftLink):
        raise DataError(f"{path}: soft link {shown(name)} -> {shown(link.path)} points nowhere "
                        f"(a dangling link)")
    return item


def members(group: h5py.Group, path: Path) -> Iterator[tuple[str, Any]]:
    """(name, item) of every link in `group`, each checked by `member`."""
    try:
        keys = list(group.keys())
    except (OSError, RuntimeError, KeyError) as exc:
        raise DataError(f"{path}: cannot list {group.name} (file truncated or corrupt? "
                        f"{shown(str(exc))})") from None
    for key in keys:
        yield key, member(group, key, path)


def get(group: h5py.Group, key: str, path: Path, kind: type = h5py.Dataset) -> Any:
    """group[key] (a key may hold several /-separated parts, each link checked by `member`),
    or DataError naming the full HDF5 path of what is missing."""
    what = "dataset" if kind is h5py.Dataset else "group"
    name = f"{group.name.rstrip('/')}/{key}".lstrip("/")
    item: Any = group
    for part in key.split("/"):
        item = member(item, part, path) if isinstance(item, h5py.Group) else None
        if item is None:
            raise DataError(f"{path}: missing {what} {shown(name)}")
    if not isinstance(item, kind):
        raise DataError(f"{path}: {shown(name)} must be a {what}, found a {type(item).__name__}")
    return item


def dataset(group: h5py.Group, key: str, path: Path) -> h5py.Dataset:
    """A dataset whose data lie in this file: virtual datasets and external raw storage map
    other files (any file on disk) into it, so they are refused."""
    found = get(group, key, path)
    name = found.name.lstrip("/")
    if found.is_virtual or found.external:
        storage = "a virtual dataset" if found.is_virtual else "external storage"
        raise DataError(f"{path}: {shown(name)} stores its data in other files ({storage}); "
                        f"silr reads only what the file itself holds")
    return found


def read(group: h5py.Group, key: str, path: Path) -> np.ndarray:
    """A dataset's values, after its declared size is checked against the memory budget."""
    found = dataset(group, key, path)
    name = found.name.lstrip("/")
    limits.check_declared_bytes(str(path), found.shape or (), found.dtype.itemsize,
                                f"dataset {shown(name)}")
    try:
        return np.asarray(found[()])
    except MemoryError:
        raise DataError(f"{path}: {shown(name)} is too large to read into memory") from None
    except (OSError, RuntimeError, ValueError, TypeError) as exc:
        raise DataError(f"{path}: cannot read {shown(name)} (file truncated or corrupt? "
                        f"{shown(str(exc))})") from None


def declared_count(group: h5py.Group, key: str, path: Path) -> int:
    """How many elements `group`/`key` declares (0 for an empty dataspace), without reading it."""
    shape = dataset(group, key, path).shape
    return 0 if shape is None else math.prod(shape)


def scalar(group: h5py.Group, key: str, path: Path) -> float:
    """A dataset holding one finite real number, as a float."""
    count = declared_count(group, key, path)  # before reading: a "scalar" may declare gigabytes
    value = read(group, key, path) if count == 1 else np.empty(0)
    where = f"{group.name.lstrip('/')}/{key}"
    if value.size != 1 or not np.issubdtype(value.dtype, np.number) or np.iscomplexobj(value):
        found = f"{value.dtype} shape {value.shape}" if count == 1 else f"{count} values"
        raise DataError(f"{path}: {where} must be a single number, found {found}")
    number = float(value.reshape(()))
    if not math.isfinite(number):
        raise DataError(f"{path}: {where} must be a finite number, found {number}")
    return number


def text(value: Any) -> str:
    """A string stored as str, bytes or a one-element array of either (h5py returns all three)."""
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(()).item()
    return value.decode(errors="replace") if isinstance(value, (bytes, np.bytes_)) else str(value)
