"""The corruption suite (silr.evaluation.corruptions) and the robustness stage
(silr.stages.robustness)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from silr.core.errors import ConfigError
from silr.core.robustness_params import CORRUPTION_NAMES, RobustnessParams
from silr.evaluation import corruptions
from silr.evaluation.corruptions import CORRUPTIONS, SEVERITIES, FrameFacts, corrupt

SETTINGS = RobustnessParams()


def line_integral_frame(seed: int = 0, size: int = 64) -> np.ndarray:
    """A smooth frame in the processed range (0.1 air .. ~6), with a bright 'bone' disc."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:size, 0:size]
    disc = ((rows - size / 2) ** 2 + (cols - size / 2) ** 2 < (size / 4) ** 2).astype(float)
    frame = 3.0 + 1.5 * disc + 0.5 * np.sin(cols / 7.0) + 0.05 * rng.standard_normal((size, size))
    frame[:, :4] = 0.1  # a strip of air
    return frame.astype(np.float32)


FACTS = FrameFacts(key=(1, 2), landmarks_xy=np.array([[32.0, 32.0], [10.0, 50.0], [-5.0, 3.0]]))


def check_corruption(name: str, frame: np.ndarray | None = None) -> None:
    """What every corruption must do: severity 0 is the identity; shape and float32 kept, finite;
    deterministic for one frame key; and the frame moves further from clean as severity grows."""
    frame = line_integral_frame() if frame is None else frame
    clean = corrupt(frame, name, 0, SETTINGS, FACTS)
    assert clean.dtype == np.float32 and np.array_equal(clean, frame), (
        f"{name}: severity 0 is not the identity"
    )
    distances = []
    for severity in SEVERITIES:
        out = corrupt(frame, name, severity, SETTINGS, FACTS)
        assert out.shape == frame.shape and out.dtype == np.float32, (
            f"{name} {severity}: {out.shape} {out.dtype}"
        )
        assert np.isfinite(out).all(), f"{name} {severity}: not finite"
        again = corrupt(frame, name, severity, SETTINGS, FACTS)
        assert np.array_equal(out, again), f"{name} {severity}: not deterministic"
        distances.append(float(np.abs(out.astype(np.float64) - frame).mean()))
    assert distances[0] > 0, f"{name}: severity 1 leaves the frame as it is"
    assert all(b > a for a, b in zip(distances, distances[1:])), (
        f"{name}: the change from clean does not grow with severity: "
        f"{np.round(distances, 5).tolist()}"
    )


@pytest.mark.parametrize("name", CORRUPTION_NAMES)
def test_every_corruption_keeps_the_conventions_and_grows_with_severity(name):
    check_corruption(name)


def test_a_corruption_that_ignores_severity_fails_the_check(monkeypatch):
    def broken(frame, severity, settings, rng, facts):  # always severity 3's noise
        return corruptions.quantum_noise(frame, 3, settings, np.random.default_rng(0), facts)

    monkeypatch.setitem(CORRUPTIONS, "quantum_noise", broken)
    with pytest.raises(AssertionError, match="does not grow with severity"):
        check_corruption("quantum_noise")


def test_a_corruption_that_changes_the_dtype_or_ignores_severity_zero_fails(monkeypatch):
    monkeypatch.setitem(CORRUPTIONS, "contrast", lambda frame, *args: frame + 1.0)
    with pytest.raises(AssertionError, match="does not grow"):
        check_corruption("contrast")


def test_the_registry_is_the_params_list():
    assert tuple(CORRUPTIONS) == CORRUPTION_NAMES == RobustnessParams().corruptions


