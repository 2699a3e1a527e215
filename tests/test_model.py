"""SILRNet: shapes, registry and argument errors, determinism, channels_last, init checkpoints."""

from __future__ import annotations

import pytest
import torch

from silr.core import anatomy
from silr.core.errors import CheckpointError, ConfigError
from silr.core.types import ModelOutput
from silr.model.checkpoint import fused_for_inference
from silr.model.network import BACKBONES, build_model, model_config

DEFAULT = ("hrnet_w18_small", [32, 16])


@pytest.fixture(scope="module")
def default_model():
    torch.manual_seed(0)
    return build_model(*DEFAULT)


def test_forward_shapes_at_network_input_size(default_model):
    default_model.eval()
    with torch.no_grad():
        output = default_model(torch.rand(1, 1, anatomy.NETWORK_INPUT_PX, anatomy.NETWORK_INPUT_PX))
    assert isinstance(output, ModelOutput)
    assert output.heatmaps.shape == (1, anatomy.NUM_LANDMARKS, 192, 192)
    assert output.segmentation.shape == (1, anatomy.NUM_CLASSES, 192, 192)


def test_encoder_fuses_the_four_branches_at_stride_4(default_model):
    with torch.no_grad():
        features = default_model.encode(torch.rand(1, 1, 64, 96))
    # hrnet_w18_small branches have 16, 32, 64 and 128 channels.
    assert features.shape == (1, 16 + 32 + 64 + 128, 16, 24)


def test_every_part_gets_a_gradient(default_model):
    default_model.train()
    default_model.zero_grad()
    output = default_model(torch.rand(2, 1, 64, 64))
    (output.heatmaps.mean() + output.segmentation.mean()).backward()
    for part in (
        default_model.encoder.conv1,
        default_model.heatmap_decoder.head,
        default_model.segmentation_decoder.head,
    ):
        assert part.weight.grad is not None and part.weight.grad.abs().sum() > 0


def test_registry_holds_the_documented_backbones():
    assert {"hrnet_w18_small", "hrnet_w18_small_v2", "hrnet_w18", "hrnet_w30", "hrnet_w32"} <= set(
        BACKBONES
    )


def test_unknown_backbone_lists_the_known_ones():
    with pytest.raises(
        ConfigError,
        match=r"model\.backbone: unknown backbone 'resnet50' \(known: hrnet_w18_small, ",
    ):
        build_model("resnet50", [32, 16])


@pytest.mark.parametrize("channels", [[32, 16, 8], [32, 0], "ab"])
def test_decoder_channels_must_be_at_most_two_positive_integers(channels):
    with pytest.raises(
        ConfigError, match=r"model\.decoder_channels must be at most 2 integers >= 1"
    ):
        build_model("hrnet_w18_small", channels)


