"""The ingestion transforms and the readers of both DeepFluoro layouts, with hand values."""

import math
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fullres_writer import Specimen, blank_frame, write_fullres  # noqa: E402

from silr import anatomy, deepfluoro  # noqa: E402


# ------------------------------------------------------------------ transforms

def test_log_transform_block_mean_and_clipping():
    i0 = 100.0
    intensity = np.full((8, 8), i0 / math.e**2)       # line integral 2 everywhere
    intensity[0, 0], intensity[0, 1], intensity[5, 6] = 0.0, -3.0, 0.5  # three below the floor of 1
    with pytest.warns(deepfluoro.ClippedIntensityWarning, match="3 raw intensities below 1"):
        frame = deepfluoro.preprocess_raw_frame(intensity, crop=0, i0=i0, factor=4, rotate=False)
    assert frame.dtype == np.float32 and frame.shape == (2, 2)
    # Clipped pixels become log(100) - log(1) = 4.6052; each 4x4 block is the mean of 16.
    assert frame[0, 0] == pytest.approx((14 * 2 + 2 * math.log(100)) / 16, abs=1e-6)
    assert frame[1, 1] == pytest.approx((15 * 2 + math.log(100)) / 16, abs=1e-6)
    assert frame[0, 1] == pytest.approx(2.0) and frame[1, 0] == pytest.approx(2.0)


def test_crop_rotation_and_partial_last_block():
    # A 20x20 frame, crop 2, factor 4: 16 cropped px -> 4 blocks; 18 cropped px (crop 1) -> 5 blocks,
    # the last one reaching one pixel into the margin.
    line = np.arange(20, dtype=np.float64)
    intensity = 1e12 * np.exp(-np.tile(line, (20, 1)))  # line integral = column index
    frame = deepfluoro.preprocess_raw_frame(intensity, crop=2, i0=1e12, factor=4, rotate=False)
    assert frame[0].tolist() == pytest.approx([3.5, 7.5, 11.5, 15.5])   # block centres 2+1.5, ...
    turned = deepfluoro.preprocess_raw_frame(intensity, crop=2, i0=1e12, factor=4, rotate=True)
    assert turned[0].tolist() == pytest.approx([15.5, 11.5, 7.5, 3.5])   # column c -> 19 - c
    wide = deepfluoro.preprocess_raw_frame(intensity, crop=1, i0=1e12, factor=4, rotate=False)
    assert wide.shape == (5, 5) and wide[0, -1] == pytest.approx(18.0)   # block 17..20: only 17..19 exist
    assert deepfluoro.output_size(1536, 50, 8) == 180 and deepfluoro.output_size(1536, 50, 16) == 90


def test_label_block_majority_ties_to_lower():
    labels = np.zeros((8, 16), np.uint8)
    labels[:5, 1:8] = 2            # block 0: 35 of 64 are 2 -> 2
    labels[:4, 8:16] = 3           # block 1: 32 x 3 and 32 x 1 -> tie -> 1
    labels[4:, 8:16] = 1
    assert deepfluoro.downsample_labels(labels, crop=0, factor=8, rotate=False).tolist() == [[2, 1]]
    thin = np.zeros((8, 8), np.uint8)
    thin[:, 3:5] = 4               # a 2-px line: 16 of 64 -> background
    assert deepfluoro.downsample_labels(thin, crop=0, factor=8, rotate=False).tolist() == [[0]]
    turned = deepfluoro.downsample_labels(labels, crop=0, factor=8, rotate=True)
    assert turned.tolist() == [[1, 2]] and turned.dtype == np.uint8


