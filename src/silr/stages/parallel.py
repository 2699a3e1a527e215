"""`silr parallel`: run the study with N workers through DVC's own machinery.

  silr parallel --jobs 2                    (what `make repro-parallel JOBS=2` runs)
  silr parallel --jobs 4 --gpus 0,1,2,3     (one GPU per worker)

DVC has no parallel `repro`, but it has the pieces, and this command only strings them
together (it schedules nothing itself):

0. The data stages every experiment shares (synth, ingest, folds) run once, here.
1. The study is split into queued experiments, one per fold (`--split fold`, the default),
   per loss or per (loss, fold) run: `dvc exp run --queue -S 'study.folds=[k]' evaluate`.
   Each trains and evaluates its part in a workspace of its own, and every stage it runs is
   recorded in DVC's run-cache, which all workspaces share.
2. `dvc queue start --jobs N` runs them, N at a time.
3. A plain `dvc repro` of the whole study then restores every train and evaluate stage from
   the run-cache (it retrains nothing) and runs the report: the same dvc.lock and metrics/
   as a serial run with the same threads per training.
4. The queued experiments are removed (their results live on in the run-cache).

Placement, outside params.yaml so that it never changes a stage's run-cache key: each
training process gets `SILR_THREADS` CPU threads (default: the cores divided among the
workers) and, with `--gpus`, claims a GPU of the pool that no other worker holds
(silr.core.device). Training state goes to one resume store shared by every workspace
(`SILR_RESUME_DIR`, default `.silr/resume` of this workspace): a worker killed mid-run
leaves its state there, and running `silr parallel` again resumes it.

On the CPU, results are byte-identical only for the same threads per training: a serial
`dvc repro` matches `silr parallel` when it runs with `SILR_THREADS` equal to the workers'.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from silr.core.device import GPU_POOL_ENV, THREADS_ENV, parse_gpu_pool
from silr.core.errors import ConfigError, SilrError
from silr.core.io import open_lock_file
from silr.core.params import DEFAULT_PARAMS_FILE, load_params
from silr.training.resume import DEFAULT_RESUME_DIR, RESUME_DIR_ENV

SPLITS = ("fold", "loss", "run")
# The stage group each experiment reproduces: evaluate pulls in its train stages (and the
# data stages, unchanged), but not the report, which runs once at the end on the whole study.
TARGET = "evaluate"
# The corruption benchmark of every (loss, fold): in the workers too, so that it runs in parallel.
ROBUSTNESS_TARGET = "robustness"
# With extra training seeds (study.seeds), their evaluations too (a stage group of no stages is an error).
SEED_TARGET = "evaluate_seed"
# The stages every experiment shares (synth, ingest, folds): run once here first. Run by
# several workers at once, they would write the same run-cache entry at the same time,
# which DVC does not survive (a worker fails on the other's temporary file).
SHARED_UPSTREAM = "folds"
POLL_S = 5.0


class ParallelError(SilrError):
    """A worker failed or DVC refused; the exit status is 1."""

    exit_code = 1


class Interrupted(SilrError):
    """silr parallel stopped by a signal, after stopping the queue; exit 128 + the signal."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class Part:
    """One queued experiment: its name and the `-S` overrides that select its share of the study."""

    name: str
    overrides: tuple[str, ...]


