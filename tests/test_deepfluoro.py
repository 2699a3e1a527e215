"""The readers of both DeepFluoro layouts, with hand values."""

import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fullres_writer import Specimen, blank_frame, write_fullres  # noqa: E402
from silr.core import anatomy  # noqa: E402
from silr.data import deepfluoro, fullres, processed  # noqa: E402

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
    data = processed.read_processed(tmp_path / "ipcai_2020_ds_8x.h5")
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
    specimens = [
        Specimen("99-0008", frames[:2]),
        Specimen("18-2800", frames),
        Specimen("99-0007", frames[:1]),
    ]
    path = write_fullres(tmp_path / "full.h5", specimens, pad_keys=False)
    assert deepfluoro.detect_layout(path) == deepfluoro.FULLRES
    index = fullres.fullres_frame_index(path)
    assert list(index) == [5, 7, 8]
    assert index[5] == tuple(str(i) for i in range(11))
    with h5py.File(path) as f:
        scanned = fullres.scan_fullres(f, path)
        assert scanned.specimen_ids == {5: "18-2800", 7: "99-0007", 8: "99-0008"}
        xs = [frame.landmarks_xy[0, 0] for frame in fullres.iter_raw_frames(f, path, scanned)]
    assert xs[:11] == [float(i) for i in range(11)] and len(xs) == 14
    intensity, rotate = fullres.read_fullres_frame(path, 5, 10)
    assert intensity.shape == (64, 64) and rotate is False