def test_landmarks_turn_then_map():
    xy = np.array([[40.0, 60.0], [-100.0, 300.0]])
    upright = deepfluoro.preprocess_landmarks(xy, crop=8, factor=8, rotate=False, width=256, height=256)
    # (40 - 8 + 0.5) / 8 - 0.5 = 3.5625; (-100 - 8 + 0.5) / 8 - 0.5 = -13.9375 (kept, out of frame)
    assert upright.ravel().tolist() == pytest.approx([3.5625, 6.0625, -13.9375, 36.0625])
    turned = deepfluoro.preprocess_landmarks(xy, crop=8, factor=8, rotate=True, width=256, height=256)
    # (40, 60) -> (215, 195) -> ((215 - 8 + 0.5) / 8 - 0.5, (195 - 8 + 0.5) / 8 - 0.5)
    assert turned[0].tolist() == pytest.approx([25.4375, 22.9375])


# ------------------------------------------------------------------ readers

def write_published_8x(path: Path, frames: int = 2) -> dict[str, np.ndarray]:
    """The published ipcai_2020_ds_8x.h5 layout as its own files have it: no root attributes,
    names as bytes, here in reversed order (readers must match by name)."""
    names = list(reversed(anatomy.LANDMARK_NAMES))
    rng = np.random.default_rng(0)
    lands = {}
    with h5py.File(path, "w") as f:
        f["land-names/num-lands"] = np.uint64(len(names))
        for i, name in enumerate(names):
            f[f"land-names/land-{i:02d}"] = np.bytes_(name)
        for number in (1, 2):
            lands[number] = rng.uniform(-10, 190, size=(frames, 2, len(names)))
            f[f"{number:02d}/projs"] = rng.random((frames, 180, 180)).astype(np.float32)
            f[f"{number:02d}/segs"] = rng.integers(0, 7, size=(frames, 180, 180)).astype(np.uint8)
            f[f"{number:02d}/lands"] = lands[number]
    return lands


def test_read_published_processed_file_by_name(tmp_path):
    lands = write_published_8x(tmp_path / "ipcai_2020_ds_8x.h5")
    assert deepfluoro.detect_layout(tmp_path / "ipcai_2020_ds_8x.h5") == deepfluoro.PROCESSED
    data = deepfluoro.read_processed(tmp_path / "ipcai_2020_ds_8x.h5")
    assert data.downsample == 8 and data.pixel_spacing_mm == pytest.approx(1.552)
    assert data.data_kind == "deepfluoro" and data.specimen_ids == {1: "17-1882", 2: "18-1109"}
    spec = data.specimens[2]
    assert spec.images.shape == (2, 180, 180) and spec.labels.dtype == np.uint8
    # File order is reversed: FH-l (canonical 0) is the file's last landmark.
    assert spec.landmarks_xy[1, 0].tolist() == [lands[2][1, 0, 13], lands[2][1, 1, 13]]
    assert spec.landmarks_xy[1, 13].tolist() == [lands[2][1, 0, 0], lands[2][1, 1, 0]]


def test_fullres_reader_numeric_order_and_numbering(tmp_path):
    # Unpadded keys 0..10: lexical order would put 10 before 2.
    frames = [blank_frame(64, landmark_xy=(float(i), 1.0)) for i in range(11)]
    path = write_fullres(tmp_path / "full.h5", [Specimen("99-0008", frames[:2]), Specimen("18-2800", frames),
                                                Specimen("99-0007", frames[:1])], pad_keys=False)
    assert deepfluoro.detect_layout(path) == deepfluoro.FULLRES
    index = deepfluoro.fullres_frame_index(path)
    assert list(index) == [5, 7, 8]
    assert index[5] == tuple(str(i) for i in range(11))
    with h5py.File(path) as f:
        scanned = deepfluoro.scan_fullres(f, path)
        assert scanned.specimen_ids == {5: "18-2800", 7: "99-0007", 8: "99-0008"}
        xs = [frame.landmarks_xy[0, 0] for frame in deepfluoro.iter_raw_frames(f, path, scanned)]
    assert xs[:11] == [float(i) for i in range(11)] and len(xs) == 14
    intensity, rotate = deepfluoro.read_fullres_frame(path, 5, 10)
    assert intensity.shape == (64, 64) and rotate is False
