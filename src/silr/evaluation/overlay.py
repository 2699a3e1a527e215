"""`silr predict`'s overlay: one input frame with its label map and landmarks, a `Figure` out.

Drawn in the input's own pixels at its own aspect (a huge input on a reduced display grid);
`silr.stages.predict` saves it. Bones are tinted with `silr.core.anatomy.LABEL_COLORS`, the
one bone palette.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.patheffects import withStroke

from silr.core.anatomy import LABEL_COLORS, LABEL_NAMES, LANDMARK_BONE

__all__ = [
    "LABEL_CANDIDATES", "OVERLAY_DPI", "OVERLAY_MAX_INCHES", "OVERLAY_MIN_INCHES", "display_grid",
    "label_offsets", "overlay_display", "prediction_overlay",
]

OVERLAY_MIN_INCHES = 6.0  # the longer side of the overlay's image, so that names stay legible
OVERLAY_MAX_INCHES = 14.0  # ... and no more for huge frames (aspect kept)
OVERLAY_DPI = 100
# Where a landmark's name may go, in points from its marker (x right, y up), in order of preference.
LABEL_CANDIDATES = ((7, 0), (-7, 0), (7, 10), (-7, 10), (7, -10), (-7, -10), (7, 20), (-7, 20),
                    (7, -20), (-7, -20), (7, 30), (-7, 30), (7, -30), (-7, -30))
OVERLAY_OUTSIDE_COLOR = "#ff9f1c"  # landmarks decoded outside the image: orange triangles
OVERLAY_ABSENT_COLOR = "#9a9a9a"  # landmarks called absent: grey crosses


def overlay_display(image: np.ndarray) -> np.ndarray:
    """The input shown in grey: its 0.5th..99.5th percentiles stretched to [0, 1]."""
    image = np.asarray(image, dtype=np.float64)
    low, high = np.percentile(image, [0.5, 99.5]) if image.size else (0.0, 1.0)
    if high <= low:
        low, high = float(image.min()), float(image.max())
    return np.clip((image - low) / (high - low), 0, 1) if high > low else np.zeros_like(image)


def label_offsets(anchors_pt: np.ndarray, texts: Sequence[str], font: float, width_pt: float,
                  marker_pt: float = 6.0) -> list[tuple[float, float]]:
    """A text offset (points) per anchor (x, y in points from the image's top left, y down) such
    that no label's box overlaps another label or any marker where one of LABEL_CANDIDATES
    allows it: greedy, in input order; names in the right part of the image look left first
    (they stay inside the figure); a label with no free place takes the least overlapping one."""
    r = marker_pt / 2 + 1
    placed: list[tuple[float, float, float, float]] = [(x - r, y - r, x + r, y + r)
                                                       for x, y in anchors_pt]
    result = []
    for (ax, ay), text in zip(anchors_pt, texts):
        w, h = 0.6 * font * len(text), 1.2 * font  # a bold sans-serif glyph is about 0.6 em wide
        inward = -1 if ax > 0.6 * width_pt else 1
        candidates = sorted(LABEL_CANDIDATES, key=lambda c: (abs(c[1]), c[0] * inward < 0))

        def box(dx: float, dy: float, ax: float = ax, ay: float = ay, w: float = w,
                h: float = h) -> tuple[float, float, float, float]:
            left = ax + dx if dx >= 0 else ax + dx - w
            top = ay - dy - h / 2  # offsets point up, anchors grow down
            return left, top, left + w, top + h

        def overlap(b: tuple[float, float, float, float]) -> float:
            return sum(max(0.0, min(b[2], o[2]) - max(b[0], o[0]))
                       * max(0.0, min(b[3], o[3]) - max(b[1], o[1])) for o in placed)

        best = min(candidates, key=lambda c: (overlap(box(*c)) > 0, overlap(box(*c)),
                                              candidates.index(c)))
        placed.append(box(*best))
        result.append(best)
    return result


def display_grid(image: np.ndarray, labels: np.ndarray,
                 limit_px: int) -> tuple[np.ndarray, np.ndarray, int]:
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


def _overlay_axes(image_w: float, image_h: float, legend_rows: int) -> tuple[Figure, Axes]:
    """The figure and the image's axes: `image_w` x `image_h` inches, centred, with room for the
    title above and the legend (`legend_rows` rows) below."""
    top, bottom = 0.75, 0.3 + 0.25 * legend_rows  # inches for the title and the legend (3 columns)
    figure = Figure(figsize=(max(image_w, 5.0), image_h + top + bottom), dpi=OVERLAY_DPI)
    fig_w, fig_h = figure.get_size_inches()
    axes = figure.add_axes(((fig_w - image_w) / 2 / fig_w, bottom / fig_h, image_w / fig_w,
                            image_h / fig_h))
    return figure, axes


def _draw_frame(axes: Axes, image: np.ndarray, labels: np.ndarray, limit_px: int) -> None:
    """The input in grey and the label map as a tint of the bone palette, on the display grid."""
    shown_image, shown_labels, k = display_grid(image, labels, limit_px)
    # extent keeps the axes in input pixels whatever the display grid
    extent = (-0.5, shown_image.shape[1] * k - 0.5, shown_image.shape[0] * k - 0.5, -0.5)
    axes.imshow(overlay_display(shown_image), cmap="gray", vmin=0, vmax=1, interpolation="nearest",
                extent=extent)
    tint = np.zeros(shown_labels.shape + (4,), dtype=np.float32)
    for value in LABEL_NAMES:
        if value:
            tint[shown_labels == value] = (*to_rgb(LABEL_COLORS[value]), 0.35)
    axes.imshow(tint, interpolation="nearest", extent=extent)


def _draw_landmarks(axes: Axes, xy: np.ndarray, present: np.ndarray, in_image: np.ndarray,
                    names: Sequence[str], image_size: tuple[int, int], scale: float,
                    ring: float) -> None:
    """Every landmark's marker and name (`scale`: figure inches per input pixel)."""
    width, height = image_size
    font = 9
    outline = [withStroke(linewidth=2.2, foreground="black")]
    texts = [f"{name} (outside)" if not in_image[i] else name if present[i] else f"{name} (absent)"
             for i, name in enumerate(names)]
    anchors = np.column_stack([np.clip(xy[:, 0], 0, width - 1), np.clip(xy[:, 1], 0, height - 1)])
    offsets = label_offsets(anchors * (72.0 * scale), texts, font, width * 72.0 * scale,
                            ring)  # px -> pt
    for i, name in enumerate(names):
        x, y = float(anchors[i, 0]), float(anchors[i, 1])
        dx, dy = offsets[i]
        place = {"xytext": (dx, dy), "textcoords": "offset points",
                 "ha": "left" if dx >= 0 else "right", "va": "center", "fontsize": font,
                 "path_effects": outline, "annotation_clip": False}
        if not in_image[i]:
            axes.plot(x, y, marker="^", markersize=ring, color=OVERLAY_OUTSIDE_COLOR,
                      markeredgecolor="black", clip_on=False)
            axes.annotate(texts[i], (x, y), color=OVERLAY_OUTSIDE_COLOR, **place)
        elif present[i]:
            axes.plot(x, y, marker="o", markersize=ring, markerfacecolor="none",
                      markeredgecolor=LABEL_COLORS[LANDMARK_BONE[name]], markeredgewidth=2)
            axes.plot(x, y, marker="+", markersize=ring * 0.6, color="white")
            axes.annotate(texts[i], (x, y), color="white", fontweight="bold", **place)
        else:
            axes.plot(x, y, marker="x", markersize=ring * 0.8, color=OVERLAY_ABSENT_COLOR,
                      markeredgewidth=1.5)
            axes.annotate(texts[i], (x, y), color="#c8c8c8", fontstyle="italic", **place)


def _overlay_legend(figure: Figure, bones: Sequence[int]) -> None:
    """The markers and the bones in view, below the image."""
    handles = [Line2D([], [], marker="o", linestyle="", markerfacecolor="none",
                      markeredgecolor="white", markeredgewidth=2,
                      label="present (ring: bone colour)"),
               Line2D([], [], marker="x", linestyle="", color=OVERLAY_ABSENT_COLOR,
                      label="absent (argmax shown)"),
               Line2D([], [], marker="^", linestyle="", color=OVERLAY_OUTSIDE_COLOR,
                      label="decoded outside the image")]
    handles += [Patch(color=LABEL_COLORS[v], alpha=0.6, label=LABEL_NAMES[v]) for v in bones]
    legend = figure.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=True,
                           facecolor="#202020", labelcolor="white", bbox_to_anchor=(0.5, 0.0))
    legend.get_frame().set_alpha(0.9)


