"""The default study trained and evaluated on one CUDA GPU, with training seeds: wall times and the
spread over seeds of every loss.

  python3 benchmarks/gpu_study.py --out DIR [--seeds 0 1 2] [--workers 8] [--threads 2]
      [--budget-s 420] [--params params.yaml] [--data data/processed/ds_8x.h5]

Runs `silr train` then `silr evaluate` for every (seed, loss, fold) of params.yaml's study (seed
by seed, so that a budget cut leaves whole seeds), `--workers` processes at a time on the one
GPU, each with `--threads` CPU threads; stops starting new runs after `--budget-s` seconds and
waits for those in flight. It first trains one run alone, to time a training without
contention. Prints (and writes to DIR/gpu_study.txt) every run's training and evaluation wall
time, the wall time of the whole, and per loss the Table-2 mean (the mean over held-out
specimens of the per-fold mean error, px) of each seed with the mean and the sample std over
seeds.

This is not the DVC pipeline: the device machine this was written for has no dvc or dvclive
(nothing can be installed there but carried wheels). Where `dvclive` cannot be imported, the
runs log through a stand-in written to a temporary folder (each run's metrics as JSON lines in
its live folder); nothing else differs from `silr train`. On CUDA, training is not
bit-reproducible (docs/reliability.md), so these numbers are a second sample of each seed, not
the CPU record's.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from silr.core.params import load_params  # noqa: E402
from silr.evaluation.results import output_paths  # noqa: E402

# Whether this machine lacks dvclive (then the runs log through LIVE_STAND_IN).
NO_DVCLIVE = importlib.util.find_spec("dvclive") is None

LIVE_STAND_IN = '''"""Stand-in for dvclive where it is not installed (benchmarks/gpu_study.py
wrote it): each run's metrics as JSON lines in its live folder, its summary as summary.json."""
import json
import os


class Live:
    def __init__(self, directory, **_options):
        os.makedirs(directory, exist_ok=True)
        self._directory, self._step, self._row, self.summary = directory, 0, {}, {}

    def log_metric(self, name, value):
        self._row[name] = value

    def next_step(self):
        with open(os.path.join(self._directory, "metrics.jsonl"), "a") as stream:
            stream.write(json.dumps({"step": self._step, **self._row}) + "\\n")
        self._step, self._row = self._step + 1, {}

    def end(self):
        with open(os.path.join(self._directory, "summary.json"), "w") as stream:
            json.dump(self.summary, stream)
