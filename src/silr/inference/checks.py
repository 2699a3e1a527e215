"""The warnings `silr predict` gives (the rules of silr.stages.predict's docstring): about an
input (statistics unlike the training frames, a stretching resize, an inverted image, most
landmarks absent, --raw on a processed frame) and about the models (an unfinished run, an
ensemble of different losses); and the check that a prediction is finite at all.

The network sees each frame min-max scaled to [0, 1]; on the training frames (the synthetic
phantom's 8x frames, 0th..100th percentile) the scaled frame's median lies in 0.38..0.80 and
its standard deviation in 0.13..0.25, and predicted bone is 0.10..0.29 brighter than predicted
background. The limits below are those ranges widened.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from silr.inference.frame_prediction import FramePrediction
from silr.inference.inputs import InputFrame, PreparedFrame
from silr.inference.model_info import ModelFacts

if TYPE_CHECKING:  # annotations only: torch and the card load with the models, not --help
    from silr.inference.predictor import Ensemble
    from silr.model.card_specs import Preprocessing
    from silr.model.codec import HeatmapCodec

__all__ = [
    "ABSENT_MAJORITY", "ANISOTROPY_TOLERANCE", "POLARITY_MARGIN", "POLARITY_MIN_FRACTION",
    "PRESENCE_COLLAPSE", "PresenceRule", "RAW_MAX_FRACTION_OF_I0", "STAT_MEDIAN", "STAT_STD",
    "TRAINING_CONTRAST",
    "ensemble_warnings", "frame_warnings", "inversion_warning", "is_finite", "polarity_warning",
    "prediction_warnings", "presence_warning", "raw_warnings", "resize_warning",
]

# The scaled frame's median and standard deviation a frame may have without a warning: the
# training ranges (0.38..0.80, 0.13..0.25) widened by about 0.1 and 0.05.
STAT_MEDIAN = (0.25, 0.90)
STAT_STD = (0.08, 0.32)
# How much brighter predicted bone is than predicted background on the training frames.
TRAINING_CONTRAST = (0.10, 0.29)
# Predicted bone and predicted background must each cover at least this share of the frame
# before their brightness is compared (a few pixels of either say nothing about polarity).
POLARITY_MIN_FRACTION = 0.01
# How far the inverted frame's mean landmark score must beat the frame's own before the frame is
# called inverted. Why 0.05: a frame and its inverse score about alike when neither shows a
# pelvis the models know (noise, another modality), and their means then differ by chance; a
# twentieth of the score's 0..1 range keeps such near ties quiet, while an inverted pelvis,
# whose inverse the models recognise, wins by far more. A judgement, not a fitted value (no
# measurement of it is recorded).
POLARITY_MARGIN = 0.05
# --raw on a frame whose largest value is below this share of the card's I0: raw detector
# frames reach close to I0 in air, so such a frame is most likely already processed.
RAW_MAX_FRACTION_OF_I0 = 0.01
# The presence rule: more than this share of landmarks absent, or a mean
# learned presence below PRESENCE_COLLAPSE, is a frame unlike the training frames.
ABSENT_MAJORITY = 0.5
PRESENCE_COLLAPSE = 0.5
# A resize whose x and y scales differ by more than this share stretches the anatomy.
ANISOTROPY_TOLERANCE = 0.02


def frame_warnings(prepared: PreparedFrame) -> list[str]:
    """The statistics rule (STAT_MEDIAN, STAT_STD) on the frame the network sees, and the
    resize check."""
    frame = prepared.frame.astype(np.float64)
    unit = (frame - frame.min()) / (frame.max() - frame.min())
    median, std = float(np.median(unit)), float(unit.std())
    found = []
    if not STAT_MEDIAN[0] <= median <= STAT_MEDIAN[1] or not STAT_STD[0] <= std <= STAT_STD[1]:
        found.append(f"intensity statistics unlike the training frames (scaled median "
                     f"{median:.2f}, expected {STAT_MEDIAN[0]}..{STAT_MEDIAN[1]}; standard "
                     f"deviation {std:.2f}, expected {STAT_STD[0]}..{STAT_STD[1]}): treat the "
                     f"prediction with caution")
    found += resize_warning(prepared)
    return found


def resize_warning(prepared: PreparedFrame) -> list[str]:
    """A non-uniform resize to the model's square frame: the anatomy is stretched."""
    li_width, li_height = prepared.line_integral_size
    size = prepared.frame.shape[0]
    scale_x, scale_y = size / li_width, size / li_height
    if abs(scale_x / scale_y - 1.0) <= ANISOTROPY_TOLERANCE:
        return []
    return [f"resized non-uniformly to the model's {size} x {size} frame (scale {scale_x:.3f} "
            f"along x, {scale_y:.3f} along y, from {li_width} x {li_height} px): the anatomy is "
            f"stretched; a square crop keeps its shape"]


