"""A coarse CT-like volume and 3D label map of a specimen (the file's `vol/` and `vol-seg/`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from silr.core import anatomy
from silr.phantom.geometry import Body
from silr.phantom.specimen import Specimen

__all__ = ["HU_AIR", "HU_CANCELLOUS", "HU_CORTICAL", "HU_GAS", "HU_SOFT_TISSUE",
           "VOLUME_EXTENT_MM", "Volume", "voxelize"]

# Hounsfield units of the materials (air, water-like tissue, gas, trabecular and cortical bone).
HU_AIR, HU_SOFT_TISSUE, HU_GAS, HU_CANCELLOUS, HU_CORTICAL = -1000, 40, -900, 300, 1100
# Field of the volume in the specimen frame, mm (x: right..left, y: anterior..posterior,
# z: inferior..superior).
VOLUME_EXTENT_MM = ((-190.0, 190.0), (-130.0, 130.0), (-140.0, 200.0))


@dataclass(frozen=True)
class Volume:
    hounsfield: np.ndarray   # (nz, ny, nx) int16, ITK row-major order
    labels: np.ndarray       # (nz, ny, nx) uint8
    origin: np.ndarray       # (3,) mm, centre of voxel (0, 0, 0), (x, y, z)
    spacing: np.ndarray      # (3,) mm, (x, y, z)


class _Grid:
    def __init__(self, spacing_mm: float):
        self.origin = np.array([lo for lo, _ in VOLUME_EXTENT_MM])
        self.shape_xyz = tuple(int(np.floor((hi - lo) / spacing_mm)) + 1
                               for lo, hi in VOLUME_EXTENT_MM)
        self.spacing = np.full(3, spacing_mm)

    def mask(self, body: Body) -> np.ndarray:
        """(nz, ny, nx) voxels whose centres lie in `body`; each shape is tested in its own box
        only."""
        inside = np.zeros(self.shape_xyz[::-1], dtype=bool)
        for shapes, value in ((body.solids, True), (body.holes, False)):
            for shape in shapes:
                corners = shape.corners()
                lo = np.clip(np.floor((corners.min(0) - self.origin) / self.spacing).astype(int),
                             0, self.shape_xyz)
                hi = np.clip(np.ceil((corners.max(0) - self.origin) / self.spacing).astype(int) + 1,
                             0, self.shape_xyz)
                if np.any(hi <= lo):
                    continue
                axes = [self.origin[a] + self.spacing[a] * np.arange(lo[a], hi[a])
                        for a in range(3)]
                z, y, x = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
                hit = np.sum(shape.local(np.stack([x, y, z], axis=-1)) ** 2, axis=-1) <= 1.0
                block = inside[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]]
                if value:
                    block |= hit
                else:
                    block &= ~hit
        return inside


def voxelize(specimen: Specimen, spacing_mm: float = 3.0) -> Volume:
    """Hounsfield units and labels on a regular grid; bones painted in label order (none overlap
    except at joint contact, where the higher label value wins)."""
    grid = _Grid(spacing_mm)
    hounsfield = np.full(grid.shape_xyz[::-1], HU_AIR, dtype=np.int16)
    tissue = grid.mask(specimen.soft_tissue)
    hounsfield[tissue] = HU_SOFT_TISSUE
    holes = specimen.soft_tissue.holes
    gas = grid.mask(Body(holes)) if holes else np.zeros_like(tissue)
    hounsfield[gas] = HU_GAS
    labels = np.zeros(hounsfield.shape, dtype=np.uint8)
    for label in anatomy.BONE_LABELS:
        bone = specimen.bones[label]
        outer = grid.mask(bone)
        core = grid.mask(bone.core())
        labels[outer] = label
        hounsfield[outer] = HU_CORTICAL
        hounsfield[core] = HU_CANCELLOUS
    return Volume(hounsfield, labels, grid.origin.copy(), grid.spacing)
