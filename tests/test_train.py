"""`silr train` on the tiny data set: outputs, model card, dvclive, determinism, bad arguments."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import resume_state, train_argv, write_tiny_run
from silr import cli
from silr.core.anatomy import NUM_LANDMARKS
from silr.core.device import DeviceSetup, select_device
from silr.core.errors import ConfigError
from silr.core.params import load_params
from silr.core.types import ModelOutput
from silr.model import checkpoint
from silr.model.codec import HeatmapCodec
from silr.model.run_config import params_hash_of
from silr.stages.train import validation_error
from silr.training.dataset import FrameSet

pytestmark = pytest.mark.usefixtures("one_thread")


def read_tsv(path):
    lines = path.read_text().splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"))) for line in lines[1:]]


def test_train_writes_checkpoints_card_and_logs(trained_tiny_run):
    run = trained_tiny_run
    best = run["models"] / "proposed" / "fold1" / "best.pt"
    last = resume_state(run)
    model, card = checkpoint.load_model(best)
    assert card.loss.name == "proposed" and card.fold == 1
    assert card.network.decoder_channels == (4, 4)
    resume = checkpoint.read_checkpoint(last)["resume"]
    history = resume["history"]
    assert [entry["epoch"] for entry in history] == [1, 2, 3] and resume["finished"]
    scores = [entry["val/error_px"] for entry in history]
    assert card.val_score_px == min(scores)
    assert card.epoch == history[scores.index(min(scores))]["epoch"]
    assert card.params_hash == params_hash_of(load_params(run["params"]), "proposed")
    with torch.no_grad():
        output = model(torch.zeros(1, 1, 192, 192))
    assert output.heatmaps.shape == (1, NUM_LANDMARKS, 192, 192)

    live = run["live"] / "proposed" / "fold1"
    loss_rows = read_tsv(live / "plots" / "metrics" / "train" / "loss.tsv")
    assert [int(row["step"]) for row in loss_rows] == [0, 1, 2]
    assert float(loss_rows[0]["loss"]) == pytest.approx(history[0]["train/loss"])
    for term in ("dice_ce", "kl", "visibility"):
        assert (live / "plots" / "metrics" / "train" / f"{term}.tsv").exists()
    assert len(read_tsv(live / "plots" / "metrics" / "val" / "error_px.tsv")) == 3
    assert len(read_tsv(live / "plots" / "metrics" / "lr.tsv")) == 3
    summary = json.loads((live / "metrics.json").read_text())
    assert summary["best"]["val_error_px"] == pytest.approx(min(scores))
    assert not list(run["root"].rglob("dvc.yaml"))  # dvclive must not write pipeline files
    assert not list(run["root"].rglob(".silr-tmp-*"))


def test_same_params_on_the_cpu_give_the_same_weights(trained_tiny_run, tmp_path, capsys):
    run = trained_tiny_run
    best = run["models"] / "proposed" / "fold1" / "best.pt"
    card = checkpoint.read_checkpoint(best)["card"]
    again = dict(
        run,
        models=tmp_path / "again" / "models",
        live=tmp_path / "again" / "dvclive",
        resume=tmp_path / "again" / "resume",
    )
    assert cli.main(train_argv(again)) == 0
    err = capsys.readouterr().err
    assert "proposed fold 1 on cpu" in err and "best validation error" in err
    _, card_again = checkpoint.load_model(again["models"] / "proposed" / "fold1" / "best.pt")
    state = checkpoint.read_checkpoint(best)["model_state"]
    again_best = again["models"] / "proposed" / "fold1" / "best.pt"
    state_again = checkpoint.read_checkpoint(again_best)["model_state"]
    assert all(torch.equal(state[key], state_again[key]) for key in state)
    assert card_again.val_score_px == card.val_score_px


@pytest.mark.parametrize(
    "argv_change, params_change, message",
    [
        (("--loss", "huber"), None, "losses.huber: no such loss in params.yaml"),
        (("--fold", "9"), None, "folds.json: no fold 9 (folds: 1, 2, 3)"),
        (
            None,
            {
                "losses": {
                    "proposed": {"dice_ce": 1.0, "kl_div": 0.1},
                    "mse": {"mse": 1.0},
                    "ncc": {"ncc": 1.0},
                }
            },
            "losses.proposed: unknown term 'kl_div'",
        ),
        (
            None,
            {"model": {"backbone": "hrnet_w999"}},
            "model.backbone: unknown backbone 'hrnet_w999'",
        ),
        (None, {"train": {"batch_size": 0}}, "train.batch_size must be >= 1, got 0"),
        (None, {"train": {"epochs": 0}}, "train.epochs must be >= 1, got 0"),
    ],
)
def test_bad_arguments_fail_in_one_line_and_write_nothing(
    tmp_path, capsys, argv_change, params_change, message
):
    run = write_tiny_run(tmp_path, params=params_change)
    argv = train_argv(run)
    if argv_change:
        flag, value = argv_change
        argv[argv.index(flag) + 1] = value
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not run["models"].exists() and not run["live"].exists()


def test_missing_data_file(tmp_path, capsys):
    run = write_tiny_run(tmp_path)
    run["processed"].unlink()
    assert cli.main(train_argv(run)) == 2
    assert "ds_8x.h5" in capsys.readouterr().err
    assert not run["models"].exists()


class PeakModel(torch.nn.Module):
    """Heatmap logits with a single peak at given input-pixel positions."""

    def __init__(self, xy: torch.Tensor) -> None:
        super().__init__()
        self.xy = xy  # (N, L, 2)
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, images):
        n = images.shape[0]
        heat = torch.full((n, NUM_LANDMARKS, 192, 192), -10.0)
        for b in range(n):
            for k in range(NUM_LANDMARKS):
                x, y = (int(v) for v in self.xy[b, k])
                heat[b, k, y, x] = 10.0
        return ModelOutput(heat, torch.zeros(n, 7, 192, 192))


def test_validation_error_is_the_mean_distance_over_in_frame_landmarks():
    truth = torch.full((2, NUM_LANDMARKS, 2), 50.0)
    present = torch.ones(2, NUM_LANDMARKS, dtype=torch.bool)
    present[1, :4] = False  # absent landmarks do not count, wherever they are predicted
    predicted = truth + torch.tensor([3.0, 4.0])  # 5 px off everywhere...
    predicted[1, :4] = 150.0  # ...except far off where the truth is absent
    frames = FrameSet(
        torch.zeros(2, 1, 192, 192),
        torch.zeros(2, 192, 192, dtype=torch.uint8),
        truth,
        present,
        [(1, 0), (1, 1)],
    )
    scores = validation_error(
        PeakModel(predicted),
        frames,
        HeatmapCodec(),
        batch_size=1,
        runtime=DeviceSetup(torch.device("cpu")),
    )
    assert scores["error_px"] == pytest.approx(5.0)
    # Every landmark is predicted present (peak sigmoid ~ 1): right for 24 of 28.
    assert scores["presence_accuracy"] == pytest.approx(24 / 28)


def test_device_selection():
    assert select_device("cpu").type == "cpu"
    if torch.cuda.is_available():
        expected = "cuda"
    else:
        expected = "mps" if torch.backends.mps.is_available() else "cpu"
    assert select_device("auto").type == expected
    if not torch.cuda.is_available():
        message = "train.device is 'cuda' but this machine has no usable CUDA"
        with pytest.raises(ConfigError, match=message):
            select_device("cuda")
