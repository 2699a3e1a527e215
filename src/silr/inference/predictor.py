"""The one inference path: network outputs -> landmarks, presence and labels in the frame.

Every caller goes through here: validation inside `silr train`, `silr evaluate`,
`silr predict` and its ensembles (`Ensemble`: several checkpoints averaged, then decoded
once). The codec (`silr.model.codec`) knows where the frame sits in the padded network input,
so the argmax only considers heatmap pixels that touch the frame, its refinement is the
one configured, and positions come back in frame pixels
(x = column, y = row of the 180 x 180 frame), clamped into it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from silr.core.device import NETWORK_MEMORY_FORMAT
from silr.core.errors import CheckpointError
from silr.core.network_input import to_network_input
from silr.core.types import FramePredictions, ModelOutput
from silr.model import checkpoint
from silr.model.card import ModelCard
from silr.model.codec import HeatmapCodec, discrete_visibility
from silr.model.decode_helpers import segmentation_labels

__all__ = [
    "INFERENCE_BATCH_SIZE",
    "CombinedOutput",
    "Decoded",
    "Ensemble",
    "decode",
    "decode_output",
    "frame_predictions",
    "load_ensemble",
    "predict_frames",
]

# Frames per forward pass where the caller does not choose: on the CPU batch 8 runs 1.2-1.3x
# faster than 16 (1 thread, the stages' fused channels_last network) and decodes the same
# landmarks to float32 rounding (benchmarks/results/inference_batch.txt). On a GPU larger
# batches pay: pass batch_size (or --batch-size).
INFERENCE_BATCH_SIZE = 8


class Decoded(NamedTuple):
    """One batch, decoded. xy_frame (B, L, 2) frame pixels; present (B, L) bool; score (B, L) of the
    presence rule in force; visibility_hat (B, L) in {0, 0.5, 1}; labels (B, H_f, W_f) int64 (argmax
    of the segmentation); every rule's score (NaN where it does not apply): threshold_score,
    template_ncc, presence_prob (B, L); xy_bone_frame (B, L, 2): the argmax restricted to the
    landmark's own predicted bone, frame pixels (NaN where there is none); shape_present (B, L)
    1/0, the shape rule's call (NaN without a shape prior)."""

    xy_frame: Tensor
    present: Tensor
    score: Tensor
    visibility_hat: Tensor
    labels: Tensor
    threshold_score: Tensor
    template_ncc: Tensor
    presence_prob: Tensor
    xy_bone_frame: Tensor
    shape_present: Tensor


def frame_predictions(decoded: Decoded) -> FramePredictions:
    """The NumPy form of a decoded batch (for files and metrics)."""
    def as_float(tensor: Tensor) -> np.ndarray:
        return tensor.detach().cpu().double().numpy()

    return FramePredictions(xy=as_float(decoded.xy_frame),
                            present=decoded.present.detach().cpu().numpy().astype(bool),
                            score=as_float(decoded.score),
                            visibility_hat=as_float(decoded.visibility_hat),
                            labels=decoded.labels.detach().cpu().numpy().astype(np.uint8),
                            threshold_score=as_float(decoded.threshold_score),
                            template_ncc=as_float(decoded.template_ncc),
                            presence_prob=as_float(decoded.presence_prob),
                            xy_bone=as_float(decoded.xy_bone_frame),
                            shape_present=as_float(decoded.shape_present))


