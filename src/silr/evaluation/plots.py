"""The report's figures: DataFrames and arrays in, a matplotlib `Figure` out.

Figures are built on `matplotlib.figure.Figure` directly (no pyplot state, no display
needed); `save_png` writes one atomically through `silr.core.io`. Sizes and fonts are chosen
so that every figure reads at 100 % zoom. Every report figure takes `source`, one line
saying what data it shows (the synthetic phantom or the DeepFluoro set), and prints it
under its title; bones are coloured with `silr.core.anatomy.LABEL_COLORS` only, the trivial
baselines in grey and dashed.
"""

from __future__ import annotations

import textwrap
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from silr.core.anatomy import LABEL_COLORS, LABEL_NAMES, LANDMARK_NAMES, NUM_CLASSES
from silr.core.io import atomic_path
from silr.evaluation.metrics import PAPER_TABLE2, dice_per_bone, loss_title

DPI = 110
GROUND_TRUTH_COLOR = "#1fd11f"  # the paper's green dots
PREDICTION_COLOR = "#ff2020"  # the paper's red crosses
ABSENT_COLOR = "#ffd21f"  # predictions called absent: hollow yellow squares (not in the paper)
# The baselines of silr.evaluation.baselines: grey and dashed in every figure, after the losses.
BASELINE_COLORS = {"frame_centre": "#9a9a9a", "mean_shape": "#4d4d4d"}
# The cumulative error plot's axis: the clinically relevant range, whatever the worst errors.
CUMULATIVE_XMAX_MM = 20.0
# How the dvclive metrics of the training curves read on an axis.
METRIC_TITLES = {"train/loss": "training loss\n(each loss its own scale)",
                 "val/error_px": "validation error (px)"}
LABEL_CMAP = ListedColormap(LABEL_COLORS[:NUM_CLASSES])
LABEL_NORM = BoundaryNorm(np.arange(NUM_CLASSES + 1) - 0.5, NUM_CLASSES)


def save_png(figure: Figure, path: str | Path) -> None:
    """Write `figure` as a PNG atomically (no software/date metadata, so reruns match)."""
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=DPI, metadata={"Software": None})


def _palette(names: Sequence[str]) -> dict[str, tuple | str]:
    losses = [name for name in names if name not in BASELINE_COLORS]
    return {**dict(zip(losses, sns.color_palette("colorblind", len(losses)))),
            **{name: BASELINE_COLORS[name] for name in names if name in BASELINE_COLORS}}


def _is_baseline(name: str) -> bool:
    return name in BASELINE_COLORS


def _titled(figure: Figure, title: str, source: str) -> Figure:
    """The figure's title, and under it the data it shows."""
    lines = [*textwrap.wrap(title, width=100), *textwrap.wrap(source, width=100)]
    figure.suptitle("\n".join(lines), fontsize=11)
    return figure


def _in_frame_errors(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["gt_in_frame"].astype(bool)]


