"""Stage `ingest`: DeepFluoro frames into the published preprocessed layout.

A full-resolution file (the real `ipcai_2020_full_res_data.h5` or the phantom of
`silr synth`) is read one frame at a time and preprocessed as the published files were:
the border cropped, the raw intensities log-transformed (line integral = log I0 - log I),
the frame downsampled (image: Gaussian smoothing with sigma = factor / 2 px, then the
sample at every factor-th pixel from the crop's corner; labels: the label at those
pixels; landmarks: (x - crop) / factor), and only then turned where `rot-180-for-up` is
set. See silr.data.preprocess for the exact rules and silr.core.coords for the mapping.

A file that is already preprocessed (`ipcai_2020_ds_8x.h5`) is validated and copied
through when its factor is the one asked for.

The output holds `land-names/`, `<NN>/projs`, `<NN>/segs`, `<NN>/lands` exactly as the
published files (specimens numbered as in the paper, 01 .. 06), plus root attributes
naming the source, the data kind, factor, pixel spacing, crop, I0 and the specimen ids.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from silr.core import anatomy, coords, limits
from silr.core.errors import ConfigError, DataError, IgnoredLandmarkWarning, SilrWarning
from silr.core.io import atomic_path, check_replaceable, ensure_writable
from silr.core.params import DataParams
from silr.data import deepfluoro, fullres, preprocess, processed
from silr.data.fullres import FullResIndex
from silr.data.processed import SpecimenFrames

__all__ = ["IngestSummary", "add_arguments", "copy_processed", "ingest_fullres", "main", "run"]


@dataclass(frozen=True)
class IngestSummary:
    out: Path
    mode: str                        # "downsampled" or "copied"
    frames_per_specimen: dict[int, int]
    frame_shape: tuple[int, int]
    landmarks_out_of_frame: int
    landmarks_total: int
    clipped_pixels: int

    def describe(self) -> str:
        frames = sum(self.frames_per_specimen.values())
        return (f"silr ingest: {self.mode} {len(self.frames_per_specimen)} specimens, {frames} "
                f"frames of {self.frame_shape[0]}x{self.frame_shape[1]} into {self.out}; "
                f"{self.landmarks_out_of_frame} of {self.landmarks_total} landmarks out of frame")


def downsample_specimens(f: h5py.File, raw: Path, index: FullResIndex, *, crop: int, i0: float,
                         factor: int, tally: dict[str, int],
                         ignored: set[str]) -> Iterator[SpecimenFrames]:
    """Yield each specimen's downsampled frames; full-res frames are read one at a time."""
    size = (index.num_rows, index.num_cols)
    if min(size) <= 2 * crop:
        raise ConfigError(f"data.crop {crop} px per border leaves nothing of the "
                          f"{size[0]}x{size[1]} frames of {raw}")
    out_h = coords.downsampled_length(index.num_rows, crop, factor)
    out_w = coords.downsampled_length(index.num_cols, crop, factor)
    if min(out_h, out_w) < 1:
        raise ConfigError(f"data.downsample {factor} leaves less than one pixel of the "
                          f"{size[0] - 2 * crop}x{size[1] - 2 * crop} cropped frames of {raw}")
    for number, spec in index.specimens.items():
        count = len(spec.projections)
        limits.check_declared_bytes(str(raw), (count, out_h, out_w), 4 + 1,
                                    f"downsampled frames of specimen {spec.specimen_id}")
        images = np.empty((count, out_h, out_w), np.float32)
        labels = np.empty((count, out_h, out_w), np.uint8)
        landmarks = np.empty((count, anatomy.NUM_LANDMARKS, 2))
        for frame in range(count):
            raw_frame = fullres.read_raw_frame(f, raw, index, number, frame)
            images[frame], clipped = preprocess.ingest_raw_frame(
                raw_frame.intensity, crop=crop, i0=i0, factor=factor, rotate=raw_frame.rotate)
            labels[frame] = preprocess.downsample_labels(raw_frame.labels, crop=crop, factor=factor,
                                                         rotate=raw_frame.rotate)
            landmarks[frame] = preprocess.preprocess_landmarks(
                raw_frame.landmarks_xy, crop=crop, factor=factor, rotate=raw_frame.rotate,
                width=index.num_cols, height=index.num_rows)
            tally["clipped"] += clipped
            tally["clipped_frames"] += bool(clipped)
            if raw_frame.ignored_landmarks:
                tally["ignored_frames"] += 1
                ignored.update(raw_frame.ignored_landmarks)
        inside = coords.in_frame(landmarks, out_w, out_h)
        tally["landmarks"] += inside.size
        tally["out_of_frame"] += int((~inside).sum())
        yield SpecimenFrames(number, images, labels, landmarks)


