"""The DeepFluoro file format: readers and writers of both HDF5 layouts.

Two layouts exist (see docs/method.md, "Data"):

- full resolution (`ipcai_2020_full_res_data.h5`, and the phantom of `silr synth`):
  `proj-params/` plus one group per specimen id with `projections/<NNN>/`;
- preprocessed (`ipcai_2020_ds_8x.h5` and the files `silr ingest` writes):
  `land-names/` plus `<NN>/projs`, `<NN>/segs`, `<NN>/lands` per specimen.

This module owns the layouts: opening and recognising files, the validating readers of
both, the writer of the preprocessed layout (`write_processed`), the group writers of the
full-resolution layout that `silr synth` builds its phantom with (`write_proj_params`,
`write_specimen_volume`, `write_projection`), the root attribute names, landmark order and
specimen numbering. What happens to a frame between the two layouts is
`silr.data.preprocess`'s job.

The layout is found by looking at the file's groups, never its name. Landmarks are
matched by name and returned in `anatomy.LANDMARK_NAMES` order; frames are taken in
numeric projection order. Full-resolution frames are read one at a time (the real file
is 2.5 GB).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from silr.core import anatomy, coords, limits
from silr.core.errors import DataError, IgnoredLandmarkWarning, quoted

FULLRES = "fullres"
PROCESSED = "processed"

# The preprocessing of the published files: 50 px cropped per border, 0.194 mm pixels.
PUBLISHED_CROP = 50
DATA_KINDS = ("deepfluoro", "synthetic")
DEFAULT_DATA_KIND = "deepfluoro"

# Root attributes of the files `silr ingest` writes (the published files have none).
ATTR_SOURCE = "silr-source"
ATTR_DATA_KIND = "silr-data-kind"  # also set by `silr synth` on its full-resolution file
ATTR_DOWNSAMPLE = "silr-downsample"
ATTR_PIXEL_SPACING = "silr-pixel-spacing-mm"
ATTR_CROP = "silr-crop"
ATTR_I0 = "silr-i0"
ATTR_SPECIMEN_IDS = "silr-specimen-ids"  # JSON {"1": "17-1882", ...}
ATTR_LABEL_RULE = "silr-label-rule"  # also set by `silr synth`
ATTR_IMAGE_RULE = "silr-image-rule"
ATTR_INTENSITY_FLOOR = "silr-intensity-floor"
ATTR_INGEST_MODE = "silr-ingest-mode"  # "downsampled" (from full-res) or "copied" (already preprocessed)

_GZIP = {"compression": "gzip", "compression_opts": 4}  # the preprocessed layout's frames
_FULLRES_GZIP = {"compression": "gzip", "compression_opts": 1, "shuffle": True}
_FULLRES_IMAGE_CHUNKS = (256, 256)
FEMUR_SIDES = ("left", "right")  # gt-poses holds one pose and field-of-view flag per femur


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


# ------------------------------------------------------------------ opening files, layout

def missing_input_message(path: Path) -> str:
    return (f"{path}: no such file; generate the synthetic phantom with `silr synth` (or `dvc repro synth`), "
            f"or download the DeepFluoro files (see data/raw/README.md)")


def open_hdf5(path: str | Path) -> h5py.File:
    """Open an HDF5 file for reading; DataError for a missing, non-HDF5 or unreadable file."""
    path = Path(path)
    if not path.exists():
        raise DataError(missing_input_message(path))
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected an HDF5 file")
    try:
        is_hdf5 = h5py.is_hdf5(path)
    except OSError as exc:
        raise DataError(f"{path}: cannot be read: {exc}") from None
    if not is_hdf5:
        raise DataError(f"{path}: not an HDF5 file (expected a DeepFluoro .h5 file)")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        reason = str(exc).split("(", 1)[-1].rstrip(")") if "(" in str(exc) else str(exc)
        raise DataError(f"{path}: HDF5 file cannot be opened, truncated or corrupt ({reason})") from None


def _layout_of(f: h5py.File, path: Path) -> str:
    members = dict(_members(f, path))
    if isinstance(members.get("land-names"), h5py.Group):
        return PROCESSED
    if isinstance(members.get("proj-params"), h5py.Group) or any(
            isinstance(item, h5py.Group) and "projections" in item for item in members.values()):
        return FULLRES
    raise DataError(f"{path}: unknown layout: expected the full-resolution layout (proj-params, "
                    f"<specimen>/projections) or the preprocessed one (land-names, 01/projs), "
                    f"found top-level entries {quoted(sorted(members))}")


def _number_key(key: str) -> int | None:
    """The number a group name such as `001` or `01` stands for, or None. Only ASCII digits
    count: `str.isdigit` also accepts '²' or '٣', which int() refuses or reads differently."""
    return int(key) if key.isascii() and key.isdigit() else None


def detect_layout(path: str | Path) -> str:
    """FULLRES or PROCESSED, from the file's groups (not its name)."""
    path = Path(path)
    with open_hdf5(path) as f:
        return _layout_of(f, path)


