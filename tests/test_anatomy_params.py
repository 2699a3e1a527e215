import pytest

from silr.core import anatomy
from silr.core.errors import ConfigError
from silr.core.params import DataParams, Params, load_params, params_from_dict, to_dict


def test_landmark_bone_map_follows_the_format_notes():
    assert len(anatomy.LANDMARK_NAMES) == 14 == len(set(anatomy.LANDMARK_NAMES))
    assert anatomy.LANDMARK_BONE["FH-l"] == anatomy.LEFT_FEMUR == 5
    assert anatomy.LANDMARK_BONE["FH-r"] == anatomy.RIGHT_FEMUR == 6
    assert {
        anatomy.LANDMARK_BONE[n] for n in anatomy.LANDMARK_NAMES if n.endswith("-l") and n != "FH-l"
    } == {1}
    assert {
        anatomy.LANDMARK_BONE[n] for n in anatomy.LANDMARK_NAMES if n.endswith("-r") and n != "FH-r"
    } == {2}
    assert anatomy.NUM_CLASSES == 7
    assert anatomy.SPECIMEN_IDS[6] == "17-1905"


def test_committed_params_yaml_validates():
    params = load_params("params.yaml")
    assert params.loss_weights("proposed") == {"dice_ce": 1.0, "kl": 0.1, "visibility": 10.0}
    assert params.study.losses == ("proposed", "proposed_plus", "mse", "ncc")


@pytest.mark.parametrize(
    "raw, key",
    [
        ({"train": {"batch_size": 0}}, "train.batch_size"),
        ({"train": {"epochs": "ten"}}, "train.epochs"),
        ({"train": {"bogus": 1}}, "train: unknown key"),
        ({"losses": {"proposed": {"kl": -1.0}}}, "losses.proposed.kl"),
        ({"losses": {"proposed": {"kl": "x"}}}, "losses.proposed.kl"),
        ({"losses": {"proposed": {}}}, "losses.proposed"),
        (
            {"losses": {"proposed": {"kl": True}}},
            "losses.proposed.kl must be a finite number, got True",
        ),
        (
            {"losses": {"proposed": {"kl": float("inf")}}},
            "losses.proposed.kl must be a finite number, got inf",
        ),
        (
            {"losses": {"proposed": {"kl": 0.0, "mse": 0}}},
            "losses.proposed: every term weight is 0",
        ),
        ({"study": {"losses": ["nope"]}}, "study.losses"),
        ({"augment": {"zoom": [1.3, 1.0]}}, "augment.zoom"),
    ],
)
def test_bad_params_name_the_key(raw, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        params_from_dict(raw)


def test_missing_loss_names_the_key():
    with pytest.raises(ConfigError, match=r"losses\.kl_only"):
        Params().loss_weights("kl_only")


def test_dataclass_defaults_are_the_committed_params_yaml():
    # One set of defaults: a key left out of params.yaml means the value params.yaml documents.
    assert to_dict(load_params("params.yaml")) == to_dict(Params())


def test_the_robustness_section_is_read_with_the_others():
    from silr.core.robustness_params import RobustnessParams

    assert load_params("params.yaml").robustness == RobustnessParams()
    with pytest.raises(ConfigError, match=r"^robustness\.seed must be >= 0, got -1$"):
        params_from_dict({"robustness": {"seed": -1}})


def test_each_section_builds_from_its_own_mapping():
    assert DataParams.from_dict(None) == DataParams()
    assert DataParams.from_dict({"crop": 10}, "data").crop == 10
    with pytest.raises(ConfigError, match=r"^data\.downsample must be >= 1, got 0$"):
        DataParams.from_dict({"downsample": 0})
    with pytest.raises(ConfigError, match=r"^data: unknown key\(s\) bogus"):
        DataParams.from_dict({"bogus": 1})


def test_ingest_flags_are_checked_by_the_data_section(tmp_path):
    from silr.stages import ingest

    for flags, message in (
        ({"factor": 0, "crop": 50, "i0": 1.0}, "data.downsample must be >= 1, got 0"),
        ({"factor": 8, "crop": -1, "i0": 1.0}, "data.crop must be >= 0, got -1"),
        ({"factor": 8, "crop": 50, "i0": float("nan")}, "data.i0 must be a finite number"),
    ):
        with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
            ingest.run(tmp_path / "missing.h5", tmp_path / "out.h5", **flags)
    assert not (tmp_path / "out.h5").exists()
