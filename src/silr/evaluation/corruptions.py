"""Fluoroscopy's own corruptions, at severities 1-5, for the robustness benchmark.

A processed frame is a line-integral image p = log(I0) - log(I) (bone bright,
silr.data.preprocess), so its relative intensity (transmission) is T = exp(-p). Each corruption
acts in the domain where it happens physically:

- `quantum_noise` (reduced dose), in intensity: Poisson counts N ~ Poisson(n T) for a photon
  budget of n photons per pixel without object (`robustness.photons_air` at severity 1,
  halved per step, i.e. one more halving of the dose each step), then p' = -log(N / n)
  (a pixel with no photon is given half of one, as ingestion clips a zero count);
- `scatter`, in intensity: T' = T + k G_s(T), a smooth scatter field (G_s a Gaussian of
  `robustness.scatter_sigma_px`, wide as scatter kernels are) whose mean is k times that of
  the primary, k the scatter-to-primary ratio of the severity;
- `detector_blur`, in intensity: the scintillator's spread, a Gaussian of the severity's
  width (px of the processed frame);
- `motion_blur`, in intensity: the mean of the frame moved along a straight line of the
  severity's length (px) in a random direction, as an exposure during motion integrates;
- `contrast`, on the displayed frame: a gamma applied to the frame scaled to [0, 1], then
  quantised to the severity's number of grey levels, and mapped back to the frame's range. A
  linear window alone would change nothing: the network input is min-max scaled per frame;
- `instruments`, in the line integral: steel (mu = `STEEL_MU_PER_MM`) K-wires, screws and
  retractor plates added as their path lengths, the severity's count of them, every other
  one through a landmark of the frame;
- `collimation`, in the line integral: a shutter that covers the severity's fraction of the
  frame from one side (lead-like attenuation, a 2-px penumbra).

Every corruption is a function of (frame, severity, settings, rng, facts) registered by name
(`CORRUPTIONS`). Random numbers come from generators seeded by (robustness.seed, corruption,
severity, frame key) for noise, and by (robustness.seed, corruption, frame key) for geometry
(direction, placement, side: the same at every severity), so a frame's corrupted version never
depends on which other frames are corrupted with it. Severity 0 returns the frame as it is.
Output: float32, the input's shape, finite.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from silr.core.robustness_params import CORRUPTION_NAMES, RobustnessParams

__all__ = [
    "CORRUPTIONS", "Corruption", "FrameFacts", "INSTRUMENT_SHAPES", "SEVERITIES",
    "SHUTTER_ATTENUATION", "SHUTTER_PENUMBRA_PX", "STEEL_MU_PER_MM", "SUPERSAMPLE", "corrupt",
    "register", "rng_for",
]

SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)


@dataclass(frozen=True)
class FrameFacts:
    """What a corruption may know of the frame besides its pixels."""

    key: tuple[int, ...] = (0,)  # e.g. (specimen, frame index): seeds its random numbers
    landmarks_xy: np.ndarray | None = None  # (L, 2) px, for instruments placed over landmarks
    mm_per_px: float = 1.552  # the frame's pixel (detector plane), for instrument sizes

# Linear attenuation of steel at a fluoroscopy spectrum's mean energy (~60 keV): about 0.96 /mm
# (mass attenuation ~1.2 cm^2/g x 7.87 g/cm^3), so a 2 mm K-wire adds ~1.9 to the line integral,
# as much as a thick bone does.
STEEL_MU_PER_MM = 0.96
# A collimator shutter: as the phantom's collimator border (silr.phantom.projector).
SHUTTER_ATTENUATION = 2.5
SHUTTER_PENUMBRA_PX = 2.0
# Instruments are drawn on a grid this many times finer than the frame, then block-averaged,
# so that a 2 mm wire (about 1.3 px at 8x) keeps its area.
SUPERSAMPLE = 4

# (kind, diameter or thickness mm, length mm, width mm): a K-wire is a 2 mm cylinder 150 mm long, a
# cortical screw a 6.5 mm cylinder 40 mm long, a retractor plate a 1.5 mm slab 18 x 90 mm.
INSTRUMENT_SHAPES: tuple[tuple[str, float, float, float], ...] = (
    ("k_wire", 2.0, 150.0, 2.0),
    ("screw", 6.5, 40.0, 6.5),
    ("plate", 1.5, 90.0, 18.0),
)


# A corruption: (frame, severity, settings, rng, facts) -> corrupted line integral (any float
# dtype).
Corruption = Callable[[np.ndarray, int, RobustnessParams, np.random.Generator, FrameFacts],
                      np.ndarray]
CORRUPTIONS: dict[str, Corruption] = {}


def register(name: str) -> Callable[[Corruption], Corruption]:
    """Add a corruption to the registry under `name` (the order of registration is the suite's)."""
    def add(function: Corruption) -> Corruption:
        if name in CORRUPTIONS:
            raise ValueError(f"corruption {name!r} is registered twice")
        CORRUPTIONS[name] = function
        return function
    return add


def _transmission(frame: np.ndarray) -> np.ndarray:
    return np.exp(-frame.astype(np.float64))


def _line_integral(transmission: np.ndarray) -> np.ndarray:
    return -np.log(transmission)


def _step(values: Sequence[float], severity: int) -> float:
    return float(values[severity - 1])


def _geometry_rng(settings: RobustnessParams, name: str, facts: FrameFacts) -> np.random.Generator:
    """A generator for a corruption's geometry (direction, placement, side) that does not depend on
    the severity: a step up lengthens the same motion, adds instruments to the same ones, moves the
    same shutter further in, so that the severities of one frame are comparable."""
    return rng_for(settings.seed, name, 0, facts.key)


@register("quantum_noise")
def quantum_noise(frame: np.ndarray, severity: int, settings: RobustnessParams,
                  rng: np.random.Generator, facts: FrameFacts) -> np.ndarray:
    photons = settings.photons_air / 2.0 ** (severity - 1)
    counts = rng.poisson(photons * _transmission(frame)).astype(np.float64)
    return _line_integral(np.maximum(counts, 0.5) / photons)


@register("scatter")
def scatter(frame: np.ndarray, severity: int, settings: RobustnessParams,
            rng: np.random.Generator, facts: FrameFacts) -> np.ndarray:
    primary = _transmission(frame)
    field = ndimage.gaussian_filter(primary, settings.scatter_sigma_px, mode="nearest")
    return _line_integral(primary + _step(settings.scatter_to_primary, severity) * field)


@register("detector_blur")
def detector_blur(frame: np.ndarray, severity: int, settings: RobustnessParams,
                  rng: np.random.Generator, facts: FrameFacts) -> np.ndarray:
    blurred = ndimage.gaussian_filter(_transmission(frame),
                                      _step(settings.detector_blur_px, severity), mode="nearest")
    return _line_integral(blurred)


@register("motion_blur")
def motion_blur(frame: np.ndarray, severity: int, settings: RobustnessParams,
                rng: np.random.Generator, facts: FrameFacts) -> np.ndarray:
    length = _step(settings.motion_blur_px, severity)
    angle = _geometry_rng(settings, "motion_blur", facts).uniform(0.0, np.pi)
    transmission = _transmission(frame)
    # One sample per pixel of path at least: the mean of the frame moved along the segment.
    offsets = np.linspace(-length / 2, length / 2, int(np.ceil(length)) + 1)
    total = np.zeros_like(transmission)
    for offset in offsets:
        total += ndimage.shift(transmission, (offset * np.sin(angle), offset * np.cos(angle)),
                               order=1, mode="nearest")
    return _line_integral(total / len(offsets))


@register("contrast")
def contrast(frame: np.ndarray, severity: int, settings: RobustnessParams,
             rng: np.random.Generator, facts: FrameFacts) -> np.ndarray:
    low, high = float(frame.min()), float(frame.max())
    if high <= low:
        return frame.astype(np.float64)
    unit = (frame.astype(np.float64) - low) / (high - low)
    levels = int(settings.contrast_levels[severity - 1])
    gamma = _step(settings.contrast_gamma, severity)
    quantised = np.round(unit ** gamma * (levels - 1)) / (levels - 1)
    return low + (high - low) * quantised


def _instrument_path_mm(shape: tuple[int, int], centre_xy: np.ndarray, angle: float,
                        spec: tuple[str, float, float, float], mm_per_px: float) -> np.ndarray:
    """Path length (mm) of steel through each pixel for one instrument, supersampled then
    averaged."""
    kind, thickness_mm, length_mm, width_mm = spec
    height, width = shape
    path = np.zeros(shape, dtype=np.float64)
    # Only the instrument's bounding box (plus a pixel) can hold steel: every pixel outside it is
    # exactly 0, and the box's pixels are computed just as on the whole frame, so the result is
    # the same to the bit at a fraction of the cost (a screw covers ~1% of the frame).
    half_across = (width_mm if kind == "plate" else thickness_mm) / 2
    cos, sin = abs(np.cos(angle)), abs(np.sin(angle))
    half_x = (length_mm / 2 * cos + half_across * sin) / mm_per_px
    half_y = (length_mm / 2 * sin + half_across * cos) / mm_per_px
    x0, x1 = (int(np.clip(v, 0, width)) for v in (np.floor(centre_xy[0] - half_x) - 1,
                                                   np.ceil(centre_xy[0] + half_x) + 2))
    y0, y1 = (int(np.clip(v, 0, height)) for v in (np.floor(centre_xy[1] - half_y) - 1,
                                                    np.ceil(centre_xy[1] + half_y) + 2))
    if x0 >= x1 or y0 >= y1:
        return path
    fine = SUPERSAMPLE
    # Pixel centres of the fine grid in frame px (frame pixel i is centred on i).
    ys = (np.arange(y0 * fine, y1 * fine) + 0.5) / fine - 0.5
    xs = (np.arange(x0 * fine, x1 * fine) + 0.5) / fine - 0.5
    dx = (xs[None, :] - centre_xy[0]) * mm_per_px
    dy = (ys[:, None] - centre_xy[1]) * mm_per_px
    along = dx * np.cos(angle) + dy * np.sin(angle)
    across = -dx * np.sin(angle) + dy * np.cos(angle)
    inside = np.abs(along) <= length_mm / 2
    if kind == "plate":
        box = np.where(inside & (np.abs(across) <= width_mm / 2), thickness_mm, 0.0)
    else:  # a cylinder seen from the side: chord length through its circular section
        radius = thickness_mm / 2
        box = np.where(inside, 2.0 * np.sqrt(np.clip(radius ** 2 - across ** 2, 0.0, None)), 0.0)
    path[y0:y1, x0:x1] = box.reshape(y1 - y0, fine, x1 - x0, fine).mean(axis=(1, 3))
    return path


@register("instruments")
def instruments(frame: np.ndarray, severity: int, settings: RobustnessParams,
                rng: np.random.Generator, facts: FrameFacts) -> np.ndarray:
    height, width = frame.shape
    inside = np.zeros(0, dtype=int)
    landmarks_xy = facts.landmarks_xy
    if landmarks_xy is not None:
        xy = np.asarray(landmarks_xy, dtype=np.float64)
        inside = np.flatnonzero(np.isfinite(xy).all(axis=1) & (xy[:, 0] >= 0)
                                & (xy[:, 0] <= width - 1) & (xy[:, 1] >= 0)
                                & (xy[:, 1] <= height - 1))
    path_mm = np.zeros(frame.shape, dtype=np.float64)
    # instrument k is the same at every severity
    rng = _geometry_rng(settings, "instruments", facts)
    for index in range(int(settings.instruments[severity - 1])):
        spec = INSTRUMENT_SHAPES[index % len(INSTRUMENT_SHAPES)]
        angle = rng.uniform(0.0, np.pi)
        if index % 2 == 0 and inside.size:  # every other one through a landmark (a few px off it)
            centre = (np.asarray(landmarks_xy, dtype=np.float64)[rng.choice(inside)]
                      + rng.uniform(-2, 2, 2))
        else:
            centre = rng.uniform((0.1 * width, 0.1 * height), (0.9 * width, 0.9 * height))
        path_mm += _instrument_path_mm(frame.shape, centre, angle, spec, facts.mm_per_px)
    return frame.astype(np.float64) + STEEL_MU_PER_MM * path_mm


@register("collimation")
def collimation(frame: np.ndarray, severity: int, settings: RobustnessParams,
                rng: np.random.Generator, facts: FrameFacts) -> np.ndarray:
    height, width = frame.shape
    # 0 top, 1 bottom, 2 left, 3 right
    side = int(_geometry_rng(settings, "collimation", facts).integers(4))
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    distance, extent = ((rows, height), (height - 1 - rows, height), (cols, width),
                        (width - 1 - cols, width))[side]
    edge = _step(settings.collimation_fraction, severity) * extent
    covered = np.clip((edge - distance) / SHUTTER_PENUMBRA_PX + 0.5, 0.0, 1.0)
    return frame.astype(np.float64) + SHUTTER_ATTENUATION * covered


def rng_for(seed: int, name: str, severity: int, frame_key: Sequence[int]) -> np.random.Generator:
    """The generator of one (corruption, severity, frame): independent of every other frame."""
    return np.random.default_rng([int(seed), list(CORRUPTIONS).index(name), int(severity),
                                  *map(int, frame_key)])


def corrupt(frame: np.ndarray, name: str, severity: int, settings: RobustnessParams,
            facts: FrameFacts = FrameFacts()) -> np.ndarray:
    """One (H, W) line-integral frame under corruption `name` at `severity` (0 = the frame
    itself)."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r} (known: {', '.join(CORRUPTIONS)})")
    if isinstance(severity, bool) or severity not in (0, *SEVERITIES):
        raise ValueError(f"severity must be one of 0, {', '.join(map(str, SEVERITIES))}; "
                         f"got {severity!r}")
    frame = np.asarray(frame)
    if (frame.ndim != 2 or not np.issubdtype(frame.dtype, np.floating)
            or not np.isfinite(frame).all()):
        raise ValueError(f"frame must be a finite floating (H, W) array, got {frame.dtype} "
                         f"{frame.shape}")
    if severity == 0:
        return frame.astype(np.float32, copy=True)
    rng = rng_for(settings.seed, name, severity, facts.key)
    out = np.asarray(CORRUPTIONS[name](frame, severity, settings, rng, facts), dtype=np.float32)
    if out.shape != frame.shape or not np.isfinite(out).all():
        raise RuntimeError(f"corruption {name!r} at severity {severity} broke the frame: "
                           f"shape {out.shape}, finite {bool(np.isfinite(out).all())}")
    return out


if tuple(CORRUPTIONS) != CORRUPTION_NAMES:
    raise ImportError(f"silr.evaluation.corruptions registers {tuple(CORRUPTIONS)}, "
                      f"silr.core.robustness_params lists {CORRUPTION_NAMES}")
