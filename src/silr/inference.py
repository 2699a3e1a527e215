"""The one inference path: network outputs -> landmarks, presence and labels in the frame.

Every caller goes through here: validation inside `silr train`, `silr evaluate`,
`silr predict` and its ensembles (`Ensemble`: several checkpoints averaged, then decoded
once). The codec (`silr.codec`) knows where the frame sits in the padded network input,
so the argmax only considers heatmap pixels that touch the frame, its refinement is the
one configured, and positions come back in frame pixels
(x = column, y = row of the 180 x 180 frame), clamped into it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from silr import frames
from silr.card import ModelCard
from silr.codec import HeatmapCodec
from silr.errors import CheckpointError
from silr.losses import discrete_visibility
from silr.types import FramePredictions


class Decoded(NamedTuple):
    """One batch, decoded. xy_frame (B, L, 2) frame pixels; present (B, L) bool; score (B, L);
    visibility_hat (B, L) in {0, 0.5, 1}; labels (B, H_f, W_f) int64 (argmax of the segmentation)."""

    xy_frame: Tensor
    present: Tensor
    score: Tensor
    visibility_hat: Tensor
    labels: Tensor


def frame_predictions(decoded: Decoded) -> FramePredictions:
    """The NumPy form of a decoded batch (for files and metrics)."""
    return FramePredictions(xy=decoded.xy_frame.detach().cpu().double().numpy(),
                            present=decoded.present.detach().cpu().numpy().astype(bool),
                            score=decoded.score.detach().cpu().double().numpy(),
                            visibility_hat=decoded.visibility_hat.detach().cpu().double().numpy(),
                            labels=decoded.labels.detach().cpu().numpy().astype(np.uint8))


def decode(heatmaps: Tensor, segmentation: Tensor, codec: HeatmapCodec) -> Decoded:
    """Decode (B, L, h, w) heatmaps and (B, C, H, W) segmentation logits or probabilities
    (the argmax is the same for both) of padded network inputs."""
    if segmentation.ndim != 4 or tuple(segmentation.shape[-2:]) != codec.size \
            or segmentation.shape[0] != heatmaps.shape[0]:
        raise ValueError(f"segmentation must have shape ({heatmaps.shape[0]}, C, {codec.size[0]}, {codec.size[1]}) "
                         f"for heatmaps {tuple(heatmaps.shape)}, got {tuple(segmentation.shape)}")
    with torch.no_grad():
        landmarks = codec.decode(heatmaps)
        seg_labels = segmentation.argmax(dim=1)
        visibility = discrete_visibility(landmarks, seg_labels)
        (x0, y0), (height, width) = codec.frame_origin, codec.frame
        return Decoded(xy_frame=codec.to_frame(landmarks.xy), present=landmarks.present, score=landmarks.score,
                       visibility_hat=visibility, labels=seg_labels[:, y0:y0 + height, x0:x0 + width])


@torch.no_grad()
def predict_frames(model: torch.nn.Module, codec: HeatmapCodec, images: np.ndarray, *,
                   device: torch.device | str = "cpu", batch_size: int = 16) -> FramePredictions:
    """Run one network on (N, H, W) line-integral frames (the codec's frame size) and decode them."""
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
        inputs = frames.to_network_input(images[start:start + batch_size], codec.size[0]).to(device)
        output = model(inputs)
        parts.append(frame_predictions(decode(output.heatmaps.float(), output.segmentation.float(), codec)))
    model.train(was_training)
    return FramePredictions.concatenate(parts)


# ------------------------------------------------------------------ ensembles

@dataclass
class Ensemble:
    """One or several models with compatible cards (silr.card.ENSEMBLE_FIELDS), and the codec
    that decodes them."""

    paths: list[Path]
    models: list[torch.nn.Module]
    cards: list[ModelCard]
    codec: HeatmapCodec
    device: torch.device

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
    def combined(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(heatmaps, segmentation probabilities) for (B,1,S,S) network inputs.

        One model: its own heatmaps. Several: the mean of the sigmoid probabilities, given
        back as logits (float64, so that the decoder's sigmoid returns the mean itself and
        its argmax and presence threshold act on the averaged probability); for maps that
        regress the Gaussian's values (MSE), the mean of the values.
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

    def decode(self, frames_np: np.ndarray) -> FramePredictions:
        """Run the ensemble on (N, H, W) line-integral frames of the model's frame size and decode them."""
        images = frames.to_network_input(np.asarray(frames_np, dtype=np.float32), self.card.input_size)
        heatmaps, segmentation = self.combined(images)
        return frame_predictions(decode(heatmaps, segmentation, self.codec))


def load_ensemble(paths: Sequence[Path], device: torch.device) -> Ensemble:
    """Load every checkpoint, check that they agree and that they run; CheckpointError if not."""
    from silr import checkpoint

    models, cards = [], []
    for path in paths:
        model, card = checkpoint.load_model(path, device)
        if cards:
            for field, expected, got in cards[0].ensemble_differences(card):
                raise CheckpointError(f"{path}: cannot ensemble with {paths[0]}: {field} differs "
                                      f"(expected {expected!r}, got {got!r})")
        _check_output_shapes(path, model, card, device)
        models.append(model)
        cards.append(card)
    return Ensemble(paths=[Path(p) for p in paths], models=models, cards=cards, codec=cards[0].codec(paths[0]),
                    device=device)


@torch.no_grad()
def _check_output_shapes(path: Path, model: torch.nn.Module, card: ModelCard, device: torch.device) -> None:
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
        raise CheckpointError(f"{path}: model outputs heatmaps {got_heat} and segmentation {got_seg}, "
                              f"expected {expected_heat} and {expected_seg} from its card")
