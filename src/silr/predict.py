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
import dataclasses
import io
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from silr import coords, imageio
from silr.anatomy import LABEL_NAMES, LANDMARK_BONE, NUM_CLASSES
from silr.errors import CheckpointError, ConfigError, DataError, SilrError
from silr.io import atomic_path, write_json, write_text

# Card entries that must agree between the members of an ensemble: a difference in any
# of them means the models do not predict the same thing on the same input.
ENSEMBLE_KEYS = ("landmark_names", "label_names", "input_size", "frame_size", "pad_offset", "preprocessing")
# Decoding parameters of the heatmap section (sigma only shapes training targets).
DECODE_KEYS = ("presence_threshold", "refine", "stride", "kind")

LINE_INTEGRAL = "line-integral image"
RAW_FRAME = "raw detector frame"


# ------------------------------------------------------------------ containers

@dataclass(frozen=True)
class InputFrame:
    """One frame to predict, as read: pixels in the input image's own grid."""

    stem: str
    source: str  # the file, plus specimen / frame where the file holds several
    pixels: np.ndarray  # float32 (H, W)
    raw: bool  # raw detector intensity (crop, log, downsample) rather than a line integral
    rotate: bool = False  # turn 180 degrees first (full-resolution rot-180-for-up)


@dataclass(frozen=True)
class InputSpec:
    """A frame found in the inputs, read only when its batch comes (HDF5 files are big)."""

    stem: str
    source: str
    raw: bool
    read: Callable[[], tuple[np.ndarray, bool]]  # -> (pixels, turn 180 degrees first)

    def load(self) -> InputFrame:
        pixels, rotate = self.read()
        return InputFrame(self.stem, self.source, np.asarray(pixels, dtype=np.float32), self.raw, bool(rotate))


@dataclass(frozen=True)
class Failure:
    source: str
    message: str


@dataclass(frozen=True)
class Preprocessing:
    """The model card's ingestion values, used for --raw inputs."""

    crop: int
    i0: float
    downsample: int


@dataclass(frozen=True)
class PreparedFrame:
    """An input turned into the model's line-integral frame, and how."""

    input: InputFrame
    frame: np.ndarray  # float32 (frame, frame)
    line_integral_size: tuple[int, int]  # (W, H) before resampling to the frame
    resampling: str  # "none", "area" or "bilinear"


@dataclass(frozen=True)
class FramePrediction:
    prepared: PreparedFrame
    xy_frame: np.ndarray  # (L, 2) in the 180x180 frame
    xy_input: np.ndarray  # (L, 2) in the input image's own pixels
    present: np.ndarray  # (L,) bool
    score: np.ndarray  # (L,) max heatmap probability
    visibility: np.ndarray  # (L,) discrete visibility in {0, 0.5, 1}
    labels: np.ndarray  # uint8 (frame, frame)


# ------------------------------------------------------------------ models