def test_quantum_noise_variance_follows_poisson_statistics():
    # p' = -log(N / n), N ~ Poisson(n e^-p): Var p' ~ 1 / (n e^-p) = e^p / n, doubling as the
    # dose halves.
    for level in (1.0, 3.0):
        frame = np.full((200, 200), level, np.float32)
        variances = [
            float(corrupt(frame, "quantum_noise", s, SETTINGS).astype(np.float64).var())
            for s in SEVERITIES
        ]
        expected = [np.exp(level) / (SETTINGS.photons_air / 2 ** (s - 1)) for s in SEVERITIES]
        assert np.allclose(variances, expected, rtol=0.05), (level, variances, expected)
        ratios = np.array(variances[1:]) / np.array(variances[:-1])
        assert np.allclose(ratios, 2.0, rtol=0.06), ratios


def test_physical_directions():
    frame = line_integral_frame()
    low, high = frame.min(), frame.max()
    for severity in SEVERITIES:
        # scatter adds photons (p falls), instruments and shutters add attenuation (p rises)
        assert (corrupt(frame, "scatter", severity, SETTINGS) <= frame + 1e-6).all()
        assert (corrupt(frame, "instruments", severity, SETTINGS, FACTS) >= frame - 1e-6).all()
        assert (corrupt(frame, "collimation", severity, SETTINGS, FACTS) >= frame - 1e-6).all()
        # blur and contrast stay inside the frame's range (a mean of transmissions; a map onto it)
        for name in ("detector_blur", "motion_blur", "contrast"):
            out = corrupt(frame, name, severity, SETTINGS, FACTS)
            assert out.min() >= low - 1e-4 and out.max() <= high + 1e-4, name
    # the contrast map keeps exactly the frame's minimum and maximum, with few grey levels
    out = corrupt(frame, "contrast", 5, SETTINGS)
    assert np.isclose(out.min(), low) and np.isclose(out.max(), high)
    assert len(np.unique(out)) <= SETTINGS.contrast_levels[-1]


def test_collimation_covers_the_severity_share():
    frame = line_integral_frame()
    for severity, share in zip(SEVERITIES, SETTINGS.collimation_fraction):
        covered = (
            corrupt(frame, "collimation", severity, SETTINGS) - frame
        ) > corruptions.SHUTTER_ATTENUATION / 2
        assert abs(covered.mean() - share) < 0.03, (severity, covered.mean(), share)


def test_instruments_go_over_landmarks():
    frame = np.full((96, 96), 3.0, np.float32)
    facts = FrameFacts(key=(0, 0), landmarks_xy=np.array([[48.0, 48.0]]))
    out = corrupt(frame, "instruments", 1, SETTINGS, facts)  # one K-wire, through the landmark
    assert out[46:51, 46:51].max() > 3.5
    assert (out - frame).max() <= corruptions.STEEL_MU_PER_MM * 2.0 + 1e-4  # a 2 mm wire at most


def _full_frame_path_mm(shape, centre_xy, angle, spec, mm_per_px):
    """The instrument's path length computed on the whole supersampled frame, no bounding box:
    the oracle for the clipped computation of corruptions._instrument_path_mm."""
    kind, thickness_mm, length_mm, width_mm = spec
    fine = corruptions.SUPERSAMPLE
    ys = (np.arange(shape[0] * fine) + 0.5) / fine - 0.5
    xs = (np.arange(shape[1] * fine) + 0.5) / fine - 0.5
    dx = (xs[None, :] - centre_xy[0]) * mm_per_px
    dy = (ys[:, None] - centre_xy[1]) * mm_per_px
    along = dx * np.cos(angle) + dy * np.sin(angle)
    across = -dx * np.sin(angle) + dy * np.cos(angle)
    inside = np.abs(along) <= length_mm / 2
    if kind == "plate":
        path = np.where(inside & (np.abs(across) <= width_mm / 2), thickness_mm, 0.0)
    else:
        path = np.where(inside, 2.0 * np.sqrt(np.clip((thickness_mm / 2) ** 2 - across ** 2,
                                                      0.0, None)), 0.0)
    return path.reshape(shape[0], fine, shape[1], fine).mean(axis=(1, 3))


