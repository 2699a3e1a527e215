"""Stage `evaluate`: predict every test frame of one fold with its best model and score it.

  silr evaluate --loss proposed --fold 1

Reads `models/<loss>/fold<k>/best.pt`, the processed data and the folds file, and writes
- `metrics/predictions/<loss>/fold<k>.csv`: one row per (frame, landmark) in the 180x180
  frame: loss, fold, specimen, frame, landmark, gt_x, gt_y, gt_in_frame, pred_x, pred_y,
  pred_present, score, visibility_hat, error_px (empty where the ground truth lies
  outside the frame). The predicted location is the heatmap argmax whether or not the
  landmark is predicted present; presence is reported separately.
- `metrics/folds/<loss>/fold<k>.json`: mean / median error in px and mm, per-landmark
  mean error, success rates, presence counts, discrete-visibility accuracy, Dice per
  bone and counts (conventions in `silr.metrics`).
- `metrics/segmentation/<loss>/fold<k>.npz`: the predicted label maps (uint8, frame
  size) of the test frames, with their specimen and frame numbers, for the report's
  segmentation figure and for recomputing the Dice values.
"""

from __future__ import annotations

import argparse
import io as _io
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from silr import coords, metrics
from silr.inference import FramePredictions, predict_frames
from silr.anatomy import LANDMARK_NAMES
from silr.device import select_device
from silr.errors import CheckpointError, ConfigError, DataError
from silr.io import ensure_writable, write_json, write_with
from silr.params import DEFAULT_PARAMS_FILE, Params, load_params

DEFAULT_FOLDS = "data/folds.json"
DEFAULT_MODELS = "models"
DEFAULT_OUT = "metrics"
# Fixed zip member time: the label-map archive is byte-identical for identical predictions.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class OutputPaths:
    predictions: Path
    fold_metrics: Path
    segmentation: Path


def output_paths(out_dir: str | Path, loss: str, fold: int) -> OutputPaths:
    """Where `silr evaluate --loss loss --fold fold` writes (the report reads the same names)."""
    out_dir = Path(out_dir)
    name = f"fold{fold}"
    return OutputPaths(predictions=out_dir / "predictions" / loss / f"{name}.csv",
                       fold_metrics=out_dir / "folds" / loss / f"{name}.json",
                       segmentation=out_dir / "segmentation" / loss / f"{name}.npz")


def checkpoint_path(models_dir: str | Path, loss: str, fold: int) -> Path:
    return Path(models_dir) / loss / f"fold{fold}" / "best.pt"


# ------------------------------------------------------------------ prediction

def predictions_table(*, loss: str, fold: int, specimens: Sequence[int], frame_indices: Sequence[int],
                      gt_xy: np.ndarray, predicted: FramePredictions,
                      frame_size: tuple[int, int]) -> pd.DataFrame:
    """The predictions CSV's rows for N frames: frame-major, landmarks in canonical order.

    Floats are rounded to `metrics.DECIMALS` here, so the fold metrics are computed from
    exactly the numbers the CSV holds.
    """
    gt_xy = np.asarray(gt_xy, dtype=np.float64)
    count, num_landmarks = gt_xy.shape[:2]
    if num_landmarks != len(LANDMARK_NAMES):
        raise ValueError(f"expected {len(LANDMARK_NAMES)} landmarks per frame, got {num_landmarks}")
    if len(specimens) != count or len(frame_indices) != count or predicted.xy.shape != gt_xy.shape:
        raise ValueError(f"{count} ground-truth frames but {len(specimens)} specimens, {len(frame_indices)} "
                         f"frame indices and predictions of shape {predicted.xy.shape}")
    width, height = frame_size
    gt_in_frame = coords.in_frame(gt_xy, width, height)
    errors = metrics.landmark_errors(gt_xy, predicted.xy, gt_in_frame)
    repeat = lambda values: np.repeat(np.asarray(values), num_landmarks)  # noqa: E731 - per-row expansion
    table = pd.DataFrame({
        "loss": loss,
        "fold": int(fold),
        "specimen": repeat(specimens).astype(int),
        "frame": repeat(frame_indices).astype(int),
        "landmark": np.tile(np.array(LANDMARK_NAMES), count),
        "gt_x": gt_xy[..., 0].ravel(),
        "gt_y": gt_xy[..., 1].ravel(),
        "gt_in_frame": gt_in_frame.ravel().astype(int),
        "pred_x": predicted.xy[..., 0].ravel(),
        "pred_y": predicted.xy[..., 1].ravel(),
        "pred_present": predicted.present.ravel().astype(int),
        "score": predicted.score.ravel(),
        "visibility_hat": predicted.visibility_hat.ravel(),
        "error_px": errors.ravel(),
    }, columns=list(metrics.PREDICTION_COLUMNS))
    float_columns = ["gt_x", "gt_y", "pred_x", "pred_y", "score", "visibility_hat", "error_px"]
    table[float_columns] = table[float_columns].round(metrics.DECIMALS) + 0.0  # + 0.0: no "-0.0"
    return table


