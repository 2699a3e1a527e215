"""Stage `evaluate`: predict every test frame of one fold with its best model and score it.

  silr evaluate --loss proposed --fold 1

Reads `models/<loss>/fold<k>/best.pt`, the processed data and the folds file, and writes
(formats and paths in silr.evaluation.results):
- `metrics/predictions/<loss>/fold<k>.csv`: one row per (frame, landmark) in the 180x180
  frame: loss, fold, specimen, frame, landmark, gt_x, gt_y, gt_in_frame, pred_x, pred_y,
  pred_present, score, visibility_hat, error_px (empty where the ground truth lies
  outside the frame), then every presence rule's score (threshold_score, template_ncc,
  presence_prob; empty where a rule does not apply), the argmax restricted to the
  landmark's own predicted bone (bone_x, bone_y, error_bone_px), and whether the
  ground-truth label under the prediction and under the true position is the landmark's
  own bone (pred_on_bone, gt_on_bone). The predicted location is the heatmap argmax
  whether or not the landmark is predicted present; presence is reported separately.
- `metrics/folds/<loss>/fold<k>.json`: mean / median error in px and mm, per-landmark
  mean error, success rates, presence counts of the rule in force, every applicable
  rule's presence metrics (`presence_by_rule`, with the rules' definitions), the
  anatomical consistency (`consistency`), discrete-visibility accuracy, Dice per bone and
  counts (conventions in `silr.evaluation.metrics`).
- `metrics/segmentation/<loss>/fold<k>.npz`: the predicted label maps (uint8, frame
  size) of the test frames, with their specimen and frame numbers, for the report's
  segmentation figure and for recomputing the Dice values.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from silr.core.io import ensure_writable
from silr.core.params import Params
from silr.evaluation.dice import dice_per_bone
from silr.evaluation.heldout import add_fold_arguments, fold_params, load_fold_model
from silr.evaluation.presence import presence_rules_of
from silr.evaluation.results import (
    OutputPaths,
    fold_metrics,
    output_paths,
    predictions_table,
    read_fold_metrics,
    write_fold_metrics,
    write_label_maps,
    write_predictions_csv,
)
from silr.inference.predictor import INFERENCE_BATCH_SIZE, predict_frames

__all__ = ["add_arguments", "main", "run"]


def run(params: Params, *, loss: str, fold: int, data_path: str | Path, folds_path: str | Path,
        models_dir: str | Path, out_dir: str | Path, device: str | None = None,
        batch_size: int = INFERENCE_BATCH_SIZE, seed: int | None = None) -> OutputPaths:
    """Evaluate one (loss, fold) and, with `seed`, one extra training seed of the study: read
    model, data and split; write predictions, metrics and label maps."""
    run_ = load_fold_model(params, loss=loss, fold=fold, data_path=data_path,
                           folds_path=folds_path, models_dir=models_dir, device=device, seed=seed)
    data, test, model, card, codec, trained_seed = (run_.data, run_.test, run_.model, run_.card,
                                                    run_.codec, run_.trained_seed)
    paths = output_paths(out_dir, loss, fold, seed)
    # All three outputs or none: a blocked location fails before the first one is written.
    ensure_writable(paths.predictions, paths.fold_metrics, paths.segmentation)

    specimens = [specimen for specimen, _ in test]
    frame_indices = [index for _, index in test]
    images, true_labels, gt_xy = (run_.stacked(name)
                                  for name in ("images", "labels", "landmarks_xy"))

    predicted = predict_frames(model, codec, images, device=next(model.parameters()).device,
                               batch_size=batch_size)
    table = predictions_table(loss=loss, fold=fold, specimens=specimens,
                              frame_indices=frame_indices, gt_xy=gt_xy, predicted=predicted,
                              frame_size=(images.shape[2], images.shape[1]),
                              true_labels=true_labels, seed=trained_seed)
    rules = presence_rules_of(codec.config())
    result = fold_metrics(table, mm_per_px=data.pixel_spacing_mm,
                          success_mm=params.evaluate.success_mm,
                          dice_per_frame=dice_per_bone(predicted.labels, true_labels),
                          presence_rules=rules)
    if codec.presence not in rules:
        # NCC trains only the heatmaps' shape (blind to their offset and scale): a score
        # threshold means nothing for it, so that rule's presence and visibility are not reported.
        result["presence"] = None
        result["visibility_accuracy"] = None
    result.update({
        "heatmap_kind": codec.kind,
        "presence_rule": codec.presence,
        "loss": loss,
        "fold": fold,
        "seed": trained_seed,
        "test_specimens": sorted(set(specimens)),
        "model": {"epoch": card.epoch, "val_score_px": card.val_score_px},
    })

    write_predictions_csv(paths.predictions, table)
    write_label_maps(paths.segmentation, specimens=specimens, frame_indices=frame_indices,
                     labels=predicted.labels)
    write_fold_metrics(paths.fold_metrics, result)
    return paths


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_fold_arguments(parser)
    parser.add_argument("--seed", type=int, default=None, metavar="S",
                        help="an extra training seed of the study (study.seeds): reads "
                             "<models>/<loss>/fold<k>_seed<S>/best.pt and writes "
                             "<out>/*/<loss>/fold<k>_seed<S>.*")


def main(args: argparse.Namespace) -> int:
    params = fold_params(args)
    paths = run(params, loss=args.loss, fold=args.fold,
                data_path=args.data or params.data.processed, folds_path=args.folds,
                models_dir=args.models, out_dir=args.out, device=args.device,
                batch_size=args.batch_size, seed=args.seed)
    result = read_fold_metrics(paths.fold_metrics, loss=args.loss, fold=args.fold)
    error, counts = result["error"], result["counts"]
    px, mm = (f"{error[k]:.2f}" if error.get(k) is not None else "–"
              for k in ("mean_px", "mean_mm"))
    seed = f" seed {args.seed}" if args.seed is not None else ""
    print(f"evaluate {args.loss} fold {args.fold}{seed}: mean error {px} px ({mm} mm) "
          f"over {counts['landmarks_in_frame']} in-frame landmarks of {counts['frames']} frames -> "
          f"{paths.fold_metrics}", flush=True)
    return 0
