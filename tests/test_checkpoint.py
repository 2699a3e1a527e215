"""Checkpoints and model cards (silr.model.checkpoint): round trip and every kind of bad file."""

from __future__ import annotations

import dataclasses
import pickle

import pytest
import torch

from silr.core.anatomy import FRAME_SIZE_PX, LANDMARK_NAMES, NETWORK_INPUT_PX
from silr.core.errors import CheckpointError
from silr.core.params import params_from_dict
from silr.model import checkpoint
from silr.model.card import ModelCard, NetworkSpec
from silr.model.codec import HeatmapCodec
from silr.model.network import build_model
from silr.model.run_config import params_hash_of

PARAMS = params_from_dict(
    {"model": {"decoder_channels": [4, 4]}, "heatmap": {"sigma": 3.0, "refine": "parabola"}}
)


def tiny_card(**changes):
    card = ModelCard.for_run(
        PARAMS,
        loss_name="proposed",
        fold=2,
        data_hash="d" * 16,
        params_hash=params_hash_of(PARAMS, "proposed"),
        val_score_px=4.25,
        epoch=7,
    )
    return dataclasses.replace(card, **changes)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_model("hrnet_w18_small", (4, 4))


def test_round_trip_restores_weights_card_and_codec(tmp_path, tiny_model):
    path = tmp_path / "models" / "best.pt"
    checkpoint.save_checkpoint(path, tiny_model, tiny_card())
    assert not list(path.parent.glob(".silr-tmp-*"))  # written atomically, nothing left over
    model, typed = checkpoint.load_model(path)
    assert not model.training
    for (name, mine), theirs in zip(tiny_model.state_dict().items(), model.state_dict().values()):
        assert torch.equal(mine, theirs), name
    assert typed == tiny_card()  # the one reader gives back the card that was written
    card = typed.to_dict()
    assert list(card) == [
        "format",
        "format_version",
        "silr_version",
        "landmark_names",
        "label_names",
        "model",
        "input_size",
        "frame_size",
        "pad_offset",
        "preprocessing",
        "heatmap",
        "loss",
        "fold",
        "data_source",
        "params",
        "params_hash",
        "data_hash",
        "val_score_px",
        "epoch",
    ]
    assert card["landmark_names"] == list(LANDMARK_NAMES)
    assert card["label_names"][0] == "background" and len(card["label_names"]) == 7
    assert card["model"] == {
        "backbone": "hrnet_w18_small",
        "decoder_channels": [4, 4],
        "num_landmarks": 14,
        "num_classes": 7,
    }
    assert (card["input_size"], card["frame_size"], card["pad_offset"]) == (192, 180, 6)
    assert card["preprocessing"]["crop"] == 50 and card["preprocessing"]["downsample"] == 8
    assert card["loss"]["weights"] == {"dice_ce": 1.0, "kl": 0.1, "visibility": 10.0}
    assert (card["fold"], card["val_score_px"], card["epoch"]) == (2, 4.25, 7)
    assert card["params"]["train"]["epochs"] == PARAMS.train.epochs
    assert card["format"] == checkpoint.CHECKPOINT_FORMAT
    codec = typed.codec()
    assert isinstance(codec, HeatmapCodec)
    assert (codec.size, codec.sigma, codec.refine) == (
        (NETWORK_INPUT_PX, NETWORK_INPUT_PX),
        3.0,
        "parabola",
    )
    assert (codec.stride, codec.kind, codec.frame) == (1, "logit", (FRAME_SIZE_PX, FRAME_SIZE_PX))


def test_equal_checkpoints_are_equal_bytes(tmp_path, tiny_model):
    # DVC compares outputs by hash: a rerun that trains the same weights must write the same
    # file, whatever temporary name the atomic write used on the way.
    first, second = tmp_path / "a" / "best.pt", tmp_path / "b" / "best.pt"
    checkpoint.save_checkpoint(first, tiny_model, tiny_card())
    checkpoint.save_checkpoint(second, tiny_model, tiny_card())
    assert first.read_bytes() == second.read_bytes()
    checkpoint.save_checkpoint(first, tiny_model, tiny_card())  # overwrite in place
    assert first.read_bytes() == second.read_bytes()


def test_params_hash_follows_only_the_run_sections():
    base = params_hash_of(PARAMS, "proposed")
    run = {"model": {"decoder_channels": [4, 4]}, "heatmap": {"sigma": 3.0, "refine": "parabola"}}
    other_loss = params_from_dict(
        {
            **run,
            "losses": {
                "proposed": {"dice_ce": 1.0, "kl": 0.1, "visibility": 10.0},
                "mse": {"mse": 2.0},
                "ncc": {"ncc": 1.0},
            },
            "study": {"losses": ["proposed", "mse", "ncc"]},
        }
    )
    assert params_hash_of(other_loss, "proposed") == base  # another loss's weights
    other_eval = params_from_dict({**run, "evaluate": {"success_mm": [1.0]}})
    assert params_hash_of(other_eval, "proposed") == base
    other_lr = params_from_dict(
        {
            "model": {"decoder_channels": [4, 4]},
            "heatmap": {"sigma": 3.0, "refine": "parabola"},
            "train": {"lr": 0.5},
        }
    )
    assert params_hash_of(other_lr, "proposed") != base


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="absent.pt: no such checkpoint file"):
        checkpoint.load_model(tmp_path / "absent.pt")


