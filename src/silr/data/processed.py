"""The preprocessed DeepFluoro layout: its validating readers and its writer.

`ipcai_2020_ds_8x.h5` and the files `silr ingest` writes hold `land-names/` (`num-lands`,
`land-00` ..) and, per specimen numbered as in the paper (`01` .. `06`, then extra ones),
`projs` (float32 N x H x W line integrals), `segs` (uint8 labels) and `lands`
(N x 2 x landmarks: column, row). Our files add root attributes (`silr.data.deepfluoro`'s
ATTR_*); the published ones have none, and their factor is inferred from the frame width.

Landmarks are matched by name and returned in `anatomy.LANDMARK_NAMES` order. Declared
sizes are checked against the memory budget before any frame is read.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from silr.core import anatomy, coords, limits
from silr.core.errors import DataError, IgnoredLandmarkWarning, quoted
from silr.data import hdf5
from silr.data.deepfluoro import (
    ATTR_DATA_KIND,
    ATTR_DOWNSAMPLE,
    ATTR_PIXEL_SPACING,
    ATTR_SOURCE,
    ATTR_SPECIMEN_IDS,
    DEFAULT_DATA_KIND,
    PROCESSED,
    check_finite,
    check_labels,
    ignored_landmarks_message,
    landmark_order,
    layout_of,
    number_key,
    open_hdf5,
)
from silr.data.hdf5 import shown

__all__ = [
    "PUBLISHED_CROP", "ProcessedData", "ProcessedLayout", "SpecimenFrames", "attr_number",
    "processed_data", "processed_frame_index", "processed_layout", "read_processed",
    "read_processed_frame", "read_processed_specimen", "write_processed",
]

# The preprocessing of the published files: 50 px cropped per border, 0.194 mm pixels.
PUBLISHED_CROP = 50
_GZIP = {"compression": "gzip", "compression_opts": 4}  # the frames, projs and segs


# ------------------------------------------------------------------ data classes

@dataclass(frozen=True)
class SpecimenFrames:
    """All frames of one specimen in a preprocessed file.

    images float32 (N, H, W) line integrals; labels uint8 (N, H, W); landmarks_xy
    float64 (N, 14, 2) as (x=column, y=row) in `anatomy.LANDMARK_NAMES` order, out-of-frame
    landmarks at their projected position.
    """

    specimen: int
    images: np.ndarray
    labels: np.ndarray
    landmarks_xy: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.images)
        expected = {"images": (n, *self.images.shape[1:]), "labels": self.images.shape,
                    "landmarks_xy": (n, anatomy.NUM_LANDMARKS, 2)}
        for name, shape in expected.items():
            got = getattr(self, name).shape
            if self.images.ndim != 3 or got != shape:
                raise ValueError(f"specimen {self.specimen}: {name} must have shape {shape} "
                                 f"(images (N, H, W)), got {got}")

    @property
    def num_frames(self) -> int:
        return len(self.images)


@dataclass(frozen=True)
class ProcessedData:
    """A preprocessed file: specimens by paper number (1..6, then extra ones)."""

    specimens: dict[int, SpecimenFrames]
    downsample: int
    pixel_spacing_mm: float
    data_kind: str
    source: str
    specimen_ids: dict[int, str]
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def frame_shape(self) -> tuple[int, int]:
        """(H, W) of every frame."""
        first = next(iter(self.specimens.values()))
        return tuple(first.images.shape[1:])  # type: ignore[return-value]

    @property
    def frames_per_specimen(self) -> dict[int, int]:
        return {number: spec.num_frames for number, spec in self.specimens.items()}


@dataclass(frozen=True)
class ProcessedLayout:
    """What a preprocessed file declares, checked before any frame is read."""

    names: list[str]           # land-names, in file order
    order: list[int]           # positions of LANDMARK_NAMES in `names`
    groups: dict[int, str]     # specimen number -> group key, in numeric order
    counts: dict[int, int]     # frames per specimen
    frame_shape: tuple[int, int]
    attrs: dict[str, Any]


# ------------------------------------------------------------------ root attributes

def _infer_downsample(width: int, path: Path) -> int:
    # The published files carry no attributes: 1436 cropped pixels / factor, rounded.
    cropped = anatomy.FULLRES_SIZE_PX - 2 * PUBLISHED_CROP
    factor = max(1, round(cropped / width))
    if coords.downsampled_length(anatomy.FULLRES_SIZE_PX, PUBLISHED_CROP, factor) != width:
        raise DataError(f"{path}: frames {width} px wide match no downsampling of the {cropped} "
                        f"px cropped detector (e.g. 718, 359, 180, 90) and the file has no "
                        f"{ATTR_DOWNSAMPLE} attribute")
    return factor


def attr_number(attrs: Mapping[str, Any], key: str, path: Path, default: float, *,
                integer: bool = False, allow_zero: bool = False) -> float:
    """A numeric root attribute (or `default` where absent): finite, > 0 (>= 0 with allow_zero),
    whole where `integer`; DataError naming the attribute otherwise."""
    if key not in attrs:
        return default
    value = attrs[key]
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        number = math.nan
    if not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero) or (
            integer and number != int(number)):
        kind = "a whole number" if integer else "a number"
        raise DataError(f"{path}: root attribute {key} must be {kind} "
                        f"{'>=' if allow_zero else '>'} 0, found {quoted(value)}")
    return int(number) if integer else number


def _specimen_ids_attr(attrs: Mapping[str, Any], path: Path) -> dict[int, str]:
    if ATTR_SPECIMEN_IDS not in attrs:
        return {}
    try:
        ids = {int(k): str(v) for k, v in json.loads(hdf5.text(attrs[ATTR_SPECIMEN_IDS])).items()}
    except (ValueError, AttributeError, TypeError, RecursionError) as exc:
        raise DataError(f"{path}: root attribute {ATTR_SPECIMEN_IDS} is not a JSON number -> id "
                        f"map ({shown(str(exc))})") from None
    return ids


# ------------------------------------------------------------------ structure

def _land_names(f: h5py.File, path: Path) -> tuple[list[str], list[int]]:
    names_group = hdf5.get(f, "land-names", path, h5py.Group)
    num_lands = hdf5.scalar(names_group, "num-lands", path)
    if num_lands != int(num_lands) or not 1 <= num_lands <= 1000:
        raise DataError(f"{path}: land-names/num-lands must be a whole number in 1..1000, "
                        f"found {num_lands:g}")
    names = [hdf5.text(hdf5.read(names_group, f"land-{i:02d}", path))
             for i in range(int(num_lands))]
    order, unused = landmark_order(names, path, "land-names")
    if unused:
        warnings.warn(ignored_landmarks_message(path, unused, "land-names"),
                      IgnoredLandmarkWarning, stacklevel=3)
    return names, order


def _specimen_groups(f: h5py.File, path: Path) -> dict[int, str]:
    groups: dict[int, str] = {}
    for key, item in hdf5.members(f, path):
        number = number_key(key)
        if isinstance(item, h5py.Group) and key != "land-names":
            if number is None:
                if key.isdigit():  # looks like a number to Python, is none to int()/sorting
                    raise DataError(f"{path}: group {shown(key)} is not a specimen number in "
                                    f"ASCII digits (expected 01 .. 06)")
                continue
            if number in groups:
                raise DataError(f"{path}: groups {shown(groups[number])} and {shown(key)} both "
                                f"name specimen {number}")
            groups[number] = key
    if not groups:
        raise DataError(f"{path}: no specimen groups (expected 01 .. 06 next to land-names)")
    return dict(sorted(groups.items()))


def _declared_specimen(f: h5py.File, path: Path, key: str, num_lands: int) -> tuple[int, ...]:
    """The declared (N, H, W) of `key`/projs, with segs and lands checked against it (no data
    read)."""
    shape = hdf5.dataset(f, f"{key}/projs", path).shape or ()
    if len(shape) != 3:
        raise DataError(f"{path}: {shown(key)}/projs has shape {shape}, expected N x rows x cols")
    if shape[0] == 0:
        raise DataError(f"{path}: specimen {shown(key)} has no frames "
                        f"({shown(key)}/projs is empty)")
    segs = hdf5.dataset(f, f"{key}/segs", path).shape
    if segs != shape:
        raise DataError(f"{path}: {shown(key)}/segs has shape {segs}, expected {shape} "
                        f"(as {shown(key)}/projs)")
    lands, expected = hdf5.dataset(f, f"{key}/lands", path).shape, (shape[0], 2, num_lands)
    if lands != expected:
        raise DataError(f"{path}: {shown(key)}/lands has shape {lands}, expected {expected} "
                        f"(frames x (column, row) x landmarks)")
    return shape


def processed_layout(f: h5py.File, path: Path) -> ProcessedLayout:
    """Validate the structure of an open preprocessed file from declared shapes only, and check
    that all its frames (float32 images and uint8 labels) fit the memory budget."""
    if layout_of(f, path) != PROCESSED:
        raise DataError(f"{path}: a full-resolution file, expected a preprocessed one "
                        f"(run `silr ingest` on it first)")
    names, order = _land_names(f, path)
    groups = _specimen_groups(f, path)
    counts: dict[int, int] = {}
    frame_shape: tuple[int, ...] | None = None
    for number, key in groups.items():
        shape = _declared_specimen(f, path, key, len(names))
        if frame_shape is None:
            frame_shape = shape[1:]
        elif shape[1:] != frame_shape:
            raise DataError(f"{path}: {shown(key)}/projs frames are {shape[1:]}, other "
                            f"specimens' are {frame_shape}")
        counts[number] = shape[0]
    limits.check_declared_bytes(
        str(path), (sum(counts.values()), *frame_shape), 4 + 1,
        "preprocessed frames (float32 images + uint8 labels of all specimens)")
    attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}
    return ProcessedLayout(names, order, groups, counts,
                           tuple(frame_shape), attrs)  # type: ignore[arg-type]


# ------------------------------------------------------------------ readers

def read_processed_specimen(f: h5py.File, path: Path, layout: ProcessedLayout,
                            number: int) -> SpecimenFrames:
    """One specimen's frames, labels and landmarks, validated."""
    key = layout.groups[number]
    group = hdf5.get(f, key, path, h5py.Group)
    projs = hdf5.read(group, "projs", path)
    check_finite(projs, path, f"{key}/projs")
    labels = check_labels(hdf5.read(group, "segs", path), path, f"{key}/segs")
    lands = hdf5.read(group, "lands", path)
    check_finite(lands, path, f"{key}/lands")
    landmarks_xy = np.asarray(lands, dtype=np.float64)[:, :, layout.order].transpose(0, 2, 1)
    return SpecimenFrames(number, projs.astype(np.float32, copy=False), labels,
                          np.ascontiguousarray(landmarks_xy))


