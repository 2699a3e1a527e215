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
from silr import cli  # noqa: E402
from silr.core import anatomy  # noqa: E402
from silr.data.processed import read_processed  # noqa: E402
from silr.stages import ingest  # noqa: E402
from test_deepfluoro import write_published_8x  # noqa: E402


def centroid(
    image: np.ndarray, around: tuple[float, float] | None = None, radius: float = 0.0
) -> tuple[float, float]:
    """Intensity-weighted (x, y) of a line-integral frame (background 0), optionally only
    over the pixels within `radius` of `around`."""
    rows, cols = np.indices(image.shape)
    weight = image.astype(np.float64)
    if around is not None:
        near = (cols - around[0]) ** 2 + (rows - around[1]) ** 2 <= radius**2
        weight = np.where(near, weight, 0.0)
    return float((weight * cols).sum() / weight.sum()), float((weight * rows).sum() / weight.sum())


def marker_frame(size: int, xy: tuple[float, float], rot180: int, name: str = "FH-l") -> Frame:
    """A frame with one attenuating blob at landmark `name` = xy (stored-frame pixels); the
    other landmarks sit far outside the frame, where nothing is drawn."""
    frame = blank_frame(size, rot180, landmark_xy=(-100.0, 300.0))
    gaussian_marker(frame, xy)
    frame.landmarks[name] = xy
    return frame


def marker_disc(
    frame: Frame, xy: tuple[float, float], radius: float, line_integral: float = 2.0
) -> None:
    """Attenuate a disc of `radius` px centred at (column, row) = xy, its edge anti-aliased
    over one pixel, so that its centroid is xy to well under 0.01 px."""
    rows, cols = np.indices(frame.intensity.shape, dtype=np.float64)
    distance = np.hypot(cols - xy[0], rows - xy[1])
    coverage = np.clip(radius - distance + 0.5, 0.0, 1.0)
    frame.intensity *= np.exp(-line_integral * coverage).astype(np.float32)


def run_cli(*args) -> int:
    return cli.main(["ingest", *map(str, args)])


# Sub-pixel marker positions in the stored 1536 x 1536 frame, far apart and inside the crop.
MARKERS = {"MOF-l": (333.3, 1201.7), "FH-r": (1000.45, 333.3), "ASIS-l": (812.9, 777.15)}


@pytest.fixture(scope="module")
def real_size_markers(tmp_path_factory):
    """One upright and one turned real-size frame with a disc at each of MARKERS (radius
    40 px, wide enough for the 16x grid), written by the independent test writer."""
    tmp = tmp_path_factory.mktemp("markers")
    frames = []
    for rot180 in (0, 1):
        frame = blank_frame(1536, rot180, landmark_xy=(-100.0, 300.0))
        for name, xy in MARKERS.items():
            marker_disc(frame, xy, radius=40.0)
            frame.landmarks[name] = xy
        frames.append(frame)
    return write_fullres(tmp / "full.h5", [Specimen("17-1882", frames)])


@pytest.mark.parametrize("factor", [2, 4, 8, 16])
def test_marker_discs_land_where_the_mapping_says_at_every_factor(
    real_size_markers, tmp_path, factor
):
    out = tmp_path / "ds.h5"
    assert (
        run_cli("--raw", real_size_markers, "--out", out, "--downsample", factor, "--i0", AIR) == 0
    )
    spec = read_processed(out).specimens[1]
    width = {2: 718, 4: 359, 8: 180, 16: 90}[factor]
    assert spec.images.shape == (2, width, width)
    names = list(anatomy.LANDMARK_NAMES)
    worst = {}
    for frame, turned in ((0, False), (1, True)):
        deviations = []
        for name, (x, y) in MARKERS.items():
            small = ((x - 50) / factor, (y - 50) / factor)
            if turned:  # the pinned form: (W_f - 1) - (x - 50) / f
                small = (width - 1 - small[0], width - 1 - small[1])
            assert spec.landmarks_xy[frame, names.index(name)] == pytest.approx(small, abs=1e-9)
            found = centroid(
                spec.images[frame], around=small, radius=(40 + 3 * factor) / factor + 2
            )
            deviations.append(np.hypot(found[0] - small[0], found[1] - small[1]))
        worst["turned" if turned else "upright"] = max(deviations)
    print(
        f"\n{factor}x worst marker deviation (px of the small frame): "
        f"upright {worst['upright']:.4f}, turned {worst['turned']:.4f}"
    )
    assert max(worst.values()) < 0.1
    # Out-of-frame landmarks keep their mapped position: (-100, 300) -> (-150 / f, 250 / f) upright.
    assert spec.landmarks_xy[0, names.index("GSN-r")] == pytest.approx(
        [-150 / factor, 250 / factor]
    )


