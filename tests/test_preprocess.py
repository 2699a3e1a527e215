"""The ingestion transforms (crop, log transform, smoothing and sampling, labels, landmarks),
with hand values."""

import math

import numpy as np
import pytest
from scipy import special

from silr.data import preprocess


def test_log_transform_and_clipping_without_downsampling():
    i0 = 100.0
    intensity = np.full((8, 8), i0 / math.e**2)  # line integral 2 everywhere
    intensity[0, 0], intensity[0, 1], intensity[5, 6] = 0.0, -3.0, 0.5  # three below the floor of 1
    with pytest.warns(preprocess.ClippedIntensityWarning, match="3 raw intensities below 1"):
        frame = preprocess.preprocess_raw_frame(intensity, crop=0, i0=i0, factor=1, rotate=False)
    assert frame.dtype == np.float32 and frame.shape == (8, 8)
    # Clipped pixels become log(100) - log(1) = 4.6052; factor 1 neither smooths nor samples.
    assert frame[0, 0] == pytest.approx(math.log(100))
    assert frame[5, 6] == pytest.approx(math.log(100))
    assert frame[3, 3] == pytest.approx(2.0)


@pytest.mark.parametrize("factor, taps", [(2, 7), (4, 11), (8, 21), (16, 43)])
def test_smoothing_kernel_is_itks_discrete_gaussian(factor, taps):
    variance = (factor / 2) ** 2
    kernel = preprocess.discrete_gaussian_kernel(variance)
    radius = len(kernel) // 2
    assert len(kernel) == taps and kernel.sum() == pytest.approx(1.0)
    assert kernel == pytest.approx(kernel[::-1])
    # Taps are e^-t I_n(t) up to one common factor, and hold at least 99% of that mass.
    ratios = kernel / special.ive(np.abs(np.arange(-radius, radius + 1)), variance)
    assert ratios == pytest.approx(np.full(taps, ratios[0]))
    assert 1 / ratios[0] >= 0.99
    # One tap fewer would hold less than 99%: the kernel is the shortest that reaches it.
    assert (1 / ratios[0]) - 2 * special.ive(radius, variance) < 0.99


def test_downsampling_samples_at_f_times_i_after_the_crop():
    # Line integral = row index + column index / 1000: smoothing keeps a linear ramp
    # unchanged away from the borders, so sample (r, c) shows which pixel it sits on.
    size, crop, factor = 120, 4, 8
    rows, cols = np.indices((size, size), dtype=np.float64)
    i0 = math.exp(130.0)
    intensity = i0 * np.exp(-(rows + cols / 1000.0))
    frame = preprocess.preprocess_raw_frame(
        intensity, crop=crop, i0=i0, factor=factor, rotate=False
    )
    # round(112 / 8) = 14, the last sample at cropped pixel 104
    assert frame.shape == (14, 14)
    interior = slice(2, 12)  # at least the kernel radius (10 px) from every border
    on_pixel = crop + factor * np.arange(14)  # full-resolution pixel of sample i
    expected = on_pixel[:, None] + on_pixel[None, :] / 1000.0
    assert frame[interior, interior] == pytest.approx(expected[interior, interior], abs=2e-5)
    turned = preprocess.preprocess_raw_frame(
        intensity, crop=crop, i0=i0, factor=factor, rotate=True
    )
    np.testing.assert_array_equal(turned, frame[::-1, ::-1])  # turned after downsampling


def test_constant_frame_stays_constant_to_the_edges():
    intensity = np.full((64, 64), 1e4 / math.e)
    frame = preprocess.preprocess_raw_frame(intensity, crop=3, i0=1e4, factor=16, rotate=False)
    assert frame.shape == (4, 4) and frame == pytest.approx(np.ones((4, 4)))


def test_labels_are_sampled_at_small_pixel_centres():
    labels = np.zeros((20, 20), np.uint8)
    labels[2, 2] = 3  # cropped (0, 0): small pixel (0, 0)
    labels[2, 6] = 5  # cropped (0, 4): small pixel (0, 1)
    labels[3, 3:18] = 2  # a line between the sample rows: never sampled
    small = preprocess.downsample_labels(labels, crop=2, factor=4, rotate=False)
    assert small.shape == (4, 4) and small.dtype == np.uint8
    assert small[0].tolist() == [3, 5, 0, 0] and not (small == 2).any()
    turned = preprocess.downsample_labels(labels, crop=2, factor=4, rotate=True)
    np.testing.assert_array_equal(turned, small[::-1, ::-1])


def test_landmarks_map_then_turn():
    xy = np.array([[40.0, 60.0], [-100.0, 300.0]])
    upright = preprocess.preprocess_landmarks(
        xy, crop=8, factor=8, rotate=False, width=256, height=256
    )
    # (40 - 8) / 8 = 4; (60 - 8) / 8 = 6.5; (-100 - 8) / 8 = -13.5 (kept, out of frame);
    # (300 - 8) / 8 = 36.5
    assert upright.ravel().tolist() == pytest.approx([4.0, 6.5, -13.5, 36.5])
    turned = preprocess.preprocess_landmarks(
        xy, crop=8, factor=8, rotate=True, width=256, height=256
    )
    # The small frame is round(240 / 8) = 30 wide: (29 - 4, 29 - 6.5)
    assert turned[0].tolist() == pytest.approx([25.0, 22.5])
