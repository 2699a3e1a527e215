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

Presence: the model card's rule (silr.model.codec). For the models `silr train` writes it is
`shape`: the fold's shape prior, fitted to the landmarks the base rule calls present, calls a
landmark present when its fitted position lies in the frame; the base rule is `learned` for a
model whose loss trained a presence output (then `score` is its calibrated presence
probability), else the data set authors' `template` rule (score = the NCC of the peak's window
with a Gaussian). An ensemble decodes with its first model's shape prior.

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
import dataclasses
import functools
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from silr.core import limits
from silr.core.errors import ConfigError, SilrError
from silr.inference.batches import prepared_batches
from silr.inference.checks import (
    PresenceRule,
    ensemble_warnings,
    is_finite,
    prediction_warnings,
)
from silr.inference.frame_prediction import FramePrediction, predict_inputs
from silr.inference.inputs import (
    Failure,
    InputSpec,
    enumerate_inputs,
    parse_frames,
    treatment,
    unique_stems,
)
from silr.inference.model_info import (
    DATA_KIND_NAMES,
    ModelFacts,
    card_facts,
    print_info,
    resolve_models,
)
from silr.inference.writers import (
    SummaryRow,
    check_output_dir,
    remove_outputs,
    summary_table,
    write_outputs,
)

if TYPE_CHECKING:  # torch and matplotlib: imported where models load and overlays are drawn
    from matplotlib.figure import Figure

    from silr.inference.predictor import Ensemble

__all__ = ["add_arguments", "main", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="*", type=Path, metavar="INPUT",
                        help="PNG, TIFF, JPEG, DICOM, .npy or DeepFluoro HDF5 files, or folders "
                             "of them")
    parser.add_argument("--model", nargs="+", action="extend", type=Path, metavar="CKPT",
                        help="one or more best.pt checkpoints (several are ensembled: "
                             "probabilities averaged); a folder means its best.pt or its "
                             "fold*/best.pt; may be repeated")
    parser.add_argument("--out", type=Path, metavar="DIR", help="output directory")
    parser.add_argument("--raw", action="store_true",
                        help="PNG/TIFF/JPEG/DICOM/npy inputs are raw detector frames (bone "
                             "dark): crop, log and downsample as in ingestion (implied for "
                             "full-resolution HDF5)")
    parser.add_argument("--specimen", action="append", type=int, metavar="N",
                        help="HDF5 inputs: paper specimen number 1..6 (repeatable; default all)")
    parser.add_argument("--frames", type=parse_frames, metavar="LIST",
                        help="HDF5 inputs and .npy stacks: frame indices, e.g. 0,1,2 or 0-9 "
                             "(default all)")
    parser.add_argument("--device", default="auto",
                        help="auto (default), cpu, cuda, cuda:N or mps")
    parser.add_argument("--batch-size", type=int, default=16, metavar="B",
                        help="frames per forward pass")
    parser.add_argument("--info", action="store_true",
                        help="print one line per --model, what the models share, and exit")
    parser.add_argument("--full", action="store_true",
                        help="with --info: print every model card in full")


def warn(message: str) -> None:
    print(f"silr: warning: {message}", file=sys.stderr)


def main(args: argparse.Namespace) -> int:
    _check_arguments(args)
    models = resolve_models(args.model)
    if args.info:
        return print_info(models, full=args.full)
    check_output_dir(args.out)
    # The inputs are listed (and their headers checked) before any model is loaded: a missing or
    # unreadable input is reported in a second, not after the models' start-up.
    specs = unique_stems(list(enumerate_inputs(args.inputs, raw=args.raw,
                                               specimens=args.specimen, frames=args.frames)))
    if not any(isinstance(spec, InputSpec) for spec in specs):
        return _report_failures([s for s in specs if isinstance(s, Failure)], models_loaded=False)
    ensemble = _load(models, args.device)
    facts = [card_facts(path, card) for path, card in zip(ensemble.paths, ensemble.cards)]
    for message in ensemble_warnings(ensemble, facts):
        warn(message)
    rows, failures = run(ensemble, specs, args.out, args.batch_size, facts)
    print(summary_table(rows, ensemble, args.out, facts))
    return _report_failures(failures)


def _load(models: Sequence[Path], device_name: str) -> Ensemble:
    # torch and the network code load here, not at import: `silr predict --help` and a run whose
    # inputs all fail their checks never pay for them
    from silr.core.device import select_device
    from silr.inference.predictor import load_ensemble

    return load_ensemble(models, select_device(device_name, key="--device"))


def _check_arguments(args: argparse.Namespace) -> None:
    if not args.model:
        raise ConfigError("predict: --model CKPT is required (one or more checkpoints, or a "
                          "folder)")
    if args.info:
        return
    if not args.inputs:
        raise ConfigError("predict: no INPUT given (PNG, TIFF, JPEG, DICOM, .npy or HDF5 files, "
                          "or folders), or use --info")
    if args.out is None:
        raise ConfigError("predict: --out DIR is required")
    if args.batch_size < 1:
        raise ConfigError(f"predict: --batch-size must be >= 1, got {args.batch_size}")


