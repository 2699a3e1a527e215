"""`silr ingest`: markers drawn in full-res frames land where the coordinate convention says."""

import json
import sys
import tracemalloc
from pathlib import Path

import h5py
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fullres_writer import AIR, Frame, Specimen, blank_frame, gaussian_marker, write_fullres  # noqa: E402

from silr import anatomy, cli, deepfluoro, ingest  # noqa: E402


def centroid(image: np.ndarray) -> tuple[float, float]:
    """Intensity-weighted (x, y) of a line-integral frame (background 0)."""
    rows, cols = np.indices(image.shape)
    weight = image.astype(np.float64)
    return float((weight * cols).sum() / weight.sum()), float((weight * rows).sum() / weight.sum())


def marker_frame(size: int, xy: tuple[float, float], rot180: int, name: str = "FH-l") -> Frame:
    """A frame with one attenuating blob at landmark `name` = xy (stored-frame pixels); the
    other landmarks sit far outside the frame, where nothing is drawn."""
    frame = blank_frame(size, rot180, landmark_xy=(-100.0, 300.0))
    gaussian_marker(frame, xy)
    frame.landmarks[name] = xy
    return frame


def run_cli(*args) -> int:
    return cli.main(["ingest", *map(str, args)])


def test_marker_lands_at_mapped_landmark_including_turned_frame(tmp_path):
    frames = [marker_frame(256, (70.3, 141.7), 0), marker_frame(256, (40.0, 60.0), 1, "ASIS-r"),
              marker_frame(256, (201.9, 38.25), 1, "IPS-l")]
    raw = write_fullres(tmp_path / "full.h5", [Specimen("18-0725", frames)])
    out = tmp_path / "ds.h5"
    assert run_cli("--raw", raw, "--out", out, "--crop", 8, "--downsample", 8, "--i0", AIR) == 0
    data = deepfluoro.read_processed(out)
    spec = data.specimens[3]  # 18-0725 is the paper's specimen 3
    assert spec.images.shape == (3, 30, 30)
    names = list(anatomy.LANDMARK_NAMES)
    # Hand values: (70.3 - 8 + 0.5) / 8 - 0.5 = 7.35; turned (40, 60) -> (215, 195) -> (25.4375, 22.9375);
    # turned (201.9, 38.25) -> (53.1, 216.75) -> (5.2, 25.65625).
    expected = {0: ("FH-l", (7.35, 16.275)), 1: ("ASIS-r", (25.4375, 22.9375)), 2: ("IPS-l", (5.2, 25.65625))}
    for frame, (name, xy) in expected.items():
        assert spec.landmarks_xy[frame, names.index(name)] == pytest.approx(xy)
        assert centroid(spec.images[frame]) == pytest.approx(xy, abs=0.1)
        assert np.abs(np.subtract(centroid(spec.images[frame]), xy)).max() < 1e-3  # in fact far closer
    # Out-of-frame landmarks keep their mapped position: (-100, 300) upright -> (-13.9375, 36.0625).
    assert spec.landmarks_xy[0, names.index("GSN-r")] == pytest.approx([-13.9375, 36.0625])
    # Turned: (-100, 300) -> (355, -45) -> (42.9375, -7.0625).
    assert spec.landmarks_xy[1, names.index("GSN-r")] == pytest.approx([42.9375, -7.0625])


def test_real_size_frame_turned(tmp_path):
    frame = marker_frame(1536, (1000.0, 333.3), 1, "MOF-l")
    frame.labels[1400:1416, 100:116] = anatomy.RIGHT_FEMUR   # stored frame; turned it lies at rows 119..134
    raw = write_fullres(tmp_path / "full.h5", [Specimen("17-1882", [frame]), Specimen("18-1109", [frame])])
    out = tmp_path / "ds.h5"
    assert run_cli("--raw", raw, "--out", out, "--i0", AIR) == 0
    spec = deepfluoro.read_processed(out).specimens[1]
    assert spec.images.shape == (1, 180, 180)
    # (1000, 333.3) turned -> (535, 1201.7) -> ((535 - 49.5) / 8 - 0.5, (1201.7 - 49.5) / 8 - 0.5)
    xy = (60.1875, 143.525)
    assert spec.landmarks_xy[0, anatomy.LANDMARK_NAMES.index("MOF-l")] == pytest.approx(xy)
    assert centroid(spec.images[0]) == pytest.approx(xy, abs=0.1)
    # Labels turn too: rows 1400..1415, cols 100..115 -> rows 120..135, cols 1420..1435 ->
    # cropped rows 70..85, cols 1370..1385 -> blocks rows 8.75..10.6, cols 171.25..173.1:
    # blocks (9, 172) and (10, 172) are fully covered; (9, 171) has 6 x 8 = 48 of 64; (9, 173) 16 of 64.
    femur = np.argwhere(spec.labels[0] == anatomy.RIGHT_FEMUR).tolist()
    assert femur == [[9, 171], [9, 172], [10, 171], [10, 172]]


