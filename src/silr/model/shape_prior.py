"""The shape prior of the `shape` presence rule: where the pelvis's landmarks lie relative to
each other, learned from a fold's training frames.

A landmark is present when its true position lies inside the frame (the data set's own
definition), and the pelvis is nearly rigid: from the landmarks a frame clearly shows, a
statistical shape model says where the others are, past the border included. The model is
a point-distribution model (Cootes et al., active shape models): the training shapes with
their centroid removed, their mean, and the principal modes that explain
`SHAPE_VARIANCE_SHARE` of their variance. To decode one frame it is fitted, with a Gaussian
prior on each mode (variance of the mode over the training shapes) and a localisation noise
of `SHAPE_NOISE_PX`, to the decoded positions of the landmarks the base rule calls present
(the anchors); anchors farther than `SHAPE_OUTLIER_PX` from the fit are dropped and the fit is
repeated `SHAPE_REFITS` times. A landmark is then called present when its fitted position lies
in the frame. A frame with fewer than `SHAPE_MIN_ANCHORS` anchors shows too little of the
pelvis to fit: there the base rule's decision stands (an unlike frame, whose landmarks the
learned presence calls absent, stays absent).

The constants were chosen on the six folds of the phantom, with the other settings of the
issue's candidates (benchmarks/results/shape_presence.txt): 95% is the usual share of an
active shape model; 2 px is about the median localisation error; 10 px drops a landmark whose
peak went to another structure.

All positions are frame pixels (x = column, y = row; silr.core.coords).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "SHAPE_MIN_ANCHORS", "SHAPE_NOISE_PX", "SHAPE_OUTLIER_PX", "SHAPE_REFITS",
    "SHAPE_VARIANCE_SHARE", "ShapePrior",
]

SHAPE_VARIANCE_SHARE = 0.95
SHAPE_NOISE_PX = 2.0
SHAPE_OUTLIER_PX = 10.0
SHAPE_REFITS = 2
SHAPE_MIN_ANCHORS = 3
# A stored prior is read from a checkpoint: bound what a hostile card may declare.
_MAX_LANDMARKS = 1024
_MAX_ABS_PX = 1e6


@dataclass(frozen=True)
class ShapePrior:
    """mean_xy: (L, 2) mean centred shape; modes: (K, 2L) orthonormal rows (x0, y0, x1, ...);
    variances: (K,) variance of each mode's coefficient over the training shapes."""

    mean_xy: tuple[tuple[float, float], ...]
    modes: tuple[tuple[float, ...], ...]
    variances: tuple[float, ...]

    @property
    def num_landmarks(self) -> int:
        return len(self.mean_xy)

    @classmethod
    def fit(cls, landmarks_xy: np.ndarray,
            variance_share: float = SHAPE_VARIANCE_SHARE) -> ShapePrior:
        """The prior of (N, L, 2) training shapes (every landmark's true position, inside the
        frame or not); ValueError for fewer than two shapes or a non-finite position."""
        shapes = np.asarray(landmarks_xy, dtype=np.float64)
        if shapes.ndim != 3 or shapes.shape[-1] != 2 or len(shapes) < 2:
            raise ValueError(f"shape prior: expected (N >= 2, L, 2) landmark positions, got "
                             f"{shapes.shape}")
        if not np.isfinite(shapes).all():
            raise ValueError("shape prior: the training positions must all be finite")
        if not 0.0 < variance_share <= 1.0:
            raise ValueError(f"shape prior: variance share must be in (0, 1], got "
                             f"{variance_share!r}")
        centred = shapes - shapes.mean(axis=1, keepdims=True)
        mean = centred.mean(axis=0)
        deviations = (centred - mean).reshape(len(shapes), -1)
        _, singular, rows = np.linalg.svd(deviations, full_matrices=False)
        variance = singular ** 2 / len(shapes)
        total = variance.sum()
        count = 0 if total <= 0 else int(np.searchsorted(np.cumsum(variance) / total,
                                                         variance_share - 1e-12) + 1)
        # Modes of (numerically) zero variance say nothing and would make the prior singular.
        count = min(count, int((variance > 1e-9 * max(total, 1e-300)).sum()))
        return cls(mean_xy=tuple((float(x), float(y)) for x, y in mean),
                   modes=tuple(tuple(float(v) for v in row) for row in rows[:count]),
                   variances=tuple(float(v) for v in variance[:count]))

    # ------------------------------------------------------------------ stored form

    def to_dict(self) -> dict[str, Any]:
        return {"mean_xy": [list(p) for p in self.mean_xy], "modes": [list(m) for m in self.modes],
                "variances": list(self.variances)}

    @classmethod
    def read(cls, value: Any) -> ShapePrior:
        """The stored form, checked (ValueError/TypeError naming what is wrong)."""
        if not isinstance(value, Mapping) or set(value) != {"mean_xy", "modes", "variances"}:
            raise ValueError("expected a mapping with mean_xy, modes and variances")
        mean = _finite_rows(value["mean_xy"], "mean_xy", width=2)
        if not 1 <= len(mean) <= _MAX_LANDMARKS:
            raise ValueError(f"mean_xy must hold 1..{_MAX_LANDMARKS} positions, got {len(mean)}")
        modes = _finite_rows(value["modes"], "modes", width=2 * len(mean))
        variances = _finite_rows([value["variances"]], "variances", width=len(modes))[0]
        if len(modes) > 2 * len(mean) or any(v <= 0 for v in variances):
            raise ValueError("modes must be at most 2L with positive variances")
        return cls(mean_xy=tuple((p[0], p[1]) for p in mean), modes=tuple(modes),
                   variances=tuple(variances))

    # ------------------------------------------------------------------ use

    def in_frame(self, xy: np.ndarray, anchors: np.ndarray,
                 frame: tuple[int, int]) -> np.ndarray:
        """(B, L) bool: whether each landmark's fitted position lies in the (H, W) frame, from
        the decoded positions `xy` (B, L, 2, frame pixels) of the `anchors` (B, L) bool (the
        landmarks the base rule calls present); a frame with too few anchors keeps `anchors`."""
        xy = np.asarray(xy, dtype=np.float64)
        anchors = np.asarray(anchors, dtype=bool)
        if xy.shape != (*anchors.shape, 2) or anchors.shape[-1] != self.num_landmarks:
            raise ValueError(f"shape prior of {self.num_landmarks} landmarks: expected xy "
                             f"(B, {self.num_landmarks}, 2) and anchors (B, {self.num_landmarks}),"
                             f" got {xy.shape} and {anchors.shape}")
        height, width = frame
        present = anchors.copy()
        for index in range(len(xy)):
            fitted = self.fit_frame(xy[index], anchors[index])
            if fitted is not None:
                present[index] = ((fitted[:, 0] >= -0.5) & (fitted[:, 0] < width - 0.5)
                                  & (fitted[:, 1] >= -0.5) & (fitted[:, 1] < height - 0.5))
        return present

    def fit_frame(self, xy: np.ndarray, anchors: np.ndarray) -> np.ndarray | None:
        """(L, 2) fitted positions of one frame, or None with fewer than SHAPE_MIN_ANCHORS
        finite anchors."""
        anchors = anchors & np.isfinite(xy).all(axis=-1)
        if anchors.sum() < SHAPE_MIN_ANCHORS:
            return None
        mean = np.asarray(self.mean_xy, dtype=np.float64)
        # Columns: translation (x, y), then the modes; rows: x0, y0, x1, y1, ...
        design = np.hstack([np.tile(np.eye(2), (self.num_landmarks, 1)),
                            np.asarray(self.modes, dtype=np.float64).reshape(-1, 2 * len(mean)).T])
        # The prior: no cost on translation, (noise / sd of the mode)^2 on each mode.
        prior = np.diag(np.r_[0.0, 0.0, SHAPE_NOISE_PX ** 2 / np.asarray(self.variances)])
        offsets = (xy - mean).reshape(-1)
        used = anchors
        fitted = None
        for _ in range(SHAPE_REFITS + 1):
            rows = np.repeat(used, 2)
            a, b = design[rows], offsets[rows]
            coefficients = np.linalg.solve(a.T @ a + prior + 1e-9 * np.eye(len(prior)), a.T @ b)
            fitted = (mean.reshape(-1) + design @ coefficients).reshape(-1, 2)
            kept = anchors & (np.linalg.norm(fitted - xy, axis=-1) < SHAPE_OUTLIER_PX)
            if kept.sum() < SHAPE_MIN_ANCHORS or (kept == used).all():
                break
            used = kept
        return fitted


def _finite_rows(value: Any, name: str, *, width: int) -> list[tuple[float, ...]]:
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be a list")
    if len(value) > 2 * _MAX_LANDMARKS:
        raise ValueError(f"{name} holds {len(value)} rows, more than {2 * _MAX_LANDMARKS}")
    rows = []
    for row in value:
        if (not isinstance(row, Sequence) or isinstance(row, (str, bytes))
                or len(row) != width):
            raise ValueError(f"{name}: every row must hold {width} numbers")
        numbers = tuple(float(v) for v in row)
        if not all(math.isfinite(v) and abs(v) <= _MAX_ABS_PX for v in numbers):
            raise ValueError(f"{name}: values must be finite and within +-{_MAX_ABS_PX:g}")
        rows.append(numbers)
    return rows
