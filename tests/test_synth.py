"""The synthetic phantom: layout, geometry, labels, intensities, determinism, preview."""

import os

import h5py
import numpy as np
import pytest
from scipy import ndimage

from silr.core import anatomy, coords
from silr.core.errors import ConfigError
from silr.core.params import SynthParams
from silr.data.processed import read_processed
from silr.data.splits import make_folds
from silr.evaluation import baselines, metrics
from silr.phantom.geometry import Ellipsoid, ray_intervals, union_minus_holes_length
from silr.phantom.projector import (
    COLLIMATOR_PX,
    MAX_INTENSITY,
    Detector,
    project_points,
    sample_pose,
)
from silr.phantom.specimen import make_specimen
from silr.stages import ingest
from silr.stages.synth import run, specimen_ids, specimen_rng, write_phantom

SIZE = anatomy.FULLRES_SIZE_PX
IMAGE_GROUP = ("pixels", "origin", "spacing", "dir-mat")


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    path, preview = out / "phantom.h5", out / "preview.png"
    summary = run(path, frames=(3, 2), seed=0, preview=preview)
    return path, preview, summary


def _frames(path):
    """(specimen id, frame key, group) for every stored projection."""
    with h5py.File(path) as f:
        for sid in f:
            if sid == "proj-params":
                continue
            for key in f[sid]["projections"]:
                yield sid, key, f[sid]["projections"][key]


def test_layout_is_complete(phantom):
    path, _, _ = phantom
    with h5py.File(path) as f:
        assert f.attrs["silr-data-kind"] == "synthetic"
        assert f.attrs["silr-seed"] == 0
        assert sorted(f) == sorted(["proj-params", "17-1882", "18-1109"])
        params = f["proj-params"]
        assert params["num-cols"][()] == params["num-rows"][()] == 1536
        assert (
            params["pixel-col-spacing"][()]
            == params["pixel-row-spacing"][()]
            == pytest.approx(0.194)
        )
        # focal length in pixels = source-to-detector distance / pixel spacing = 1020 / 0.194
        assert params["intrinsic"][()][0, 0] == pytest.approx(5257.73, abs=0.01)
        assert params["extrinsic"].shape == (4, 4)
        for sid in ("17-1882", "18-1109"):
            spec = f[sid]
            for group in (spec["vol"], spec["vol-seg/image"]):
                assert sorted(group) == sorted(IMAGE_GROUP)
                assert group["pixels"].ndim == 3 and group["spacing"].shape == (3,)
            assert spec["vol-seg/image/pixels"].dtype == np.uint8
            assert set(np.unique(spec["vol-seg/image/pixels"][()])) == set(range(7))
            labels_def = spec["vol-seg/labels-def"]
            assert {int(k): labels_def[k][()].decode() for k in labels_def} == {
                v: anatomy.LABEL_NAMES[v] for v in anatomy.BONE_LABELS
            }
            assert sorted(spec["vol-landmarks"]) == sorted(anatomy.LANDMARK_NAMES)
            assert all(spec["vol-landmarks"][n].shape == (3, 1) for n in anatomy.LANDMARK_NAMES)
            count = {"17-1882": 3, "18-1109": 2}[sid]
            assert sorted(spec["projections"]) == ["000", "001", "002"][:count]
            for key in spec["projections"]:
                proj = spec["projections"][key]
                assert sorted(proj["image"]) == sorted(IMAGE_GROUP)
                assert proj["image/pixels"].shape == (SIZE, SIZE)
                assert proj["image/pixels"].dtype == np.float32
                assert proj["gt-seg/pixels"].shape == (SIZE, SIZE)
                assert proj["gt-seg/pixels"].dtype == np.uint8
                assert tuple(proj["image/spacing"][()]) == pytest.approx((0.194, 0.194))
                assert sorted(proj["gt-landmarks"]) == sorted(anatomy.LANDMARK_NAMES)
                assert all(proj["gt-landmarks"][n].shape == (2, 1) for n in anatomy.LANDMARK_NAMES)
                assert sorted(proj["gt-poses"]) == sorted(
                    [
                        "cam-to-pelvis-vol",
                        "cam-to-left-femur-vol",
                        "cam-to-right-femur-vol",
                        "left-femur-good-fov",
                        "right-femur-good-fov",
                    ]
                )
                assert proj["gt-poses/cam-to-pelvis-vol"].shape == (4, 4)
                assert proj["rot-180-for-up"][()] in (0, 1)