@dataclass
class Ensemble:
    """One or several models with compatible cards, and the codec that decodes them."""

    paths: list[Path]
    models: list[torch.nn.Module]
    cards: list[dict]
    codec: object
    device: torch.device

    @property
    def card(self) -> dict:
        return self.cards[0]

    @property
    def landmark_names(self) -> list[str]:
        return list(self.card["landmark_names"])

    @property
    def frame_size(self) -> int:
        return int(self.card["frame_size"])

    @property
    def pad_offset(self) -> int:
        return int(self.card["pad_offset"])

    @torch.no_grad()
    def combined(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(heatmap logits, segmentation probabilities) for (B,1,S,S) network inputs.

        One model: its own heatmap logits. Several: the mean of the sigmoid probabilities,
        given back as logits (float64, so that the decoder's sigmoid returns the mean
        itself and its argmax and presence threshold act on the averaged probability);
        for maps that regress the Gaussian's values (MSE), the mean of the values.
        """
        average_values = self.codec.kind == "value"
        images = images.to(self.device)
        heat_sum, seg_sum = None, None
        for model in self.models:
            output = model(images)
            heat = output.heatmaps.double()
            seg = torch.softmax(output.segmentation.double(), dim=1)
            if len(self.models) == 1:
                return heat.cpu(), seg.cpu()
            heat = heat if average_values else torch.sigmoid(heat)
            heat_sum = heat if heat_sum is None else heat_sum + heat
            seg_sum = seg if seg_sum is None else seg_sum + seg
        count = len(self.models)
        heat_mean = heat_sum / count
        return (heat_mean if average_values else torch.logit(heat_mean)).cpu(), (seg_sum / count).cpu()


def load_ensemble(paths: Sequence[Path], device: torch.device) -> Ensemble:
    """Load every checkpoint, check that they agree and that they run; CheckpointError if not."""
    from silr import checkpoint

    models, cards = [], []
    for path in paths:
        model, card = checkpoint.load_model(path, device)
        _check_card(path, card)
        if cards:
            _check_compatible(paths[0], cards[0], path, card)
        _check_output_shapes(path, model, card, device, checkpoint.codec_from_card(card).heatmap_size)
        models.append(model)
        cards.append(card)
    return Ensemble(paths=[Path(p) for p in paths], models=models, cards=cards,
                    codec=checkpoint.codec_from_card(cards[0]), device=device)


def _check_card(path: Path, card: dict) -> None:
    required = ENSEMBLE_KEYS + ("heatmap",)
    missing = [key for key in required if key not in card]
    if missing:
        raise CheckpointError(f"{path}: model card lacks {', '.join(missing)} (expected {', '.join(required)})")
    unknown = [name for name in card["landmark_names"] if name not in LANDMARK_BONE]
    if unknown:
        raise CheckpointError(f"{path}: model card names unknown landmarks {unknown} "
                              f"(expected names from {', '.join(LANDMARK_BONE)})")
    if len(card["label_names"]) != NUM_CLASSES:
        raise CheckpointError(f"{path}: model card has {len(card['label_names'])} labels, expected {NUM_CLASSES}")


def _check_compatible(first_path: Path, first: dict, path: Path, card: dict) -> None:
    for key in ENSEMBLE_KEYS:
        if first[key] != card[key]:
            raise CheckpointError(f"{path}: cannot ensemble with {first_path}: {key} differs "
                                  f"(expected {first[key]!r}, got {card[key]!r})")
    for key in DECODE_KEYS:
        if first["heatmap"].get(key) != card["heatmap"].get(key):
            raise CheckpointError(f"{path}: cannot ensemble with {first_path}: heatmap.{key} differs "
                                  f"(expected {first['heatmap'].get(key)!r}, got {card['heatmap'].get(key)!r})")


@torch.no_grad()
def _check_output_shapes(path: Path, model: torch.nn.Module, card: dict, device: torch.device,
                         heat_size: tuple[int, int]) -> None:
    # One blank input through the model: a model that does not fit its card fails here,
    # before any input is read, with the shapes in the message.
    size = int(card["input_size"])
    expected_heat = (1, len(card["landmark_names"]), *heat_size)
    expected_seg = (1, len(card["label_names"]), size, size)
    try:
        output = model(torch.zeros(1, 1, size, size, device=device))
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: the model does not run on a (1, 1, {size}, {size}) input: "
                              f"{str(exc).splitlines()[0]}") from None
    got_heat, got_seg = tuple(output.heatmaps.shape), tuple(output.segmentation.shape)
    if got_heat != expected_heat or got_seg != expected_seg:
        raise CheckpointError(f"{path}: model outputs heatmaps {got_heat} and segmentation {got_seg}, "
                              f"expected {expected_heat} and {expected_seg} from its card")


def preprocessing_of(card: dict) -> Preprocessing:
    values = card["preprocessing"]
    try:
        return Preprocessing(crop=int(values["crop"]), i0=float(values["i0"]), downsample=int(values["downsample"]))
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"model card preprocessing must hold crop, i0 and downsample, got {values!r}") from None


# ------------------------------------------------------------------ inputs

def parse_frames(text: str) -> tuple[int, ...]:
    """'0,1,2' or '3-5' (inclusive) or a mix -> frame indices, for --frames."""
    indices: list[int] = []
    try:
        for part in filter(None, (p.strip() for p in text.split(","))):
            if "-" in part[1:]:
                low, high = part.split("-", 1)
                indices.extend(range(int(low), int(high) + 1))
            else:
                indices.append(int(part))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected frame indices like 0,1,2 or 3-5, got {text!r}") from None
    if not indices or min(indices) < 0:
        raise argparse.ArgumentTypeError(f"expected non-negative frame indices, got {text!r}")
    return tuple(indices)


def enumerate_inputs(paths: Sequence[Path], *, raw: bool, specimens: Sequence[int] | None,
                     frames: Sequence[int] | None) -> Iterator[InputSpec | Failure]:
    """Every frame the inputs hold (after --specimen / --frames), or why a file gives none."""
    for path in paths:
        try:
            kind = imageio.input_kind(path)
            if not path.is_file():
                raise DataError(f"{path}: no such file")
            if kind == "pil":
                yield InputSpec(path.stem, str(path), raw, lambda path=path: (imageio.read_pil_image(path), False))
            elif kind == "npy":
                yield from _npy_specs(path, raw, frames)
            else:
                yield from _hdf5_specs(path, raw, specimens, frames)
        except SilrError as exc:
            yield Failure(str(path), str(exc))


def _npy_specs(path: Path, raw: bool, frames: Sequence[int] | None) -> Iterator[InputSpec | Failure]:
    array = imageio.read_npy(path)
    if array.ndim == 2:
        yield InputSpec(path.stem, str(path), raw, lambda: (array, False))
        return
    for index in frames if frames is not None else range(array.shape[0]):
        source = f"{path} [frame {index}]"
        if index >= array.shape[0]:
            yield Failure(source, f"{path}: stack has {array.shape[0]} frames (0..{array.shape[0] - 1}), "
                                  f"no frame {index}")
            continue
        yield InputSpec(f"{path.stem}_f{index:03d}", source, raw, lambda index=index: (array[index], False))


def _hdf5_specs(path: Path, raw: bool, specimens: Sequence[int] | None,
                frames: Sequence[int] | None) -> Iterator[InputSpec | Failure]:
    from silr import deepfluoro

    layout = deepfluoro.detect_layout(path)
    if layout == deepfluoro.PROCESSED:
        if raw:
            raise DataError(f"{path}: --raw does not apply to a preprocessed file (its frames are line integrals)")
        data = deepfluoro.read_processed(path)
        available = {number: len(spec.images) for number, spec in data.specimens.items()}

        def read_frame(number: int, index: int) -> tuple[np.ndarray, bool]:
            return data.specimens[number].images[index], False
    else:
        frame_index = deepfluoro.fullres_frame_index(path)
        available = {number: len(items) for number, items in frame_index.items()}

        def read_frame(number: int, index: int) -> tuple[np.ndarray, bool]:
            return deepfluoro.read_fullres_frame(path, number, index)
    raw_frames = layout != deepfluoro.PROCESSED
    for number in specimens if specimens else sorted(available):
        if number not in available:
            yield Failure(f"{path} [specimen {number}]",
                          f"{path}: no specimen {number} (the file holds {sorted(available)})")
            continue
        count = available[number]
        for index in frames if frames is not None else range(count):
            source = f"{path} [specimen {number}, frame {index}]"
            if index >= count:
                yield Failure(source, f"{path}: specimen {number} has {count} frames (0..{count - 1}), "
                                      f"no frame {index}")
                continue
            stem = f"{path.stem}_s{number:02d}_f{index:03d}"
            yield InputSpec(stem, source, raw_frames, lambda number=number, index=index: read_frame(number, index))


def unique_stems(specs: list[InputSpec | Failure]) -> list[InputSpec | Failure]:
    """Give repeated stems (a.png and a.tif) a suffix _2, _3, ... in input order."""
    seen: dict[str, int] = {}
    result: list[InputSpec | Failure] = []
    for spec in specs:
        if isinstance(spec, InputSpec):
            seen[spec.stem] = seen.get(spec.stem, 0) + 1
            if seen[spec.stem] > 1:
                spec = dataclasses.replace(spec, stem=f"{spec.stem}_{seen[spec.stem]}")
        result.append(spec)
    return result


# ------------------------------------------------------------------ preparation

def resample(image: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, str]:
    """(H, W) -> size (H', W'): area mean when shrinking both axes, bilinear otherwise.

    Both keep the pixel-centre convention of `coords.rescale` (bilinear with
    align_corners=False; the area mean of an integer block sits at the block's centre).
    """
    if tuple(image.shape) == tuple(size):
        return image.astype(np.float32), "none"
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    if size[0] <= image.shape[0] and size[1] <= image.shape[1]:
        out, mode = F.interpolate(tensor, size=size, mode="area"), "area"
    else:
        out, mode = F.interpolate(tensor, size=size, mode="bilinear", align_corners=False), "bilinear"
    return out[0, 0].numpy(), mode


def prepare(frame: InputFrame, frame_size: int, preprocessing: Preprocessing) -> PreparedFrame:
    """The model's line-integral frame for one input (raw ones through ingestion's transform)."""
    line_integral = frame.pixels
    if frame.raw:
        from silr import preprocess

        if (frame.pixels <= 0).all():
            raise DataError(f"{frame.source}: a raw detector frame needs positive intensities, all are <= 0")
        try:
            line_integral = preprocess.preprocess_raw_frame(
                frame.pixels, crop=preprocessing.crop, i0=preprocessing.i0,
                factor=preprocessing.downsample, rotate=frame.rotate)
        except ValueError as exc:  # e.g. a frame smaller than the crop
            raise DataError(f"{frame.source}: cannot preprocess as a raw detector frame: {exc}") from None
    height, width = line_integral.shape
    resampled, mode = resample(line_integral, (frame_size, frame_size))
    return PreparedFrame(frame, resampled, (width, height), mode)


def frame_to_input(xy_frame: np.ndarray, prepared: PreparedFrame, frame_size: int,
                   preprocessing: Preprocessing) -> np.ndarray:
    """Map (L, 2) frame coordinates back to the input image's own pixel coordinates."""
    xy = coords.rescale(xy_frame, (frame_size, frame_size), prepared.line_integral_size)
    frame = prepared.input
    if not frame.raw:
        return xy
    height, width = frame.pixels.shape
    return coords.ingested_to_fullres(xy, crop=preprocessing.crop, factor=preprocessing.downsample,
                                      turned=frame.rotate, fullres_size=(width, height))


def treatment(frame: InputFrame, preprocessing: Preprocessing) -> str:
    """How an input was read, in words, for the json and the summary."""
    if not frame.raw:
        return LINE_INTEGRAL
    turned = ", turned 180 degrees (rot-180-for-up)" if frame.rotate else ""
    return (f"{RAW_FRAME} (crop {preprocessing.crop}, log I0={preprocessing.i0:g}, "
            f"downsample {preprocessing.downsample}{turned})")


# ------------------------------------------------------------------ prediction

def predict_frames(ensemble: Ensemble, prepared: Sequence[PreparedFrame]) -> list[FramePrediction]:
    """Run the ensemble on prepared frames (one batch) and decode every landmark."""
    from silr import frames as network_frames
    from silr import inference

    images = network_frames.to_network_input(np.stack([p.frame for p in prepared]), int(ensemble.card["input_size"]))
    heat_logits, seg_prob = ensemble.combined(images)
    decoded = inference.FramePredictions.of(inference.decode(heat_logits, seg_prob, ensemble.codec))
    size = ensemble.frame_size
    preprocessing = preprocessing_of(ensemble.card)
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
    write_overlay(paths["overlay"], prediction, ensemble.landmark_names, title=frame.stem)
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
        "treated_as": treatment(frame, preprocessing_of(ensemble.card)),
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


# Colours of the label tint (RGB 0..1), background transparent; a landmark takes its bone's colour.
LABEL_COLOURS: dict[int, tuple[float, float, float]] = {
    1: (0.12, 0.47, 0.71), 2: (1.00, 0.50, 0.05), 3: (0.17, 0.63, 0.17),
    4: (0.58, 0.40, 0.74), 5: (0.84, 0.15, 0.16), 6: (0.89, 0.47, 0.76),
}


def write_overlay(path: Path, prediction: FramePrediction, names: Sequence[str], *, title: str) -> None:
    """Frame in grey, the label map as a tint, present landmarks as rings with their names."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.4, 5.8), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_axes((0.0, 0.0, 1.0, 0.93))
    axes.imshow(prediction.prepared.frame, cmap="gray", interpolation="nearest")
    tint = np.zeros(prediction.labels.shape + (4,), dtype=np.float32)
    for value, colour in LABEL_COLOURS.items():
        tint[prediction.labels == value] = (*colour, 0.35)
    axes.imshow(tint, interpolation="nearest")
    for i, name in enumerate(names):
        if not prediction.present[i]:
            continue
        x, y = prediction.xy_frame[i]
        colour = LABEL_COLOURS.get(LANDMARK_BONE[name], (1.0, 1.0, 0.0))
        axes.plot(x, y, marker="o", markersize=7, markerfacecolor="none", markeredgecolor="yellow",
                  markeredgewidth=1.5)
        axes.plot(x, y, marker="+", markersize=5, color=colour)
        axes.annotate(name, (x, y), xytext=(4, -4), textcoords="offset points", color="yellow", fontsize=7)
    _label_legend(axes, prediction.labels)
    axes.set_axis_off()
    present = int(prediction.present.sum())
    figure.suptitle(f"{title}: {present}/{len(names)} landmarks present", fontsize=9, y=0.985)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")


def _label_legend(axes, labels: np.ndarray) -> None:
    from matplotlib.patches import Patch

    shown = [value for value in LABEL_COLOURS if (labels == value).any()]
    if shown:
        handles = [Patch(color=LABEL_COLOURS[v], alpha=0.6, label=LABEL_NAMES[v]) for v in shown]
        axes.legend(handles=handles, loc="lower left", fontsize=7, framealpha=0.6)


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
            print(format_card(path, card))
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
    preprocessing = preprocessing_of(ensemble.card)
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


def format_card(path: Path, card: dict) -> str:
    """The model card as indented `key: value` lines."""
    lines = [f"model card of {path}"]
    _format_mapping(card, lines, indent=1)
    return "\n".join(lines)


def _format_mapping(mapping: dict, lines: list[str], indent: int) -> None:
    pad = "  " * indent
    for key in mapping:
        value = mapping[key]
        if isinstance(value, dict) and value:
            lines.append(f"{pad}{key}:")
            _format_mapping(value, lines, indent + 1)
        elif isinstance(value, (list, tuple)):
            lines.append(f"{pad}{key}: {', '.join(str(v) for v in value) if value else '[]'}")
        else:
            lines.append(f"{pad}{key}: {value}")
