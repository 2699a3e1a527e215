"""`metrics/table2.md`: the report's tables as markdown, from the details (silr.evaluation.summary).

Table 2 in the paper's layout (our numbers, the baselines and the paper's side by side), the
paired differences and the spread over seeds, presence and anatomical consistency, and the
robustness section (silr.evaluation.robustness_summary.markdown) where there are results.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from silr.evaluation import robustness_summary
from silr.evaluation.metrics import PAPER_SPECIMEN_ORDER, PAPER_TABLE2, loss_title
from silr.evaluation.summary import describe_data, not_beating

__all__ = ["comparisons_markdown", "presence_markdown", "report_markdown", "table2_markdown"]

Table2 = Mapping[str, Mapping[str, Any]]  # a `table2` of the details: per name, its entry


def _cell(value: float | None, decimals: int = 2) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:.{decimals}f}"


def _table2_rows(summary_table2: Table2, names: Sequence[str],
                 paper_losses: Sequence[str]) -> list[str]:
    """The rows of Table 2: test specimen 6..1 (then any other, descending), Mean ± Std."""
    ours_specimens = {int(s) for name in names for s in summary_table2[name]["per_specimen_px"]}
    order = [s for s in PAPER_SPECIMEN_ORDER] + sorted(ours_specimens - set(PAPER_SPECIMEN_ORDER),
                                                       reverse=True)
    lines = []
    for specimen in order:
        ours = [summary_table2[name]["per_specimen_px"].get(
                    specimen, summary_table2[name]["per_specimen_px"].get(str(specimen)))
                for name in names]
        paper = [PAPER_TABLE2[name]["per_specimen_px"].get(specimen) for name in paper_losses]
        if all(v is None for v in ours) and specimen not in PAPER_SPECIMEN_ORDER:
            continue
        lines.append("| " + " | ".join([str(specimen)] + [_cell(v) for v in ours + paper]) + " |")
    mean_std = [f"{_cell(summary_table2[name]['mean_px'])} ± "
                f"{_cell(summary_table2[name]['std_px'])}" for name in names]
    mean_std += [f"{PAPER_TABLE2[name]['mean_px']:.2f} ± {PAPER_TABLE2[name]['std_px']:.2f}"
                 for name in paper_losses]
    lines.append("| Mean ± Std | " + " | ".join(mean_std) + " |")
    return lines


def _table2_notes(summary_table2: Table2, names: Sequence[str], dataset: Mapping[str, Any],
                  baseline_table2: Table2) -> list[str]:
    """Under Table 2: ours in mm, the losses not beating the mean shape, what the numbers cover."""
    mm = ", ".join(f"{loss_title(name)} {_cell(summary_table2[name]['mean_mm'])} ± "
                   f"{_cell(summary_table2[name]['std_mm'])} mm" for name in names)
    lines = ["", f"Ours in mm: {mm}."]
    if "mean_shape" in baseline_table2:
        trained = [name for name in names if name not in baseline_table2]
        weak = not_beating({name: summary_table2[name] for name in trained},
                           baseline_table2["mean_shape"])
        bar = _cell(baseline_table2["mean_shape"]["mean_px"])
        lines += ["", (f"**Not better than the mean-shape baseline ({bar} px): "
                       f"{', '.join(loss_title(name) for name in weak)}.**" if weak else
                       f"Every loss beats the mean-shape baseline ({bar} px).")]
    first = summary_table2[names[0]]
    covered = (f"{len(first['folds'])} fold(s), {len(first.get('seeds', [0]))} training seed(s) "
               f"({', '.join(map(str, first.get('seeds', [0])))}), "
               f"{first.get('frames', 0)} test frames")
    lines += [
        "",
        f"Covers {covered}. Mean ± Std are over the per-specimen means (population std, ddof = 0; "
        "– for a single specimen, whose spread is undefined); with several seeds each specimen's "
        "mean pools them. – marks a specimen whose fold was not evaluated. Errors are measured in "
        "the 180x180 (8x) frame over ground-truth landmarks inside the frame. mm are at the "
        "detector plane (its pixel spacing times the downsampling: "
        f"{dataset['mm_per_px']:g} mm per pixel); anatomy at the isocentre is smaller by the "
        "C-arm's magnification (1.13 to 1.46 over the synthetic phantom's poses). Baselines: every "
        "landmark at the frame centre; every landmark at its mean in-frame position over the "
        "fold's training frames (mean shape). Paper: its Table 2, as published.",
        "",
    ]
    return lines


def table2_markdown(summary_table2: Table2, losses: Sequence[str], dataset: Mapping[str, Any],
                    baseline_table2: Table2 | None = None) -> str:
    """The paper's Table 2 layout (rows: test specimen 6..1, then Mean ± Std) with ours, the
    trivial baselines and the paper's."""
    baseline_table2 = dict(baseline_table2 or {})
    summary_table2 = {**summary_table2, **baseline_table2}
    paper_losses = [loss for loss in losses if loss in PAPER_TABLE2]
    names = [*losses, *baseline_table2]
    header = (["Test specimen"]
              + [loss_title(name) if name in baseline_table2 else f"{loss_title(name)} (ours)"
                 for name in names]
              + [f"{loss_title(name)} (paper)" for name in paper_losses])
    lines = [
        "# Table 2: Euclidean distance error (pixels) per held-out test specimen",
        "",
        describe_data(dataset),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
        *_table2_rows(summary_table2, names, paper_losses),
        *_table2_notes(summary_table2, names, dataset, baseline_table2),
    ]
    return "\n".join(lines)


