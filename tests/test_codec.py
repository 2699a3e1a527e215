"""HeatmapCodec: target values by hand, the (column, row) convention, decoding, round trip."""

from __future__ import annotations

import math

import pytest
import torch

from silr.core.errors import ConfigError
from silr.model.codec import HeatmapCodec


def _logits_of(probabilities: torch.Tensor) -> torch.Tensor:
    return torch.logit(probabilities.clamp(1e-6, 1 - 1e-6))


def test_peak_target_values_and_column_row_convention():
    codec = HeatmapCodec(size=(12, 20), sigma=2.0)  # H = 12 rows, W = 20 columns
    targets = codec.encode(torch.tensor([[[15.0, 3.0]]]), torch.tensor([[True]]))
    peak = targets.peak[0, 0]
    assert peak.shape == (12, 20)
    # x = 15 is the column, y = 3 the row.
    assert peak[3, 15].item() == pytest.approx(1.0)
    assert peak.flatten().argmax().item() == 3 * 20 + 15
    # One pixel away: exp(-1 / (2 sigma^2)); diagonal: exp(-2 / (2 sigma^2)).
    assert peak[3, 16].item() == pytest.approx(math.exp(-1 / 8))
    assert peak[4, 15].item() == pytest.approx(math.exp(-1 / 8))
    assert peak[2, 14].item() == pytest.approx(math.exp(-2 / 8))
    assert targets.normalized[0, 0].sum().item() == pytest.approx(1.0, abs=1e-5)
    assert targets.normalized[0, 0, 3, 15].item() == pytest.approx(
        1.0 / peak.sum().item(), rel=1e-5
    )


def test_subpixel_peak_lies_between_pixel_centres():
    codec = HeatmapCodec(size=(16, 16), sigma=2.5)
    peak = codec.encode(torch.tensor([[[6.5, 9.25]]]), torch.tensor([[True]])).peak[0, 0]
    # Columns 6 and 7 are 0.5 px from x = 6.5: equal values exp(-(0.5^2 + 0.25^2) / 12.5).
    expected = math.exp(-(0.25 + 0.0625) / 12.5)
    assert peak[9, 6].item() == pytest.approx(expected)
    assert peak[9, 7].item() == pytest.approx(expected)
    assert peak.max().item() < 1.0


def test_absent_landmarks_give_zero_maps_even_with_nan_coordinates():
    codec = HeatmapCodec(size=(8, 8))
    xy = torch.tensor([[[3.0, 3.0], [float("nan"), float("nan")], [500.0, -40.0]]])
    present = torch.tensor([[True, False, False]])
    targets = codec.encode(xy, present)
    assert targets.present.tolist() == [[1.0, 0.0, 0.0]]
    assert targets.present.dtype == torch.float32
    assert torch.isfinite(targets.peak).all() and torch.isfinite(targets.normalized).all()
    assert targets.peak[0, 1:].abs().sum().item() == 0.0
    assert targets.normalized[0, 1:].abs().sum().item() == 0.0
    assert targets.peak[0, 0, 3, 3].item() == pytest.approx(1.0)


def test_decode_argmax_score_and_presence_threshold():
    logits = torch.full((1, 3, 6, 7), -10.0)
    logits[0, 0, 4, 2] = 3.0  # clearly present at column 2, row 4
    logits[0, 1, 1, 5] = -0.5  # sigmoid 0.378: below 0.5, above 0.3
    decoded = HeatmapCodec(size=(6, 7)).decode(logits)
    assert decoded.xy[0, 0].tolist() == [2.0, 4.0]
    assert decoded.xy[0, 1].tolist() == [5.0, 1.0]
    assert decoded.score[0, 0].item() == pytest.approx(1 / (1 + math.exp(-3.0)))
    assert decoded.present.tolist() == [[True, False, False]]
    assert HeatmapCodec(size=(6, 7), presence_threshold=0.3).decode(logits).present.tolist() == [
        [True, True, False]
    ]


