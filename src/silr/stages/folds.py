"""Stage `folds`: leave-one-specimen-out splits of the processed data set into `data/folds.json`.

  silr folds --data data/processed/ds_8x.h5 --out data/folds.json

How the splits are made and the file's layout: silr.data.splits.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from silr.core.io import write_json
from silr.core.params import DEFAULT_PARAMS_FILE, FoldsParams, load_params, params_from_dict
from silr.data.processed import read_processed
from silr.data.splits import Fold, folds_to_json, make_folds

__all__ = ["add_arguments", "main", "run"]


def run(params: FoldsParams, data: Path, out: Path) -> dict[int, Fold]:
    """The stage: read the processed data, make the folds, write them atomically."""
    processed = read_processed(data)
    counts = processed.frames_per_specimen
    folds = make_folds(counts, params.val_fraction, params.seed)
    write_json(out, folds_to_json(folds, data=str(data), val_fraction=params.val_fraction,
                                  seed=params.seed, frames_per_specimen=counts))
    return folds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path,
                        help="preprocessed HDF5 file (silr ingest)")
    parser.add_argument("--out", required=True, type=Path, help="folds JSON file to write")
    parser.add_argument("--params", type=Path, default=Path(DEFAULT_PARAMS_FILE),
                        help="params file whose `folds` section is used (default %(default)s)")
    parser.add_argument("--val-fraction", type=float, default=None,
                        help="override folds.val_fraction")
    parser.add_argument("--seed", type=int, default=None, help="override folds.seed")


def main(args: argparse.Namespace) -> int:
    params = load_params(args.params).folds
    given = (("val_fraction", args.val_fraction), ("seed", args.seed))
    overrides = {k: v for k, v in given if v is not None}
    if overrides:
        # Validated by the same rules as params.yaml.
        params = params_from_dict({"folds": {"val_fraction": params.val_fraction,
                                             "seed": params.seed, **overrides}}).folds
    folds = run(params, args.data, args.out)
    sizes = ", ".join(f"{k}: {len(f.train)}/{len(f.val)}/{len(f.test)}" for k, f in folds.items())
    print(f"silr folds: {len(folds)} folds (train/val/test frames) {sizes} -> {args.out}")
    return 0