def figure1(images: Mapping[int, np.ndarray], table: pd.DataFrame, losses: Sequence[str], *,
            source: str = "", no_presence: Sequence[str] = ()) -> Figure:
    """The paper's Figure 1: one row per specimen's frame, one column per loss.

    `images`: specimen -> (H, W) frame shown; `table`: predictions rows of exactly those
    frames (all losses). Ground truth inside the frame as green dots; every prediction is
    drawn: landmarks predicted present as red crosses, landmarks predicted absent (still
    scored at their decoded position) as hollow yellow squares. For the losses in
    `no_presence` (heatmaps without a presence rule, e.g. NCC) every prediction is a cross and
    the panel says that presence is not defined.
    """
    specimens = sorted(images)
    rows, cols = len(specimens), len(losses)
    figure = Figure(figsize=(3.2 * cols, 3.4 * rows + 1.2), layout="constrained")
    axes = np.asarray(figure.subplots(rows, cols, squeeze=False))
    for r, specimen in enumerate(specimens):
        image = images[specimen]
        for c, loss in enumerate(losses):
            ax = axes[r, c]
            ax.imshow(image, cmap="gray", interpolation="nearest")
            rows_here = table[(table["specimen"] == specimen) & (table["loss"] == loss)]
            truth = rows_here[rows_here["gt_in_frame"].astype(bool)]
            present = rows_here["pred_present"].astype(bool) | (loss in no_presence)
            shown, absent = rows_here[present], rows_here[~present]
            ax.scatter(truth["gt_x"], truth["gt_y"], s=22, c=GROUND_TRUTH_COLOR, edgecolors="black",
                       linewidths=0.4, zorder=3)
            ax.scatter(shown["pred_x"], shown["pred_y"], s=40, c=PREDICTION_COLOR, marker="x",
                       linewidths=1.6, zorder=4)
            ax.scatter(absent["pred_x"], absent["pred_y"], s=34, facecolors="none", edgecolors=ABSENT_COLOR,
                       marker="s", linewidths=1.4, zorder=4)
            ax.set_xlim(-0.5, image.shape[1] - 0.5)
            ax.set_ylim(image.shape[0] - 0.5, -0.5)
            ax.set_xticks([])
            ax.set_yticks([])
            error = truth["error_px"].mean()
            text = (f"mean error {error:.1f} px ({len(truth)} in frame)" if np.isfinite(error)
                    else "no landmark in frame")
            if loss in no_presence:
                text += "\npresence not defined: all drawn"
            elif len(absent):
                text += f"\n{len(absent)} predicted absent"
            ax.set_xlabel(text, fontsize=10)
            if r == 0:
                ax.set_title(loss_title(loss), fontsize=13, fontweight="bold")
            if c == 0:
                frame = int(rows_here["frame"].iloc[0]) if len(rows_here) else -1
                ax.set_ylabel(f"specimen {specimen}\nframe {frame}", fontsize=11)
    handles = [
        Line2D([], [], linestyle="none", marker="o", markersize=6, markerfacecolor=GROUND_TRUTH_COLOR,
               markeredgecolor="black", markeredgewidth=0.4, label="ground truth (in frame)"),
        Line2D([], [], linestyle="none", marker="x", markersize=7, color=PREDICTION_COLOR, markeredgewidth=1.6,
               label="prediction, present"),
        Line2D([], [], linestyle="none", marker="s", markersize=6, markerfacecolor="none",
               markeredgecolor=ABSENT_COLOR, markeredgewidth=1.4, label="prediction, absent (still scored)"),
    ]
    legend = figure.legend(handles=handles, loc="outside lower center", ncol=3, fontsize=10, frameon=True,
                           facecolor="#707070", edgecolor="none")
    for text in legend.get_texts():
        text.set_color("white")
    return _titled(figure, "Figure 1: predictions on one held-out frame per specimen (its frame with the "
                           "most ground-truth landmarks in view, then the lowest index; chosen without "
                           "looking at any prediction)", source)


def _error_bar_limits(errors: pd.DataFrame, names: Sequence[str]) -> pd.DataFrame:
    """Per (loss, specimen) over in-frame landmarks: mean, median and the interquartile range
    (`low` = 25th, `high` = 75th percentile). Landmark errors are skewed (most small, a few far
    off), so quartiles describe them where a mean ± SD bar would cross zero or reach far."""
    chosen = errors[errors["loss"].isin(names)].groupby(["loss", "specimen"])["error_px"]
    return chosen.agg(mean="mean", median="median", low=lambda v: float(np.percentile(v, 25)),
                      high=lambda v: float(np.percentile(v, 75))).reset_index()