# ------------------------------------------------------------------ writing

def write_predictions_csv(path: str | Path, table: pd.DataFrame) -> None:
    metrics.check_predictions(table, str(path))
    write_with(path, lambda tmp: table.to_csv(tmp, index=False, float_format=f"%.{metrics.DECIMALS}f",
                                              lineterminator="\n"))


def read_predictions_csv(path: str | Path) -> pd.DataFrame:
    """A predictions CSV as written by `write_predictions_csv`; DataError if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such predictions file")
    try:
        table = pd.read_csv(path, dtype={"loss": str, "landmark": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable predictions CSV ({type(exc).__name__})") from None
    try:
        metrics.check_predictions(table, str(path))
    except ValueError as exc:
        raise DataError(str(exc)) from None
    return table


def write_label_maps(path: str | Path, *, specimens: Sequence[int], frame_indices: Sequence[int],
                     labels: np.ndarray) -> None:
    """Predicted label maps as an .npz (deflated, fixed member times: byte-stable)."""
    arrays = {"specimen": np.asarray(specimens, dtype=np.int64), "frame": np.asarray(frame_indices, dtype=np.int64),
              "labels": np.asarray(labels, dtype=np.uint8)}

    def writer(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name, array in arrays.items():
                buffer = _io.BytesIO()
                np.lib.format.write_array(buffer, array, allow_pickle=False)
                info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, buffer.getvalue())

    write_with(path, writer)


def read_label_maps(path: str | Path) -> dict[str, np.ndarray]:
    """{'specimen', 'frame', 'labels'} from `write_label_maps`; DataError if missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such label-map file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in ("specimen", "frame", "labels")}
    except (KeyError, ValueError, OSError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a label-map archive with specimen, frame and labels "
                        f"({type(exc).__name__})") from None
    return arrays


# ------------------------------------------------------------------ the stage

def _check_card(path: Path, card: dict, loss: str, fold: int) -> None:
    # A best.pt copied between folders would silently score the wrong model.
    trained_loss = (card.get("loss") or {}).get("name")
    if trained_loss not in (None, loss) or card.get("fold") not in (None, fold):
        raise CheckpointError(f"{path}: holds the model of loss {trained_loss!r} fold {card.get('fold')!r}, "
                              f"expected loss {loss!r} fold {fold}")
    if list(card["landmark_names"]) != list(LANDMARK_NAMES):
        raise CheckpointError(f"{path}: model predicts landmarks {card['landmark_names']}, "
                              f"expected {list(LANDMARK_NAMES)}")


