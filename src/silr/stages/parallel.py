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
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from silr.core.device import GPU_POOL_ENV, THREADS_ENV, parse_gpu_pool
from silr.core.dvc_workspace import (
    WorkerLogs,
    dvc_executable,
    lock_holder,
    parse_queue_status,
    quiet_repro_output,
    restored_and_run_stages,
)
from silr.core.errors import ConfigError, SilrError
from silr.core.params import DEFAULT_PARAMS_FILE, Params, load_params
from silr.training.resume import DEFAULT_RESUME_DIR, RESUME_DIR_ENV

SPLITS = ("fold", "loss", "run")
# The stage group each experiment reproduces: evaluate pulls in its train stages (and the
# data stages, unchanged), but not the report, which runs once at the end on the whole study.
TARGET = "evaluate"
# The corruption benchmark of every (loss, fold): in the workers too, to run in parallel.
ROBUSTNESS_TARGET = "robustness"
# With extra training seeds (study.seeds), their evaluations (an empty stage group fails).
SEED_TARGET = "evaluate_seed"
# The stages every experiment shares (synth, ingest, folds): run once here first. Run by
# several workers at once, they would write the same run-cache entry at the same time,
# which DVC does not survive (a worker fails on the other's temporary file).
SHARED_UPSTREAM = "folds"
POLL_S = 5.0
MAX_JOBS = 64
MAX_THREADS = 1024
# DVC's queue workers can exit while a task is still queued ("queued: 1, running: 1" with
# --jobs 2 on the 2026-12-03 record run): after this long in that state, start the missing.
IDLE_WORKER_S = 60.0


class ParallelError(SilrError):
    """A worker failed or DVC refused; the exit status is 1."""

    exit_code = 1


class Interrupted(SilrError):
    """silr parallel stopped by a signal, after stopping the queue; exit 128 + the signal."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Stopped(Exception):
    """SIGINT or SIGTERM while the queue runs (the signal number in args[0])."""


@dataclass(frozen=True)
class Part:
    """One queued experiment: its name and the `-S` overrides that select its part of the study."""

    name: str
    overrides: tuple[str, ...]


def split_study(losses: list[str], folds: list[int], split: str, tag: str) -> list[Part]:
    """The study's (loss, fold) pairs divided into experiments."""
    def listed(values: Sequence[str | int]) -> str:
        return "[" + ",".join(str(v) for v in values) + "]"

    if split == "fold":
        return [Part(f"{tag}-fold{k}", (f"study.folds={listed([k])}",)) for k in folds]
    if split == "loss":
        return [Part(f"{tag}-{loss}", (f"study.losses={listed([loss])}",)) for loss in losses]
    if split == "run":
        return [Part(f"{tag}-{loss}-fold{k}",
                     (f"study.losses={listed([loss])}", f"study.folds={listed([k])}"))
                for loss in losses for k in folds]
    raise ConfigError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def worker_environment(base: dict[str, str], *, threads: int, resume_dir: Path,
                       gpus: str | None) -> dict[str, str]:
    """The environment every worker inherits: threads, the shared resume store, the GPU pool."""
    env = dict(base)
    for name in (THREADS_ENV, "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = str(threads)
    env[RESUME_DIR_ENV] = str(resume_dir.resolve())
    if gpus:
        env[GPU_POOL_ENV] = gpus
    env.setdefault("DVC_NO_ANALYTICS", "1")
    return env


def check_arguments(jobs: int, threads: int | None) -> None:
    """The command's own arguments, checked before anything is read or started."""
    if not 1 <= jobs <= MAX_JOBS:
        raise ConfigError(f"--jobs must be 1..{MAX_JOBS}, got {jobs}")
    if threads is not None and not 1 <= threads <= MAX_THREADS:
        raise ConfigError(f"--threads must be 1..{MAX_THREADS}, got {threads}")


def check_workspace(repo: Path, jobs: int, gpus: str | None) -> None:
    """`repo` is a DVC project that no other DVC command holds, with a GPU per worker."""
    if not (repo / "dvc.yaml").is_file() or not (repo / ".dvc").is_dir():
        raise ConfigError(f"{repo}: not the root of a DVC project (no dvc.yaml and .dvc/ here)")
    if gpus:
        pool = parse_gpu_pool(gpus)
        if len(pool) < jobs:
            raise ConfigError(f"--gpus lists {len(pool)} GPU(s) for {jobs} workers: "
                              f"give at least one per worker")
    holder = lock_holder(repo)
    if holder:
        raise ParallelError(f"another DVC command is running in {repo} ({holder}); wait for it "
                            f"to finish (or stop it), then run silr parallel again")


def _dvc(args: list[str], repo: Path, env: dict[str, str], *,
         echo: bool = False) -> subprocess.CompletedProcess[str]:
    """Run one dvc command in `repo`; a lock collision becomes one clear line."""
    command = [dvc_executable(), *args]
    if echo:
        print("$ dvc " + " ".join(args), file=sys.stderr, flush=True)
    done = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True)
    if done.returncode != 0 and "Unable to acquire lock" in done.stdout + done.stderr:
        holder = lock_holder(repo) or "a DVC command that has since finished"
        raise ParallelError(f"`dvc {' '.join(args)}` could not take this workspace's DVC lock: "
                            f"held by {holder}. Wait for it to finish (or stop it), then run "
                            f"silr parallel again")
    return done


