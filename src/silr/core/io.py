"""Atomic output: every file a stage writes appears complete or not at all.

A writer gets a temporary name in the target's own directory (so the final rename is
atomic on POSIX file systems) and the file is renamed onto the target only when the
writer finished without an exception. A killed process leaves at most a hidden
`.silr-tmp-<pid>-*` file, never a half-written target; the next write into that directory
removes the temporaries of processes that no longer run (`clean_stale_temporaries`).

Only what is ours is replaced: a target that exists must be a regular file (or a symbolic
link, which DVC's link cache types make of outputs: the link is replaced, never what it points
to). A directory, device node, FIFO or socket at an output path is an error, not a rename
target (as root, `--out /dev/null` would otherwise replace /dev/null).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import secrets
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from silr.core.errors import OutputError

__all__ = [
    "STALE_AFTER_S", "TMP_PREFIX", "atomic_path", "check_replaceable", "clean_stale_temporaries",
    "ensure_writable", "json_text", "open_lock_file", "write_bytes", "write_json", "write_text",
    "write_with",
]

TMP_PREFIX = ".silr-tmp-"
# `<prefix><pid>-<hex>-<name>`: the pid says whether the writer may still be running.
_TMP_NAME = re.compile(re.escape(TMP_PREFIX) + r"(\d+)-[0-9a-f]{8}-")
# A temporary without a pid (written by an older silr) or of another host's process is only
# removed when older than this: a live writer renames its file within a stage's run.
STALE_AFTER_S = 24 * 3600.0
_cleaned_dirs: set[Path] = set()


def _tmp_name(target: Path, tag: str | None = None) -> Path:
    return target.parent / f"{TMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-{tag or target.name}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # alive under another user, or not ours to judge
    return True


def _is_stale(entry: os.DirEntry) -> bool:
    match = _TMP_NAME.match(entry.name)
    if (match is not None and int(match.group(1)) != os.getpid()
            and not _pid_alive(int(match.group(1)))):
        return True
    try:
        age = time.time() - entry.stat(follow_symlinks=False).st_mtime
    except OSError:
        return False
    return (match is None or int(match.group(1)) != os.getpid()) and age > STALE_AFTER_S


def clean_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Remove the `.silr-tmp-*` files a killed writer left in `directory`; returns them.

    A temporary belongs to a dead process when its pid no longer runs (processes on another
    host of a shared file system look alive, so theirs go only after STALE_AFTER_S)."""
    removed = []
    try:
        entries = [e for e in os.scandir(directory) if e.name.startswith(TMP_PREFIX)]
    except OSError:
        return removed
    for entry in entries:
        if entry.is_file(follow_symlinks=False) and _is_stale(entry):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def _clean_once(directory: Path) -> None:
    key = directory.absolute()
    if key not in _cleaned_dirs:
        _cleaned_dirs.add(key)
        clean_stale_temporaries(key)


def check_replaceable(path: str | os.PathLike) -> None:
    """OutputError unless `path` is absent, a regular file or a symbolic link: what we may
    replace."""
    target = Path(path)
    try:
        mode = os.lstat(target).st_mode
    except OSError:
        return  # absent, or under something that is not a folder: the directory check says which
    if stat.S_ISREG(mode) or stat.S_ISLNK(mode):
        return
    kind = ("a directory" if stat.S_ISDIR(mode) else "a character device" if stat.S_ISCHR(mode)
            else "a block device" if stat.S_ISBLK(mode) else "a FIFO" if stat.S_ISFIFO(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
    raise OutputError(f"{target}: exists and is {kind}, expected a regular file path; not replaced")


def _prepare_dir(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        blocker = next((p for p in (path.parent, *path.parent.parents)
                        if p.exists() and not p.is_dir()), None)
        reason = (f"{blocker} is a file, expected a directory" if blocker is not None
                  else exc.strerror)
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
        check_replaceable(target)
        _clean_once(target.parent)
        probe = _tmp_name(target, "probe")
        try:
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except OSError as exc:
            raise OutputError(f"{target}: output directory {target.parent} does not accept new "
                              f"files ({exc.strerror})") from None
        with contextlib.suppress(FileNotFoundError):
            probe.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` if the block succeeds.

    The temporary name keeps the target's suffix, so libraries that pick a format from
    the extension (matplotlib, h5py) behave as for the target itself.
    """
    target = Path(path)
    check_replaceable(target)
    _prepare_dir(target)
    _clean_once(target.parent)
    tmp = _tmp_name(target)
    try:
        yield tmp
        if not tmp.exists():
            raise OutputError(f"{target}: the writer produced no file")
        _fsync(tmp)
        check_replaceable(target)  # again: something may have appeared there while we wrote
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


def json_text(obj: Any) -> str:
    """`obj` as stable, diff-friendly JSON text (sorted keys, 2-space indent, final newline)."""
    return json.dumps(_json_safe(obj), indent=2, sort_keys=True) + "\n"


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as stable, diff-friendly JSON (sorted keys, 2-space indent, final newline)."""
    write_text(path, json_text(obj))


def write_with(path: str | os.PathLike, writer: Callable[[Path], None]) -> None:
    """Call `writer(tmp_path)` and publish the file it wrote at `path` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)


def open_lock_file(path: str | os.PathLike) -> IO[str]:
    """Open (creating) a lock file in place for an flock: a lock file is not an output, its
    content does not matter and several processes open it at once, so it is the one file
    that is not written through a temporary name."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    # No `with`: the caller holds it open for as long as it holds the lock.
    return open(path, "a+")  # noqa: SIM115
