"""`silr predict`: apply trained models (one, or an ensemble of several) to new frames.

  silr predict --model models/proposed/fold1/best.pt --out predictions frame.png
  silr predict --model models/proposed/fold*/best.pt --out predictions frame.png   (ensemble)
  silr predict --model models/proposed --out predictions frames/     (a folder: its fold*/best.pt)
  silr predict --model CKPT [CKPT ...] --info      (print every model card and exit)

--model takes one or more checkpoints (so a shell glob works, and it may be repeated);
a folder means its best.pt, or else the best.pt of each of its fold* folders, sorted.

How each input kind is treated:
  PNG / TIFF / JPEG         a line-integral image (bone bright), as a DeepFluoro viewer
  (8 or 16 bit)             shows it; with --raw: a raw detector frame (bone dark).
  DICOM (.dcm)              the same, after the modality LUT; MONOCHROME1 is inverted to
                            MONOCHROME2 and the pixel spacing is reported (pydicom).
  NumPy .npy (H,W)/(N,H,W)  the same; a stack gives one prediction per frame (--frames).
  preprocessed HDF5         (`<NN>/projs`, e.g. ipcai_2020_ds_8x.h5 or data/processed):
                            line-integral frames; choose with --specimen / --frames.
  full-resolution HDF5      (`<id>/projections/<NNN>/image/pixels`): raw detector frames,
                            so --raw is implied, with the file's rot-180-for-up honoured.
  a folder                  every supported file directly inside it, sorted by name.
A raw frame goes through ingestion's own crop, log and downsample with the model card's
values. A frame whose size is not the model's 180x180 frame is resampled to it (area
mean when shrinking, bilinear otherwise; the scale is recorded), and every predicted
landmark is mapped back to the input image's own pixel coordinates. A landmark decoded
outside the input image is reported absent (in_image false).

Several --model files (e.g. the six fold models) are ensembled: each averaged in the form
its loss trained it (the heatmaps' softmax for KL-trained maps, their values for MSE, their
standardised maps for NCC), with the segmentation softmax, the threshold scores and the
learned presence probabilities, then decoded once (silr.inference.predictor.Ensemble).

Presence: the model card's rule (silr.model.codec): `learned` for a model whose loss trained a
presence output (then `score` is its presence probability), else the data set authors'
`template` rule (score = the NCC of the peak's window with a Gaussian).

Outputs in --out, per input (stem = file stem; HDF5 adds _sNN_fNNN, a stack _fNNN):
  <stem>_landmarks.csv/.json  name, x, y (input pixels), frame_x, frame_y (180x180
                              frame), present, in_image, score (of the presence rule),
                              visibility (0 / 0.5 / 1); the json also: every presence
                              rule's score, the models' card facts, warnings, timing
  <stem>_seg.png              the label map on the input's own pixel grid, an indexed
                              (palette) PNG: pixel index = label value 0..6, palette =
                              the project's bone colours (silr.core.anatomy.LABEL_COLORS)
  <stem>_overlay.png          the input at its own size and aspect, segmentation tint,
                              every landmark (present, absent, outside) named, a legend

Warnings (one `silr: warning: <input>: ...` line each on stderr, and in the json). The
network sees each frame min-max scaled to [0, 1]; on the training frames (the synthetic
phantom's 8x frames, 0th..100th percentile) the scaled frame's median lies in
0.38..0.80 and its standard deviation in 0.13..0.25, and predicted bone is 0.10..0.29
brighter than predicted background. So:
  - statistics: median outside [0.25, 0.90] or standard deviation outside [0.08, 0.32]
    (the training range widened by about 0.1 / 0.05): the frame is unlike the training
    frames;
  - polarity: every frame is also run inverted (1 - scaled frame, one more forward pass);
    when the inverted frame's mean landmark score beats the frame's own by more than
    POLARITY_MARGIN = 0.05, the input is most likely bone-dark (raw or inverted) given as a
    line integral. Also: predicted bone (labels 1..6, at least 1 % of the frame, as is
    background) darker on average than predicted background;
  - presence: more than half of the landmarks called absent, or (learned presence) a mean
    presence probability below 0.5: the frame is unlike the training frames (another
    modality, an inverted image, little of the pelvis in view);
  - DICOM: a Modality other than XA, RF, DX or CR (projection radiographs), e.g. CT or MR;
  - --raw on a frame whose largest value is below 1 % of the card's I0: most likely an
    already processed frame (raw detector frames reach close to I0 in air); intensities
    clipped before the log are reported the same way;
  - an ensemble whose models were trained with different losses.
A constant frame (all pixels equal, e.g. all zero) is a failure: nothing to predict, as is
an image with a side below 32 px (e.g. a 2 x 14 array of coordinates given as .npy).
Hostile inputs (decompression bombs, frames beyond silr.data.imageio's size limits, files
that do not decode, out of memory) fail alone with a one-line reason; the batch goes on.

Exit status: 0 all inputs predicted; 1 some inputs failed (listed at the end);
2 nothing could run (bad checkpoint, mismatched models, bad arguments, unusable --out).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import os
import sys
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from silr.core import coords, limits
from silr.core.anatomy import LABEL_COLORS, LABEL_NAMES
from silr.core.errors import CheckpointError, ConfigError, DataError, OutputError, SilrError
from silr.core.io import atomic_path, json_text
from silr.inference.inputs import (
    Failure,
    InputSpec,
    PreparedFrame,
    enumerate_inputs,
    frame_to_input,
    labels_to_input,
    parse_frames,
    prepare,
    treatment,
    unique_stems,
)

if TYPE_CHECKING:  # torch: imported where models load (see _load)
    from silr.inference.predictor import Ensemble

# The warning rules of the module docstring.
STAT_MEDIAN = (0.25, 0.90)
STAT_STD = (0.08, 0.32)
POLARITY_MIN_FRACTION = 0.01
RAW_MAX_FRACTION_OF_I0 = 0.01
POLARITY_MARGIN = 0.05
# The presence rule of the module docstring: more than this share of landmarks absent, or a mean
# learned presence below PRESENCE_COLLAPSE, is a frame unlike the training frames.
ABSENT_MAJORITY = 0.5
PRESENCE_COLLAPSE = 0.5
# The decoded input pixels a batch may hold, as a share of silr.core.limits' memory budget: the rest
# is left to the models, the label maps on the input grid and the overlays being drawn.
HELD_INPUT_SHARE = 0.25

# ------------------------------------------------------------------ containers

@dataclass(frozen=True)
class FramePrediction:
    prepared: PreparedFrame
    xy_frame: np.ndarray  # (L, 2) in the 180x180 frame
    xy_input: np.ndarray  # (L, 2) in the input image's own pixels
    present: np.ndarray  # (L,) bool: predicted present and inside the input image
    in_image: np.ndarray  # (L,) bool: the decoded position lies inside the input image
    score: np.ndarray  # (L,) the presence rule's score (learned: presence probability; template: NCC)
    visibility: np.ndarray  # (L,) discrete visibility in {0, 0.5, 1}
    labels: np.ndarray  # uint8 (frame, frame)
    warnings: tuple[str, ...] = ()
    seconds: float = 0.0  # this frame's share of reading, preparing and running the models
    inverted_score: float | None = None  # mean landmark score of the same frame inverted
    # (L,) each presence rule's score, NaN where a rule does not apply (silr.model.codec)
    rule_scores: dict[str, np.ndarray] = field(default_factory=dict)


# ------------------------------------------------------------------ models and their cards

def resolve_models(paths: Sequence[Path]) -> list[Path]:
    """--model values -> checkpoint files: a folder means its best.pt, else its fold*/best.pt (sorted)."""
    resolved: list[Path] = []
    for path in paths:
        if not path.is_dir():
            if not path.is_file():  # checked here, before anything loads
                raise CheckpointError(f"{path}: no such checkpoint file")
            resolved.append(path)
            continue
        if (path / "best.pt").is_file():
            resolved.append(path / "best.pt")
            continue
        folds = sorted((p for p in path.glob("fold*/best.pt") if p.is_file()), key=_natural_key)
        if not folds:
            raise ConfigError(f"predict: --model {path} is a folder without best.pt or fold*/best.pt")
        resolved.extend(folds)
    return resolved


def _natural_key(path: Path) -> tuple:
    digits = "".join(c for c in path.parent.name if c.isascii() and c.isdigit())
    return (int(digits) if digits else -1, str(path))


def data_kind(data_source: str) -> tuple[str, bool]:
    """(kind, guessed) of the training data a card names: the file's silr-data-kind root attribute
    where the file can be read here, else a guess from its name (`guessed` says which)."""
    from silr.data import deepfluoro

    if not data_source:
        return "unknown", False
    path = Path(data_source)
    if path.is_file():
        try:
            with deepfluoro.open_hdf5(path) as f:
                if deepfluoro.ATTR_DATA_KIND in f.attrs:
                    value = f.attrs[deepfluoro.ATTR_DATA_KIND]
                    return (value.decode() if isinstance(value, bytes) else str(value)), False
        except (DataError, OSError, ValueError):
            pass  # unreadable here: fall back to the name, said to be a guess
    name = path.name.lower()
    if "synth" in name or "phantom" in name:
        return "synthetic", True
    if "deepfluoro" in name or "ipcai" in name:
        return "deepfluoro", True
    return "unknown", False


def card_facts(path: Path, card) -> dict:
    """What predict reports about one model, all read from its card (a checkpoint file's date says
    when it was copied or checked out, not when it was trained, so none is reported)."""
    kind, guessed = data_kind(card.data_source)
    return {"path": str(path), "fold": card.fold, "loss": card.loss.name if card.loss else None,
            "val_score_px": card.val_score_px, "epoch": card.epoch, "epochs_planned": card.epochs_planned or None,
            "finished": card.finished, "data_source": card.data_source or None, "data_kind": kind,
            "data_kind_guessed": guessed}


_DATA_KIND_NAMES = {"synthetic": "the synthetic phantom", "deepfluoro": "DeepFluoro"}


def describe_facts(facts: dict) -> str:
    """One line: fold, loss, validation error and the training data."""
    if facts["val_score_px"] is not None:
        planned = f" of {facts['epochs_planned']}" if facts.get("epochs_planned") else ""
        score = f"validation error {facts['val_score_px']:.2f} px (180x180 frame) at epoch {facts['epoch']}{planned}"
    else:
        score = "no validation error recorded"
    if facts.get("finished") is False:
        score += " (run not finished)"
    kind = _DATA_KIND_NAMES.get(facts["data_kind"], "data of unknown kind")
    source = f" ({facts['data_source']}{', kind guessed from its name' if facts['data_kind_guessed'] else ''})" \
        if facts["data_source"] else ""
    return f"{facts['path']}: fold {facts['fold']}, loss {facts['loss']}, {score}; trained on {kind}{source}"


# ------------------------------------------------------------------ checks

def frame_warnings(prepared: PreparedFrame) -> list[str]:
    """The statistics rule of the module docstring, on the frame the network sees."""
    frame = prepared.frame.astype(np.float64)
    unit = (frame - frame.min()) / (frame.max() - frame.min())
    median, std = float(np.median(unit)), float(unit.std())
    found = []
    if not STAT_MEDIAN[0] <= median <= STAT_MEDIAN[1] or not STAT_STD[0] <= std <= STAT_STD[1]:
        found.append(f"intensity statistics unlike the training frames (scaled median {median:.2f}, "
                     f"expected {STAT_MEDIAN[0]}..{STAT_MEDIAN[1]}; standard deviation {std:.2f}, expected "
                     f"{STAT_STD[0]}..{STAT_STD[1]}): treat the prediction with caution")
    found += resize_warning(prepared)
    return found


# A resize whose x and y scales differ by more than this share stretches the anatomy.
ANISOTROPY_TOLERANCE = 0.02


def resize_warning(prepared: PreparedFrame) -> list[str]:
    """A non-uniform resize to the model's square frame: the anatomy is stretched."""
    li_width, li_height = prepared.line_integral_size
    size = prepared.frame.shape[0]
    scale_x, scale_y = size / li_width, size / li_height
    if abs(scale_x / scale_y - 1.0) <= ANISOTROPY_TOLERANCE:
        return []
    return [f"resized non-uniformly to the model's {size} x {size} frame (scale {scale_x:.3f} along x, "
            f"{scale_y:.3f} along y, from {li_width} x {li_height} px): the anatomy is stretched; a square "
            f"crop keeps its shape"]