def per_specimen_errors(table: pd.DataFrame, losses: Sequence[str], *, source: str = "") -> Figure:
    """Mean error per test specimen and loss (the numbers of Table 2) as points, the median as a
    dash and the interquartile range over the specimen's in-frame landmarks as a bar; the paper's
    Table 2 beside it where the loss is one of the paper's. Baselines grey."""
    errors = _in_frame_errors(table)
    paper_losses = [loss for loss in losses if loss in PAPER_TABLE2]
    figure = Figure(figsize=(12.5 if paper_losses else 8, 5.2), layout="constrained")
    axes = figure.subplots(1, 2 if paper_losses else 1, squeeze=False, sharey=True)[0]
    palette = _palette(losses)
    specimens = sorted(int(s) for s in errors["specimen"].unique())
    position = {s: i for i, s in enumerate(specimens)}
    width = 0.8 / max(1, len(losses))
    stats = _error_bar_limits(errors, losses)
    markers = dict(zip(losses, "osD^vP*X" * 2))
    for k, loss in enumerate(losses):
        mine = stats[stats["loss"] == loss]
        x = np.array([position[int(s)] for s in mine["specimen"]]) - 0.4 + width * (k + 0.5)
        axes[0].vlines(x, mine["low"], mine["high"], color=palette[loss], linewidth=1.4, zorder=2)
        axes[0].plot(x, mine["median"], "_", color=palette[loss], markersize=9, markeredgewidth=1.6, zorder=3)
        axes[0].plot(x, mine["mean"], markers[loss], color=palette[loss], markersize=6, linestyle="none",
                     label=loss_title(loss), zorder=4)
    axes[0].set_title("this run: mean (marker), median (dash), interquartile range (bar)", fontsize=11)
    axes[0].set_ylabel("Euclidean error (px, 180x180 frame)", fontsize=11)
    if paper_losses:
        paper_specimens = sorted(set(specimens) | {int(s) for loss in paper_losses
                                                   for s in PAPER_TABLE2[loss]["per_specimen_px"]})
        paper_position = {s: i for i, s in enumerate(paper_specimens)}
        for loss in paper_losses:
            k = list(losses).index(loss)
            values = PAPER_TABLE2[loss]["per_specimen_px"]
            x = np.array([paper_position[int(s)] for s in values]) - 0.4 + width * (k + 0.5)
            axes[1].plot(x, list(values.values()), markers[loss], color=palette[loss], markersize=6,
                         linestyle="none", zorder=3)
        axes[1].set_title("paper, Table 2 (means only)", fontsize=11)
        axes[1].set_xticks(range(len(paper_specimens)), [str(s) for s in paper_specimens])
        axes[1].set_xlim(-0.6, len(paper_specimens) - 0.4)
    axes[0].set_xticks(range(len(specimens)), [str(s) for s in specimens])
    axes[0].set_xlim(-0.6, len(specimens) - 0.4)
    for ax in axes:
        ax.set_xlabel("held-out test specimen", fontsize=11)
        ax.set_ylim(bottom=0)
        ax.grid(axis="y", alpha=0.3)
        for boundary in range(1, len(ax.get_xticks())):
            ax.axvline(boundary - 0.5, color="#dddddd", linewidth=0.8, zorder=0)
    figure.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=min(len(losses), 5),
                  fontsize=10, frameon=False)
    return _titled(figure, "Mean landmark error per held-out specimen", source)


