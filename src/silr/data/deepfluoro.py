"""The DeepFluoro file format: what both HDF5 layouts share.

Two layouts exist (see docs/method.md, "Data"):

- full resolution (`ipcai_2020_full_res_data.h5`, and the phantom of `silr synth`):
  `proj-params/` plus one group per specimen id with `projections/<NNN>/`, read and written
  by `silr.data.fullres`;
- preprocessed (`ipcai_2020_ds_8x.h5` and the files `silr ingest` writes):
  `land-names/` plus `<NN>/projs`, `<NN>/segs`, `<NN>/lands` per specimen, read and written
  by `silr.data.processed`.

This module holds what both use: opening a file and recognising its layout, the data kinds
and root attribute names, the landmark order and the checks on values read. Links, datasets
and declared sizes are guarded by `silr.data.hdf5`. What happens to a frame between the two
layouts is `silr.data.preprocess`'s job.

The layout is found by looking at the file's groups, never its name. Landmarks are
matched by name and returned in `anatomy.LANDMARK_NAMES` order.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import h5py
import numpy as np

from silr.core import anatomy
from silr.core.errors import DataError, quoted
from silr.data import hdf5

__all__ = [
    "ATTR_CROP", "ATTR_DATA_KIND", "ATTR_DOWNSAMPLE", "ATTR_I0", "ATTR_IMAGE_RULE",
    "ATTR_INGEST_MODE", "ATTR_INTENSITY_FLOOR", "ATTR_LABEL_RULE", "ATTR_PIXEL_SPACING",
    "ATTR_SOURCE", "ATTR_SPECIMEN_IDS", "DATA_KINDS", "DEFAULT_DATA_KIND", "FULLRES", "PROCESSED",
    "check_finite", "check_labels", "detect_layout", "ignored_landmarks_message", "landmark_order",
    "layout_of", "missing_input_message", "number_key", "open_hdf5",
]

FULLRES = "fullres"
PROCESSED = "processed"

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
# "downsampled" (from full-res) or "copied" (already preprocessed)
ATTR_INGEST_MODE = "silr-ingest-mode"


# ------------------------------------------------------------------ opening files, layout

def missing_input_message(path: Path) -> str:
    return (f"{path}: no such file; generate the synthetic phantom with `silr synth` "
            f"(or `dvc repro synth`), or download the DeepFluoro files (see data/raw/README.md)")


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
        raise DataError(f"{path}: HDF5 file cannot be opened, truncated or corrupt "
                        f"({reason})") from None


def layout_of(f: h5py.File, path: Path) -> str:
    """FULLRES or PROCESSED for an open file, from its top-level groups."""
    members = dict(hdf5.members(f, path))
    if isinstance(members.get("land-names"), h5py.Group):
        return PROCESSED
    if isinstance(members.get("proj-params"), h5py.Group) or any(
            isinstance(item, h5py.Group) and "projections" in item for item in members.values()):
        return FULLRES
    raise DataError(f"{path}: unknown layout: expected the full-resolution layout (proj-params, "
                    f"<specimen>/projections) or the preprocessed one (land-names, 01/projs), "
                    f"found top-level entries {quoted(sorted(members))}")


def detect_layout(path: str | Path) -> str:
    """FULLRES or PROCESSED, from the file's groups (not its name)."""
    path = Path(path)
    with open_hdf5(path) as f:
        return layout_of(f, path)


def number_key(key: str) -> int | None:
    """The number a group name such as `001` or `01` stands for, or None. Only ASCII digits
    count: `str.isdigit` also accepts '²' or '٣', which int() refuses or reads differently."""
    return int(key) if key.isascii() and key.isdigit() else None


# ------------------------------------------------------------------ values read

def check_finite(array: np.ndarray, path: Path, name: str) -> None:
    """DataError unless `array` (HDF5 path `name`) is numeric and holds only finite values."""
    if not np.issubdtype(array.dtype, np.number):
        raise DataError(f"{path}: {name} must be numeric, found dtype {array.dtype}")
    bad = ~np.isfinite(array)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise DataError(f"{path}: {name} has {int(bad.sum())} non-finite value(s) "
                        f"(first at index {first})")


def check_labels(labels: np.ndarray, path: Path, name: str) -> np.ndarray:
    """`labels` as uint8, after checking they are integers in 0..MAX_LABEL."""
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: {name} must hold integer labels 0..{anatomy.MAX_LABEL}, "
                        f"found dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() > anatomy.MAX_LABEL):
        values = np.unique(labels[(labels < 0) | (labels > anatomy.MAX_LABEL)])
        raise DataError(f"{path}: {name} has label value(s) {values[:5].tolist()} outside "
                        f"0..{anatomy.MAX_LABEL} ({', '.join(anatomy.LABEL_NAMES.values())})")
    return labels.astype(np.uint8)


def landmark_order(names: list[str], path: Path, where: str) -> tuple[list[int], list[str]]:
    """Positions of LANDMARK_NAMES in `names`, and the names silr does not use (callers warn
    about those); DataError for duplicate or missing names."""
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise DataError(f"{path}: {where} names landmark(s) {quoted(duplicated, 200)} "
                        f"more than once")
    missing = [n for n in anatomy.LANDMARK_NAMES if n not in names]
    if missing:
        raise DataError(f"{path}: {where} has no landmark(s) {missing} "
                        f"(expected the 14 landmarks {', '.join(anatomy.LANDMARK_NAMES)})")
    unused = sorted(set(names) - set(anatomy.LANDMARK_NAMES))
    return [names.index(n) for n in anatomy.LANDMARK_NAMES], unused


def ignored_landmarks_message(path: Path, names: Iterable[str], where: str) -> str:
    return (f"{path}: {where} also has landmark(s) {quoted(sorted(names), 200)}, not among the "
            f"14 silr uses ({', '.join(anatomy.LANDMARK_NAMES)}); ignored")
