"""The one inference path: validation, evaluation and predict decode the same way."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from silr import cli
from silr.core.device import DeviceSetup
from silr.data.processed import read_processed
from silr.data.splits import load_folds
from silr.inference import predictor
from silr.model import checkpoint
from silr.stages import train
from silr.training.dataset import frame_set


def test_validation_evaluation_and_predict_agree_on_one_checkpoint(
    trained_tiny_run, tmp_path, one_thread
):
    run = trained_tiny_run
    best = run["models"] / "proposed" / "fold1" / "best.pt"
    model, card = checkpoint.load_model(best)
    codec = card.codec()
    data = read_processed(run["processed"])
    key = sorted(load_folds(run["folds"], data)[1].test)[0]
    image = data.specimens[key[0]].images[key[1]]
    truth = data.specimens[key[0]].landmarks_xy[key[1]]

    evaluated = predictor.predict_frames(model, codec, image[None]).xy[0]

    np.save(tmp_path / "frame.npy", image)
    assert (
        cli.main(
            [
                "predict",
                "--model",
                str(best),
                "--out",
                str(tmp_path / "out"),
                "--device",
                "cpu",
                str(tmp_path / "frame.npy"),
            ]
        )
        == 0
    )
    record = json.loads((tmp_path / "out" / "frame_landmarks.json").read_text())
    predicted = np.array([[row["frame_x"], row["frame_y"]] for row in record["landmarks"]])
    np.testing.assert_allclose(predicted, evaluated, atol=1e-4)

    # Validation reports the mean error only: it must be the mean error of these positions.
    frames = frame_set(data, [key], "cpu")
    scores = train.validation_error(model, frames, codec, 1, DeviceSetup(torch.device("cpu")))
    inside = frames.present[0].numpy()
    expected = np.linalg.norm(evaluated - truth, axis=-1)[inside].mean()
    assert scores["error_px"] == pytest.approx(expected, abs=1e-4)
    # And every position lies in the 180 x 180 frame, whatever the padding held.
    assert (evaluated >= 0).all() and (evaluated <= 179).all()


def test_segmentation_labels_are_the_channel_argmax_ties_included():
    """The fast labels of every decode equal argmax(dim=1), the first class on ties."""
    from silr.model.decode_helpers import segmentation_labels

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 20, 24, generator=generator)
    logits[:, 5] = logits[:, 2]  # ties: the first of the two classes wins
    logits[0, :, 0, 0] = 0.0  # all equal: class 0
    labels = segmentation_labels(logits)
    assert labels.dtype == torch.int64 and torch.equal(labels, logits.argmax(dim=1))
    assert labels[0, 0, 0] == 0 and not (labels == 5).any()
