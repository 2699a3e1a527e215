"""Readers of single images for `silr predict`: PNG, TIFF, JPEG, DICOM and NumPy `.npy`.

Each reader returns the pixel values as float32 (H, W) or, for a `.npy` stack, (N, H, W)
in the file's own pixel grid, without any scaling: 8-bit and 16-bit integers keep their
values, so a raw 16-bit detector frame can still be log-transformed exactly as in
ingestion. Colour images are turned into one grey channel (ITU-R 601 luma), which is
what a viewer's screenshot of a grey frame holds in each of its channels anyway.
HDF5 files are read by `silr.data.fullres` and `silr.data.processed`, not here.

DICOM (pydicom): the modality LUT (RescaleSlope / RescaleIntercept) is applied, and a
MONOCHROME1 image (minimum value shown white) is inverted to MONOCHROME2 (value bright
= shown bright, stored maximum 2^BitsStored - 1 minus the value), so that "bone bright"
means the same for every input; the pixel spacing (ImagerPixelSpacing, else
PixelSpacing; mm per pixel, row then column) is returned with the pixels.

Hostile files: every reader checks the declared size before decoding: more than
MAX_INPUT_PIXELS pixels per frame (or MAX_INPUT_BYTES of decoded float32 in all) is a
DataError naming the size (a decompression bomb, or a frame too large for memory), and
Pillow's own decompression-bomb guard is turned into the same error.
"""

from __future__ import annotations

import math
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from silr.core.errors import DataError, SilrWarning, quoted

if TYPE_CHECKING:  # pydicom is optional: read_dicom imports it, or says how to install it
    from pydicom import Dataset

__all__ = [
    "DICOM_SUFFIXES", "HDF5_SUFFIXES", "MAX_ABS_VALUE", "MAX_INPUT_BYTES", "MAX_INPUT_PIXELS",
    "MIN_INPUT_SIDE", "NPY_SUFFIXES", "PIL_SUFFIXES", "PROJECTION_MODALITIES", "SUPPORTED_SUFFIXES",
    "NpyHeader", "check_size", "check_values", "input_kind", "read_dicom", "read_npy",
    "read_npy_frame", "read_npy_header", "read_pil_image",
]

PIL_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
DICOM_SUFFIXES = (".dcm", ".dicom")
NPY_SUFFIXES = (".npy",)
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")
SUPPORTED_SUFFIXES = PIL_SUFFIXES + DICOM_SUFFIXES + NPY_SUFFIXES + HDF5_SUFFIXES

# Declared-size limits checked before any pixel is decoded: 8192 x 8192 per frame (a
# full-resolution DeepFluoro frame is 1536 x 1536), 2 GiB of float32 per file.
MAX_INPUT_PIXELS = 8192 * 8192
MAX_INPUT_BYTES = 2 * 1024 ** 3
# The smallest frame side predict accepts: the network's frame is 180 px; below 32 px an "image"
# is more likely a table of numbers (say a 2 x 14 array of coordinates) than a projection.
MIN_INPUT_SIDE = 32
# DICOM modalities that are projection radiographs (X-ray angiography, radio fluoroscopy,
# digital radiography, computed radiography); anything else (CT, MR, US, ...) gets a warning.
PROJECTION_MODALITIES = ("XA", "RF", "DX", "CR")
# The largest pixel magnitude accepted: far beyond any detector or line-integral value, and far
# enough below float32's 3.4e38 that min-max scaling and log stay finite.
MAX_ABS_VALUE = 1e30