def polarity_warning(prepared: PreparedFrame, labels: np.ndarray) -> list[str]:
    """Bone darker than background in the frame the network saw: an inverted (bone-dark) image."""
    frame = prepared.frame.astype(np.float64)
    bone = labels > 0
    fraction = float(bone.mean())
    if not POLARITY_MIN_FRACTION <= fraction <= 1 - POLARITY_MIN_FRACTION:
        return []
    unit = (frame - frame.min()) / (frame.max() - frame.min())
    contrast = float(unit[bone].mean() - unit[~bone].mean())
    if contrast >= 0:
        return []
    hint = "a raw detector frame needs --raw" if not prepared.input.raw else "is it already processed?"
    return [f"predicted bone is darker than background (contrast {contrast:+.2f}; training frames "
            f"+0.10..+0.29): the image looks inverted (bone dark), unlike the line-integral training frames; "
            f"{hint}"]


def inversion_warning(prediction: FramePrediction) -> list[str]:
    """The inverted frame explains the models' landmarks better than the frame itself."""
    own = float(prediction.score.mean())
    if prediction.inverted_score is None or prediction.inverted_score <= own + POLARITY_MARGIN:
        return []
    return [f"the image looks inverted (bone dark): the models' mean landmark score is {own:.2f} on it and "
            f"{prediction.inverted_score:.2f} on its inverse; training frames are line integrals (bone bright)"
            f"{'; a raw detector frame needs --raw' if not prediction.prepared.input.raw else ''}"]