def split_study(losses: list[str], folds: list[int], split: str, tag: str) -> list[Part]:
    """The study's (loss, fold) pairs divided into experiments."""
    def listed(values) -> str:
        return "[" + ",".join(str(v) for v in values) + "]"

    if split == "fold":
        return [Part(f"{tag}-fold{k}", (f"study.folds={listed([k])}",)) for k in folds]
    if split == "loss":
        return [Part(f"{tag}-{loss}", (f"study.losses={listed([loss])}",)) for loss in losses]
    if split == "run":
        return [Part(f"{tag}-{loss}-fold{k}", (f"study.losses={listed([loss])}", f"study.folds={listed([k])}"))
                for loss in losses for k in folds]
    raise ConfigError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def worker_environment(base: dict[str, str], *, threads: int, resume_dir: Path, gpus: str | None) -> dict[str, str]:
    """The environment every worker inherits: threads, the shared resume store, the GPU pool."""
    env = dict(base)
    for name in (THREADS_ENV, "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = str(threads)
    env[RESUME_DIR_ENV] = str(resume_dir.resolve())
    if gpus:
        env[GPU_POOL_ENV] = gpus
    env.setdefault("DVC_NO_ANALYTICS", "1")
    return env


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
        return Path(f"/proc/{int(pid)}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip() or "?"
    except (OSError, ValueError):
        return "command unknown"


def _dvc(args: list[str], repo: Path, env: dict[str, str], *, echo: bool = False) -> subprocess.CompletedProcess:
    """Run one dvc command in `repo`; a lock collision becomes one clear line."""
    command = [_dvc_executable(), *args]
    if echo:
        print("$ dvc " + " ".join(args), file=sys.stderr, flush=True)
    done = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True)
    if done.returncode != 0 and "Unable to acquire lock" in done.stdout + done.stderr:
        holder = lock_holder(repo) or "a DVC command that has since finished"
        raise ParallelError(f"`dvc {' '.join(args)}` could not take this workspace's DVC lock: held by {holder}. "
                            f"Wait for it to finish (or stop it), then run silr parallel again")
    return done


def _dvc_executable() -> str:
    beside = Path(sys.executable).parent / "dvc"  # the venv's dvc, whatever PATH says
    return str(beside) if beside.exists() else (shutil.which("dvc") or "dvc")


def queue_status(repo: Path, env: dict[str, str]) -> dict[str, str]:
    """{experiment name: status} from `dvc queue status` (Queued, Running, Success, Failed, ...)."""
    done = _dvc(["queue", "status"], repo, env)
    statuses = {}
    for line in done.stdout.splitlines():
        fields = line.split()
        # Task  Name  Created  Status: the time may hold a space ("08:04 PM").
        if len(fields) >= 4 and re.fullmatch(r"[0-9a-f]{7,}", fields[0]):
            statuses[fields[1]] = fields[-1]
    return statuses


def run(repo: Path, *, jobs: int, split: str, threads: int | None, gpus: str | None, resume_dir: Path | None,
        keep: bool, params_file: str = DEFAULT_PARAMS_FILE) -> int:
    check_arguments(jobs, threads)
    params = load_params(repo / params_file)  # a bad params.yaml fails first, as in every command
    if not (repo / "dvc.yaml").is_file() or not (repo / ".dvc").is_dir():
        raise ConfigError(f"{repo}: not the root of a DVC project (no dvc.yaml and .dvc/ here)")
    if gpus:
        pool = parse_gpu_pool(gpus)
        if len(pool) < jobs:
            raise ConfigError(f"--gpus lists {len(pool)} GPU(s) for {jobs} workers: give at least one per worker")
    holder = lock_holder(repo)
    if holder:
        raise ParallelError(f"another DVC command is running in {repo} ({holder}); wait for it to finish "
                            f"(or stop it), then run silr parallel again")
    threads = threads or max(1, available_cores() // jobs)
    store = resume_dir or Path(os.environ.get(RESUME_DIR_ENV) or (repo / DEFAULT_RESUME_DIR))
    env = worker_environment(dict(os.environ), threads=threads, resume_dir=store, gpus=gpus)
    tag = "par" + time.strftime("%m%d%H%M%S")
    parts = split_study(list(params.study.losses), list(params.study.folds), split, tag)

    started = time.monotonic()
    upstream = _dvc(["repro", SHARED_UPSTREAM], repo, env, echo=True)
    if upstream.returncode != 0:
        raise ParallelError(f"`dvc repro {SHARED_UPSTREAM}` (the data every experiment shares) failed: "
                            f"{(upstream.stderr or upstream.stdout).strip()[-500:]}")
    print(f"silr parallel: {len(parts)} experiments ({split} split of {len(params.study.losses)} losses x "
          f"{len(params.study.folds)} folds), {jobs} workers x {threads} threads"
          + (f", GPUs {gpus}" if gpus else "") + f"; resume store {store}", file=sys.stderr, flush=True)
    for part in parts:
        args = ["exp", "run", "--queue", "-n", part.name]
        for override in part.overrides:
            args += ["-S", override]
        targets = [TARGET, ROBUSTNESS_TARGET, *([SEED_TARGET] if params.study.seeds else [])]
        done = _dvc([*args, *targets], repo, env, echo=True)
        if done.returncode != 0:
            raise ParallelError(f"could not queue {part.name}: {(done.stderr or done.stdout).strip()[-500:]}")

    # Workers inherit this environment; `dvc queue start` returns once the queue is empty.
    print(f"$ dvc queue start --jobs {jobs}", file=sys.stderr, flush=True)
    subprocess.run([_dvc_executable(), "queue", "start", "--jobs", str(jobs)], cwd=repo, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    names = {part.name for part in parts}
    seeds = 1 + len(set(params.study.seeds) - {params.train.seed})
    trainings = len(params.study.losses) * len(params.study.folds) * seeds
    logs = WorkerLogs(repo, trainings=trainings, epochs=params.train.epochs, started=time.monotonic())
    statuses = wait_or_stop(repo, env, names, logs, jobs)
    queued_s = time.monotonic() - started
    failed = sorted(name for name, status in statuses.items() if status != "Success")
    if failed:
        details = ", ".join(f"{name} ({statuses[name]})" for name in failed)
        raise ParallelError(f"{len(failed)} of {len(parts)} experiments did not succeed: {details}. See "
                            f"`dvc queue logs NAME`; the training state of an interrupted run is kept in {store}, "
                            f"so running silr parallel again resumes it")
    print(f"silr parallel: all {len(parts)} experiments done in {queued_s / 60:.1f} min; now `dvc repro` of the "
          f"whole study (train and evaluate from the run-cache)", file=sys.stderr, flush=True)

    repro = _dvc(["repro"], repo, env, echo=True)
    sys.stdout.write(quiet_repro_output(repro.stdout))
    sys.stderr.write(repro.stderr)
    if repro.returncode != 0:
        raise ParallelError(f"the final `dvc repro` failed (exit {repro.returncode}); see its output above")
    ran = re.findall(r"Running stage '((?:train|evaluate|robustness)@[^']+)'", repro.stdout)
    restored = re.findall(r"Stage '((?:train|evaluate|robustness)@[^']+)' is cached", repro.stdout)
    if not keep:
        _dvc(["exp", "remove", *sorted(names)], repo, env)
        _dvc(["queue", "remove", "--success"], repo, env)
    total_s = time.monotonic() - started
    print(f"silr parallel: {len(restored)} train/evaluate/robustness stages restored from the run-cache, "
          f"{len(ran)} run again"
          + (f" ({', '.join(ran)})" if ran else "") + f"; {total_s / 60:.1f} min in all", file=sys.stderr)
    return 0


MAX_JOBS = 64
MAX_THREADS = 1024


def check_arguments(jobs: int, threads: int | None) -> None:
    """The command's own arguments, checked before anything is read or started."""
    if not 1 <= jobs <= MAX_JOBS:
        raise ConfigError(f"--jobs must be 1..{MAX_JOBS}, got {jobs}")
    if threads is not None and not 1 <= threads <= MAX_THREADS:
        raise ConfigError(f"--threads must be 1..{MAX_THREADS}, got {threads}")


class Stopped(Exception):
    """SIGINT or SIGTERM while the queue runs (the signal number in args[0])."""


def _raise_stopped(signum: int, frame) -> None:  # noqa: ANN001 - the signal module's signature
    raise Stopped(signum)


def stop_queue(repo: Path, env: dict[str, str], names: set[str]) -> int:
    """Kill this run's queued and running experiments and stop the queue's workers; how many
    were still pending. (Their resume states stay in the store: a rerun resumes them.)"""
    statuses = queue_status(repo, env)
    pending = sorted(name for name, status in statuses.items() if name in names and status in ("Queued", "Running"))
    running = [name for name in pending if statuses[name] == "Running"]
    if running:
        _dvc(["queue", "kill", *running], repo, env)
    _dvc(["queue", "stop", "--kill"], repo, env)
    queued = [name for name in pending if statuses[name] == "Queued"]
    if queued:
        _dvc(["queue", "remove", *queued], repo, env)
    return len(pending)


def wait_or_stop(repo: Path, env: dict[str, str], names: set[str], logs: WorkerLogs | None = None,
                 jobs: int | None = None) -> dict[str, str]:
    """_wait, but SIGINT/SIGTERM stop the queue's workers before silr parallel exits (DVC's
    workers are detached processes: without this they would go on training)."""
    previous = {sig: signal.signal(sig, _raise_stopped) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _wait(repo, env, names, logs, jobs)
    except (Stopped, KeyboardInterrupt) as exc:
        signum = exc.args[0] if isinstance(exc, Stopped) else signal.SIGINT
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        stopped = stop_queue(repo, env, names)
        raise Interrupted(f"interrupted ({signal.Signals(signum).name}): stopped the queue's workers and "
                          f"{stopped} pending training(s); run silr parallel again to resume them",
                          exit_code=128 + int(signum)) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# A worker's progress lines (silr.training.progress's epoch lines, silr evaluate's and robustness's fold lines).
PROGRESS_LINE = re.compile(r"^(train \S+: epoch \d+/\d+|evaluate \S+ fold \d+\b|robustness \S+ fold \d+\b)")
EPOCH_LINE = re.compile(r"^train (\S+): epoch (\d+)/(\d+)")


class WorkerLogs:
    """The running experiments' progress lines as they appear, and the time left.

    DVC's queue writes each experiment's output to .dvc/tmp/exps/run/<stash rev>/<stash rev>.out,
    the file `dvc queue logs NAME` prints; only whole new lines are read, so a line being written
    is read at the next poll. The time left assumes every training has `epochs` epochs of equal
    cost: (epochs still to run) x (seconds per epoch so far across the workers)."""

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


# DVC's queue workers can exit while a task is still queued (seen on the 2026-12-03 record run:
# "queued: 1, running: 1" with --jobs 2): after this long in that state, start the missing workers.
IDLE_WORKER_S = 60.0


def _replace_quit_workers(repo: Path, env: dict[str, str], statuses: dict[str, str], jobs: int | None,
                          short_since: float | None) -> float | None:
    """Start the missing workers once tasks have waited IDLE_WORKER_S with fewer than `jobs`
    running; returns since when the queue has been short of workers (None: it is not)."""
    queued = sum(1 for status in statuses.values() if status == "Queued")
    running = sum(1 for status in statuses.values() if status == "Running")
    if not (jobs and queued and running < jobs):
        return None
    short_since = short_since if short_since is not None else time.monotonic()
    if time.monotonic() - short_since < IDLE_WORKER_S:
        return short_since
    missing = min(jobs - running, queued)
    print(f"silr parallel: {queued} queued but {running} of {jobs} workers running: starting {missing} more",
          file=sys.stderr, flush=True)
    subprocess.run([_dvc_executable(), "queue", "start", "--jobs", str(missing)], cwd=repo, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return None


def _wait(repo: Path, env: dict[str, str], names: set[str], logs: WorkerLogs | None = None,
          jobs: int | None = None) -> dict[str, str]:
    """Poll the queue until none of `names` is queued or running; their final statuses. With
    `logs`, the workers' progress lines are printed as they come, and the time left with each
    change of the queue's counts."""
    last_line = ""
    short_since: float | None = None
    while True:
        for line in logs.new_lines() if logs else []:
            print(f"  {line}", file=sys.stderr, flush=True)
        statuses = {name: status for name, status in queue_status(repo, env).items() if name in names}
        pending = [name for name, status in statuses.items() if status in ("Queued", "Running")]
        if not pending and len(statuses) == len(names):
            return statuses
        short_since = _replace_quit_workers(repo, env, statuses, jobs, short_since)
        line = ", ".join(f"{status.lower()}: {sum(1 for s in statuses.values() if s == status)}"
                         for status in sorted(set(statuses.values())))
        if line != last_line:
            print(f"silr parallel: {line}" + (f"; {logs.time_left(time.monotonic())}" if logs else ""),
                  file=sys.stderr, flush=True)
            last_line = line
        if not pending and len(statuses) < len(names):
            missing = sorted(names - set(statuses))
            return {**statuses, **{name: "Missing" for name in missing}}
        time.sleep(POLL_S)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", "-j", type=int, default=2, help="workers (default: %(default)s)")
    parser.add_argument("--split", choices=SPLITS, default="fold",
                        help="one experiment per fold (default), per loss, or per (loss, fold) run")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads per training (default: the cores divided among the workers)")
    parser.add_argument("--gpus", default=None, metavar="LIST",
                        help="GPU indices, e.g. 0,1: each worker's training claims a free one")
    parser.add_argument("--resume-dir", type=Path, default=None,
                        help=f"shared resume store (default: ${RESUME_DIR_ENV}, else {DEFAULT_RESUME_DIR})")
    parser.add_argument("--keep", action="store_true", help="keep the queued experiments afterwards")
    parser.add_argument("--params", default=DEFAULT_PARAMS_FILE, help="params file (default: %(default)s)")


def quiet_repro_output(text: str) -> str:
    """`dvc repro`'s output without the restore chatter (a "... is cached" line and a blank line
    per restored stage; the count is printed after) and without repeated blank lines."""
    kept: list[str] = []
    for line in text.splitlines():
        if re.match(r"Stage '[^']+' is cached - skipping run, checking out outputs", line):
            continue
        if not line.strip() and (not kept or not kept[-1].strip()):
            continue
        kept.append(line)
    return "\n".join(kept) + ("\n" if kept else "")


def main(args: argparse.Namespace) -> int:
    return run(Path.cwd(), jobs=args.jobs, split=args.split, threads=args.threads, gpus=args.gpus,
               resume_dir=args.resume_dir, keep=args.keep, params_file=args.params)
