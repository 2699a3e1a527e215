"""`silr predict`'s prediction of prepared inputs: the ensemble run on one batch of frames (and
on the same frames inverted, for the inversion check), every landmark decoded and mapped back
to the input image's own pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from silr.core import coords
from silr.inference.inputs import PreparedFrame, frame_to_input

if TYPE_CHECKING:  # annotations only: torch and the card load with the models, not --help
    from silr.inference.predictor import Ensemble

__all__ = ["FramePrediction", "predict_inputs"]


@dataclass(frozen=True)
class FramePrediction:
    """One input's landmarks, presence and label map, as the models predicted them."""

    prepared: PreparedFrame
    xy_frame: np.ndarray  # (L, 2) in the 180x180 frame
    xy_input: np.ndarray  # (L, 2) in the input image's own pixels
    present: np.ndarray  # (L,) bool: predicted present and inside the input image
    in_image: np.ndarray  # (L,) bool: the decoded position lies inside the input image
    # (L,) the presence rule's score (learned, and shape on learned: presence probability;
    # template, and shape on template: NCC)
    score: np.ndarray
    visibility: np.ndarray  # (L,) discrete visibility in {0, 0.5, 1}
    labels: np.ndarray  # uint8 (frame, frame)
    warnings: tuple[str, ...] = ()
    seconds: float = 0.0  # this frame's share of reading, preparing and running the models
    inverted_score: float | None = None  # mean landmark score of the same frame inverted
    # (L,) each presence rule's score, NaN where a rule does not apply (silr.model.codec)
    rule_scores: dict[str, np.ndarray] = field(default_factory=dict)


def predict_inputs(ensemble: Ensemble, prepared: Sequence[PreparedFrame]) -> list[FramePrediction]:
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
            visibility=np.where(in_image, decoded.visibility_hat[i], 0.0),
            labels=decoded.labels[i], inverted_score=float(inverted_scores[i]),
            rule_scores={"threshold": decoded.threshold_score[i],
                         "template": decoded.template_ncc[i],
                         "learned": decoded.presence_prob[i],
                         "shape": decoded.shape_present[i]}))
    return results