def run(params: Params, *, loss: str, fold: int, data_path: str | Path, folds_path: str | Path,
        models_dir: str | Path, out_dir: str | Path, device: str = "auto",
        batch_size: int = 16) -> OutputPaths:
    """Evaluate one (loss, fold): read model, data and split; write predictions, metrics and label maps."""
    from silr import checkpoint, deepfluoro
    from silr.folds import load_folds

    ckpt = checkpoint_path(models_dir, loss, fold)
    if not ckpt.is_file():
        raise CheckpointError(f"{ckpt}: no trained model for loss {loss!r} fold {fold}; "
                              f"train it first with `dvc repro train@{loss}-{fold}`")
    data = deepfluoro.read_processed(data_path)
    folds = load_folds(folds_path, data)
    if fold not in folds:
        raise ConfigError(f"{folds_path}: no fold {fold} (folds: {', '.join(map(str, sorted(folds)))})")
    test = sorted(folds[fold].test)
    if not test:
        raise DataError(f"{folds_path}: fold {fold} has no test frames")

    model, card = checkpoint.load_model(ckpt, select_device(device, key="--device"))
    _check_card(ckpt, card, loss, fold)
    codec = checkpoint.codec_from_card(card)
    paths = output_paths(out_dir, loss, fold)
    # All three outputs or none: a blocked location fails before the first one is written.
    ensure_writable(paths.predictions, paths.fold_metrics, paths.segmentation)

    specimens = [specimen for specimen, _ in test]
    frame_indices = [index for _, index in test]
    images = np.stack([data.specimens[s].images[i] for s, i in test])
    true_labels = np.stack([data.specimens[s].labels[i] for s, i in test])
    gt_xy = np.stack([data.specimens[s].landmarks_xy[i] for s, i in test])

    predicted = predict_frames(model, codec, images, device=next(model.parameters()).device,
                               batch_size=batch_size)
    table = predictions_table(loss=loss, fold=fold, specimens=specimens, frame_indices=frame_indices,
                              gt_xy=gt_xy, predicted=predicted, frame_size=(images.shape[2], images.shape[1]))
    result = metrics.fold_metrics(table, mm_per_px=data.pixel_spacing_mm, success_mm=params.evaluate.success_mm,
                                  dice_per_frame=metrics.dice_per_bone(predicted.labels, true_labels))
    if codec.kind == "shape":
        # NCC trains only the heatmaps' shape (blind to their offset and scale): a score
        # threshold means nothing for it, so presence and visibility are not reported.
        result["presence"] = None
        result["visibility_accuracy"] = None
    result.update({
        "heatmap_kind": codec.kind,
        "loss": loss,
        "fold": fold,
        "test_specimens": sorted(set(specimens)),
        "model": {"epoch": card.get("epoch"), "val_score_px": card.get("val_score_px")},
    })

    write_predictions_csv(paths.predictions, table)
    write_label_maps(paths.segmentation, specimens=specimens, frame_indices=frame_indices, labels=predicted.labels)
    write_json(paths.fold_metrics, metrics.rounded(result))
    return paths


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--loss", required=True, help="named loss (a key of losses: in params.yaml)")
    parser.add_argument("--fold", required=True, type=int, help="fold number k (tests specimen k)")
    parser.add_argument("--params", default=DEFAULT_PARAMS_FILE, help="params file (default: %(default)s)")
    parser.add_argument("--data", default=None, help="processed HDF5 file (default: data.processed in params)")
    parser.add_argument("--folds", default=DEFAULT_FOLDS, help="folds file (default: %(default)s)")
    parser.add_argument("--models", default=DEFAULT_MODELS, help="models directory (default: %(default)s)")
    parser.add_argument("--out", default=DEFAULT_OUT, help="metrics directory (default: %(default)s)")
    parser.add_argument("--device", default=None, help="auto, cpu, cuda[:N] or mps (default: train.device)")
    parser.add_argument("--batch-size", type=int, default=16, help="frames per forward pass (default: %(default)s)")


def main(args: argparse.Namespace) -> int:
    params = load_params(args.params)
    params.loss_weights(args.loss)  # ConfigError naming losses.<name> if it is not defined
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    run(params, loss=args.loss, fold=args.fold, data_path=args.data or params.data.processed,
        folds_path=args.folds, models_dir=args.models, out_dir=args.out,
        device=args.device or params.train.device, batch_size=args.batch_size)
    return 0
