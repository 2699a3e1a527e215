"""Readers of single images for `silr predict`: PNG, TIFF, JPEG, DICOM and NumPy `.npy`.

Each reader returns the pixel values as float32 (H, W) or, for a `.npy` stack, (N, H, W)
in the file's own pixel grid, without any scaling: 8-bit and 16-bit integers keep their
values, so a raw 16-bit detector frame can still be log-transformed exactly as in
ingestion. Colour images are turned into one grey channel (ITU-R 601 luma), which is
what a viewer's screenshot of a grey frame holds in each of its channels anyway.
HDF5 files are read by `silr.deepfluoro`, not here.

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

from pathlib import Path

import numpy as np

from silr.errors import DataError, SilrWarning

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
        raise DataError(f"{path}: {width} x {height} px is too small for a frame (at least {MIN_INPUT_SIDE} px "
                        f"per side; the model's frame is 180 x 180)")
    if height * width > MAX_INPUT_PIXELS or 4 * height * width * count > MAX_INPUT_BYTES:
        raise DataError(f"{path}: declared size {width} x {height} px"
                        f"{f' x {count} frames' if count > 1 else ''} is beyond the limit of "
                        f"{MAX_INPUT_PIXELS:,} px per frame and {MAX_INPUT_BYTES // 1024 ** 3} GiB per file "
                        f"(a decompression bomb, or a frame too large for memory); not decoded")


def read_pil_image(path: Path) -> np.ndarray:
    """A PNG, TIFF or JPEG (8 or 16 bit, grey or colour, or 32-bit float) as float32 (H, W)."""
    import warnings

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
                raise DataError(f"{path}: unsupported image mode {mode!r} (expected grey, colour or 16-bit)")
            pixels = np.asarray(image)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"{path}: refused as a possible decompression bomb ({exc})") from None
    except MemoryError:
        raise DataError(f"{path}: too large to decode in memory") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: not a readable image ({exc.__class__.__name__}: {exc})") from None
    return _checked_frame(path, pixels.astype(np.float32))


def read_dicom(path: Path) -> tuple[np.ndarray, tuple[float, float] | None]:
    """A single-frame grey DICOM image as float32 (H, W) in MONOCHROME2 polarity, and its pixel
    spacing in mm (row, column) or None when the file states none."""
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
        from pydicom.pixels import apply_modality_lut
    except ImportError:
        raise DataError(f"{path}: reading DICOM needs pydicom (pip install -r requirements.txt)") from None
    try:
        dataset = pydicom.dcmread(path)
        rows, cols = int(dataset.Rows), int(dataset.Columns)
        frames = int(getattr(dataset, "NumberOfFrames", 1) or 1)
        check_size(path, (frames, rows, cols))
        if frames != 1 or int(getattr(dataset, "SamplesPerPixel", 1)) != 1:
            raise DataError(f"{path}: expected one grey frame, the file holds {frames} frame(s) of "
                            f"{getattr(dataset, 'SamplesPerPixel', 1)} sample(s) per pixel")
        pixels = np.asarray(apply_modality_lut(dataset.pixel_array, dataset), dtype=np.float64)
        photometric = str(getattr(dataset, "PhotometricInterpretation", "MONOCHROME2")).upper()
        if photometric == "MONOCHROME1":
            bits = int(getattr(dataset, "BitsStored", 16))
            top = float(apply_modality_lut(np.array([2 ** bits - 1]), dataset)[0])
            pixels = top - pixels
        elif photometric != "MONOCHROME2":
            raise DataError(f"{path}: photometric interpretation {photometric} is not a grey image")
        spacing = getattr(dataset, "ImagerPixelSpacing", None) or getattr(dataset, "PixelSpacing", None)
        spacing_mm = (float(spacing[0]), float(spacing[1])) if spacing else None
        modality = str(getattr(dataset, "Modality", "") or "").strip().upper()
        if modality and modality not in PROJECTION_MODALITIES:
            import warnings

            warnings.warn(SilrWarning(
                f"DICOM Modality is {modality[:16]}, not a projection radiograph ({', '.join(PROJECTION_MODALITIES)}): "
                f"the models were trained on X-ray projections, so their landmarks here mean nothing"), stacklevel=2)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except MemoryError:
        raise DataError(f"{path}: too large to decode in memory") from None
    except DataError:
        raise
    except (InvalidDicomError, AttributeError, KeyError, OSError, ValueError, TypeError, RuntimeError) as exc:
        raise DataError(f"{path}: not a readable DICOM image ({exc.__class__.__name__}: {exc})") from None
    return _checked_frame(path, pixels.astype(np.float32)), spacing_mm


def read_npy(path: Path) -> np.ndarray:
    """A `.npy` array of one frame (H, W) or a stack (N, H, W), as float32."""
    try:
        with open(path, "rb") as stream:  # the declared shape, before any data is read
            version = np.lib.format.read_magic(stream)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read_header(stream)
        if len(shape) not in (2, 3) or not np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.complexfloating):
            raise DataError(f"{path}: expected a real (H, W) frame or (N, H, W) stack, "
                            f"got shape {tuple(shape)} of {dtype}")
        check_size(path, tuple(shape))
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except MemoryError:
        raise DataError(f"{path}: too large to decode in memory") from None
    except DataError:
        raise
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable .npy array ({exc})") from None
    if array.ndim not in (2, 3) or not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise DataError(f"{path}: expected a real (H, W) frame or (N, H, W) stack, "
                        f"got shape {array.shape} of {array.dtype}")
    return _checked_frame(path, array.astype(np.float32))


def _checked_frame(path: Path, pixels: np.ndarray) -> np.ndarray:
    if pixels.shape[-1] < 2 or pixels.shape[-2] < 2 or (pixels.ndim == 3 and pixels.shape[0] == 0):
        raise DataError(f"{path}: image of shape {pixels.shape} is too small (need at least 2x2 pixels)")
    if not np.isfinite(pixels).all():
        raise DataError(f"{path}: image holds NaN or infinite values")
    return pixels
