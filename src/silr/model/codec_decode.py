"""The decoding half of the heatmap codec: the heatmap grid, the frame-aware argmax and its
refinement, the bone-restricted argmax, and the presence rules (silr.model.codec explains them).

`HeatmapDecoder` is the base class of silr.model.codec.HeatmapCodec, which checks the settings
it reads and adds the targets (`encode`); the tensor helpers are silr.model.decode_helpers.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from silr.model.decode_helpers import (
    DecodedLandmarks,
    bones_on,
    centroid,
    parabola_offset,
    presence_logit,
    template_ncc,
)
from silr.model.shape_prior import ShapePrior

__all__ = ["CENTROID_SIGMAS", "LEARNED_THRESHOLD", "HeatmapDecoder"]

LEARNED_THRESHOLD = 0.5
CENTROID_SIGMAS = 3.0   # half-width of the centroid window, in target sigmas


class HeatmapDecoder:
    """Decoding of (B, L, h, w) heatmaps with the settings of silr.model.codec.HeatmapCodec."""

    # The settings, set and checked by HeatmapCodec.__init__.
    size: tuple[int, int]
    sigma: float
    presence_threshold: float
    refine: str
    stride: int
    frame: tuple[int, int]
    kind: str
    presence: str
    presence_source: str | None
    calibration: tuple[float, float]
    template_ncc: float
    template_window: float
    segmentation_trained: bool
    landmark_bones: tuple[int, ...]
    frame_origin: tuple[int, int]
    shape_prior: ShapePrior | None

    @property
    def template_radius(self) -> int:
        """Half-width in heatmap pixels of the template window (window / stride, rounded to an
        odd size)."""
        return max(1, int(math.floor((self.template_window / self.stride - 1.0) / 2.0 + 0.5)))

    @property
    def heatmap_size(self) -> tuple[int, int]:
        return self.size[0] // self.stride, self.size[1] // self.stride

    # ------------------------------------------------------------------ coordinates

    def to_heatmap(self, xy: Tensor) -> Tensor:
        """Input pixels -> heatmap pixels: (x + 0.5) / s - 0.5."""
        return (xy + 0.5) / self.stride - 0.5

    def from_heatmap(self, xy: Tensor) -> Tensor:
        """Heatmap pixels -> input pixels: (x + 0.5) s - 0.5."""
        return (xy + 0.5) * self.stride - 0.5

    def to_frame(self, xy: Tensor) -> Tensor:
        """Input pixels -> frame pixels (the padding offset removed)."""
        return xy - xy.new_tensor(self.frame_origin)

    def _frame_mask(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """(h,) and (w,) bool: heatmap rows / columns whose input pixels touch the frame."""
        (height, width), s = self.heatmap_size, self.stride
        masks = []
        for count, origin, extent in ((height, self.frame_origin[1], self.frame[0]),
                                      (width, self.frame_origin[0], self.frame[1])):
            # first input pixel of each heatmap pixel
            first = torch.arange(count, device=device) * s
            masks.append((first + s - 1 >= origin) & (first <= origin + extent - 1))
        return masks[0], masks[1]

    # ------------------------------------------------------------------ decode

    def presence_probability(self, heatmaps: Tensor, presence_logits: Tensor | None,
                             frame_logits: Tensor | None = None) -> Tensor | None:
        """The calibrated learned presence sigmoid(a z + b) (B, L) of one network's output, times
        the frame gate sigmoid(g) (B,) where the network has a trained one; None when the network
        has no trained presence output (`presence_source` None)."""
        if self.presence_source is None:
            return None
        if presence_logits is None:
            raise ValueError(f"the codec expects presence logits (source {self.presence_source}) "
                             f"but the network gave none")
        if presence_logits.shape != heatmaps.shape[:2]:
            raise ValueError(f"presence logits must have shape {tuple(heatmaps.shape[:2])} (B, L), "
                             f"got {tuple(presence_logits.shape)}")
        with torch.no_grad():
            z = presence_logit(heatmaps.detach().float(), presence_logits.detach().float(),
                               self.presence_source)
            a, b = self.calibration
            probability = torch.sigmoid(a * z + b)
            if frame_logits is not None:
                probability = probability * torch.sigmoid(frame_logits.detach().float())[:, None]
            return probability

    def threshold_score(self, heatmaps: Tensor) -> Tensor:
        """The paper's presence score (B, L): max sigmoid(H) over the frame (max H for `value`
        maps)."""
        with torch.no_grad():
            peak = self._masked(heatmaps.detach().float()).flatten(2).amax(-1)
            return peak if self.kind == "value" else torch.sigmoid(peak)

    def decode(self, logits: Tensor, *, labels: Tensor | None = None,
               presence_prob: Tensor | None = None,
               threshold_score: Tensor | None = None) -> DecodedLandmarks:
        """Positions (input pixels, inside the frame), presence and scores of (B, L, h, w)
        heatmaps.

        labels: (B, H, W) predicted labels on the input grid (the template rule and xy_bone);
        presence_prob: (B, L) calibrated learned presence (`presence_probability`, or an
        ensemble's mean); threshold_score: (B, L) to use instead of the maps' own (an ensemble's
        mean of its models' scores, whose levels the averaged maps no longer carry).
        """
        self._check_decode_inputs(logits, labels)
        with torch.no_grad():
            logits = logits.detach().float()
            masked = self._masked(logits)
            max_logit, xy, row, col = self._locate(masked)
            nan = torch.full_like(max_logit, math.nan)
            if threshold_score is None:
                threshold_score = max_logit if self.kind == "value" else torch.sigmoid(max_logit)
            threshold_score = threshold_score.to(max_logit)
            bone = self._bone_peak(masked, labels) if labels is not None else None
            xy_bone = torch.full_like(xy, math.nan)
            if bone is not None:
                has_bone, bone_xy = bone[0], bone[1]
                xy_bone = torch.where(has_bone[..., None], bone_xy, xy_bone)
            template = self._template_score(masked, labels, nan, (row, col, xy), bone)
            if presence_prob is None:
                presence_prob = nan
            presence_prob = presence_prob.to(max_logit)
            shape_present = self._shape_present(xy, template, presence_prob)
            score, present = self._decide(threshold_score, template, presence_prob, labels,
                                          shape_present)
            return DecodedLandmarks(xy=xy, present=present, score=score,
                                    threshold_score=threshold_score, template_ncc=template,
                                    presence_prob=presence_prob, xy_bone=xy_bone,
                                    shape_present=shape_present)

    def bone_cells(self, labels: Tensor) -> Tensor:
        """(B, L, h, w) bool: heatmap pixels that touch the landmark's own bone in (B, H, W)
        labels."""
        labels = labels.to(torch.long)
        present_bones = sorted(set(self.landmark_bones))
        # (B, K, H, W)
        per_bone = torch.stack([labels == bone for bone in present_bones], dim=1).float()
        if self.stride > 1:
            per_bone = F.max_pool2d(per_bone, self.stride)
        index = bones_on(labels.device, tuple(present_bones.index(b) for b in self.landmark_bones))
        return per_bone.index_select(1, index) > 0

    # ------------------------------------------------------------------ decoding steps

    def _check_decode_inputs(self, logits: Tensor, labels: Tensor | None) -> None:
        expected = self.heatmap_size
        if logits.ndim != 4 or tuple(logits.shape[-2:]) != expected:
            raise ValueError(f"heatmap logits must have shape (B, L, {expected[0]}, "
                             f"{expected[1]}), got {tuple(logits.shape)}")
        if labels is not None and (labels.ndim != 3 or labels.shape[0] != logits.shape[0]
                                   or tuple(labels.shape[-2:]) != self.size):
            raise ValueError(f"labels must have shape ({logits.shape[0]}, {self.size[0]}, "
                             f"{self.size[1]}), got {tuple(labels.shape)}")

    def _masked(self, logits: Tensor) -> Tensor:
        """The maps with every heatmap pixel outside the frame at -inf."""
        rows_ok, cols_ok = self._frame_mask(logits.device)
        inside = rows_ok[:, None] & cols_ok[None, :]
        return logits.masked_fill(~inside, -math.inf)

    def _locate(self, masked: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(max value, refined xy in input pixels clamped into the frame, argmax row, col) of
        masked maps."""
        batch, num_landmarks, height, width = masked.shape
        flat = masked.reshape(batch, num_landmarks, height * width)
        # sigmoid is monotone: the argmax of the logits is the argmax of sigmoid(H).
        max_logit, index = flat.max(dim=-1)
        row = torch.div(index, width, rounding_mode="floor")
        col = index - row * width
        xy = torch.stack((col, row), dim=-1).to(torch.float32)
        if self.refine == "parabola":
            xy = xy + parabola_offset(masked, row, col)
        elif self.refine == "centroid":
            radius = max(1, math.ceil(CENTROID_SIGMAS * self.sigma / self.stride))
            xy = centroid(masked, row, col, radius, exponentiate=self.kind == "logit")
        xy = self.from_heatmap(xy)
        low = xy.new_tensor(self.frame_origin)
        high = low + xy.new_tensor((self.frame[1] - 1, self.frame[0] - 1))
        return max_logit, torch.maximum(torch.minimum(xy, high), low), row, col

    def _bone_peak(self, masked: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(has_bone (B, L), xy, row, col): the refined argmax restricted to each landmark's own
        bone in the predicted labels, and whether the bone is there at all."""
        bone_cells = self.bone_cells(labels)
        has_bone = bone_cells.flatten(2).any(-1)
        _, bone_xy, bone_row, bone_col = self._locate(masked.masked_fill(~bone_cells, -math.inf))
        return has_bone, bone_xy, bone_row, bone_col

    def _template_score(self, masked: Tensor, labels: Tensor | None, nan: Tensor,
                        peak: tuple[Tensor, Tensor, Tensor],
                        bone: tuple[Tensor, Tensor, Tensor, Tensor] | None) -> Tensor:
        """The template rule's NCC (B, L) at the frame's argmax `peak` (row, col, xy), or at the
        bone's (`bone`, from _bone_peak) where the segmentation is trained: -1 where the bone
        is not in view; `nan` where the rule cannot apply (a trained segmentation, no labels)."""
        if labels is None and self.segmentation_trained:
            return nan
        at_row, at_col, at_xy = peak
        use_bone = bone is not None and self.segmentation_trained
        if use_bone:
            has_bone, bone_xy, bone_row, bone_col = bone
            row, col, xy = peak
            at_row = torch.where(has_bone, bone_row, row)
            at_col = torch.where(has_bone, bone_col, col)
            at_xy = torch.where(has_bone[..., None], bone_xy, xy)
        ncc = template_ncc(masked, at_row, at_col, self.to_heatmap(at_xy),
                           radius=self.template_radius, sigma=self.sigma / self.stride,
                           exponentiate=self.kind == "logit")
        if use_bone:
            ncc = torch.where(has_bone, ncc, torch.full_like(ncc, -1.0))
        return ncc

    @property
    def shape_base_rule(self) -> str:
        """The rule whose present calls anchor the shape prior: `learned` where the network has a
        presence output, else `template`."""
        return "learned" if self.presence_source is not None else "template"

    def _shape_base(self, template: Tensor, presence_prob: Tensor) -> tuple[Tensor, float]:
        """(score, cut) of the shape prior's base rule: its present calls are score >= cut."""
        if self.shape_base_rule == "learned":
            return presence_prob, LEARNED_THRESHOLD
        return template, self.template_ncc

    def _shape_present(self, xy: Tensor, template: Tensor, presence_prob: Tensor) -> Tensor:
        """(B, L) float: 1 where the shape prior fitted to the base rule's present landmarks puts
        the landmark in the frame, 0 where not; NaN without a prior or the base rule's scores."""
        base_score, cut = self._shape_base(template, presence_prob)
        if self.shape_prior is None or not torch.isfinite(base_score).all():
            return torch.full_like(base_score, math.nan)
        frame_xy = self.to_frame(xy).detach().cpu().double().numpy()
        anchors = (base_score >= cut).detach().cpu().numpy()
        inside = self.shape_prior.in_frame(frame_xy, anchors, self.frame)
        return torch.from_numpy(inside.astype(np.float32)).to(base_score)

    def _decide(self, threshold_score: Tensor, template: Tensor, presence_prob: Tensor,
                labels: Tensor | None, shape_present: Tensor) -> tuple[Tensor, Tensor]:
        """(score, present) of the presence rule in force."""
        if self.presence == "shape":
            if not torch.isfinite(shape_present).all():
                raise ValueError(f"the shape presence rule needs the scores of its base rule "
                                 f"({self.shape_base_rule})")
            score, _ = self._shape_base(template, presence_prob)
            return score, shape_present >= 0.5
        if self.presence == "threshold":
            score = threshold_score
            present = score >= self.presence_threshold
            if self.kind == "shape":
                present = torch.ones_like(present)
        elif self.presence == "template":
            if labels is None and self.segmentation_trained:
                raise ValueError("the template presence rule needs the predicted labels")
            score = template
            present = score >= self.template_ncc
        else:
            if not torch.isfinite(presence_prob).all():
                raise ValueError("the learned presence rule needs presence probabilities")
            score = presence_prob
            present = score >= LEARNED_THRESHOLD
        return score, present
