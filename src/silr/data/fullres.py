"""The full-resolution DeepFluoro layout: its validating readers and its group writers.

`ipcai_2020_full_res_data.h5` (2.5 GB) and the phantom of `silr synth` hold `proj-params/`
(the detector geometry) and one group per specimen id (`17-1882`, ...) with its CT volume
and `projections/<NNN>/`: `image/pixels` (raw detector intensities, bone dark),
`gt-seg/pixels`, `gt-landmarks/<name>` (2x1 column, row), `gt-poses/` and `rot-180-for-up`.

Frames are read one at a time, in numeric projection order; specimens are numbered as in
the paper (1..6 for the real ids, then 7, 8, ...). The writers (`write_proj_params`,
`write_specimen_volume`, `write_projection`) are the ones `silr synth` builds its phantom
with. What is shared with the preprocessed layout is in `silr.data.deepfluoro`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from silr.core import anatomy, limits
from silr.core.errors import DataError, quoted
from silr.data import hdf5
from silr.data.deepfluoro import (
    ATTR_DATA_KIND,
    DEFAULT_DATA_KIND,
    FULLRES,
    check_finite,
    check_labels,
    landmark_order,
    layout_of,
    number_key,
    open_hdf5,
)
from silr.data.hdf5 import shown

__all__ = [
    "FEMUR_SIDES", "FullResIndex", "FullResSpecimen", "RawFrame", "fullres_frame_index",
    "iter_raw_frames", "read_fullres_frame", "read_raw_frame", "scan_fullres", "specimen_numbers",
    "write_image_group", "write_proj_params", "write_projection", "write_specimen_volume",
]

FEMUR_SIDES = ("left", "right")  # gt-poses holds one pose and field-of-view flag per femur
_GZIP = {"compression": "gzip", "compression_opts": 1, "shuffle": True}
_IMAGE_CHUNKS = (256, 256)


@dataclass(frozen=True)
class FullResSpecimen:
    specimen_id: str
    number: int
    projections: tuple[str, ...]  # keys of `<id>/projections`, in numeric order


@dataclass(frozen=True)
class FullResIndex:
    """What a full-resolution file holds, without reading any frame."""

    num_rows: int
    num_cols: int
    pixel_spacing_mm: float
    data_kind: str
    specimens: dict[int, FullResSpecimen]  # by number, in numeric order

    @property
    def specimen_ids(self) -> dict[int, str]:
        return {number: spec.specimen_id for number, spec in self.specimens.items()}


@dataclass(frozen=True)
class RawFrame:
    """One full-resolution projection as stored (not yet turned)."""

    specimen: int
    index: int           # position in numeric projection order
    name: str            # `<id>/projections/<NNN>`, for messages
    intensity: np.ndarray  # float32 (H, W) raw detector intensity, bone dark
    labels: np.ndarray     # uint8 (H, W)
    landmarks_xy: np.ndarray  # float64 (14, 2) (column, row) in the stored frame
    rotate: bool           # rot-180-for-up
    ignored_landmarks: tuple[str, ...] = ()  # names in gt-landmarks that silr does not use


# ------------------------------------------------------------------ structure

def specimen_numbers(specimen_ids: Iterable[str]) -> dict[str, int]:
    """Specimen id -> number: the paper's 1..6 for the real ids, then 7, 8, ... for other
    ids in sorted order (so a number always means the same real specimen)."""
    ids = sorted(set(specimen_ids))
    numbers = {sid: anatomy.SPECIMEN_NUMBERS[sid] for sid in ids if sid in anatomy.SPECIMEN_NUMBERS}
    next_number = max(anatomy.SPECIMEN_IDS) + 1
    for sid in ids:
        if sid not in numbers:
            numbers[sid] = next_number
            next_number += 1
    return numbers


def _projection_keys(group: h5py.Group, path: Path, specimen_id: str) -> tuple[str, ...]:
    keys = list(group.keys())
    bad = [k for k in keys if number_key(k) is None]
    if bad:
        raise DataError(f"{path}: {shown(specimen_id)}/projections has entries {quoted(bad[:3])} "
                        f"that are not projection numbers (expected 000, 001, ... in ASCII digits)")
    if not keys:
        raise DataError(f"{path}: specimen {shown(specimen_id)} has no frames "
                        f"({shown(specimen_id)}/projections is empty)")
    return tuple(sorted(keys, key=int))


def _frame_size(params: h5py.Group, path: Path) -> tuple[int, int]:
    """proj-params num-rows and num-cols: positive integers whose float32 frame fits the budget."""
    size = []
    for key in ("num-rows", "num-cols"):
        value = hdf5.scalar(params, key, path)
        if value < 1 or value != int(value):
            raise DataError(f"{path}: proj-params/{key} must be a positive integer, "
                            f"found {value:g}")
        size.append(int(value))
    limits.check_declared_bytes(str(path), tuple(size), 4,
                                "frame size (proj-params num-rows x num-cols)")
    return size[0], size[1]


def scan_fullres(f: h5py.File, path: Path) -> FullResIndex:
    """Validate the structure of an open full-resolution file and list its frames."""
    params = hdf5.get(f, "proj-params", path, h5py.Group)
    num_rows, num_cols = _frame_size(params, path)
    spacing_col, spacing_row = (hdf5.scalar(params, key, path)
                                for key in ("pixel-col-spacing", "pixel-row-spacing"))
    if not (spacing_col > 0 and math.isclose(spacing_col, spacing_row, rel_tol=1e-6)):
        raise DataError(f"{path}: proj-params pixel spacing must be positive and square, found "
                        f"col {spacing_col:g} mm, row {spacing_row:g} mm")
    specimen_ids = [key for key, item in hdf5.members(f, path)
                    if key != "proj-params" and isinstance(item, h5py.Group)]
    if not specimen_ids:
        raise DataError(f"{path}: no specimen groups next to proj-params "
                        f"(expected groups such as 17-1882)")
    specimens: dict[int, FullResSpecimen] = {}
    for specimen_id, number in specimen_numbers(specimen_ids).items():
        projections = hdf5.get(f, f"{specimen_id}/projections", path, h5py.Group)
        keys = _projection_keys(projections, path, specimen_id)
        specimens[number] = FullResSpecimen(specimen_id, number, keys)
    kind = hdf5.text(f.attrs[ATTR_DATA_KIND]) if ATTR_DATA_KIND in f.attrs else DEFAULT_DATA_KIND
    return FullResIndex(num_rows, num_cols, spacing_col, kind, dict(sorted(specimens.items())))


# ------------------------------------------------------------------ frames

def _frame_pixels(group: h5py.Group, key: str, path: Path, name: str,
                  shape: tuple[int, int]) -> np.ndarray:
    """`name`/`key`/pixels, its declared shape checked against the detector's before reading."""
    image = hdf5.get(group, key, path, h5py.Group)
    declared = hdf5.dataset(image, "pixels", path).shape  # checked before any pixel is read
    if declared != shape:
        raise DataError(f"{path}: {name}/{key}/pixels has shape {declared}, expected {shape} "
                        f"(proj-params num-rows x num-cols)")
    return hdf5.read(image, "pixels", path)


