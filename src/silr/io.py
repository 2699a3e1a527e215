"""Atomic output: every file a stage writes appears complete or not at all.

A writer gets a temporary name in the target's own directory (so the final rename is
atomic on POSIX file systems) and the file is renamed onto the target only when the
writer finished without an exception. A killed process leaves at most a hidden
`.silr-tmp-*` file, never a half-written target.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from silr.errors import OutputError

TMP_PREFIX = ".silr-tmp-"


def _prepare_dir(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        blocker = next((p for p in (path.parent, *path.parent.parents) if p.exists() and not p.is_dir()), None)
        reason = f"{blocker} is a file, expected a directory" if blocker is not None else exc.strerror
        raise OutputError(f"{path}: cannot create directory {path.parent}: {reason}") from None
    if not os.access(path.parent, os.W_OK):
        raise OutputError(f"{path}: output directory {path.parent} is not writable")


def ensure_writable(*paths: str | os.PathLike) -> None:
    """Check, before any work, that every output in `paths` can be written: its directory
    exists or can be made, accepts a new file, and the path is not a directory.

    A stage with several outputs calls this first, so a read-only or blocked location fails
    it before it computes anything and before any of its outputs is written (`os.access`
    alone is not enough: it says yes to root on a read-only file system).
    """
    for path in paths:
        target = Path(path)
        _prepare_dir(target)
        if target.is_dir():
            raise OutputError(f"{target}: is a directory, expected a file path")
        probe = target.parent / f"{TMP_PREFIX}probe-{secrets.token_hex(4)}"
        try:
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except OSError as exc:
            raise OutputError(f"{target}: output directory {target.parent} does not accept new files "
                              f"({exc.strerror})") from None
        with contextlib.suppress(FileNotFoundError):
            probe.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` if the block succeeds.

    The temporary name keeps the target's suffix, so libraries that pick a format from
    the extension (matplotlib, h5py) behave as for the target itself.
    """
    target = Path(path)
    _prepare_dir(target)
    tmp = target.parent / f"{TMP_PREFIX}{secrets.token_hex(4)}-{target.name}"
    try:
        yield tmp
        if not tmp.exists():
            raise OutputError(f"{target}: the writer produced no file")
        _fsync(tmp)
        os.replace(tmp, target)
    except OSError as exc:
        raise OutputError(f"{target}: cannot write: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _fsync(path: Path) -> None:
    # Make the content durable before the rename publishes it.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def _json_safe(value: Any) -> Any:
    # NaN/inf are not JSON; write null so every reader (dvc, pandas, browsers) accepts the file.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return _json_safe(value.item())
    return value


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as stable, diff-friendly JSON (sorted keys, 2-space indent, final newline)."""
    text = json.dumps(_json_safe(obj), indent=2, sort_keys=True) + "\n"
    write_text(path, text)


def write_with(path: str | os.PathLike, writer: Callable[[Path], None]) -> None:
    """Call `writer(tmp_path)` and publish the file it wrote at `path` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)


def open_lock_file(path: str | os.PathLike) -> IO[str]:
    """Open (creating) a lock file in place for an flock: a lock file is not an output, its
    content does not matter and several processes open it at once, so it is the one file
    that is not written through a temporary name."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return open(path, "a+")  # noqa: SIM115 - the caller holds it open for as long as it holds the lock
