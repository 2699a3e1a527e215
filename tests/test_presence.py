"""Presence and anatomical consistency: the decoding rules, the terms that train them, the head
that must not touch localisation, and the metrics that score them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from silr.core import anatomy
from silr.core.anatomy import LANDMARK_BONE_INDEX, LANDMARK_BONE_LABELS, NUM_LANDMARKS
from silr.core.errors import ConfigError
from silr.core.types import Batch
from silr.evaluation import presence
from silr.model.codec import HeatmapCodec, presence_logit
from silr.model.losses import (
    bone_distance_loss,
    build_loss,
    kl_loss,
    kl_null_loss,
    presence_bce_loss,
)
from silr.model.network import build_model
from silr.training.dataset import AugmentDraw, augment, bone_distance_maps

L = NUM_LANDMARKS
FH_L = anatomy.LANDMARK_NAMES.index("FH-l")


def _peak_maps(codec: HeatmapCodec, xy: tuple[float, float], batch: int = 1) -> torch.Tensor:
    """Logit maps whose softmax is the target Gaussian at input position xy, for every landmark."""
    where = torch.tensor(xy, dtype=torch.float32).expand(batch, L, 2)
    targets = codec.encode(where, torch.ones(batch, L, dtype=torch.bool))
    return torch.log(targets.normalized.clamp_min(1e-30))


def _labels_with_bone(bone: int, box: tuple[int, int, int, int], size: int = 192) -> torch.Tensor:
    labels = torch.zeros(1, size, size, dtype=torch.long)
    x0, y0, x1, y1 = box
    labels[0, y0:y1, x0:x1] = bone
    return labels


# ------------------------------------------------------------------ the template rule


@pytest.mark.parametrize(
    "stride, window, radius", [(4, 25.0, 3), (2, 25.0, 6), (1, 25.0, 12), (4, 50.0, 6)]
)
def test_template_window_scales_with_the_stride(stride, window, radius):
    codec = HeatmapCodec(stride=stride, template_window=window, frame=(180, 180))
    assert codec.template_radius == radius


def test_template_rule_calls_a_gaussian_on_its_bone_present_and_noise_absent():
    codec = HeatmapCodec(stride=4, frame=(180, 180), presence="template", refine="centroid")
    labels = _labels_with_bone(anatomy.LEFT_FEMUR, (80, 80, 120, 120))
    peak = _peak_maps(codec, (100.0, 100.0))
    decoded = codec.decode(peak, labels=labels)
    assert decoded.template_ncc[0, FH_L].item() == pytest.approx(1.0, abs=1e-4)
    assert bool(decoded.present[0, FH_L])
    # Every other landmark's bone (hemipelvis, right femur) is not in the labels: absent, score -1.
    others = [i for i, bone in enumerate(LANDMARK_BONE_INDEX) if bone != anatomy.LEFT_FEMUR]
    assert not decoded.present[0, others].any() and (decoded.template_ncc[0, others] == -1).all()
    noise = torch.randn(1, L, 48, 48, generator=torch.Generator().manual_seed(0))
    assert not bool(codec.decode(noise, labels=labels).present[0, FH_L])


def test_template_argmax_is_restricted_to_the_bone_and_xy_bone_reports_it():
    codec = HeatmapCodec(stride=4, frame=(180, 180), presence="template", refine="centroid")
    labels = _labels_with_bone(anatomy.LEFT_FEMUR, (20, 20, 60, 60))
    # The global peak lies outside the femur; a weaker one inside it.
    maps = torch.logaddexp(_peak_maps(codec, (140.0, 140.0)), _peak_maps(codec, (40.0, 40.0)) - 1.0)
    decoded = codec.decode(maps, labels=labels)
    assert decoded.xy[0, FH_L].tolist() == pytest.approx([140.0, 140.0], abs=0.5)
    assert decoded.xy_bone[0, FH_L].tolist() == pytest.approx([40.0, 40.0], abs=0.5)
    assert bool(decoded.present[0, FH_L])


def test_without_a_trained_segmentation_the_template_sits_at_the_frame_argmax():
    codec = HeatmapCodec(
        stride=4,
        frame=(180, 180),
        presence="template",
        segmentation_trained=False,
        kind="value",
        refine="centroid",
    )
    where = torch.tensor((100.0, 60.0)).expand(1, L, 2)
    peak = codec.encode(where, torch.ones(1, L, dtype=torch.bool)).peak
    decoded = codec.decode(peak)  # no labels needed
    assert decoded.present.all() and torch.allclose(
        decoded.template_ncc, torch.ones(1, L), atol=1e-4
    )


def test_template_rule_without_labels_is_refused_when_segmentation_is_trained():
    codec = HeatmapCodec(stride=4, frame=(180, 180), presence="template")
    with pytest.raises(ValueError, match="template presence rule needs the predicted labels"):
        codec.decode(torch.zeros(1, L, 48, 48))


# ------------------------------------------------------------------ the learned rule


def test_learned_presence_follows_the_source_and_the_calibration():
    heatmaps = torch.randn(2, L, 48, 48, generator=torch.Generator().manual_seed(1))
    logits = torch.randn(2, L, generator=torch.Generator().manual_seed(2))
    head = HeatmapCodec(
        stride=4, presence="learned", presence_source="head", calibration=(2.0, -0.5)
    )
    assert torch.allclose(
        head.presence_probability(heatmaps, logits), torch.sigmoid(2.0 * logits - 0.5)
    )
    null = HeatmapCodec(stride=4, presence="learned", presence_source="null_cell")
    # 1 - p(null) of a softmax over every pixel and the null cell.
    cells = torch.cat((heatmaps.flatten(2), logits[..., None]), dim=-1)
    expected = 1.0 - torch.softmax(cells, dim=-1)[..., -1]
    assert torch.allclose(null.presence_probability(heatmaps, logits), expected, atol=1e-6)
    decoded = head.decode(heatmaps, presence_prob=head.presence_probability(heatmaps, logits))
    assert torch.equal(decoded.present, decoded.score >= 0.5)


def test_learned_rule_needs_a_presence_source():
    with pytest.raises(
        ConfigError, match="learned needs a network whose loss trains a presence output"
    ):
        HeatmapCodec(presence="learned")


# ------------------------------------------------------------------ the terms


def test_kl_null_is_kl_for_present_landmarks_and_minus_log_null_for_absent():
    codec = HeatmapCodec(size=(16, 16))
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(2, L, 16, 16, generator=generator)
    present = torch.rand(2, L, generator=generator) > 0.4
    targets = codec.encode(torch.rand(2, L, 2, generator=generator) * 15, present)
    very_unlikely = torch.full((2, L), -1e4)
    # A null cell of (almost) no mass leaves the present landmarks' KL as it was.
    per_present = kl_null_loss(
        logits, very_unlikely, targets.normalized, torch.ones(2, L, dtype=torch.bool)
    )
    assert per_present.item() == pytest.approx(
        kl_loss(logits, targets.normalized, torch.ones(2, L)).item(), rel=1e-4
    )
    absent = torch.zeros(2, L, dtype=torch.bool)
    null = torch.randn(2, L, generator=generator)
    cells = torch.cat((logits.flatten(2), null[..., None]), dim=-1)
    expected = -torch.log_softmax(cells, dim=-1)[..., -1].mean()
    assert kl_null_loss(logits, null, targets.normalized, absent).item() == pytest.approx(
        expected.item(), rel=1e-5
    )


def test_presence_bce_is_binary_cross_entropy():
    logits = torch.randn(3, L)
    present = torch.rand(3, L) > 0.5
    assert presence_bce_loss(logits, present).item() == pytest.approx(
        F.binary_cross_entropy_with_logits(logits, present.float()).item()
    )


def test_bone_distance_is_zero_on_the_bone_and_its_gradient_moves_mass_towards_it():
    labels = _labels_with_bone(anatomy.LEFT_FEMUR, (100, 100, 140, 140))
    distance = torch.from_numpy(bone_distance_maps(labels.numpy()))
    present = torch.zeros(1, L, dtype=torch.bool)
    present[0, FH_L] = True
    codec = HeatmapCodec(stride=4, frame=(180, 180))
    on_bone = _peak_maps(codec, (120.0, 120.0))
    assert bone_distance_loss(on_bone, distance, present).item() == pytest.approx(0.0, abs=1e-3)
    off_bone = _peak_maps(codec, (60.0, 120.0)).requires_grad_()
    value = bone_distance_loss(off_bone, distance, present)
    # The mass sits about 40 px left of the bone's edge at x = 100.
    assert value.item() == pytest.approx(40.0, abs=3.0)
    value.backward()
    stepped = (off_bone - 50.0 * off_bone.grad).detach()
    assert bone_distance_loss(stepped, distance, present).item() < value.item() - 1.0
    # A landmark whose bone is not in view takes no part: only FH-l counts here.
    present[0, :] = True
    assert bone_distance_loss(off_bone.detach(), distance, present).item() == pytest.approx(
        value.item(), rel=1e-5
    )


def test_bone_distance_maps_follow_the_augmentation():
    labels = np.zeros((1, 192, 192), dtype=np.uint8)
    labels[0, 70:110, 60:100] = anatomy.LEFT_HEMIPELVIS
    labels[0, 120:150, 120:160] = anatomy.RIGHT_FEMUR
    distance = torch.from_numpy(bone_distance_maps(labels))
    batch = Batch(
        torch.zeros(1, 1, 192, 192),
        torch.from_numpy(labels).long(),
        torch.zeros(1, L, 2),
        torch.ones(1, L, dtype=torch.bool),
        distance,
    )
    moved = augment(batch, AugmentDraw.fixed(1, zoom=1.25, angle=0.15))
    recomputed = torch.from_numpy(bone_distance_maps(moved.labels.numpy()))
    for slot, bone in enumerate(LANDMARK_BONE_LABELS):
        if bone in (anatomy.LEFT_HEMIPELVIS, anatomy.RIGHT_FEMUR):
            # Inside the border that the rotation fills by padding, where neither map is meaningful.
            error = (moved.bone_distance[0, slot] - recomputed[0, slot]).abs()[30:-30, 30:-30]
            assert error.mean().item() < 0.6 and error.max().item() < 2.0


def test_a_loss_with_a_presence_term_needs_a_codec_that_decodes_it():
    with pytest.raises(
        ConfigError, match="train presence as 'head' but the codec decodes it as None"
    ):
        build_loss({"kl": 1.0, "presence_bce": 1.0}, codec=HeatmapCodec(), key="losses.x")
    with pytest.raises(ConfigError, match="kl and kl_null both"):
        build_loss(
            {"kl": 1.0, "kl_null": 1.0},
            codec=HeatmapCodec(presence_source="null_cell"),
            key="losses.x",
        )


# ------------------------------------------------------------- the head does not touch localisation


def test_the_presence_head_trains_only_itself():
    torch.manual_seed(0)
    with_head = build_model("hrnet_w18_small", [], presence_head=True)
    torch.manual_seed(0)
    without = build_model("hrnet_w18_small", [])
    # Built last: every other weight starts the same.
    for name, value in without.state_dict().items():
        assert torch.equal(value, with_head.state_dict()[name])
    images = torch.rand(2, 1, 192, 192)
    output = with_head(images)
    presence_bce_loss(output.presence, torch.ones(2, L, dtype=torch.bool)).backward()
    touched = {
        name
        for name, p in with_head.named_parameters()
        if p.grad is not None and p.grad.abs().sum() > 0
    }
    assert touched and all(name.startswith("presence_head.") for name in touched)


def test_outlier_frames_keep_the_padding_and_are_not_the_frame():
    from silr.training.dataset import outlier_frames

    images = torch.zeros(2, 1, 192, 192)
    images[:, :, 6:186, 6:186] = torch.rand(
        2, 1, 180, 180, generator=torch.Generator().manual_seed(0)
    )
    made = outlier_frames(images, 6, torch.Generator().manual_seed(1))
    assert made.shape == (6, 1, 192, 192)
    border = torch.ones(192, 192, dtype=torch.bool)
    border[6:186, 6:186] = False
    assert (made[:, 0][:, border] == 0).all()  # the padding stays zero, as predict pads
    assert made.min() >= 0 and made.max() <= 1
    for outlier in made:
        assert not any(torch.allclose(outlier, image) for image in images)


def test_a_trained_frame_gate_multiplies_the_presence():
    codec = HeatmapCodec(stride=4, presence="learned", presence_source="head")
    heatmaps, logits = torch.zeros(2, L, 48, 48), torch.full((2, L), 3.0)
    gated = codec.presence_probability(heatmaps, logits, torch.tensor([10.0, -10.0]))
    assert torch.allclose(gated[0], torch.sigmoid(torch.tensor(3.0)).expand(L), atol=1e-4)
    assert (gated[1] < 1e-4).all()  # a frame the gate rejects: every landmark absent


# ------------------------------------------------------------------ metrics


def test_auroc_equals_the_pairwise_definition():
    generator = np.random.default_rng(0)
    labels = generator.random(200) > 0.3
    scores = np.round(generator.random(200) + labels * 0.3, 1)  # ties on purpose
    pairs = [
        (1.0 if p > n else 0.5 if p == n else 0.0) for p in scores[labels] for n in scores[~labels]
    ]
    assert presence.auroc(labels, scores) == pytest.approx(np.mean(pairs))
    assert math.isnan(presence.auroc(np.ones(3, bool), np.array([0.1, 0.2, 0.3])))


def test_ece_of_a_calibrated_and_of_an_overconfident_score():
    generator = np.random.default_rng(1)
    probability = generator.random(200_000)
    outcome = generator.random(200_000) < probability
    assert presence.expected_calibration_error(outcome, probability) < 0.01
    assert presence.expected_calibration_error(outcome, np.where(probability > 0.5, 1.0, 0.0)) > 0.2


def test_platt_scaling_recovers_the_generating_calibration():
    generator = np.random.default_rng(2)
    z = generator.normal(0, 2, 20_000)
    present = generator.random(20_000) < 1 / (1 + np.exp(-(0.5 * z + 1.0)))
    a, b = presence.platt_scaling(z, present)
    assert a == pytest.approx(0.5, abs=0.05) and b == pytest.approx(1.0, abs=0.08)
    assert presence.platt_scaling(z, np.ones_like(present)) is None
    # A perfectly separable set stays finite (Platt's smoothed targets).
    a, b = presence.platt_scaling(
        np.array([-2.0, -1.0, 1.0, 2.0]), np.array([False, False, True, True])
    )
    assert math.isfinite(a) and math.isfinite(b) and a > 0


def test_presence_metrics_count_the_absent_class_and_detections():
    truth = np.array([True, True, True, False, False])
    called = np.array([True, True, False, True, False])
    errors_mm = np.array([1.0, 9.0, 2.0, np.nan, np.nan])
    score = np.array([0.9, 0.8, 0.3, 0.6, 0.1])
    result = presence.presence_metrics(truth, called, score, errors_mm, probability=True)
    # Absent class: one of two absent landmarks called absent; two landmarks called absent, one
    # right.
    assert (
        result["absent_recall"] == 0.5
        and result["absent_precision"] == 0.5
        and result["absent_f1"] == 0.5
    )
    assert result["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    # Detections: called present = 3, hits (within 4 mm) = 1; misses = 3 in frame - 1 hit.
    assert result["detection_f1"] == pytest.approx(2 * 1 / (2 * 1 + 2 + 2))
    assert result["mean_px_called_present"] == pytest.approx(5.0)
    assert (
        result["ece"] is not None
        and presence.presence_metrics(truth, called, score, errors_mm, probability=False)["ece"]
        is None
    )


def test_presence_logit_of_a_null_cell():
    heatmaps = torch.zeros(1, 1, 2, 2)  # logsumexp = log 4
    assert presence_logit(
        heatmaps, torch.tensor([[math.log(4.0)]]), "null_cell"
    ).item() == pytest.approx(0.0)


# ------------------------------------------------------------------ through the commands


def test_a_presence_loss_trains_a_refitted_head_and_evaluates_every_rule(tmp_path, one_thread):
    """`silr train` of a loss with presence_bce: the card decodes the learned rule, the refit
    changes the head only and is deterministic, and `silr evaluate` reports every rule."""
    import json

    from conftest import train_argv, write_tiny_run
    from silr import cli
    from silr.model import checkpoint

    losses = {
        "with_head": {"dice_ce": 1.0, "kl": 0.1, "presence_bce": 1.0, "bone_distance": 0.05},
        "plain": {"dice_ce": 1.0, "kl": 0.1, "bone_distance": 0.05},
    }
    run = write_tiny_run(
        tmp_path / "a",
        params={
            "losses": losses,
            "study": {"losses": ["with_head"]},
            "train": {"presence_refit_epochs": 2, "presence_refit_batch": 2},
        },
    )
    assert cli.main(train_argv(run, "with_head")) == 0
    assert cli.main(train_argv(run, "plain")) == 0
    with_head = checkpoint.read_checkpoint(run["models"] / "with_head" / "fold1" / "best.pt")
    plain = checkpoint.read_checkpoint(run["models"] / "plain" / "fold1" / "best.pt")
    card = with_head["card"]
    # auto: the shape rule, anchored on the learned presence, with the fold's shape prior
    assert card.heatmap.presence == "shape" and card.heatmap.presence_source == "head"
    assert card.heatmap.shape_prior is not None and card.heatmap.shape_prior.num_landmarks == 14
    assert card.codec().shape_base_rule == "learned"
    assert bool(
        with_head["model_state"]["presence_head.frame_gate_trained"]
    )  # the refit trained the gate
    assert card.network.presence_head and plain["card"].heatmap.presence == "shape"
    assert plain["card"].codec().shape_base_rule == "template"
    # The head trains only itself: every other weight is that of the same loss without it.
    for name, value in plain["model_state"].items():
        assert torch.equal(value, with_head["model_state"][name]), name
    # A second run from scratch gives the same refitted head, byte for byte.
    again = write_tiny_run(
        tmp_path / "b",
        params={
            "losses": losses,
            "study": {"losses": ["with_head"]},
            "train": {"presence_refit_epochs": 2, "presence_refit_batch": 2},
        },
    )
    assert cli.main(train_argv(again, "with_head")) == 0
    second = checkpoint.read_checkpoint(again["models"] / "with_head" / "fold1" / "best.pt")
    for name, value in with_head["model_state"].items():
        assert torch.equal(value, second["model_state"][name]), name
    # Without the refit the head is the jointly trained one: the refit did change it.
    unrefitted = write_tiny_run(
        tmp_path / "c",
        params={
            "losses": losses,
            "study": {"losses": ["with_head"]},
            "train": {"presence_refit_epochs": 0},
        },
    )
    assert cli.main(train_argv(unrefitted, "with_head")) == 0
    joint = checkpoint.read_checkpoint(unrefitted["models"] / "with_head" / "fold1" / "best.pt")[
        "model_state"
    ]
    head = [
        name
        for name in joint
        if name.startswith("presence_head.") and joint[name].is_floating_point()
    ]
    assert any(not torch.equal(joint[name], with_head["model_state"][name]) for name in head)

    out = tmp_path / "metrics"
    assert (
        cli.main(
            [
                "evaluate",
                "--loss",
                "with_head",
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
                "--out",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads((out / "folds" / "with_head" / "fold1.json").read_text())
    assert result["presence_rule"] == "shape"
    assert set(result["presence_by_rule"]) == {"threshold", "template", "learned", "shape"}
    # The shape rule is scored by its base rule's score and decides by its own column.
    by_rule = result["presence_by_rule"]
    assert by_rule["shape"]["auroc"] == by_rule["learned"]["auroc"]
    assert result["presence_rules"]["shape"]["decision"] == "shape_present"
    assert 0.0 <= result["consistency"]["outside_own_bone_rate"] <= 1.0