@pytest.mark.parametrize("refine", ["none", "parabola"])
def test_round_trip_recovers_in_frame_landmarks(refine):
    generator = torch.Generator().manual_seed(3)
    codec = HeatmapCodec(size=(48, 64), sigma=2.5, refine=refine)
    integer_xy = torch.randint(2, 46, (4, 5, 2), generator=generator).float()
    fractional_xy = torch.rand(4, 5, 2, generator=generator) * torch.tensor([60.0, 44.0]) + 1.5
    half_xy = torch.tensor([[10.5, 20.5], [30.5, 7.0], [4.0, 40.5], [0.0, 0.0], [63.0, 47.0]])[
        None
    ].expand(4, 5, 2)
    xy = torch.cat([integer_xy, fractional_xy, half_xy], dim=1)
    present = torch.rand(4, 15, generator=generator) > 0.25
    present[0] = False  # a frame with no landmark in it
    targets = codec.encode(xy, present)
    decoded = codec.decode(_logits_of(targets.peak))
    assert decoded.present.tolist() == present.tolist()
    # The argmax is the nearest pixel centre: each coordinate within 0.5 px (a landmark at
    # (10.5, 20.5) is 0.71 px from every pixel centre, so the bound is per coordinate).
    axis_error = (decoded.xy - xy).abs()[present]
    assert axis_error.max().item() <= 0.5 + 1e-4
    if refine == "parabola":
        # Log of a Gaussian is a parabola: the refined fit is exact up to float32.
        assert (decoded.xy - xy).norm(dim=-1)[present].max().item() < 0.02


def test_refinement_leaves_border_peaks_unshifted():
    codec = HeatmapCodec(size=(10, 10), refine="parabola")
    targets = codec.encode(torch.tensor([[[0.0, 9.0]]]), torch.tensor([[True]]))
    assert codec.decode(_logits_of(targets.peak)).xy[0, 0].tolist() == [0.0, 9.0]


def test_decode_accepts_bfloat16_logits():
    logits = torch.full((1, 1, 8, 8), -4.0, dtype=torch.bfloat16)
    logits[0, 0, 5, 6] = 4.0
    decoded = HeatmapCodec(size=(8, 8), refine="parabola").decode(logits)
    assert decoded.xy.dtype == torch.float32
    assert decoded.xy[0, 0].tolist() == [6.0, 5.0]


def test_config_rebuilds_the_codec():
    codec = HeatmapCodec(
        sigma=3.0,
        presence_threshold=0.4,
        refine="centroid",
        size=(32, 16),
        stride=2,
        frame=(30, 12),
        kind="logit",
        presence="template",
        template_window=13.0,
    )
    assert codec.config() == {
        "size": [32, 16],
        "sigma": 3.0,
        "presence_threshold": 0.4,
        "refine": "centroid",
        "stride": 2,
        "frame": [30, 12],
        "kind": "logit",
        "presence": "template",
        "presence_source": None,
        "calibration": [1.0, 0.0],
        "template_ncc": 0.9,
        "template_window": 13.0,
        "segmentation_trained": True,
    }
    config = codec.config()
    assert HeatmapCodec(**{k: v for k, v in config.items()}).config() == config
    assert codec.heatmap_size == (16, 8) and codec.frame_origin == (2, 1)
    # Cards written before the refinement modes hold a bool.
    assert (
        HeatmapCodec(refine=True).refine == "parabola"
        and HeatmapCodec(refine=False).refine == "none"
    )


# ------------------------------------------------------------------ the frame, strides, kinds


def test_a_maximum_in_the_padding_decodes_inside_the_frame():
    # 192 x 192 input, 180 x 180 frame at offset 6: the global maximum sits in the padding
    # ring (row 2, column 190); the best pixel inside the frame is (100, 50).
    codec = HeatmapCodec(size=(192, 192), frame=(180, 180))
    logits = torch.full((1, 2, 192, 192), -8.0)
    logits[0, 0, 2, 190] = 9.0
    logits[0, 0, 50, 100] = 1.0
    logits[0, 1, 191, 0] = 9.0  # nothing but the padding peak: the frame's best is its flat value
    decoded = codec.decode(logits)
    assert decoded.xy[0, 0].tolist() == [100.0, 50.0]
    assert decoded.score[0, 0].item() == pytest.approx(torch.sigmoid(torch.tensor(1.0)).item())
    low, high = 6.0, 6.0 + 179.0
    assert ((decoded.xy >= low) & (decoded.xy <= high)).all()
    assert codec.to_frame(decoded.xy)[0, 0].tolist() == [94.0, 44.0]


