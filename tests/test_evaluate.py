"""`silr evaluate`: coordinates, table layout, outputs and failures."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from silr.core.anatomy import (
    LANDMARK_BONE_INDEX,
    LANDMARK_NAMES,
    LEFT_FEMUR,
    LEFT_HEMIPELVIS,
    NUM_CLASSES,
    NUM_LANDMARKS,
)
from silr.core.errors import CheckpointError
from silr.core.params import params_from_dict
from silr.core.types import ModelOutput
from silr.evaluation import metrics, results
from silr.inference import predictor
from silr.model import checkpoint
from silr.model.card import ModelCard
from silr.model.codec import HeatmapCodec
from silr.stages import evaluate

PAD = 6  # (192 - 180) / 2


class PeakModel(nn.Module):
    """Heatmaps with one peak per landmark at fixed input pixels; a fixed label map."""

    def __init__(
        self, peaks_xy: np.ndarray, peak_logits: np.ndarray, label_map: np.ndarray
    ) -> None:
        super().__init__()
        self.peaks_xy, self.peak_logits = peaks_xy, peak_logits
        self.label_map = torch.from_numpy(label_map.astype(np.int64))
        self.anchor = nn.Parameter(torch.zeros(()))  # a device for `next(parameters())`

    def forward(self, images: torch.Tensor) -> ModelOutput:
        batch = images.shape[0]
        heat = torch.full((batch, NUM_LANDMARKS, 192, 192), -8.0)
        for index, ((x, y), logit) in enumerate(zip(self.peaks_xy, self.peak_logits)):
            heat[:, index, y, x] = float(logit)
        seg = nn.functional.one_hot(self.label_map, NUM_CLASSES).permute(2, 0, 1).float() * 10.0
        return ModelOutput(heatmaps=heat, segmentation=seg.expand(batch, -1, -1, -1))


def test_predict_frames_maps_input_pixels_to_the_frame_and_scores_visibility():
    peaks = np.array([[20 + 10 * i, 100] for i in range(NUM_LANDMARKS)])
    logits = np.full(NUM_LANDMARKS, 4.0)
    logits[3] = -2.0  # GSN-r: max sigmoid 0.12 < 0.5, predicted absent
    label_map = np.zeros((192, 192), np.uint8)
    label_map[:, :60] = LEFT_FEMUR  # input columns 0..59: FH-l (x = 20) lies in its bone
    label_map[:, 60:] = LEFT_HEMIPELVIS
    model = PeakModel(peaks, logits, label_map)
    images = np.random.default_rng(0).uniform(0, 1, (3, 180, 180)).astype(np.float32)
    predicted = predictor.predict_frames(
        model, HeatmapCodec(frame=(180, 180)), images, batch_size=2
    )

    assert predicted.xy.shape == (3, NUM_LANDMARKS, 2)
    np.testing.assert_array_equal(predicted.xy[2], peaks - PAD)  # frame = input - pad offset
    assert predicted.present[0].tolist() == [i != 3 for i in range(NUM_LANDMARKS)]
    assert predicted.score[0, 0] == pytest.approx(1 / (1 + math.exp(-4.0)))
    # v_hat: 1 inside its bone, 0.5 present elsewhere, 0 absent.
    expected = []
    for index, (x, _) in enumerate(peaks):
        if index == 3:
            expected.append(0.0)
        else:
            expected.append(1.0 if label_map[100, x] == LANDMARK_BONE_INDEX[index] else 0.5)
    assert predicted.visibility_hat[1].tolist() == expected
    # FH-l (x 20) in the left femur; FH-r (30) and GSN-l (40) in the wrong bone; GSN-r absent;
    # IOF-l (60) in the left hemipelvis.
    assert expected[:5] == [1.0, 0.5, 0.5, 0.0, 1.0]
    assert predicted.labels.shape == (3, 180, 180) and predicted.labels.dtype == np.uint8
    np.testing.assert_array_equal(predicted.labels[0], label_map[PAD : PAD + 180, PAD : PAD + 180])


def test_predictions_table_layout_and_errors():
    gt = np.zeros((2, NUM_LANDMARKS, 2)) + 50.0
    gt[1, 0] = (-3.0, 50.0)  # FH-l of frame 7 outside the frame
    predicted = predictor.FramePredictions(
        xy=gt + np.array([3.0, 4.0]),
        present=np.ones((2, NUM_LANDMARKS), bool),
        score=np.full((2, NUM_LANDMARKS), 1 / 3),
        visibility_hat=np.ones((2, NUM_LANDMARKS)),
        labels=np.zeros((2, 180, 180), np.uint8),
    )
    table = results.predictions_table(
        loss="mse",
        fold=4,
        specimens=[4, 4],
        frame_indices=[2, 7],
        gt_xy=gt,
        predicted=predicted,
        frame_size=(180, 180),
    )
    assert tuple(table.columns) == metrics.PREDICTION_COLUMNS
    assert len(table) == 2 * NUM_LANDMARKS
    assert table["landmark"].tolist()[:NUM_LANDMARKS] == list(LANDMARK_NAMES)
    assert table["frame"].tolist() == [2] * NUM_LANDMARKS + [7] * NUM_LANDMARKS
    outside = table[(table["frame"] == 7) & (table["landmark"] == "FH-l")].iloc[0]
    assert outside["gt_in_frame"] == 0 and math.isnan(outside["error_px"])
    assert table.loc[table["gt_in_frame"] == 1, "error_px"].eq(5.0).all()
    assert table["score"].iloc[0] == 0.333333  # rounded to 6 decimals


def test_csv_and_label_maps_round_trip(tmp_path):
    table = pd.DataFrame(
        [
            {
                "loss": "ncc",
                "fold": 2,
                "seed": 0,
                "specimen": 2,
                "frame": 0,
                "landmark": "FH-l",
                "gt_x": 1.5,
                "gt_y": 2.0,
                "gt_in_frame": 0,
                "pred_x": 3.0,
                "pred_y": 4.0,
                "pred_present": 1,
                "score": 0.5,
                "visibility_hat": 0.5,
                "error_px": np.nan,
                "threshold_score": 0.5,
                "template_ncc": 0.25,
                "presence_prob": np.nan,
                "shape_present": np.nan,
                "bone_x": np.nan,
                "bone_y": np.nan,
                "error_bone_px": np.nan,
                "pred_on_bone": np.nan,
                "gt_on_bone": np.nan,
            }
        ]
    )
    path = tmp_path / "p.csv"
    results.write_predictions_csv(path, table)
    lines = path.read_text().splitlines()
    assert lines[0] == ",".join(metrics.PREDICTION_COLUMNS)
    # error_px empty for out-of-frame ground truth, as every value that does not apply
    assert lines[1].endswith(",0.500000,0.500000,,0.500000,0.250000,,,,,,,")
    assert results.read_predictions_csv(path).iloc[0]["landmark"] == "FH-l"

    labels = np.arange(2 * 180 * 180).reshape(2, 180, 180).astype(np.uint8) % 7
    npz = tmp_path / "seg.npz"
    results.write_label_maps(npz, specimens=[2, 2], frame_indices=[0, 5], labels=labels)
    first = npz.read_bytes()
    results.write_label_maps(npz, specimens=[2, 2], frame_indices=[0, 5], labels=labels)
    assert npz.read_bytes() == first  # byte-stable
    maps = results.read_label_maps(npz)
    assert maps["frame"].tolist() == [0, 5]
    np.testing.assert_array_equal(maps["labels"], labels)


def _save_tiny_model(path, params, loss: str, fold: int) -> None:
    torch.manual_seed(0)
    card = ModelCard.for_run(
        params,
        loss_name=loss,
        fold=fold,
        data_hash="test",
        params_hash="test",
        val_score_px=12.5,
        epoch=3,
    )
    model = card.build_network()
    checkpoint.save_checkpoint(path, model, card)


@pytest.fixture
def tiny_params():
    return params_from_dict(
        {
            "model": {"backbone": "hrnet_w18_small", "decoder_channels": [8, 8]},
            "evaluate": {"success_mm": [2.0, 100.0]},
        }
    )


def test_run_writes_predictions_metrics_and_label_maps(tmp_path, tiny_data, tiny_params):
    models = tmp_path / "models"
    _save_tiny_model(models / "proposed" / "fold2" / "best.pt", tiny_params, "proposed", 2)
    paths = evaluate.run(
        tiny_params,
        loss="proposed",
        fold=2,
        data_path=tiny_data["processed"],
        folds_path=tiny_data["folds"],
        models_dir=models,
        out_dir=tmp_path / "metrics",
        device="cpu",
        batch_size=3,
    )
    table = results.read_predictions_csv(paths.predictions)
    assert len(table) == 4 * NUM_LANDMARKS  # the 4 frames of specimen 2
    assert (
        set(table["specimen"]) == {2}
        and set(table["loss"]) == {"proposed"}
        and set(table["fold"]) == {2}
    )
    in_frame = table["gt_in_frame"] == 1
    assert (
        table.loc[in_frame, "error_px"].notna().all()
        and table.loc[~in_frame, "error_px"].isna().all()
    )
    assert (~in_frame).sum() >= 1  # frame 0 of the tiny data pushes a landmark out

    result = json.loads(paths.fold_metrics.read_text())
    assert result["counts"] == {
        "frames": 4,
        "landmarks": 56,
        "landmarks_in_frame": int(in_frame.sum()),
    }
    assert result["error"]["mean_px"] == pytest.approx(
        table.loc[in_frame, "error_px"].mean(), abs=1e-6
    )
    assert result["error"]["mean_mm"] == pytest.approx(result["error"]["mean_px"] * 1.552, abs=1e-5)
    assert set(result["success_rate"]) == {"within_2mm", "within_100mm"}
    assert sum(result["presence"].values()) == 56
    assert set(result["dice"]) == {
        "left hemipelvis",
        "right hemipelvis",
        "vertebrae",
        "upper sacrum",
        "left femur",
        "right femur",
    }
    assert result["model"] == {"epoch": 3, "val_score_px": 12.5}
    maps = results.read_label_maps(paths.segmentation)
    assert maps["labels"].shape == (4, 180, 180) and maps["frame"].tolist() == [0, 1, 2, 3]


def test_missing_checkpoint_tells_how_to_train(tmp_path, tiny_data, tiny_params):
    with pytest.raises(CheckpointError, match=r"run|dvc repro train@ncc-3") as info:
        evaluate.run(
            tiny_params,
            loss="ncc",
            fold=3,
            data_path=tiny_data["processed"],
            folds_path=tiny_data["folds"],
            models_dir=tmp_path,
            out_dir=tmp_path / "m",
        )
    assert "`dvc repro train@ncc-3`" in str(info.value) and "\n" not in str(info.value)


def test_checkpoint_of_another_fold_is_refused(tmp_path, tiny_data, tiny_params):
    _save_tiny_model(tmp_path / "mse" / "fold1" / "best.pt", tiny_params, "mse", 2)
    with pytest.raises(CheckpointError, match="fold 2, expected loss 'mse' fold 1"):
        evaluate.run(
            tiny_params,
            loss="mse",
            fold=1,
            data_path=tiny_data["processed"],
            folds_path=tiny_data["folds"],
            models_dir=tmp_path,
            out_dir=tmp_path / "m",
            device="cpu",
        )