def test_instrument_bounding_box_loses_no_steel():
    # The clipped computation must equal the whole frame's to the bit: centres inside, on the
    # edge and outside the frame, axis-aligned and diagonal, every instrument kind.
    rng = np.random.default_rng(3)
    for case in range(60):
        shape = (int(rng.integers(30, 120)), int(rng.integers(30, 120)))
        centre = rng.uniform(-40, 160, 2)
        angle = (0.0, np.pi / 2, np.pi / 4, rng.uniform(0, np.pi))[case % 4]
        spec = corruptions.INSTRUMENT_SHAPES[case % len(corruptions.INSTRUMENT_SHAPES)]
        mm_per_px = (1.552, 0.8)[case % 2]
        expected = _full_frame_path_mm(shape, centre, angle, spec, mm_per_px)
        got = corruptions._instrument_path_mm(shape, centre, angle, spec, mm_per_px)
        assert np.array_equal(got, expected), (case, spec[0], float(np.abs(got - expected).max()))
    # and some of them put steel in the frame
    assert _full_frame_path_mm((60, 60), np.array([30.0, 30.0]), 0.3,
                               corruptions.INSTRUMENT_SHAPES[0], 1.552).max() > 0


def test_random_numbers_depend_on_the_frame_key_only():
    frame = line_integral_frame()
    a = corrupt(frame, "quantum_noise", 2, SETTINGS, FrameFacts(key=(1, 2)))
    b = corrupt(frame, "quantum_noise", 2, SETTINGS, FrameFacts(key=(1, 3)))
    assert not np.array_equal(a, b)
    other_seed = RobustnessParams(seed=1)
    assert not np.array_equal(
        a, corrupt(frame, "quantum_noise", 2, other_seed, FrameFacts(key=(1, 2)))
    )


def test_bad_arguments_are_refused():
    frame = line_integral_frame()
    with pytest.raises(ValueError, match="unknown corruption 'fog'"):
        corrupt(frame, "fog", 1, SETTINGS)
    with pytest.raises(ValueError, match="severity must be one of 0, 1, 2, 3, 4, 5"):
        corrupt(frame, "scatter", 6, SETTINGS)
    with pytest.raises(ValueError, match="finite floating"):
        corrupt(frame.astype(np.int32), "scatter", 1, SETTINGS)


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"detector_blur_px": [1.0, 0.5, 1.5, 2.0, 3.0]},
            "robustness.detector_blur_px must be non-decreasing",
        ),
        (
            {"contrast_levels": [4, 8, 16, 32, 64]},
            "robustness.contrast_levels must be non-increasing",
        ),
        ({"motion_blur_px": [1.0, 2.0]}, "robustness.motion_blur_px must be a list of 5 values"),
        ({"corruptions": ["fog"]}, "robustness.corruptions[] must be one of quantum_noise"),
        (
            {"collimation_fraction": [0.1, 0.2, 0.3, 0.4, 1.0]},
            "robustness.collimation_fraction[4] must be <= 0.9",
        ),
    ],
)
def test_robustness_params_are_checked(changes, message):
    with pytest.raises(ConfigError) as error:
        RobustnessParams.from_dict(changes)
    assert message in str(error.value)


def test_stage_clean_equals_evaluate_and_reruns_byte_identically(
    trained_tiny_run, tmp_path, one_thread
):
    from silr import cli
    from silr.evaluation.robustness_summary import robustness_path

    run = trained_tiny_run
    common = [
        "--loss",
        "proposed",
        "--fold",
        "1",
        "--params",
        str(run["params"]),
        "--data",
        str(run["processed"]),
        "--folds",
        str(run["folds"]),
        "--models",
        str(run["models"]),
        "--device",
        "cpu",
    ]
    assert cli.main(["evaluate", *common, "--out", str(tmp_path / "m")]) == 0
    outputs = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert cli.main(["robustness", *common, "--out", str(out)]) == 0
        outputs.append(robustness_path(out, "proposed", 1).read_bytes())
    assert outputs[0] == outputs[1]
    result = json.loads(outputs[0])
    evaluated = json.loads((tmp_path / "m" / "folds" / "proposed" / "fold1.json").read_text())
    clean = result["conditions"][0]
    assert (clean["corruption"], clean["severity"]) == ("clean", 0)
    assert clean["mean_px"] == evaluated["error"]["mean_px"]
    assert clean["presence"] == evaluated["presence"]
    keys = [(c["corruption"], c["severity"]) for c in result["conditions"][1:]]
    assert keys == [(n, s) for n in CORRUPTION_NAMES for s in SEVERITIES]