def _root_attrs(*, source: Path, data_kind: str, factor: int, spacing_mm: float, crop: int,
                i0: float, specimen_ids: dict[int, str], mode: str) -> dict[str, Any]:
    return {
        deepfluoro.ATTR_SOURCE: str(source),
        deepfluoro.ATTR_DATA_KIND: data_kind,
        deepfluoro.ATTR_DOWNSAMPLE: np.int64(factor),
        deepfluoro.ATTR_PIXEL_SPACING: float(spacing_mm),
        deepfluoro.ATTR_CROP: np.int64(crop),
        deepfluoro.ATTR_I0: float(i0),
        deepfluoro.ATTR_SPECIMEN_IDS: json.dumps({str(n): sid
                                                  for n, sid in sorted(specimen_ids.items())}),
        deepfluoro.ATTR_LABEL_RULE: preprocess.LABEL_RULE,
        deepfluoro.ATTR_IMAGE_RULE: preprocess.IMAGE_RULE,
        deepfluoro.ATTR_INTENSITY_FLOOR: preprocess.INTENSITY_FLOOR,
        deepfluoro.ATTR_INGEST_MODE: mode,
    }


def ingest_fullres(raw: Path, out: Path, *, factor: int, crop: int, i0: float) -> IngestSummary:
    tally = {"clipped": 0, "clipped_frames": 0, "landmarks": 0, "out_of_frame": 0,
             "ignored_frames": 0}
    ignored: set[str] = set()
    with deepfluoro.open_hdf5(raw) as f:
        index = fullres.scan_fullres(f, raw)
        if index.data_kind not in deepfluoro.DATA_KINDS:
            raise DataError(f"{raw}: root attribute {deepfluoro.ATTR_DATA_KIND} is "
                            f"{index.data_kind!r}, expected one of "
                            f"{', '.join(deepfluoro.DATA_KINDS)}")
        attrs = _root_attrs(source=raw, data_kind=index.data_kind, factor=factor,
                            spacing_mm=index.pixel_spacing_mm * factor, crop=crop, i0=i0,
                            specimen_ids=index.specimen_ids, mode="downsampled")
        specimens = downsample_specimens(f, raw, index, crop=crop, i0=i0, factor=factor,
                                         tally=tally, ignored=ignored)
        with atomic_path(out) as tmp:
            counts = processed.write_processed(tmp, specimens, attrs)
    if ignored:
        where = f"gt-landmarks of {tally['ignored_frames']} frame(s)"
        warnings.warn(deepfluoro.ignored_landmarks_message(raw, ignored, where),
                      IgnoredLandmarkWarning, stacklevel=2)
    if tally["clipped"]:
        floor = preprocess.INTENSITY_FLOOR
        warnings.warn(f"{raw}: {tally['clipped']} raw intensities below {floor:g} in "
                      f"{tally['clipped_frames']} frame(s) clipped to {floor:g} "
                      f"before the log transform", preprocess.ClippedIntensityWarning,
                      stacklevel=2)
    shape = (coords.downsampled_length(index.num_rows, crop, factor),
             coords.downsampled_length(index.num_cols, crop, factor))
    return IngestSummary(out, "downsampled", counts, shape, tally["out_of_frame"],
                         tally["landmarks"], tally["clipped"])


