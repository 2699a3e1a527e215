"""Loss terms on hand-computed cases, gradients, visibility, and build_loss's contract."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from silr.core import anatomy
from silr.core.anatomy import LANDMARK_BONE_INDEX
from silr.core.errors import ConfigError
from silr.core.types import Batch, ModelOutput
from silr.model.codec import DecodedLandmarks, HeatmapCodec, discrete_visibility
from silr.model.losses import (
    LOSS_TERMS,
    build_loss,
    dice_ce_loss,
    heatmap_kind,
    kl_loss,
    mse_loss,
    ncc_loss,
    presence_source,
    soft_visibility,
    visibility_loss,
)

L = anatomy.NUM_LANDMARKS
FH_L = anatomy.LANDMARK_NAMES.index("FH-l")
FH_R = anatomy.LANDMARK_NAMES.index("FH-r")


# ------------------------------------------------------------------ dice_ce


def test_dice_ce_of_uniform_logits_by_hand():
    # 4x4 map, every pixel class 0, uniform softmax p = 1/7: CE = log 7. Dice loss of class 0:
    # 1 - 2 (16/7) / (16/7 + 16) = 0.75; of the six absent classes: 1 (up to MONAI's 1e-5
    # smoothing).
    logits = torch.zeros(1, anatomy.NUM_CLASSES, 4, 4)
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    expected = math.log(7) + (0.75 + 6 * 1.0) / 7
    assert dice_ce_loss(logits, labels).item() == pytest.approx(expected, abs=1e-4)


def test_dice_ce_of_a_confident_correct_prediction_is_near_zero():
    labels = torch.tensor([[[0, 1, 2, 3], [4, 5, 6, 0], [1, 1, 2, 2], [5, 6, 3, 4]]])
    logits = (
        50.0 * torch.nn.functional.one_hot(labels, anatomy.NUM_CLASSES).permute(0, 3, 1, 2).float()
    )
    assert dice_ce_loss(logits, labels).item() == pytest.approx(0.0, abs=1e-4)


def test_dice_ce_wants_integer_labels_of_matching_shape():
    with pytest.raises(ValueError, match=r"labels \(B, H, W\)"):
        dice_ce_loss(torch.zeros(1, 7, 4, 4), torch.zeros(1, 1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="integer class labels"):
        dice_ce_loss(torch.zeros(1, 7, 4, 4), torch.zeros(1, 4, 4))


# ------------------------------------------------------------------ kl


def test_kl_of_one_hot_target_against_uniform_logits_is_log_of_pixel_count():
    target = torch.zeros(1, 3, 4, 4)
    target[0, 0, 1, 2] = 1.0
    target[0, 1, 3, 3] = 1.0
    target[0, 2, 0, 0] = 1.0
    present = torch.tensor([[True, True, False]])
    logits = torch.zeros(1, 3, 4, 4)
    logits[0, 2] = torch.randn(4, 4) * 10  # absent: must not count
    assert kl_loss(logits, target, present).item() == pytest.approx(math.log(16), rel=1e-6)


def test_kl_is_zero_when_the_softmax_equals_the_target():
    targets = HeatmapCodec(size=(8, 8), sigma=2.5).encode(
        torch.tensor([[[3.3, 4.6]]]), torch.tensor([[True]])
    )
    logits = torch.log(targets.normalized) + 5.0  # softmax is shift invariant
    assert kl_loss(logits, targets.normalized, targets.present).item() == pytest.approx(
        0.0, abs=1e-5
    )


def test_kl_with_no_landmark_in_frame_is_zero_with_a_gradient():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    value = kl_loss(logits, torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, dtype=torch.bool))
    assert value.item() == 0.0 and value.requires_grad
    value.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


# ------------------------------------------------------------------ mse, ncc


def test_mse_is_on_the_raw_heatmap():
    # H = 0.8 everywhere (no sigmoid); one map all-zero target (0.64 per pixel), one with a
    # single pixel of 1: (15 * 0.64 + 0.04) / 16 = 0.6025; mean over both maps = 0.62125.
    heatmaps = torch.full((1, 2, 4, 4), 0.8)
    target = torch.zeros(1, 2, 4, 4)
    target[0, 1, 2, 2] = 1.0
    assert mse_loss(heatmaps, target).item() == pytest.approx((0.64 + 0.6025) / 2, rel=1e-5)


@pytest.mark.parametrize("reduction", ["landmark", "batchmean", "mean"])
def test_kl_reductions_match_torch_kl_div(reduction):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 6, 5, generator=generator)
    targets = HeatmapCodec(size=(6, 5), sigma=1.5).encode(
        torch.rand(3, 4, 2, generator=generator) * 4, torch.tensor([[True, True, False, True]] * 3)
    )
    log_q = torch.log_softmax(logits.flatten(2), dim=-1)
    target = targets.normalized.flatten(2)
    if reduction == "landmark":  # sum over pixels, mean over the 9 in-frame landmarks
        expected = F.kl_div(log_q, target, reduction="sum") / 9
    else:  # absent maps are zero targets, so they add nothing to either
        expected = F.kl_div(log_q, target, reduction=reduction)
    value = kl_loss(logits, targets.normalized, targets.present, reduction)
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    # The scale the reduction implies: `mean` is h * w * L * B / in-frame smaller than `landmark`.
    if reduction == "mean":
        landmark = kl_loss(logits, targets.normalized, targets.present, "landmark")
        assert (landmark / value).item() == pytest.approx(6 * 5 * 4 * 3 / 9, rel=1e-5)


def test_loss_kinds_decide_decoding_and_cannot_be_mixed():
    assert heatmap_kind({"dice_ce": 1.0, "kl": 0.1, "visibility": 10.0}) == "logit"
    assert heatmap_kind({"dice_ce": 1.0, "mse": 1.0}) == "value"
    assert heatmap_kind({"ncc": 1.0}) == "shape" and heatmap_kind({"dice_ce": 1.0}) == "logit"
    with pytest.raises(ConfigError, match=r"losses\.mix: mixes mse .* \(kl\)"):
        heatmap_kind({"kl": 1.0, "mse": 1.0}, "losses.mix")


def test_soft_visibility_term_is_soft_whatever_the_mode():
    output, batch = _batch_and_output(size=16)
    codec = HeatmapCodec(size=(16, 16))
    total, _ = build_loss({"visibility_soft": 1.0}, codec=codec, visibility_mode="hard")(
        output, batch
    )
    total.backward()
    assert output.heatmaps.grad.abs().sum().item() > 0


def test_soft_visibility_on_coarser_heatmaps_pools_the_segmentation():
    # 2 x 2 heatmap over a 4 x 4 segmentation: each heatmap pixel sees its 2 x 2 block's mean
    # bone probability.
    heatmaps = torch.full((1, 14, 2, 2), -30.0)
    heatmaps[0, :, 0, 0] = 30.0
    segmentation = torch.full((1, 7, 4, 4), -30.0)
    segmentation[0, 0] = 30.0
    segmentation[0, :, 0, 0] = -30.0  # one pixel of the top-left block is shared by the four
    for bone in set(LANDMARK_BONE_INDEX):  # landmark bones (probability 1/4 each) ...
        segmentation[0, bone, 0, 0] = 30.0
    v_hat = soft_visibility(heatmaps, segmentation)
    # ... so the block's mean probability of any landmark's bone is 1/16.
    torch.testing.assert_close(v_hat, torch.full((1, 14), 0.5 + 0.5 / 16), atol=1e-4, rtol=0)


def test_ncc_identical_negated_and_affine_maps():
    targets = HeatmapCodec(size=(8, 8)).encode(
        torch.tensor([[[2.0, 3.0], [5.5, 4.0], [1.0, 1.0]]]), torch.tensor([[True, True, False]])
    )
    peak = targets.peak
    same = ncc_loss(peak, peak, targets.present)
    assert same.item() == pytest.approx(0.0, abs=1e-6)
    assert ncc_loss(3.0 * peak - 1.0, peak, targets.present).item() == pytest.approx(0.0, abs=1e-6)
    # Landmark 0 identical (0), landmark 1 negated (2), landmark 2 absent: mean 1.
    logits = torch.stack([peak[0, 0], -peak[0, 1], torch.randn(8, 8)])[None]
    assert ncc_loss(logits, peak, targets.present).item() == pytest.approx(1.0, abs=1e-6)


# ------------------------------------------------------------------ visibility


def test_visibility_loss_is_the_papers_weighted_mae():
    v = torch.tensor([[1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    v_hat = torch.tensor([[0.5, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    # Row 1: (1 * 0.5 + 2 * 1.0 + 0 + 0) / 4 = 0.625; row 2: 0; mean 0.3125.
    assert visibility_loss(v_hat, v).item() == pytest.approx(0.3125)
    # Every landmark out of frame but predicted present outside its bone: 2 * 0.5 = 1.
    assert visibility_loss(torch.full((3, L), 0.5), torch.zeros(3, L)).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"same shape \(B, L\)"):
        visibility_loss(torch.zeros(2, L), torch.zeros(2, L - 1))


def _femur_labels(batch: int = 1, size: int = 20) -> torch.Tensor:
    # A left femur square at rows 5..9, columns 5..9; background elsewhere.
    labels = torch.full((batch, size, size), anatomy.BACKGROUND, dtype=torch.long)
    labels[:, 5:10, 5:10] = anatomy.LANDMARK_BONE["FH-l"]
    return labels


def test_discrete_visibility_inside_just_outside_and_absent():
    labels = _femur_labels(batch=2)
    xy = torch.zeros(2, L, 2)
    present = torch.zeros(2, L, dtype=torch.bool)
    xy[0, FH_L] = torch.tensor([7.0, 7.0])  # inside its bone
    xy[0, FH_R] = torch.tensor([7.0, 7.0])  # inside a bone, but the wrong one
    xy[1, FH_L] = torch.tensor([10.0, 7.0])  # one column right of its bone
    xy[1, FH_R] = torch.tensor([9.4, 7.0])  # FH-l's bone would hold it at column 9 ...
    present[0, [FH_L, FH_R]] = True
    present[1, [FH_L, FH_R]] = True
    decoded = DecodedLandmarks(xy=xy, present=present, score=present.float())
    v_hat = discrete_visibility(decoded, labels)
    assert v_hat[0, FH_L].item() == 1.0 and v_hat[0, FH_R].item() == 0.5
    assert v_hat[1, FH_L].item() == 0.5 and v_hat[1, FH_R].item() == 0.5
    # Rounding: column 9.4 -> 9 (inside), 9.6 -> 10 (outside).
    xy[1, FH_L] = torch.tensor([9.4, 7.0])
    assert discrete_visibility(decoded._replace(xy=xy), labels)[1, FH_L].item() == 1.0
    xy[1, FH_L] = torch.tensor([9.6, 7.0])
    assert discrete_visibility(decoded._replace(xy=xy), labels)[1, FH_L].item() == 0.5
    absent = [i for i in range(L) if i not in (FH_L, FH_R)]
    assert v_hat[:, absent].abs().sum().item() == 0.0


def _sharp_output(labels: torch.Tensor, spots: dict[int, tuple[int, int]]) -> ModelOutput:
    """Confident heatmaps (+30 at each (row, col) spot, -30 elsewhere) and one-hot segmentation."""
    batch, height, width = labels.shape
    heatmaps = torch.full((batch, L, height, width), -30.0)
    for landmark, (row, col) in spots.items():
        heatmaps[:, landmark, row, col] = 30.0
    segmentation = (
        30.0 * torch.nn.functional.one_hot(labels, anatomy.NUM_CLASSES).permute(0, 3, 1, 2).float()
    )
    return ModelOutput(heatmaps, segmentation)


def test_soft_visibility_tends_to_the_discrete_one():
    labels = _femur_labels()
    output = _sharp_output(
        labels, {FH_L: (7, 7), FH_R: (7, 7), anatomy.LANDMARK_NAMES.index("ASIS-l"): (0, 0)}
    )
    soft = soft_visibility(output.heatmaps, output.segmentation)
    hard = discrete_visibility(HeatmapCodec(size=(20, 20)).decode(output.heatmaps), labels)
    expected = torch.zeros(1, L)
    expected[0, FH_L], expected[0, FH_R], expected[0, anatomy.LANDMARK_NAMES.index("ASIS-l")] = (
        1.0,
        0.5,
        0.5,
    )
    torch.testing.assert_close(hard, expected)
    torch.testing.assert_close(soft, expected, atol=1e-5, rtol=0)


def test_soft_visibility_spreads_between_inside_and_outside():
    # Heatmap softmax split evenly between a pixel inside the bone and one outside: p_inside = 1/2.
    labels = _femur_labels()
    heatmaps = torch.full((1, L, 20, 20), -40.0)
    heatmaps[0, FH_L, 7, 7] = 0.0
    heatmaps[0, FH_L, 15, 15] = 0.0
    segmentation = (
        40.0 * torch.nn.functional.one_hot(labels, anatomy.NUM_CLASSES).permute(0, 3, 1, 2).float()
    )
    v_hat = soft_visibility(heatmaps, segmentation)
    # p_present = sigmoid(0) = 0.5 -> v_hat = 0.5 * (0.5 + 0.5 * 0.5) = 0.375.
    assert v_hat[0, FH_L].item() == pytest.approx(0.375, abs=1e-5)


@pytest.mark.parametrize("detach, moves_masks", [(True, False), (False, True)])
def test_detach_segmentation_decides_whether_visibility_moves_the_masks(detach, moves_masks):
    torch.manual_seed(0)
    heatmaps = torch.randn(1, L, 8, 8, requires_grad=True)
    segmentation = torch.randn(1, anatomy.NUM_CLASSES, 8, 8, requires_grad=True)
    soft_visibility(heatmaps, segmentation, detach_segmentation=detach).sum().backward()
    assert heatmaps.grad.abs().sum() > 0
    assert (
        segmentation.grad is not None and segmentation.grad.abs().sum().item() > 0
    ) == moves_masks


# ------------------------------------------------------------------ WeightedLoss / build_loss


def _batch_and_output(size: int = 16, all_absent: bool = False, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    heatmaps = torch.randn(2, L, size, size, generator=generator).requires_grad_()
    segmentation = torch.randn(
        2, anatomy.NUM_CLASSES, size, size, generator=generator
    ).requires_grad_()
    labels = torch.randint(0, anatomy.NUM_CLASSES, (2, size, size), generator=generator)
    xy = torch.rand(2, L, 2, generator=generator) * (size - 1)
    present = (
        torch.zeros(2, L, dtype=torch.bool)
        if all_absent
        else torch.rand(2, L, generator=generator) > 0.3
    )
    presence = torch.randn(2, L, generator=generator).requires_grad_()
    distance = (
        torch.rand(2, len(anatomy.LANDMARK_BONE_LABELS), size, size, generator=generator) * 20
    )
    batch = Batch(torch.rand(2, 1, size, size), labels, xy, present, distance)
    return ModelOutput(heatmaps, segmentation, presence), batch


# The visibility mode changes only the visibility term.
TERM_CASES = [(term, "soft") for term in sorted(LOSS_TERMS)] + [("visibility", "hard")]


@pytest.mark.parametrize("all_absent", [False, True])
@pytest.mark.parametrize("term, mode", TERM_CASES)
def test_every_term_has_finite_value_and_gradient(term, mode, all_absent):
    output, batch = _batch_and_output(all_absent=all_absent)
    codec = HeatmapCodec(size=(16, 16), presence_source=presence_source({term: 1.0}))
    loss = build_loss({term: 1.0}, codec=codec, visibility_mode=mode)
    total, terms = loss(output, batch)
    assert set(terms) == {term}
    assert torch.isfinite(total) and total.requires_grad
    total.backward()
    grads = [t.grad for t in output if t is not None and t.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_hard_visibility_has_the_discrete_value_and_no_gradient():
    output, batch = _batch_and_output()
    codec = HeatmapCodec(size=(16, 16))
    total, _ = build_loss({"visibility": 1.0}, codec=codec, visibility_mode="hard")(output, batch)
    v_hat = discrete_visibility(codec.decode(output.heatmaps), output.segmentation.argmax(1))
    assert total.item() == pytest.approx(visibility_loss(v_hat, batch.present.float()).item())
    total.backward()
    assert output.heatmaps.grad.abs().sum().item() == 0.0


def test_a_user_defined_mix_is_the_weighted_sum_of_its_terms():
    output, batch = _batch_and_output()
    codec = HeatmapCodec(size=(16, 16))
    loss = build_loss({"dice_ce": 1.0, "kl": 0.1, "ncc": 0.0}, codec=codec, key="losses.kl_only")
    assert loss.terms_needed == ("dice_ce", "kl")
    total, terms = loss(output, batch)
    assert set(terms) == {"dice_ce", "kl"}  # the zero-weight term is not computed
    targets = codec.encode(batch.landmarks_xy, batch.present)
    dice_ce = dice_ce_loss(output.segmentation, batch.labels)
    kl = kl_loss(output.heatmaps, targets.normalized, targets.present)
    assert terms["dice_ce"].item() == pytest.approx(dice_ce.item(), rel=1e-5)
    assert terms["kl"].item() == pytest.approx(kl.item(), rel=1e-5)
    assert total.item() == pytest.approx(dice_ce.item() + 0.1 * kl.item(), rel=1e-5)
    assert not terms["kl"].requires_grad and total.requires_grad


@pytest.mark.parametrize(
    "weights, message",
    [
        (
            {"dice_ce": 1.0, "kll": 0.1},
            "losses.kl_only: unknown term 'kll' (known: bone_distance, dice_ce, kl, kl_null, "
            "mse, ncc, presence_bce, "
            "visibility, visibility_continuous, visibility_soft)",
        ),
        ([("kl", 0.1)], "losses.kl_only: expected a mapping of term -> weight"),
    ],
)  # the weights themselves are checked by silr.core.params (tests/test_anatomy_params.py)
def test_build_loss_errors_name_the_key(weights, message):
    with pytest.raises(ConfigError) as caught:
        build_loss(weights, codec=HeatmapCodec(), key="losses.kl_only")
    assert str(caught.value).startswith(message)


def test_a_term_class_can_claim_only_a_free_name_of_the_params_vocabulary():
    from silr.model.loss_terms import register_term

    with pytest.raises(ValueError, match="'kll' is not a term name of silr.core.choices"):
        register_term("kll")
    with pytest.raises(ValueError, match="'kl' is already HeatmapKL"):
        register_term("kl")


def test_every_visibility_mode_of_params_has_its_rule():
    from silr.core.choices import VISIBILITY_MODES
    from silr.model.loss_terms import V_HAT_RULES

    assert tuple(V_HAT_RULES) == VISIBILITY_MODES


def test_unknown_visibility_mode_is_a_config_error():
    with pytest.raises(
        ConfigError, match=r"losses\.visibility_mode: unknown mode 'medium' \(known: soft, hard\)"
    ):
        build_loss({"visibility": 1.0}, codec=HeatmapCodec(), visibility_mode="medium")


def test_heatmaps_of_another_size_than_the_codec_are_refused():
    output, batch = _batch_and_output(size=16)
    with pytest.raises(
        ValueError, match=r"expected heatmaps \(B, L, 192, 192\) matching the codec"
    ):
        build_loss({"kl": 1.0}, codec=HeatmapCodec())(output, batch)


# ------------------------------------------------------------------ the field's MSE


def test_mse_with_target_weights_leaves_absent_maps_out():
    codec = HeatmapCodec(size=(16, 16), sigma=4.0, kind="value")
    present = torch.tensor([[True, False]])
    targets = codec.encode(torch.tensor([[[8.0, 8.0], [3.0, 3.0]]]), present)
    logits = targets.peak.clone()
    logits[0, 1] = 5.0  # the absent landmark's map is wildly wrong
    assert mse_loss(logits, targets.peak, present=targets.present).item() == pytest.approx(0.0)
    assert mse_loss(logits, targets.peak).item() > 1.0  # without target weights it counts


def test_named_loss_options_reach_the_loss_and_the_codec():
    from silr.core.params import params_from_dict
    from silr.model.run_config import codec_for_run

    params = params_from_dict(
        {
            "losses": {
                "m": {"mse": 1.0, "sigma": 8.0, "refine": "parabola"},
                "w": {"mse": 1.0, "mse_foreground_weight": 1000, "mse_target_weight": False},
            },
            "study": {"losses": ["m", "w"]},
        }
    )
    assert codec_for_run(params, "m").sigma == 8.0 and codec_for_run(params, "w").sigma == 2.5
    # A loss's own refinement wins over heatmap.refine; without one, heatmap.refine holds.
    assert codec_for_run(params, "m").refine == "parabola"
    assert codec_for_run(params, "w").refine == params.heatmap.refine == "centroid"
    assert params.loss_options("w") == {
        "sigma": None,
        "refine": None,
        "mse_foreground_weight": 1000.0,
        "mse_target_weight": False,
    }
    assert params.loss_weights("m") == {"mse": 1.0}
    with pytest.raises(ConfigError, match=r"losses\.m\.sigma must be >= 0\.1, got 0"):
        params_from_dict({"losses": {"m": {"mse": 1.0, "sigma": 0}}, "study": {"losses": ["m"]}})
    with pytest.raises(ConfigError, match=r"losses\.m\.refine must be one of none, parabola"):
        params_from_dict(
            {"losses": {"m": {"mse": 1.0, "refine": "dark"}}, "study": {"losses": ["m"]}}
        )
