"""Stage `report`: Table 2, Figure 1 and the summary plots from every evaluation.

  silr report

Reads `metrics/predictions/<loss>/fold<k>.csv` and `metrics/segmentation/<loss>/fold<k>.npz`
for every (loss, fold) of `study:` in params.yaml, and the processed data (frames, true
labels, pixel spacing, what data it is). Writes
- `metrics/summary/<name>.json`, the DVC metrics (`dvc metrics show`, `dvc exp show`), one
  file per loss and per baseline (`baseline_frame_centre`, `baseline_mean_shape`):
  `mean_px`, `std_px`, `mean_mm`, and for a loss `dice` (mean over bones); `dvc metrics
  show` prints them as one row per file;
- `metrics/details.json` (a plain output, not a DVC metric): `table2` (per loss:
  per-specimen mean error, mean and std over specimens (ddof = 0), the same in mm, pooled
  statistics, presence counts and visibility accuracy: all recomputable from the
  predictions CSVs), `baselines` (the trivial predictors of silr.evaluation.baselines, frame centre
  and mean shape, scored per held-out specimen exactly as a loss, each entry in the form
  of a `table2` entry), `not_beating_mean_shape` (the losses whose mean is not below the
  mean-shape baseline's), `segmentation_dice` (per loss and bone, from the label maps),
  `dataset` (data kind, source, counts, settings) and `paper_table2` (the paper's numbers);
- `metrics/table2.md`: the paper's table layout, our numbers and the baselines beside the
  paper's, and the losses that do not beat the mean shape;
- `metrics/per_specimen.csv`: loss, specimen, specimen_loss, mean_px, mean_mm (for `dvc plots`);
- `metrics/curves/<metric>.csv` for the training loss and the validation error: epoch, then
  one column per loss (mean over folds) from the dvclive logs, for `dvc plots` (whose
  definitions cannot enumerate the dvclive folders of every (loss, fold) themselves);
- `plots/figure1.png`, `plots/per_specimen_errors.png`, `plots/cumulative_errors.png`,
  `plots/per_landmark_errors.png`, `plots/segmentation.png`, `plots/training_curves.png`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from silr.core.errors import DataError
from silr.core.io import ensure_writable, write_json, write_text, write_with
from silr.core.params import DEFAULT_PARAMS_FILE, Params, load_params
from silr.core.types import FramePredictions
from silr.evaluation import baselines, metrics, robustness_summary
from silr.evaluation.comparisons import compare
from silr.evaluation.results import (
    output_paths,
    predictions_table,
    read_fold_metrics,
    read_label_maps,
    read_predictions_csv,
)

DEFAULT_METRICS = "metrics"
DEFAULT_PLOTS = "plots"
DEFAULT_FOLDS = "data/folds.json"
# How the data kinds of the processed file's attributes read in a sentence.
DATA_KIND_TEXT = {"synthetic": "the synthetic phantom", "deepfluoro": "the DeepFluoro data set"}
DEFAULT_LIVE = "dvclive"
# Under --metrics: the DVC metrics, one small JSON file per loss and baseline.
SUMMARY_DIR = "summary"
PLOT_NAMES = ("figure1.png", "per_specimen_errors.png", "cumulative_errors.png", "per_landmark_errors.png",
              "segmentation.png", "training_curves.png")
# Drawn where the robustness stage has run for the study (dvc.yaml always runs it).
ROBUSTNESS_PLOT = "robustness.png"
# dvclive metric (path under plots/metrics, without .tsv) -> the curves file it becomes.
CURVE_FILES = {"train/loss": "train_loss.csv", "val/error_px": "val_error_px.csv"}


# ------------------------------------------------------------------ pure logic

def robustness_of(metrics_dir: Path, losses: Sequence[str], folds: Sequence[int],
                  baselines_px: Mapping[str, float]) -> dict[str, Any] | None:
    """The robustness summary, or None where no (loss, fold) of the study has a robustness result
    (`silr report` after evaluate alone); some but not all is an error naming the missing one."""
    paths = [robustness_summary.robustness_path(metrics_dir, loss, k) for loss in losses for k in folds]
    if not any(path.is_file() for path in paths):
        return None
    return robustness_summary.summarise(metrics_dir, losses, folds, baselines_px)


def study_seeds(params: Params) -> list[int | None]:
    """The seeds of the study as evaluation names: None for train.seed (the default runs), then
    every extra seed of study.seeds that is not train.seed again (that one is the default run)."""
    return [None, *(seed for seed in params.study.seeds if seed != params.train.seed)]


def load_predictions(metrics_dir: str | Path, losses: Sequence[str], folds: Sequence[int],
                     seeds: Sequence[int | None] = (None,)) -> pd.DataFrame:
    """Every (loss, fold, seed) predictions CSV, concatenated; DataError naming the missing evaluation."""
    tables = []
    for loss in losses:
        for fold, seed in ((f, s) for f in folds for s in seeds):
            path = output_paths(metrics_dir, loss, fold, seed).predictions
            if not path.is_file():
                stage = f"evaluate@{loss}-{fold}" if seed is None else f"evaluate_seed@{loss}-{fold}-{seed}"
                raise DataError(f"{path}: missing; run `dvc repro {stage}` first")
            table = read_predictions_csv(path)
            if set(table["loss"]) != {loss} or set(table["fold"]) != {fold}:
                raise DataError(f"{path}: holds loss {sorted(set(table['loss']))} fold {sorted(set(table['fold']))}, "
                                f"expected loss {loss!r} fold {fold}")
            tables.append(table)
    return pd.concat(tables, ignore_index=True)


def table2_with_extras(table: pd.DataFrame, *, losses: Sequence[str], mm_per_px: float,
                       success_mm: Sequence[float], no_presence: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """`metrics.table2` plus, per loss, presence counts and discrete-visibility accuracy (pooled);
    None for the losses in `no_presence` (those whose heatmaps have no presence, e.g. NCC)."""
    result = metrics.table2(table, losses=losses, mm_per_px=mm_per_px, success_mm=success_mm)
    for loss in losses:
        rows = table[table["loss"] == loss]
        applicable = loss not in no_presence
        result[loss]["pooled"]["presence"] = (metrics.presence_counts(rows["gt_in_frame"], rows["pred_present"])
                                              if applicable else None)
        result[loss]["pooled"]["visibility_accuracy"] = (
            metrics.visibility_accuracy(rows["gt_in_frame"], rows["visibility_hat"]) if applicable else None)
    return result


def presence_rules(metrics_dir: str | Path, loss: str, folds: Sequence[int]) -> tuple[str | None, dict[str, Any]]:
    """(the presence rule in force, the rules that apply with their score columns and cuts) of a
    loss, as `silr evaluate` recorded them in its fold JSONs; DataError if the folds disagree."""
    active, rules = set(), []
    for fold in folds:
        document = read_fold_metrics(output_paths(metrics_dir, loss, fold).fold_metrics, loss=loss, fold=fold)
        active.add(document.get("presence_rule") if document.get("presence") is not None else None)
        rules.append(document.get("presence_rules", {}))
    if len(active) > 1 or any(r != rules[0] for r in rules):
        raise DataError(f"{metrics_dir}: the folds of loss {loss!r} were decoded with different presence rules "
                        f"({sorted(map(str, active))}); rerun their evaluations")
    return active.pop(), rules[0]


def presence_summary(metrics_dir: str | Path, table: pd.DataFrame, losses: Sequence[str], folds: Sequence[int],
                     mm_per_px: float) -> dict[str, dict[str, Any]]:
    """Per loss: the rule in force and every applicable rule's presence metrics, pooled over the folds."""
    result = {}
    for loss in losses:
        active, rules = presence_rules(metrics_dir, loss, folds)
        rows = table[table["loss"] == loss]
        result[loss] = {"rule": active, "by_rule": metrics.presence_by_rule(rows, rules, mm_per_px)}
    return result