def _shown(text: str) -> str:
    """An HDF5 name for a message: as it is when short and printable, else a bounded repr."""
    return text if len(text) <= 80 and text.isprintable() else quoted(text)


def _member(group: h5py.Group, key: str, path: Path) -> Any:
    """group[key] for one link name, or None; DataError for a link that leaves the file (external
    or user-defined: data from any file on disk must never reach an output) or that cannot be
    resolved (a soft-link cycle, a dangling link, a corrupt file)."""
    name = f"{group.name.rstrip('/')}/{key}".lstrip("/")
    link = None
    try:
        link = group.get(key, getlink=True)
        if link is None:
            return None
        if not isinstance(link, (h5py.HardLink, h5py.SoftLink)):
            target = f" -> {_shown(link.filename)}:{_shown(link.path)}" if isinstance(link, h5py.ExternalLink) else ""
            raise DataError(f"{path}: {_shown(name)} is an external link{target}; silr reads only what the file "
                            f"itself holds (copy the data in)")
        item = group.get(key)
    except (OSError, RuntimeError, KeyError, ValueError) as exc:
        if isinstance(link, h5py.SoftLink):
            raise DataError(f"{path}: soft link {_shown(name)} -> {_shown(link.path)} cannot be resolved "
                            f"(a link cycle or a dangling link)") from None
        raise DataError(f"{path}: cannot read {_shown(name)} (file truncated or corrupt? {_shown(str(exc))})") \
            from None
    if item is None and isinstance(link, h5py.SoftLink):
        raise DataError(f"{path}: soft link {_shown(name)} -> {_shown(link.path)} points nowhere (a dangling link)")
    return item


def _members(group: h5py.Group, path: Path) -> Iterator[tuple[str, Any]]:
    """(name, item) of every link in `group`, each checked by `_member`."""
    try:
        keys = list(group.keys())
    except (OSError, RuntimeError, KeyError) as exc:
        raise DataError(f"{path}: cannot list {group.name} (file truncated or corrupt? {_shown(str(exc))})") from None
    for key in keys:
        yield key, _member(group, key, path)


def _get(group: h5py.Group, key: str, path: Path, kind: type = h5py.Dataset) -> Any:
    """group[key] (a key may hold several /-separated parts, each link checked by `_member`),
    or DataError naming the full HDF5 path of what is missing."""
    what = "dataset" if kind is h5py.Dataset else "group"
    name = f"{group.name.rstrip('/')}/{key}".lstrip("/")
    item: Any = group
    for part in key.split("/"):
        item = _member(item, part, path) if isinstance(item, h5py.Group) else None
        if item is None:
            raise DataError(f"{path}: missing {what} {_shown(name)}")
    if not isinstance(item, kind):
        raise DataError(f"{path}: {_shown(name)} must be a {what}, found a {type(item).__name__}")
    return item


def _dataset(group: h5py.Group, key: str, path: Path) -> h5py.Dataset:
    """A dataset whose data lie in this file: virtual datasets and external raw storage map
    other files (any file on disk) into it, so they are refused."""
    dataset = _get(group, key, path)
    name = dataset.name.lstrip("/")
    if dataset.is_virtual or dataset.external:
        raise DataError(f"{path}: {_shown(name)} stores its data in other files ("
                        f"{'a virtual dataset' if dataset.is_virtual else 'external storage'}); silr reads "
                        f"only what the file itself holds")
    return dataset


