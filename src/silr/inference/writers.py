"""`silr predict`'s outputs: the --out folder checked before any work, each input's csv, json,
label map and overlay (published together or not at all; the overlay is drawn by the caller,
silr.stages.predict, since plots sit above this layer), and the summary printed at the end.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from silr.core.anatomy import LABEL_COLORS, LABEL_NAMES
from silr.core.errors import OutputError
from silr.core.io import atomic_path, json_text
from silr.inference.frame_prediction import FramePrediction
from silr.inference.inputs import labels_to_input, treatment
from silr.inference.model_info import ModelFacts, describe_facts

if TYPE_CHECKING:  # torch and matplotlib: imported where models load and overlays are drawn
    from matplotlib.figure import Figure

    from silr.inference.predictor import Ensemble

__all__ = [
    "OverlayDrawer", "SummaryRow", "check_output_dir", "landmark_rows", "prediction_paths",
    "remove_outputs", "summary_table", "write_label_png", "write_outputs",
]

# (prediction, its label map on the input grid) -> the overlay figure
OverlayDrawer = Callable[[FramePrediction, np.ndarray], "Figure"]


@dataclass(frozen=True)
class SummaryRow:
    """One predicted input's line of the summary."""

    stem: str
    treated_as: str
    present: int
    total: int
    mean_score: float
    paths: dict[str, Path]
    seconds: float = 0.0
    warnings: tuple[str, ...] = field(default=())


def check_output_dir(out_dir: Path) -> None:
    """--out must be a directory, or creatable as one, that we can write: checked before any
    work (nothing is created here; a run that stops at the models leaves no empty folder)."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise OutputError(f"--out {out_dir}: exists and is not a directory")
        if not os.access(out_dir, os.W_OK | os.X_OK):
            raise OutputError(f"--out {out_dir}: directory is not writable")
        return
    ancestor = out_dir.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"--out {out_dir}: cannot be created, {ancestor} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(f"--out {out_dir}: cannot be created, {ancestor} is not writable")


def prediction_paths(out_dir: Path, stem: str) -> dict[str, Path]:
    """The four files of one input's prediction in --out."""
    return {"csv": out_dir / f"{stem}_landmarks.csv", "json": out_dir / f"{stem}_landmarks.json",
            "seg": out_dir / f"{stem}_seg.png", "overlay": out_dir / f"{stem}_overlay.png"}


def landmark_rows(prediction: FramePrediction, names: Sequence[str]) -> list[dict]:
    """One row per landmark, as the csv and the json's `landmarks` hold them."""
    rows = []
    for i, name in enumerate(names):
        rows.append({
            "name": name,
            "x": float(prediction.xy_input[i, 0]), "y": float(prediction.xy_input[i, 1]),
            "frame_x": float(prediction.xy_frame[i, 0]),
            "frame_y": float(prediction.xy_frame[i, 1]),
            "present": bool(prediction.present[i]), "in_image": bool(prediction.in_image[i]),
            "score": float(prediction.score[i]), "visibility": float(prediction.visibility[i]),
        })
    return rows


def write_outputs(out_dir: Path, prediction: FramePrediction, ensemble: Ensemble,
                  facts: Sequence[ModelFacts], draw_overlay: OverlayDrawer) -> dict[str, Path]:
    """Write the csv, json, label map and overlay of one prediction; return their paths.

    All four are written to temporary names first and published together only when every one
    is complete (the json last, so a json means a complete set); a failure leaves none."""
    frame = prediction.prepared.input
    paths = prediction_paths(out_dir, frame.stem)
    rows = landmark_rows(prediction, ensemble.landmark_names)
    labels_input = labels_to_input(prediction.labels, prediction.prepared,
                                   ensemble.card.preprocessing)
    # `with` exits last-in first-out: the overlay is published first and the json last
    with atomic_path(paths["json"]) as json_tmp, atomic_path(paths["csv"]) as csv_tmp, \
            atomic_path(paths["seg"]) as seg_tmp, atomic_path(paths["overlay"]) as overlay_tmp:
        csv_tmp.write_text(_csv_text(rows), encoding="utf-8")
        json_tmp.write_text(json_text(_json_record(prediction, ensemble, rows, paths, facts)),
                            encoding="utf-8")
        write_label_png(seg_tmp, labels_input)
        figure = draw_overlay(prediction, labels_input)
        figure.savefig(overlay_tmp, format="png", metadata={"Software": None})
    return paths


def remove_outputs(out_dir: Path, stem: str) -> None:
    """Remove an earlier run's outputs of `stem` (regular files only), so that an input reported
    as failed has none: a stale csv beside a failure would read as this run's answer."""
    for path in prediction_paths(out_dir, stem).values():
        with contextlib.suppress(OSError):
            if path.is_file() and not path.is_symlink():
                path.unlink()


