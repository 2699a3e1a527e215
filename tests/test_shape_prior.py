"""The shape prior of the `shape` presence rule (silr.model.shape_prior) and its codec rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from silr.core.errors import CheckpointError, ConfigError
from silr.model import shape_prior
from silr.model.codec import HeatmapCodec
from silr.model.shape_prior import ShapePrior

FRAME = (180, 180)


def _training_shapes(count: int = 60, seed: int = 0) -> np.ndarray:
    """(N, 14, 2) shapes: one template, moved, scaled by 0.9..1.1 and turned by +-8 degrees."""
    rng = np.random.default_rng(seed)
    template = rng.uniform(-60.0, 60.0, size=(14, 2))
    shapes = []
    for _ in range(count):
        angle = math.radians(rng.uniform(-8, 8))
        turn = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        shapes.append(template @ turn.T * rng.uniform(0.9, 1.1) + rng.uniform(40, 140, size=2))
    return np.stack(shapes)


def _inside(xy: np.ndarray) -> np.ndarray:
    return (xy[..., 0] >= -0.5) & (xy[..., 0] < 179.5) & (xy[..., 1] >= -0.5) & (xy[..., 1] < 179.5)


def test_fit_keeps_the_modes_that_explain_the_share_of_variance():
    shapes = _training_shapes()
    prior = ShapePrior.fit(shapes)
    modes = np.asarray(prior.modes)
    assert modes.shape[1] == 28 and 1 <= len(modes) <= 28
    assert np.allclose(modes @ modes.T, np.eye(len(modes)), atol=1e-9)
    assert list(prior.variances) == sorted(prior.variances, reverse=True)
    # more variance asked for, at least as many modes
    assert len(ShapePrior.fit(shapes, 0.999).modes) >= len(modes)
    assert len(ShapePrior.fit(shapes, 0.5).modes) <= len(modes)
    # the mean shape is centred (translation is fitted per frame, not a mode)
    assert np.allclose(np.asarray(prior.mean_xy).mean(axis=0), 0.0, atol=1e-9)


def test_a_shape_past_the_border_is_placed_from_its_visible_landmarks():
    shapes = _training_shapes()
    prior = ShapePrior.fit(shapes[:-1])
    # the held-out shape, moved so that part of it leaves the frame
    truth = shapes[-1] + np.array([70.0, 0.0])
    inside = _inside(truth)
    assert 3 <= inside.sum() < 14
    called = prior.in_frame(truth[None], inside[None], FRAME)[0]
    assert (called == inside).all()
    fitted = prior.fit_frame(truth, inside)
    assert np.abs(fitted - truth).max() < 3.0  # the hidden landmarks too


def test_an_anchor_on_the_wrong_structure_is_dropped_by_the_refits(monkeypatch):
    shapes = _training_shapes()
    prior = ShapePrior.fit(shapes[:-1])
    truth = shapes[-1] + np.array([70.0, 0.0])
    inside = _inside(truth)
    decoded = truth.copy()
    # one visible landmark's peak went 25 px off (to another structure)
    wrong = int(np.flatnonzero(inside)[0])
    decoded[wrong] = decoded[wrong] + np.array([-20.0, 15.0])
    with_refits = prior.fit_frame(decoded, inside)
    monkeypatch.setattr(shape_prior, "SHAPE_REFITS", 0)
    without = prior.fit_frame(decoded, inside)
    hidden = ~inside
    err_with = np.abs(with_refits - truth)[hidden].max()
    err_without = np.abs(without - truth)[hidden].max()
    assert err_with < 1.0 and err_without > 3.0


def test_too_few_anchors_keep_the_base_decisions():
    prior = ShapePrior.fit(_training_shapes())
    xy = np.full((2, 14, 2), 90.0)
    anchors = np.zeros((2, 14), dtype=bool)
    anchors[0, :2] = True  # two anchors: not enough to fit
    called = prior.in_frame(xy, anchors, FRAME)
    assert (called == anchors).all()
    with pytest.raises(ValueError, match="expected xy"):
        prior.in_frame(xy[:, :13], anchors[:, :13], FRAME)


@pytest.mark.parametrize("bad, match", [
    ({"mean_xy": [[0.0, 0.0]] * 14, "modes": [[0.0] * 28], "variances": [0.0]}, "positive"),
    ({"mean_xy": [[math.nan, 0.0]] * 14, "modes": [], "variances": []}, "finite"),
    ({"mean_xy": [[0.0, 0.0]] * 14, "modes": [[0.0] * 27], "variances": [1.0]}, "28 numbers"),
    ({"mean_xy": [[0.0, 0.0]] * 14, "modes": [], "variances": [], "extra": 1}, "mapping"),
    ({"mean_xy": "x", "modes": [], "variances": []}, "list"),
    ({"mean_xy": [[0.0, 0.0]] * 5000, "modes": [], "variances": []}, "more than"),
])
def test_a_stored_prior_is_checked(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        ShapePrior.read(bad)


def test_stored_form_round_trips():
    prior = ShapePrior.fit(_training_shapes())
    assert ShapePrior.read(prior.to_dict()) == prior


def test_the_shape_rule_needs_a_prior_of_its_landmarks():
    with pytest.raises(ConfigError, match="shape prior"):
        HeatmapCodec(size=(192, 192), stride=4, frame=(180, 180), presence="shape")
    small = ShapePrior.fit(_training_shapes()[:, :5])
    with pytest.raises(ConfigError, match="14 landmarks"):
        HeatmapCodec(size=(192, 192), stride=4, frame=(180, 180), presence="template",
                     shape_prior=small)


def test_the_codec_decides_by_the_fitted_shape():
    """decode with the shape rule: landmarks whose peaks sit at the frame's border but whose
    fitted positions lie past it are called absent; the base rule's calls would keep them."""
    shapes = _training_shapes()
    prior = ShapePrior.fit(shapes[:-1])
    codec = HeatmapCodec(size=(192, 192), sigma=2.5, stride=4, frame=(180, 180),
                         presence="shape", presence_source="head", shape_prior=prior)
    # moved so that at least 6 landmarks stay in the frame and every one past the border is more
    # than the outlier distance past it (nearer ones pull the fit: their clamped peaks look right)
    centred = shapes[-1] - shapes[-1].mean(axis=0) + 90.0
    for shift in range(0, 120, 2):
        truth = centred + np.array([float(shift), 0.0])
        inside = _inside(truth)
        past = np.maximum(truth - 179.5, -0.5 - truth).max(axis=-1)  # px past the border
        if inside.sum() >= 6 and (~inside).any() and (
                past[~inside].min() > shape_prior.SHAPE_OUTLIER_PX):
            break
    else:
        pytest.fail("no shift leaves the landmarks as the test needs")
    clamped = np.clip(truth, 0, 179) + 6.0  # input pixels (6 px of padding)
    heat = torch.full((1, 14, 48, 48), -20.0)
    for i, (x, y) in enumerate(clamped):
        col, row = int((x + 0.5) / 4), int((y + 0.5) / 4)
        heat[0, i, row, col] = 10.0
    # the learned presence calls every landmark present: only the shape can find the absent ones
    decoded = codec.decode(heat, presence_prob=torch.full((1, 14), 0.9))
    assert (decoded.present[0].numpy() == inside).all()
    assert torch.equal(decoded.score, torch.full((1, 14), 0.9))
    assert set(decoded.shape_present.unique().tolist()) <= {0.0, 1.0}


def test_a_hostile_card_prior_fails_in_one_line(tmp_path):
    from silr.model.card import ModelCard

    card = _card_dict()
    card["heatmap"]["shape_prior"] = {"mean_xy": [[1e300, 0.0]] * 14, "modes": [],
                                      "variances": []}
    with pytest.raises(CheckpointError, match="heatmap") as raised:
        ModelCard.from_dict(card, tmp_path / "best.pt")
    assert "\n" not in str(raised.value)


def _card_dict() -> dict:
    from silr.core.params import load_params
    from silr.model.card import ModelCard

    params = load_params("params.yaml")
    prior = ShapePrior.fit(_training_shapes())
    from silr.model.run_config import codec_for_run

    codec = codec_for_run(params, "proposed_plus", prior)
    card = ModelCard.for_run(params, loss_name="proposed_plus", fold=1, data_hash="d",
                             params_hash="p", val_score_px=1.0, epoch=1, codec=codec)
    stored = card.to_dict()
    assert ModelCard.from_dict(stored).heatmap.shape_prior == prior
    return stored
