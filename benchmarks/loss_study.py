"""Compare named losses outside the pipeline: train and evaluate every (loss, fold, seed).

Then print one table of localisation, anatomical consistency and presence per loss.

  python benchmarks/loss_study.py --params P.yaml --losses dice_ce_kl cand_a --folds 1 2 3 4 5 6 \
      [--seeds 0 1 2] [--jobs 2] [--work /tmp/loss_study]

It runs the project's own commands (`silr train`, `silr evaluate`) with one thread each,
`--jobs` at a time, into --work (nothing in the workspace changes), so the numbers are those the
pipeline would record for the same params. A run already trained in --work is reused (silr's
resume store). This is how the candidates of the presence and consistency terms were chosen
(benchmarks/results/).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from silr.data.processed import read_processed
from silr.evaluation import metrics
from silr.evaluation.presence import presence_by_rule
from silr.evaluation.results import output_paths, read_predictions_csv


def seed_params(params_path: Path, seed: int, work: Path) -> Path:
    """A copy of the params file with train.seed = seed (the file itself for the seed it holds)."""
    raw = yaml.safe_load(params_path.read_text())
    if raw.get("train", {}).get("seed", 0) == seed:
        return params_path
    raw.setdefault("train", {})["seed"] = seed
    path = work / f"params_seed{seed}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run_one(params: Path, loss: str, fold: int, seed: int, work: Path, data: str,
            folds: str) -> str:
    root = work / f"seed{seed}"
    env = dict(os.environ, SILR_THREADS="1")
    train = ["silr", "train", "--params", str(params), "--loss", loss, "--fold", str(fold),
             "--data", data, "--folds", folds, "--out-dir", str(root / "models"),
             "--live-dir", str(root / "dvclive"),
             "--resume-dir", str(work / "resume" / f"seed{seed}"), "--no-progress"]
    evaluate = ["silr", "evaluate", "--params", str(params), "--loss", loss, "--fold", str(fold),
                "--data", data, "--folds", folds, "--models", str(root / "models"),
                "--out", str(root / "metrics"), "--device", "cpu"]
    log = root / "logs" / f"{loss}_fold{fold}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as handle:
        for command in (train, evaluate):
            done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
            if done.returncode:
                return f"FAILED ({' '.join(command[:2])}, see {log})"
    return "ok"


def summarise(work: Path, losses: list[str], folds: list[int], seeds: list[int],
              mm_per_px: float) -> pd.DataFrame:
    rows = []
    for loss in losses:
        per_seed = []
        for seed in seeds:
            tables, rules = [], None
            for fold in folds:
                paths = output_paths(work / f"seed{seed}" / "metrics", loss, fold)
                tables.append(read_predictions_csv(paths.predictions))
                rules = json.loads(paths.fold_metrics.read_text()).get("presence_rules", {})
            table = pd.concat(tables, ignore_index=True)
            summary = metrics.table2(table, losses=[loss], mm_per_px=mm_per_px,
                                     success_mm=(4.0,))[loss]
            consistency = metrics.consistency_summary(table)
            presence = presence_by_rule(table, rules, mm_per_px)
            row = {"loss": loss, "seed": seed, "mean_px": summary["mean_px"],
                   "std_px": summary["std_px"],
                   "outside_bone": consistency["outside_own_bone_rate"],
                   "gt_outside_bone": consistency["gt_outside_own_bone_rate"],
                   "bone_restricted_px": consistency["mean_px_bone_restricted"],
                   "same_landmarks_px": consistency["mean_px_same_landmarks"]}
            for rule, values in presence.items():
                for key in ("auroc", "absent_f1", "ece", "balanced_accuracy", "detection_f1"):
                    row[f"{rule}:{key}"] = values[key]
            per_seed.append(row)
        rows.extend(per_seed)
    return pd.DataFrame(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, required=True)
    parser.add_argument("--losses", nargs="+", required=True)
    parser.add_argument("--folds", nargs="+", type=int, default=[1, 2, 3, 4, 5, 6])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/loss_study"))
    parser.add_argument("--data", default="data/processed/ds_8x.h5")
    parser.add_argument("--folds-file", default="data/folds.json")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    jobs = [(seed_params(args.params, seed, args.work), loss, fold, seed)
            for seed in args.seeds for loss in args.losses for fold in args.folds]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(
            lambda job: (job, run_one(*job, args.work, args.data, args.folds_file)), jobs))
    failed = [f"{loss} fold {fold} seed {seed}: {status}"
              for (_, loss, fold, seed), status in results if status != "ok"]
    for line in failed:
        print(line, file=sys.stderr)
    if failed:
        return 1
    table = summarise(args.work, args.losses, args.folds, args.seeds,
                      read_processed(args.data).pixel_spacing_mm)
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 40)
    print(f"folds {args.folds}, seeds {args.seeds}, params {args.params}")
    print(table.round(4).to_string(index=False))
    if len(args.seeds) > 1:
        spread = table.groupby("loss")[["mean_px", "outside_bone"]].agg(
            ["mean", "std", "min", "max"])
        print("\nspread over seeds (sample std):")
        print(spread.round(4).to_string())
    np.seterr(all="ignore")
    return 0


if __name__ == "__main__":
    sys.exit(main())
