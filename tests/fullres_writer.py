"""A tiny, independent writer of the full-resolution DeepFluoro layout, for tests.

Written by hand from docs/method.md ("Data") with plain h5py (it shares no
code with silr), so that the readers are checked against "a file written by code that is
not ours". Frames are small (e.g. 256x256) unless a test asks for the real 1536.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

# Spelled out here on purpose (not imported from silr): the test writer is independent.
NAMES = (
    "FH-l",
    "FH-r",
    "GSN-l",
    "GSN-r",
    "IOF-l",
    "IOF-r",
    "MOF-l",
    "MOF-r",
    "SPS-l",
    "SPS-r",
    "IPS-l",
    "IPS-r",
    "ASIS-l",
    "ASIS-r",
)
AIR = 60000.0  # raw intensity where nothing attenuates


@dataclass
class Frame:
    """One projection as stored in the file (not turned)."""

    intensity: np.ndarray  # (H, W) raw detector intensity, bone dark
    labels: np.ndarray  # (H, W) uint8
    landmarks: dict[str, tuple[float, float]]  # name -> (column, row)
    rot180: int = 0


@dataclass
class Specimen:
    specimen_id: str
    frames: list[Frame] = field(default_factory=list)


def blank_frame(
    size: int, rot180: int = 0, landmark_xy: tuple[float, float] = (100.0, 100.0)
) -> Frame:
    return Frame(
        np.full((size, size), AIR, np.float32),
        np.zeros((size, size), np.uint8),
        {name: landmark_xy for name in NAMES},
        rot180,
    )


def gaussian_marker(
    frame: Frame, xy: tuple[float, float], *, peak: float = 3.0, sigma: float = 6.0
) -> None:
    """Attenuate a round blob centred at (column, row) = xy: line integral peak * gauss(r)."""
    rows, cols = np.indices(frame.intensity.shape, dtype=np.float64)
    r2 = (cols - xy[0]) ** 2 + (rows - xy[1]) ** 2
    frame.intensity *= np.exp(-peak * np.exp(-r2 / (2 * sigma**2))).astype(np.float32)


def write_fullres(
    path: Path,
    specimens: list[Specimen],
    *,
    size: int | None = None,
    pad_keys: bool = True,
    attrs: dict | None = None,
) -> Path:
    """Write `specimens` in the full-resolution layout; projection keys 000, 001, ... (or
    unpadded 0, 1, ..., 10 with pad_keys=False, to check numeric ordering)."""
    size = size or specimens[0].frames[0].intensity.shape[0]
    with h5py.File(path, "w") as f:
        f.attrs.update(attrs or {})
        params = f.create_group("proj-params")
        params["intrinsic"] = np.array(
            [[5257.7, 0.0, size / 2], [0.0, 5257.7, size / 2], [0.0, 0.0, 1.0]]
        )
        params["extrinsic"] = np.eye(4)
        params["num-cols"] = np.int64(size)
        params["num-rows"] = np.int64(size)
        params["pixel-col-spacing"] = 0.194
        params["pixel-row-spacing"] = 0.194
        for specimen in specimens:
            group = f.create_group(specimen.specimen_id)
            vol = group.create_group("vol")  # a token CT volume: readers must skip it
            vol["pixels"] = np.zeros((4, 4, 4), np.float32)
            vol["origin"], vol["spacing"], vol["dir-mat"] = np.zeros(3), np.ones(3), np.eye(3)
            for name in NAMES:
                group[f"vol-landmarks/{name}"] = np.zeros((3, 1))
            projections = group.create_group("projections")
            for index, frame in enumerate(specimen.frames):
                proj = projections.create_group(f"{index:03d}" if pad_keys else str(index))
                for key, pixels in (("image", frame.intensity), ("gt-seg", frame.labels)):
                    image = proj.create_group(key)
                    image.create_dataset("pixels", data=pixels, compression="gzip")
                    image["origin"] = np.zeros(2)
                    image["spacing"] = np.array([0.194, 0.194])
                    image["dir-mat"] = np.eye(2)
                for name, (col, row) in frame.landmarks.items():
                    proj[f"gt-landmarks/{name}"] = np.array([[col], [row]])
                proj["gt-poses/cam-to-pelvis-vol"] = np.eye(4)
                proj["gt-poses/left-femur-good-fov"] = np.int64(1)
                proj["gt-poses/right-femur-good-fov"] = np.int64(1)
                proj["rot-180-for-up"] = np.int64(frame.rot180)
    return path
