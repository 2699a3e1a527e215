"""Pins the coordinate conventions of silr.core.coords with hand-computed values.

The published DeepFluoro files put pixel i of an f-times downsampled frame on cropped
full-resolution pixel f * i (x_f = (x - 50) / f) and turn frames after downsampling, in
the small frame (x -> W_f - 1 - x_f); see docs/method.md, "Preprocessing".
"""

import numpy as np
import pytest

from silr.core import coords


def test_small_pixel_i_sits_on_cropped_pixel_f_times_i():
    # Full-res 50 is cropped pixel 0 -> small pixel 0; full-res 50 + 8 * 179 = 1482 -> 179.
    assert coords.fullres_to_downsampled(
        np.array([50.0, 1482.0]), crop=50, factor=8
    ) == pytest.approx([0.0, 179.0])
    # Hand value: x = 100 -> (100 - 50) / 8 = 6.25; y = 1000 -> 118.75.
    assert coords.fullres_to_downsampled(np.array([100.0, 1000.0]), 50, 8) == pytest.approx(
        [6.25, 118.75]
    )
    assert coords.downsampled_to_fullres(np.array([6.25, 118.75]), 50, 8) == pytest.approx(
        [100.0, 1000.0]
    )


@pytest.mark.parametrize("factor, length", [(1, 1436), (2, 718), (4, 359), (8, 180), (16, 90)])
def test_downsampled_length_is_round_of_1436_over_f(factor, length):
    assert coords.downsampled_length(1536, 50, factor) == length


@pytest.mark.parametrize("factor", [2, 4, 8, 16])
def test_turned_frame_is_turned_in_the_small_frame(factor):
    width = coords.downsampled_length(1536, 50, factor)
    xy = np.array([[100.0, 1000.0], [1535.0, -20.0]])
    turned = coords.ingested_landmarks(
        xy, crop=50, factor=factor, turned=True, fullres_size=(1536, 1536)
    )
    # The pinned form: (W_f - 1) - (x - 50) / f, same for y.
    assert turned == pytest.approx((width - 1) - (xy - 50) / factor)
    upright = coords.ingested_landmarks(
        xy, crop=50, factor=factor, turned=False, fullres_size=(1536, 1536)
    )
    assert upright == pytest.approx((xy - 50) / factor)
    for flag, small in ((True, turned), (False, upright)):
        back = coords.ingested_to_fullres(
            small, crop=50, factor=factor, turned=flag, fullres_size=(1536, 1536)
        )
        assert back == pytest.approx(xy)


def test_turning_after_downsampling_differs_from_turning_before_by_three_eighths():
    # 8x: 179 - (x - 50) / 8 versus (1535 - x - 50) / 8, i.e. (1482 - x) / 8 versus (1485 - x) / 8.
    x = np.array([[700.0, 700.0]])
    after = coords.ingested_landmarks(x, crop=50, factor=8, turned=True, fullres_size=(1536, 1536))
    before = coords.fullres_to_downsampled(coords.rotate180(x, 1536, 1536), 50, 8)
    assert (after - before).ravel() == pytest.approx([-0.375, -0.375])


def test_rotation_is_an_involution():
    xy = np.array([[10.0, 20.0], [1535.0, 0.0], [-40.0, 1600.0]])
    assert coords.rotate180(np.array([0.0, 0.0]), 1536, 1536) == pytest.approx([1535.0, 1535.0])
    assert coords.rotate180(coords.rotate180(xy, 1536, 1536), 1536, 1536) == pytest.approx(xy)


def test_in_frame_bounds_are_inclusive_pixel_centres():
    xy = np.array([[0, 0], [179, 179], [-0.01, 5], [179.01, 5], [5, np.nan]])
    assert coords.in_frame(xy, 180, 180).tolist() == [True, True, False, False, False]


def test_pad_offset_and_rescale():
    assert coords.pad_offset(180, 192) == 6
    # Half the sampling: pixel centre 0 of a 360-wide image is at 0.5 - 0.5 ... -> -0.25.
    assert coords.rescale(np.array([0.0, 359.0]), (360, 360), (180, 180)) == pytest.approx(
        [-0.25, 179.25]
    )
