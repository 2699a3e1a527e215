"""`metrics/details.json` and the DVC metrics: every number of the report, assembled.

Pure assembly over what `silr evaluate` and `silr robustness` wrote (read through
silr.evaluation.results and silr.evaluation.robustness_summary) and the processed data; no
file is written here. `build_details` gives the details in their published key order:
`table2` (per loss, with presence counts and visibility accuracy), `baselines`,
`not_beating_mean_shape`, `presence`, `consistency`, `seed_spread`, `comparisons`,
`robustness`, `segmentation_dice`, `dataset` and `paper_table2`; `compact_summary` the DVC
metrics (`metrics/summary/<name>.json`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from silr.core.errors import DataError
from silr.core.params import Params
from silr.data.processed import ProcessedData
from silr.data.splits import Fold
from silr.evaluation import baselines, metrics, robustness_summary
from silr.evaluation.comparisons import compare
from silr.evaluation.dice import dice_per_bone, dice_summary
from silr.evaluation.presence import presence_by_rule, presence_counts, visibility_accuracy
from silr.evaluation.results import output_paths, read_fold_metrics, read_label_maps

__all__ = [
    "DATA_KIND_TEXT", "REFERENCES", "build_details", "compact_summary", "dataset_description",
    "describe_data", "figure_source", "no_presence_losses", "not_beating", "presence_rules",
    "presence_summary", "robustness_of", "seed_spread", "segmentation_dice", "table2_with_extras",
]

# How the data kinds of the processed file's attributes read in a sentence.
DATA_KIND_TEXT = {"synthetic": "the synthetic phantom", "deepfluoro": "the DeepFluoro data set"}
# The losses every other one is compared with: the paper's, and the working method.
REFERENCES = ("proposed", "proposed_plus")


def table2_with_extras(table: pd.DataFrame, *, losses: Sequence[str], mm_per_px: float,
                       success_mm: Sequence[float],
                       no_presence: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """`metrics.table2` plus, per loss, presence counts and discrete-visibility accuracy (pooled);
    None for the losses in `no_presence` (those whose heatmaps have no presence, e.g. NCC)."""
    result = metrics.table2(table, losses=losses, mm_per_px=mm_per_px, success_mm=success_mm)
    for loss in losses:
        rows = table[table["loss"] == loss]
        applicable = loss not in no_presence
        pooled = result[loss]["pooled"]
        pooled["presence"] = (presence_counts(rows["gt_in_frame"], rows["pred_present"])
                              if applicable else None)
        pooled["visibility_accuracy"] = (visibility_accuracy(rows["gt_in_frame"],
                                                             rows["visibility_hat"])
                                         if applicable else None)
    return result


def presence_rules(metrics_dir: str | Path, loss: str,
                   folds: Sequence[int]) -> tuple[str | None, dict[str, Any]]:
    """(the presence rule in force, the rules that apply with their score columns and cuts) of a
    loss, as `silr evaluate` recorded them in its fold JSONs; DataError if the folds disagree."""
    active, rules = set(), []
    for fold in folds:
        document = read_fold_metrics(output_paths(metrics_dir, loss, fold).fold_metrics,
                                     loss=loss, fold=fold)
        active.add(document.get("presence_rule") if document.get("presence") is not None else None)
        rules.append(document.get("presence_rules", {}))
    if len(active) > 1 or any(r != rules[0] for r in rules):
        raise DataError(f"{metrics_dir}: the folds of loss {loss!r} were decoded with different "
                        f"presence rules ({sorted(map(str, active))}); rerun their evaluations")
    return active.pop(), rules[0]


def presence_summary(metrics_dir: str | Path, table: pd.DataFrame, losses: Sequence[str],
                     folds: Sequence[int], mm_per_px: float) -> dict[str, dict[str, Any]]:
    """Per loss: the rule in force and every applicable rule's presence metrics, pooled over the
    folds."""
    result = {}
    for loss in losses:
        active, rules = presence_rules(metrics_dir, loss, folds)
        rows = table[table["loss"] == loss]
        result[loss] = {"rule": active, "by_rule": presence_by_rule(rows, rules, mm_per_px)}
    return result


def no_presence_losses(presence: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The losses of a `presence_summary` whose heatmaps have no presence rule (e.g. NCC)."""
    return [loss for loss, entry in presence.items() if entry["rule"] is None]


