"""The training curves of a study, from the dvclive logs of every (loss, fold).

`silr report` writes them as `metrics/curves/<metric>.csv` (epoch, then one column per loss:
the mean over folds) for `dvc plots`, whose definitions cannot enumerate the dvclive folders
of every (loss, fold) themselves, and draws them (silr.evaluation.extra_plots.training_curves).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from silr.core.errors import DataError

__all__ = ["CURVE_FILES", "curves_wide", "read_training_curves"]

# dvclive metric (path under plots/metrics, without .tsv) -> the curves file it becomes.
CURVE_FILES = {"train/loss": "train_loss.csv", "val/error_px": "val_error_px.csv"}
COLUMNS = ["loss", "fold", "metric", "step", "value"]


def _read_metric(tsv: Path) -> pd.DataFrame:
    """One dvclive metric file: step, then the value column named as the file."""
    try:
        logged = pd.read_csv(tsv, sep="\t")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{tsv}: not a readable dvclive metric file "
                        f"({type(exc).__name__})") from None
    value_column = tsv.stem
    if "step" not in logged.columns or value_column not in logged.columns:
        raise DataError(f"{tsv}: expected columns step and {value_column}, "
                        f"got {', '.join(map(str, logged.columns))}")
    return logged


def read_training_curves(live_dir: str | Path, losses: Sequence[str],
                         folds: Sequence[int]) -> pd.DataFrame:
    """Every dvclive metric of every (loss, fold) as tidy rows (loss, fold, metric, step, value).

    A run without dvclive logs contributes no rows (the curves are a view, not a result).
    """
    rows = []
    for loss in losses:
        for fold in folds:
            root = Path(live_dir) / loss / f"fold{fold}" / "plots" / "metrics"
            for tsv in sorted(root.rglob("*.tsv")):
                metric = tsv.relative_to(root).with_suffix("").as_posix()
                logged = _read_metric(tsv)
                rows.append(pd.DataFrame({"loss": loss, "fold": fold, "metric": metric,
                                          "step": logged["step"].astype(int),
                                          "value": logged[tsv.stem].astype(float)}))
    return pd.concat(rows, ignore_index=True)[COLUMNS] if rows else pd.DataFrame(columns=COLUMNS)


def curves_wide(curves: pd.DataFrame, metric: str, losses: Sequence[str]) -> pd.DataFrame:
    """epoch (from 1, as the training log counts), then one column per loss: the metric's mean
    over folds at each epoch. dvclive's step 0 is the first epoch."""
    rows = curves[curves["metric"] == metric]
    if rows.empty:
        return pd.DataFrame(columns=["epoch", *losses])
    wide = rows.pivot_table(index="step", columns="loss", values="value", aggfunc="mean")
    wide = wide.reindex(columns=list(losses)).reset_index()
    wide.columns.name = None
    return wide.assign(step=wide["step"] + 1).rename(columns={"step": "epoch"})
