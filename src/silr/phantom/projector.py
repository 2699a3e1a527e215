"""Cone-beam C-arm projection of a specimen: poses, path lengths, intensities, labels.

Camera frame (the DeepFluoro convention, `proj-params/extrinsic` = identity): the X-ray
source at the origin, +z towards the detector, +x along detector columns, +y along rows;
pixel (col, row) = K (x, y, z) / z with pixel centres at integer positions.

Rays are cast exactly (analytic ellipsoid chords) through the centres of a coarser
detector grid, and the per-ray quantities are bilinearly upsampled to full resolution,
where quantum noise is added. Labels use the rule: each pixel gets the bone with the
longest path along its ray; background where no bone is crossed for at least
`MIN_BONE_PATH_MM`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from silr.core import anatomy
from silr.phantom.geometry import (
    Body,
    Ellipsoid,
    ray_intervals,
    rotation_about,
    union_minus_holes_length,
)
from silr.phantom.specimen import Specimen

__all__ = ["AIR_INTENSITY", "MAX_INTENSITY", "MIN_BONE_PATH_MM", "Detector", "Pose", "Projection",
           "project_points", "render", "sample_pose"]

SOFT_TISSUE_MU = 0.019          # 1/mm, water-like tissue at an effective ~70 keV
# Detector counts without any object (below the log transform's I0 = 65487).
AIR_INTENSITY = 60000.0
NOISE_GAIN = 0.15               # counts per detected quantum: noise variance = gain * mean counts
COLLIMATOR_PX = 24              # dark border of the collimator (ingestion crops 50 px)
COLLIMATOR_ATTENUATION = 2.5
MIN_BONE_PATH_MM = 0.2
MAX_INTENSITY = 65487.0

# The AP view: the source anterior (above the table), the detector posterior, columns
# running towards the patient's left and rows towards the feet. An upright frame then
# shows the patient's left on the image's right, as the real DeepFluoro frames do.
_AP_CAMERA_AXES = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]]).T

# Pose ranges (see `sample_pose`). The real frames were taken for 2D/3D registration, from
# views far from a fixed AP pose, centred on either hip or the whole pelvis.
OBLIQUE_DEG = 40.0              # LAO/RAO about the body axis, uniform in +-
TILT_SD_DEG, TILT_MAX_DEG = 10.0, 25.0   # cranio-caudal
ROLL_SD_DEG = 5.0               # in-plane turn of the detector
# Uniform in +-: the centre anywhere between the hips (heads at ~+-80 mm).
ISOCENTRE_X_MM = 60.0
ISOCENTRE_Z_MM = (-30.0, 60.0)  # uniform: from the femoral heads' level to the lower iliac wings
# Magnification 1020 / distance at the isocentre: 1.13 .. 1.46.
SOURCE_TO_ISOCENTRE_MM = (700.0, 900.0)


@dataclass(frozen=True)
class Detector:
    size_px: int = anatomy.FULLRES_SIZE_PX
    spacing_mm: float = anatomy.FULLRES_PIXEL_SPACING_MM
    source_to_detector_mm: float = anatomy.SOURCE_TO_DETECTOR_MM

    @property
    def intrinsic(self) -> np.ndarray:
        focal_px = self.source_to_detector_mm / self.spacing_mm
        centre = (self.size_px - 1) / 2.0
        return np.array([[focal_px, 0.0, centre], [0.0, focal_px, centre], [0.0, 0.0, 1.0]])


@dataclass(frozen=True)
class Pose:
    cam_to_vol: np.ndarray                 # (4, 4) camera mm -> pelvis volume mm
    # femur label -> (3, 3) rotation about its head centre (volume frame)
    femur_motion: dict[int, np.ndarray]
    rot180: bool                           # stored upside down (C-arm turned about the view axis)

    def cam_to_femur_vol(self, label: int, head_centre: np.ndarray) -> np.ndarray:
        """Camera -> the femur's own (rest) volume frame: undo the femur's motion."""
        rotation = self.femur_motion[label]
        undo = np.eye(4)
        undo[:3, :3] = rotation.T
        undo[:3, 3] = head_centre - rotation.T @ head_centre
        return undo @ self.cam_to_vol


def sample_pose(rng: np.random.Generator, turned_probability: float = 0.3) -> Pose:
    """A C-arm pose: strong obliques, cranio-caudal tilt, roll, the isocentre anywhere from one
    hip to the other, varied magnification, femur motion."""
    oblique = np.radians(rng.uniform(-OBLIQUE_DEG, OBLIQUE_DEG))
    tilt = np.radians(np.clip(rng.normal(0.0, TILT_SD_DEG), -TILT_MAX_DEG, TILT_MAX_DEG))
    rot180 = bool(rng.random() < turned_probability)
    roll = np.radians(rng.normal(0.0, ROLL_SD_DEG)) + (np.pi if rot180 else 0.0)
    rotation = (rotation_about((0, 0, 1), oblique) @ rotation_about((1, 0, 0), tilt)
                @ _AP_CAMERA_AXES @ rotation_about((0, 0, 1), roll))
    isocentre = np.array([rng.uniform(-ISOCENTRE_X_MM, ISOCENTRE_X_MM), 10.0 + rng.normal(0.0, 8.0),
                          rng.uniform(*ISOCENTRE_Z_MM)])
    source_to_isocentre = rng.uniform(*SOURCE_TO_ISOCENTRE_MM)
    cam_to_vol = np.eye(4)
    cam_to_vol[:3, :3] = rotation
    cam_to_vol[:3, 3] = isocentre - source_to_isocentre * rotation[:, 2]
    femur_motion = {label: rotation_about(rng.normal(size=3), np.radians(rng.normal(0.0, 6.0)))
                    for label in (anatomy.LEFT_FEMUR, anatomy.RIGHT_FEMUR)}
    return Pose(cam_to_vol, femur_motion, rot180)


def project_points(points_vol: np.ndarray, cam_to_vol: np.ndarray,
                   intrinsic: np.ndarray) -> np.ndarray:
    """(N, 3) volume points -> (N, 2) detector (col, row), wherever they fall."""
    vol_to_cam = np.linalg.inv(cam_to_vol)
    cam = np.asarray(points_vol, float) @ vol_to_cam[:3, :3].T + vol_to_cam[:3, 3]
    pix = cam @ intrinsic.T
    return pix[:, :2] / pix[:, 2:3]


@dataclass(frozen=True)
class Projection:
    intensity: np.ndarray     # (H, W) float32 detector counts, integers in [1, MAX_INTENSITY]
    labels: np.ndarray        # (H, W) uint8
    landmarks_xy: np.ndarray  # (14, 2) (col, row) in LANDMARK_NAMES order


class _CoarseGrid:
    """Ray directions through the centres of `factor` x `factor` blocks of detector pixels."""

    def __init__(self, detector: Detector, factor: int):
        if detector.size_px % factor:
            raise ValueError(f"coarse factor {factor} does not divide the detector size "
                             f"{detector.size_px}")
        self.factor, self.size = factor, detector.size_px // factor
        self.intrinsic = detector.intrinsic
        # Full-resolution pixel coordinates.
        centres = factor * np.arange(self.size) + (factor - 1) / 2.0
        k_inv = np.linalg.inv(self.intrinsic)
        cols, rows = np.meshgrid(centres, centres)
        pix = np.stack([cols, rows, np.ones_like(cols)], axis=-1)
        rays = pix @ k_inv.T
        self.directions = rays / np.linalg.norm(rays, axis=-1, keepdims=True)

    def footprint(self, corners_cam: np.ndarray) -> tuple[slice, slice] | None:
        """Coarse-grid (rows, cols) rectangle covering the projection of a box, or None if
        off-detector."""
        pix = corners_cam @ self.intrinsic.T
        pix = pix[:, :2] / pix[:, 2:3]
        lo = np.floor((pix.min(axis=0) - (self.factor - 1) / 2.0) / self.factor).astype(int)
        hi = np.ceil((pix.max(axis=0) - (self.factor - 1) / 2.0) / self.factor).astype(int) + 1
        lo, hi = np.clip(lo, 0, self.size), np.clip(hi, 0, self.size)
        if np.any(hi <= lo):
            return None
        return slice(lo[1], hi[1]), slice(lo[0], hi[0])

    def path_length(self, body: Body) -> np.ndarray:
        """(size, size) length of every coarse ray inside `body` (camera frame), mm."""
        out = np.zeros((self.size, self.size))
        solid_rects = [self.footprint(s.corners()) for s in body.solids]
        present = [(s, r) for s, r in zip(body.solids, solid_rects) if r is not None]
        if not present:
            return out
        r0 = min(r[0].start for _, r in present)
        r1 = max(r[0].stop for _, r in present)
        c0 = min(r[1].start for _, r in present)
        c1 = max(r[1].stop for _, r in present)
        origin = np.zeros(3)

        def intervals(shapes: Sequence[Ellipsoid]) -> tuple[np.ndarray, np.ndarray]:
            t_in = np.zeros((len(shapes), r1 - r0, c1 - c0), dtype=np.float32)
            t_out = np.zeros_like(t_in)
            for k, shape in enumerate(shapes):
                rect = self.footprint(shape.corners())
                if rect is None:
                    continue
                rows = slice(max(rect[0].start, r0), min(rect[0].stop, r1))
                cols = slice(max(rect[1].start, c0), min(rect[1].stop, c1))
                if rows.stop <= rows.start or cols.stop <= cols.start:
                    continue
                local = (slice(rows.start - r0, rows.stop - r0),
                         slice(cols.start - c0, cols.stop - c0))
                t_in[(k, *local)], t_out[(k, *local)] = ray_intervals(
                    origin, self.directions[rows, cols], shape)
            return t_in, t_out

        solid_in, solid_out = intervals([s for s, _ in present])
        # The interval sweep sorts per ray: run it only on rays that meet a solid.
        hit = np.any(solid_out > solid_in, axis=0)
        lengths = np.zeros(hit.shape)
        if body.holes:
            hole_in, hole_out = intervals(body.holes)
            lengths[hit] = union_minus_holes_length(solid_in[:, hit], solid_out[:, hit],
                                                    hole_in[:, hit], hole_out[:, hit])
        else:
            lengths[hit] = union_minus_holes_length(solid_in[:, hit], solid_out[:, hit])
        out[r0:r1, c0:c1] = lengths
        return out


@functools.lru_cache(maxsize=2)
def _coarse_grid(detector: Detector, factor: int) -> _CoarseGrid:
    return _CoarseGrid(detector, factor)


def _upsample(maps: np.ndarray, factor: int) -> torch.Tensor:
    """(C, h, w) -> (C, h*factor, w*factor) bilinear, coarse values at their block centres."""
    tensor = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))[None]
    return torch.nn.functional.interpolate(tensor, scale_factor=factor, mode="bilinear",
                                           align_corners=False)[0]


def render(specimen: Specimen, pose: Pose, rng: np.random.Generator,
           detector: Detector = Detector(), coarse_factor: int = 4) -> Projection:
    """Raw detector counts, ray-cast labels and projected landmarks of one frame."""
    grid = _coarse_grid(detector, coarse_factor)
    vol_to_cam = np.linalg.inv(pose.cam_to_vol)
    to_cam_rotation, to_cam_translation = vol_to_cam[:3, :3], vol_to_cam[:3, 3]

    soft_tissue = specimen.soft_tissue.rigid(to_cam_rotation, to_cam_translation)
    line_integral = SOFT_TISSUE_MU * grid.path_length(soft_tissue)
    bone_paths = np.zeros((len(anatomy.BONE_LABELS), grid.size, grid.size))
    for index, label in enumerate(anatomy.BONE_LABELS):
        body = specimen.bones[label]
        if label in pose.femur_motion:
            pivot = specimen.femoral_head_centres[label]
            motion = pose.femur_motion[label]
            body = body.rigid(motion, pivot - motion @ pivot)
        body = body.rigid(to_cam_rotation, to_cam_translation)
        outer = grid.path_length(body)
        core = grid.path_length(body.core())
        bone_paths[index] = outer
        line_integral += specimen.cortical_mu * (outer - core) + specimen.cancellous_mu * core

    upsampled = _upsample(np.concatenate([line_integral[None], bone_paths]), coarse_factor)
    longest_path, longest = torch.max(upsampled[1:], dim=0)
    bone_values = torch.tensor(anatomy.BONE_LABELS, dtype=torch.uint8)
    labels = torch.where(longest_path >= MIN_BONE_PATH_MM, bone_values[longest],
                         torch.tensor(anatomy.BACKGROUND, dtype=torch.uint8)).numpy()

    attenuation = upsampled[0].numpy()
    border = np.zeros(attenuation.shape, dtype=bool)
    border[:COLLIMATOR_PX] = border[-COLLIMATOR_PX:] = True
    border[:, :COLLIMATOR_PX] = border[:, -COLLIMATOR_PX:] = True
    attenuation[border] += COLLIMATOR_ATTENUATION
    mean_counts = AIR_INTENSITY * np.exp(-attenuation)
    noise = rng.standard_normal(mean_counts.shape, dtype=np.float32)
    counts = np.rint(mean_counts + np.sqrt(NOISE_GAIN * mean_counts) * noise)
    intensity = np.clip(counts, 1.0, MAX_INTENSITY).astype(np.float32)

    points = np.stack([specimen.landmarks[name] for name in anatomy.LANDMARK_NAMES])
    landmarks_xy = project_points(points, pose.cam_to_vol, detector.intrinsic)
    return Projection(intensity, labels, landmarks_xy)
