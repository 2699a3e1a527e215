"""Refit the presence head alone on frozen best weights, then score it on the test frames.

What train.presence_refit_epochs does after training; reports the pooled test presence over
the six folds.

  BS=8 PARAMS=params.yaml python benchmarks/presence_refit.py STUDY_ROOT LOSS EPOCHS

STUDY_ROOT is a benchmarks/loss_study.py seed folder (holding models/LOSS/fold<k>/best.pt);
EPOCHS 0 scores the heads as they are. Results:
benchmarks/results/presence_consistency_candidates.txt.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import torch

from silr.core import coords
from silr.core.network_input import to_network_input
from silr.core.params import load_params
from silr.data.processed import read_processed
from silr.data.splits import load_folds
from silr.evaluation import presence
from silr.model import checkpoint
from silr.model.codec import presence_logit
from silr.model.losses import presence_bce_loss
from silr.training.dataset import augment, batch_indices, draw_augmentation, frame_set


def refit(model: torch.nn.Module, fold_frames, params, epochs: int, batch_size: int,
          seed: int) -> None:
    torch.manual_seed(seed)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith("presence_head."))
    model.eval()
    model.presence_head.train()
    optimizer = torch.optim.AdamW(model.presence_head.parameters(), lr=params.train.lr,
                                  weight_decay=params.train.weight_decay)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for index in batch_indices(len(fold_frames), batch_size, generator, "cpu"):
            batch = augment(fold_frames.batch(index),
                            draw_augmentation(params.augment, len(index), generator))
            output = model(batch.images)
            loss = presence_bce_loss(output.presence, batch.present, output.presence_xy,
                                     batch.landmarks_xy, 192)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


def main() -> int:
    root, loss, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3])
    batch_size = int(os.environ.get("BS", "8"))
    params = load_params(os.environ.get("PARAMS", "params.yaml"))
    torch.set_num_threads(2)
    data = read_processed("data/processed/ds_8x.h5")
    folds = load_folds("data/folds.json", data)
    probabilities, truth = [], []
    for fold in range(1, 7):
        model, card = checkpoint.load_model(f"{root}/models/{loss}/fold{fold}/best.pt")
        if epochs:
            refit(model, frame_set(data, folds[fold].train, "cpu"), params, epochs, batch_size,
                  seed=fold)
        model.eval()
        keys = sorted(folds[fold].test)
        images = np.stack([data.specimens[s].images[i] for s, i in keys]).astype(np.float32)
        xy = np.stack([data.specimens[s].landmarks_xy[i] for s, i in keys])
        with torch.no_grad():
            output = model(to_network_input(images))
            z = presence_logit(output.heatmaps.float(), output.presence.float(),
                               card.heatmap.presence_source)
        probabilities.append(torch.sigmoid(z).numpy().ravel())
        truth.append(coords.in_frame(xy, 180, 180).ravel())
    p, y = np.concatenate(probabilities), np.concatenate(truth)
    result = presence.presence_metrics(y, p >= 0.5, p, np.zeros_like(p), probability=True)
    print(loss, f"refit epochs {epochs}, batch {batch_size}:",
          {k: round(result[k], 3)
           for k in ("auroc", "absent_f1", "absent_precision", "absent_recall", "ece")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