def read_processed_frame(path: str | Path, number: int, index: int) -> np.ndarray:
    """One float32 (H, W) line-integral frame of specimen `number` (predict reads frames so)."""
    path = Path(path)
    with open_hdf5(path) as f:
        layout = processed_layout(f, path)
        if number not in layout.groups or not 0 <= index < layout.counts[number]:
            raise DataError(f"{path}: no frame {index} of specimen {number} "
                            f"(frames per specimen: {layout.counts})")
        name = f"{layout.groups[number]}/projs"
        try:
            frame = np.asarray(hdf5.dataset(f, name, path)[index])
        except (OSError, RuntimeError, ValueError, TypeError) as exc:
            raise DataError(f"{path}: cannot read {shown(name)} frame {index} (file truncated or "
                            f"corrupt? {shown(str(exc))})") from None
    check_finite(frame, path, f"{name} frame {index}")
    return frame.astype(np.float32, copy=False)


def processed_frame_index(path: str | Path) -> dict[int, int]:
    """Specimen number -> frames, from a preprocessed file's declared shapes (no frame read)."""
    path = Path(path)
    with open_hdf5(path) as f:
        return dict(processed_layout(f, path).counts)


def processed_data(path: Path, layout: ProcessedLayout,
                   specimens: dict[int, SpecimenFrames]) -> ProcessedData:
    """The ProcessedData of `layout` (root attributes, or the published files' conventions)."""
    attrs = layout.attrs
    if ATTR_DOWNSAMPLE in attrs:
        downsample = int(attr_number(attrs, ATTR_DOWNSAMPLE, path, 1, integer=True))
    else:
        downsample = _infer_downsample(layout.frame_shape[1], path)
    spacing = attr_number(attrs, ATTR_PIXEL_SPACING, path,
                          anatomy.FULLRES_PIXEL_SPACING_MM * downsample)
    ids = _specimen_ids_attr(attrs, path)
    specimen_ids = {n: ids.get(n, anatomy.SPECIMEN_IDS.get(n, anatomy.specimen_group(n)))
                    for n in layout.groups}
    return ProcessedData(
        specimens=specimens, downsample=downsample, pixel_spacing_mm=spacing,
        data_kind=hdf5.text(attrs.get(ATTR_DATA_KIND, DEFAULT_DATA_KIND)),
        source=hdf5.text(attrs.get(ATTR_SOURCE, str(path))), specimen_ids=specimen_ids,
        attrs=attrs)