# The losses every other one is compared with: the paper's, and the working method.
REFERENCES = ("proposed", "proposed_plus")


def comparisons_markdown(comparisons: Mapping[str, Mapping[str, Any]], spread: Mapping[str, Any]) -> str:
    """The paired differences with their bootstrap intervals, and the spread over training seeds."""
    lines = ["## Paired differences (hierarchical bootstrap)", "",
             "| Loss | against | Mean difference (px) | 95% interval (px) | Order flips in |",
             "|---|---|---:|---:|---:|"]
    for reference, rows in comparisons.items():
        for loss, result in rows.items():
            interval = f"[{result['ci_low_px']:+.2f}, {result['ci_high_px']:+.2f}]"
            lines.append(f"| {metrics.loss_title(loss)} | {metrics.loss_title(reference)} | "
                         f"{result['mean_difference_px']:+.2f} | {interval} | "
                         f"{100 * result['flip_share']:.1f}% of draws |")
    draws = next((r["draws"] for rows in comparisons.values() for r in rows.values()), 0)
    lines += ["", f"Difference of Table-2 means (loss minus the reference; negative: the loss is better) on the "
              f"same landmarks. The interval is the 2.5-97.5 percentile range over {draws} draws of a two-level "
              f"bootstrap: the test specimens with replacement, then each drawn specimen's frames with "
              f"replacement; training seeds are pooled. 'Order flips in' is the share of draws whose "
              f"difference has the other sign (silr.evaluation.comparisons).", "",
              "## Spread over training seeds", "", "| Loss | Seeds | Table-2 mean per seed (px) | Mean | Std |",
              "|---|---|---|---:|---:|"]
    for loss, entry in spread.items():
        lines.append(f"| {metrics.loss_title(loss)} | {', '.join(map(str, entry['seeds']))} | "
                     f"{' / '.join(_cell(v) for v in entry['mean_px'])} | {_cell(entry['mean_over_seeds_px'])} | "
                     f"{_cell(entry['std_over_seeds_px'])} |")
    lines += ["", "Std over seeds: the sample std (ddof = 1) of the per-seed Table-2 means; – for a single seed "
              "(add seeds with `dvc exp run -S 'study.seeds=[1,2]'`).", ""]
    return "\n".join(lines)


