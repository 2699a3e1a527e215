"""Stage `robustness`: one fold's held-out frames under every corruption of the suite, scored.

  silr robustness --loss proposed --fold 1

Reads what `silr evaluate` reads (`models/<loss>/fold<k>/best.pt`, the processed data, the
folds file), corrupts every test frame with each type of `robustness.corruptions` at
severities 1-5 (silr.evaluation.corruptions; seeded per frame by `robustness.seed`), predicts
through the one inference path (silr.inference.predictor.predict_frames, the decoding and
presence rule of the model's codec) and writes `metrics/robustness/<loss>/fold<k>.json`: per
(corruption, severity) the mean error (px) over the in-frame landmarks and, where the model's
presence rule applies, its presence counts. Severity 0 is the clean evaluation, the very frames and
batches of `silr evaluate`, so its error equals `metrics/folds/<loss>/fold<k>.json`'s.

The report pools the folds (silr.evaluation.robustness_summary).
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from silr.core.io import ensure_writable, write_json
from silr.core.params import Params
from silr.core.robustness_params import RobustnessParams
from silr.core.types import FramePredictions
from silr.evaluation import corruptions, metrics
from silr.evaluation.heldout import add_fold_arguments, fold_params, load_fold_model
from silr.evaluation.presence import presence_counts, presence_rules_of
from silr.evaluation.results import predictions_table
from silr.evaluation.robustness_summary import CLEAN, FORMAT, robustness_path
from silr.inference.predictor import INFERENCE_BATCH_SIZE, predict_frames

__all__ = ["add_arguments", "main", "run"]


def _frames(predicted: FramePredictions, start: int, stop: int) -> FramePredictions:
    """The predictions of frames start..stop-1."""
    return FramePredictions(**{f.name: getattr(predicted, f.name)[start:stop]
                               for f in fields(predicted)})


def _condition(table: pd.DataFrame, presence_applies: bool) -> dict[str, Any]:
    in_frame = table["gt_in_frame"].astype(bool).to_numpy()
    errors = table.loc[in_frame, "error_px"].to_numpy(dtype=np.float64)
    counts = (presence_counts(in_frame, table["pred_present"].astype(bool).to_numpy())
              if presence_applies else None)
    return {"mean_px": float(errors.mean()) if errors.size else math.nan,
            "landmarks_in_frame": int(errors.size), "presence": counts}


def run(params: Params, settings: RobustnessParams, *, loss: str, fold: int,
        data_path: str | Path, folds_path: str | Path, models_dir: str | Path,
        out_dir: str | Path, device: str | None = None,
        batch_size: int = INFERENCE_BATCH_SIZE) -> Path:
    """Score one (loss, fold) under the suite `settings`; write and return its JSON."""
    run_ = load_fold_model(params, loss=loss, fold=fold, data_path=data_path,
                           folds_path=folds_path, models_dir=models_dir, device=device)
    out = robustness_path(out_dir, loss, fold)
    ensure_writable(out)
    images, true_labels, gt_xy = (run_.stacked(name)
                                  for name in ("images", "labels", "landmarks_xy"))
    specimens = [s for s, _ in run_.test]
    frame_indices = [i for _, i in run_.test]
    presence_applies = run_.codec.presence in presence_rules_of(run_.codec.config())

    def scored(predicted: FramePredictions) -> dict[str, Any]:
        table = predictions_table(loss=loss, fold=fold, specimens=specimens,
                                  frame_indices=frame_indices, gt_xy=gt_xy, predicted=predicted,
                                  frame_size=(images.shape[2], images.shape[1]),
                                  true_labels=true_labels, seed=run_.trained_seed)
        return _condition(table, presence_applies)

    def predict(frames: np.ndarray) -> FramePredictions:
        return predict_frames(run_.model, run_.codec, frames, device=run_.device,
                              batch_size=batch_size)

    # Clean: evaluate's very call (the same frames in the same batches), so that it scores the
    # same.
    conditions = [{"corruption": CLEAN, "severity": 0, **scored(predict(images))}]
    # Corrupted: every condition's frames in one stack, so that the batches are full.
    keys = [(name, severity) for name in settings.corruptions
            for severity in corruptions.SEVERITIES]
    mm_per_px = run_.data.pixel_spacing_mm
    corrupted = np.stack([
        corruptions.corrupt(frame, name, severity, settings,
                            corruptions.FrameFacts(key=(s, i), landmarks_xy=xy,
                                                   mm_per_px=mm_per_px))
        for name, severity in keys for frame, (s, i), xy in zip(images, run_.test, gt_xy)])
    predicted = predict(corrupted)
    count = len(images)
    for index, (name, severity) in enumerate(keys):
        conditions.append({"corruption": name, "severity": severity,
                           **scored(_frames(predicted, index * count, (index + 1) * count))})
    write_json(out, metrics.rounded({
        "format": FORMAT, "loss": loss, "fold": fold, "seed": run_.trained_seed,
        "test_specimens": sorted(set(specimens)), "frames": len(run_.test),
        "presence_rule": run_.codec.presence if presence_applies else None,
        "conditions": conditions,
    }))
    return out


# ------------------------------------------------------------------ command

def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_fold_arguments(parser)


def main(args: argparse.Namespace) -> int:
    params = fold_params(args)
    path = run(params, params.robustness, loss=args.loss, fold=args.fold,
               data_path=args.data or params.data.processed, folds_path=args.folds,
               models_dir=args.models, out_dir=args.out, device=args.device,
               batch_size=args.batch_size)
    result = json.loads(path.read_text())
    worst = max((c for c in result["conditions"]), key=lambda c: c["mean_px"])
    print(f"robustness {args.loss} fold {args.fold}: clean "
          f"{result['conditions'][0]['mean_px']:.2f} px, "
          f"worst {worst['corruption']} {worst['severity']} {worst['mean_px']:.2f} px, "
          f"{len(result['conditions'])} conditions -> {path}", flush=True)
    return 0