def _write_fold(root, loss, fold, clean_px, slope, presence=True):
    from silr.core.io import write_json
    from silr.evaluation.robustness_summary import FORMAT, robustness_path

    counts = (
        {"true_positive": 10, "false_positive": 1, "false_negative": 2, "true_negative": 3}
        if presence
        else None
    )
    conditions = [
        {
            "corruption": "clean",
            "severity": 0,
            "mean_px": clean_px,
            "landmarks_in_frame": 12,
            "presence": counts,
        }
    ]
    conditions += [
        {
            "corruption": name,
            "severity": s,
            "mean_px": clean_px + slope * s * (k + 1),
            "landmarks_in_frame": 12,
            "presence": counts,
        }
        for k, name in enumerate(("scatter", "contrast"))
        for s in SEVERITIES
    ]
    write_json(
        robustness_path(root, loss, fold),
        {
            "format": FORMAT,
            "loss": loss,
            "fold": fold,
            "seed": 0,
            "test_specimens": [fold],
            "frames": 2,
            "presence_rule": "learned" if presence else None,
            "conditions": conditions,
        },
    )


def test_summary_pools_folds_as_table2_does(tmp_path):
    from silr.evaluation import robustness_summary

    for fold, clean in ((1, 2.0), (2, 4.0)):
        _write_fold(tmp_path, "a", fold, clean, slope=1.0)
        _write_fold(tmp_path, "b", fold, clean, slope=-0.1, presence=False)
    summary = robustness_summary.summarise(tmp_path, ["a", "b"], [1, 2], {"mean_shape": 30.0})
    a, b = summary["a"], summary["b"]
    assert a["clean_px"] == 3.0  # mean over the two held-out specimens
    assert a["error_px"]["scatter"]["1"] == 4.0 and a["error_px"]["contrast"]["5"] == 13.0
    assert a["mean_over_types_px"]["2"] == pytest.approx((5.0 + 7.0) / 2)
    assert (
        a["monotone_over_types"] and not b["monotone_over_types"]
    )  # b gets *better* with severity
    # absent F1 from pooled counts: 2 x 3 / (2 x 3 + 2 + 1)
    assert a["absent_f1_clean"] == pytest.approx(6 / 9) and b["absent_f1_clean"] is None
    assert robustness_summary.least_degraded(summary) == "b"
    text = robustness_summary.markdown(summary)
    from silr.evaluation.metrics import loss_title

    # clean, then scatter at severities 1, 3, 5, contrast at 1, 3, 5, the relative error, F1
    assert f"| {loss_title('a')} | 3.00 | 4.00 | 6.00 | 8.00 | 5.00 | 9.00 | 13.00 |" in text
    assert f"| {loss_title('b')} | 3.00 |" in text and "| n/a |" in text
    assert "Mean shape (baseline) 30.00 px" in text


def test_summary_names_a_missing_fold(tmp_path):
    from silr.core.errors import DataError
    from silr.evaluation import robustness_summary

    _write_fold(tmp_path, "a", 1, 2.0, slope=1.0)
    with pytest.raises(
        DataError, match=r"fold2.json: missing; run `dvc repro robustness@a-2` first"
    ):
        robustness_summary.summarise(tmp_path, ["a"], [1, 2])