@pytest.mark.parametrize("channels, stride", [([], 4), ([8], 2), ([8, 4], 1)])
def test_fewer_decoder_steps_give_coarser_heatmaps_and_full_size_segmentation(channels, stride):
    model = build_model("hrnet_w18_small", channels).eval()
    assert model.heatmap_stride == stride
    with torch.no_grad():
        output = model(torch.zeros(2, 1, 64, 96))
    assert output.heatmaps.shape == (2, 14, 64 // stride, 96 // stride)
    assert output.segmentation.shape == (2, 7, 64, 96)


@pytest.mark.parametrize("shape", [(1, 1, 190, 192), (1, 3, 64, 64), (1, 64, 64)])
def test_wrong_input_shape_says_what_is_expected(default_model, shape):
    with pytest.raises(
        ValueError, match=r"expects images of shape \(B, 1, H, W\) with H and W divisible by 32"
    ):
        default_model(torch.rand(*shape))


def test_construction_is_deterministic_under_manual_seed():
    torch.manual_seed(7)
    first = build_model("hrnet_w18_small", [8, 8]).state_dict()
    torch.manual_seed(7)
    second = build_model("hrnet_w18_small", [8, 8]).state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_channels_last_gives_the_same_output(default_model):
    default_model.eval()
    images = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        reference = default_model(images)
        model_cl = default_model.to(memory_format=torch.channels_last)
        output = model_cl(images.contiguous(memory_format=torch.channels_last))
        default_model.to(memory_format=torch.contiguous_format)
    torch.testing.assert_close(output.heatmaps, reference.heatmaps, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(output.segmentation, reference.segmentation, atol=1e-4, rtol=1e-4)


def test_config_rebuilds_the_same_architecture(default_model):
    config = model_config(default_model)
    assert config == {
        "backbone": "hrnet_w18_small",
        "decoder_channels": [32, 16],
        "num_landmarks": 14,
        "num_classes": 7,
        "in_chans": 1,
    }
    rebuilt = build_model(**config)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in default_model.state_dict().items()
    }


def test_missing_init_checkpoint_names_the_path(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(CheckpointError, match=f"model.init_checkpoint: {missing}: no such file"):
        build_model(*DEFAULT, init_checkpoint=str(missing))


def test_init_checkpoint_of_the_whole_model_under_model_state(tmp_path, default_model):
    path = tmp_path / "whole.pt"
    torch.save({"model_state": default_model.state_dict(), "epoch": 3}, path)
    torch.manual_seed(1)
    loaded = build_model(*DEFAULT, init_checkpoint=path)
    assert loaded.init_report == {
        "path": str(path),
        "target": "model",
        "loaded": len(default_model.state_dict()),
        "missing": 0,
        "unexpected": 0,
    }
    assert torch.equal(
        loaded.heatmap_decoder.head.weight, default_model.heatmap_decoder.head.weight
    )


def test_init_checkpoint_of_an_rgb_encoder_folds_the_stem(tmp_path, default_model):
    # An ImageNet-style classification state dict: 3-channel stem plus a classifier head.
    state = {k: v.clone() for k, v in default_model.encoder.state_dict().items()}
    state["conv1.weight"] = torch.rand(64, 3, 3, 3)
    state["classifier.weight"] = torch.rand(1000, 2048)
    path = tmp_path / "imagenet.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    torch.manual_seed(2)
    loaded = build_model(*DEFAULT, init_checkpoint=path)
    report = loaded.init_report
    assert (report["target"], report["missing"], report["unexpected"]) == ("encoder", 0, 1)
    torch.testing.assert_close(
        loaded.encoder.conv1.weight, state["conv1.weight"].sum(dim=1, keepdim=True)
    )
    assert torch.equal(loaded.encoder.conv2.weight, default_model.encoder.conv2.weight)


def test_init_checkpoint_of_another_backbone_is_refused(tmp_path, default_model):
    state = dict(default_model.encoder.state_dict())
    state["conv2.weight"] = torch.rand(64, 64, 5, 5)
    path = tmp_path / "other.pt"
    torch.save(state, path)
    with pytest.raises(
        CheckpointError,
        match=r"conv2\.weight has shape \(64, 64, 5, 5\), expected \(64, 64, 3, 3\)",
    ):
        build_model(*DEFAULT, init_checkpoint=path)
    torch.save({"foo": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="none of its 1 tensors"):
        build_model(*DEFAULT, init_checkpoint=path)


@pytest.mark.slow
@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_every_backbone_builds_and_runs(backbone):
    model = build_model(backbone, [16, 8]).eval()
    with torch.no_grad():
        output = model(torch.rand(1, 1, 64, 64))
    assert output.heatmaps.shape == (1, 14, 64, 64) and output.segmentation.shape == (1, 7, 64, 64)


def test_fused_for_inference_folds_batch_norm_and_computes_the_same(default_model):
    # Non-trivial running statistics, so that a fusion that dropped or misapplied batch norm
    # would change the output (the defaults, mean 0 and variance 1, are almost the identity).
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in default_model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.num_features, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(module.num_features, generator=generator))
    default_model.eval()
    fused = fused_for_inference(default_model)
    assert not fused.training
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.encoder.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in default_model.encoder.modules())
    images = torch.rand(2, 1, 64, 64, generator=generator)
    with torch.no_grad():
        reference, output = default_model(images), fused(images)
    torch.testing.assert_close(output.heatmaps, reference.heatmaps, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(output.segmentation, reference.segmentation, atol=1e-4, rtol=1e-4)