def seed_spread(table: pd.DataFrame, losses: Sequence[str],
                mm_per_px: float) -> dict[str, dict[str, Any]]:
    """Per loss: the Table-2 mean of each training seed, and their mean and sample std (None for
    one seed)."""
    result = {}
    for loss in losses:
        rows = table[table["loss"] == loss]
        seeds = sorted(int(s) for s in rows["seed"].unique())
        in_frame = rows[rows["gt_in_frame"].astype(bool)]
        # the Table-2 statistic of each seed: the mean over specimens of each specimen's mean error
        means = [float(in_frame[in_frame["seed"] == seed].groupby("specimen")["error_px"]
                       .mean().mean())
                 for seed in seeds]
        spread = float(np.std(means, ddof=1)) if len(means) > 1 else None
        result[loss] = {"seeds": seeds, "mean_px": means,
                        "mean_over_seeds_px": float(np.mean(means)), "std_over_seeds_px": spread}
    return result


def not_beating(summary_table2: Mapping[str, Mapping[str, Any]],
                reference: Mapping[str, Any]) -> list[str]:
    """The losses whose Table-2 mean is not below the reference (the mean-shape baseline's)."""
    bar = reference["mean_px"]
    return [loss for loss, entry in summary_table2.items()
            if entry["mean_px"] is None or bar is None or not entry["mean_px"] < bar]


def robustness_of(metrics_dir: Path, losses: Sequence[str], folds: Sequence[int],
                  baselines_px: Mapping[str, float]) -> dict[str, Any] | None:
    """The robustness summary, or None where no (loss, fold) of the study has a robustness result
    (`silr report` after evaluate alone); some but not all is an error naming the missing one."""
    paths = [robustness_summary.robustness_path(metrics_dir, loss, k)
             for loss in losses for k in folds]
    if not any(path.is_file() for path in paths):
        return None
    return robustness_summary.summarise(metrics_dir, losses, folds, baselines_px)


def segmentation_dice(metrics_dir: str | Path, losses: Sequence[str], folds: Sequence[int],
                      data: ProcessedData) -> dict[str, dict[str, dict[str, float]]]:
    """Per loss, Dice per bone over every test frame of every fold (from the saved label maps)."""
    result = {}
    for loss in losses:
        predicted, truth = [], []
        for fold in folds:
            path = output_paths(metrics_dir, loss, fold).segmentation
            maps = read_label_maps(path)
            predicted.append(maps["labels"])
            truth.append(_true_labels(data, maps, path))
        result[loss] = dice_summary(dice_per_bone(np.concatenate(predicted), np.concatenate(truth)))
    return result


def _true_labels(data: ProcessedData, maps: Mapping[str, np.ndarray], path: Path) -> np.ndarray:
    try:
        truth = np.stack([data.specimens[int(s)].labels[int(f)]
                          for s, f in zip(maps["specimen"], maps["frame"])])
    except (KeyError, IndexError):
        raise DataError(f"{path}: names frames the processed data does not hold "
                        "(stale evaluation?)") from None
    if truth.shape != maps["labels"].shape:
        raise DataError(f"{path}: label maps are {maps['labels'].shape[1:]}, the data's frames "
                        f"{truth.shape[1:]}")
    return truth


def dataset_description(data: ProcessedData, table: pd.DataFrame,
                        params: Params) -> dict[str, Any]:
    """What produced the numbers: data kind and source, sizes, and the settings that matter most."""
    return {
        "kind": data.data_kind,
        "source": data.source,
        "specimens": len(data.specimens),
        "frames": int(sum(data.frames_per_specimen.values())),
        "test_specimens": sorted(int(s) for s in table["specimen"].unique()),
        "test_frames": int(len(table[["specimen", "frame"]].drop_duplicates())),
        "downsample": int(data.downsample),
        "mm_per_px": float(data.pixel_spacing_mm),
        "settings": {
            "backbone": params.model.backbone,
            "epochs": params.train.epochs,
            "losses": list(params.study.losses),
            "folds": list(params.study.folds),
        },
    }


def _epochs(settings: Mapping[str, Any]) -> str:
    return f"{settings['epochs']} epoch{'' if settings['epochs'] == 1 else 's'}"


def describe_data(dataset: Mapping[str, Any]) -> str:
    """One sentence: what data and settings produced a table."""
    kind = DATA_KIND_TEXT.get(dataset["kind"], dataset["kind"])
    settings = dataset["settings"]
    return (f"Data: {kind} ({dataset['source']}), {dataset['specimens']} specimens, "
            f"{dataset['frames']} frames ({dataset['test_frames']} test frames over folds "
            f"{', '.join(map(str, settings['folds']))}), {dataset['mm_per_px']:g} mm per pixel. "
            f"Model: {settings['backbone']}, {_epochs(settings)}.")