def presence_warning(prediction: FramePrediction, rule: str) -> list[str]:
    """Most landmarks called absent, or a learned presence whose mean collapses: the frame is
    unlike the training frames (another modality, an inverted or empty image, a frame that
    shows little of the pelvis)."""
    total = len(prediction.present)
    absent = int(total - prediction.present.sum())
    mean = float(np.mean(prediction.score))
    collapsed = rule == "learned" and mean < PRESENCE_COLLAPSE
    if absent <= ABSENT_MAJORITY * total and not collapsed:
        return []
    score = f"mean presence {mean:.2f}" if rule == "learned" else f"mean {rule} score {mean:.2f}"
    return [f"{absent} of {total} landmarks are called absent ({score}, presence rule {rule}): the frame looks "
            f"unlike the training frames (another modality, an inverted image, or little of the pelvis in view); "
            f"do not trust its landmarks"]


def _raw_warnings(spec_frame, preprocessing) -> list[str]:
    if not spec_frame.raw:
        return []
    top = float(spec_frame.pixels.max())
    if top < RAW_MAX_FRACTION_OF_I0 * preprocessing.i0:
        return [f"--raw: the largest value is {top:g}, below {RAW_MAX_FRACTION_OF_I0:.0%} of the model's "
                f"I0 = {preprocessing.i0:g}; this looks like an already processed frame (leave out --raw)"]
    return []