def decode(heatmaps: Tensor, segmentation: Tensor, codec: HeatmapCodec, *,
           presence_prob: Tensor | None = None, threshold_score: Tensor | None = None) -> Decoded:
    """Decode (B, L, h, w) heatmaps and (B, C, H, W) segmentation logits or probabilities
    (the argmax is the same for both) of padded network inputs; `presence_prob` and
    `threshold_score` as silr.model.codec.HeatmapCodec.decode takes them."""
    if segmentation.ndim != 4 or tuple(segmentation.shape[-2:]) != codec.size \
            or segmentation.shape[0] != heatmaps.shape[0]:
        raise ValueError(f"segmentation must have shape ({heatmaps.shape[0]}, C, {codec.size[0]}, "
                         f"{codec.size[1]}) for heatmaps {tuple(heatmaps.shape)}, "
                         f"got {tuple(segmentation.shape)}")
    with torch.no_grad():
        seg_labels = segmentation_labels(segmentation)
        landmarks = codec.decode(heatmaps, labels=seg_labels, presence_prob=presence_prob,
                                 threshold_score=threshold_score)
        visibility = discrete_visibility(landmarks, seg_labels, codec.landmark_bones)
        (x0, y0), (height, width) = codec.frame_origin, codec.frame
        return Decoded(xy_frame=codec.to_frame(landmarks.xy), present=landmarks.present,
                       score=landmarks.score, visibility_hat=visibility,
                       labels=seg_labels[:, y0:y0 + height, x0:x0 + width],
                       threshold_score=landmarks.threshold_score,
                       template_ncc=landmarks.template_ncc, presence_prob=landmarks.presence_prob,
                       xy_bone_frame=codec.to_frame(landmarks.xy_bone),
                       shape_present=landmarks.shape_present)


def decode_output(output: ModelOutput, codec: HeatmapCodec) -> Decoded:
    """Decode one network's output (its presence head's logits through the codec's calibration)."""
    heatmaps = output.heatmaps.float()
    presence_prob = codec.presence_probability(heatmaps, output.presence, output.presence_frame)
    return decode(heatmaps, output.segmentation.float(), codec, presence_prob=presence_prob)


