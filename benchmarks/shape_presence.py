"""The `shape` presence rule measured on a study's trained models, post hoc.

  .venv/bin/python benchmarks/shape_presence.py STUDY_ROOT [LOSS ...]

STUDY_ROOT holds data/processed/ds_8x.h5, data/folds.json and models/LOSS/fold<k>/best.pt
(a `make repro` clone). For every loss and fold it fits the fold's shape prior on its
training frames (what `silr train` now stores in the card), decodes the test frames through
silr.inference.predictor with the rule in force and with the shape rule, and prints the
pooled absent-class F1 of both, then the shape rule's F1 over a grid of its constants (the
variance share, the localisation noise and the outlier refits), so that a reader sees how
much the choice of constants matters. Results: benchmarks/results/shape_presence.txt.
"""

from __future__ import annotations

import dataclasses
import sys
from contextlib import nullcontext
from unittest import mock

import numpy as np
import torch

from silr.core import coords
from silr.data.processed import read_processed
from silr.data.splits import load_folds
from silr.evaluation.presence import presence_metrics
from silr.inference import predictor
from silr.model import checkpoint, shape_prior
from silr.model.shape_prior import ShapePrior
from silr.stages.train import shape_prior_of


def absent_f1(truth: np.ndarray, called: np.ndarray) -> str:
    m = presence_metrics(truth, called, called.astype(float), np.zeros(len(truth)),
                         probability=False)
    return (f"absent F1 {m['absent_f1']:.3f} (found {m['true_negative']} of "
            f"{int((~truth).sum())}, {m['false_negative']} present called absent)")


def decoded(root: str, loss: str, data, folds, constants: dict | None = None):
    """(truth, base calls, shape calls) pooled over the folds."""
    truth, base, shape = [], [], []
    for fold in sorted(folds):
        model, card = checkpoint.load_model(f"{root}/models/{loss}/fold{fold}/best.pt")
        prior = shape_prior_of(data, folds[fold].train)
        if constants and "share" in constants:
            keys = sorted(folds[fold].train)
            shapes = np.stack([data.specimens[s].landmarks_xy[i] for s, i in keys])
            prior = ShapePrior.fit(shapes, constants["share"])
        # the base rule alone (learned, else template), as the models decoded before the shape
        # rule; cards that carry a prior already decode with `shape`
        base_rule = "learned" if card.heatmap.presence_source is not None else "template"
        codec = dataclasses.replace(card, heatmap=dataclasses.replace(
            card.heatmap, presence=base_rule)).codec()
        keys = sorted(folds[fold].test)
        images = np.stack([data.specimens[s].images[i] for s, i in keys]).astype(np.float32)
        xy = np.stack([data.specimens[s].landmarks_xy[i] for s, i in keys])
        with_prior = dataclasses.replace(card, heatmap=dataclasses.replace(
            card.heatmap, presence="shape", shape_prior=prior)).codec()
        plain = predictor.predict_frames(model, codec, images)
        patched = {k: v for k, v in (constants or {}).items() if k != "share"}
        with mock.patch.multiple(shape_prior, **patched) if patched else nullcontext():
            shaped = predictor.predict_frames(model, with_prior, images)
        truth.append(coords.in_frame(xy, 180, 180).ravel())
        base.append(plain.present.ravel())
        shape.append(shaped.present.ravel())
    return np.concatenate(truth), np.concatenate(base), np.concatenate(shape)


def main() -> int:
    root, losses = sys.argv[1], sys.argv[2:] or ["proposed_plus", "proposed", "mse", "ncc"]
    torch.set_num_threads(2)
    data = read_processed(f"{root}/data/processed/ds_8x.h5")
    folds = load_folds(f"{root}/data/folds.json", data)
    for loss in losses:
        card = checkpoint.read_checkpoint(f"{root}/models/{loss}/fold1/best.pt")["card"]
        truth, base, shape = decoded(root, loss, data, folds)
        base_rule = "learned" if card.heatmap.presence_source is not None else "template"
        print(f"{loss}: base rule ({base_rule}): {absent_f1(truth, base)}")
        print(f"{loss}: shape rule (defaults): {absent_f1(truth, shape)}")
    loss = losses[0]
    print(f"\n{loss}, shape rule over its constants (share of variance, noise px, refits):")
    for share in (0.90, 0.95, 0.98):
        for noise in (2.0, 4.0):
            for refits in (0, 2):
                constants = {"share": share, "SHAPE_NOISE_PX": noise, "SHAPE_REFITS": refits}
                truth, _, shape = decoded(root, loss, data, folds, constants)
                print(f"  share {share:.2f}, noise {noise:.0f} px, refits {refits}: "
                      f"{absent_f1(truth, shape)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
