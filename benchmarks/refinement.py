"""Sub-pixel refinement, measured: each refinement mode on the same checkpoints and test frames.

  .venv/bin/python benchmarks/refinement.py [--models models] [--losses proposed mse ncc]
      [--folds 1 2 3 4 5 6] [--data data/processed/ds_8x.h5] [--folds-file data/folds.json]

For every trained (loss, fold) checkpoint, decodes the fold's test frames with the model's
own codec under each `heatmap.refine` mode (none: the paper's argmax; parabola; centroid)
and prints the mean and median error over in-frame landmarks (px, 180 x 180 frame), then
the means over folds. Nothing is retrained: the modes differ only in decoding.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from silr.core import coords
from silr.core.choices import REFINE_MODES
from silr.data.processed import read_processed
from silr.data.splits import load_folds
from silr.inference import predictor
from silr.model import checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="models")
    parser.add_argument("--losses", nargs="+", default=["proposed", "mse", "ncc"])
    parser.add_argument("--folds", nargs="+", type=int, default=[1, 2, 3, 4, 5, 6])
    parser.add_argument("--data", default="data/processed/ds_8x.h5")
    parser.add_argument("--folds-file", default="data/folds.json")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    data = read_processed(args.data)
    splits = load_folds(args.folds_file, data)
    height, width = data.frame_shape
    for loss in args.losses:
        means = {mode: [] for mode in REFINE_MODES}
        for fold in args.folds:
            model, card = checkpoint.load_model(f"{args.models}/{loss}/fold{fold}/best.pt")
            base = card.codec()
            test = sorted(splits[fold].test)
            images = np.stack([data.specimens[s].images[i] for s, i in test])
            truth = np.stack([data.specimens[s].landmarks_xy[i] for s, i in test])
            inside = coords.in_frame(truth, width, height)
            cells = []
            for mode in REFINE_MODES:
                codec = type(base)(**{**base.config(), "refine": mode})
                xy = predictor.predict_frames(model, codec, images).xy
                errors = np.linalg.norm(xy - truth, axis=-1)[inside]
                means[mode].append(errors.mean())
                cells.append(f"{mode} {errors.mean():6.2f} / {np.median(errors):5.2f}")
            print(f"{loss:10s} fold {fold} (stride {base.stride}, {base.kind}): "
                  + " | ".join(cells))
        print(f"{loss:10s} mean over folds: "
              + " | ".join(f"{m} {np.mean(v):6.2f}" for m, v in means.items()))


if __name__ == "__main__":
    main()
