"""Analytic solids and exact path lengths of rays through them.

A body is a union of ellipsoids minus a union of ellipsoidal holes. Every ray of a
projection starts at the X-ray source, so the entry and exit distances of a ray through
an ellipsoid come from one quadratic; the length of a ray inside a body is then the
length of a union of intervals minus its overlap with another union of intervals, both
computed exactly by a sweep over intervals sorted by their entry point.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["Body", "Ellipsoid", "frame_from", "ray_intervals", "rotation_about",
           "union_minus_holes_length"]


@dataclass(frozen=True)
class Ellipsoid:
    """Points p with |R^T (p - centre) / semi_axes| <= 1; R's columns are the local axes."""

    centre: np.ndarray      # (3,) mm
    rotation: np.ndarray    # (3, 3), orthonormal columns
    semi_axes: np.ndarray   # (3,) mm

    def rigid(self, rotation: np.ndarray, translation: np.ndarray) -> Ellipsoid:
        """The ellipsoid after the rigid motion p -> rotation @ p + translation."""
        return Ellipsoid(rotation @ self.centre + translation, rotation @ self.rotation,
                         self.semi_axes)

    def resized(self, delta_mm: float) -> Ellipsoid:
        """Every semi-axis grown by `delta_mm` (shrunk when negative), never below 30%."""
        return Ellipsoid(self.centre, self.rotation,
                         np.maximum(self.semi_axes + delta_mm, 0.3 * self.semi_axes))

    def corners(self) -> np.ndarray:
        """(8, 3) corners of the oriented bounding box."""
        signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)],
                         dtype=float)
        return self.centre + (signs * self.semi_axes) @ self.rotation.T

    def local(self, points: np.ndarray) -> np.ndarray:
        """(..., 3) points in the normalised frame where the ellipsoid is the unit ball."""
        return ((np.asarray(points, dtype=float) - self.centre) @ self.rotation) / self.semi_axes

    def point(self, local_xyz: ArrayLike) -> np.ndarray:
        """The world point with normalised local coordinates `local_xyz` (inside when norm < 1)."""
        return self.centre + self.rotation @ (np.asarray(local_xyz, dtype=float) * self.semi_axes)


@dataclass(frozen=True)
class Body:
    """Union of `solids` minus union of `holes`; `cortex_mm` is the dense outer shell."""

    solids: tuple[Ellipsoid, ...]
    holes: tuple[Ellipsoid, ...] = field(default=())
    cortex_mm: float = 0.0

    def rigid(self, rotation: np.ndarray, translation: np.ndarray) -> Body:
        """The body after the rigid motion p -> rotation @ p + translation."""
        return Body(tuple(s.rigid(rotation, translation) for s in self.solids),
                    tuple(h.rigid(rotation, translation) for h in self.holes), self.cortex_mm)

    def core(self) -> Body:
        """The body without its cortical shell: solids shrunk, holes grown by the cortex."""
        return Body(tuple(s.resized(-self.cortex_mm) for s in self.solids),
                    tuple(h.resized(self.cortex_mm) for h in self.holes), 0.0)


def ray_intervals(source: np.ndarray, directions: np.ndarray,
                  ellipsoid: Ellipsoid) -> tuple[np.ndarray, np.ndarray]:
    """Entry and exit distances (mm) along unit `directions` (..., 3) from `source` (3,).

    Rays that miss get the empty interval (0, 0).
    """
    scale = ellipsoid.rotation / ellipsoid.semi_axes          # d_local = d @ (R / a)
    origin = ellipsoid.local(source)
    d = directions @ scale
    a = np.sum(d * d, axis=-1)
    b = d @ origin                                            # half of the linear coefficient
    c = float(origin @ origin) - 1.0
    disc = b * b - a * c
    hit = disc > 0
    root = np.sqrt(np.where(hit, disc, 0.0))
    t_in = np.where(hit, (-b - root) / a, 0.0)
    t_out = np.where(hit, (-b + root) / a, 0.0)
    return np.maximum(t_in, 0.0), np.maximum(t_out, 0.0)


def _disjoint_segments(t_in: np.ndarray, t_out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Turn K intervals per ray ((K, ...) arrays) into K disjoint segments covering their union.

    Sorted by entry, interval k contributes [max(entry_k, furthest exit so far), exit_k]
    when that is non-empty; the contributions are disjoint and their union is the union.
    """
    order = np.argsort(t_in, axis=0, kind="stable")
    t_in = np.take_along_axis(t_in, order, axis=0)
    t_out = np.take_along_axis(t_out, order, axis=0)
    reach = np.maximum.accumulate(t_out, axis=0)
    start = t_in.copy()
    start[1:] = np.maximum(t_in[1:], reach[:-1])
    end = np.maximum(t_out, start)                            # empty segments: end == start
    return start, end


def union_minus_holes_length(solid_in: np.ndarray, solid_out: np.ndarray,
                             hole_in: np.ndarray | None = None,
                             hole_out: np.ndarray | None = None) -> np.ndarray:
    """Length of (union of solid intervals) minus (union of hole intervals), per ray.

    `solid_in`/`solid_out` are (K, ...) entry/exit distances, holes (J, ...) likewise.
    """
    start, end = _disjoint_segments(solid_in, solid_out)
    length = np.sum(end - start, axis=0)
    if hole_in is not None and len(hole_in):
        h_start, h_end = _disjoint_segments(hole_in, hole_out)
        for j in range(h_start.shape[0]):
            overlap = np.minimum(end, h_end[j]) - np.maximum(start, h_start[j])
            length -= np.sum(np.maximum(overlap, 0.0), axis=0)
    return np.maximum(length, 0.0)


def rotation_about(axis: ArrayLike, angle_rad: float) -> np.ndarray:
    """Rotation matrix of `angle_rad` about `axis` (right-handed, Rodrigues)."""
    axis = np.asarray(axis, dtype=float)
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle_rad) * k + (1 - np.cos(angle_rad)) * (k @ k)


def frame_from(primary: ArrayLike, hint: ArrayLike) -> np.ndarray:
    """Orthonormal columns (e1, e2, e3): e1 along `primary`, e2 as close to `hint` as possible."""
    e1 = np.asarray(primary, dtype=float)
    e1 = e1 / np.linalg.norm(e1)
    e2 = np.asarray(hint, dtype=float) - np.dot(hint, e1) * e1
    e2 = e2 / np.linalg.norm(e2)
    return np.stack([e1, e2, np.cross(e1, e2)], axis=1)