def prediction_overlay(image: np.ndarray, labels: np.ndarray, xy: np.ndarray, present: np.ndarray,
                       in_image: np.ndarray, names: Sequence[str], *, title: str,
                       subtitle: str = "") -> Figure:
    """`silr predict`'s overlay, in the input's own pixels: the input image in grey at its own
    aspect, the label map (on the input grid) as a tint of the bone palette, and every landmark:
    present ones as rings in their bone's colour with their names, absent ones as grey crosses
    with "(absent)", those decoded outside the image as orange triangles on the border with
    "(outside)"; a legend of markers and bones below the image."""
    height, width = image.shape
    inches = float(np.clip(max(width, height) / OVERLAY_DPI, OVERLAY_MIN_INCHES,
                           OVERLAY_MAX_INCHES))
    scale = inches / max(width, height)
    shown = [value for value in LABEL_NAMES if value and (labels == value).any()]
    figure, axes = _overlay_axes(width * scale, height * scale,
                                 legend_rows=-(-(3 + len(shown)) // 3))
    _draw_frame(axes, image, labels, int(inches * OVERLAY_DPI))
    ring = max(6.0, 0.012 * inches * OVERLAY_DPI)
    _draw_landmarks(axes, xy, present, in_image, names, (width, height), scale, ring)
    axes.set_xlim(-0.5, width - 0.5)
    axes.set_ylim(height - 0.5, -0.5)
    axes.set_axis_off()
    _overlay_legend(figure, shown)
    fig_h = figure.get_size_inches()[1]
    present_count = int(np.sum(np.asarray(present) & np.asarray(in_image)))
    figure.suptitle(f"{title}: {present_count}/{len(names)} landmarks present "
                    f"({width} x {height} px)", fontsize=10, y=1 - 0.12 / fig_h, va="top")
    if subtitle:
        figure.text(0.5, 1 - 0.42 / fig_h, subtitle, ha="center", va="top", fontsize=8,
                    color="#333333")
    return figure