def _frame_landmarks(group: h5py.Group, path: Path, name: str) -> tuple[np.ndarray, list[str]]:
    """`name`/gt-landmarks as (14, 2) (column, row) in LANDMARK_NAMES order, and the names
    silr does not use."""
    lands_group = hdf5.get(group, "gt-landmarks", path, h5py.Group)
    names = list(lands_group.keys())
    order, unused = landmark_order(names, path, f"{name}/gt-landmarks")
    landmarks = np.empty((anatomy.NUM_LANDMARKS, 2))
    for row, position in enumerate(order):
        declared = hdf5.dataset(lands_group, names[position], path).shape  # checked before reading
        if declared is None or math.prod(declared) != 2:
            raise DataError(f"{path}: {name}/gt-landmarks/{shown(names[position])} has shape "
                            f"{declared}, expected a 2x1 (column, row) array")
        value = hdf5.read(lands_group, names[position], path)
        landmarks[row] = value.reshape(2)
    check_finite(landmarks, path, f"{name}/gt-landmarks")
    return landmarks, unused


def read_raw_frame(f: h5py.File, path: Path, index: FullResIndex, specimen: int,
                   frame: int) -> RawFrame:
    """Read and validate one projection (image, labels, landmarks, rot-180-for-up)."""
    spec = index.specimens[specimen]
    name = f"{spec.specimen_id}/projections/{spec.projections[frame]}"
    group = hdf5.get(f, name, path, h5py.Group)
    shape = (index.num_rows, index.num_cols)
    intensity = _frame_pixels(group, "image", path, name, shape)
    check_finite(intensity, path, f"{name}/image/pixels")
    labels = check_labels(_frame_pixels(group, "gt-seg", path, name, shape), path,
                          f"{name}/gt-seg/pixels")
    landmarks, unused = _frame_landmarks(group, path, name)
    flag = hdf5.scalar(group, "rot-180-for-up", path)
    if flag not in (0.0, 1.0):
        raise DataError(f"{path}: {name}/rot-180-for-up must be 0 or 1, found {flag:g}")
    return RawFrame(specimen, frame, name, intensity.astype(np.float32, copy=False), labels,
                    landmarks, bool(flag), tuple(unused))


def iter_raw_frames(f: h5py.File, path: Path, index: FullResIndex) -> Iterator[RawFrame]:
    """Every frame, specimens and projections in numeric order, one at a time."""
    for number, spec in index.specimens.items():
        for frame in range(len(spec.projections)):
            yield read_raw_frame(f, path, index, number, frame)


def fullres_frame_index(path: str | Path) -> dict[int, tuple[str, ...]]:
    """Specimen number -> its projection keys in numeric order (validates the structure)."""
    path = Path(path)
    with open_hdf5(path) as f:
        if layout_of(f, path) != FULLRES:
            raise DataError(f"{path}: not a full-resolution file (it holds preprocessed frames)")
        specimens = scan_fullres(f, path).specimens
        return {number: spec.projections for number, spec in specimens.items()}


