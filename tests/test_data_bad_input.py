"""Bad input to `silr ingest` (and the readers): one line naming the file and the field,
exit status 2, no traceback, and nothing at the output path. One test per case."""

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fullres_writer import Specimen, blank_frame, write_fullres  # noqa: E402
from silr import cli  # noqa: E402
from silr.data.processed import read_processed  # noqa: E402
from test_deepfluoro import write_published_8x  # noqa: E402

FRAME = "17-1882/projections/001"


@pytest.fixture
def good_fullres(tmp_path) -> Path:
    """Two specimens of two 32x32 frames: valid, then each test breaks one thing."""
    specimens = [
        Specimen(sid, [blank_frame(32), blank_frame(32, rot180=1)])
        for sid in ("17-1882", "18-1109")
    ]
    return write_fullres(tmp_path / "full.h5", specimens)


@pytest.fixture
def good_processed(tmp_path) -> Path:
    path = tmp_path / "ds_8x.h5"
    write_published_8x(path, frames=1)
    return path


def ingest_fails(path: Path, capsys, *expected: str) -> str:
    """Run the real CLI in-process; check the failure contract; return the message."""
    out = path.parent / "out" / "ds.h5"
    rc = cli.main(
        ["ingest", "--raw", str(path), "--out", str(out), "--crop", "4", "--downsample", "4"]
    )
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert rc == 2, captured
    assert len(lines) == 1 and lines[0].startswith("silr: error: "), lines
    assert str(path) in lines[0] and "Traceback" not in captured.err
    for text in expected:
        assert text in lines[0], lines[0]
    assert not out.exists()
    # no temporary file left either
    assert not out.parent.exists() or list(out.parent.iterdir()) == []
    return lines[0]


def test_missing_input_says_how_to_get_data(tmp_path, capsys):
    ingest_fails(
        tmp_path / "nowhere.h5",
        capsys,
        "no such file",
        "silr synth",
        "dvc repro synth",
        "data/raw/README.md",
    )


def test_not_hdf5(tmp_path, capsys):
    path = tmp_path / "notes.h5"
    path.write_text("frame,x,y\n1,2,3\n")
    ingest_fails(path, capsys, "not an HDF5 file")