def cumulative_errors(table: pd.DataFrame, losses: Sequence[str], mm_per_px: float,
                      thresholds_mm: Sequence[float], *, source: str = "",
                      xmax_mm: float = CUMULATIVE_XMAX_MM) -> Figure:
    """Empirical cumulative distribution of the error in mm over 0..`xmax_mm`, one curve per
    loss (baselines dashed); the success thresholds as dotted lines labelled on the top axis."""
    errors = _in_frame_errors(table).assign(error_mm=lambda t: t["error_px"] * mm_per_px)
    figure = Figure(figsize=(9.0, 5.2), layout="constrained")
    ax = figure.subplots()
    palette = _palette(losses)
    for loss in losses:
        values = np.sort(errors.loc[errors["loss"] == loss, "error_mm"].dropna().to_numpy())
        if not len(values):
            continue
        inside = float((values <= xmax_mm).mean())
        fraction = np.arange(1, len(values) + 1) / len(values)
        ax.step(np.concatenate([[0.0], values]), np.concatenate([[0.0], fraction]), where="post",
                color=palette[loss], linewidth=1.6 if _is_baseline(loss) else 2.2,
                linestyle="--" if _is_baseline(loss) else "-",
                label=f"{loss_title(loss)} ({inside:.0%} ≤ {xmax_mm:g} mm)")
    shown = [t for t in sorted(thresholds_mm) if 0 < t <= xmax_mm]
    for threshold in shown:
        ax.axvline(threshold, color="black", linestyle=":", linewidth=1)
    # Threshold labels on the top axis, one per line; a label closer than 6 % of the axis to
    # the previous one is left out (its line stays), so labels never print over each other.
    labelled: list[float] = []
    for threshold in shown:
        if not labelled or threshold - labelled[-1] >= 0.06 * xmax_mm:
            labelled.append(threshold)
    top = ax.secondary_xaxis("top")
    top.set_xticks(labelled, [f"{t:g}" for t in labelled])
    top.set_xlabel("success thresholds (mm, dotted)", fontsize=10)
    ax.set_xlim(0, xmax_mm)
    ax.set_ylim(0, 1.0)
    ax.set_xlabel(f"Euclidean error (mm), axis cut at {xmax_mm:g} mm", fontsize=11)
    ax.set_ylabel("fraction of in-frame landmarks with error ≤ x", fontsize=11)
    ax.grid(alpha=0.3)
    figure.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=min(len(losses), 2),
                  fontsize=10, frameon=False)
    return _titled(figure, "Cumulative distribution of the landmark error", source)


def per_landmark_errors(table: pd.DataFrame, losses: Sequence[str], *, source: str = "") -> Figure:
    """Box plots of the error per landmark (canonical order), one box per loss."""
    errors = _in_frame_errors(table)
    figure = Figure(figsize=(max(11.0, 0.34 * len(LANDMARK_NAMES) * max(1, len(losses))), 5.4),
                    layout="constrained")
    ax = figure.subplots()
    with warnings.catch_warnings():
        # seaborn 0.13 passes matplotlib 3.11 a deprecated `vert` argument; nothing to act on here.
        warnings.filterwarnings("ignore", message=".*vert: bool was deprecated.*")
        sns.boxplot(data=errors, x="landmark", y="error_px", hue="loss", order=list(LANDMARK_NAMES),
                    hue_order=list(losses), palette=_palette(losses), fliersize=2, ax=ax)
    ax.set_xlabel("landmark", fontsize=11)
    ax.set_ylabel("Euclidean error (px, 180x180 frame)", fontsize=11)
    ax.set_ylim(bottom=0)
    ax.tick_params(axis="x", labelrotation=45, labelsize=10)
    handles, labels = ax.get_legend_handles_labels()
    ax.get_legend().remove()
    figure.legend(handles, [loss_title(label) for label in labels], loc="outside lower center",
                  ncol=min(len(labels), 5), fontsize=10, frameon=False)
    return _titled(figure, "Error per landmark (in-frame ground truth)", source)