# Pillow modes of one grey channel that convert losslessly to numpy numbers.
_GREY_MODES = ("L", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def input_kind(path: Path) -> str:
    """'pil', 'dicom', 'npy' or 'hdf5' from the suffix; DataError for anything else."""
    suffix = path.suffix.lower()
    if suffix in PIL_SUFFIXES:
        return "pil"
    if suffix in DICOM_SUFFIXES:
        return "dicom"
    if suffix in NPY_SUFFIXES:
        return "npy"
    if suffix in HDF5_SUFFIXES:
        return "hdf5"
    raise DataError(f"{path}: unsupported input type {suffix or '(no suffix)'!r} "
                    f"(expected one of {', '.join(SUPPORTED_SUFFIXES)})")


def check_size(path: Path, shape: tuple[int, ...]) -> None:
    """DataError when a declared (H, W) or (N, H, W) size is beyond what predict will decode."""
    height, width = int(shape[-2]), int(shape[-1])
    count = int(np.prod(shape[:-2], dtype=np.int64)) if len(shape) > 2 else 1
    if min(height, width) < MIN_INPUT_SIDE:
        raise DataError(f"{path}: {width} x {height} px is too small for a frame (at least "
                        f"{MIN_INPUT_SIDE} px per side; the model's frame is 180 x 180)")
    if height * width > MAX_INPUT_PIXELS or 4 * height * width * count > MAX_INPUT_BYTES:
        raise DataError(f"{path}: declared size {width} x {height} px"
                        f"{f' x {count} frames' if count > 1 else ''} is beyond the limit of "
                        f"{MAX_INPUT_PIXELS:,} px per frame and {MAX_INPUT_BYTES // 1024 ** 3} GiB "
                        f"per file (a decompression bomb, or a frame too large for memory); not "
                        f"decoded")


def read_pil_image(path: Path) -> np.ndarray:
    """A PNG, TIFF or JPEG (8 or 16 bit, grey or colour, or 32-bit float) as float32 (H, W)."""
    # Pillow loads here, with the first image read, not with `silr predict --help`
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # Pillow's bomb guard warns above MAX_IMAGE_PIXELS and raises above twice that;
            # both become one DataError (our own declared-size check comes first anyway).
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image_cm = Image.open(path)
        with image_cm as image:
            check_size(path, (image.size[1], image.size[0]))
            # Multi-page TIFFs: the first page is the frame; say nothing about the rest.
            mode = image.mode
            if mode == "1" or mode == "P" or mode.startswith(("RGB", "LA", "CMYK", "YCbCr")):
                image = image.convert("L")
            elif mode not in _GREY_MODES:
                raise DataError(f"{path}: unsupported image mode {mode!r} (expected grey, colour "
                                f"or 16-bit)")
            pixels = np.asarray(image)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"{path}: refused as a possible decompression bomb ({exc})") from None
    except MemoryError:
        raise DataError(f"{path}: too large to decode in memory") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        unsupported = _unsupported_tiff(path)
        if unsupported:
            raise DataError(f"{path}: {unsupported}") from None
        raise DataError(f"{path}: not a readable image ({exc.__class__.__name__}: "
                        f"{quoted(str(exc), 200)})") from None
    return _checked_frame(path, pixels.astype(np.float32))


_TIFF_SAMPLE_FORMATS = {1: "unsigned integer", 2: "signed integer", 3: "float", 4: "untyped",
                        5: "complex integer", 6: "complex float"}


def _tiff_first_ifd(head: bytes) -> dict[int, int] | None:
    """Tag -> first value of the first IFD's one-value SHORT/LONG tags, from a TIFF's first
    bytes."""
    order = {b"II": "<", b"MM": ">"}.get(head[:2])
    if order is None or struct.unpack(order + "H", head[2:4])[0] != 42:
        return None
    offset = struct.unpack(order + "I", head[4:8])[0]
    if offset + 2 > len(head):
        return None
    tags: dict[int, int] = {}
    count = struct.unpack(order + "H", head[offset:offset + 2])[0]
    for entry in range(min(count, 256)):
        start = offset + 2 + 12 * entry
        if start + 12 > len(head):
            break
        tag, kind, values = struct.unpack(order + "HHI", head[start:start + 8])
        if kind in (3, 4) and values == 1:  # one SHORT or LONG: the value sits in the entry itself
            width = 2 if kind == 3 else 4
            value_format = order + ("H" if kind == 3 else "I")
            tags[tag] = struct.unpack(value_format, head[start + 8:start + 8 + width])[0]
    return tags


def _unsupported_tiff(path: Path) -> str | None:
    """What a TIFF that Pillow cannot open holds, in words, where its first IFD says (e.g. 64-bit
    float samples, which Pillow does not read); None for anything else."""
    try:
        with open(path, "rb") as stream:
            tags = _tiff_first_ifd(stream.read(64 * 1024))
    except (OSError, struct.error):
        return None
    if not tags:
        return None
    bits, sample_format = tags.get(258, 1), tags.get(339, 1)
    if (bits, sample_format) in ((8, 1), (16, 1), (16, 2), (32, 2), (32, 3)):
        return None  # a kind Pillow reads: the failure is elsewhere
    kind = _TIFF_SAMPLE_FORMATS.get(sample_format, f"sample format {sample_format}")
    return (f"TIFF with {bits}-bit {kind} samples is not supported; save it as 32-bit float or "
            f"8/16-bit integer")