def _read(group: h5py.Group, key: str, path: Path) -> np.ndarray:
    """A dataset's values, after its declared size is checked against the memory budget."""
    dataset = _dataset(group, key, path)
    name = dataset.name.lstrip("/")
    limits.check_declared_bytes(str(path), dataset.shape or (), dataset.dtype.itemsize, f"dataset {_shown(name)}")
    try:
        return np.asarray(dataset[()])
    except MemoryError:
        raise DataError(f"{path}: {_shown(name)} is too large to read into memory") from None
    except (OSError, RuntimeError, ValueError, TypeError) as exc:
        raise DataError(f"{path}: cannot read {_shown(name)} (file truncated or corrupt? {_shown(str(exc))})") \
            from None


def _declared_count(group: h5py.Group, key: str, path: Path) -> int:
    """How many elements `group`/`key` declares (0 for an empty dataspace), without reading it."""
    shape = _dataset(group, key, path).shape
    return 0 if shape is None else math.prod(shape)


def _scalar(group: h5py.Group, key: str, path: Path) -> float:
    count = _declared_count(group, key, path)  # before reading: a "scalar" may declare gigabytes
    value = _read(group, key, path) if count == 1 else np.empty(0)
    if value.size != 1 or not np.issubdtype(value.dtype, np.number) or np.iscomplexobj(value):
        found = f"{value.dtype} shape {value.shape}" if count == 1 else f"{count} values"
        raise DataError(f"{path}: {group.name.lstrip('/')}/{key} must be a single number, found {found}")
    number = float(value.reshape(()))
    if not math.isfinite(number):
        raise DataError(f"{path}: {group.name.lstrip('/')}/{key} must be a finite number, found {number}")
    return number


def _text(value: Any) -> str:
    """A string stored as str, bytes or a one-element array of either (h5py returns all three)."""
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(()).item()
    return value.decode(errors="replace") if isinstance(value, (bytes, np.bytes_)) else str(value)


def _check_finite(array: np.ndarray, path: Path, name: str) -> None:
    if not np.issubdtype(array.dtype, np.number):
        raise DataError(f"{path}: {name} must be numeric, found dtype {array.dtype}")
    bad = ~np.isfinite(array)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise DataError(f"{path}: {name} has {int(bad.sum())} non-finite value(s) (first at index {first})")


def _check_labels(labels: np.ndarray, path: Path, name: str) -> np.ndarray:
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: {name} must hold integer labels 0..{anatomy.MAX_LABEL}, found dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() > anatomy.MAX_LABEL):
        values = np.unique(labels[(labels < 0) | (labels > anatomy.MAX_LABEL)])
        raise DataError(f"{path}: {name} has label value(s) {values[:5].tolist()} outside "
                        f"0..{anatomy.MAX_LABEL} ({', '.join(anatomy.LABEL_NAMES.values())})")
    return labels.astype(np.uint8)


def _landmark_order(names: list[str], path: Path, where: str) -> tuple[list[int], list[str]]:
    """Positions of LANDMARK_NAMES in `names`, and the names silr does not use (callers warn
    about those); DataError for duplicate or missing names."""
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise DataError(f"{path}: {where} names landmark(s) {quoted(duplicated, 200)} more than once")
    missing = [n for n in anatomy.LANDMARK_NAMES if n not in names]
    if missing:
        raise DataError(f"{path}: {where} has no landmark(s) {missing} "
                        f"(expected the 14 landmarks {', '.join(anatomy.LANDMARK_NAMES)})")
    unused = sorted(set(names) - set(anatomy.LANDMARK_NAMES))
    return [names.index(n) for n in anatomy.LANDMARK_NAMES], unused


def ignored_landmarks_message(path: Path, names: Iterable[str], where: str) -> str:
    return (f"{path}: {where} also has landmark(s) {quoted(sorted(names), 200)}, not among the 14 silr uses "
            f"({', '.join(anatomy.LANDMARK_NAMES)}); ignored")


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


# ------------------------------------------------------------------ full-resolution layout

def _projection_keys(group: h5py.Group, path: Path, specimen_id: str) -> tuple[str, ...]:
    keys = list(group.keys())
    bad = [k for k in keys if _number_key(k) is None]
    if bad:
        raise DataError(f"{path}: {_shown(specimen_id)}/projections has entries {quoted(bad[:3])} that are not "
                        f"projection numbers (expected 000, 001, ... in ASCII digits)")
    if not keys:
        raise DataError(f"{path}: specimen {_shown(specimen_id)} has no frames ({_shown(specimen_id)}/projections "
                        f"is empty)")
    return tuple(sorted(keys, key=int))