'''


@dataclass
class Job:
    seed: int
    loss: str
    fold: int
    default_seed: bool
    phase: str = "queued"
    process: subprocess.Popen | None = None
    started: float = 0.0
    times: dict[str, float] = field(default_factory=dict)
    failed: str | None = None

    @property
    def name(self) -> str:
        return f"{self.loss}/fold{self.fold}/seed{self.seed}"

    @property
    def run_seed(self) -> int | None:
        """The seed as the evaluation paths name it: None for the study's default seed."""
        return None if self.default_seed else self.seed

    def seed_args(self) -> list[str]:
        return [] if self.default_seed else ["--seed", str(self.seed)]


def command(job: Job, phase: str, args: argparse.Namespace) -> list[str]:
    common = ["--loss", job.loss, "--fold", str(job.fold), "--params", args.params,
              "--data", args.data, "--folds", args.folds, *job.seed_args()]
    out = Path(args.out)
    if phase == "train":
        return [sys.executable, "-m", "silr", "train", *common, "--out-dir", str(out / "models"),
                "--live-dir", str(out / "live"), "--resume-dir", str(out / "resume"), "--fresh",
                "--no-progress"]
    return [sys.executable, "-m", "silr", "evaluate", *common, "--models", str(out / "models"),
            "--out", str(out / "metrics")]


def start(job: Job, phase: str, args: argparse.Namespace, env: dict[str, str]) -> None:
    log = open(  # noqa: SIM115 - the child process writes it; closed when the parent exits
        Path(args.out) / "logs" / f"{job.loss}_fold{job.fold}_seed{job.seed}_{phase}.txt", "w")
    job.phase, job.started = phase, time.monotonic()
    job.process = subprocess.Popen(command(job, phase, args), cwd=REPO, env=env, stdout=log,
                                   stderr=subprocess.STDOUT)


def advance(job: Job, args: argparse.Namespace, env: dict[str, str], say) -> bool:
    """Poll one running job; start its evaluation after its training. True once it is done."""
    code = job.process.poll()
    if code is None:
        return False
    job.times[job.phase] = time.monotonic() - job.started
    if code != 0:
        job.failed = f"{job.phase} exit {code}"
        say(f"FAILED {job.name}: {job.failed} (logs/{job.loss}_fold{job.fold}_seed{job.seed}_"
            f"{job.phase}.txt)")
        return True
    if job.phase == "train":
        start(job, "evaluate", args, env)
        return False
    say(f"{job.name}: train {job.times['train']:.1f} s, evaluate {job.times['evaluate']:.1f} s, "
        f"test error {fold_error(job, args):.2f} px")
    return True


def fold_error(job: Job, args: argparse.Namespace) -> float:
    path = output_paths(Path(args.out) / "metrics", job.loss, job.fold, job.run_seed).fold_metrics
    return float(json.loads(path.read_text())["error"]["mean_px"])


def environment(args: argparse.Namespace) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(REPO / "src")]
    if NO_DVCLIVE:
        stand_in = Path(tempfile.mkdtemp(prefix="silr-live-"))
        (stand_in / "dvclive").mkdir()
        (stand_in / "dvclive" / "__init__.py").write_text(LIVE_STAND_IN)
        paths.append(str(stand_in))
    env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    for name in ("SILR_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = str(args.threads)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def describe_machine() -> list[str]:
    import torch

    lines = [f"python {platform.python_version()}, torch {torch.__version__}, "
             f"{os.cpu_count()} CPUs"]
    if torch.cuda.is_available():
        lines.append(f"GPU: {torch.cuda.get_device_name(0)}")
    else:
        lines.append("GPU: none (CUDA not available): the runs use the CPU")
    try:
        import timm
        lines.append(f"timm {timm.__version__}")
    except ImportError:
        lines.append("timm: not importable")
    if NO_DVCLIVE:
        lines.append("dvclive: not installed, runs log through the stand-in (see the docstring)")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--budget-s", type=float, default=420.0)
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--data", default=str(REPO / "data" / "processed" / "ds_8x.h5"))
    parser.add_argument("--folds", default=str(REPO / "data" / "folds.json"))
    args = parser.parse_args()
    out = Path(args.out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    report = open(out / "gpu_study.txt", "w")  # noqa: SIM115 - written line by line to the end

    def say(line: str) -> None:
        print(line, flush=True)
        report.write(line + "\n")
        report.flush()

    params = load_params(args.params)
    for line in describe_machine():
        say(line)
    say(f"study: losses {', '.join(params.study.losses)}; folds "
        f"{', '.join(map(str, params.study.folds))}; seeds {', '.join(map(str, args.seeds))}; "
        f"{params.train.epochs} epochs; {args.workers} processes x {args.threads} threads")
    env = environment(args)
    jobs = [Job(seed, loss, fold, seed == params.train.seed)
            for seed in args.seeds for loss in params.study.losses for fold in params.study.folds]
    began = time.monotonic()

    # One run alone: a training's time without contention.
    first, rest = jobs[0], jobs[1:]
    start(first, "train", args, env)
    while not advance(first, args, env, say):
        time.sleep(0.5)
    say(f"alone: {first.name} trained in {first.times.get('train', float('nan')):.1f} s")

    pending, running = list(rest), []
    while pending or running:
        while (pending and len(running) < args.workers
               and time.monotonic() - began < args.budget_s):
            job = pending.pop(0)
            start(job, "train", args, env)
            running.append(job)
        if not running:
            break
        running = [job for job in running if not advance(job, args, env, say)]
        time.sleep(0.5)
    wall = time.monotonic() - began
    done = [job for job in jobs if "evaluate" in job.times and job.failed is None]
    skipped = [job for job in jobs if job.phase == "queued"]
    say(f"wall: {wall:.1f} s for {len(done)} trained and evaluated runs "
        f"({len(skipped)} not started within the {args.budget_s:.0f} s budget, "
        f"{sum(1 for j in jobs if j.failed)} failed)")
    if done:
        trains = [job.times["train"] for job in done]
        say(f"training wall per run under contention: median {statistics.median(trains):.1f} s, "
            f"max {max(trains):.1f} s")

    say("Table-2 mean (px) per loss and seed, over the specimens whose fold finished:")
    for loss in params.study.losses:
        per_seed = []
        for seed in args.seeds:
            folds = {job.fold: fold_error(job, args) for job in done
                     if job.loss == loss and job.seed == seed}
            if len(folds) == len(params.study.folds):
                per_seed.append((seed, statistics.fmean(folds.values())))
            elif folds:
                say(f"  {loss} seed {seed}: only folds {sorted(folds)} finished; left out")
        if not per_seed:
            continue
        means = [mean for _, mean in per_seed]
        spread = f"{statistics.stdev(means):.2f}" if len(means) > 1 else "undefined (one seed)"
        say(f"  {loss}: " + " / ".join(f"seed {s} {m:.2f}" for s, m in per_seed)
            + f"; mean {statistics.fmean(means):.2f}, std over seeds {spread}")
    report.close()
    return 0 if not any(job.failed for job in jobs) else 1


if __name__ == "__main__":
    sys.exit(main())