def figure_source(dataset: Mapping[str, Any]) -> str:
    """The line every figure prints under its title: what data (synthetic or real) it shows."""
    kind = DATA_KIND_TEXT.get(dataset["kind"], dataset["kind"])
    warning = " (simulated images, not patient data)" if dataset["kind"] == "synthetic" else ""
    settings = dataset["settings"]
    return (f"Data: {kind}{warning}, {dataset['test_frames']} test frames of "
            f"{len(dataset['test_specimens'])} held-out specimens; {settings['backbone']}, "
            f"{_epochs(settings)}")


def build_details(params: Params, table: pd.DataFrame, data: ProcessedData,
                  fold_splits: Mapping[int, Fold],
                  metrics_dir: Path) -> tuple[dict[str, Any], pd.DataFrame]:
    """The details (rounded, as `metrics/details.json` holds them) of the study's predictions
    `table`, and the baselines' predictions table they score (for the figures)."""
    losses, folds = list(params.study.losses), list(params.study.folds)
    mm_per_px, success_mm = data.pixel_spacing_mm, params.evaluate.success_mm
    presence = presence_summary(metrics_dir, table, losses, folds, mm_per_px)
    no_presence = no_presence_losses(presence)
    consistency = {loss: metrics.consistency_summary(table[table["loss"] == loss])
                   for loss in losses}
    result = table2_with_extras(table, losses=losses, mm_per_px=mm_per_px,
                                success_mm=success_mm, no_presence=no_presence)
    baseline_table = baselines.baseline_predictions(data, fold_splits, folds)
    seeds = sorted(table["seed"].unique())
    paired = pd.concat([table, baselines.with_seeds(baseline_table, seeds)], ignore_index=True)
    comparisons = compare(paired, [*losses, *baselines.BASELINES], REFERENCES)
    baseline_result = metrics.table2(baseline_table, losses=list(baselines.BASELINES),
                                     mm_per_px=mm_per_px, success_mm=success_mm)
    dataset = dataset_description(data, table, params)
    details = metrics.rounded({
        "table2": result,
        "baselines": baseline_result,
        "not_beating_mean_shape": not_beating(result, baseline_result["mean_shape"]),
        "presence": presence,
        "consistency": consistency,
        "seed_spread": seed_spread(table, losses, mm_per_px),
        "comparisons": comparisons,
        "robustness": robustness_of(metrics_dir, losses, folds, {
            name: baseline_result[name]["mean_px"] for name in baselines.BASELINES}),
        "segmentation_dice": segmentation_dice(metrics_dir, losses, folds, data),
        "dataset": dataset,
        "paper_table2": metrics.PAPER_TABLE2,
    })
    return details, baseline_table


def compact_summary(details: Mapping[str, Any]) -> dict[str, dict[str, float | None]]:
    """The DVC metrics (`metrics/summary/<name>.json`): what a user compares across experiments.

    Per loss: mean and std over test specimens (px), the mean in mm, and its Dice averaged
    over the bones (each bone's mean over the frames that define it); per baseline
    (`baseline_<name>`): the same without Dice. One file per name, the same keys in each,
    so that `dvc metrics show` prints a table of one row per loss. Everything else is in
    `metrics/details.json`.
    """
    compact: dict[str, dict[str, float | None]] = {}
    for loss, entry in details["table2"].items():
        bones = [bone["mean"] for bone in details["segmentation_dice"].get(loss, {}).values()
                 if bone["mean"] is not None]
        compact[loss] = {"mean_px": entry["mean_px"], "std_px": entry["std_px"],
                         "mean_mm": entry["mean_mm"],
                         "dice": float(np.mean(bones)) if bones else None, **_coverage(entry)}
    for name, entry in details["baselines"].items():
        compact[f"baseline_{name}"] = {"mean_px": entry["mean_px"], "std_px": entry["std_px"],
                                       "mean_mm": entry["mean_mm"], **_coverage(entry)}
    return metrics.rounded(compact)


def _coverage(entry: Mapping[str, Any]) -> dict[str, int]:
    # What a number covers, so that a one-fold experiment cannot pass for the six-fold record.
    # (one test specimen per fold: n_folds is also the number of specimens behind std_px)
    return {"n_folds": len(entry["folds"]), "n_seeds": len(entry.get("seeds", [0])),
            "n_frames": entry.get("frames", 0)}