def polarity_warning(prepared: PreparedFrame, labels: np.ndarray) -> list[str]:
    """Bone darker than background in the frame the network saw: an inverted (bone-dark)
    image."""
    frame = prepared.frame.astype(np.float64)
    bone = labels > 0
    fraction = float(bone.mean())
    if not POLARITY_MIN_FRACTION <= fraction <= 1 - POLARITY_MIN_FRACTION:
        return []
    unit = (frame - frame.min()) / (frame.max() - frame.min())
    contrast = float(unit[bone].mean() - unit[~bone].mean())
    if contrast >= 0:
        return []
    hint = ("a raw detector frame needs --raw" if not prepared.input.raw
            else "is it already processed?")
    return [f"predicted bone is darker than background (contrast {contrast:+.2f}; training "
            f"frames {TRAINING_CONTRAST[0]:+.2f}..{TRAINING_CONTRAST[1]:+.2f}): the image looks "
            f"inverted (bone dark), unlike the line-integral training frames; {hint}"]


def inversion_warning(prediction: FramePrediction) -> list[str]:
    """The inverted frame explains the models' landmarks better than the frame itself."""
    own = float(prediction.score.mean())
    inverted = prediction.inverted_score
    if inverted is None or inverted <= own + POLARITY_MARGIN:
        return []
    hint = "; a raw detector frame needs --raw" if not prediction.prepared.input.raw else ""
    return [f"the image looks inverted (bone dark): the models' mean landmark score is {own:.2f} "
            f"on it and {inverted:.2f} on its inverse; training frames are line integrals "
            f"(bone bright){hint}"]


@dataclass(frozen=True)
class PresenceRule:
    """The presence rule a codec decides with, and the rule whose score it reports: the rule
    itself, or for `shape` its base rule (the shape prior decides, the base rule scores)."""

    name: str  # heatmap.presence in force: threshold | template | learned | shape
    score_rule: str  # threshold | template | learned

    @classmethod
    def of(cls, codec: HeatmapCodec) -> PresenceRule:
        score_rule = codec.shape_base_rule if codec.presence == "shape" else codec.presence
        return cls(codec.presence, score_rule)

    @property
    def scores_probability(self) -> bool:
        """Whether the score is the learned presence probability (which can collapse)."""
        return self.score_rule == "learned"

    def __str__(self) -> str:
        return self.name if self.name == self.score_rule else f"{self.name} on {self.score_rule}"


def presence_warning(prediction: FramePrediction, rule: PresenceRule) -> list[str]:
    """Most landmarks called absent, or a learned presence whose mean collapses: the frame is
    unlike the training frames (another modality, an inverted or empty image, a frame that
    shows little of the pelvis)."""
    total = len(prediction.present)
    absent = int(total - prediction.present.sum())
    mean = float(np.mean(prediction.score))
    collapsed = rule.scores_probability and mean < PRESENCE_COLLAPSE
    if absent <= ABSENT_MAJORITY * total and not collapsed:
        return []
    score = (f"mean presence {mean:.2f}" if rule.scores_probability
             else f"mean {rule.score_rule} score {mean:.2f}")
    return [f"{absent} of {total} landmarks are called absent ({score}, presence rule {rule}): "
            f"the frame looks unlike the training frames (another modality, an inverted image, "
            f"or little of the pelvis in view); do not trust its landmarks"]


def prediction_warnings(prediction: FramePrediction, rule: PresenceRule) -> list[str]:
    """The checks that need the models' answer: inversion, polarity, presence (in that order)."""
    return (inversion_warning(prediction)
            + polarity_warning(prediction.prepared, prediction.labels)
            + presence_warning(prediction, rule))


def raw_warnings(frame: InputFrame, preprocessing: Preprocessing) -> list[str]:
    """--raw on a frame far below the card's I0: most likely an already processed frame."""
    if not frame.raw:
        return []
    top = float(frame.pixels.max())
    if top < RAW_MAX_FRACTION_OF_I0 * preprocessing.i0:
        return [f"--raw: the largest value is {top:g}, below {RAW_MAX_FRACTION_OF_I0:.0%} of the "
                f"model's I0 = {preprocessing.i0:g}; this looks like an already processed frame "
                f"(leave out --raw)"]
    return []


def is_finite(prediction: FramePrediction) -> bool:
    """Whether every landmark position and score is a number (not NaN or inf)."""
    return bool(np.isfinite(prediction.xy_frame).all() and np.isfinite(prediction.score).all())


def ensemble_warnings(ensemble: Ensemble, facts: Sequence[ModelFacts]) -> list[str]:
    """A model from an unfinished training run (one line each), and models of different
    losses averaged."""
    found = []
    for path, card in zip(ensemble.paths, ensemble.cards):
        note = card.unfinished_note()
        if note is not None:
            found.append(f"{path}: {note}: its predictions are those of a partly trained model")
    losses = sorted({str(f["loss"]) for f in facts})
    if len(losses) > 1:
        found.append(f"the ensemble mixes models trained with different losses "
                     f"({', '.join(losses)}); their heatmaps mean different things, so the "
                     f"average may not")
    return found