def presence_markdown(presence: Mapping[str, Mapping[str, Any]], consistency: Mapping[str, Mapping[str, Any]],
                      losses: Sequence[str]) -> str:
    """The presence table (every loss x applicable rule) and the anatomical-consistency table."""
    lines = ["## Presence: is the landmark in the frame?", "",
             "| Loss | Rule | Absent F1 | Absent precision | Absent recall | Balanced accuracy | AUROC | ECE | "
             "Error if called present (px) | Error, all in frame (px) | Detection F1 (4 mm) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for loss in losses:
        entry = presence[loss]
        for rule, values in entry["by_rule"].items():
            marker = " (in force)" if rule == entry["rule"] else ""
            cells = [values[k] for k in ("absent_f1", "absent_precision", "absent_recall", "balanced_accuracy",
                                          "auroc", "ece", "mean_px_called_present", "mean_px_in_frame",
                                          "detection_f1")]
            lines.append(f"| {metrics.loss_title(loss)} | {rule}{marker} | " + " | ".join(_cell(v) for v in cells)
                         + " |")
    lines += ["", "Absent class: the landmark's true position is outside the 180x180 frame. threshold: max "
              "sigmoid(H) >= 0.5 (the paper's reading; max H for MSE); template: the data set authors' rule "
              "(argmax on the landmark's own predicted bone, NCC of its window with a Gaussian >= 0.9; without "
              "a trained segmentation the window at the frame argmax); learned: the presence output the loss "
              "trains (its probability; Platt-calibrated on the validation frames only with heatmap.calibrate: "
              "true). ECE (10 bins) only for probabilities; – where a rule or value does not apply.", "",
              "## Anatomical consistency", "",
              "| Loss | Off own bone | Off own bone, ground truth | Error, argmax on own bone (px) | "
              "Error, frame argmax, same landmarks (px) |", "|---|---:|---:|---:|---:|"]
    for loss in losses:
        values = consistency[loss]
        cells = [values[k] for k in ("outside_own_bone_rate", "gt_outside_own_bone_rate",
                                      "mean_px_bone_restricted", "mean_px_same_landmarks")]
        lines.append(f"| {metrics.loss_title(loss)} | " + " | ".join(_cell(v, 3) for v in cells[:2]) + " | "
                     + " | ".join(_cell(v) for v in cells[2:]) + " |")
    lines += ["", "Off own bone: share of in-frame landmarks whose predicted pixel is not labelled as the "
              "landmark's own bone in the ground-truth labels (femur for FH, hemipelvis for the rest). The "
              "ground-truth row is the floor the labels allow. The argmax on the own bone is the authors' "
              "location (restricted to the predicted bone), scored on the landmarks that have such a pixel.", ""]
    return "\n".join(lines)


def seed_spread(table: pd.DataFrame, losses: Sequence[str], mm_per_px: float) -> dict[str, dict[str, Any]]:
    """Per loss: the Table-2 mean of each training seed, and their mean and sample std (None for one seed)."""
    result = {}
    for loss in losses:
        rows = table[table["loss"] == loss]
        seeds = sorted(int(s) for s in rows["seed"].unique())
        in_frame = rows[rows["gt_in_frame"].astype(bool)]
        # the Table-2 statistic of each seed: the mean over specimens of each specimen's mean error
        means = [float(in_frame[in_frame["seed"] == seed].groupby("specimen")["error_px"].mean().mean())
                 for seed in seeds]
        result[loss] = {"seeds": seeds, "mean_px": means, "mean_over_seeds_px": float(np.mean(means)),
                        "std_over_seeds_px": float(np.std(means, ddof=1)) if len(means) > 1 else None}
    return result


def with_seeds(table: pd.DataFrame, seeds: Sequence[int]) -> pd.DataFrame:
    """A baseline's predictions repeated for every training seed of the study (a baseline has no
    seed; the repetition lets it be paired with every seed of a loss)."""
    return pd.concat([table.assign(seed=int(seed)) for seed in seeds], ignore_index=True)


def baseline_predictions(data: Any, folds: Mapping[int, Any], fold_numbers: Sequence[int]) -> pd.DataFrame:
    """Predictions tables of the trivial baselines (silr.evaluation.baselines) for every fold: the same
    columns as a loss's, so that Table 2 and the plots score them with the same code."""
    height, width = data.frame_shape
    tables = []
    for name in baselines.BASELINES:
        for number in fold_numbers:
            fold = folds[number]
            test = sorted(fold.test)
            gt_xy = np.stack([data.specimens[s].landmarks_xy[i] for s, i in test])
            train_xy = np.stack([data.specimens[s].landmarks_xy[i] for s, i in fold.train])
            guess = baselines.guess(name, train_xy, width, height)
            count, num_landmarks = gt_xy.shape[:2]
            predicted = FramePredictions(xy=np.broadcast_to(guess, gt_xy.shape).copy(),
                                         present=np.ones((count, num_landmarks), bool),
                                         score=np.full((count, num_landmarks), np.nan),
                                         visibility_hat=np.full((count, num_landmarks), np.nan),
                                         labels=np.zeros((count, 0, 0), np.uint8))
            tables.append(predictions_table(loss=name, fold=number, specimens=[s for s, _ in test],
                                            frame_indices=[i for _, i in test], gt_xy=gt_xy, predicted=predicted,
                                            frame_size=(width, height)))
    return pd.concat(tables, ignore_index=True)


def not_beating(summary_table2: Mapping[str, Mapping[str, Any]], reference: Mapping[str, Any]) -> list[str]:
    """The losses whose Table-2 mean is not below the reference (the mean-shape baseline's)."""
    bar = reference["mean_px"]
    return [loss for loss, entry in summary_table2.items()
            if entry["mean_px"] is None or bar is None or not entry["mean_px"] < bar]


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
        compact[loss] = {"mean_px": entry["mean_px"], "std_px": entry["std_px"], "mean_mm": entry["mean_mm"],
                         "dice": float(np.mean(bones)) if bones else None, **_coverage(entry)}
    for name, entry in details["baselines"].items():
        compact[f"baseline_{name}"] = {"mean_px": entry["mean_px"], "std_px": entry["std_px"],
                                       "mean_mm": entry["mean_mm"], **_coverage(entry)}
    return metrics.rounded(compact)


def _coverage(entry: Mapping[str, Any]) -> dict[str, int]:
    # What a number covers, so that a one-fold experiment cannot pass for the six-fold record.
    # (one test specimen per fold: n_folds is also the number of specimens behind std_px)
    return {"n_folds": len(entry["folds"]), "n_seeds": len(entry.get("seeds", [0])), "n_frames": entry.get("frames", 0)}


def dataset_description(data: Any, table: pd.DataFrame, params: Params) -> dict[str, Any]:
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


def describe_data(dataset: Mapping[str, Any]) -> str:
    """One sentence: what data and settings produced a table."""
    kind = DATA_KIND_TEXT.get(dataset["kind"], dataset["kind"])
    settings = dataset["settings"]
    return (f"Data: {kind} ({dataset['source']}), {dataset['specimens']} specimens, {dataset['frames']} frames "
            f"({dataset['test_frames']} test frames over folds {', '.join(map(str, settings['folds']))}), "
            f"{dataset['mm_per_px']:g} mm per pixel. Model: {settings['backbone']}, {settings['epochs']} "
            f"epoch{'' if settings['epochs'] == 1 else 's'}.")


def _cell(value: float | None, decimals: int = 2) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:.{decimals}f}"


