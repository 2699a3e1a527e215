"""The robustness benchmark's files and their summary in the report.

`silr robustness` (silr.stages.robustness) writes one JSON per (loss, fold); the report pools the
folds: per loss and (corruption, severity) the mean over held-out specimens of their errors
(as Table 2), the error relative to clean (ImageNet-C's view: each corrupted error over the
clean one, averaged over types and severities 1-5), whether the error averaged over the types
ever falls with severity, and the absent-class presence F1 pooled over frames.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from silr.core.errors import DataError
from silr.evaluation import metrics
from silr.evaluation.corruptions import SEVERITIES

__all__ = [
    "CLEAN", "FORMAT", "least_degraded", "markdown", "read_fold", "robustness_path", "summarise",
]

CLEAN = "clean"
FORMAT = "silr-robustness/1"


def robustness_path(out_dir: str | Path, loss: str, fold: int) -> Path:
    """Where `silr robustness --loss loss --fold fold` writes (the report reads the same name)."""
    return Path(out_dir) / "robustness" / loss / f"fold{fold}.json"


def read_fold(path: Path, loss: str, fold: int) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"{path}: missing; run `dvc repro robustness@{loss}-{fold}` first")
    try:
        result = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a robustness result ({exc})") from None
    if (not isinstance(result, dict) or result.get("format") != FORMAT
            or result.get("loss") != loss or result.get("fold") != fold
            or not isinstance(result.get("conditions"), list)):
        raise DataError(f"{path}: not the {FORMAT} result of loss {loss!r} fold {fold}")
    return result


def _absent_f1(counts: Sequence[Mapping[str, int]]) -> float | None:
    """Absent-class F1 pooled over counts (absent called absent = true_negative of presence)."""
    hit = sum(c["true_negative"] for c in counts)
    wrong_absent = sum(c["false_negative"] for c in counts)   # present called absent
    missed_absent = sum(c["false_positive"] for c in counts)  # absent called present
    wrong = wrong_absent + missed_absent
    return 2 * hit / (2 * hit + wrong) if hit + wrong else None


Conditions = dict[tuple[str, int], list[dict[str, Any]]]  # (corruption, severity) -> fold entries


def _presence_f1(by_condition: Conditions, names: Sequence[str]) -> dict[str, Any]:
    """Absent-class F1 pooled over the folds: clean, over every corrupted condition, per type."""
    return {
        "absent_f1_clean": _absent_f1([e["presence"] for e in by_condition[(CLEAN, 0)]]),
        "absent_f1_corrupted": _absent_f1([e["presence"] for key, entries in by_condition.items()
                                           if key[0] != CLEAN for e in entries]),
        "absent_f1_by_type": {n: _absent_f1([e["presence"] for s in SEVERITIES
                                             for e in by_condition[(n, s)]]) for n in names},
    }


def _loss_summary(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One loss's entry of `summarise` from its folds' results."""
    by_condition: Conditions = {}
    for result in results:
        for entry in result["conditions"]:
            by_condition.setdefault((entry["corruption"], entry["severity"]), []).append(entry)
    names = list(dict.fromkeys(name for name, _ in by_condition if name != CLEAN))
    clean = float(np.mean([e["mean_px"] for e in by_condition[(CLEAN, 0)]]))
    error = {name: {str(s): float(np.mean([e["mean_px"] for e in by_condition[(name, s)]]))
                    for s in SEVERITIES} for name in names}
    per_severity = {str(s): float(np.mean([error[n][str(s)] for n in names])) for s in SEVERITIES}
    applies = results[0]["presence_rule"] is not None
    f1 = (_presence_f1(by_condition, names) if applies else
          dict.fromkeys(("absent_f1_clean", "absent_f1_corrupted", "absent_f1_by_type")))
    return {
        "clean_px": clean,
        "error_px": error,
        "mean_over_types_px": per_severity,
        "relative_error": float(np.mean([error[n][str(s)] / clean
                                         for n in names for s in SEVERITIES])),
        "relative_error_by_type": {n: float(np.mean([error[n][str(s)] / clean for s in SEVERITIES]))
                                   for n in names},
        "monotone_over_types": all(per_severity[str(b)] >= per_severity[str(a)] for a, b in
                                   zip(SEVERITIES, SEVERITIES[1:])),
        "presence_rule": results[0]["presence_rule"],
        **f1,
        "folds": len(results), "frames": int(sum(r["frames"] for r in results)),
    }


def summarise(metrics_dir: str | Path, losses: Sequence[str], folds: Sequence[int],
              reference_px: Mapping[str, float] | None = None) -> dict[str, Any]:
    """Per loss: the mean over specimens of each (corruption, severity)'s error, the error relative
    to clean, whether it ever falls with severity (averaged over types), and presence F1."""
    summary: dict[str, Any] = {}
    for loss in losses:
        summary[loss] = _loss_summary([read_fold(robustness_path(metrics_dir, loss, k), loss, k)
                                       for k in folds])
    if reference_px:
        summary["_baselines_px"] = dict(reference_px)
    return summary


def least_degraded(summary: Mapping[str, Any]) -> str:
    """The loss whose corrupted error, relative to its clean one, is lowest."""
    return min((k for k in summary if not k.startswith("_")),
               key=lambda k: summary[k]["relative_error"])


def markdown(summary: Mapping[str, Any], shown: Sequence[int] = (1, 3, 5)) -> str:
    """The robustness section of metrics/table2.md."""
    losses = [k for k in summary if not k.startswith("_")]
    if not losses:
        return ""
    names = list(summary[losses[0]]["error_px"])
    head = ["Loss", "Clean", *(f"{n} {s}" for n in names for s in shown), "Relative",
            "Absent F1 clean / corrupted"]
    lines = ["## Robustness: error (px) under fluoroscopy's corruptions", "",
             "Mean over held-out specimens, as Table 2, at severities " + ", ".join(map(str, shown))
             + " of 1-5 (`silr.evaluation.corruptions`; every severity in `details.json`). "
               "Relative: the corrupted error over the clean one, averaged over types and "
               "severities 1-5.", "",
             "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for loss in losses:
        entry = summary[loss]
        f1 = (f"{entry['absent_f1_clean']:.2f} / {entry['absent_f1_corrupted']:.2f}"
              if entry["absent_f1_clean"] is not None else "n/a")
        cells = [metrics.loss_title(loss), f"{entry['clean_px']:.2f}",
                 *(f"{entry['error_px'][n][str(s)]:.2f}" for n in names for s in shown),
                 f"{entry['relative_error']:.2f}", f1]
        lines.append("| " + " | ".join(cells) + " |")
    baselines = summary.get("_baselines_px", {})
    if baselines:
        lines += ["", "The trivial baselines do not look at the frame: " + ", ".join(
            f"{metrics.loss_title(name)} {value:.2f} px" for name, value in baselines.items())
            + " at every severity."]
    lines += ["", "Least degraded (lowest relative error): "
              f"{metrics.loss_title(least_degraded(summary))}.", ""]
    return "\n".join(lines)
