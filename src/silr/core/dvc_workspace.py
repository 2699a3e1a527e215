"""What DVC leaves in a workspace, read for `silr parallel` (silr.stages.parallel).

Who holds the workspace's DVC lock, the progress lines DVC's queue workers write to their
log files, the table `dvc queue status` prints, and what `dvc repro` restored or ran (and its
output without the restore chatter). Nothing here runs DVC: these read the files and the
text it writes.
"""

from __future__ import annotations

import fcntl
import re
import shutil
import sys
from pathlib import Path

from silr.core.io import open_lock_file

__all__ = [
    "EPOCH_LINE",
    "PROGRESS_LINE",
    "WorkerLogs",
    "dvc_executable",
    "lock_holder",
    "parse_queue_status",
    "quiet_repro_output",
    "restored_and_run_stages",
]

def dvc_executable() -> str:
    """The dvc of this environment (beside the running Python, whatever PATH says), else PATH's."""
    beside = Path(sys.executable).parent / "dvc"
    return str(beside) if beside.exists() else (shutil.which("dvc") or "dvc")


# A worker's progress lines (silr.training.progress's epoch lines, silr evaluate's and
# robustness's fold lines).
PROGRESS_LINE = re.compile(
    r"^(train \S+: epoch \d+/\d+|evaluate \S+ fold \d+\b|robustness \S+ fold \d+\b)")
EPOCH_LINE = re.compile(r"^train (\S+): epoch (\d+)/(\d+)")


def lock_holder(repo: Path) -> str | None:
    """Who holds this workspace's DVC lock (pid and command), or None if it is free.

    DVC takes an exclusive flock on .dvc/tmp/lock for the length of a command; a second
    command in the same workspace waits a few seconds and fails. Probing it first gives one
    line that says who is in the way."""
    path = repo / ".dvc" / "tmp" / "lock"
    if not path.exists():
        return None
    with open_lock_file(path) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            pid = handle.read().strip().split(" ")[0] or "?"
            return f"pid {pid} ({_command_of(pid)})"
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


def _command_of(pid: str) -> str:
    try:
        command = Path(f"/proc/{int(pid)}/cmdline").read_bytes().replace(b"\0", b" ")
        return command.decode().strip() or "?"
    except (OSError, ValueError):
        return "command unknown"


class WorkerLogs:
    """The running experiments' progress lines as they appear, and the time left.

    DVC's queue writes each experiment's output to
    .dvc/tmp/exps/run/<stash rev>/<stash rev>.out, the file `dvc queue logs NAME` prints;
    only whole new lines are read, so a line being written is read at the next poll. The
    time left assumes every training has `epochs` epochs of equal cost: (epochs still to
    run) x (seconds per epoch so far across the workers)."""

    def __init__(self, repo: Path, *, trainings: int, epochs: int, started: float) -> None:
        self.root = repo / ".dvc" / "tmp" / "exps" / "run"
        self.offsets: dict[Path, int] = {}
        self.epochs_done: dict[str, int] = {}
        self.trainings, self.epochs, self.started = trainings, epochs, started

    def new_lines(self) -> list[str]:
        lines = []
        for path in sorted(self.root.glob("*/*.out")):
            offset = self.offsets.get(path, 0)
            try:
                with open(path, "rb") as handle:
                    handle.seek(offset)
                    chunk = handle.read()
            except OSError:
                continue
            whole = chunk.rfind(b"\n") + 1
            self.offsets[path] = offset + whole
            for line in chunk[:whole].decode("utf-8", errors="replace").splitlines():
                line = line.strip()
                if PROGRESS_LINE.match(line):
                    lines.append(line)
                    epoch = EPOCH_LINE.match(line)
                    if epoch:
                        self.epochs_done[epoch.group(1)] = int(epoch.group(2))
        return lines

    def time_left(self, now: float) -> str:
        done = sum(self.epochs_done.values())
        total = self.trainings * self.epochs
        if not done or total <= 0:
            return "time left: not known yet"
        left_s = (total - min(done, total)) * (now - self.started) / done
        return f"{done}/{total} epochs, about {left_s / 60:.0f} min left"


# DVC's closing hints after a repro that changed dvc.lock: they would push Table 2 out of the
# last 30 lines of `make repro` (silr parallel's own last line says what changed).
_GIT_HINTS = ("To track the changes with git, run:", "To enable auto staging, run:",
              "dvc config core.autostage true", "Use `dvc push` to send your updates")


def quiet_repro_output(text: str) -> str:
    """`dvc repro`'s output without the restore chatter (a "... is cached" line and a blank line
    per restored stage; the count is printed after), without DVC's git hints (`git add ...`,
    auto staging, `dvc push`) and without repeated blank lines."""
    kept: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if (re.match(r"Stage '[^']+' is cached - skipping run, checking out outputs", line)
                or stripped.startswith(_GIT_HINTS + ("git add ",))):
            continue
        if not stripped and (not kept or not kept[-1].strip()):
            continue
        if not line.strip() and (not kept or not kept[-1].strip()):
            continue
        kept.append(line)
    return "\n".join(kept) + ("\n" if kept else "")


def parse_queue_status(text: str) -> dict[str, str]:
    """{experiment name: status} from the table `dvc queue status` prints."""
    statuses = {}
    for line in text.splitlines():
        fields = line.split()
        # Task  Name  Created  Status: the time may hold a space ("08:04 PM").
        if len(fields) >= 4 and re.fullmatch(r"[0-9a-f]{7,}", fields[0]):
            statuses[fields[1]] = fields[-1]
    return statuses


def restored_and_run_stages(text: str) -> tuple[list[str], list[str]]:
    """The train, evaluate and robustness stages `dvc repro` (its stdout `text`) restored from
    the run-cache, and those it ran."""
    restored = re.findall(r"Stage '((?:train|evaluate|robustness)@[^']+)' is cached", text)
    ran = re.findall(r"Running stage '((?:train|evaluate|robustness)@[^']+)'", text)
    return restored, ran