def _start_workers(repo: Path, env: dict[str, str], count: int) -> None:
    """`dvc queue start --jobs count`; the workers inherit `env` (it returns at once)."""
    subprocess.run([dvc_executable(), "queue", "start", "--jobs", str(count)], cwd=repo,
                   env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _tail(done: subprocess.CompletedProcess[str]) -> str:
    """The end of a failed dvc command's complaint, for a one-line error."""
    return (done.stderr or done.stdout).strip()[-500:]


def queue_status(repo: Path, env: dict[str, str]) -> dict[str, str]:
    """{experiment name: status} of `dvc queue status` (Queued, Running, Success, Failed, ...)."""
    return parse_queue_status(_dvc(["queue", "status"], repo, env).stdout)


def run(repo: Path, *, jobs: int, split: str, threads: int | None, gpus: str | None,
        resume_dir: Path | None, keep: bool, params_file: str = DEFAULT_PARAMS_FILE) -> int:
    check_arguments(jobs, threads)
    params = load_params(repo / params_file)  # a bad params.yaml fails first, as in every command
    check_workspace(repo, jobs, gpus)
    threads = threads or max(1, available_cores() // jobs)
    store = resume_dir or Path(os.environ.get(RESUME_DIR_ENV) or (repo / DEFAULT_RESUME_DIR))
    env = worker_environment(dict(os.environ), threads=threads, resume_dir=store, gpus=gpus)
    tag = "par" + time.strftime("%m%d%H%M%S")
    parts = split_study(list(params.study.losses), list(params.study.folds), split, tag)

    started = time.monotonic()
    upstream = _dvc(["repro", SHARED_UPSTREAM], repo, env, echo=True)
    if upstream.returncode != 0:
        raise ParallelError(f"`dvc repro {SHARED_UPSTREAM}` (the data every experiment shares) "
                            f"failed: {_tail(upstream)}")
    print(f"silr parallel: {len(parts)} experiments ({split} split of "
          f"{len(params.study.losses)} losses x {len(params.study.folds)} folds), "
          f"{jobs} workers x {threads} threads"
          + (f", GPUs {gpus}" if gpus else "") + f"; resume store {store}",
          file=sys.stderr, flush=True)
    _queue_parts(repo, env, parts, params)
    _run_queue(repo, env, parts, params, jobs=jobs, store=store)
    queued_s = time.monotonic() - started
    print(f"silr parallel: all {len(parts)} experiments done in {queued_s / 60:.1f} min; now "
          f"`dvc repro` of the whole study (train and evaluate from the run-cache)",
          file=sys.stderr, flush=True)
    _repro_study(repo, env, {part.name for part in parts}, keep=keep, started=started)
    return 0


def _queue_parts(repo: Path, env: dict[str, str], parts: list[Part], params: Params) -> None:
    """`dvc exp run --queue` each part: its evaluations, robustness (and seeds') stages."""
    for part in parts:
        args = ["exp", "run", "--queue", "-n", part.name]
        for override in part.overrides:
            args += ["-S", override]
        targets = [TARGET, ROBUSTNESS_TARGET, *([SEED_TARGET] if params.study.seeds else [])]
        done = _dvc([*args, *targets], repo, env, echo=True)
        if done.returncode != 0:
            raise ParallelError(f"could not queue {part.name}: {_tail(done)}")


def _run_queue(repo: Path, env: dict[str, str], parts: list[Part], params: Params, *,
               jobs: int, store: Path) -> None:
    """Start `jobs` workers on the queue and wait for every part; ParallelError unless all
    succeeded."""
    # Workers inherit this environment; `dvc queue start` returns once the queue is empty.
    print(f"$ dvc queue start --jobs {jobs}", file=sys.stderr, flush=True)
    _start_workers(repo, env, jobs)
    names = {part.name for part in parts}
    seeds = 1 + len(set(params.study.seeds) - {params.train.seed})
    trainings = len(params.study.losses) * len(params.study.folds) * seeds
    logs = WorkerLogs(repo, trainings=trainings, epochs=params.train.epochs,
                      started=time.monotonic())
    statuses = wait_or_stop(repo, env, names, logs, jobs)
    failed = sorted(name for name, status in statuses.items() if status != "Success")
    if failed:
        details = ", ".join(f"{name} ({statuses[name]})" for name in failed)
        raise ParallelError(f"{len(failed)} of {len(parts)} experiments did not succeed: "
                            f"{details}. See `dvc queue logs NAME`; the training state of an "
                            f"interrupted run is kept in {store}, so running silr parallel "
                            f"again resumes it")


def _repro_study(repo: Path, env: dict[str, str], names: set[str], *, keep: bool,
                 started: float) -> None:
    """The final `dvc repro` of the whole study (restored from the run-cache), the queued
    experiments removed unless `keep`, and what was restored and what ran again."""
    repro = _dvc(["repro"], repo, env, echo=True)
    sys.stdout.write(quiet_repro_output(repro.stdout))
    sys.stderr.write(repro.stderr)
    if repro.returncode != 0:
        raise ParallelError(f"the final `dvc repro` failed (exit {repro.returncode}); see its "
                            f"output above")
    restored, ran = restored_and_run_stages(repro.stdout)
    if not keep:
        _dvc(["exp", "remove", *sorted(names)], repo, env)
        _dvc(["queue", "remove", "--success"], repo, env)
    total_s = time.monotonic() - started
    print(f"silr parallel: {len(restored)} train/evaluate/robustness stages restored from the "
          f"run-cache, {len(ran)} run again"
          + (f" ({', '.join(ran)})" if ran else "") + f"; {total_s / 60:.1f} min in all",
          file=sys.stderr)


def _raise_stopped(signum: int, frame: FrameType | None) -> None:
    raise Stopped(signum)


def stop_queue(repo: Path, env: dict[str, str], names: set[str]) -> int:
    """Kill this run's queued and running experiments and stop the queue's workers; how many
    were still pending. (Their resume states stay in the store: a rerun resumes them.)"""
    statuses = queue_status(repo, env)
    pending = sorted(name for name, status in statuses.items()
                     if name in names and status in ("Queued", "Running"))
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
        raise Interrupted(f"interrupted ({signal.Signals(signum).name}): stopped the queue's "
                          f"workers and {stopped} pending training(s); run silr parallel again "
                          f"to resume them", exit_code=128 + int(signum)) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _replace_quit_workers(repo: Path, env: dict[str, str], statuses: dict[str, str],
                          jobs: int | None, short_since: float | None) -> float | None:
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
    print(f"silr parallel: {queued} queued but {running} of {jobs} workers running: "
          f"starting {missing} more", file=sys.stderr, flush=True)
    _start_workers(repo, env, missing)
    return None


def _counts(statuses: dict[str, str]) -> str:
    """'queued: 1, running: 2, success: 3': how many experiments are in each status."""
    return ", ".join(f"{status.lower()}: {sum(1 for s in statuses.values() if s == status)}"
                     for status in sorted(set(statuses.values())))


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
        statuses = {name: status for name, status in queue_status(repo, env).items()
                    if name in names}
        pending = [name for name, status in statuses.items() if status in ("Queued", "Running")]
        if not pending and len(statuses) == len(names):
            return statuses
        short_since = _replace_quit_workers(repo, env, statuses, jobs, short_since)
        line = _counts(statuses)
        if line != last_line:
            left = f"; {logs.time_left(time.monotonic())}" if logs else ""
            print(f"silr parallel: {line}{left}", file=sys.stderr, flush=True)
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
                        help="CPU threads per training (default: the cores divided among the "
                             "workers)")
    parser.add_argument("--gpus", default=None, metavar="LIST",
                        help="GPU indices, e.g. 0,1: each worker's training claims a free one")
    parser.add_argument("--resume-dir", type=Path, default=None,
                        help=f"shared resume store (default: ${RESUME_DIR_ENV}, else "
                             f"{DEFAULT_RESUME_DIR})")
    parser.add_argument("--keep", action="store_true",
                        help="keep the queued experiments afterwards")
    parser.add_argument("--params", default=DEFAULT_PARAMS_FILE,
                        help="params file (default: %(default)s)")


def main(args: argparse.Namespace) -> int:
    return run(Path.cwd(), jobs=args.jobs, split=args.split, threads=args.threads, gpus=args.gpus,
               resume_dir=args.resume_dir, keep=args.keep, params_file=args.params)