@torch.no_grad()
def predict_frames(model: torch.nn.Module, codec: HeatmapCodec, images: np.ndarray, *,
                   device: torch.device | str = "cpu",
                   batch_size: int = INFERENCE_BATCH_SIZE) -> FramePredictions:
    """Run one network on (N, H, W) line-integral frames (the codec's frame size) and decode
    them."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 3 or len(images) == 0:
        raise ValueError(f"images must be a non-empty (N, H, W) stack, got shape {images.shape}")
    if tuple(images.shape[1:]) != codec.frame:
        raise ValueError(f"frames must be {codec.frame[0]}x{codec.frame[1]} (the model's frame), "
                         f"got {images.shape[1]}x{images.shape[2]}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    was_training = model.training
    model.eval()
    parts = []
    for start in range(0, len(images), batch_size):
        inputs = to_network_input(images[start:start + batch_size], codec.size[0]).to(device)
        inputs = inputs.contiguous(memory_format=NETWORK_MEMORY_FORMAT)  # as load_model's weights
        parts.append(frame_predictions(decode_output(model(inputs), codec)))
    model.train(was_training)
    return FramePredictions.concatenate(parts)


# ------------------------------------------------------------------ ensembles

@dataclass
class Ensemble:
    """One or several models with compatible cards (silr.model.card.ENSEMBLE_FIELDS), and the codec
    that decodes them."""

    paths: list[Path]
    models: list[torch.nn.Module]
    cards: list[ModelCard]
    codec: HeatmapCodec
    device: torch.device
    codecs: list[HeatmapCodec] = field(default_factory=list)  # each model's own (its calibration)

    def __post_init__(self) -> None:
        if not self.codecs:
            self.codecs = [card.codec(path) for card, path in zip(self.cards, self.paths)]

    @property
    def card(self) -> ModelCard:
        return self.cards[0]

    @property
    def landmark_names(self) -> list[str]:
        return list(self.card.landmark_names)

    @property
    def frame_size(self) -> int:
        return self.card.frame_size

    @torch.no_grad()
    def combined(self, images: Tensor) -> CombinedOutput:
        """What the models say about (B, 1, S, S) network inputs, averaged as each loss trained it.

        One model: its own heatmaps, softmax segmentation, threshold score and learned presence.
        Several: maps averaged in the form the loss trained (`logit`: the softmax over pixels,
        given back as its log, which the decoder treats as logits; `value`: the values; `shape`:
        each map standardised to mean 0, sd 1, since NCC fixes neither level nor scale), the
        segmentation softmax, each model's threshold score and each model's calibrated learned
        presence (each fold model with its own calibration), all as plain means.
        """
        images = images.to(self.device).contiguous(memory_format=NETWORK_MEMORY_FORMAT)
        parts = []
        for model, codec in zip(self.models, self.codecs):
            output = model(images)
            heat = output.heatmaps.double()
            parts.append(CombinedOutput(
                heatmaps=heat, segmentation=torch.softmax(output.segmentation.double(), dim=1),
                threshold_score=codec.threshold_score(heat).double(),
                presence_prob=_maybe_double(codec.presence_probability(heat, output.presence,
                                                                       output.presence_frame))))
        if len(parts) == 1:
            return CombinedOutput(*(None if t is None else t.cpu() for t in parts[0]))
        kind = self.codec.kind
        if kind == "logit":
            softmax = torch.stack([torch.softmax(p.heatmaps.flatten(2), -1) for p in parts])
            maps = torch.log(softmax.mean(0))
            maps = maps.view_as(parts[0].heatmaps)
        elif kind == "value":
            maps = torch.stack([p.heatmaps for p in parts]).mean(0)
        else:
            maps = torch.stack([_standardised(p.heatmaps) for p in parts]).mean(0)
        presence = (None if any(p.presence_prob is None for p in parts)
                    else torch.stack([p.presence_prob for p in parts]).mean(0))
        return CombinedOutput(
            heatmaps=maps.cpu(),
            segmentation=torch.stack([p.segmentation for p in parts]).mean(0).cpu(),
            threshold_score=torch.stack([p.threshold_score for p in parts]).mean(0).cpu(),
            presence_prob=None if presence is None else presence.cpu())

    def decode(self, frames: np.ndarray) -> FramePredictions:
        """Run the ensemble on (N, H, W) line-integral frames of the model's frame size and
        decode them."""
        images = to_network_input(np.asarray(frames, dtype=np.float32), self.card.input_size)
        combined = self.combined(images)
        return frame_predictions(decode(combined.heatmaps, combined.segmentation, self.codec,
                                        presence_prob=combined.presence_prob,
                                        threshold_score=combined.threshold_score))


class CombinedOutput(NamedTuple):
    """An ensemble's (or one model's) output ready to decode: heatmaps (B, L, h, w), segmentation
    probabilities (B, C, H, W), threshold score (B, L), calibrated learned presence (B, L) or
    None."""

    heatmaps: Tensor
    segmentation: Tensor
    threshold_score: Tensor
    presence_prob: Tensor | None


def _maybe_double(tensor: Tensor | None) -> Tensor | None:
    return None if tensor is None else tensor.double()


def _standardised(maps: Tensor) -> Tensor:
    flat = maps.flatten(2)
    flat = (flat - flat.mean(-1, keepdim=True)) / flat.std(-1, keepdim=True).clamp_min(1e-12)
    return flat.view_as(maps)


def load_ensemble(paths: Sequence[Path], device: torch.device) -> Ensemble:
    """Load every checkpoint, check that they agree and that they run; CheckpointError if not."""
    models, cards = [], []
    for path in paths:
        model, card = checkpoint.load_model(path, device, fused=True)
        if cards:
            for name, expected, got in cards[0].ensemble_differences(card):
                raise CheckpointError(f"{path}: cannot ensemble with {paths[0]}: {name} differs "
                                      f"(expected {expected!r}, got {got!r})")
        _check_output_shapes(path, model, card, device)
        models.append(model)
        cards.append(card)
    return Ensemble(paths=[Path(p) for p in paths], models=models, cards=cards,
                    codec=cards[0].codec(paths[0]), device=device)


@torch.no_grad()
def _check_output_shapes(path: Path, model: torch.nn.Module, card: ModelCard,
                         device: torch.device) -> None:
    # One blank input through the model: a model that does not fit its card fails here,
    # before any input is read, with the shapes in the message.
    size = card.input_size
    expected_heat = (1, len(card.landmark_names), *card.codec(path).heatmap_size)
    expected_seg = (1, len(card.label_names), size, size)
    try:
        output = model(torch.zeros(1, 1, size, size, device=device))
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: the model does not run on a (1, 1, {size}, {size}) input: "
                              f"{str(exc).splitlines()[0]}") from None
    got_heat, got_seg = tuple(output.heatmaps.shape), tuple(output.segmentation.shape)
    if got_heat != expected_heat or got_seg != expected_seg:
        raise CheckpointError(f"{path}: model outputs heatmaps {got_heat} and segmentation "
                              f"{got_seg}, expected {expected_heat} and {expected_seg} from its "
                              f"card")