def test_intensities_are_raw_counts_and_bone_is_dark(phantom):
    path, _, _ = phantom
    for sid, key, proj in _frames(path):
        intensity = proj["image/pixels"][()]
        labels = proj["gt-seg/pixels"][()]
        assert intensity.min() >= 1.0 and intensity.max() <= MAX_INTENSITY
        assert np.array_equal(intensity, np.rint(intensity))
        assert labels.max() <= anatomy.MAX_LABEL
        # Compare each bone with the background just around it (soft tissue thickness varies
        # across the frame), on the part that ingestion keeps, 4x smaller for speed.
        inner_intensity = intensity[50:-50:4, 50:-50:4]
        inner_labels = labels[50:-50:4, 50:-50:4]
        background = inner_labels == anatomy.BACKGROUND
        for label in anatomy.BONE_LABELS:
            bone = inner_labels == label
            if bone.sum() < 200:
                continue
            ring = ndimage.binary_dilation(bone, iterations=4) & background
            if ring.sum() < 50:  # a bone filling the view has no background around it
                continue
            assert inner_intensity[bone].mean() < inner_intensity[ring].mean(), (sid, key, label)


def test_stored_landmarks_are_the_projections_of_the_3d_landmarks(phantom):
    path, _, _ = phantom
    with h5py.File(path) as f:
        intrinsic = f["proj-params/intrinsic"][()]
        for sid, _key, proj in _frames(path):
            vol = np.stack([f[sid]["vol-landmarks"][n][()][:, 0] for n in anatomy.LANDMARK_NAMES])
            stored = np.stack([proj["gt-landmarks"][n][()][:, 0] for n in anatomy.LANDMARK_NAMES])
            expected = project_points(vol, proj["gt-poses/cam-to-pelvis-vol"][()], intrinsic)
            assert stored == pytest.approx(expected, abs=1e-6)
            # The femoral head centre is the femur's pivot: its own pose projects it to the same
            # pixel.
            fh = anatomy.LANDMARK_NAMES.index("FH-l")
            via_femur = project_points(
                vol[fh : fh + 1], proj["gt-poses/cam-to-left-femur-vol"][()], intrinsic
            )
            assert via_femur[0] == pytest.approx(stored[fh], abs=1e-6)


def _on_own_bone(path) -> tuple[int, int]:
    """(in-frame landmarks whose nearest pixel carries their own bone's label, in-frame
    landmarks)."""
    hits, total = 0, 0
    for _, _, proj in _frames(path):
        labels = proj["gt-seg/pixels"][()]
        for name in anatomy.LANDMARK_NAMES:
            xy = proj["gt-landmarks"][name][()][:, 0]
            if coords.in_frame(xy, SIZE, SIZE):
                col, row = np.rint(xy).astype(int)
                hits += labels[row, col] == anatomy.LANDMARK_BONE[name]
                total += 1
    return hits, total


def test_landmarks_lie_on_their_own_bone(phantom):
    path, _, _ = phantom
    hits, total = _on_own_bone(path)
    assert total >= 50 and hits / total >= 0.9


def test_turned_frames_are_stored_upside_down(phantom):
    # Upright means the vertebrae above the femora; a frame flagged rot-180-for-up is the reverse.
    path, _, summary = phantom
    flags = []
    for _, _, proj in _frames(path):
        labels = proj["gt-seg/pixels"][()]
        spine_row = np.mean(np.nonzero(labels == anatomy.VERTEBRAE)[0])
        femurs = np.isin(labels, (anatomy.LEFT_FEMUR, anatomy.RIGHT_FEMUR))
        femur_row = np.mean(np.nonzero(femurs)[0])
        turned = bool(proj["rot-180-for-up"][()])
        assert (spine_row > femur_row) == turned
        flags.append(turned)
    assert summary.turned_frames == sum(flags)