def test_labels_turn_in_the_small_frame(tmp_path):
    frame = blank_frame(1536, 1)
    frame.labels[1400:1416, 100:116] = anatomy.RIGHT_FEMUR  # stored frame
    raw = write_fullres(
        tmp_path / "full.h5", [Specimen("17-1882", [frame]), Specimen("18-1109", [frame])]
    )
    out = tmp_path / "ds.h5"
    assert run_cli("--raw", raw, "--out", out, "--i0", AIR) == 0
    labels = read_processed(out).specimens[1].labels[0]
    # Stored rows 1400..1415 are cropped rows 1350..1365, which hold the samples 1352 and 1360:
    # small rows 169, 170; columns 100..115 -> cropped 50..65 -> samples 56, 64: small columns 7, 8.
    # Turned in the 180 x 180 frame: rows 10, 9 and columns 172, 171.
    femur = np.argwhere(labels == anatomy.RIGHT_FEMUR).tolist()
    assert femur == [[9, 171], [9, 172], [10, 171], [10, 172]]


def test_small_marker_frames_with_hand_values(tmp_path):
    frames = [marker_frame(256, (70.3, 141.7), 0), marker_frame(256, (40.0, 60.0), 1, "ASIS-r")]
    raw = write_fullres(tmp_path / "full.h5", [Specimen("18-0725", frames)])
    out = tmp_path / "ds.h5"
    assert run_cli("--raw", raw, "--out", out, "--crop", 8, "--downsample", 8, "--i0", AIR) == 0
    spec = read_processed(out).specimens[3]  # 18-0725 is the paper's specimen 3
    assert spec.images.shape == (2, 30, 30)  # round(240 / 8)
    names = list(anatomy.LANDMARK_NAMES)
    # (70.3 - 8) / 8 = 7.7875, (141.7 - 8) / 8 = 16.7125; turned (40, 60): (29 - 4, 29 - 6.5).
    expected = {0: ("FH-l", (7.7875, 16.7125)), 1: ("ASIS-r", (25.0, 22.5))}
    for frame, (name, xy) in expected.items():
        assert spec.landmarks_xy[frame, names.index(name)] == pytest.approx(xy)
        assert centroid(spec.images[frame]) == pytest.approx(xy, abs=0.1)
    # Turned: (-100, 300) -> (-13.5, 36.5) -> (29 + 13.5, 29 - 36.5).
    assert spec.landmarks_xy[1, names.index("GSN-r")] == pytest.approx([42.5, -7.5])


