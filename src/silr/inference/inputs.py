"""Inputs of `silr predict`: finding the frames in the given files, preparing each one as
the model's line-integral frame, and mapping answers back to the input's own pixels.

How each input kind is treated:
  PNG / TIFF / JPEG         a line-integral image (bone bright), as a DeepFluoro viewer
  (8 or 16 bit)             shows it; with raw=True: a raw detector frame (bone dark).
  DICOM (.dcm)              the same, after the modality LUT, with MONOCHROME1 inverted
                            to MONOCHROME2 and the pixel spacing kept (silr.data.imageio).
  a folder                  every file of a supported type directly inside it, sorted.
  NumPy .npy (H,W)/(N,H,W)  the same; a stack gives one frame per index.
  preprocessed HDF5         (`<NN>/projs`): line-integral frames.
  full-resolution HDF5      (`<id>/projections/<NNN>/image/pixels`): raw detector frames,
                            with the file's rot-180-for-up honoured.
A raw frame goes through ingestion's own crop, log and downsample with the model card's
values (silr.model.card.Preprocessing). A frame whose size is not the model's frame is
resampled to it (area mean when shrinking, bilinear otherwise; the scale is recorded).

Back to the input (`frame_to_input`, `input_to_frame`, `labels_to_input`): frame
coordinates go to the line-integral image by `coords.rescale` and, for raw frames, to the
detector by `coords.ingested_to_fullres` (crop, factor, turn); the label map is resampled
onto the input grid by nearest neighbour through the inverse of that same mapping: input
pixel centre -> frame position -> the nearest frame pixel's label, and background (0)
where the input pixel lies outside the frame (e.g. the cropped border of a raw frame).
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from silr.core import coords
from silr.core.errors import DataError, SilrError, quoted
from silr.data import imageio

if TYPE_CHECKING:  # annotations only: the card (params, yaml) loads with the models, not --help
    from silr.model.card_specs import Preprocessing

__all__ = [
    "LINE_INTEGRAL", "RAW_FRAME", "Failure", "InputFrame", "InputSpec", "PreparedFrame",
    "enumerate_inputs", "frame_to_input", "input_to_frame", "labels_to_input", "parse_frames",
    "prepare_frame", "resample", "treatment", "unique_stems",
]

LINE_INTEGRAL = "line-integral image"
RAW_FRAME = "raw detector frame"


@dataclass(frozen=True)
class InputFrame:
    """One frame to predict, as read: pixels in the input image's own grid."""

    stem: str
    source: str  # the file, plus specimen / frame where the file holds several
    pixels: np.ndarray  # float32 (H, W)
    raw: bool  # raw detector intensity (crop, log, downsample) rather than a line integral
    rotate: bool = False  # turn 180 degrees first (full-resolution rot-180-for-up)
    pixel_spacing_mm: tuple[float, float] | None = None  # (row, column), where the file states it


@dataclass(frozen=True)
class InputSpec:
    """A frame found in the inputs, read only when its batch comes (HDF5 files are big)."""

    stem: str
    source: str
    raw: bool
    read: Callable[[], tuple]  # -> (pixels, turn 180 degrees first[, pixel spacing mm])

    def load(self) -> InputFrame:
        pixels, rotate, *spacing = self.read()
        pixels = np.asarray(pixels, dtype=np.float32)
        imageio.check_values(self.source, pixels)  # every kind, HDF5 frames too
        return InputFrame(self.stem, self.source, pixels, self.raw, bool(rotate),
                          spacing[0] if spacing else None)


@dataclass(frozen=True)
class Failure:
    source: str
    message: str
    # the output stem, where the input got that far (its outputs are removed)
    stem: str | None = None


@dataclass(frozen=True)
class PreparedFrame:
    """An input turned into the model's line-integral frame, and how."""

    input: InputFrame
    frame: np.ndarray  # float32 (frame, frame)
    line_integral_size: tuple[int, int]  # (W, H) before resampling to the frame
    resampling: str  # "none", "area" or "bilinear"


# ------------------------------------------------------------------ inputs