def read_processed(path: str | Path) -> ProcessedData:
    """Read a preprocessed file (ours or the published `ipcai_2020_ds_*.h5`), validating
    everything. Declared sizes are checked against the memory budget before any frame is read."""
    path = Path(path)
    with open_hdf5(path) as f:
        layout = processed_layout(f, path)
        specimens = {number: read_processed_specimen(f, path, layout, number)
                     for number in layout.groups}
    return processed_data(path, layout, specimens)


# ------------------------------------------------------------------ writer

def write_processed(path: str | Path, specimens: Iterable[SpecimenFrames],
                    attrs: dict[str, Any]) -> dict[int, int]:
    """Write the published preprocessed layout to `path` (callers pass a temporary name).

    `specimens` may be a generator: each specimen is written as it arrives, so only one is
    in memory. Returns frames per specimen number.
    """
    counts: dict[int, int] = {}
    with h5py.File(path, "w") as f:
        f.attrs.update(attrs)
        names = f.create_group("land-names")
        names.create_dataset("num-lands", data=np.int64(anatomy.NUM_LANDMARKS))
        for i, name in enumerate(anatomy.LANDMARK_NAMES):
            names.create_dataset(f"land-{i:02d}", data=name)
        for spec in specimens:
            group = f.create_group(anatomy.specimen_group(spec.specimen))
            frame_chunks = (1, *spec.images.shape[1:])
            group.create_dataset("projs", data=spec.images.astype(np.float32),
                                 chunks=frame_chunks, **_GZIP)
            group.create_dataset("segs", data=spec.labels.astype(np.uint8),
                                 chunks=frame_chunks, **_GZIP)
            # lands[n][0][l] is the column, lands[n][1][l] the row of landmark l.
            group.create_dataset("lands",
                                 data=spec.landmarks_xy.transpose(0, 2, 1).astype(np.float64))
            counts[spec.specimen] = spec.num_frames
    return counts