def test_ingested_file_is_the_published_layout_with_our_attributes(tmp_path, capsys):
    frames = [marker_frame(64, (30.0, 30.0), i % 2) for i in range(3)]
    raw = write_fullres(
        tmp_path / "phantom.h5",
        [Specimen("99-0007", frames), Specimen("17-1905", frames[:2])],
        attrs={"silr-data-kind": "synthetic"},
    )
    out = tmp_path / "processed" / "ds.h5"
    assert run_cli("--raw", raw, "--out", out, "--crop", 4, "--downsample", 4, "--i0", AIR) == 0
    assert "2 specimens, 5 frames of 14x14" in capsys.readouterr().out
    # Read it the way code written for ipcai_2020_ds_8x.h5 does.
    with h5py.File(out, "r") as f:
        assert sorted(f.keys()) == ["06", "07", "land-names"]
        assert int(f["land-names/num-lands"][()]) == 14
        names = [f[f"land-names/land-{i:02d}"][()].decode() for i in range(14)]
        assert names == list(anatomy.LANDMARK_NAMES)
        assert f["07/projs"].dtype == np.float32 and f["07/projs"].shape == (3, 14, 14)
        assert f["07/segs"].dtype == np.uint8 and f["06/lands"].shape == (2, 2, 14)
        # lands[n][0][l] is the column: FH-l at (30, 30) upright -> (30 - 4) / 4 = 6.5
        assert f["07/lands"][0, 0, 0] == pytest.approx(6.5)
        assert f["07/lands"][0, 1, 0] == pytest.approx(6.5)
        attrs = dict(f.attrs)
    assert attrs["silr-data-kind"] == "synthetic" and attrs["silr-downsample"] == 4
    assert attrs["silr-crop"] == 4 and attrs["silr-i0"] == AIR and attrs["silr-source"] == str(raw)
    assert attrs["silr-pixel-spacing-mm"] == pytest.approx(0.776)
    assert json.loads(attrs["silr-specimen-ids"]) == {"6": "17-1905", "7": "99-0007"}
    data = read_processed(out)
    assert data.specimen_ids == {6: "17-1905", 7: "99-0007"} and data.data_kind == "synthetic"
    assert list(out.parent.iterdir()) == [out]  # no temporary file left behind


def test_processed_input_is_copied_through_at_its_factor_only(tmp_path, capsys):
    write_published_8x(tmp_path / "ipcai_2020_ds_8x.h5")
    src = read_processed(tmp_path / "ipcai_2020_ds_8x.h5")
    out = tmp_path / "ds.h5"
    assert run_cli("--raw", tmp_path / "ipcai_2020_ds_8x.h5", "--out", out) == 0
    copied = read_processed(out)
    assert copied.attrs["silr-ingest-mode"] == "copied" and copied.downsample == 8
    for number in (1, 2):
        np.testing.assert_array_equal(copied.specimens[number].images, src.specimens[number].images)
        np.testing.assert_array_equal(copied.specimens[number].labels, src.specimens[number].labels)
        np.testing.assert_array_equal(
            copied.specimens[number].landmarks_xy, src.specimens[number].landmarks_xy
        )
    capsys.readouterr()
    assert (
        run_cli(
            "--raw",
            tmp_path / "ipcai_2020_ds_8x.h5",
            "--out",
            tmp_path / "ds4.h5",
            "--downsample",
            4,
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "preprocessed at 8x, but data.downsample is 4" in err and "ipcai_2020_ds_8x.h5" in err
    assert not (tmp_path / "ds4.h5").exists()


def test_non_positive_intensities_warn_with_a_count(tmp_path, capsys):
    frame = blank_frame(64)
    frame.intensity[10, 10:15] = 0.0
    frame.intensity[20, 20] = -5.0
    raw = write_fullres(tmp_path / "full.h5", [Specimen("17-1882", [frame, blank_frame(64)])])
    assert (
        run_cli(
            "--raw", raw, "--out", tmp_path / "ds.h5", "--crop", 0, "--downsample", 1, "--i0", AIR
        )
        == 0
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"silr: warning: {raw}: 6 raw intensities below 1 in 1 frame(s) clipped to 1 "
        f"before the log transform"
    ]
    image = read_processed(tmp_path / "ds.h5").specimens[1].images[0]
    # At factor 1 nothing is smoothed: clipped pixels hold log(60000) - log(1) = 11.0021, the
    # rest 0.
    assert image[10, 12] == pytest.approx(np.log(AIR), rel=1e-6) and image[11, 12] == 0.0


def test_ingestion_streams_frame_by_frame(tmp_path):
    # 12 real-size frames: 113 MB of float32 if they were all loaded at once; streaming
    # needs a few working copies of one frame (about 75 MB measured).
    frames = [blank_frame(1536) for _ in range(12)]
    raw = write_fullres(
        tmp_path / "full.h5", [Specimen("17-1882", frames[:6]), Specimen("18-1109", frames[6:])]
    )
    del frames
    tracemalloc.start()
    ingest.run(raw, tmp_path / "ds.h5", factor=8, crop=50, i0=AIR)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    frame_bytes = 1536 * 1536 * 4
    assert peak < 10 * frame_bytes, f"peak {peak / 1e6:.0f} MB"