def _frame_size(params: h5py.Group, path: Path) -> tuple[int, int]:
    """proj-params num-rows and num-cols: positive integers whose float32 frame fits the budget."""
    size = []
    for key in ("num-rows", "num-cols"):
        value = _scalar(params, key, path)
        if value < 1 or value != int(value):
            raise DataError(f"{path}: proj-params/{key} must be a positive integer, found {value:g}")
        size.append(int(value))
    limits.check_declared_bytes(str(path), tuple(size), 4, "frame size (proj-params num-rows x num-cols)")
    return size[0], size[1]


def scan_fullres(f: h5py.File, path: Path) -> FullResIndex:
    """Validate the structure of an open full-resolution file and list its frames."""
    params = _get(f, "proj-params", path, h5py.Group)
    num_rows, num_cols = _frame_size(params, path)
    spacing_col, spacing_row = (_scalar(params, key, path) for key in ("pixel-col-spacing", "pixel-row-spacing"))
    if not (spacing_col > 0 and math.isclose(spacing_col, spacing_row, rel_tol=1e-6)):
        raise DataError(f"{path}: proj-params pixel spacing must be positive and square, found "
                        f"col {spacing_col:g} mm, row {spacing_row:g} mm")
    specimen_ids = [key for key, item in _members(f, path) if key != "proj-params" and isinstance(item, h5py.Group)]
    if not specimen_ids:
        raise DataError(f"{path}: no specimen groups next to proj-params (expected groups such as 17-1882)")
    specimens: dict[int, FullResSpecimen] = {}
    for specimen_id, number in specimen_numbers(specimen_ids).items():
        projections = _get(f, f"{specimen_id}/projections", path, h5py.Group)
        specimens[number] = FullResSpecimen(specimen_id, number, _projection_keys(projections, path, specimen_id))
    kind = _text(f.attrs[ATTR_DATA_KIND]) if ATTR_DATA_KIND in f.attrs else DEFAULT_DATA_KIND
    return FullResIndex(num_rows, num_cols, spacing_col, kind, dict(sorted(specimens.items())))


def read_raw_frame(f: h5py.File, path: Path, index: FullResIndex, specimen: int, frame: int) -> RawFrame:
    """Read and validate one projection (image, labels, landmarks, rot-180-for-up)."""
    spec = index.specimens[specimen]
    name = f"{spec.specimen_id}/projections/{spec.projections[frame]}"
    group = _get(f, name, path, h5py.Group)
    shape = (index.num_rows, index.num_cols)

    def frame_array(key: str) -> np.ndarray:
        image = _get(group, key, path, h5py.Group)
        declared = _dataset(image, "pixels", path).shape  # checked before any pixel is read
        if declared != shape:
            raise DataError(f"{path}: {name}/{key}/pixels has shape {declared}, expected {shape} "
                            f"(proj-params num-rows x num-cols)")
        return _read(image, "pixels", path)

    intensity = frame_array("image")
    _check_finite(intensity, path, f"{name}/image/pixels")
    labels = _check_labels(frame_array("gt-seg"), path, f"{name}/gt-seg/pixels")

    lands_group = _get(group, "gt-landmarks", path, h5py.Group)
    names = list(lands_group.keys())
    order, unused = _landmark_order(names, path, f"{name}/gt-landmarks")
    landmarks = np.empty((anatomy.NUM_LANDMARKS, 2))
    for row, position in enumerate(order):
        declared = _dataset(lands_group, names[position], path).shape  # checked before reading
        if declared is None or math.prod(declared) != 2:
            raise DataError(f"{path}: {name}/gt-landmarks/{_shown(names[position])} has shape {declared}, "
                            f"expected a 2x1 (column, row) array")
        value = _read(lands_group, names[position], path)
        landmarks[row] = value.reshape(2)
    _check_finite(landmarks, path, f"{name}/gt-landmarks")

    flag = _scalar(group, "rot-180-for-up", path)
    if flag not in (0.0, 1.0):
        raise DataError(f"{path}: {name}/rot-180-for-up must be 0 or 1, found {flag:g}")
    return RawFrame(specimen, frame, name, intensity.astype(np.float32, copy=False), labels, landmarks, bool(flag),
                    tuple(unused))


def iter_raw_frames(f: h5py.File, path: Path, index: FullResIndex) -> Iterator[RawFrame]:
    """Every frame, specimens and projections in numeric order, one at a time."""
    for number, spec in index.specimens.items():
        for frame in range(len(spec.projections)):
            yield read_raw_frame(f, path, index, number, frame)