# ------------------------------------------------------------------ prediction

def predict_frames(ensemble: Ensemble, prepared: Sequence[PreparedFrame]) -> list[FramePrediction]:
    """Run the ensemble on prepared frames (one batch) and decode every landmark."""
    stack = np.stack([p.frame for p in prepared]).astype(np.float32)
    decoded = ensemble.decode(stack)
    low, high = stack.min(axis=(1, 2), keepdims=True), stack.max(axis=(1, 2), keepdims=True)
    inverted_scores = ensemble.decode(high + low - stack).score.mean(axis=1)
    size = ensemble.frame_size
    preprocessing = ensemble.card.preprocessing
    results = []
    for i, item in enumerate(prepared):
        xy_input = frame_to_input(decoded.xy[i], item, size, preprocessing)
        height, width = item.input.pixels.shape
        in_image = coords.in_frame(xy_input, width, height)
        results.append(FramePrediction(
            prepared=item, xy_frame=decoded.xy[i], xy_input=xy_input,
            present=decoded.present[i] & in_image, in_image=in_image, score=decoded.score[i],
            visibility=np.where(in_image, decoded.visibility_hat[i], 0.0), labels=decoded.labels[i],
            inverted_score=float(inverted_scores[i]),
            rule_scores={"threshold": decoded.threshold_score[i], "template": decoded.template_ncc[i],
                         "learned": decoded.presence_prob[i]}))
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
            "present": bool(prediction.present[i]), "in_image": bool(prediction.in_image[i]),
            "score": float(prediction.score[i]), "visibility": float(prediction.visibility[i]),
        })
    return rows


def write_outputs(out_dir: Path, prediction: FramePrediction, ensemble: Ensemble,
                  facts: Sequence[dict]) -> dict[str, Path]:
    """Write the csv, json, label map and overlay of one prediction; return their paths.

    All four are written to temporary names first and published together only when every one
    is complete (the json last, so a json means a complete set); a failure leaves none."""
    frame = prediction.prepared.input
    paths = output_paths(out_dir, frame.stem)
    rows = landmark_rows(prediction, ensemble.landmark_names)
    labels_input = labels_to_input(prediction.labels, prediction.prepared, ensemble.card.preprocessing)
    # `with` exits last-in first-out: the overlay is published first and the json last
    with atomic_path(paths["json"]) as json_tmp, atomic_path(paths["csv"]) as csv_tmp, \
            atomic_path(paths["seg"]) as seg_tmp, atomic_path(paths["overlay"]) as overlay_tmp:
        csv_tmp.write_text(_csv_text(rows), encoding="utf-8")
        json_tmp.write_text(json_text(_json_record(prediction, ensemble, rows, paths, facts)), encoding="utf-8")
        write_label_png(seg_tmp, labels_input)
        figure = _overlay_figure(prediction, labels_input, ensemble, facts)
        figure.savefig(overlay_tmp, format="png", metadata={"Software": None})
    return paths


