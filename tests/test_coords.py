"""Pins the coordinate conventions of silr.coords with hand-computed values."""

import numpy as np
import pytest

from silr import coords


def test_fullres_to_8x_matches_block_centre():
    # The 8x8 block of cropped pixels 0..7 has its centre at full-res 50 + 3.5 = 53.5,
    # which must map to downsampled pixel 0.
    assert coords.fullres_to_downsampled(np.array([53.5, 53.5]), crop=50, factor=8) == pytest.approx([0.0, 0.0])
    # The last block (cropped 1432..1435, full-res 1482..1485) maps to pixel 179.
    assert coords.fullres_to_downsampled(np.array([50 + 1432 + 3.5, 1485.5 - 3 + 1]), 50, 8)[0] == pytest.approx(179.0)
    # Hand value: x = 100 -> (100 - 50 + 0.5) / 8 - 0.5 = 5.8125.
    assert coords.fullres_to_downsampled(np.array([100.0, 1000.0]), 50, 8) == pytest.approx([5.8125, 118.3125])


def test_roundtrip_and_rotation():
    xy = np.array([[10.0, 20.0], [1535.0, 0.0], [-40.0, 1600.0]])
    back = coords.downsampled_to_fullres(coords.fullres_to_downsampled(xy, 50, 8), 50, 8)
    assert back == pytest.approx(xy)
    assert coords.rotate180(np.array([0.0, 0.0]), 1536, 1536) == pytest.approx([1535.0, 1535.0])
    assert coords.rotate180(coords.rotate180(xy, 1536, 1536), 1536, 1536) == pytest.approx(xy)


def test_in_frame_bounds_are_inclusive_pixel_centres():
    xy = np.array([[0, 0], [179, 179], [-0.01, 5], [179.01, 5], [5, np.nan]])
    assert coords.in_frame(xy, 180, 180).tolist() == [True, True, False, False, False]


def test_pad_offset_and_rescale():
    assert coords.pad_offset(180, 192) == 6
    # Half the sampling: pixel centre 0 of a 360-wide image is at 0.5 - 0.5 ... -> -0.25.
    assert coords.rescale(np.array([0.0, 359.0]), (360, 360), (180, 180)) == pytest.approx([-0.25, 179.25])