def parse_frames(text: str) -> tuple[int, ...]:
    """'0,1,2' or '3-5' (inclusive) or a mix -> frame indices, for --frames."""
    indices: list[int] = []
    try:
        for part in filter(None, (p.strip() for p in text.split(","))):
            if "-" in part[1:]:
                low, high = part.split("-", 1)
                indices.extend(range(int(low), int(high) + 1))
            else:
                indices.append(int(part))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected frame indices like 0,1,2 or 3-5, "
                                         f"got {text!r}") from None
    if not indices or min(indices) < 0:
        raise argparse.ArgumentTypeError(f"expected non-negative frame indices, got {text!r}")
    return tuple(indices)


def _link_problem(path: Path) -> str | None:
    """Why a symbolic link cannot be followed (a loop, or a target that does not exist), or None."""
    if not path.is_symlink():
        return None
    try:
        path.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return f"{path}: symlink loop (the link leads back to itself); not read"
        if exc.errno == errno.ENOENT:
            return (f"{path}: dangling symlink (its target {quoted(os.readlink(path))} does not "
                    f"exist); not read")
        return f"{path}: symlink cannot be followed ({exc.strerror or exc})"
    return None


def _folder_entries(folder: Path) -> tuple[list[Path], list[Failure]]:
    """The files of supported types directly in `folder`, sorted, and a Failure for each entry
    that a symbolic link loop or a dangling link hides (rather than skipping it silently)."""
    try:
        entries = sorted(folder.iterdir())
    except OSError as exc:
        return [], [Failure(str(folder),
                            f"{folder}: folder cannot be listed ({exc.strerror or exc})")]
    found: list[Path] = []
    failures: list[Failure] = []
    for entry in entries:
        problem = _link_problem(entry)
        if problem and (entry.suffix.lower() in imageio.SUPPORTED_SUFFIXES or "loop" in problem):
            failures.append(Failure(str(entry), problem))
        elif entry.suffix.lower() in imageio.SUPPORTED_SUFFIXES and entry.is_file():
            found.append(entry)
    if not found and not failures:
        failures.append(Failure(str(folder), f"{folder}: folder holds no file of a supported type "
                                             f"({', '.join(imageio.SUPPORTED_SUFFIXES)})"))
    return found, failures


def enumerate_inputs(paths: Sequence[Path], *, raw: bool, specimens: Sequence[int] | None,
                     frames: Sequence[int] | None) -> Iterator[InputSpec | Failure]:
    """Every frame the inputs hold (after --specimen / --frames), or why a file gives none.
    A folder stands for the files of supported types directly inside it, sorted by name.
    Nothing here reads pixels (each spec's load() does): a file is listed from its header.
    Whatever goes wrong with one file is a Failure of that file, never the end of the batch."""
    expanded: list[Path] = []
    for path in paths:
        if path.is_dir():
            found, failures = _folder_entries(path)
            yield from failures
            expanded.extend(found)
        else:
            expanded.append(path)
    for path in expanded:
        try:
            yield from _file_specs(path, raw, specimens, frames)
        except SilrError as exc:
            yield Failure(str(path), str(exc))
        except MemoryError:
            yield Failure(str(path),
                          f"{path}: ran out of memory while listing its frames; not read")
        except Exception as exc:  # noqa: BLE001 - one bad file must not end the batch
            yield Failure(str(path), f"{path}: cannot be listed ({exc.__class__.__name__}: "
                                     f"{quoted(str(exc), 160)})")


def _file_specs(path: Path, raw: bool, specimens: Sequence[int] | None,
                frames: Sequence[int] | None) -> Iterator[InputSpec | Failure]:
    kind = imageio.input_kind(path)
    problem = _link_problem(path)
    if problem:
        raise DataError(problem)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if kind == "pil":
        yield InputSpec(path.stem, str(path), raw, lambda: (imageio.read_pil_image(path), False))
    elif kind == "dicom":
        yield InputSpec(path.stem, str(path), raw, lambda: _swap(imageio.read_dicom(path)))
    elif kind == "npy":
        yield from _npy_specs(path, raw, frames)
    else:
        yield from _hdf5_specs(path, raw, specimens, frames)


def _swap(read: tuple[np.ndarray, tuple[float, float] | None]) -> tuple:
    return read[0], False, read[1]


