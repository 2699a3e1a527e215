"""The preprocessing transforms of DeepFluoro ingestion: one full-resolution frame in, one
frame of the published `ipcai_2020_ds_*.h5` files out.

This module owns the arithmetic only (crop, log transform, Gaussian smoothing and sampling,
label sampling, landmark mapping, the 180-degree turn) and the constants that describe it;
reading and writing the HDF5 layouts is `silr.data.fullres`'s and `silr.data.processed`'s job.
`silr ingest` applies the transforms to every frame of a file, `silr predict --raw` to one frame.

The transforms (`preprocess_raw_frame`, `downsample_labels`, `preprocess_landmarks`)
rebuild the published files exactly as the data set's authors made them (their
`proj_3d_labels_into_2d` with xreg's `ProjPreProc` and `DownsampleProjData`), in this order:
1. crop `crop` px from every border (the collimator edge): 1536 -> 1436;
2. log transform, line integral = log(I0) - log(I); raw intensities below
   `INTENSITY_FLOOR` (zero or negative detector values) are clipped to it first;
3. image: ITK's discrete Gaussian (variance (factor / 2)^2 px^2, edge pixels repeated),
   then the sample at cropped pixel factor * i, i = 0 .. round(1436 / factor) - 1
   (the origin is kept: at 8x the last of 180 samples is pixel 1432);
4. labels: the full-resolution label at the same pixels (the ray cast onto the small
   detector hits each small pixel's centre);
5. landmarks: (x - crop) / factor (`coords.fullres_to_downsampled`);
6. only then the 180-degree turn where `rot-180-for-up` is 1, in the small frame
   (`coords.ingested_landmarks` holds steps 5 and 6).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import ndimage, special

from silr.core import anatomy, coords
from silr.core.errors import SilrWarning

__all__ = ["GAUSSIAN_MAX_ERROR", "GAUSSIAN_MAX_WIDTH", "IMAGE_RULE", "INTENSITY_FLOOR",
           "LABEL_RULE", "ClippedIntensityWarning", "discrete_gaussian_kernel",
           "downsample_labels", "ingest_raw_frame", "line_integrals", "preprocess_landmarks",
           "preprocess_raw_frame", "smooth_and_sample"]

# Raw intensities below this value are clipped to it before the log transform: the
# detector never reports zero photons for a real frame, so such pixels are defects.
INTENSITY_FLOOR = 1.0

# How the transforms below make labels and images, in words (ingest stores them as root
# attributes).
LABEL_RULE = "the full-resolution label at each small pixel's centre (cropped pixel factor * i)"
IMAGE_RULE = ("discrete Gaussian smoothing, variance (factor / 2)^2 px^2, then the sample at "
              "cropped pixel factor * i; turned after downsampling")

# ITK DiscreteGaussianImageFilter's defaults, which the published files' downsampling used.
GAUSSIAN_MAX_ERROR = 0.01
GAUSSIAN_MAX_WIDTH = 32


class ClippedIntensityWarning(SilrWarning):
    """Non-positive raw detector intensities were clipped before the log transform."""


def _check_frame(array: np.ndarray, what: str, crop: int, factor: int) -> None:
    if array.ndim != 2:
        raise ValueError(f"{what} must be a 2D (H, W) frame, got shape {array.shape}")
    if factor < 1 or crop < 0:
        raise ValueError(f"factor must be >= 1 and crop >= 0, got factor={factor}, crop={crop}")
    if min(coords.downsampled_length(n, crop, factor) for n in array.shape) < 1:
        raise ValueError(f"crop {crop} px per border and downsampling by {factor} leave nothing "
                         f"of a {array.shape[0]}x{array.shape[1]} frame")


def discrete_gaussian_kernel(variance: float) -> np.ndarray:
    """The smoothing kernel of the published files' downsampling (ITK's DiscreteGaussianImageFilter
    with its defaults, as xreg's DownsampleImage calls it): Lindeberg's discrete Gaussian
    e^-t I_n(t) (t = variance in pixels^2), taps added until they hold 1 - GAUSSIAN_MAX_ERROR of
    the mass or the half-width reaches GAUSSIAN_MAX_WIDTH, then normalised to sum 1."""
    if variance <= 0:
        return np.ones(1)
    half = [float(special.ive(0, variance)), float(special.ive(1, variance))]
    total = half[0] + 2 * half[1]
    n = 2
    while total < 1.0 - GAUSSIAN_MAX_ERROR and len(half) <= GAUSSIAN_MAX_WIDTH:
        half.append(float(special.ive(n, variance)))
        total += 2 * half[-1]
        n += 1
    taps = np.array(half[:0:-1] + half) / total
    return taps


def smooth_and_sample(image: np.ndarray, factor: int) -> np.ndarray:
    """Gaussian smoothing with sigma = factor / 2 px, then the samples at pixel factor * i
    (i = 0 .. round(n / factor) - 1 per axis): the published files' image downsampling.
    Borders repeat the edge pixel (ITK's zero-flux Neumann condition). Float64 in and out."""
    if factor == 1:
        return np.asarray(image, dtype=np.float64)
    kernel = discrete_gaussian_kernel((factor / 2.0) ** 2)
    out_h, out_w = (coords.downsampled_length(n, 0, factor) for n in image.shape)
    # Separable: filtering along one axis commutes with sampling the other, so each pass
    # only computes the rows or columns that are kept.
    rows_kept = ndimage.correlate1d(np.asarray(image, dtype=np.float64), kernel, axis=1,
                                    mode="nearest")
    rows_kept = rows_kept[:, : factor * out_w : factor]
    smoothed = ndimage.correlate1d(rows_kept, kernel, axis=0, mode="nearest")
    return smoothed[: factor * out_h : factor]


def line_integrals(intensity: np.ndarray, i0: float) -> tuple[np.ndarray, int]:
    """log(I0) - log(I) in float64, and how many pixels were below INTENSITY_FLOOR.

    Computed in place in one float64 copy (a huge frame must not cost four of them); the
    operations are the same element-wise ones, so the values are bit for bit those of
    `math.log(i0) - np.log(np.where(low, INTENSITY_FLOOR, intensity))`."""
    values = np.array(intensity, dtype=np.float64)  # a copy, never the caller's array
    clipped = int(np.count_nonzero(values < INTENSITY_FLOOR))
    if clipped:
        np.maximum(values, INTENSITY_FLOOR, out=values)  # NaN stays NaN, as np.where kept it
    np.log(values, out=values)
    np.subtract(math.log(i0), values, out=values)
    return values, clipped


def _cropped(frame: np.ndarray, crop: int) -> np.ndarray:
    height, width = frame.shape
    return frame[crop:height - crop, crop:width - crop]


def ingest_raw_frame(intensity: np.ndarray, *, crop: int, i0: float, factor: int,
                     rotate: bool) -> tuple[np.ndarray, int]:
    """`preprocess_raw_frame` plus the number of clipped pixels (ingest counts them over the
    file)."""
    intensity = np.asarray(intensity)
    _check_frame(intensity, "raw intensity", crop, factor)
    if i0 <= 0 or not math.isfinite(i0):
        raise ValueError(f"i0 must be a positive number, got {i0}")
    values, clipped = line_integrals(_cropped(intensity, crop), i0)
    frame = smooth_and_sample(values, factor)
    if rotate:  # the published files turn in the small frame, after downsampling
        frame = frame[::-1, ::-1]
    return np.ascontiguousarray(frame, dtype=np.float32), clipped


def preprocess_raw_frame(intensity: np.ndarray, *, crop: int, i0: float, factor: int,
                         rotate: bool) -> np.ndarray:
    """Raw (H, W) detector intensities -> float32 downsampled line integrals (bone bright).

    Warns (ClippedIntensityWarning) when non-positive intensities had to be clipped.
    """
    frame, clipped = ingest_raw_frame(intensity, crop=crop, i0=i0, factor=factor, rotate=rotate)
    if clipped:
        warnings.warn(f"{clipped} raw intensities below {INTENSITY_FLOOR:g} clipped to "
                      f"{INTENSITY_FLOOR:g} before the log transform", ClippedIntensityWarning,
                      stacklevel=2)
    return frame


def downsample_labels(labels: np.ndarray, *, crop: int, factor: int, rotate: bool) -> np.ndarray:
    """Full-resolution (H, W) labels 0..6 -> uint8 downsampled labels: the label at each small
    pixel's centre (cropped pixel factor * i), as the published files' ray cast onto the
    downsampled detector; turned afterwards where `rotate`."""
    labels = np.asarray(labels)
    _check_frame(labels, "labels", crop, factor)
    if labels.size and (labels.min() < 0 or labels.max() > anatomy.MAX_LABEL):
        raise ValueError(f"labels must lie in 0..{anatomy.MAX_LABEL}, "
                         f"found {labels.min()}..{labels.max()}")
    cropped = _cropped(labels, crop)
    out_h, out_w = (coords.downsampled_length(n, 0, factor) for n in cropped.shape)
    small = cropped[: factor * out_h : factor, : factor * out_w : factor]
    if rotate:
        small = small[::-1, ::-1]
    return np.ascontiguousarray(small, dtype=np.uint8)


def preprocess_landmarks(landmarks_xy: np.ndarray, *, crop: int, factor: int, rotate: bool,
                         width: int, height: int) -> np.ndarray:
    """(..., 2) landmarks of a stored full-res W x H frame -> ingested frame coordinates."""
    return coords.ingested_landmarks(landmarks_xy, crop=crop, factor=factor, turned=rotate,
                                     fullres_size=(width, height))
