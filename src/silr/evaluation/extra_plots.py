"""The report's figures beside the landmark errors: segmentation, training curves, robustness.

The conventions of `silr.evaluation.plots` hold here too (a `Figure` out, `source` under the
title, the bone palette `silr.core.anatomy.LABEL_COLORS`, baselines grey and dashed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from silr.core.anatomy import LABEL_COLORS, LABEL_NAMES, NUM_CLASSES
from silr.evaluation.dice import dice_per_bone
from silr.evaluation.metrics import loss_title
from silr.evaluation.plots import loss_palette, with_title

__all__ = ["LABEL_CMAP", "LABEL_NORM", "METRIC_TITLES", "robustness", "segmentation_comparison",
           "training_curves"]

# How the dvclive metrics of the training curves read on an axis.
METRIC_TITLES = {"train/loss": "training loss\n(each loss its own scale)",
                 "val/error_px": "validation error (px)"}
LABEL_CMAP = ListedColormap(LABEL_COLORS[:NUM_CLASSES])
LABEL_NORM = BoundaryNorm(np.arange(NUM_CLASSES + 1) - 0.5, NUM_CLASSES)


def segmentation_comparison(images: Sequence[np.ndarray], true_labels: Sequence[np.ndarray],
                            predicted_labels: Sequence[np.ndarray], titles: Sequence[str],
                            model_name: str, *, source: str = "") -> Figure:
    """Rows of (frame, ground-truth labels, predicted labels) with a legend of the bones; under
    each prediction its mean Dice over the bones in either map
    (silr.evaluation.dice.dice_per_bone)."""
    rows = len(images)
    figure = Figure(figsize=(9.6, 3.2 * rows + 1.4), layout="constrained")
    axes = np.asarray(figure.subplots(rows, 3, squeeze=False))
    for r in range(rows):
        panels = ((images[r], "frame", "gray", None),
                  (true_labels[r], "ground truth", LABEL_CMAP, LABEL_NORM),
                  (predicted_labels[r], f"predicted ({model_name})", LABEL_CMAP, LABEL_NORM))
        for c, (array, name, cmap, norm) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(array, cmap=cmap, norm=norm, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=12)
            if c == 0:
                ax.set_ylabel(titles[r], fontsize=11)
        dice = dice_per_bone(np.asarray(predicted_labels[r])[None],
                             np.asarray(true_labels[r])[None])[0]
        shown = dice[np.isfinite(dice)]
        axes[r, 2].set_xlabel(f"mean Dice {shown.mean():.3f} over {shown.size} bones" if shown.size
                              else "no bone in either map", fontsize=10)
    legend = [Patch(color=LABEL_COLORS[value], label=name)
              for value, name in LABEL_NAMES.items() if value]
    figure.legend(handles=legend, loc="outside lower center", ncol=3, fontsize=10, frameon=False)
    return with_title(figure, "Bone segmentation of the Figure 1 frames", source)


def training_curves(curves: pd.DataFrame, losses: Sequence[str], metric_names: Sequence[str], *,
                    source: str = "") -> Figure:
    """One column per loss, one row per dvclive metric (each loss's training loss on its own
    scale; the validation error on one scale for all): a thin line per fold, a thick one for
    the mean over folds, against the epoch (dvclive's step + 1), integer ticks."""
    columns = max(1, len(losses))
    figure = Figure(figsize=(4.2 * columns + 0.6, 3.0 * len(metric_names) + 1.0),
                    layout="constrained")
    axes = np.asarray(figure.subplots(len(metric_names), columns, squeeze=False, sharex=True))
    for r, metric in enumerate(metric_names):
        rows = curves[curves["metric"] == metric]
        shared = axes[r, 0] if metric.startswith("val/") else None
        for c, loss in enumerate(losses):
            ax = axes[r, c]
            if shared is not None and c:
                ax.sharey(shared)
            color = loss_palette(losses)[loss]
            mine = rows[rows["loss"] == loss]
            for _, fold_rows in mine.groupby("fold"):
                ax.plot(fold_rows["step"] + 1, fold_rows["value"], color=color, alpha=0.35,
                        linewidth=1)
            mean = mine.groupby("step")["value"].mean()
            if len(mean):
                ax.plot(mean.index + 1, mean.to_numpy(), color=color, linewidth=2.2)
            else:
                ax.text(0.5, 0.5, "no dvclive logs", ha="center", va="center",
                        transform=ax.transAxes, fontsize=11)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if len(curves):
                ax.set_xlim(1, max(2, int(curves["step"].max()) + 1))
            ax.grid(alpha=0.3)
            if r == 0:
                ax.set_title(loss_title(loss), fontsize=12, fontweight="bold")
            if c == 0:
                ax.set_ylabel(METRIC_TITLES.get(metric, metric), fontsize=11)
            if r == len(metric_names) - 1:
                ax.set_xlabel("epoch", fontsize=11)
    figure.legend(handles=[Line2D([], [], color="black", alpha=0.35, linewidth=1, label="one fold"),
                           Line2D([], [], color="black", linewidth=2.2, label="mean over folds")],
                  loc="outside lower center", ncol=2, fontsize=10, frameon=False)
    return with_title(figure, "Training curves", source)


def robustness(summary: Mapping[str, Any], *, source: str = "") -> Figure:
    """Error against severity, one panel per corruption (and their mean), one line per loss; the
    trivial baselines (which never look at the frame) as dashed horizontal lines."""
    losses = [name for name in summary if not name.startswith("_")]
    names = list(summary[losses[0]]["error_px"])
    panels = [*names, "mean over types"]
    columns = 4
    rows = -(-len(panels) // columns)
    figure = Figure(figsize=(3.3 * columns, 2.9 * rows + 1.0), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False, sharex=True, sharey=True).ravel()
    palette = loss_palette(losses)
    baselines = summary.get("_baselines_px", {})
    for ax, panel in zip(axes, panels):
        for loss in losses:
            entry = summary[loss]
            steps = (entry["mean_over_types_px"] if panel == "mean over types"
                     else entry["error_px"][panel])
            severities = [0, *map(int, steps)]
            ax.plot(severities, [entry["clean_px"], *steps.values()], "o-", color=palette[loss],
                    markersize=3.5, linewidth=1.5, label=loss_title(loss))
        for k, (name, value) in enumerate(baselines.items()):
            ax.axhline(value, color="#555555", linestyle=("--", ":")[k % 2], linewidth=1.0,
                       label=loss_title(name))
        ax.set_title(panel.replace("_", " "), fontsize=10)
        ax.grid(alpha=0.3)
        ax.set_xticks(range(6))
    for ax in axes[len(panels):]:
        ax.set_axis_off()
    for ax in axes[::columns]:
        ax.set_ylabel("mean error (px)", fontsize=10)
    for ax in axes[:len(panels)][-columns:]:
        ax.set_xlabel("severity (0 = clean)", fontsize=10)
    axes[0].set_ylim(bottom=0)
    figure.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center",
                  ncol=min(len(losses) + len(baselines), 6), fontsize=9, frameon=False)
    return with_title(figure, "Robustness: held-out specimens under fluoroscopy's corruptions "
                           "(mean over specimens)", source)