def test_ingested_file_is_the_published_layout_with_our_attributes(tmp_path, capsys):
    frames = [marker_frame(64, (30.0, 30.0), i % 2) for i in range(3)]
    raw = write_fullres(tmp_path / "phantom.h5", [Specimen("99-0007", frames), Specimen("17-1905", frames[:2])],
                        attrs={"silr-data-kind": "synthetic"})
    out = tmp_path / "processed" / "ds.h5"
    assert run_cli("--raw", raw, "--out", out, "--crop", 4, "--downsample", 4, "--i0", AIR) == 0
    assert "2 specimens, 5 frames of 14x14" in capsys.readouterr().out
    # Read it the way code written for ipcai_2020_ds_8x.h5 does.
    with h5py.File(out, "r") as f:
        assert sorted(f.keys()) == ["06", "07", "land-names"]
        assert int(f["land-names/num-lands"][()]) == 14
        assert [f[f"land-names/land-{i:02d}"][()].decode() for i in range(14)] == list(anatomy.LANDMARK_NAMES)
        assert f["07/projs"].dtype == np.float32 and f["07/projs"].shape == (3, 14, 14)
        assert f["07/segs"].dtype == np.uint8 and f["06/lands"].shape == (2, 2, 14)
        # lands[n][0][l] is the column: FH-l at (30, 30) upright -> (30 - 4 + 0.5) / 4 - 0.5 = 6.125
        assert f["07/lands"][0, 0, 0] == pytest.approx(6.125) and f["07/lands"][0, 1, 0] == pytest.approx(6.125)
        attrs = dict(f.attrs)
    assert attrs["silr-data-kind"] == "synthetic" and attrs["silr-downsample"] == 4
    assert attrs["silr-crop"] == 4 and attrs["silr-i0"] == AIR and attrs["silr-source"] == str(raw)
    assert attrs["silr-pixel-spacing-mm"] == pytest.approx(0.776)
    assert json.loads(attrs["silr-specimen-ids"]) == {"6": "17-1905", "7": "99-0007"}
    data = deepfluoro.read_processed(out)
    assert data.specimen_ids == {6: "17-1905", 7: "99-0007"} and data.data_kind == "synthetic"
    assert list(out.parent.iterdir()) == [out]  # no temporary file left behind


def test_processed_input_is_copied_through_at_its_factor_only(tmp_path, capsys):
    from test_deepfluoro import write_published_8x
    write_published_8x(tmp_path / "ipcai_2020_ds_8x.h5")
    src = deepfluoro.read_processed(tmp_path / "ipcai_2020_ds_8x.h5")
    out = tmp_path / "ds.h5"
    assert run_cli("--raw", tmp_path / "ipcai_2020_ds_8x.h5", "--out", out) == 0
    copied = deepfluoro.read_processed(out)
    assert copied.attrs["silr-ingest-mode"] == "copied" and copied.downsample == 8
    for number in (1, 2):
        np.testing.assert_array_equal(copied.specimens[number].images, src.specimens[number].images)
        np.testing.assert_array_equal(copied.specimens[number].labels, src.specimens[number].labels)
        np.testing.assert_array_equal(copied.specimens[number].landmarks_xy, src.specimens[number].landmarks_xy)
    capsys.readouterr()
    assert run_cli("--raw", tmp_path / "ipcai_2020_ds_8x.h5", "--out", tmp_path / "ds4.h5", "--downsample", 4) == 2
    err = capsys.readouterr().err
    assert "preprocessed at 8x, but data.downsample is 4" in err and "ipcai_2020_ds_8x.h5" in err
    assert not (tmp_path / "ds4.h5").exists()


def test_non_positive_intensities_warn_with_a_count(tmp_path, capsys):
    frame = blank_frame(64)
    frame.intensity[10, 10:15] = 0.0
    frame.intensity[20, 20] = -5.0
    raw = write_fullres(tmp_path / "full.h5", [Specimen("17-1882", [frame, blank_frame(64)])])
    assert run_cli("--raw", raw, "--out", tmp_path / "ds.h5", "--crop", 0, "--i0", AIR) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"silr: warning: {raw}: 6 raw intensities below 1 in 1 frame(s) clipped to 1 "
                   f"before the log transform"]
    image = deepfluoro.read_processed(tmp_path / "ds.h5").specimens[1].images[0]
    # Block (1, 1) holds pixels 10..14 of row 10 at log(60000) - log(1) = 11.0021, the rest 0.
    assert image[1, 1] == pytest.approx(5 * np.log(AIR) / 64, rel=1e-6)


def test_ingestion_streams_frame_by_frame(tmp_path):
    # 12 real-size frames: 113 MB of float32 if they were all loaded at once; streaming
    # needs a few working copies of one frame (about 75 MB measured).
    frames = [blank_frame(1536) for _ in range(12)]
    raw = write_fullres(tmp_path / "full.h5", [Specimen("17-1882", frames[:6]), Specimen("18-1109", frames[6:])])
    del frames
    tracemalloc.start()
    ingest.run(raw, tmp_path / "ds.h5", factor=8, crop=50, i0=AIR)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    frame_bytes = 1536 * 1536 * 4
    assert peak < 10 * frame_bytes, f"peak {peak / 1e6:.0f} MB"