def _npy_specs(path: Path, raw: bool,
               frames: Sequence[int] | None) -> Iterator[InputSpec | Failure]:
    """From the header only: each frame is read (memory-mapped) when its spec is loaded."""
    shape = imageio.read_npy_header(path).shape
    if len(shape) == 2:
        yield InputSpec(path.stem, str(path), raw, lambda: (imageio.read_npy_frame(path), False))
        return
    for index in frames if frames is not None else range(shape[0]):
        source = f"{path} [frame {index}]"
        if index >= shape[0]:
            yield Failure(source, f"{path}: stack has {shape[0]} frames (0..{shape[0] - 1}), "
                                  f"no frame {index}")
            continue
        yield InputSpec(f"{path.stem}_f{index:03d}", source, raw,
                        lambda index=index: (imageio.read_npy_frame(path, index), False))


def _hdf5_specs(path: Path, raw: bool, specimens: Sequence[int] | None,
                frames: Sequence[int] | None) -> Iterator[InputSpec | Failure]:
    """From the file's structure only: each frame is read when its spec is loaded."""
    # h5py loads here, with the first HDF5 input, not with `silr predict --help`
    from silr.data import deepfluoro, fullres, processed

    layout = deepfluoro.detect_layout(path)
    if layout == deepfluoro.PROCESSED:
        if raw:
            raise DataError(f"{path}: --raw does not apply to a preprocessed file (its frames "
                            f"are line integrals)")
        available = processed.processed_frame_index(path)

        def read_frame(number: int, index: int) -> tuple[np.ndarray, bool]:
            return processed.read_processed_frame(path, number, index), False
    else:
        frame_index = fullres.fullres_frame_index(path)
        available = {number: len(items) for number, items in frame_index.items()}

        def read_frame(number: int, index: int) -> tuple[np.ndarray, bool]:
            return fullres.read_fullres_frame(path, number, index)
    raw_frames = layout != deepfluoro.PROCESSED
    for number in specimens if specimens else sorted(available):
        if number not in available:
            yield Failure(f"{path} [specimen {number}]",
                          f"{path}: no specimen {number} (the file holds {sorted(available)})")
            continue
        count = available[number]
        for index in frames if frames is not None else range(count):
            source = f"{path} [specimen {number}, frame {index}]"
            if index >= count:
                yield Failure(source, f"{path}: specimen {number} has {count} frames "
                                      f"(0..{count - 1}), no frame {index}")
                continue
            stem = f"{path.stem}_s{number:02d}_f{index:03d}"
            yield InputSpec(stem, source, raw_frames,
                            lambda number=number, index=index: read_frame(number, index))


def _file_suffix(source: str) -> str:
    """The input file's suffix without the dot ("png"), from a source like "a.h5 [frame 3]"."""
    return Path(source.split(" [", 1)[0]).suffix.lstrip(".").lower()


def unique_stems(specs: list[InputSpec | Failure]) -> list[InputSpec | Failure]:
    """Inputs whose stems collide all carry their file type in the stem, so that the outputs say
    which input they belong to (s1_f3.png, s1_f3.jpg -> s1_f3_png_*, s1_f3_jpg_*); a stem that
    still repeats (the same name in two folders) gets _2, _3, ... in input order."""
    counts = Counter(spec.stem for spec in specs if isinstance(spec, InputSpec))
    seen: dict[str, int] = {}
    result: list[InputSpec | Failure] = []
    for spec in specs:
        if isinstance(spec, InputSpec):
            stem, suffix = spec.stem, _file_suffix(spec.source)
            if counts[stem] > 1 and suffix:
                stem = f"{stem}_{suffix}"
            seen[stem] = seen.get(stem, 0) + 1
            if seen[stem] > 1:
                stem = f"{stem}_{seen[stem]}"
            spec = dataclasses.replace(spec, stem=stem)
        result.append(spec)
    return result


# ------------------------------------------------------------------ preparation

def resample(image: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, str]:
    """(H, W) -> size (H', W'): area mean when shrinking both axes, bilinear otherwise.

    Both keep the pixel-centre convention of `coords.rescale` (bilinear with
    align_corners=False; the area mean of an integer block sits at the block's centre).
    """
    if tuple(image.shape) == tuple(size):
        return image.astype(np.float32), "none"
    # torch loads here, with the first frame to resample, not with `silr predict --help`
    import torch
    import torch.nn.functional as F

    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    if size[0] <= image.shape[0] and size[1] <= image.shape[1]:
        out, mode = F.interpolate(tensor, size=size, mode="area"), "area"
    else:
        out = F.interpolate(tensor, size=size, mode="bilinear", align_corners=False)
        mode = "bilinear"
    return out[0, 0].numpy(), mode


