"""Fold frames on the device and the batched augmentation (silr.training.dataset).

The augmentation is checked against MONAI itself for fixed parameters (pixels, labels and
the affine MONAI tracks for the points), and by the marker-dot test the issue asks for.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import AdjustContrast, Compose, Rotate, Zoom

from silr.core import coords
from silr.core.anatomy import FRAME_SIZE_PX, NETWORK_INPUT_PX, NUM_LANDMARKS
from silr.core.errors import DataError
from silr.core.params import AugmentParams
from silr.core.types import Batch
from silr.training.dataset import AugmentDraw, augment, batch_indices, draw_augmentation, frame_set

S = NETWORK_INPUT_PX
OFFSET = coords.pad_offset()


def blocks_batch(batch_size: int = 1, seed: int = 0) -> Batch:
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(batch_size, 1, S, S, generator=generator)
    labels = torch.zeros(batch_size, S, S, dtype=torch.long)
    labels[:, 40:120, 30:90] = 3
    labels[:, 100:170, 100:180] = 5
    xy = torch.rand(batch_size, NUM_LANDMARKS, 2, generator=generator) * 150 + 20
    return Batch(images, labels, xy, torch.ones(batch_size, NUM_LANDMARKS, dtype=torch.bool))


def monai_pipeline(zoom, angle, gamma, mode):
    steps = []
    if zoom is not None:
        label_mode = "bilinear" if mode == "bilinear" else "nearest-exact"
        steps.append(Zoom(zoom, mode=label_mode, keep_size=True))
    if angle is not None:
        steps.append(Rotate(angle, mode=mode, keep_size=True))
    if gamma is not None and mode == "bilinear":
        steps.append(AdjustContrast(gamma))
    return Compose(steps)


@pytest.mark.parametrize(
    "zoom, angle, gamma",
    [
        (1.0, None, None),
        (1.13, None, None),
        (1.2999, None, None),
        (None, 0.17, None),
        (None, -0.1, None),
        (None, None, 0.7),
        (None, None, 1.5),
        (1.21, 0.13, 0.8),
        (1.05, -0.17, 1.4),
    ],
)
def test_augmentation_equals_monai_for_fixed_parameters(zoom, angle, gamma):
    batch = blocks_batch()
    ours = augment(batch, AugmentDraw.fixed(1, zoom=zoom, angle=angle, gamma=gamma))

    image = MetaTensor(batch.images[0].clone())
    expected = monai_pipeline(zoom, angle, gamma, "bilinear")(image)
    assert torch.allclose(ours.images[0], expected.as_tensor(), atol=1e-4)

    expected_labels = monai_pipeline(zoom, angle, gamma, "nearest")(batch.labels[0:1].float())
    agreement = (ours.labels[0] == torch.as_tensor(expected_labels)[0].long()).float().mean()
    assert agreement >= 0.999  # grid_sample rounds exact half-pixel ties to even, interpolate up

    # Points: MONAI tracks the (row, col) affine output voxel -> input voxel in the MetaTensor.
    affine = expected.affine.numpy().astype(np.float64)
    linear = affine[np.ix_([0, 1], [0, 1])]
    shift = affine[[0, 1], 3]
    rc_in = batch.landmarks_xy[0].double().numpy()[:, ::-1]
    rc_out = np.linalg.solve(linear, (rc_in - shift).T).T
    np.testing.assert_allclose(ours.landmarks_xy[0].double().numpy(), rc_out[:, ::-1], atol=1e-3)


def test_not_drawn_transforms_leave_the_sample_bit_exact():
    batch = blocks_batch(batch_size=2)
    out = augment(batch, AugmentDraw.fixed(2))
    assert torch.equal(out.images, batch.images)
    assert torch.equal(out.labels, batch.labels)
    assert torch.equal(out.landmarks_xy, batch.landmarks_xy)


def test_each_sample_is_augmented_as_if_alone():
    """Only the drawn samples are resampled: every sample of a batch comes out bit for bit as it
    does in a batch of its own, whichever of its neighbours were drawn."""
    batch = blocks_batch(batch_size=4)
    distance = torch.rand(4, 4, S, S, generator=torch.Generator().manual_seed(1)) * 50
    batch = Batch(batch.images, batch.labels, batch.landmarks_xy, batch.present, distance)
    draw = AugmentDraw(
        do_zoom=torch.tensor([True, False, True, False]),
        zoom=torch.tensor([1.2, 1.0, 1.1, 1.0]),
        do_rotate=torch.tensor([False, False, True, True]),
        angle=torch.tensor([0.0, 0.0, -0.1, 0.15]),
        do_contrast=torch.tensor([False, True, False, False]),
        gamma=torch.tensor([1.0, 1.3, 1.0, 1.0]),
    )
    together = augment(batch, draw)
    fields = AugmentDraw.__dataclass_fields__
    for i in range(4):
        alone = augment(
            Batch(*(t[i : i + 1] for t in batch)),
            AugmentDraw(*(getattr(draw, name)[i : i + 1] for name in fields)),
        )
        for name, got, expected in zip(Batch._fields, together, alone):
            assert torch.equal(got[i : i + 1], expected), (i, name)
    # The undrawn sample 1 (contrast only) keeps its geometry exactly.
    assert torch.equal(together.labels[1], batch.labels[1])
    assert torch.equal(together.bone_distance[1], distance[1])


def dot_image(xy: torch.Tensor, sigma: float = 1.2) -> torch.Tensor:
    ys, xs = torch.meshgrid(
        torch.arange(S, dtype=torch.float32), torch.arange(S, dtype=torch.float32), indexing="ij"
    )
    image = torch.zeros(S, S)
    for x, y in xy:
        image += torch.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2))
    return image


def local_centroid(image: torch.Tensor, xy: torch.Tensor, radius: int = 5) -> torch.Tensor:
    """Centroid of the dot's core (above half its peak) near `xy`.

    Only the core counts: MONAI's border padding in the rotation smears a dot that the
    zoom moved onto the image border outward, which would bias a plain window mean.
    """
    cx, cy = (int(round(float(v))) for v in xy)
    x0, x1 = max(cx - radius, 0), min(cx + radius + 1, S)
    y0, y1 = max(cy - radius, 0), min(cy + radius + 1, S)
    window = image[y0:y1, x0:x1]
    weights = (window - 0.5 * window.max()).clamp(min=0)
    ys, xs = torch.meshgrid(
        torch.arange(y0, y1, dtype=torch.float32),
        torch.arange(x0, x1, dtype=torch.float32),
        indexing="ij",
    )
    total = weights.sum()
    return torch.stack([(weights * xs).sum() / total, (weights * ys).sum() / total])


def test_marker_dots_follow_their_landmarks_through_200_augmentations():
    # Landmarks >= 20 px apart at sub-pixel positions; three sit near the frame's edges so
    # that zoom and rotation push them out.
    frame_xy = torch.tensor(
        [
            [20.3, 30.7],
            [60.5, 25.2],
            [100.1, 35.9],
            [140.8, 28.4],
            [30.2, 80.6],
            [75.7, 70.3],
            [120.4, 90.1],
            [160.9, 75.5],
            [45.5, 130.2],
            [95.3, 125.8],
            [145.6, 140.4],
            [1.5, 100.5],
            [178.2, 50.5],
            [90.5, 177.6],
        ]
    )
    xy = frame_xy + OFFSET
    count = 200
    image = dot_image(xy)
    batch = Batch(
        image.expand(count, 1, S, S).clone(),
        torch.zeros(count, S, S, dtype=torch.long),
        xy.expand(count, -1, -1).clone(),
        torch.ones(count, NUM_LANDMARKS, dtype=torch.bool),
    )
    draw = draw_augmentation(AugmentParams(), count, torch.Generator().manual_seed(7))
    out = augment(batch, draw)

    checked = pushed_out = 0
    for n in range(count):
        for k in range(NUM_LANDMARKS):
            target = out.landmarks_xy[n, k]
            frame_pos = target - OFFSET
            inside = bool(((frame_pos >= 0) & (frame_pos <= FRAME_SIZE_PX - 1)).all())
            assert bool(out.present[n, k]) == inside
            if not inside:
                pushed_out += 1
                continue
            if bool(((target < 8) | (target > S - 9)).any()):
                continue  # the dot is cut by the image border; its centroid is biased
            centroid = local_centroid(out.images[n, 0], target)
            assert torch.dist(centroid, target) < 1.0, (n, k, centroid, target)
            checked += 1
    assert checked > 0.75 * count * NUM_LANDMARKS
    assert pushed_out > 0  # some edge landmarks left the frame and became absent
    # Each transform was drawn for about half of the samples (p = 0.5).
    for flags in (draw.do_zoom, draw.do_rotate, draw.do_contrast):
        assert 70 <= int(flags.sum()) <= 130


def test_zoom_pushes_an_edge_landmark_out_and_keeps_the_centre():
    centre = (S - 1) / 2
    # frame x = 2: 2 px from the left edge
    xy = torch.tensor([[[OFFSET + 2.0, 95.5], [centre, centre]]])
    batch = Batch(
        torch.zeros(1, 1, S, S),
        torch.zeros(1, S, S, dtype=torch.long),
        xy,
        torch.ones(1, 2, dtype=torch.bool),
    )
    out = augment(batch, AugmentDraw.fixed(1, zoom=1.3))
    # MONAI resizes 192 -> floor(249.6) = 249 px and crops 28 px per side: scale 249/192.
    expected_x = (OFFSET + 2.0 + 0.5) * 249 / 192 - 0.5 - 28
    assert out.landmarks_xy[0, 0, 0].item() == pytest.approx(expected_x, abs=1e-3)
    assert expected_x < OFFSET
    assert out.present.tolist() == [[False, True]]
    # The crop is 28 px left, 29 px right: MONAI's zoom centre sits half a pixel off (96, 96).
    assert out.landmarks_xy[0, 1].tolist() == pytest.approx([96.0, 96.0], abs=1e-3)


def test_absent_landmarks_stay_absent():
    xy = torch.full((1, NUM_LANDMARKS, 2), 96.0)
    present = torch.zeros(1, NUM_LANDMARKS, dtype=torch.bool)
    empty = Batch(torch.zeros(1, 1, S, S), torch.zeros(1, S, S, dtype=torch.long), xy, present)
    out = augment(empty, AugmentDraw.fixed(1, angle=0.1))
    assert not out.present.any()


def test_prob_zero_draws_nothing_and_ranges_hold():
    generator = torch.Generator().manual_seed(0)
    none = draw_augmentation(AugmentParams(prob=0.0), 64, generator)
    assert not (none.do_zoom.any() or none.do_rotate.any() or none.do_contrast.any())
    params = AugmentParams(prob=1.0, zoom=(1.0, 1.3), rotate=0.17, gamma=(0.7, 1.5))
    every = draw_augmentation(params, 2000, generator)
    assert every.do_zoom.all() and every.do_rotate.all() and every.do_contrast.all()
    assert every.zoom.min() >= 1.0 and every.zoom.max() <= 1.3
    assert every.angle.min() >= -0.17 and every.angle.max() <= 0.17
    assert every.angle.min() < -0.15 and every.angle.max() > 0.15  # both directions
    assert every.gamma.min() >= 0.7 and every.gamma.max() <= 1.5


def test_frame_set_scales_pads_and_shifts():
    images = np.stack([np.full((180, 180), 3.0, np.float32), np.zeros((180, 180), np.float32)])
    images[0, 10, 20] = 5.0
    images[0, 100, 50] = 1.0
    labels = np.zeros((2, 180, 180), np.uint8)
    labels[0, 0, 0] = 6
    landmarks = np.zeros((2, NUM_LANDMARKS, 2))
    landmarks[0, 0] = (20.0, 10.0)
    landmarks[0, 1] = (180.0, 10.0)  # x > W - 1: outside
    landmarks[0, 2] = (np.nan, np.nan)
    specimen = SimpleNamespace(images=images, labels=labels, landmarks_xy=landmarks)
    data = SimpleNamespace(specimens={4: specimen})
    frames = frame_set(data, [(4, 0), (4, 1)])
    assert frames.images.shape == (2, 1, S, S) and frames.labels.shape == (2, S, S)
    assert frames.images[0, 0, 10 + OFFSET, 20 + OFFSET].item() == 1.0
    assert frames.images[0, 0, 100 + OFFSET, 50 + OFFSET].item() == 0.0
    assert frames.images[0, 0, 50, 50].item() == pytest.approx(0.5)
    assert frames.images[0, 0, :OFFSET].abs().sum() == 0  # zero padding
    assert frames.images[1].abs().sum() == 0  # a constant frame scales to 0
    assert frames.labels[0, OFFSET, OFFSET].item() == 6 and frames.labels[0, 0, 0].item() == 0
    assert frames.landmarks_xy[0, 0].tolist() == [26.0, 16.0]
    assert frames.present[0, :3].tolist() == [True, False, False]
    assert torch.isfinite(frames.landmarks_xy).all()
    batch = frames.batch(torch.tensor([1, 0]))
    assert batch.labels.dtype == torch.int64 and batch.present[1, 0].item() is True

    with pytest.raises(DataError, match="specimen 4 has no frame 9"):
        frame_set(data, [(4, 9)], source="x.h5")
    with pytest.raises(DataError, match="no specimen 2"):
        frame_set(data, [(2, 0)])


def test_batch_indices_cover_every_frame_and_drop_a_single_trailing_frame():
    plain = [i.tolist() for i in batch_indices(7, 3, None, "cpu")]
    assert plain == [[0, 1, 2], [3, 4, 5], [6]]
    shuffled = [i.tolist() for i in batch_indices(7, 3, torch.Generator().manual_seed(1), "cpu")]
    assert [len(b) for b in shuffled] == [3, 3]
    again = [i.tolist() for i in batch_indices(7, 3, torch.Generator().manual_seed(1), "cpu")]
    assert shuffled == again
    whole = [i.tolist() for i in batch_indices(8, 3, torch.Generator().manual_seed(1), "cpu")]
    assert sorted(sum(whole, [])) == list(range(8))