def read_dicom(path: Path) -> tuple[np.ndarray, tuple[float, float] | None]:
    """A single-frame grey DICOM image as float32 (H, W) in MONOCHROME2 polarity, and its pixel
    spacing in mm (row, column) or None when the file states none."""
    try:  # pydicom is optional and loads with the first DICOM file
        import pydicom
        from pydicom.errors import InvalidDicomError
        from pydicom.pixels import apply_modality_lut
    except ImportError:
        raise DataError(f"{path}: reading DICOM needs pydicom (pip install -r "
                        f"requirements.txt)") from None
    try:
        dataset = pydicom.dcmread(path)
        rows, cols = int(dataset.Rows), int(dataset.Columns)
        frames = int(getattr(dataset, "NumberOfFrames", 1) or 1)
        check_size(path, (frames, rows, cols))
        if frames != 1 or int(getattr(dataset, "SamplesPerPixel", 1)) != 1:
            raise DataError(f"{path}: expected one grey frame, the file holds {frames} frame(s) of "
                            f"{getattr(dataset, 'SamplesPerPixel', 1)} sample(s) per pixel")
        pixels = np.asarray(apply_modality_lut(_dicom_pixels(path, dataset), dataset),
                            dtype=np.float64)
        photometric = str(getattr(dataset, "PhotometricInterpretation", "MONOCHROME2")).upper()
        if photometric == "MONOCHROME1":
            bits = int(getattr(dataset, "BitsStored", 16))
            top = float(apply_modality_lut(np.array([2 ** bits - 1]), dataset)[0])
            pixels = top - pixels
        elif photometric != "MONOCHROME2":
            raise DataError(f"{path}: photometric interpretation {photometric} is not a grey "
                            f"image")
        spacing = (getattr(dataset, "ImagerPixelSpacing", None)
                   or getattr(dataset, "PixelSpacing", None))
        spacing_mm = (float(spacing[0]), float(spacing[1])) if spacing else None
        modality = str(getattr(dataset, "Modality", "") or "").strip().upper()
        if modality and modality not in PROJECTION_MODALITIES:
            warnings.warn(SilrWarning(
                f"DICOM Modality is {modality[:16]}, not a projection radiograph "
                f"({', '.join(PROJECTION_MODALITIES)}): the models were trained on X-ray "
                f"projections, so their landmarks here mean nothing"), stacklevel=2)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except MemoryError:
        raise DataError(f"{path}: too large to decode in memory") from None
    except DataError:
        raise
    except (InvalidDicomError, AttributeError, KeyError, OSError, ValueError, TypeError,
            RuntimeError) as exc:
        raise DataError(f"{path}: not a readable DICOM image ({exc.__class__.__name__}: "
                        f"{exc})") from None
    return _checked_frame(path, pixels.astype(np.float32)), spacing_mm


@dataclass(frozen=True)
class NpyHeader:
    shape: tuple[int, ...]  # (H, W) or (N, H, W)
    dtype: np.dtype


def _dicom_pixels(path: Path, dataset: Dataset) -> np.ndarray:
    """dataset.pixel_array; a compressed one that no installed plugin decodes is one DataError
    line naming the compression and the plugin to install."""
    try:
        return dataset.pixel_array
    except (RuntimeError, NotImplementedError, ValueError):
        syntax = (dataset.file_meta.get("TransferSyntaxUID") if hasattr(dataset, "file_meta")
                  else None)
        if syntax is None or not syntax.is_compressed:
            raise
        # a UID is at most 64 characters
        name = " ".join(str(getattr(syntax, "name", "") or syntax).split())[:64]
        plugin = next((hint for key, hint in _DICOM_DECODERS.items() if key in name),
                      "pylibjpeg or gdcm")
        raise DataError(f"{path}: compressed with {name} (transfer syntax {str(syntax)[:64]}), "
                        f"which needs a decoder plugin: pip install {plugin}") from None