def prepare_frame(frame: InputFrame, frame_size: int,
                  preprocessing: Preprocessing) -> PreparedFrame:
    """The model's line-integral frame for one input (raw ones through ingestion's transform)."""
    line_integral = frame.pixels
    if frame.raw:
        # scipy loads here, with the first raw frame, not with `silr predict --help`
        from silr.data import preprocess

        if (frame.pixels <= 0).all():
            raise DataError(f"{frame.source}: a raw detector frame needs positive intensities, "
                            f"all are <= 0")
        try:
            line_integral = preprocess.preprocess_raw_frame(
                frame.pixels, crop=preprocessing.crop, i0=preprocessing.i0,
                factor=preprocessing.downsample, rotate=frame.rotate)
        except ValueError as exc:  # e.g. a frame smaller than the crop
            raise DataError(f"{frame.source}: cannot preprocess as a raw detector frame: "
                            f"{exc}") from None
    height, width = line_integral.shape
    resampled, mode = resample(line_integral, (frame_size, frame_size))
    return PreparedFrame(frame, resampled, (width, height), mode)


def frame_to_input(xy_frame: np.ndarray, prepared: PreparedFrame, frame_size: int,
                   preprocessing: Preprocessing) -> np.ndarray:
    """Map (L, 2) frame coordinates back to the input image's own pixel coordinates."""
    xy = coords.rescale(xy_frame, (frame_size, frame_size), prepared.line_integral_size)
    frame = prepared.input
    if not frame.raw:
        return xy
    height, width = frame.pixels.shape
    return coords.ingested_to_fullres(xy, crop=preprocessing.crop, factor=preprocessing.downsample,
                                      turned=frame.rotate, fullres_size=(width, height))


def input_to_frame(xy_input: np.ndarray, prepared: PreparedFrame, frame_size: int,
                   preprocessing: Preprocessing) -> np.ndarray:
    """Inverse of `frame_to_input`: (..., 2) input-pixel coordinates -> frame coordinates."""
    frame = prepared.input
    xy = np.asarray(xy_input, dtype=np.float64)
    if frame.raw:
        height, width = frame.pixels.shape
        xy = coords.ingested_landmarks(xy, crop=preprocessing.crop, factor=preprocessing.downsample,
                                       turned=frame.rotate, fullres_size=(width, height))
    return coords.rescale(xy, prepared.line_integral_size, (frame_size, frame_size))


def labels_to_input(labels: np.ndarray, prepared: PreparedFrame,
                    preprocessing: Preprocessing) -> np.ndarray:
    """The (frame, frame) label map on the input's own grid (H, W): nearest frame pixel of each
    input pixel centre through `input_to_frame`; background (0) outside the frame.

    Every mapping here is separable (x depends on the column only, y on the row only), so one
    row and one column of positions are mapped, not every pixel."""
    height, width = prepared.input.pixels.shape
    size = labels.shape[0]
    columns = input_to_frame(np.stack([np.arange(width), np.zeros(width)], axis=-1), prepared, size,
                             preprocessing)[:, 0]
    rows = input_to_frame(np.stack([np.zeros(height), np.arange(height)], axis=-1), prepared, size,
                          preprocessing)[:, 1]
    col_index = np.floor(columns + 0.5).astype(np.int64)
    row_index = np.floor(rows + 0.5).astype(np.int64)
    col_ok, row_ok = (col_index >= 0) & (col_index < size), (row_index >= 0) & (row_index < size)
    out = labels[np.clip(row_index, 0, size - 1)[:, None], np.clip(col_index, 0, size - 1)[None, :]]
    return np.where(row_ok[:, None] & col_ok[None, :], out, 0).astype(np.uint8)


def treatment(frame: InputFrame, preprocessing: Preprocessing) -> str:
    """How an input was read, in words, for the json and the summary."""
    if not frame.raw:
        return LINE_INTEGRAL
    turned = ", turned 180 degrees (rot-180-for-up)" if frame.rotate else ""
    return (f"{RAW_FRAME} (crop {preprocessing.crop}, log I0={preprocessing.i0:g}, "
            f"downsample {preprocessing.downsample}{turned})")


