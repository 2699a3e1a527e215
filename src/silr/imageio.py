"""Readers of single images for `silr predict`: PNG, TIFF and NumPy `.npy`.

Each reader returns the pixel values as float32 (H, W) or, for a `.npy` stack, (N, H, W)
in the file's own pixel grid, without any scaling: 8-bit and 16-bit integers keep their
values, so a raw 16-bit detector frame can still be log-transformed exactly as in
ingestion. Colour images are turned into one grey channel (ITU-R 601 luma), which is
what a viewer's screenshot of a grey frame holds in each of its channels anyway.
HDF5 files are read by `silr.deepfluoro`, not here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from silr.errors import DataError

PIL_SUFFIXES = (".png", ".tif", ".tiff")
NPY_SUFFIXES = (".npy",)
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")
SUPPORTED_SUFFIXES = PIL_SUFFIXES + NPY_SUFFIXES + HDF5_SUFFIXES

# Pillow modes of one grey channel that convert losslessly to numpy numbers.
_GREY_MODES = ("L", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def input_kind(path: Path) -> str:
    """'pil', 'npy' or 'hdf5' from the suffix; DataError for anything else."""
    suffix = path.suffix.lower()
    if suffix in PIL_SUFFIXES:
        return "pil"
    if suffix in NPY_SUFFIXES:
        return "npy"
    if suffix in HDF5_SUFFIXES:
        return "hdf5"
    raise DataError(f"{path}: unsupported input type {suffix or '(no suffix)'!r} "
                    f"(expected one of {', '.join(SUPPORTED_SUFFIXES)})")


def read_pil_image(path: Path) -> np.ndarray:
    """A PNG or TIFF (8 or 16 bit, grey or colour, or 32-bit float) as float32 (H, W)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            # Multi-page TIFFs: the first page is the frame; say nothing about the rest.
            mode = image.mode
            if mode == "1" or mode == "P" or mode.startswith(("RGB", "LA", "CMYK", "YCbCr")):
                image = image.convert("L")
            elif mode not in _GREY_MODES:
                raise DataError(f"{path}: unsupported image mode {mode!r} (expected grey, colour or 16-bit)")
            pixels = np.asarray(image)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: not a readable image ({exc.__class__.__name__}: {exc})") from None
    return _checked_frame(path, pixels.astype(np.float32))


def read_npy(path: Path) -> np.ndarray:
    """A `.npy` array of one frame (H, W) or a stack (N, H, W), as float32."""
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
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