def test_truncated_file(tmp_path, tiny_model):
    path = tmp_path / "best.pt"
    checkpoint.save_checkpoint(path, tiny_model, tiny_card())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="best.pt: not a readable silr checkpoint"):
        checkpoint.load_model(path)


def test_junk_and_foreign_pickles(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00 this is not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt: not a readable silr checkpoint"):
        checkpoint.load_model(junk)
    # A pickle that would run code on load is refused (weights_only), never executed.
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps(print, protocol=2))
    with pytest.raises(CheckpointError, match="evil.pt: not a readable silr checkpoint"):
        checkpoint.load_model(evil)


def test_torch_file_that_is_not_a_silr_checkpoint(tmp_path, tiny_model):
    plain = tmp_path / "plain.pt"
    torch.save(tiny_model.state_dict(), plain)
    with pytest.raises(CheckpointError, match="plain.pt: not a silr checkpoint .*found None"):
        checkpoint.load_model(plain)
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(CheckpointError, match="tensor.pt: not a silr checkpoint .*found 'Tensor'"):
        checkpoint.load_model(tensor)


def test_newer_format_version(tmp_path, tiny_model):
    path = tmp_path / "future.pt"
    checkpoint.save_checkpoint(path, tiny_model, tiny_card())
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = 99
    torch.save(payload, path)
    with pytest.raises(
        CheckpointError, match="future.pt: checkpoint format version 99 is not supported"
    ):
        checkpoint.load_model(path)


def test_weights_that_do_not_fit_the_card(tmp_path, tiny_model):
    path = tmp_path / "mismatch.pt"
    checkpoint.save_checkpoint(
        path, tiny_model, tiny_card(network=NetworkSpec("hrnet_w18_small", (8, 4), 14, 7))
    )
    with pytest.raises(
        CheckpointError, match="mismatch.pt: weights do not fit the network its card describes"
    ):
        checkpoint.load_model(path)


def test_card_with_unknown_backbone_or_missing_keys(tmp_path, tiny_model):
    path = tmp_path / "odd.pt"
    checkpoint.save_checkpoint(
        path, tiny_model, tiny_card(network=NetworkSpec("resnet_nope", (4, 4), 14, 7))
    )
    with pytest.raises(
        CheckpointError, match="odd.pt: cannot build the network its card describes.*resnet_nope"
    ):
        checkpoint.load_model(path)
    payload = torch.load(path, weights_only=True)
    del payload["card"]["heatmap"]
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="odd.pt: model card lacks heatmap"):
        checkpoint.load_model(path)


def test_extra_entries_and_state_dicts(tmp_path, tiny_model):
    path = tmp_path / "last.pt"
    state = checkpoint.model_state_cpu(tiny_model)
    checkpoint.save_checkpoint(
        path, state, tiny_card(), resume={"epoch": 3, "history": [{"a": 1.0}]}
    )
    payload = checkpoint.read_checkpoint(path)
    assert payload["resume"] == {"epoch": 3, "history": [{"a": 1.0}]}
    with pytest.raises(ValueError, match="may not be named"):
        checkpoint.save_checkpoint(path, state, tiny_card(), model_state={})


def test_one_reader_names_the_file_and_the_unusable_field(tmp_path, tiny_model):
    path = tmp_path / "odd.pt"
    checkpoint.save_checkpoint(path, tiny_model, tiny_card())
    for field, value, message in (
        (
            "landmark_names",
            ["FH-l", "nose"],
            r"odd.pt: model card names unknown landmarks \['nose'\]",
        ),
        ("label_names", ["background"], "odd.pt: model card has 1 labels, expected 7"),
        ("preprocessing", {"crop": 50}, "odd.pt: model card field 'preprocessing' is unusable"),
        (
            "heatmap",
            {"sigma": 2.0, "presence_threshold": 0.5, "stride": 3},
            "odd.pt: model card describes a heatmap codec that cannot exist",
        ),
        ("frame_size", "wide", "odd.pt: model card field 'frame_size' is unusable"),
    ):
        payload = torch.load(path, weights_only=True)
        payload["card"][field] = value
        torch.save(payload, tmp_path / "changed.pt")
        with pytest.raises(CheckpointError, match=message.replace("odd.pt", "changed.pt")):
            checkpoint.load_model(tmp_path / "changed.pt")


def test_cards_before_strides_and_kinds_decode_at_stride_1_as_logits(tmp_path, tiny_model):
    path = tmp_path / "old.pt"
    checkpoint.save_checkpoint(path, tiny_model, tiny_card())
    payload = torch.load(path, weights_only=True)
    for key in ("stride", "kind", "refine"):
        del payload["card"]["heatmap"][key]
    torch.save(payload, path)
    card = checkpoint.read_checkpoint(path)["card"]
    assert (card.heatmap.stride, card.heatmap.kind, card.heatmap.refine) == (1, "logit", "none")


def test_a_loss_setting_a_card_lacks_reads_as_the_params_default():
    from silr.core.params import LossesParams

    stored = tiny_card().to_dict()
    for key in ("visibility_mode", "detach_segmentation", "kl_reduction", "options"):
        del stored["loss"][key]
    loss = ModelCard.from_dict(stored).loss
    defaults = LossesParams()
    assert (loss.visibility_mode, loss.detach_segmentation, loss.kl_reduction) == (
        defaults.visibility_mode,
        defaults.detach_segmentation,
        defaults.kl_reduction,
    )
    assert loss.options == {"mse_foreground_weight": 0.0}  # cards before per-loss options