def _default_set_landmarks() -> dict[int, np.ndarray]:
    """Specimen -> (N, 14, 2) landmarks of the default phantom after ingestion (8x, upright),
    from the same random streams the generator draws from, without rendering."""
    detector = Detector()
    result = {}
    for number, count in enumerate(SynthParams().frames, start=1):
        specimen = make_specimen(specimen_rng(0, number))
        points = np.stack([specimen.landmarks[n] for n in anatomy.LANDMARK_NAMES])
        frames = []
        for frame in range(count):
            pose = sample_pose(specimen_rng(0, number, frame))
            xy = project_points(points, pose.cam_to_vol, detector.intrinsic)
            frames.append(
                coords.ingested_landmarks(
                    xy, crop=50, factor=8, turned=pose.rot180, fullres_size=(SIZE, SIZE)
                )
            )
        result[number] = np.stack(frames)
    return result


def test_default_set_size_and_out_of_frame_landmarks():
    per_specimen = _default_set_landmarks()
    assert {n: len(v) for n, v in per_specimen.items()} == {1: 22, 2: 21, 3: 5, 4: 10, 5: 11, 6: 5}
    inside = coords.in_frame(np.concatenate(list(per_specimen.values())), 180, 180)
    assert 0.05 <= 1 - inside.mean() <= 0.3  # views leave some landmarks out, as real ones do
    assert np.all(inside.mean(axis=0) > 0.5)  # every landmark in frame in most frames


def test_default_set_defeats_the_mean_shape_guess():
    # The bar: guessing each landmark at its mean in-frame position over a fold's
    # training frames must be off by at least 30 px on average (the AP-only phantom: 20.7 px).
    per_specimen = _default_set_landmarks()
    folds = make_folds({n: len(v) for n, v in per_specimen.items()}, 0.1, 0)
    means = []
    for fold in folds.values():
        train = np.stack([per_specimen[s][i] for s, i in fold.train])
        test = np.stack([per_specimen[s][i] for s, i in fold.test])
        guess = baselines.mean_shape(train, 180, 180)
        means.append(baselines.test_errors_px(guess, test, 180, 180).mean())
    assert np.mean(means) >= 30.0, means


def test_upright_frames_show_the_patients_left_on_the_right():
    # Real DeepFluoro frames, turned upright, have the left hemipelvis, left femur and FH-l on
    # the image's right. Every frame of the default set, by its landmarks:
    names = list(anatomy.LANDMARK_NAMES)
    for number, frames in _default_set_landmarks().items():
        for frame, xy in enumerate(frames):
            assert xy[names.index("FH-l"), 0] > xy[names.index("FH-r"), 0], (number, frame)
            assert xy[names.index("ASIS-l"), 0] > xy[names.index("ASIS-r"), 0], (number, frame)


def test_rendered_left_hemipelvis_lies_right_of_the_midline(phantom):
    # And by the rendered labels: turned upright as ingestion turns them, most left-hemipelvis
    # pixels lie right of the midline (halfway between the femoral heads), most right-hemipelvis
    # pixels left of it; oblique views let some of a hemipelvis cross the projected midline.
    path, _, _ = phantom
    names = list(anatomy.LANDMARK_NAMES)
    heads = [names.index(n) for n in ("FH-l", "FH-r")]
    for sid, key, proj in _frames(path):
        labels = proj["gt-seg/pixels"][()]
        xy = np.stack([proj["gt-landmarks"][n][()][:, 0] for n in anatomy.LANDMARK_NAMES])
        if proj["rot-180-for-up"][()]:
            labels, xy = labels[::-1, ::-1], coords.rotate180(xy, SIZE, SIZE)
        midline = xy[heads, 0].mean()
        for label, right_side in (
            (anatomy.LEFT_HEMIPELVIS, True),
            (anatomy.RIGHT_HEMIPELVIS, False),
        ):
            columns = np.nonzero(labels == label)[1]
            if columns.size < 1000:
                continue
            share = np.mean(columns > midline) if right_side else np.mean(columns < midline)
            assert share >= 0.7, (sid, key, anatomy.LABEL_NAMES[label], share)


def test_same_seed_same_file_other_seed_other_file(tmp_path):
    def arrays(seed, name):
        path = tmp_path / name
        write_phantom(path, frames=(1,), seed=seed, preview_panels=0)
        with h5py.File(path) as f:
            proj = f["17-1882/projections/000"]
            return (
                proj["image/pixels"][()],
                proj["gt-seg/pixels"][()],
                proj["gt-landmarks/FH-l"][()],
                f["17-1882/vol-landmarks/ASIS-r"][()],
            )

    first, again, other = arrays(0, "a.h5"), arrays(0, "b.h5"), arrays(1, "c.h5")
    for x, y in zip(first, again):
        assert np.array_equal(x, y)
    for x, z in zip(first, other):
        assert not np.array_equal(x, z)