_DICOM_DECODERS = {"JPEG 2000": "pylibjpeg pylibjpeg-openjpeg",
                   "JPEG-LS": "pylibjpeg pylibjpeg-libjpeg",
                   "JPEG": "pylibjpeg pylibjpeg-libjpeg", "RLE": "pylibjpeg pylibjpeg-rle"}


def read_npy_header(path: Path) -> NpyHeader:
    """The declared shape and dtype of a `.npy` file, checked (kind, size, file length) without
    reading its data: `silr predict` lists a folder of big stacks from their headers."""
    try:
        with open(path, "rb") as stream:
            version = np.lib.format.read_magic(stream)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(stream)
            data_offset = stream.tell()
        file_size = path.stat().st_size
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except Exception as exc:  # noqa: BLE001 - header garbage raises anything (TokenError, ...)
        raise DataError(f"{path}: not a readable .npy array (malformed header: "
                        f"{exc.__class__.__name__}: {quoted(str(exc))})") from None
    shape = tuple(shape)
    real = np.issubdtype(dtype, np.number) and not np.issubdtype(dtype, np.complexfloating)
    if len(shape) not in (2, 3) or not real:
        raise DataError(f"{path}: expected a real (H, W) frame or (N, H, W) stack, got shape "
                        f"{quoted(shape)} of {quoted(str(dtype))}")
    if len(shape) == 3 and shape[0] < 1:
        raise DataError(f"{path}: stack of shape {shape} holds no frame")
    check_size(path, shape)
    if data_offset + math.prod(shape) * dtype.itemsize > file_size:
        raise DataError(f"{path}: truncated: the header declares {' x '.join(map(str, shape))} "
                        f"{dtype}, the file is {file_size} bytes")
    return NpyHeader(shape, dtype)


def read_npy_frame(path: Path, index: int | None = None) -> np.ndarray:
    """One frame of a `.npy` file as float32 (H, W): the whole (H, W) array, or frame `index` of
    an (N, H, W) stack, read through a memory map (only that frame is decoded)."""
    header = read_npy_header(path)
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        if array.shape != header.shape:
            raise DataError(f"{path}: changed while being read (shape {array.shape}, was "
                            f"{header.shape})")
        frame = np.array(array if index is None else array[index], dtype=np.float32)
        del array
    except MemoryError:
        raise DataError(f"{path}: too large to decode in memory") from None
    except DataError:
        raise
    except (OSError, ValueError, IndexError) as exc:
        raise DataError(f"{path}: not a readable .npy array ({quoted(str(exc))})") from None
    return _checked_frame(path if index is None else f"{path} [frame {index}]", frame)


def read_npy(path: Path) -> np.ndarray:
    """A `.npy` array of one frame (H, W) or a stack (N, H, W), as float32 (whole: predict reads
    frame by frame with read_npy_frame)."""
    header = read_npy_header(path)
    if len(header.shape) == 2:
        return read_npy_frame(path)
    return np.stack([read_npy_frame(path, index) for index in range(header.shape[0])])


def check_values(source: object, pixels: np.ndarray) -> None:
    """DataError unless every value is finite and within +-MAX_ABS_VALUE (min and max only: no
    temporary array of the frame's size). Values near float32's limit (3.4e38) overflow in the
    min-max scaling and the log, and would give landmarks at (0, 0) with a NaN score."""
    if pixels.size == 0:
        return
    low, high = float(pixels.min()), float(pixels.max())
    if math.isnan(low) or math.isnan(high) or math.isinf(low) or math.isinf(high):
        raise DataError(f"{source}: image holds NaN or infinite values")
    if low < -MAX_ABS_VALUE or high > MAX_ABS_VALUE:
        raise DataError(f"{source}: pixel values {low:.3g}..{high:.3g} are beyond "
                        f"+-{MAX_ABS_VALUE:.0e}, the range silr accepts (larger magnitudes "
                        f"overflow float32 in scaling and log)")


def _checked_frame(path: object, pixels: np.ndarray) -> np.ndarray:
    if pixels.shape[-1] < 2 or pixels.shape[-2] < 2 or (pixels.ndim == 3 and pixels.shape[0] == 0):
        raise DataError(f"{path}: image of shape {pixels.shape} is too small (need at least 2x2 "
                        f"pixels)")
    check_values(path, pixels)
    return pixels
