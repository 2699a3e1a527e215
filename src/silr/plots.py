"""The report's figures: DataFrames and arrays in, a matplotlib `Figure` out.

Figures are built on `matplotlib.figure.Figure` directly (no pyplot state, no display
needed); `save_png` writes one atomically through `silr.io`. Sizes and fonts are chosen
so that every figure reads at 100 % zoom.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from silr.anatomy import LABEL_COLORS, LABEL_NAMES, LANDMARK_NAMES, NUM_CLASSES
from silr.io import atomic_path
from silr.metrics import PAPER_TABLE2, loss_title

DPI = 110
GROUND_TRUTH_COLOR = "#1fd11f"  # the paper's green dots
PREDICTION_COLOR = "#ff2020"  # the paper's red crosses
LABEL_CMAP = ListedColormap(LABEL_COLORS[:NUM_CLASSES])
LABEL_NORM = BoundaryNorm(np.arange(NUM_CLASSES + 1) - 0.5, NUM_CLASSES)


def save_png(figure: Figure, path: str | Path) -> None:
    """Write `figure` as a PNG atomically (no software/date metadata, so reruns match)."""
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=DPI, metadata={"Software": None})


def _palette(losses: Sequence[str]) -> dict[str, tuple]:
    return dict(zip(losses, sns.color_palette("colorblind", len(losses))))


def _in_frame_errors(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["gt_in_frame"].astype(bool)]


def figure1(images: Mapping[int, np.ndarray], table: pd.DataFrame, losses: Sequence[str]) -> Figure:
    """The paper's Figure 1: one row per specimen's frame, one column per loss.

    `images`: specimen -> (H, W) frame shown; `table`: predictions rows of exactly those
    frames (all losses). Ground truth inside the frame as green dots, landmarks predicted
    present as red crosses.
    """
    specimens = sorted(images)
    rows, cols = len(specimens), len(losses)
    figure = Figure(figsize=(3.2 * cols, 3.4 * rows + 0.6), layout="constrained")
    axes = np.asarray(figure.subplots(rows, cols, squeeze=False))
    for r, specimen in enumerate(specimens):
        image = images[specimen]
        for c, loss in enumerate(losses):
            ax = axes[r, c]
            ax.imshow(image, cmap="gray", interpolation="nearest")
            rows_here = table[(table["specimen"] == specimen) & (table["loss"] == loss)]
            truth = rows_here[rows_here["gt_in_frame"].astype(bool)]
            shown = rows_here[rows_here["pred_present"].astype(bool)]
            ax.scatter(truth["gt_x"], truth["gt_y"], s=22, c=GROUND_TRUTH_COLOR, edgecolors="black",
                       linewidths=0.4, label="ground truth", zorder=3)
            ax.scatter(shown["pred_x"], shown["pred_y"], s=40, c=PREDICTION_COLOR, marker="x",
                       linewidths=1.6, label="prediction", zorder=4)
            ax.set_xlim(-0.5, image.shape[1] - 0.5)
            ax.set_ylim(image.shape[0] - 0.5, -0.5)
            ax.set_xticks([])
            ax.set_yticks([])
            error = truth["error_px"].mean()
            ax.set_xlabel(f"mean error {error:.1f} px" if np.isfinite(error) else "no landmark in frame",
                          fontsize=10)
            if r == 0:
                ax.set_title(loss_title(loss), fontsize=13, fontweight="bold")
            if c == 0:
                frame = int(rows_here["frame"].iloc[0]) if len(rows_here) else -1
                ax.set_ylabel(f"specimen {specimen}\nframe {frame}", fontsize=11)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncol=2, fontsize=10, frameon=False)
    return figure


def per_specimen_errors(table: pd.DataFrame, losses: Sequence[str]) -> Figure:
    """Mean error per test specimen and loss (bars = Table 2), SD over landmarks as error bars;
    the paper's Table 2 beside it where the loss is one of the paper's."""
    errors = _in_frame_errors(table)
    paper_losses = [loss for loss in losses if loss in PAPER_TABLE2]
    figure = Figure(figsize=(12 if paper_losses else 7, 4.8), layout="constrained")
    axes = figure.subplots(1, 2 if paper_losses else 1, squeeze=False, sharey=True)[0]
    palette = _palette(losses)
    sns.barplot(data=errors, x="specimen", y="error_px", hue="loss", hue_order=list(losses), palette=palette,
                errorbar="sd", capsize=0.15, err_kws={"linewidth": 1.2}, ax=axes[0])
    axes[0].set_title("this run: mean +- SD over in-frame landmarks", fontsize=12)
    axes[0].set_xlabel("test specimen", fontsize=11)
    axes[0].set_ylabel("Euclidean error (px, 180x180 frame)", fontsize=11)
    if paper_losses:
        paper = pd.DataFrame([{"loss": loss, "specimen": specimen, "error_px": value}
                              for loss in paper_losses
                              for specimen, value in PAPER_TABLE2[loss]["per_specimen_px"].items()])
        sns.barplot(data=paper, x="specimen", y="error_px", hue="loss", hue_order=paper_losses,
                    palette=palette, ax=axes[1])
        axes[1].set_title("paper, Table 2", fontsize=12)
        axes[1].set_xlabel("test specimen", fontsize=11)
    for ax in axes:
        handles, labels = ax.get_legend_handles_labels()
        ax.legend(handles, [loss_title(label) for label in labels], fontsize=10)
    return figure


def cumulative_errors(table: pd.DataFrame, losses: Sequence[str], mm_per_px: float,
                      thresholds_mm: Sequence[float]) -> Figure:
    """Empirical cumulative distribution of the error in mm, one curve per loss."""
    errors = _in_frame_errors(table).assign(error_mm=lambda t: t["error_px"] * mm_per_px)
    figure = Figure(figsize=(7.5, 5), layout="constrained")
    ax = figure.subplots()
    palette = _palette(losses)
    for loss in losses:
        values = errors.loc[errors["loss"] == loss, "error_mm"].dropna()
        if len(values):
            sns.ecdfplot(x=values, ax=ax, color=palette[loss], linewidth=2, label=loss_title(loss))
    for threshold in thresholds_mm:
        ax.axvline(threshold, color="grey", linestyle=":", linewidth=1)
        ax.text(threshold, 0.02, f" {threshold:g} mm", color="grey", fontsize=9)
    # Linear axis up to the 99th percentile: the interesting part is the small errors.
    finite = errors["error_mm"].dropna()
    upper = max(max(thresholds_mm, default=1.0) * 1.25, float(finite.quantile(0.99)) if len(finite) else 0.0)
    ax.set_xlim(0, upper)
    ax.set_xlabel("Euclidean error (mm)", fontsize=11)
    ax.set_ylabel("fraction of in-frame landmarks", fontsize=11)
    ax.set_ylim(0, 1.01)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=10)
    ax.set_title("cumulative error distribution", fontsize=12)
    return figure


def per_landmark_errors(table: pd.DataFrame, losses: Sequence[str]) -> Figure:
    """Box plots of the error per landmark (canonical order), one box per loss."""
    errors = _in_frame_errors(table)
    figure = Figure(figsize=(max(10.0, 1.0 * len(LANDMARK_NAMES) * max(1, len(losses)) / 2), 5),
                    layout="constrained")
    ax = figure.subplots()
    with warnings.catch_warnings():
        # seaborn 0.13 passes matplotlib 3.11 a deprecated `vert` argument; nothing to act on here.
        warnings.filterwarnings("ignore", message=".*vert: bool was deprecated.*")
        sns.boxplot(data=errors, x="landmark", y="error_px", hue="loss", order=list(LANDMARK_NAMES),
                    hue_order=list(losses), palette=_palette(losses), fliersize=2, ax=ax)
    ax.set_xlabel("landmark", fontsize=11)
    ax.set_ylabel("Euclidean error (px)", fontsize=11)
    ax.tick_params(axis="x", labelrotation=45, labelsize=10)
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles, [loss_title(label) for label in labels], fontsize=10)
    ax.set_title("error per landmark (in-frame ground truth)", fontsize=12)
    return figure


def segmentation_comparison(images: Sequence[np.ndarray], true_labels: Sequence[np.ndarray],
                            predicted_labels: Sequence[np.ndarray], titles: Sequence[str],
                            model_name: str) -> Figure:
    """Rows of (frame, ground-truth labels, predicted labels) with a legend of the bones."""
    rows = len(images)
    figure = Figure(figsize=(9.6, 3.2 * rows + 0.8), layout="constrained")
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
    legend = [Patch(color=LABEL_COLORS[value], label=name) for value, name in LABEL_NAMES.items() if value]
    figure.legend(handles=legend, loc="outside lower center", ncol=3, fontsize=10, frameon=False)
    return figure


def training_curves(curves: pd.DataFrame, losses: Sequence[str], metric_names: Sequence[str]) -> Figure:
    """One panel per dvclive metric: a thin line per fold, a thick one for the mean over folds."""
    figure = Figure(figsize=(6.0 * len(metric_names), 4.6), layout="constrained")
    axes = figure.subplots(1, len(metric_names), squeeze=False)[0]
    palette = _palette(losses)
    for ax, metric in zip(axes, metric_names):
        rows = curves[curves["metric"] == metric]
        for loss in losses:
            mine = rows[rows["loss"] == loss]
            for _, fold_rows in mine.groupby("fold"):
                ax.plot(fold_rows["step"], fold_rows["value"], color=palette[loss], alpha=0.3, linewidth=1)
            mean = mine.groupby("step")["value"].mean()
            if len(mean):
                ax.plot(mean.index, mean.to_numpy(), color=palette[loss], linewidth=2.2, marker="o",
                        markersize=3, label=loss_title(loss))
        if rows.empty:
            ax.text(0.5, 0.5, "no dvclive logs", ha="center", va="center", transform=ax.transAxes, fontsize=12)
        ax.set_title(metric, fontsize=12)
        ax.set_xlabel("step (epoch)", fontsize=11)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=10)
    return figure


OVERLAY_MIN_INCHES = 6.0  # the longer side of the overlay's image, so that names stay legible
OVERLAY_MAX_INCHES = 14.0  # ... and no more for huge frames (aspect kept)
OVERLAY_DPI = 100


def overlay_display(image: np.ndarray) -> np.ndarray:
    """The input shown in grey: its 0.5th..99.5th percentiles stretched to [0, 1]."""
    image = np.asarray(image, dtype=np.float64)
    low, high = np.percentile(image, [0.5, 99.5]) if image.size else (0.0, 1.0)
    if high <= low:
        low, high = float(image.min()), float(image.max())
    return np.clip((image - low) / (high - low), 0, 1) if high > low else np.zeros_like(image)


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

    from silr.anatomy import LANDMARK_BONE

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
    axes.imshow(overlay_display(image), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    tint = np.zeros(labels.shape + (4,), dtype=np.float32)
    for value in LABEL_NAMES:
        if value:
            tint[labels == value] = (*to_rgb(LABEL_COLORS[value]), 0.35)
    axes.imshow(tint, interpolation="nearest")
    font = 9
    ring = max(6.0, 0.012 * inches * OVERLAY_DPI)
    outline = [withStroke(linewidth=2.2, foreground="black")]
    for i, name in enumerate(names):
        x, y = float(xy[i, 0]), float(xy[i, 1])
        left = x > 0.75 * width  # names near the right border are written to the left of the marker
        side = {"xytext": (-6 if left else 6, -6), "ha": "right" if left else "left"}
        if not in_image[i]:
            bx, by = float(np.clip(x, 0, width - 1)), float(np.clip(y, 0, height - 1))
            axes.plot(bx, by, marker="^", markersize=ring, color="#ff9f1c", markeredgecolor="black", clip_on=False)
            axes.annotate(f"{name} (outside)", (bx, by), xytext=(side["xytext"][0], 6), ha=side["ha"],
                          textcoords="offset points",
                          color="#ff9f1c", fontsize=font, path_effects=outline, annotation_clip=False)
        elif present[i]:
            axes.plot(x, y, marker="o", markersize=ring, markerfacecolor="none",
                      markeredgecolor=LABEL_COLORS[LANDMARK_BONE[name]], markeredgewidth=2)
            axes.plot(x, y, marker="+", markersize=ring * 0.6, color="white")
            axes.annotate(name, (x, y), **side, textcoords="offset points", color="white",
                          fontsize=font, fontweight="bold", path_effects=outline)
        else:
            axes.plot(x, y, marker="x", markersize=ring * 0.8, color="#9a9a9a", markeredgewidth=1.5)
            axes.annotate(f"{name} (absent)", (x, y), **side, textcoords="offset points",
                          color="#c8c8c8", fontsize=font, fontstyle="italic", path_effects=outline)
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