def test_truncated_hdf5(good_fullres, capsys):
    size = good_fullres.stat().st_size
    with open(good_fullres, "r+b") as f:
        f.truncate(size // 2)
    ingest_fails(good_fullres, capsys, "truncated or corrupt")


def test_unknown_layout(tmp_path, capsys):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["images/0"] = np.zeros((4, 4))
    ingest_fails(path, capsys, "unknown layout", "['images']")


def test_missing_group_names_specimen_and_projection(good_fullres, capsys):
    with h5py.File(good_fullres, "r+") as f:
        del f[f"{FRAME}/gt-seg"]
    ingest_fails(good_fullres, capsys, f"missing group {FRAME}/gt-seg")


def test_missing_dataset_names_specimen_and_projection(good_fullres, capsys):
    with h5py.File(good_fullres, "r+") as f:
        del f[f"{FRAME}/image/pixels"]
    ingest_fails(good_fullres, capsys, f"missing dataset {FRAME}/image/pixels")


def test_missing_processed_dataset(good_processed, capsys):
    with h5py.File(good_processed, "r+") as f:
        del f["02/segs"]
    ingest_fails(good_processed, capsys, "missing dataset 02/segs")


def test_wrong_frame_shape(good_fullres, capsys):
    with h5py.File(good_fullres, "r+") as f:
        del f[f"{FRAME}/image/pixels"]
        f[f"{FRAME}/image/pixels"] = np.full((30, 32), 6e4, np.float32)
    ingest_fails(
        good_fullres, capsys, f"{FRAME}/image/pixels has shape (30, 32), expected (32, 32)"
    )


def test_wrong_landmark_shape(good_fullres, capsys):
    with h5py.File(good_fullres, "r+") as f:
        del f[f"{FRAME}/gt-landmarks/SPS-r"]
        f[f"{FRAME}/gt-landmarks/SPS-r"] = np.zeros((3, 1))
    ingest_fails(good_fullres, capsys, f"{FRAME}/gt-landmarks/SPS-r has shape (3, 1)")


def test_wrong_processed_lands_shape(good_processed, capsys):
    with h5py.File(good_processed, "r+") as f:
        del f["01/lands"]
        f["01/lands"] = np.zeros((1, 14, 2))
    ingest_fails(good_processed, capsys, "01/lands has shape (1, 14, 2), expected (1, 2, 14)")


def test_extra_landmark_names_are_ignored_with_one_warning(good_fullres, capsys):
    with h5py.File(good_fullres, "r+") as f:
        f[f"{FRAME}/gt-landmarks/FH-x"] = np.full((2, 1), 7.0)
        f["18-1109/projections/000/gt-landmarks/FH-x"] = np.zeros((2, 1))
        f["18-1109/projections/000/gt-landmarks/COCCYX"] = np.zeros((2, 1))
    out = good_fullres.parent / "out" / "ds.h5"
    rc = cli.main(
        [
            "ingest",
            "--raw",
            str(good_fullres),
            "--out",
            str(out),
            "--crop",
            "4",
            "--downsample",
            "4",
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured
    warnings_printed = captured.err.strip().splitlines()
    assert warnings_printed == [
        f"silr: warning: {good_fullres}: gt-landmarks of 2 frame(s) also has landmark(s) "
        f"['COCCYX', 'FH-x'], not among the 14 silr uses (FH-l, FH-r, GSN-l, GSN-r, "
        f"IOF-l, IOF-r, MOF-l, MOF-r, SPS-l, SPS-r, IPS-l, IPS-r, ASIS-l, ASIS-r); ignored"
    ]
    data = read_processed(out)
    assert data.specimens[1].landmarks_xy.shape == (2, 14, 2)


def test_missing_landmark_name(good_fullres, capsys):
    with h5py.File(good_fullres, "r+") as f:
        del f[f"{FRAME}/gt-landmarks/MOF-r"]
    ingest_fails(good_fullres, capsys, f"{FRAME}/gt-landmarks has no landmark(s) ['MOF-r']")


def test_processed_file_whose_name_was_replaced_misses_a_landmark(good_processed, capsys):
    with h5py.File(good_processed, "r+") as f:
        name = f["land-names/land-03"][()].decode()
        del f["land-names/land-03"]
        f["land-names/land-03"] = np.bytes_("ASIS-x")
    ingest_fails(good_processed, capsys, f"land-names has no landmark(s) ['{name}']")


def test_labels_outside_range(good_fullres, capsys):
    with h5py.File(good_fullres, "r+") as f:
        f[f"{FRAME}/gt-seg/pixels"][5, 5] = 9
    ingest_fails(good_fullres, capsys, f"{FRAME}/gt-seg/pixels has label value(s) [9] outside 0..6")


def test_non_finite_pixels(good_fullres, capsys):
    with h5py.File(good_fullres, "r+") as f:
        f[f"{FRAME}/image/pixels"][3, 7] = np.nan
    ingest_fails(
        good_fullres,
        capsys,
        f"{FRAME}/image/pixels has 1 non-finite value(s) (first at index (3, 7))",
    )


def test_specimen_with_no_frames(good_fullres, capsys):
    with h5py.File(good_fullres, "r+") as f:
        del f["18-1109/projections/000"], f["18-1109/projections/001"]
    ingest_fails(good_fullres, capsys, "specimen 18-1109 has no frames")


def test_processed_specimen_with_no_frames(good_processed, capsys):
    with h5py.File(good_processed, "r+") as f:
        for key in ("projs", "segs"):
            del f[f"02/{key}"]
            f[f"02/{key}"] = np.zeros((0, 180, 180), np.float32 if key == "projs" else np.uint8)
        del f["02/lands"]
        f["02/lands"] = np.zeros((0, 2, 14))
    ingest_fails(good_processed, capsys, "specimen 02 has no frames")


def test_subprocess_exit_status_and_no_traceback(good_fullres, tmp_path):
    with h5py.File(good_fullres, "r+") as f:
        del f[f"{FRAME}/rot-180-for-up"]
    out = tmp_path / "out.h5"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "silr",
            "ingest",
            "--raw",
            str(good_fullres),
            "--out",
            str(out),
            "--crop",
            "4",
            "--downsample",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr == f"silr: error: {good_fullres}: missing dataset {FRAME}/rot-180-for-up\n"
    assert result.stdout == "" and not out.exists()