def remove_outputs(out_dir: Path, stem: str) -> None:
    """Remove an earlier run's outputs of `stem` (regular files only), so that an input reported
    as failed has none: a stale csv beside a failure would read as this run's answer."""
    for path in output_paths(out_dir, stem).values():
        with contextlib.suppress(OSError):
            if path.is_file() and not path.is_symlink():
                path.unlink()


def _overlay_figure(prediction: FramePrediction, labels_input: np.ndarray, ensemble: Ensemble,
                    facts: Sequence[dict]):
    from silr.evaluation import plots  # matplotlib: only when outputs are written

    frame = prediction.prepared.input
    kinds = sorted({f["data_kind"] for f in facts})
    losses = sorted({str(f["loss"]) for f in facts})
    subtitle = (f"{'ensemble of ' + str(len(facts)) + ' models' if len(facts) > 1 else 'model'} trained on "
                f"{' + '.join({'synthetic': 'the synthetic phantom'}.get(k, k) for k in kinds)}, loss "
                f"{', '.join(losses)}; {treatment(frame, ensemble.card.preprocessing)}")
    pixels, labels, xy = frame.pixels, labels_input, prediction.xy_input
    if frame.rotate:
        # A full-resolution frame stored upside down (rot-180-for-up) is shown upright; the csv
        # and json keep the file's own pixel coordinates.
        height, width = pixels.shape
        pixels, labels = pixels[::-1, ::-1], labels[::-1, ::-1]
        xy = np.column_stack([width - 1 - xy[:, 0], height - 1 - xy[:, 1]])
        subtitle += "\nshown turned 180 degrees (upright); the csv/json give the file's own pixel coordinates"
    if prediction.warnings:
        subtitle += f"\nWARNING: {len(prediction.warnings)} warning(s), see the json"
    return plots.prediction_overlay(pixels, labels, xy, prediction.present, prediction.in_image,
                                    ensemble.landmark_names, title=frame.stem, subtitle=subtitle)


def write_label_png(path: Path, labels: np.ndarray) -> None:
    """An indexed PNG: pixel index = label value, palette = silr.core.anatomy.LABEL_COLORS."""
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
                 paths: dict[str, Path], facts: Sequence[dict]) -> dict:
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
        "ensemble_method": ("mean of each model's heatmaps in the form its loss trained (KL: softmax), "
                            "segmentation softmax, threshold scores and presence probabilities, then decoded"
                            if len(models) > 1 else None),
        "presence_rule": ensemble.codec.presence,
        "warnings": list(prediction.warnings),
        "inverted_mean_score": prediction.inverted_score,
        "seconds": round(prediction.seconds, 4),
        "landmarks": rows,
        # every rule's score per landmark (null where a rule does not apply to these models)
        "presence_scores": {rule: [float(v) if np.isfinite(v) else None for v in values]
                            for rule, values in prediction.rule_scores.items()},
        "segmentation": {"file": paths["seg"].name, "grid": f"input pixels, {width}x{height}",
                         "format": "indexed PNG: pixel index = label value, palette = the bone colours",
                         "resampling": "nearest frame pixel of each input pixel centre; 0 outside the frame",
                         "labels": {str(k): v for k, v in LABEL_NAMES.items()}},
        "outputs": {key: path.name for key, path in paths.items()},
    }