def test_preview_is_a_png(phantom):
    _, preview, summary = phantom
    assert preview.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(summary.panels) == 5 and summary.panels[0].image.shape == (384, 384)


def test_preview_tints_no_label_over_the_collimator(phantom):
    # The collimator hides the labelled anatomy at the frame's edge: no tint may spill onto it.
    _, _, summary = phantom
    border = -(-COLLIMATOR_PX // 4)
    for panel in summary.panels:
        edge = np.ones(panel.labels.shape, bool)
        edge[border:-border, border:-border] = False
        assert not panel.labels[edge].any(), panel.title
        assert panel.labels[~edge].any(), panel.title  # the field itself keeps its labels


def test_specimen_ids_and_bad_counts():
    ids = specimen_ids(8)
    assert ids[:6] == [anatomy.SPECIMEN_IDS[n] for n in range(1, 7)]
    assert ids[6:] == ["99-0007", "99-0008"] and len(set(ids)) == 8
    with pytest.raises(ConfigError, match="synth.specimens"):
        specimen_ids(0)
    with pytest.raises(ConfigError, match="synth.frames"):
        write_phantom(None, frames=(2, 0), seed=0)


def test_ray_lengths_are_exact():
    # A ray along x through an ellipsoid with semi-axes (2, 1, 1) centred at x = 10: enters at 8,
    # leaves at 12.
    ellipsoid = Ellipsoid(np.array([10.0, 0, 0]), np.eye(3), np.array([2.0, 1.0, 1.0]))
    t_in, t_out = ray_intervals(np.zeros(3), np.array([[1.0, 0, 0], [0, 1.0, 0]]), ellipsoid)
    assert t_in.tolist() == pytest.approx([8.0, 0.0])
    assert t_out.tolist() == pytest.approx([12.0, 0.0])
    # Union of [0,2], [1,3], [5,6] = 4 mm; minus the hole [2.5, 5.5] leaves 3 mm.
    solid_in, solid_out = np.array([[0.0], [1.0], [5.0]]), np.array([[2.0], [3.0], [6.0]])
    assert union_minus_holes_length(solid_in, solid_out)[0] == pytest.approx(4.0)
    holes = np.array([[2.5]]), np.array([[5.5]])
    assert union_minus_holes_length(solid_in, solid_out, *holes)[0] == pytest.approx(3.0)


@pytest.mark.slow
def test_default_phantom_size_and_landmarks(tmp_path):
    path = tmp_path / "phantom_full_res.h5"
    summary = run(path, frames=SynthParams().frames, seed=0, preview=tmp_path / "preview.png")
    assert os.path.getsize(path) < 300e6 and summary.frames == 74
    assert summary.landmarks_out_of_frame / summary.landmarks_total >= 0.05
    hits, total = _on_own_bone(path)
    assert hits / total >= 0.9
    # Rendered and ingested, the mean-shape guess over the folds' training frames.
    ingest.run(path, tmp_path / "ds.h5", factor=8, crop=50, i0=65487.0)
    data = read_processed(tmp_path / "ds.h5")
    folds = make_folds(data.frames_per_specimen, 0.1, 0)
    table = baselines.baseline_predictions(data, folds, list(folds))
    scores = metrics.table2(table, losses=["mean_shape"], mm_per_px=1.0, success_mm=())
    means = scores["mean_shape"]["per_specimen_px"]
    assert np.mean(list(means.values())) >= 30.0


def test_frames_that_could_outgrow_the_disk_fail_before_writing(tmp_path, monkeypatch):
    """10000 frames per specimen pass the params bound; on a disk with too little free space
    synth refuses them before anything is written (issue 23)."""
    import shutil
    from collections import namedtuple

    from silr.stages import synth

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 0, 50 * 1024**3))
    out = tmp_path / "sub" / "phantom.h5"
    with pytest.raises(ConfigError, match=r"synth.frames: 60000 frames may take up to .* GiB"):
        synth.run(out, [10000] * 6, seed=0)
    assert not out.exists()
    assert not (tmp_path / "sub").exists() or not any((tmp_path / "sub").iterdir())
    synth.check_disk_space(out, [1] * 6)  # six frames fit in 50 GiB