@pytest.mark.parametrize("stride", [1, 2, 4])
def test_centroid_refinement_recovers_subpixel_positions_at_every_stride(stride):
    generator = torch.Generator().manual_seed(7)
    codec = HeatmapCodec(
        size=(192, 192), frame=(180, 180), sigma=2.5, stride=stride, refine="centroid"
    )
    # Input pixels at least 3 sigma inside the frame (input 6..185), so the window is whole.
    xy = torch.rand(3, 14, 2, generator=generator) * 150 + 21
    present = torch.ones(3, 14, dtype=torch.bool)
    targets = codec.encode(xy, present)
    assert targets.peak.shape == (3, 14, 192 // stride, 192 // stride)
    maps = {
        "logit": torch.log(targets.normalized.clamp_min(1e-30))
        + 3.0,  # KL-trained: log-probabilities
        "value": targets.peak,  # MSE-trained: the Gaussian
        "shape": 5.0 * targets.peak - 2.0,
    }  # NCC-trained: any affine copy
    for kind, heatmaps in maps.items():
        kind_codec = HeatmapCodec(
            size=(192, 192), frame=(180, 180), stride=stride, refine="centroid", kind=kind
        )
        error = (kind_codec.decode(heatmaps).xy - xy).norm(dim=-1)
        assert error.max().item() < 0.05, (kind, error.max().item())
    # Without refinement a stride-4 map can only name its pixel centres: errors up to ~2.8 px.
    plain = HeatmapCodec(size=(192, 192), frame=(180, 180), stride=stride).decode(targets.peak)
    assert (plain.xy - xy).abs().max().item() <= stride / 2 + 1e-4


def test_stride_maps_input_and_heatmap_pixels_by_area():
    codec = HeatmapCodec(size=(16, 16), stride=4)
    # Heatmap pixel 0 covers input pixels 0..3: its centre is at input 1.5.
    assert codec.from_heatmap(torch.tensor([0.0, 3.0])).tolist() == [1.5, 13.5]
    assert codec.to_heatmap(torch.tensor([1.5, 13.5])).tolist() == [0.0, 3.0]


def test_value_maps_use_the_raw_maximum_and_shape_maps_have_no_presence():
    logits = torch.zeros(1, 2, 8, 8)
    logits[0, 0, 3, 3] = 0.7
    logits[0, 1, 5, 5] = 0.3
    value = HeatmapCodec(size=(8, 8), kind="value").decode(logits)
    assert value.present.tolist() == [[True, False]] and value.score[0, 0].item() == pytest.approx(
        0.7
    )
    shape = HeatmapCodec(size=(8, 8), kind="shape").decode(logits - 5.0)
    assert shape.present.tolist() == [[True, True]]


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"sigma": 0.0}, "heatmap.sigma"),
        ({"sigma": float("nan")}, "heatmap.sigma"),
        ({"presence_threshold": 1.0}, "heatmap.presence_threshold"),
        ({"size": (192,)}, "heatmap size"),
        ({"refine": "dark"}, "heatmap.refine"),
        ({"stride": 3}, "heatmap stride"),
        ({"kind": "probability"}, "heatmap kind"),
    ],
)
def test_bad_parameters_are_config_errors(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        HeatmapCodec(**kwargs)


def test_bad_shapes_say_what_was_expected():
    codec = HeatmapCodec(size=(8, 8))
    with pytest.raises(ValueError, match=r"\(B, L, 2\)"):
        codec.encode(torch.zeros(2, 14), torch.ones(2, 14, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"present must have shape \(2, 14\)"):
        codec.encode(torch.zeros(2, 14, 2), torch.ones(2, 13, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(B, L, 8, 8\)"):
        codec.decode(torch.zeros(14, 8, 8))