def read_fullres_frame(path: str | Path, specimen: int, frame: int) -> tuple[np.ndarray, bool]:
    """One raw frame (float32 intensities as stored) and its rot-180-for-up flag."""
    path = Path(path)
    with open_hdf5(path) as f:
        index = scan_fullres(f, path)
        if specimen not in index.specimens:
            raise DataError(f"{path}: no specimen {specimen} "
                            f"(the file holds {sorted(index.specimens)})")
        count = len(index.specimens[specimen].projections)
        if not 0 <= frame < count:
            raise DataError(f"{path}: specimen {specimen} has {count} frames, no frame {frame}")
        raw = read_raw_frame(f, path, index, specimen, frame)
        return raw.intensity, raw.rotate


# ------------------------------------------------------------------ writers

def write_image_group(group: h5py.Group, pixels: np.ndarray, spacing: Sequence[float],
                      origin: Sequence[float]) -> None:
    """An image as the full-resolution layout stores every image: pixels, origin, spacing,
    dir-mat."""
    chunks = _IMAGE_CHUNKS if pixels.ndim == 2 else True
    group.create_dataset("pixels", data=pixels, chunks=chunks, **_GZIP)
    group.create_dataset("origin", data=np.asarray(origin, dtype=np.float64))
    group.create_dataset("spacing", data=np.asarray(spacing, dtype=np.float64))
    group.create_dataset("dir-mat", data=np.eye(pixels.ndim))


def write_proj_params(group: h5py.Group, *, intrinsic: np.ndarray, extrinsic: np.ndarray,
                      num_rows: int, num_cols: int, spacing_mm: float) -> None:
    """`proj-params`: the detector geometry shared by every frame (square pixels)."""
    group.create_dataset("intrinsic", data=intrinsic)
    group.create_dataset("extrinsic", data=extrinsic)
    group.create_dataset("num-cols", data=np.int64(num_cols))
    group.create_dataset("num-rows", data=np.int64(num_rows))
    group.create_dataset("pixel-col-spacing", data=np.float64(spacing_mm))
    group.create_dataset("pixel-row-spacing", data=np.float64(spacing_mm))


def write_specimen_volume(group: h5py.Group, *, hounsfield: np.ndarray, labels: np.ndarray,
                          spacing: Sequence[float], origin: Sequence[float],
                          landmarks: Mapping[str, np.ndarray]) -> None:
    """A specimen's CT volume, its bone labels and its 3D landmarks (`landmarks` by name, (3,)
    each) into its specimen group: `vol`, `vol-seg`, `vol-landmarks`."""
    write_image_group(group.create_group("vol"), hounsfield, spacing, origin)
    seg = group.create_group("vol-seg")
    write_image_group(seg.create_group("image"), labels, spacing, origin)
    names = seg.create_group("labels-def")
    for label in anatomy.BONE_LABELS:
        names.create_dataset(str(label), data=anatomy.LABEL_NAMES[label])
    lands = group.create_group("vol-landmarks")
    for name in anatomy.LANDMARK_NAMES:
        lands.create_dataset(name, data=np.asarray(landmarks[name]).reshape(3, 1))


def write_projection(group: h5py.Group, *, intensity: np.ndarray, labels: np.ndarray,
                     landmarks_xy: np.ndarray, spacing_mm: float, cam_to_pelvis_vol: np.ndarray,
                     cam_to_femur_vol: Mapping[str, np.ndarray],
                     femur_good_fov: Mapping[str, bool], rotate: bool) -> None:
    """One frame into `<id>/projections/<NNN>`: raw intensities and labels as stored (not
    turned), landmarks_xy (14, 2) (column, row) in `anatomy.LANDMARK_NAMES` order, the
    ground-truth poses (`cam_to_femur_vol` and `femur_good_fov` keyed by FEMUR_SIDES) and
    `rot-180-for-up`."""
    spacing = (spacing_mm, spacing_mm)
    write_image_group(group.create_group("image"), intensity, spacing, (0.0, 0.0))
    write_image_group(group.create_group("gt-seg"), labels, spacing, (0.0, 0.0))
    lands = group.create_group("gt-landmarks")
    for name, xy in zip(anatomy.LANDMARK_NAMES, landmarks_xy):
        lands.create_dataset(name, data=xy.reshape(2, 1))
    poses = group.create_group("gt-poses")
    poses.create_dataset("cam-to-pelvis-vol", data=cam_to_pelvis_vol)
    for side in FEMUR_SIDES:
        poses.create_dataset(f"cam-to-{side}-femur-vol", data=cam_to_femur_vol[side])
        poses.create_dataset(f"{side}-femur-good-fov", data=np.int64(femur_good_fov[side]))
    group.create_dataset("rot-180-for-up", data=np.int64(rotate))
