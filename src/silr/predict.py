"""`silr predict`: apply trained models (one, or an ensemble of several) to new frames.

  silr predict --model models/proposed/fold1/best.pt --out predictions frame.png
  silr predict --model CKPT --info          (print the model card and exit)

How each input kind is treated:
  PNG / TIFF (8 or 16 bit)  a line-integral image (bone bright), as a DeepFluoro viewer
                            shows it; with --raw: a raw detector frame (bone dark).
  NumPy .npy (H,W)/(N,H,W)  the same; a stack gives one prediction per frame (--frames).
  preprocessed HDF5         (`<NN>/projs`, e.g. ipcai_2020_ds_8x.h5 or data/processed):
                            line-integral frames; choose with --specimen / --frames.
  full-resolution HDF5      (`<id>/projections/<NNN>/image/pixels`): raw detector frames,
                            so --raw is implied, with the file's rot-180-for-up honoured.
A raw frame goes through ingestion's own crop, log and downsample with the model card's
values. A frame whose size is not the model's 180x180 frame is resampled to it (area
mean when shrinking, bilinear otherwise; the scale is recorded), and every predicted
landmark is mapped back to the input image's own pixel coordinates.

Several --model files (e.g. the six fold models) are ensembled: their heatmap
probabilities (sigmoid) and segmentation probabilities (softmax) are averaged, then
decoded once.

Outputs in --out, per input (stem = file stem; HDF5 adds _sNN_fNNN, a stack _fNNN):
  <stem>_landmarks.csv/.json  name, x, y (input pixels), frame_x, frame_y (180x180
                              frame), present, score, visibility (0 / 0.5 / 1)
  <stem>_seg.png              uint8 label map (0..6) in the 180x180 frame
  <stem>_overlay.png          frame, segmentation tint, landmark markers and names
Exit status: 0 all inputs predicted; 1 some inputs failed (listed at the end);
2 nothing could run (bad checkpoint, mismatched models, bad arguments).
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from silr.anatomy import LABEL_NAMES
from silr.errors import ConfigError, SilrError
from silr.inference import Ensemble, load_ensemble
from silr.inputs import (
    Failure,
    InputSpec,
    PreparedFrame,
    enumerate_inputs,
    frame_to_input,
    parse_frames,
    prepare,
    treatment,
    unique_stems,
)
from silr.io import atomic_path, write_json, write_text

# ------------------------------------------------------------------ containers

@dataclass(frozen=True)
class FramePrediction:
    prepared: PreparedFrame
    xy_frame: np.ndarray  # (L, 2) in the 180x180 frame
    xy_input: np.ndarray  # (L, 2) in the input image's own pixels
    present: np.ndarray  # (L,) bool
    score: np.ndarray  # (L,) max heatmap probability
    visibility: np.ndarray  # (L,) discrete visibility in {0, 0.5, 1}
    labels: np.ndarray  # uint8 (frame, frame)


# ------------------------------------------------------------------ prediction

def predict_frames(ensemble: Ensemble, prepared: Sequence[PreparedFrame]) -> list[FramePrediction]:
    """Run the ensemble on prepared frames (one batch) and decode every landmark."""
    decoded = ensemble.decode(np.stack([p.frame for p in prepared]))
    size = ensemble.frame_size
    preprocessing = ensemble.card.preprocessing
    results = []
    for i, item in enumerate(prepared):
        results.append(FramePrediction(
            prepared=item, xy_frame=decoded.xy[i],
            xy_input=frame_to_input(decoded.xy[i], item, size, preprocessing),
            present=decoded.present[i], score=decoded.score[i],
            visibility=decoded.visibility_hat[i], labels=decoded.labels[i]))
    return results


# ------------------------------------------------------------------ outputs

def output_paths(out_dir: Path, stem: str) -> dict[str, Path]:
    return {"csv": out_dir / f"{stem}_landmarks.csv", "json": out_dir / f"{stem}_landmarks.json",
            "seg": out_dir / f"{stem}_seg.png", "overlay": out_dir / f"{stem}_overlay.png"}


def landmark_rows(prediction: FramePrediction, names: Sequence[str]) -> list[dict]:
    rows = []
    for i, name in enumerate(names):
        rows.append({
            "name": name,
            "x": float(prediction.xy_input[i, 0]), "y": float(prediction.xy_input[i, 1]),
            "frame_x": float(prediction.xy_frame[i, 0]), "frame_y": float(prediction.xy_frame[i, 1]),
            "present": bool(prediction.present[i]), "score": float(prediction.score[i]),
            "visibility": float(prediction.visibility[i]),
        })
    return rows


def write_outputs(out_dir: Path, prediction: FramePrediction, ensemble: Ensemble) -> dict[str, Path]:
    """Write the csv, json, label map and overlay of one prediction; return their paths."""
    frame = prediction.prepared.input
    paths = output_paths(out_dir, frame.stem)
    rows = landmark_rows(prediction, ensemble.landmark_names)
    write_text(paths["csv"], _csv_text(rows))
    write_json(paths["json"], _json_record(prediction, ensemble, rows, paths))
    _write_png(paths["seg"], prediction.labels)
    from silr import plots  # matplotlib: only when outputs are written

    figure = plots.prediction_overlay(prediction.prepared.frame, prediction.labels, prediction.xy_frame,
                                      prediction.present, ensemble.landmark_names, title=frame.stem)
    with atomic_path(paths["overlay"]) as tmp:
        figure.savefig(tmp, format="png")
    return paths


def _csv_text(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue()


def _json_record(prediction: FramePrediction, ensemble: Ensemble, rows: list[dict],
                 paths: dict[str, Path]) -> dict:
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
        "line_integral_size": [li_width, li_height],
        "frame_size": [size, size],
        # frame pixels per line-integral pixel along x and y (1.0: no resampling)
        "scale": [size / li_width, size / li_height],
        "resampling": prepared.resampling,
        "models": models,
        "ensemble": models if len(models) > 1 else None,
        "ensemble_method": ("mean of heatmap sigmoid and segmentation softmax probabilities, then decoded"
                            if len(models) > 1 else None),
        "landmarks": rows,
        "segmentation": {"file": paths["seg"].name, "grid": f"{size}x{size} frame",
                         "labels": {str(k): v for k, v in LABEL_NAMES.items()}},
        "outputs": {key: path.name for key, path in paths.items()},
    }


def _write_png(path: Path, labels: np.ndarray) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint8), mode="L").save(tmp, format="PNG")


# ------------------------------------------------------------------ the command

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="*", type=Path, metavar="INPUT",
                        help="PNG, TIFF, .npy or DeepFluoro HDF5 files (see above for how each is treated)")
    parser.add_argument("--model", action="append", type=Path, metavar="CKPT",
                        help="a best.pt checkpoint; repeat to ensemble several (probabilities averaged)")
    parser.add_argument("--out", type=Path, metavar="DIR", help="output directory")
    parser.add_argument("--raw", action="store_true",
                        help="PNG/TIFF/npy inputs are raw detector frames (bone dark): crop, log and "
                             "downsample as in ingestion (implied for full-resolution HDF5)")
    parser.add_argument("--specimen", action="append", type=int, metavar="N",
                        help="HDF5 inputs: paper specimen number 1..6 (repeatable; default all)")
    parser.add_argument("--frames", type=parse_frames, metavar="LIST",
                        help="HDF5 inputs and .npy stacks: frame indices, e.g. 0,1,2 or 0-9 (default all)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    parser.add_argument("--batch-size", type=int, default=16, metavar="B", help="frames per forward pass")
    parser.add_argument("--info", action="store_true", help="print the model card of each --model and exit")


def main(args: argparse.Namespace) -> int:
    from silr.device import select_device  # the one 'auto' / cuda / mps rule of the project

    _check_arguments(args)
    device = select_device(args.device, key="--device")
    ensemble = load_ensemble(args.model, device)
    if args.info:
        for path, card in zip(ensemble.paths, ensemble.cards):
            print(card.describe(path))
        return 0
    specs = unique_stems(list(enumerate_inputs(args.inputs, raw=args.raw, specimens=args.specimen,
                                               frames=args.frames)))
    rows, failures = run(ensemble, specs, args.out, args.batch_size)
    print(summary_table(rows, ensemble, args.out))
    if failures:
        print(f"\n{len(failures)} input(s) failed:", file=sys.stderr)
        for failure in failures:
            print(f"  {failure.source}: {failure.message}", file=sys.stderr)
        return 1
    return 0


def _check_arguments(args: argparse.Namespace) -> None:
    if not args.model:
        raise ConfigError("predict: --model CKPT is required (repeat it to ensemble several models)")
    if args.info:
        return
    if not args.inputs:
        raise ConfigError("predict: no INPUT given (PNG, TIFF, .npy or HDF5 files), or use --info")
    if args.out is None:
        raise ConfigError("predict: --out DIR is required")
    if args.batch_size < 1:
        raise ConfigError(f"predict: --batch-size must be >= 1, got {args.batch_size}")


@dataclass(frozen=True)
class SummaryRow:
    stem: str
    treated_as: str
    present: int
    total: int
    mean_score: float
    paths: dict[str, Path]


def run(ensemble: Ensemble, specs: Sequence[InputSpec | Failure], out_dir: Path,
        batch_size: int) -> tuple[list[SummaryRow], list[Failure]]:
    """Predict every input in batches; an input that fails is recorded and skipped."""
    from tqdm import tqdm

    failures = [s for s in specs if isinstance(s, Failure)]
    todo = [s for s in specs if isinstance(s, InputSpec)]
    preprocessing = ensemble.card.preprocessing
    rows: list[SummaryRow] = []
    with tqdm(total=len(todo), desc="predict", unit="frame", file=sys.stderr, disable=len(todo) < 2,
              leave=False) as bar:
        for batch in _batches(todo, batch_size):
            prepared = []
            for spec in batch:
                try:
                    prepared.append(prepare(spec.load(), ensemble.frame_size, preprocessing))
                except SilrError as exc:
                    failures.append(Failure(spec.source, str(exc)))
            for prediction in predict_frames(ensemble, prepared) if prepared else []:
                try:
                    paths = write_outputs(out_dir, prediction, ensemble)
                except SilrError as exc:
                    failures.append(Failure(prediction.prepared.input.source, str(exc)))
                    continue
                rows.append(SummaryRow(
                    prediction.prepared.input.stem, treatment(prediction.prepared.input, preprocessing),
                    int(prediction.present.sum()), len(prediction.present), float(prediction.score.mean()),
                    paths))
            bar.update(len(batch))
    return rows, failures


def _batches(items: Sequence, size: int) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def summary_table(rows: Sequence[SummaryRow], ensemble: Ensemble, out_dir: Path) -> str:
    """One line per predicted input: landmarks present, mean score over all landmarks, outputs."""
    models = ", ".join(str(p) for p in ensemble.paths)
    head = (f"ensemble of {len(ensemble.paths)} models (mean of probabilities): {models}"
            if len(ensemble.paths) > 1 else f"model: {models}")
    lines = [head, f"outputs in {out_dir}/ as <input>_landmarks.csv/.json, _seg.png, _overlay.png"]
    if not rows:
        lines.append("no input was predicted")
        return "\n".join(lines)
    width = max(len("input"), *(len(r.stem) for r in rows))
    kind_width = max(len("treated as"), *(len(r.treated_as) for r in rows))
    lines.append(f"{'input':<{width}}  {'treated as':<{kind_width}}  present  mean score  overlay")
    for r in rows:
        lines.append(f"{r.stem:<{width}}  {r.treated_as:<{kind_width}}  {r.present:>3}/{r.total:<3}  "
                     f"{r.mean_score:>10.3f}  {r.paths['overlay']}")
    return "\n".join(lines)