def fullres_frame_index(path: str | Path) -> dict[int, tuple[str, ...]]:
    """Specimen number -> its projection keys in numeric order (validates the structure)."""
    path = Path(path)
    with open_hdf5(path) as f:
        if _layout_of(f, path) != FULLRES:
            raise DataError(f"{path}: not a full-resolution file (it holds preprocessed frames)")
        return {number: spec.projections for number, spec in scan_fullres(f, path).specimens.items()}


def read_fullres_frame(path: str | Path, specimen: int, frame: int) -> tuple[np.ndarray, bool]:
    """One raw frame (float32 intensities as stored) and its rot-180-for-up flag."""
    path = Path(path)
    with open_hdf5(path) as f:
        index = scan_fullres(f, path)
        if specimen not in index.specimens:
            raise DataError(f"{path}: no specimen {specimen} (the file holds {sorted(index.specimens)})")
        count = len(index.specimens[specimen].projections)
        if not 0 <= frame < count:
            raise DataError(f"{path}: specimen {specimen} has {count} frames, no frame {frame}")
        raw = read_raw_frame(f, path, index, specimen, frame)
        return raw.intensity, raw.rotate


# ------------------------------------------------------------------ full-resolution layout: writer

def write_image_group(group: h5py.Group, pixels: np.ndarray, spacing: Sequence[float],
                      origin: Sequence[float]) -> None:
    """An image as the full-resolution layout stores every image: pixels, origin, spacing, dir-mat."""
    chunks = _FULLRES_IMAGE_CHUNKS if pixels.ndim == 2 else True
    group.create_dataset("pixels", data=pixels, chunks=chunks, **_FULLRES_GZIP)
    group.create_dataset("origin", data=np.asarray(origin, dtype=np.float64))
    group.create_dataset("spacing", data=np.asarray(spacing, dtype=np.float64))
    group.create_dataset("dir-mat", data=np.eye(pixels.ndim))


def write_proj_params(group: h5py.Group, *, intrinsic: np.ndarray, extrinsic: np.ndarray, num_rows: int,
                      num_cols: int, spacing_mm: float) -> None:
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
    """A specimen's CT volume, its bone labels and its 3D landmarks (`landmarks` by name, (3,) each)
    into its specimen group: `vol`, `vol-seg`, `vol-landmarks`."""
    write_image_group(group.create_group("vol"), hounsfield, spacing, origin)
    seg = group.create_group("vol-seg")
    write_image_group(seg.create_group("image"), labels, spacing, origin)
    names = seg.create_group("labels-def")
    for label in anatomy.BONE_LABELS:
        names.create_dataset(str(label), data=anatomy.LABEL_NAMES[label])
    lands = group.create_group("vol-landmarks")
    for name in anatomy.LANDMARK_NAMES:
        lands.create_dataset(name, data=np.asarray(landmarks[name]).reshape(3, 1))


def write_projection(group: h5py.Group, *, intensity: np.ndarray, labels: np.ndarray, landmarks_xy: np.ndarray,
                     spacing_mm: float, cam_to_pelvis_vol: np.ndarray, cam_to_femur_vol: Mapping[str, np.ndarray],
                     femur_good_fov: Mapping[str, bool], rotate: bool) -> None:
    """One frame into `<id>/projections/<NNN>`: raw intensities and labels as stored (not turned),
    landmarks_xy (14, 2) (column, row) in `anatomy.LANDMARK_NAMES` order, the ground-truth poses
    (`cam_to_femur_vol` and `femur_good_fov` keyed by FEMUR_SIDES) and `rot-180-for-up`."""
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


# ------------------------------------------------------------------ preprocessed layout

def _infer_downsample(width: int, path: Path) -> int:
    # The published files carry no attributes: 1436 cropped pixels / factor, rounded.
    cropped = anatomy.FULLRES_SIZE_PX - 2 * PUBLISHED_CROP
    factor = max(1, round(cropped / width))
    if coords.downsampled_length(anatomy.FULLRES_SIZE_PX, PUBLISHED_CROP, factor) != width:
        raise DataError(f"{path}: frames {width} px wide match no downsampling of the {cropped} px cropped "
                        f"detector (e.g. 718, 359, 180, 90) and the file has no {ATTR_DOWNSAMPLE} attribute")
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
        raise DataError(f"{path}: root attribute {key} must be {kind} {'>=' if allow_zero else '>'} 0, "
                        f"found {quoted(value)}")
    return int(number) if integer else number


