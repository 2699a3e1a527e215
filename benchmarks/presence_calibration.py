"""Raw against Platt-calibrated learned presence on the test frames, per fold and pooled.

  python benchmarks/presence_calibration.py STUDY_ROOT LOSS

Fits Platt scaling (silr.evaluation.presence.platt_scaling) on each fold's validation frames, as
`heatmap.calibrate: true` does, and scores raw and calibrated probabilities on its test frames.
STUDY_ROOT is a benchmarks/loss_study.py seed folder. Results:
benchmarks/results/presence_consistency_candidates.txt.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from silr.core import coords
from silr.core.network_input import to_network_input
from silr.data.processed import read_processed
from silr.data.splits import load_folds
from silr.evaluation import presence
from silr.model import checkpoint
from silr.model.codec import presence_logit


def logits_of(model, card, data, keys) -> tuple[np.ndarray, np.ndarray]:
    images = np.stack([data.specimens[s].images[i] for s, i in keys]).astype(np.float32)
    xy = np.stack([data.specimens[s].landmarks_xy[i] for s, i in keys])
    with torch.no_grad():
        output = model(to_network_input(images))
        z = presence_logit(output.heatmaps.float(), output.presence.float(),
                           card.heatmap.presence_source)
    return z.numpy().ravel(), coords.in_frame(xy, 180, 180).ravel()


def main() -> int:
    root, loss = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    data = read_processed("data/processed/ds_8x.h5")
    folds = load_folds("data/folds.json", data)
    raw, calibrated, truth = [], [], []
    for fold in range(1, 7):
        model, card = checkpoint.load_model(f"{root}/models/{loss}/fold{fold}/best.pt")
        model.eval()
        z_val, y_val = logits_of(model, card, data, folds[fold].val)
        z_test, y_test = logits_of(model, card, data, sorted(folds[fold].test))
        a, b = presence.platt_scaling(z_val, y_val) or (1.0, 0.0)
        raw.append(z_test)
        calibrated.append(a * z_test + b)
        truth.append(y_test)
        print(f"fold {fold}: Platt a = {a:.3f}, b = {b:.3f} from {int((~y_val).sum())} absent "
              f"validation landmarks; test AUROC {presence.auroc(y_test, z_test):.3f}")
    y = np.concatenate(truth)
    for name, z in (("raw", np.concatenate(raw)), ("calibrated", np.concatenate(calibrated))):
        p = 1.0 / (1.0 + np.exp(-z))
        result = presence.presence_metrics(y, p >= 0.5, p, np.zeros_like(p), probability=True)
        print(name, {k: round(result[k], 3) for k in ("auroc", "absent_f1", "absent_precision",
                                                      "absent_recall", "ece")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