def copy_processed(raw: Path, out: Path, *, factor: int, crop: int, i0: float) -> IngestSummary:
    """Validate a preprocessed file and copy it through, one specimen in memory at a time."""
    with deepfluoro.open_hdf5(raw) as f:
        layout = processed.processed_layout(f, raw)
        data = processed.processed_data(raw, layout, {})
        if data.downsample != factor:
            raise ConfigError(f"{raw}: preprocessed at {data.downsample}x, but data.downsample "
                              f"is {factor}; set data.downsample to {data.downsample} or ingest "
                              f"the full-resolution file")
        # A file we wrote knows its crop and I0; the published files used the documented ones.
        crop = int(processed.attr_number(data.attrs, deepfluoro.ATTR_CROP, raw, crop,
                                         integer=True, allow_zero=True))
        i0 = processed.attr_number(data.attrs, deepfluoro.ATTR_I0, raw, i0)
        source = Path(data.source) if deepfluoro.ATTR_SOURCE in data.attrs else raw
        attrs = _root_attrs(source=source, data_kind=data.data_kind, factor=factor,
                            spacing_mm=data.pixel_spacing_mm, crop=crop, i0=i0,
                            specimen_ids=data.specimen_ids, mode="copied")
        height, width = layout.frame_shape
        tally = {"landmarks": 0, "out_of_frame": 0}

        def specimens() -> Iterator[SpecimenFrames]:
            for number in layout.groups:
                spec = processed.read_processed_specimen(f, raw, layout, number)
                inside = coords.in_frame(spec.landmarks_xy, width, height)
                tally["landmarks"] += inside.size
                tally["out_of_frame"] += int((~inside).sum())
                yield spec

        with atomic_path(out) as tmp:
            counts = processed.write_processed(tmp, specimens(), attrs)
    return IngestSummary(out, "copied", counts, (height, width), tally["out_of_frame"],
                         tally["landmarks"], 0)


def check_output_path(out: Path) -> None:
    """Refuse an --out that exists and is not ours to replace (a device node, FIFO, socket or
    directory; as root, `--out /dev/null` would otherwise become a file): silr.core.io's rule."""
    check_replaceable(out)


def run(raw: Path, out: Path, *, factor: int, crop: int, i0: float) -> IngestSummary:
    """The stage: read `raw` (either layout), write the preprocessed file `out` atomically."""
    # The --downsample/--crop/--i0 flags bypass params.yaml: check them by the data section's
    # own rules.
    DataParams.from_dict({"downsample": factor, "crop": crop, "i0": i0}, "data")
    raw, out = Path(raw), Path(out)
    check_output_path(out)
    if raw.resolve() == out.resolve():
        raise ConfigError(f"{out}: the output would overwrite the input; choose another --out")
    layout = deepfluoro.detect_layout(raw)
    ensure_writable(out)  # a blocked output fails before minutes of reading, not after
    ingest = copy_processed if layout == deepfluoro.PROCESSED else ingest_fullres
    return ingest(raw, out, factor=factor, crop=crop, i0=i0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = DataParams()
    parser.add_argument("--raw", required=True, type=Path,
                        help="input: a full-resolution DeepFluoro/phantom file or a "
                             "preprocessed one")
    parser.add_argument("--out", required=True, type=Path,
                        help="output preprocessed HDF5 file")
    parser.add_argument("--downsample", type=int, default=defaults.downsample,
                        help="downsampling factor per axis (default %(default)s: 180x180 frames)")
    parser.add_argument("--crop", type=int, default=defaults.crop,
                        help="pixels cut from every border of the detector frame "
                             "(default %(default)s)")
    parser.add_argument("--i0", type=float, default=defaults.i0,
                        help="unattenuated intensity of the log transform (default %(default)g)")


def main(args: argparse.Namespace) -> int:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SilrWarning)
        summary = run(args.raw, args.out, factor=args.downsample, crop=args.crop, i0=args.i0)
    for warning in caught:
        if issubclass(warning.category, SilrWarning):
            print(f"silr: warning: {warning.message}", file=sys.stderr)
        else:  # not ours: show it as Python would have
            warnings.showwarning(warning.message, warning.category, warning.filename,
                                 warning.lineno)
    print(summary.describe())
    return 0