def _specimen_ids_attr(attrs: Mapping[str, Any], path: Path) -> dict[int, str]:
    if ATTR_SPECIMEN_IDS not in attrs:
        return {}
    try:
        ids = {int(k): str(v) for k, v in json.loads(_text(attrs[ATTR_SPECIMEN_IDS])).items()}
    except (ValueError, AttributeError, TypeError, RecursionError) as exc:
        raise DataError(f"{path}: root attribute {ATTR_SPECIMEN_IDS} is not a JSON number -> id map "
                        f"({_shown(str(exc))})") from None
    return ids


@dataclass(frozen=True)
class ProcessedLayout:
    """What a preprocessed file declares, checked before any frame is read."""

    names: list[str]           # land-names, in file order
    order: list[int]           # positions of LANDMARK_NAMES in `names`
    groups: dict[int, str]     # specimen number -> group key, in numeric order
    counts: dict[int, int]     # frames per specimen
    frame_shape: tuple[int, int]
    attrs: dict[str, Any]


def _land_names(f: h5py.File, path: Path) -> tuple[list[str], list[int]]:
    names_group = _get(f, "land-names", path, h5py.Group)
    num_lands = _scalar(names_group, "num-lands", path)
    if num_lands != int(num_lands) or not 1 <= num_lands <= 1000:
        raise DataError(f"{path}: land-names/num-lands must be a whole number in 1..1000, found {num_lands:g}")
    names = [_text(_read(names_group, f"land-{i:02d}", path)) for i in range(int(num_lands))]
    order, unused = _landmark_order(names, path, "land-names")
    if unused:
        warnings.warn(ignored_landmarks_message(path, unused, "land-names"), IgnoredLandmarkWarning, stacklevel=3)
    return names, order


def _specimen_groups(f: h5py.File, path: Path) -> dict[int, str]:
    groups: dict[int, str] = {}
    for key, item in _members(f, path):
        number = _number_key(key)
        if isinstance(item, h5py.Group) and key != "land-names":
            if number is None:
                if key.isdigit():  # looks like a number to Python, is none to int()/sorting
                    raise DataError(f"{path}: group {_shown(key)} is not a specimen number in ASCII digits "
                                    f"(expected 01 .. 06)")
                continue
            if number in groups:
                raise DataError(f"{path}: groups {_shown(groups[number])} and {_shown(key)} both name "
                                f"specimen {number}")
            groups[number] = key
    if not groups:
        raise DataError(f"{path}: no specimen groups (expected 01 .. 06 next to land-names)")
    return dict(sorted(groups.items()))


def _declared_specimen(f: h5py.File, path: Path, key: str, num_lands: int) -> tuple[int, ...]:
    """The declared (N, H, W) of `key`/projs, with segs and lands checked against it (no data read)."""
    shape = _dataset(f, f"{key}/projs", path).shape or ()
    if len(shape) != 3:
        raise DataError(f"{path}: {_shown(key)}/projs has shape {shape}, expected N x rows x cols")
    if shape[0] == 0:
        raise DataError(f"{path}: specimen {_shown(key)} has no frames ({_shown(key)}/projs is empty)")
    segs = _dataset(f, f"{key}/segs", path).shape
    if segs != shape:
        raise DataError(f"{path}: {_shown(key)}/segs has shape {segs}, expected {shape} (as {_shown(key)}/projs)")
    lands, expected = _dataset(f, f"{key}/lands", path).shape, (shape[0], 2, num_lands)
    if lands != expected:
        raise DataError(f"{path}: {_shown(key)}/lands has shape {lands}, expected {expected} "
                        f"(frames x (column, row) x landmarks)")
    return shape


def processed_layout(f: h5py.File, path: Path) -> ProcessedLayout:
    """Validate the structure of an open preprocessed file from declared shapes only, and check
    that all its frames (float32 images and uint8 labels) fit the memory budget."""
    if _layout_of(f, path) != PROCESSED:
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
            raise DataError(f"{path}: {_shown(key)}/projs frames are {shape[1:]}, other specimens' are {frame_shape}")
        counts[number] = shape[0]
    limits.check_declared_bytes(str(path), (sum(counts.values()), *frame_shape), 4 + 1,
                                "preprocessed frames (float32 images + uint8 labels of all specimens)")
    attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}
    return ProcessedLayout(names, order, groups, counts, tuple(frame_shape), attrs)  # type: ignore[arg-type]


