"""Paired comparisons of two losses with a hierarchical bootstrap: pure functions, no files.

The statistic is the difference of the Table-2 means, mean over test specimens of each
specimen's mean error over its in-frame landmarks (silr.evaluation.metrics.table2), between
loss A and loss B on the same landmarks. Its uncertainty comes from the two levels the data have:

1. draw the test specimens with replacement (as many as there are);
2. within each drawn specimen, draw its frames with replacement;

and recompute the difference on the drawn landmarks. Seeds, when there are several, are
pooled: every seed's prediction of a drawn frame enters the specimen's mean (a seed is a
repetition of the whole study, not a new frame). The interval is the percentile interval of
the draws; `flip_share` is the share of draws in which the difference has the other sign
than the observed one (how often a reviewer resampling the data would see the order
reversed). With six specimens, a specimen-level bootstrap has at most 6^6 distinct draws
of the first level, so an interval this wide is the honest one, not a defect.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["CONFIDENCE", "DRAWS", "SEED", "compare", "hierarchical_bootstrap", "paired_frames"]

DRAWS = 2000
CONFIDENCE = 0.95
SEED = 0


def paired_frames(table: pd.DataFrame, loss_a: str, loss_b: str) -> pd.DataFrame:
    """Per (specimen, frame): the sum of A - B errors over its in-frame landmarks (every seed
    pooled) and how many (landmark, seed) pairs it holds. Landmarks are paired on (fold,
    specimen, frame, landmark, seed); a pair missing in either loss is an error."""
    keys = ["fold", "specimen", "frame", "landmark", "seed"]
    rows = table[table["gt_in_frame"].astype(bool)]
    if "seed" not in rows.columns:
        rows = rows.assign(seed=0)
    a = rows[rows["loss"] == loss_a].set_index(keys)["error_px"]
    b = rows[rows["loss"] == loss_b].set_index(keys)["error_px"]
    if a.empty or b.empty:
        raise ValueError(f"no in-frame predictions for {loss_a if a.empty else loss_b!r}")
    if len(a) != len(b) or not a.index.sort_values().equals(b.index.sort_values()):
        raise ValueError(f"{loss_a} and {loss_b} do not cover the same (fold, specimen, frame, "
                         "landmark, seed) rows")
    difference = (a - b.reindex(a.index)).rename("difference").reset_index()
    grouped = difference.groupby(["specimen", "frame"])["difference"]
    return pd.DataFrame({"sum": grouped.sum(), "count": grouped.count()}).reset_index()


def hierarchical_bootstrap(frames: pd.DataFrame, *, draws: int = DRAWS,
                           confidence: float = CONFIDENCE, seed: int = SEED) -> dict[str, Any]:
    """Observed difference of Table-2 means, its percentile interval and the share of draws whose
    sign flips, from `paired_frames` output."""
    specimens = sorted(frames["specimen"].unique())
    sums = [frames.loc[frames["specimen"] == s, "sum"].to_numpy(np.float64) for s in specimens]
    counts = [frames.loc[frames["specimen"] == s, "count"].to_numpy(np.float64) for s in specimens]
    observed = float(np.mean([s.sum() / c.sum() for s, c in zip(sums, counts)]))
    rng = np.random.default_rng(seed)
    values = np.empty(draws)
    for d in range(draws):
        chosen = rng.integers(0, len(specimens), len(specimens))
        means = []
        for index in chosen:
            frame_draw = rng.integers(0, len(sums[index]), len(sums[index]))
            means.append(sums[index][frame_draw].sum() / counts[index][frame_draw].sum())
        values[d] = np.mean(means)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [tail, 1.0 - tail])
    flips = float(np.mean(np.sign(values) != np.sign(observed))) if observed != 0 else math.nan
    return {"mean_difference_px": observed, "ci_low_px": float(low), "ci_high_px": float(high),
            "confidence": confidence, "flip_share": flips, "draws": draws,
            "specimens": len(specimens), "frames": int(len(frames))}


def compare(table: pd.DataFrame, losses: Sequence[str], references: Sequence[str],
            **options: Any) -> dict[str, dict[str, Any]]:
    """{reference: {loss: bootstrap result of loss - reference}} for every loss against each
    reference present in `losses` (a loss is not compared with itself)."""
    result: dict[str, dict[str, Any]] = {}
    for reference in references:
        if reference not in losses:
            continue
        result[reference] = {loss: hierarchical_bootstrap(paired_frames(table, loss, reference),
                                                          **options)
                             for loss in losses if loss != reference}
    return result