def write_label_png(path: Path, labels: np.ndarray) -> None:
    """An indexed PNG: pixel index = label value, palette = silr.core.anatomy.LABEL_COLORS."""
    # matplotlib (and Pillow) load here, when a file is written, not with `silr predict --help`
    from matplotlib.colors import to_rgb
    from PIL import Image

    labels = np.ascontiguousarray(labels, dtype=np.uint8)
    image = Image.frombytes("P", (labels.shape[1], labels.shape[0]), labels.tobytes())
    palette = [round(255 * c) for colour in LABEL_COLORS for c in to_rgb(colour)]
    image.putpalette(palette + [0] * (768 - len(palette)))
    image.save(path, format="PNG")


def _csv_text(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue()


def _json_record(prediction: FramePrediction, ensemble: Ensemble, rows: list[dict],
                 paths: dict[str, Path], facts: Sequence[ModelFacts]) -> dict:
    prepared = prediction.prepared
    frame = prepared.input
    height, width = frame.pixels.shape
    size = ensemble.frame_size
    li_width, li_height = prepared.line_integral_size
    models = [str(p) for p in ensemble.paths]
    return {
        "source": frame.source,
        "stem": frame.stem,
        "treated_as": treatment(frame, ensemble.card.preprocessing),
        "input_size": [width, height],
        "pixel_spacing_mm": list(frame.pixel_spacing_mm) if frame.pixel_spacing_mm else None,
        "line_integral_size": [li_width, li_height],
        "frame_size": [size, size],
        # frame pixels per line-integral pixel along x and y (1.0: no resampling)
        "scale": [size / li_width, size / li_height],
        "resampling": prepared.resampling,
        "models": models,
        "model_facts": list(facts),
        "ensemble": models if len(models) > 1 else None,
        "ensemble_method": ("mean of each model's heatmaps in the form its loss trained "
                            "(KL: softmax), segmentation softmax, threshold scores and presence "
                            "probabilities, then decoded" if len(models) > 1 else None),
        "presence_rule": ensemble.codec.presence,
        "warnings": list(prediction.warnings),
        "inverted_mean_score": prediction.inverted_score,
        "seconds": round(prediction.seconds, 4),
        "landmarks": rows,
        # every rule's score per landmark (null where a rule does not apply to these models)
        "presence_scores": {rule: [float(v) if np.isfinite(v) else None for v in values]
                            for rule, values in prediction.rule_scores.items()},
        "segmentation": {"file": paths["seg"].name, "grid": f"input pixels, {width}x{height}",
                         "format": "indexed PNG: pixel index = label value, palette = the "
                                   "bone colours",
                         "resampling": "nearest frame pixel of each input pixel centre; 0 "
                                       "outside the frame",
                         "labels": {str(k): v for k, v in LABEL_NAMES.items()}},
        "outputs": {key: path.name for key, path in paths.items()},
    }


def summary_table(rows: Sequence[SummaryRow], ensemble: Ensemble, out_dir: Path,
                  facts: Sequence[ModelFacts] = ()) -> str:
    """The models' card facts, then one line per predicted input: landmarks present, mean score
    over all landmarks, seconds for the frame (read, prepare, its share of the models, write),
    warnings, overlay."""
    head = (f"ensemble of {len(ensemble.paths)} models (mean of probabilities):"
            if len(ensemble.paths) > 1 else "model:")
    lines = [head] + [f"  {describe_facts(f)}" for f in facts]
    if not facts:
        lines += [f"  {p}" for p in ensemble.paths]
    lines.append(f"outputs in {out_dir}/ as <input>_landmarks.csv/.json, _seg.png (input grid), "
                 f"_overlay.png")
    if not rows:
        lines.append("no input was predicted")
        return "\n".join(lines)
    width = max(len("input"), *(len(r.stem) for r in rows))
    kind_width = max(len("treated as"), *(len(r.treated_as) for r in rows))
    lines.append(f"{'input':<{width}}  {'treated as':<{kind_width}}  present  mean score  "
                 f"seconds  warnings  overlay")
    for r in rows:
        lines.append(f"{r.stem:<{width}}  {r.treated_as:<{kind_width}}  "
                     f"{r.present:>3}/{r.total:<3}  {r.mean_score:>10.3f}  {r.seconds:>7.2f}  "
                     f"{len(r.warnings):>8}  {r.paths['overlay']}")
    total = sum(r.seconds for r in rows)
    lines.append(f"{len(rows)} frame(s) in {total:.2f} s ({total / len(rows):.2f} s per frame)")
    return "\n".join(lines)