# ------------------------------------------------------------------ the command

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="*", type=Path, metavar="INPUT",
                        help="PNG, TIFF, JPEG, DICOM, .npy or DeepFluoro HDF5 files, or folders of them")
    parser.add_argument("--model", nargs="+", action="extend", type=Path, metavar="CKPT",
                        help="one or more best.pt checkpoints (several are ensembled: probabilities averaged); "
                             "a folder means its best.pt or its fold*/best.pt; may be repeated")
    parser.add_argument("--out", type=Path, metavar="DIR", help="output directory")
    parser.add_argument("--raw", action="store_true",
                        help="PNG/TIFF/JPEG/DICOM/npy inputs are raw detector frames (bone dark): crop, log and "
                             "downsample as in ingestion (implied for full-resolution HDF5)")
    parser.add_argument("--specimen", action="append", type=int, metavar="N",
                        help="HDF5 inputs: paper specimen number 1..6 (repeatable; default all)")
    parser.add_argument("--frames", type=parse_frames, metavar="LIST",
                        help="HDF5 inputs and .npy stacks: frame indices, e.g. 0,1,2 or 0-9 (default all)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    parser.add_argument("--batch-size", type=int, default=16, metavar="B", help="frames per forward pass")
    parser.add_argument("--info", action="store_true",
                        help="print one line per --model, what the models share, and exit")
    parser.add_argument("--full", action="store_true", help="with --info: print every model card in full")


def warn(message: str) -> None:
    print(f"silr: warning: {message}", file=sys.stderr)


def main(args: argparse.Namespace) -> int:
    _check_arguments(args)
    models = resolve_models(args.model)
    if args.info:
        return _print_info(models, full=args.full)
    check_output_dir(args.out)
    # The inputs are listed (and their headers checked) before any model is loaded: a missing or
    # unreadable input is reported in a second, not after the models' start-up.
    specs = unique_stems(list(enumerate_inputs(args.inputs, raw=args.raw, specimens=args.specimen,
                                               frames=args.frames)))
    if not any(isinstance(spec, InputSpec) for spec in specs):
        return _report_failures([s for s in specs if isinstance(s, Failure)], models_loaded=False)
    ensemble = _load(models, args.device)
    facts = [card_facts(path, card) for path, card in zip(ensemble.paths, ensemble.cards)]
    for path, card in zip(ensemble.paths, ensemble.cards):
        note = card.unfinished_note()
        if note is not None:
            warn(f"{path}: {note}: its predictions are those of a partly trained model")
    losses = sorted({str(f["loss"]) for f in facts})
    if len(losses) > 1:
        warn(f"the ensemble mixes models trained with different losses ({', '.join(losses)}); their heatmaps "
             f"mean different things, so the average may not")
    rows, failures = run(ensemble, specs, args.out, args.batch_size, facts)
    print(summary_table(rows, ensemble, args.out, facts))
    return _report_failures(failures)


def _load(models: Sequence[Path], device_name: str) -> Ensemble:
    # torch and the network code load here, not at import: `silr predict --help` and a run whose
    # inputs all fail their checks never pay for them
    from silr.core.device import select_device
    from silr.inference.predictor import load_ensemble

    return load_ensemble(models, select_device(device_name, key="--device"))


def _print_info(models: Sequence[Path], full: bool = False) -> int:
    """One line per model, then what the models share and where they differ; `full`: every card.
    Only the cards are read: no network is built."""
    from silr.model.checkpoint import read_checkpoint

    cards = [read_checkpoint(path)["card"] for path in models]
    if full:
        for path, card in zip(models, cards):
            print(card.describe(path))
        return 0
    for path, card in zip(models, cards):
        print(describe_facts(card_facts(path, card)))
    shared, differing = card_fields(cards)
    print(f"shared by the {len(cards)} models:" if len(cards) > 1 else "model:")
    for key, value in shared.items():
        print(f"  {key}: {value}")
    if differing:
        print(f"differing between them (besides fold and validation): {', '.join(differing)}")
    print("(--info --full prints every card in full)")
    return 0


# The card fields --info summarises: what a user needs to know to trust an ensemble's models.
INFO_FIELDS = ("loss.name", "loss.weights", "model.backbone", "model.decoder_channels", "model.presence_head",
               "heatmap.sigma", "heatmap.stride", "heatmap.refine", "heatmap.presence", "preprocessing.downsample",
               "input_size", "frame_size", "data_source", "data_hash", "silr_version")
# Fields that differ between the folds of one study by design.
PER_MODEL_FIELDS = ("fold", "val_score_px", "epoch", "params_hash", "params", "finished", "epochs_planned")


def _flat(mapping, prefix: str = "") -> dict:
    flat = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and not name.endswith("weights"):
            flat.update(_flat(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _format_value(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {v:g}" if isinstance(v, (int, float)) else f"{k} {v}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


def card_fields(cards) -> tuple[dict[str, str], list[str]]:
    """(the INFO_FIELDS every card has alike, formatted; the other fields that differ between cards)."""
    flats = [_flat(card.to_dict()) for card in cards]
    keys = [k for k in flats[0] if all(k in f for f in flats)]
    same = {k for k in keys if all(f[k] == flats[0][k] for f in flats)}
    shared = {k: _format_value(flats[0][k]) for k in INFO_FIELDS if k in same}
    differing = sorted(k for k in set().union(*flats) if k not in same and k.split(".")[0] not in PER_MODEL_FIELDS)
    return shared, differing


def _report_failures(failures: Sequence[Failure], models_loaded: bool = True) -> int:
    if not failures:
        return 0
    print(f"\n{len(failures)} input(s) failed{'' if models_loaded else ' (no model was loaded)'}:",
          file=sys.stderr)
    for failure in failures:
        message = failure.message.removeprefix(f"{failure.source}: ")
        print(f"  {failure.source}: {message}", file=sys.stderr)
    return 1


def _check_arguments(args: argparse.Namespace) -> None:
    if not args.model:
        raise ConfigError("predict: --model CKPT is required (one or more checkpoints, or a folder)")
    if args.info:
        return
    if not args.inputs:
        raise ConfigError("predict: no INPUT given (PNG, TIFF, JPEG, DICOM, .npy or HDF5 files, or folders), "
                          "or use --info")
    if args.out is None:
        raise ConfigError("predict: --out DIR is required")
    if args.batch_size < 1:
        raise ConfigError(f"predict: --batch-size must be >= 1, got {args.batch_size}")


def check_output_dir(out_dir: Path) -> None:
    """--out must be a directory, or creatable as one, that we can write: checked before any work
    (nothing is created here; a run that stops at the models leaves no empty folder)."""
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


@dataclass(frozen=True)
class SummaryRow:
    stem: str
    treated_as: str
    present: int
    total: int
    mean_score: float
    paths: dict[str, Path]
    seconds: float = 0.0
    warnings: tuple[str, ...] = field(default=())


def _load_and_prepare(spec: InputSpec, ensemble: Ensemble) -> tuple[PreparedFrame, list[str]]:
    """Read and prepare one input; SilrError (with a one-line reason) for anything that fails."""
    from silr.core.errors import DataError, SilrWarning

    preprocessing = ensemble.card.preprocessing
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", SilrWarning)
            frame = spec.load()
            if float(frame.pixels.max()) == float(frame.pixels.min()):
                raise DataError(f"{spec.source}: constant frame (every pixel is {float(frame.pixels.min()):g}): "
                                f"nothing to predict")
            found = _raw_warnings(frame, preprocessing)
            prepared = prepare(frame, ensemble.frame_size, preprocessing)
        if float(np.ptp(prepared.frame)) == 0.0:
            raise DataError(f"{spec.source}: the prepared frame is constant: nothing to predict")
    except SilrError:
        raise
    except MemoryError:
        raise DataError(f"{spec.source}: out of memory while reading or preparing it") from None
    except Exception as exc:  # a hostile or odd file fails alone, in one line, never a traceback
        detail = (str(exc).splitlines() or [""])[0][:200]
        raise DataError(f"{spec.source}: cannot be read ({type(exc).__name__}: {detail})") from None
    found += [str(w.message) for w in caught if issubclass(w.category, SilrWarning)]
    return prepared, found + frame_warnings(prepared)


def _prepared_batches(todo: Sequence[InputSpec], ensemble: Ensemble, batch_size: int,
                      failures: list[Failure], bar) -> Iterator[list[tuple[PreparedFrame, list[str], float]]]:
    """Load and prepare inputs into batches of at most `batch_size` frames whose decoded pixels
    stay under HELD_INPUT_SHARE of the memory budget (an 8000 x 8000 frame holds 256 MB as
    float32; sixteen of them in one batch would need 4 GiB before the overlays are drawn)."""
    budget = HELD_INPUT_SHARE * limits.memory_budget_bytes()
    batch: list[tuple[PreparedFrame, list[str], float]] = []
    held = 0
    for spec in todo:
        start = time.perf_counter()
        try:
            item, item_warnings = _load_and_prepare(spec, ensemble)
        except SilrError as exc:
            failures.append(Failure(spec.source, str(exc), spec.stem))
            bar.update(1)
            continue
        batch.append((item, item_warnings, time.perf_counter() - start))
        held += item.input.pixels.nbytes
        if len(batch) >= batch_size or held >= budget:
            yield batch
            batch, held = [], 0
    if batch:
        yield batch


def _finite_prediction(prediction: FramePrediction) -> bool:
    return bool(np.isfinite(prediction.xy_frame).all() and np.isfinite(prediction.score).all())


def run(ensemble: Ensemble, specs: Sequence[InputSpec | Failure], out_dir: Path,
        batch_size: int, facts: Sequence[dict] = ()) -> tuple[list[SummaryRow], list[Failure]]:
    """Predict every input in memory-bounded batches; an input that fails is recorded, skipped,
    and left without outputs (an earlier run's outputs of its name are removed)."""
    from tqdm import tqdm

    failures = [s for s in specs if isinstance(s, Failure)]
    todo = [s for s in specs if isinstance(s, InputSpec)]
    rows: list[SummaryRow] = []
    with tqdm(total=len(todo), desc="predict", unit="frame", file=sys.stderr, disable=len(todo) < 2,
              leave=False) as bar:
        for batch in _prepared_batches(todo, ensemble, batch_size, failures, bar):
            start = time.perf_counter()
            predictions = predict_frames(ensemble, [item for item, _, _ in batch])
            share = (time.perf_counter() - start) / len(batch)
            for prediction, (_, item_warnings, own) in zip(predictions, batch):
                row = _finish(prediction, item_warnings, own + share, ensemble, out_dir, facts, failures)
                if row is not None:
                    rows.append(row)
                bar.update(1)
    for failure in failures:
        if failure.stem:
            remove_outputs(out_dir, failure.stem)
    return rows, failures


def _finish(prediction: FramePrediction, item_warnings: list[str], seconds: float, ensemble: Ensemble,
            out_dir: Path, facts: Sequence[dict], failures: list[Failure]) -> SummaryRow | None:
    """Warn about and write one prediction; None (and a Failure recorded) when it cannot be."""
    import dataclasses

    frame = prediction.prepared.input
    if not _finite_prediction(prediction):
        failures.append(Failure(frame.source, f"{frame.source}: the models' output is not finite (NaN or inf): "
                                              f"the checkpoint or the frame is broken; nothing written", frame.stem))
        return None
    item_warnings = (item_warnings + inversion_warning(prediction)
                     + polarity_warning(prediction.prepared, prediction.labels)
                     + presence_warning(prediction, ensemble.codec.presence))
    for message in item_warnings:
        warn(f"{frame.source}: {message}")
    start = time.perf_counter()
    prediction = dataclasses.replace(prediction, warnings=tuple(item_warnings), seconds=seconds)
    try:
        paths = write_outputs(out_dir, prediction, ensemble, facts)
    except SilrError as exc:
        failures.append(Failure(frame.source, str(exc), frame.stem))
        return None
    except MemoryError:
        failures.append(Failure(frame.source, f"{frame.source}: out of memory while writing its outputs "
                                              f"({limits.MEMORY_BUDGET_ENV} sets the budget); nothing written",
                                frame.stem))
        return None
    preprocessing = ensemble.card.preprocessing
    return SummaryRow(frame.stem, treatment(frame, preprocessing), int(prediction.present.sum()),
                      len(prediction.present), float(prediction.score.mean()), paths,
                      seconds + time.perf_counter() - start, tuple(item_warnings))


def _batches(items: Sequence, size: int) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def summary_table(rows: Sequence[SummaryRow], ensemble: Ensemble, out_dir: Path,
                  facts: Sequence[dict] = ()) -> str:
    """The models' card facts, then one line per predicted input: landmarks present, mean score
    over all landmarks, seconds for the frame (read, prepare, its share of the models, write),
    warnings, overlay."""
    head = (f"ensemble of {len(ensemble.paths)} models (mean of probabilities):"
            if len(ensemble.paths) > 1 else "model:")
    lines = [head] + [f"  {describe_facts(f)}" for f in facts]
    if not facts:
        lines += [f"  {p}" for p in ensemble.paths]
    lines.append(f"outputs in {out_dir}/ as <input>_landmarks.csv/.json, _seg.png (input grid), _overlay.png")
    if not rows:
        lines.append("no input was predicted")
        return "\n".join(lines)
    width = max(len("input"), *(len(r.stem) for r in rows))
    kind_width = max(len("treated as"), *(len(r.treated_as) for r in rows))
    lines.append(f"{'input':<{width}}  {'treated as':<{kind_width}}  present  mean score  seconds  warnings  "
                 f"overlay")
    for r in rows:
        lines.append(f"{r.stem:<{width}}  {r.treated_as:<{kind_width}}  {r.present:>3}/{r.total:<3}  "
                     f"{r.mean_score:>10.3f}  {r.seconds:>7.2f}  {len(r.warnings):>8}  {r.paths['overlay']}")
    total = sum(r.seconds for r in rows)
    lines.append(f"{len(rows)} frame(s) in {total:.2f} s ({total / len(rows):.2f} s per frame)")
    return "\n".join(lines)