def table2_markdown(summary_table2: Mapping[str, Mapping[str, Any]], losses: Sequence[str],
                    dataset: Mapping[str, Any], baseline_table2: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """The paper's Table 2 layout (rows: test specimen 6..1, then Mean ± Std) with ours, the
    trivial baselines and the paper's."""
    baseline_table2 = dict(baseline_table2 or {})
    summary_table2 = {**summary_table2, **baseline_table2}
    paper_losses = [loss for loss in losses if loss in metrics.PAPER_TABLE2]
    losses = [*losses, *baseline_table2]
    ours_specimens = {int(s) for loss in losses for s in summary_table2[loss]["per_specimen_px"]}
    order = [s for s in metrics.PAPER_SPECIMEN_ORDER] + sorted(ours_specimens - set(metrics.PAPER_SPECIMEN_ORDER),
                                                              reverse=True)
    header = (["Test specimen"]
              + [metrics.loss_title(name) if name in baseline_table2 else f"{metrics.loss_title(name)} (ours)"
                 for name in losses]
              + [f"{metrics.loss_title(name)} (paper)" for name in paper_losses])
    lines = [
        "# Table 2: Euclidean distance error (pixels) per held-out test specimen",
        "",
        describe_data(dataset),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    for specimen in order:
        ours = [summary_table2[name]["per_specimen_px"].get(specimen,
                                                          summary_table2[name]["per_specimen_px"].get(str(specimen)))
                for name in losses]
        paper = [metrics.PAPER_TABLE2[name]["per_specimen_px"].get(specimen) for name in paper_losses]
        if all(v is None for v in ours) and specimen not in metrics.PAPER_SPECIMEN_ORDER:
            continue
        lines.append("| " + " | ".join([str(specimen)] + [_cell(v) for v in ours + paper]) + " |")
    mean_std = [f"{_cell(summary_table2[name]['mean_px'])} ± {_cell(summary_table2[name]['std_px'])}"
                for name in losses]
    mean_std += [f"{metrics.PAPER_TABLE2[name]['mean_px']:.2f} ± {metrics.PAPER_TABLE2[name]['std_px']:.2f}"
                 for name in paper_losses]
    lines.append("| Mean ± Std | " + " | ".join(mean_std) + " |")
    mm = ", ".join(f"{metrics.loss_title(name)} {_cell(summary_table2[name]['mean_mm'])} ± "
                   f"{_cell(summary_table2[name]['std_mm'])} mm" for name in losses)
    lines += ["", f"Ours in mm: {mm}."]
    if "mean_shape" in baseline_table2:
        trained = [name for name in losses if name not in baseline_table2]
        weak = not_beating({name: summary_table2[name] for name in trained}, baseline_table2["mean_shape"])
        bar = _cell(baseline_table2["mean_shape"]["mean_px"])
        lines += ["", (f"**Not better than the mean-shape baseline ({bar} px): "
                       f"{', '.join(metrics.loss_title(name) for name in weak)}.**" if weak else
                       f"Every loss beats the mean-shape baseline ({bar} px).")]
    first = summary_table2[losses[0]]
    covered = (f"{len(first['folds'])} fold(s), {len(first.get('seeds', [0]))} training seed(s) "
               f"({', '.join(map(str, first.get('seeds', [0])))}), {first.get('frames', 0)} test frames")
    lines += [
        "",
        f"Covers {covered}. Mean ± Std are over the per-specimen means (population std, ddof = 0; – for a "
        "single specimen, whose spread is undefined); with several seeds each specimen's mean pools them. "
        "– marks a specimen whose fold was not evaluated. Errors are measured in the 180x180 (8x) frame over "
        "ground-truth landmarks inside the frame. mm are at the detector plane (its pixel spacing times "
        f"the downsampling: {dataset['mm_per_px']:g} mm per pixel); anatomy at the isocentre is smaller by the "
        "C-arm's magnification (1.13 to 1.46 over the synthetic phantom's poses). Baselines: every landmark at "
        "the frame centre; every landmark at its mean in-frame position over the fold's training frames "
        "(mean shape). Paper: its Table 2, as published.",
        "",
    ]
    return "\n".join(lines)


def segmentation_dice(metrics_dir: str | Path, losses: Sequence[str], folds: Sequence[int],
                      data: Any) -> dict[str, dict[str, dict[str, float]]]:
    """Per loss, Dice per bone over every test frame of every fold (from the saved label maps)."""
    result = {}
    for loss in losses:
        predicted, truth = [], []
        for fold in folds:
            maps = read_label_maps(output_paths(metrics_dir, loss, fold).segmentation)
            predicted.append(maps["labels"])
            truth.append(_true_labels(data, maps, output_paths(metrics_dir, loss, fold).segmentation))
        result[loss] = metrics.dice_summary(metrics.dice_per_bone(np.concatenate(predicted), np.concatenate(truth)))
    return result


def _true_labels(data: Any, maps: Mapping[str, np.ndarray], path: Path) -> np.ndarray:
    try:
        truth = np.stack([data.specimens[int(s)].labels[int(f)] for s, f in zip(maps["specimen"], maps["frame"])])
    except (KeyError, IndexError):
        raise DataError(f"{path}: names frames the processed data does not hold (stale evaluation?)") from None
    if truth.shape != maps["labels"].shape:
        raise DataError(f"{path}: label maps are {maps['labels'].shape[1:]}, the data's frames {truth.shape[1:]}")
    return truth


def read_training_curves(live_dir: str | Path, losses: Sequence[str], folds: Sequence[int]) -> pd.DataFrame:
    """Every dvclive metric of every (loss, fold) as tidy rows (loss, fold, metric, step, value).

    A run without dvclive logs contributes no rows (the curves are a view, not a result).
    """
    rows = []
    for loss in losses:
        for fold in folds:
            root = Path(live_dir) / loss / f"fold{fold}" / "plots" / "metrics"
            for tsv in sorted(root.rglob("*.tsv")):
                metric = tsv.relative_to(root).with_suffix("").as_posix()
                try:
                    logged = pd.read_csv(tsv, sep="\t")
                except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
                    raise DataError(f"{tsv}: not a readable dvclive metric file ({type(exc).__name__})") from None
                value_column = tsv.stem
                if "step" not in logged.columns or value_column not in logged.columns:
                    raise DataError(f"{tsv}: expected columns step and {value_column}, "
                                    f"got {', '.join(map(str, logged.columns))}")
                rows.append(pd.DataFrame({"loss": loss, "fold": fold, "metric": metric,
                                          "step": logged["step"].astype(int),
                                          "value": logged[value_column].astype(float)}))
    columns = ["loss", "fold", "metric", "step", "value"]
    return pd.concat(rows, ignore_index=True)[columns] if rows else pd.DataFrame(columns=columns)


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


# ------------------------------------------------------------------ the stage

def figure_source(dataset: Mapping[str, Any]) -> str:
    """The line every figure prints under its title: what data (synthetic or real) it shows."""
    kind = DATA_KIND_TEXT.get(dataset["kind"], dataset["kind"])
    warning = " (simulated images, not patient data)" if dataset["kind"] == "synthetic" else ""
    settings = dataset["settings"]
    return (f"Data: {kind}{warning}, {dataset['test_frames']} test frames of {len(dataset['test_specimens'])} "
            f"held-out specimens; {settings['backbone']}, {settings['epochs']} "
            f"epoch{'' if settings['epochs'] == 1 else 's'}")


def build_figures(table: pd.DataFrame, data: Any, metrics_dir: Path, params: Params, curves: pd.DataFrame,
                  baseline_table: pd.DataFrame | None = None, *, source: str = "",
                  no_presence: Sequence[str] = ()) -> dict[str, Any]:
    """Every figure of the report, by file name (plots.py draws, this function picks the frames)."""
    from silr.evaluation import plots

    losses, folds = list(params.study.losses), list(params.study.folds)
    showcase = metrics.showcase_frames(table)
    images = {s: data.specimens[s].images[f] for s, f in showcase.items()}
    shown_rows = table[[showcase.get(int(s)) == int(f) for s, f in zip(table["specimen"], table["frame"])]]
    with_baselines = table if baseline_table is None else pd.concat([table, baseline_table], ignore_index=True)
    named = [*losses, *(() if baseline_table is None else baselines.BASELINES)]
    figures = {
        "figure1.png": plots.figure1(images, shown_rows, losses, source=source, no_presence=no_presence),
        "per_specimen_errors.png": plots.per_specimen_errors(with_baselines, named, source=source),
        "cumulative_errors.png": plots.cumulative_errors(with_baselines, named, data.pixel_spacing_mm,
                                                         params.evaluate.success_mm, source=source),
        "per_landmark_errors.png": plots.per_landmark_errors(table, losses, source=source),
        "training_curves.png": plots.training_curves(curves, losses, list(CURVE_FILES), source=source),
    }

    # The segmentation figure shows the first loss of the study (the proposed one by default)
    # on the Figure 1 frames; only a loss with a segmentation term trains the masks.
    seg_loss = losses[0]
    frames_shown, truth, predicted, titles = [], [], [], []
    for fold in folds:
        maps = read_label_maps(output_paths(metrics_dir, seg_loss, fold).segmentation)
        for index, (s, f) in enumerate(zip(maps["specimen"], maps["frame"])):
            if showcase.get(int(s)) == int(f):
                frames_shown.append(data.specimens[int(s)].images[int(f)])
                truth.append(data.specimens[int(s)].labels[int(f)])
                predicted.append(maps["labels"][index])
                titles.append(f"specimen {int(s)}, frame {int(f)}")
    figures["segmentation.png"] = plots.segmentation_comparison(frames_shown, truth, predicted, titles,
                                                                metrics.loss_title(seg_loss), source=source)
    return figures


def write_plots(plots_dir: Path, table: pd.DataFrame, data: Any, metrics_dir: Path, params: Params,
                curves: pd.DataFrame, baseline_table: pd.DataFrame | None = None, *, source: str = "",
                no_presence: Sequence[str] = ()) -> None:
    """Every PNG of the report."""
    from silr.evaluation import plots

    for name, figure in build_figures(table, data, metrics_dir, params, curves, baseline_table,
                                      source=source, no_presence=no_presence).items():
        plots.save_png(figure, plots_dir / name)


def run(params: Params, *, metrics_dir: str | Path, plots_dir: str | Path, data_path: str | Path,
        live_dir: str | Path = DEFAULT_LIVE, folds_path: str | Path = DEFAULT_FOLDS) -> dict[str, Any]:
    """Build and write the summary, the details, Table 2, the per-specimen CSV and the plots; return the details."""
    from silr.data import deepfluoro
    from silr.data.splits import load_folds

    metrics_dir, plots_dir = Path(metrics_dir), Path(plots_dir)
    losses, folds = list(params.study.losses), list(params.study.folds)
    seeds = study_seeds(params)
    table = load_predictions(metrics_dir, losses, folds, seeds)
    data = deepfluoro.read_processed(data_path)
    fold_splits = load_folds(folds_path, data)
    missing = [k for k in folds if k not in fold_splits]
    if missing:
        raise DataError(f"{folds_path}: no fold(s) {missing} (study.folds asks for them)")
    # Every output or none: a blocked location fails before the first one is written.
    ensure_writable(*(metrics_dir / name for name in ("details.json", "table2.md", "per_specimen.csv")),
                    *(metrics_dir / SUMMARY_DIR / f"{name}.json"
                      for name in [*losses, *(f"baseline_{b}" for b in baselines.BASELINES)]),
                    *(metrics_dir / "curves" / name for name in CURVE_FILES.values()),
                    *(plots_dir / name for name in (*PLOT_NAMES, ROBUSTNESS_PLOT)))
    presence = presence_summary(metrics_dir, table, losses, folds, data.pixel_spacing_mm)
    no_presence = [loss for loss in losses if presence[loss]["rule"] is None]
    consistency = {loss: metrics.consistency_summary(table[table["loss"] == loss]) for loss in losses}
    result = table2_with_extras(table, losses=losses, mm_per_px=data.pixel_spacing_mm,
                                success_mm=params.evaluate.success_mm, no_presence=no_presence)
    baseline_table = baseline_predictions(data, fold_splits, folds)
    paired = pd.concat([table, with_seeds(baseline_table, sorted(table["seed"].unique()))], ignore_index=True)
    comparisons = compare(paired, [*losses, *baselines.BASELINES], REFERENCES)
    baseline_result = metrics.table2(baseline_table, losses=list(baselines.BASELINES),
                                     mm_per_px=data.pixel_spacing_mm, success_mm=params.evaluate.success_mm)
    dataset = dataset_description(data, table, params)
    summary = metrics.rounded({
        "table2": result,
        "baselines": baseline_result,
        "not_beating_mean_shape": not_beating(result, baseline_result["mean_shape"]),
        "presence": presence,
        "consistency": consistency,
        "seed_spread": seed_spread(table, losses, data.pixel_spacing_mm),
        "comparisons": comparisons,
        "robustness": robustness_of(metrics_dir, losses, folds, {
            name: baseline_result[name]["mean_px"] for name in baselines.BASELINES}),
        "segmentation_dice": segmentation_dice(metrics_dir, losses, folds, data),
        "dataset": dataset,
        "paper_table2": metrics.PAPER_TABLE2,
    })
    write_json(metrics_dir / "details.json", summary)
    compact = compact_summary(summary)
    for name, entry in compact.items():
        write_json(metrics_dir / SUMMARY_DIR / f"{name}.json", entry)
    for stale in sorted((metrics_dir / SUMMARY_DIR).glob("*.json")):
        if stale.stem not in compact:  # a loss no longer in the study
            stale.unlink()
    write_text(metrics_dir / "table2.md", table2_markdown(summary["table2"], losses, dataset, summary["baselines"])
               + "\n" + comparisons_markdown(summary["comparisons"], summary["seed_spread"])
               + "\n" + presence_markdown(summary["presence"], summary["consistency"], losses)
               + ("\n" + robustness_summary.markdown(summary["robustness"]) if summary["robustness"] else ""))
    per_specimen = metrics.per_specimen_rows({**summary["table2"], **summary["baselines"]})
    write_with(metrics_dir / "per_specimen.csv",
               lambda tmp: per_specimen.to_csv(tmp, index=False, float_format=f"%.{metrics.DECIMALS}f",
                                               lineterminator="\n"))
    curves = read_training_curves(live_dir, losses, folds)
    for metric, name in CURVE_FILES.items():
        wide = curves_wide(curves, metric, losses)
        write_with(metrics_dir / "curves" / name,
                   lambda tmp, wide=wide: wide.to_csv(tmp, index=False, float_format=f"%.{metrics.DECIMALS}f",
                                                     lineterminator="\n"))
    write_plots(plots_dir, table, data, metrics_dir, params, curves, baseline_table, source=figure_source(dataset),
                no_presence=no_presence)
    if summary["robustness"] is not None:
        from silr.evaluation import plots

        plots.save_png(plots.robustness(summary["robustness"], source=figure_source(dataset)),
                       plots_dir / ROBUSTNESS_PLOT)
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metrics", default=DEFAULT_METRICS,
                        help="metrics directory holding predictions/ and segmentation/ (default: %(default)s)")
    parser.add_argument("--out-plots", default=DEFAULT_PLOTS, help="directory for the PNGs (default: %(default)s)")
    parser.add_argument("--params", default=DEFAULT_PARAMS_FILE, help="params file (default: %(default)s)")
    parser.add_argument("--data", default=None, help="processed HDF5 file (default: data.processed in params)")
    parser.add_argument("--live", default=DEFAULT_LIVE, help="dvclive root of the training runs (default: %(default)s)")
    parser.add_argument("--folds", default=DEFAULT_FOLDS,
                        help="folds file, for the baselines' training frames (default: %(default)s)")


def main(args: argparse.Namespace) -> int:
    params = load_params(args.params)
    summary = run(params, metrics_dir=args.metrics, plots_dir=args.out_plots,
                  data_path=args.data or params.data.processed, live_dir=args.live, folds_path=args.folds)
    print(table2_markdown(summary["table2"], list(params.study.losses), summary["dataset"], summary["baselines"]))
    if summary["robustness"] is None:
        print("silr report: no robustness results (metrics/robustness/); run `dvc repro robustness` for them",
              file=sys.stderr)
    return 0