def read_processed_specimen(f: h5py.File, path: Path, layout: ProcessedLayout, number: int) -> SpecimenFrames:
    """One specimen's frames, labels and landmarks, validated."""
    key = layout.groups[number]
    group = _get(f, key, path, h5py.Group)
    projs = _read(group, "projs", path)
    _check_finite(projs, path, f"{key}/projs")
    labels = _check_labels(_read(group, "segs", path), path, f"{key}/segs")
    lands = _read(group, "lands", path)
    _check_finite(lands, path, f"{key}/lands")
    landmarks_xy = np.asarray(lands, dtype=np.float64)[:, :, layout.order].transpose(0, 2, 1)
    return SpecimenFrames(number, projs.astype(np.float32, copy=False), labels, np.ascontiguousarray(landmarks_xy))


def read_processed_frame(path: str | Path, number: int, index: int) -> np.ndarray:
    """One float32 (H, W) line-integral frame of specimen `number` (predict reads frames so)."""
    path = Path(path)
    with open_hdf5(path) as f:
        layout = processed_layout(f, path)
        if number not in layout.groups or not 0 <= index < layout.counts[number]:
            raise DataError(f"{path}: no frame {index} of specimen {number} (frames per specimen: {layout.counts})")
        name = f"{layout.groups[number]}/projs"
        try:
            frame = np.asarray(_dataset(f, name, path)[index])
        except (OSError, RuntimeError, ValueError, TypeError) as exc:
            raise DataError(f"{path}: cannot read {_shown(name)} frame {index} (file truncated or corrupt? "
                            f"{_shown(str(exc))})") from None
    _check_finite(frame, path, f"{name} frame {index}")
    return frame.astype(np.float32, copy=False)


def processed_frame_index(path: str | Path) -> dict[int, int]:
    """Specimen number -> frames, from a preprocessed file's declared shapes (no frame read)."""
    path = Path(path)
    with open_hdf5(path) as f:
        return dict(processed_layout(f, path).counts)


def processed_data(path: Path, layout: ProcessedLayout, specimens: dict[int, SpecimenFrames]) -> ProcessedData:
    """The ProcessedData of `layout` (root attributes, or the published files' conventions)."""
    attrs = layout.attrs
    if ATTR_DOWNSAMPLE in attrs:
        downsample = int(attr_number(attrs, ATTR_DOWNSAMPLE, path, 1, integer=True))
    else:
        downsample = _infer_downsample(layout.frame_shape[1], path)
    spacing = attr_number(attrs, ATTR_PIXEL_SPACING, path, anatomy.FULLRES_PIXEL_SPACING_MM * downsample)
    ids = _specimen_ids_attr(attrs, path)
    specimen_ids = {n: ids.get(n, anatomy.SPECIMEN_IDS.get(n, anatomy.specimen_group(n))) for n in layout.groups}
    return ProcessedData(
        specimens=specimens, downsample=downsample, pixel_spacing_mm=spacing,
        data_kind=_text(attrs.get(ATTR_DATA_KIND, DEFAULT_DATA_KIND)),
        source=_text(attrs.get(ATTR_SOURCE, str(path))), specimen_ids=specimen_ids, attrs=attrs)


def read_processed(path: str | Path) -> ProcessedData:
    """Read a preprocessed file (ours or the published `ipcai_2020_ds_*.h5`), validating everything.
    Declared sizes are checked against the memory budget before any frame is read."""
    path = Path(path)
    with open_hdf5(path) as f:
        layout = processed_layout(f, path)
        specimens = {number: read_processed_specimen(f, path, layout, number) for number in layout.groups}
    return processed_data(path, layout, specimens)


def write_processed(path: str | Path, specimens: Iterable[SpecimenFrames], attrs: dict[str, Any]) -> dict[int, int]:
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
            group.create_dataset("projs", data=spec.images.astype(np.float32), chunks=frame_chunks, **_GZIP)
            group.create_dataset("segs", data=spec.labels.astype(np.uint8), chunks=frame_chunks, **_GZIP)
            # lands[n][0][l] is the column, lands[n][1][l] the row of landmark l.
            group.create_dataset("lands", data=spec.landmarks_xy.transpose(0, 2, 1).astype(np.float64))
            counts[spec.specimen] = spec.num_frames
    return counts