def segmentation_comparison(images: Sequence[np.ndarray], true_labels: Sequence[np.ndarray],
                            predicted_labels: Sequence[np.ndarray], titles: Sequence[str],
                            model_name: str, *, source: str = "") -> Figure:
    """Rows of (frame, ground-truth labels, predicted labels) with a legend of the bones; under
    each prediction its mean Dice over the bones in either map (silr.evaluation.metrics.dice_per_bone)."""

    rows = len(images)
    figure = Figure(figsize=(9.6, 3.2 * rows + 1.4), layout="constrained")
    axes = np.asarray(figure.subplots(rows, 3, squeeze=False))
    for r in range(rows):
        panels = ((images[r], "frame", "gray", None), (true_labels[r], "ground truth", LABEL_CMAP, LABEL_NORM),
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
        dice = dice_per_bone(np.asarray(predicted_labels[r])[None], np.asarray(true_labels[r])[None])[0]
        shown = dice[np.isfinite(dice)]
        axes[r, 2].set_xlabel(f"mean Dice {shown.mean():.3f} over {shown.size} bones" if shown.size
                              else "no bone in either map", fontsize=10)
    legend = [Patch(color=LABEL_COLORS[value], label=name) for value, name in LABEL_NAMES.items() if value]
    figure.legend(handles=legend, loc="outside lower center", ncol=3, fontsize=10, frameon=False)
    return _titled(figure, "Bone segmentation of the Figure 1 frames", source)


def training_curves(curves: pd.DataFrame, losses: Sequence[str], metric_names: Sequence[str], *,
                    source: str = "") -> Figure:
    """One column per loss, one row per dvclive metric (each loss's training loss on its own
    scale; the validation error on one scale for all): a thin line per fold, a thick one for
    the mean over folds, against the epoch (dvclive's step + 1), integer ticks."""
    columns = max(1, len(losses))
    figure = Figure(figsize=(4.2 * columns + 0.6, 3.0 * len(metric_names) + 1.0), layout="constrained")
    axes = np.asarray(figure.subplots(len(metric_names), columns, squeeze=False, sharex=True))
    for r, metric in enumerate(metric_names):
        rows = curves[curves["metric"] == metric]
        shared = axes[r, 0] if metric.startswith("val/") else None
        for c, loss in enumerate(losses):
            ax = axes[r, c]
            if shared is not None and c:
                ax.sharey(shared)
            color = _palette(losses)[loss]
            mine = rows[rows["loss"] == loss]
            for _, fold_rows in mine.groupby("fold"):
                ax.plot(fold_rows["step"] + 1, fold_rows["value"], color=color, alpha=0.35, linewidth=1)
            mean = mine.groupby("step")["value"].mean()
            if len(mean):
                ax.plot(mean.index + 1, mean.to_numpy(), color=color, linewidth=2.2)
            else:
                ax.text(0.5, 0.5, "no dvclive logs", ha="center", va="center", transform=ax.transAxes,
                        fontsize=11)
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
    return _titled(figure, "Training curves", source)


OVERLAY_MIN_INCHES = 6.0  # the longer side of the overlay's image, so that names stay legible
OVERLAY_MAX_INCHES = 14.0  # ... and no more for huge frames (aspect kept)
OVERLAY_DPI = 100


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
    palette = _palette(losses)
    baselines = summary.get("_baselines_px", {})
    for ax, panel in zip(axes, panels):
        for loss in losses:
            entry = summary[loss]
            steps = entry["mean_over_types_px"] if panel == "mean over types" else entry["error_px"][panel]
            severities = [0, *map(int, steps)]
            ax.plot(severities, [entry["clean_px"], *steps.values()], "o-", color=palette[loss], markersize=3.5,
                    linewidth=1.5, label=loss_title(loss))
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
    return _titled(figure, "Robustness: held-out specimens under fluoroscopy's corruptions "
                           "(mean over specimens)", source)


def overlay_display(image: np.ndarray) -> np.ndarray:
    """The input shown in grey: its 0.5th..99.5th percentiles stretched to [0, 1]."""
    image = np.asarray(image, dtype=np.float64)
    low, high = np.percentile(image, [0.5, 99.5]) if image.size else (0.0, 1.0)
    if high <= low:
        low, high = float(image.min()), float(image.max())
    return np.clip((image - low) / (high - low), 0, 1) if high > low else np.zeros_like(image)


# Where a landmark's name may go, in points from its marker (x right, y up), in order of preference.
LABEL_CANDIDATES = ((7, 0), (-7, 0), (7, 10), (-7, 10), (7, -10), (-7, -10), (7, 20), (-7, 20),
                    (7, -20), (-7, -20), (7, 30), (-7, 30), (7, -30), (-7, -30))


def label_offsets(anchors_pt: np.ndarray, texts: Sequence[str], font: float, width_pt: float,
                  marker_pt: float = 6.0) -> list[tuple[float, float]]:
    """A text offset (points) per anchor (x, y in points from the image's top left, y down) such
    that no label's box overlaps another label or any marker where one of LABEL_CANDIDATES
    allows it: greedy, in input order; names in the right part of the image look left first
    (they stay inside the figure); a label with no free place takes the least overlapping one."""
    r = marker_pt / 2 + 1
    placed: list[tuple[float, float, float, float]] = [(x - r, y - r, x + r, y + r) for x, y in anchors_pt]
    result = []
    for (ax, ay), text in zip(anchors_pt, texts):
        w, h = 0.6 * font * len(text), 1.2 * font  # a bold sans-serif glyph is about 0.6 em wide
        inward = -1 if ax > 0.6 * width_pt else 1
        candidates = sorted(LABEL_CANDIDATES, key=lambda c: (abs(c[1]), c[0] * inward < 0))

        def box(dx: float, dy: float, ax: float = ax, ay: float = ay, w: float = w, h: float = h):
            left = ax + dx if dx >= 0 else ax + dx - w
            top = ay - dy - h / 2  # offsets point up, anchors grow down
            return left, top, left + w, top + h

        def overlap(b: tuple[float, float, float, float]) -> float:
            return sum(max(0.0, min(b[2], o[2]) - max(b[0], o[0])) * max(0.0, min(b[3], o[3]) - max(b[1], o[1]))
                       for o in placed)

        best = min(candidates, key=lambda c: (overlap(box(*c)) > 0, overlap(box(*c)), candidates.index(c)))
        placed.append(box(*best))
        result.append(best)
    return result


def display_grid(image: np.ndarray, labels: np.ndarray, limit_px: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The image (block mean) and label map (nearest) reduced by a whole factor k so that their
    longer side is at most `limit_px`, and k: the overlay never draws more pixels than its own
    image holds (an 8000 x 8000 input drawn whole costs gigabytes in matplotlib's float64 and
    RGBA copies). The rim of fewer than k input pixels that does not fill a block is dropped."""
    height, width = image.shape
    k = max(1, -(-max(height, width) // limit_px))
    if k == 1:
        return image, labels, 1
    rows, cols = height // k, width // k
    blocks = np.asarray(image[:rows * k, :cols * k], dtype=np.float32).reshape(rows, k, cols, k)
    reduced = blocks.mean(axis=(1, 3), dtype=np.float32)
    return reduced, labels[k // 2::k, k // 2::k][:rows, :cols], k


def prediction_overlay(image: np.ndarray, labels: np.ndarray, xy: np.ndarray, present: np.ndarray,
                       in_image: np.ndarray, names: Sequence[str], *, title: str, subtitle: str = "") -> Figure:
    """`silr predict`'s overlay, in the input's own pixels: the input image in grey at its own
    aspect, the label map (on the input grid) as a tint of the bone palette, and every landmark:
    present ones as rings in their bone's colour with their names, absent ones as grey crosses
    with "(absent)", those decoded outside the image as orange triangles on the border with
    "(outside)"; a legend of markers and bones below the image."""
    from matplotlib.colors import to_rgb
    from matplotlib.lines import Line2D
    from matplotlib.patheffects import withStroke

    from silr.core.anatomy import LANDMARK_BONE

    height, width = image.shape
    inches = float(np.clip(max(width, height) / OVERLAY_DPI, OVERLAY_MIN_INCHES, OVERLAY_MAX_INCHES))
    scale = inches / max(width, height)
    image_w, image_h = width * scale, height * scale
    shown = [value for value in LABEL_NAMES if value and (labels == value).any()]
    legend_rows = -(-(3 + len(shown)) // 3)
    top, bottom = 0.75, 0.3 + 0.25 * legend_rows  # inches for the title and the legend (3 columns)
    figure = Figure(figsize=(max(image_w, 5.0), image_h + top + bottom), dpi=OVERLAY_DPI)
    fig_w, fig_h = figure.get_size_inches()
    axes = figure.add_axes(((fig_w - image_w) / 2 / fig_w, bottom / fig_h, image_w / fig_w, image_h / fig_h))
    shown_image, shown_labels, k = display_grid(image, labels, int(inches * OVERLAY_DPI))
    # extent keeps the axes in input pixels whatever the display grid
    extent = (-0.5, shown_image.shape[1] * k - 0.5, shown_image.shape[0] * k - 0.5, -0.5)
    axes.imshow(overlay_display(shown_image), cmap="gray", vmin=0, vmax=1, interpolation="nearest",
                extent=extent)
    tint = np.zeros(shown_labels.shape + (4,), dtype=np.float32)
    for value in LABEL_NAMES:
        if value:
            tint[shown_labels == value] = (*to_rgb(LABEL_COLORS[value]), 0.35)
    axes.imshow(tint, interpolation="nearest", extent=extent)
    font = 9
    ring = max(6.0, 0.012 * inches * OVERLAY_DPI)
    outline = [withStroke(linewidth=2.2, foreground="black")]
    texts = [f"{name} (outside)" if not in_image[i] else name if present[i] else f"{name} (absent)"
             for i, name in enumerate(names)]
    anchors = np.column_stack([np.clip(xy[:, 0], 0, width - 1), np.clip(xy[:, 1], 0, height - 1)])
    offsets = label_offsets(anchors * (72.0 * scale), texts, font, width * 72.0 * scale, ring)  # px -> pt
    for i, name in enumerate(names):
        x, y = float(anchors[i, 0]), float(anchors[i, 1])
        dx, dy = offsets[i]
        place = {"xytext": (dx, dy), "textcoords": "offset points", "ha": "left" if dx >= 0 else "right",
                 "va": "center", "fontsize": font, "path_effects": outline, "annotation_clip": False}
        if not in_image[i]:
            axes.plot(x, y, marker="^", markersize=ring, color="#ff9f1c", markeredgecolor="black", clip_on=False)
            axes.annotate(texts[i], (x, y), color="#ff9f1c", **place)
        elif present[i]:
            axes.plot(x, y, marker="o", markersize=ring, markerfacecolor="none",
                      markeredgecolor=LABEL_COLORS[LANDMARK_BONE[name]], markeredgewidth=2)
            axes.plot(x, y, marker="+", markersize=ring * 0.6, color="white")
            axes.annotate(texts[i], (x, y), color="white", fontweight="bold", **place)
        else:
            axes.plot(x, y, marker="x", markersize=ring * 0.8, color="#9a9a9a", markeredgewidth=1.5)
            axes.annotate(texts[i], (x, y), color="#c8c8c8", fontstyle="italic", **place)
    axes.set_xlim(-0.5, width - 0.5)
    axes.set_ylim(height - 0.5, -0.5)
    axes.set_axis_off()
    handles = [Line2D([], [], marker="o", linestyle="", markerfacecolor="none", markeredgecolor="white",
                      markeredgewidth=2, label="present (ring: bone colour)"),
               Line2D([], [], marker="x", linestyle="", color="#9a9a9a", label="absent (argmax shown)"),
               Line2D([], [], marker="^", linestyle="", color="#ff9f1c", label="decoded outside the image")]
    handles += [Patch(color=LABEL_COLORS[v], alpha=0.6, label=LABEL_NAMES[v]) for v in shown]
    legend = figure.legend(handles=handles, loc="lower center", ncol=3, fontsize=8,
                           frameon=True, facecolor="#202020", labelcolor="white", bbox_to_anchor=(0.5, 0.0))
    legend.get_frame().set_alpha(0.9)
    present_count = int(np.sum(np.asarray(present) & np.asarray(in_image)))
    figure.suptitle(f"{title}: {present_count}/{len(names)} landmarks present ({width} x {height} px)",
                    fontsize=10, y=1 - 0.12 / fig_h, va="top")
    if subtitle:
        figure.text(0.5, 1 - 0.42 / fig_h, subtitle, ha="center", va="top", fontsize=8, color="#333333")
    return figure