def comparisons_markdown(comparisons: Mapping[str, Mapping[str, Any]],
                         spread: Mapping[str, Any]) -> str:
    """The paired differences with their bootstrap intervals, and the spread over training seeds."""
    lines = ["## Paired differences (hierarchical bootstrap)", "",
             "| Loss | against | Mean difference (px) | 95% interval (px) | Order flips in |",
             "|---|---|---:|---:|---:|"]
    for reference, rows in comparisons.items():
        for loss, result in rows.items():
            interval = f"[{result['ci_low_px']:+.2f}, {result['ci_high_px']:+.2f}]"
            lines.append(f"| {loss_title(loss)} | {loss_title(reference)} | "
                         f"{result['mean_difference_px']:+.2f} | {interval} | "
                         f"{100 * result['flip_share']:.1f}% of draws |")
    draws = next((r["draws"] for rows in comparisons.values() for r in rows.values()), 0)
    lines += ["", "Difference of Table-2 means (loss minus the reference; negative: the loss is "
              "better) on the same landmarks. The interval is the 2.5-97.5 percentile range over "
              f"{draws} draws of a two-level bootstrap: the test specimens with replacement, then "
              "each drawn specimen's frames with replacement; training seeds are pooled. 'Order "
              "flips in' is the share of draws whose difference has the other sign "
              "(silr.evaluation.comparisons).", "",
              "## Spread over training seeds", "",
              "| Loss | Seeds | Table-2 mean per seed (px) | Mean | Std |",
              "|---|---|---|---:|---:|"]
    for loss, entry in spread.items():
        lines.append(f"| {loss_title(loss)} | {', '.join(map(str, entry['seeds']))} | "
                     f"{' / '.join(_cell(v) for v in entry['mean_px'])} | "
                     f"{_cell(entry['mean_over_seeds_px'])} | "
                     f"{_cell(entry['std_over_seeds_px'])} |")
    lines += ["", "Std over seeds: the sample std (ddof = 1) of the per-seed Table-2 means; – for "
              "a single seed (add seeds with `dvc exp run -S 'study.seeds=[1,2]'`).", ""]
    return "\n".join(lines)


PRESENCE_COLUMNS = ("absent_f1", "absent_precision", "absent_recall", "balanced_accuracy", "auroc",
                    "ece", "mean_px_called_present", "mean_px_in_frame", "detection_f1")
CONSISTENCY_COLUMNS = ("outside_own_bone_rate", "gt_outside_own_bone_rate",
                       "mean_px_bone_restricted", "mean_px_same_landmarks")


def presence_markdown(presence: Mapping[str, Mapping[str, Any]],
                      consistency: Mapping[str, Mapping[str, Any]], losses: Sequence[str]) -> str:
    """The presence table (every loss x applicable rule) and the anatomical-consistency table."""
    lines = ["## Presence: is the landmark in the frame?", "",
             "| Loss | Rule | Absent F1 | Absent precision | Absent recall | Balanced accuracy | "
             "AUROC | ECE | Error if called present (px) | Error, all in frame (px) | "
             "Detection F1 (4 mm) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for loss in losses:
        entry = presence[loss]
        for rule, values in entry["by_rule"].items():
            marker = " (in force)" if rule == entry["rule"] else ""
            lines.append(f"| {loss_title(loss)} | {rule}{marker} | "
                         + " | ".join(_cell(values[k]) for k in PRESENCE_COLUMNS) + " |")
    lines += ["", "Absent class: the landmark's true position is outside the 180x180 frame. "
              "threshold: max sigmoid(H) >= 0.5 (the paper's reading; max H for MSE); template: "
              "the data set authors' rule (argmax on the landmark's own predicted bone, NCC of its "
              "window with a Gaussian >= 0.9; without a trained segmentation the window at the "
              "frame argmax); learned: the presence output the loss trains (its probability; "
              "Platt-calibrated on the validation frames only with heatmap.calibrate: true); "
              "shape: the fold's shape prior (a point-distribution model of its training shapes) "
              "fitted to the landmarks the learned rule (template without one) calls present, a "
              "landmark present when its fitted position is in the frame, scored by the base "
              "rule's score. ECE (10 bins) only for probabilities; – where a rule or value does "
              "not apply.", "",
              "## Anatomical consistency", "",
              "| Loss | Off own bone | Off own bone, ground truth | "
              "Error, argmax on own bone (px) | Error, frame argmax, same landmarks (px) |",
              "|---|---:|---:|---:|---:|"]
    for loss in losses:
        cells = [consistency[loss][k] for k in CONSISTENCY_COLUMNS]
        lines.append(f"| {loss_title(loss)} | " + " | ".join(_cell(v, 3) for v in cells[:2])
                     + " | " + " | ".join(_cell(v) for v in cells[2:]) + " |")
    lines += ["", "Off own bone: share of in-frame landmarks whose predicted pixel is not labelled "
              "as the landmark's own bone in the ground-truth labels (femur for FH, hemipelvis "
              "for the rest). The ground-truth row is the floor the labels allow. The argmax on "
              "the own bone is the authors' location (restricted to the predicted bone), scored on "
              "the landmarks that have such a pixel.", ""]
    return "\n".join(lines)


def report_markdown(details: Mapping[str, Any], losses: Sequence[str]) -> str:
    """All of `metrics/table2.md`: Table 2, the comparisons and seeds, presence and consistency,
    and robustness where the details hold it."""
    return (table2_markdown(details["table2"], losses, details["dataset"], details["baselines"])
            + "\n" + comparisons_markdown(details["comparisons"], details["seed_spread"])
            + "\n" + presence_markdown(details["presence"], details["consistency"], losses)
            + ("\n" + robustness_summary.markdown(details["robustness"])
               if details["robustness"] else ""))
