"""The report's figures: DataFrames and arrays in, a matplotlib `Figure` out.

This module holds what every report figure shares (`save_png`, the colours, `loss_palette`,
`with_title`) and the landmark-error figures: Figure 1, per specimen, cumulative, per
landmark. The segmentation, training-curve and robustness figures are in
`silr.evaluation.extra_plots`, `silr predict`'s overlay in `silr.evaluation.overlay`.

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

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from silr.core.anatomy import LANDMARK_NAMES
from silr.core.io import atomic_path
from silr.evaluation.metrics import PAPER_TABLE2, loss_title

__all__ = [
    "ABSENT_COLOR", "BASELINE_COLORS", "CUMULATIVE_XMAX_MM", "DPI", "GROUND_TRUTH_COLOR",
    "PREDICTION_COLOR", "cumulative_errors", "figure1", "loss_palette", "per_landmark_errors",
    "per_specimen_errors", "save_png", "with_title",
]

DPI = 110
GROUND_TRUTH_COLOR = "#1fd11f"  # the paper's green dots
PREDICTION_COLOR = "#ff2020"  # the paper's red crosses
ABSENT_COLOR = "#ffd21f"  # predictions called absent: hollow yellow squares (not in the paper)
# The baselines of silr.evaluation.baselines: grey and dashed in every figure, after the losses.
BASELINE_COLORS = {"frame_centre": "#9a9a9a", "mean_shape": "#4d4d4d"}
# The cumulative error plot's axis: the clinically relevant range, whatever the worst errors.
CUMULATIVE_XMAX_MM = 20.0


def save_png(figure: Figure, path: str | Path) -> None:
    """Write `figure` as a PNG atomically (no software/date metadata, so reruns match)."""
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=DPI, metadata={"Software": None})


def loss_palette(names: Sequence[str]) -> dict[str, tuple | str]:
    """A colour per name: the losses from the colour-blind palette, the baselines their grey."""
    losses = [name for name in names if name not in BASELINE_COLORS]
    return {**dict(zip(losses, sns.color_palette("colorblind", len(losses)))),
            **{name: BASELINE_COLORS[name] for name in names if name in BASELINE_COLORS}}


def _is_baseline(name: str) -> bool:
    return name in BASELINE_COLORS


def with_title(figure: Figure, title: str, source: str) -> Figure:
    """`figure` with its title, and under it the data it shows."""
    lines = [*textwrap.wrap(title, width=100), *textwrap.wrap(source, width=100)]
    figure.suptitle("\n".join(lines), fontsize=11)
    return figure


def _in_frame_errors(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["gt_in_frame"].astype(bool)]


def _figure1_panel(ax: Axes, image: np.ndarray, rows: pd.DataFrame, loss: str,
                   no_presence: Sequence[str]) -> None:
    """One loss on one frame: the frame, its in-frame ground truth, every prediction, and under
    it the mean error and what was drawn."""
    ax.imshow(image, cmap="gray", interpolation="nearest")
    truth = rows[rows["gt_in_frame"].astype(bool)]
    present = rows["pred_present"].astype(bool) | (loss in no_presence)
    shown, absent = rows[present], rows[~present]
    ax.scatter(truth["gt_x"], truth["gt_y"], s=22, c=GROUND_TRUTH_COLOR, edgecolors="black",
               linewidths=0.4, zorder=3)
    ax.scatter(shown["pred_x"], shown["pred_y"], s=40, c=PREDICTION_COLOR, marker="x",
               linewidths=1.6, zorder=4)
    ax.scatter(absent["pred_x"], absent["pred_y"], s=34, facecolors="none",
               edgecolors=ABSENT_COLOR, marker="s", linewidths=1.4, zorder=4)
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


def _figure1_legend(figure: Figure) -> None:
    """The three markers of Figure 1, white on grey below the panels."""
    handles = [
        Line2D([], [], linestyle="none", marker="o", markersize=6,
               markerfacecolor=GROUND_TRUTH_COLOR, markeredgecolor="black",
               markeredgewidth=0.4, label="ground truth (in frame)"),
        Line2D([], [], linestyle="none", marker="x", markersize=7, color=PREDICTION_COLOR,
               markeredgewidth=1.6, label="prediction, present"),
        Line2D([], [], linestyle="none", marker="s", markersize=6, markerfacecolor="none",
               markeredgecolor=ABSENT_COLOR, markeredgewidth=1.4,
               label="prediction, absent (still scored)"),
    ]
    legend = figure.legend(handles=handles, loc="outside lower center", ncol=3, fontsize=10,
                           frameon=True, facecolor="#707070", edgecolor="none")
    for text in legend.get_texts():
        text.set_color("white")


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
        for c, loss in enumerate(losses):
            ax = axes[r, c]
            rows_here = table[(table["specimen"] == specimen) & (table["loss"] == loss)]
            _figure1_panel(ax, images[specimen], rows_here, loss, no_presence)
            if r == 0:
                ax.set_title(loss_title(loss), fontsize=13, fontweight="bold")
            if c == 0:
                frame = int(rows_here["frame"].iloc[0]) if len(rows_here) else -1
                ax.set_ylabel(f"specimen {specimen}\nframe {frame}", fontsize=11)
    _figure1_legend(figure)
    return with_title(figure, "Figure 1: predictions on one held-out frame per specimen (its frame "
                           "with the most ground-truth landmarks in view, then the lowest index; "
                           "chosen without looking at any prediction)", source)


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
    palette = loss_palette(losses)
    specimens = sorted(int(s) for s in errors["specimen"].unique())
    position = {s: i for i, s in enumerate(specimens)}
    width = 0.8 / max(1, len(losses))
    stats = _error_bar_limits(errors, losses)
    markers = dict(zip(losses, "osD^vP*X" * 2))
    for k, loss in enumerate(losses):
        mine = stats[stats["loss"] == loss]
        x = np.array([position[int(s)] for s in mine["specimen"]]) - 0.4 + width * (k + 0.5)
        axes[0].vlines(x, mine["low"], mine["high"], color=palette[loss], linewidth=1.4, zorder=2)
        axes[0].plot(x, mine["median"], "_", color=palette[loss], markersize=9,
                     markeredgewidth=1.6, zorder=3)
        axes[0].plot(x, mine["mean"], markers[loss], color=palette[loss], markersize=6,
                     linestyle="none", label=loss_title(loss), zorder=4)
    axes[0].set_title("this run: mean (marker), median (dash), interquartile range (bar)",
                      fontsize=11)
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
    figure.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center",
                  ncol=min(len(losses), 5), fontsize=10, frameon=False)
    return with_title(figure, "Mean landmark error per held-out specimen", source)


def cumulative_errors(table: pd.DataFrame, losses: Sequence[str], mm_per_px: float,
                      thresholds_mm: Sequence[float], *, source: str = "",
                      xmax_mm: float = CUMULATIVE_XMAX_MM) -> Figure:
    """Empirical cumulative distribution of the error in mm over 0..`xmax_mm`, one curve per
    loss (baselines dashed); the success thresholds as dotted lines labelled on the top axis."""
    errors = _in_frame_errors(table).assign(error_mm=lambda t: t["error_px"] * mm_per_px)
    figure = Figure(figsize=(9.0, 5.2), layout="constrained")
    ax = figure.subplots()
    palette = loss_palette(losses)
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
    figure.legend(*ax.get_legend_handles_labels(), loc="outside lower center",
                  ncol=min(len(losses), 2), fontsize=10, frameon=False)
    return with_title(figure, "Cumulative distribution of the landmark error", source)


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
                    hue_order=list(losses), palette=loss_palette(losses), fliersize=2, ax=ax)
    ax.set_xlabel("landmark", fontsize=11)
    ax.set_ylabel("Euclidean error (px, 180x180 frame)", fontsize=11)
    ax.set_ylim(bottom=0)
    ax.tick_params(axis="x", labelrotation=45, labelsize=10)
    handles, labels = ax.get_legend_handles_labels()
    ax.get_legend().remove()
    figure.legend(handles, [loss_title(label) for label in labels], loc="outside lower center",
                  ncol=min(len(labels), 5), fontsize=10, frameon=False)
    return with_title(figure, "Error per landmark (in-frame ground truth)", source)