def _report_failures(failures: Sequence[Failure], models_loaded: bool = True) -> int:
    if not failures:
        return 0
    print(f"\n{len(failures)} input(s) failed{'' if models_loaded else ' (no model was loaded)'}:",
          file=sys.stderr)
    for failure in failures:
        message = failure.message.removeprefix(f"{failure.source}: ")
        print(f"  {failure.source}: {message}", file=sys.stderr)
    return 1


def run(ensemble: Ensemble, specs: Sequence[InputSpec | Failure], out_dir: Path, batch_size: int,
        facts: Sequence[ModelFacts] = ()) -> tuple[list[SummaryRow], list[Failure]]:
    """Predict every input in memory-bounded batches; an input that fails is recorded, skipped,
    and left without outputs (an earlier run's outputs of its name are removed)."""
    # tqdm loads here, when frames are predicted, not with `silr predict --help`
    from tqdm import tqdm

    failures = [s for s in specs if isinstance(s, Failure)]
    todo = [s for s in specs if isinstance(s, InputSpec)]
    rows: list[SummaryRow] = []
    with tqdm(total=len(todo), desc="predict", unit="frame", file=sys.stderr,
              disable=len(todo) < 2, leave=False) as bar:
        for batch in prepared_batches(todo, ensemble, batch_size, failures, bar):
            start = time.perf_counter()
            predictions = predict_inputs(ensemble, [item.prepared for item in batch])
            share = (time.perf_counter() - start) / len(batch)
            for prediction, item in zip(predictions, batch):
                row = _finish(prediction, item.warnings, item.seconds + share, ensemble, out_dir,
                              facts, failures)
                if row is not None:
                    rows.append(row)
                bar.update(1)
    for failure in failures:
        if failure.stem:
            remove_outputs(out_dir, failure.stem)
    return rows, failures


def _finish(prediction: FramePrediction, item_warnings: list[str], seconds: float,
            ensemble: Ensemble, out_dir: Path, facts: Sequence[ModelFacts],
            failures: list[Failure]) -> SummaryRow | None:
    """Warn about and write one prediction; None (and a Failure recorded) when it cannot be."""
    frame = prediction.prepared.input
    if not is_finite(prediction):
        failures.append(Failure(frame.source, f"{frame.source}: the models' output is not finite "
                                              f"(NaN or inf): the checkpoint or the frame is "
                                              f"broken; nothing written", frame.stem))
        return None
    item_warnings = item_warnings + prediction_warnings(prediction,
                                                        PresenceRule.of(ensemble.codec))
    for message in item_warnings:
        warn(f"{frame.source}: {message}")
    start = time.perf_counter()
    prediction = dataclasses.replace(prediction, warnings=tuple(item_warnings), seconds=seconds)
    draw_overlay = functools.partial(_overlay_figure, ensemble=ensemble, facts=facts)
    try:
        paths = write_outputs(out_dir, prediction, ensemble, facts, draw_overlay)
    except SilrError as exc:
        failures.append(Failure(frame.source, str(exc), frame.stem))
        return None
    except MemoryError:
        failures.append(Failure(frame.source, f"{frame.source}: out of memory while writing its "
                                              f"outputs ({limits.MEMORY_BUDGET_ENV} sets the "
                                              f"budget); nothing written", frame.stem))
        return None
    preprocessing = ensemble.card.preprocessing
    return SummaryRow(frame.stem, treatment(frame, preprocessing), int(prediction.present.sum()),
                      len(prediction.present), float(prediction.score.mean()), paths,
                      seconds + time.perf_counter() - start, tuple(item_warnings))


def _overlay_figure(prediction: FramePrediction, labels_input: np.ndarray, ensemble: Ensemble,
                    facts: Sequence[ModelFacts]) -> Figure:
    from silr.evaluation import overlay  # matplotlib: only when outputs are written

    frame = prediction.prepared.input
    kinds = sorted({f["data_kind"] for f in facts})
    losses = sorted({str(f["loss"]) for f in facts})
    models = f"ensemble of {len(facts)} models" if len(facts) > 1 else "model"
    # the phantom is named in words, any other kind of training data by its own name
    data = " + ".join(DATA_KIND_NAMES[k] if k == "synthetic" else k for k in kinds)
    subtitle = (f"{models} trained on {data}, loss {', '.join(losses)}; "
                f"{treatment(frame, ensemble.card.preprocessing)}")
    pixels, labels, xy = frame.pixels, labels_input, prediction.xy_input
    if frame.rotate:
        # A full-resolution frame stored upside down (rot-180-for-up) is shown upright; the csv
        # and json keep the file's own pixel coordinates.
        height, width = pixels.shape
        pixels, labels = pixels[::-1, ::-1], labels[::-1, ::-1]
        xy = np.column_stack([width - 1 - xy[:, 0], height - 1 - xy[:, 1]])
        subtitle += ("\nshown turned 180 degrees (upright); the csv/json give the file's own "
                     "pixel coordinates")
    if prediction.warnings:
        subtitle += f"\nWARNING: {len(prediction.warnings)} warning(s), see the json"
    return overlay.prediction_overlay(pixels, labels, xy, prediction.present, prediction.in_image,
                                      ensemble.landmark_names, title=frame.stem,
                                      subtitle=subtitle)
