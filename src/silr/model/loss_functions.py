"""The loss terms as functions of tensors (silr.model.losses describes each term).

Each checks its shapes and computes in float32, whatever the autocast dtype of its inputs.
The term modules of silr.model.loss_terms call them with a batch and a network output.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from silr.core import anatomy
from silr.core.choices import (
    DEFAULT_DETACH_SEGMENTATION,
    DEFAULT_KL_REDUCTION,
    KL_REDUCTIONS,
    MSE_FOREGROUND_WEIGHT,
)
from silr.model.decode_helpers import bones_on, presence_logit

__all__ = [
    "bone_distance_loss",
    "continuous_visibility",
    "dice_ce_loss",
    "dice_ce_module",
    "kl_loss",
    "kl_null_loss",
    "mse_loss",
    "ncc_loss",
    "presence_bce_loss",
    "soft_visibility",
    "visibility_loss",
]

# Weight of a visibility error where the landmark is out of frame (v = 0): false positives
# cost twice as much as misses (paper, section 2.2).
FALSE_POSITIVE_WEIGHT = 2.0
# Denominator guard of the NCC for a constant map (e.g. an untrained network's output).
NCC_EPS = 1e-8
# presence_bce's position estimate: positions beyond this (input pixels) are stand-ins for
# unknown ones (silr.training.dataset.UNKNOWN_POSITION); smooth-L1 is quadratic within
# POSITION_BETA (about 5 px on a 192-px input in the [-1, 1] units of the head).
POSITION_KNOWN_LIMIT = 1.0e5
POSITION_BETA = 0.05
# Distances this large mean the bone is not in the frame at all (the sentinel is 4096 px).
BONE_DISTANCE_IN_VIEW = 1024.0


def _check_maps(name: str, logits: Tensor, target: Tensor) -> None:
    if logits.ndim != 4 or logits.shape != target.shape:
        raise ValueError(f"{name}: expected heatmap logits and target of the same shape "
                         f"(B, L, H, W), got {tuple(logits.shape)} and {tuple(target.shape)}")


def _check_present(name: str, logits: Tensor, present: Tensor) -> None:
    if present.shape != logits.shape[:2]:
        raise ValueError(f"{name}: expected present of shape {tuple(logits.shape[:2])} (B, L), "
                         f"got {tuple(present.shape)}")


def _masked_mean(per_landmark: Tensor, present: Tensor) -> Tensor:
    """Mean of (B, L) values over the in-frame landmarks; 0 (with grad) when there are none."""
    mask = present.to(per_landmark.dtype)
    return (per_landmark * mask).sum() / mask.sum().clamp_min(1.0)


def dice_ce_loss(seg_logits: Tensor, labels: Tensor, _loss: nn.Module | None = None) -> Tensor:
    """MONAI DiceCELoss of (B, C, H, W) logits against (B, H, W) integer labels."""
    if seg_logits.ndim != 4 or labels.shape != (seg_logits.shape[0], *seg_logits.shape[2:]):
        raise ValueError(f"dice_ce: expected logits (B, C, H, W) and labels (B, H, W) of the same "
                         f"B, H, W, got {tuple(seg_logits.shape)} and {tuple(labels.shape)}")
    if labels.is_floating_point():
        raise ValueError(f"dice_ce: expected integer class labels, got dtype {labels.dtype}")
    loss = _loss if _loss is not None else dice_ce_module()
    return loss(seg_logits.float(), labels[:, None].long())


def dice_ce_module() -> nn.Module:
    """MONAI's DiceCELoss over one-hot labels and softmax logits."""
    # MONAI is a heavy import (about 1 s): only a loss with a dice_ce term loads it.
    from monai.losses import DiceCELoss

    return DiceCELoss(to_onehot_y=True, softmax=True)


def kl_loss(logits: Tensor, target_normalized: Tensor, present: Tensor,
            reduction: str = DEFAULT_KL_REDUCTION) -> Tensor:
    """KL(target || softmax over all pixels of the logits), in-frame landmarks only, reduced
    as `reduction` says (KL_REDUCTIONS; `landmark`: mean over in-frame landmarks of the sum
    over pixels)."""
    _check_maps("kl", logits, target_normalized)
    _check_present("kl", logits, present)
    if reduction not in KL_REDUCTIONS:
        raise ValueError(f"kl: reduction must be one of {', '.join(KL_REDUCTIONS)}, "
                         f"got {reduction!r}")
    log_q = torch.log_softmax(logits.float().flatten(2), dim=-1)
    target = target_normalized.float().flatten(2)
    # xlogy gives 0 * log 0 = 0 where the target vanishes.
    per_pixel = (torch.xlogy(target, target) - target * log_q) * present.float()[..., None]
    if reduction == "landmark":
        return _masked_mean(per_pixel.sum(-1), present)
    if reduction == "batchmean":
        return per_pixel.sum() / logits.shape[0]
    return per_pixel.mean()


def mse_loss(logits: Tensor, target_peak: Tensor,
             foreground_weight: float = MSE_FOREGROUND_WEIGHT,
             present: Tensor | None = None) -> Tensor:
    """Mean over pixels of w (H - g)^2, g the peak-1 Gaussian (zero maps out of frame) and
    w = 1 + foreground_weight * g (0: plain MSE; > 0 weighs the few pixels under the Gaussian up
    so that the background does not drown them). With `present` (B, L) the maps of absent
    landmarks are left out (target weights, as mmpose's KeypointMSELoss(use_target_weight=True));
    without it every map counts, the absent ones trained towards zero."""
    _check_maps("mse", logits, target_peak)
    target = target_peak.float()
    squared = (logits.float() - target) ** 2
    if foreground_weight:
        squared = squared * (1.0 + foreground_weight * target)
    if present is None:
        return squared.mean()
    _check_present("mse", logits, present)
    return _masked_mean(squared.mean(dim=(-2, -1)), present)


def ncc_loss(logits: Tensor, target_peak: Tensor, present: Tensor) -> Tensor:
    """Mean over in-frame landmarks of 1 - NCC(H, peak-1 Gaussian)."""
    _check_maps("ncc", logits, target_peak)
    _check_present("ncc", logits, present)
    h = logits.float().flatten(2)
    g = target_peak.float().flatten(2)
    h = h - h.mean(-1, keepdim=True)
    g = g - g.mean(-1, keepdim=True)
    ncc = (h * g).sum(-1) / torch.sqrt((h * h).sum(-1) * (g * g).sum(-1) + NCC_EPS)
    return _masked_mean(1.0 - ncc, present)


def visibility_loss(v_hat: Tensor, v: Tensor) -> Tensor:
    """The paper's L_vis: mean over the batch of (1/L) sum_i w_i |v_hat_i - v_i|, w = 2 where
    v = 0, else 1."""
    if v_hat.ndim != 2 or v_hat.shape != v.shape:
        raise ValueError(f"visibility_loss: expected v_hat and v of the same shape (B, L), "
                         f"got {tuple(v_hat.shape)} and {tuple(v.shape)}")
    v = v.to(v_hat.dtype)
    weight = torch.where(v > 0, torch.ones_like(v), torch.full_like(v, FALSE_POSITIVE_WEIGHT))
    return (weight * (v_hat - v).abs()).mean(-1).mean()


def kl_null_loss(logits: Tensor, null_logits: Tensor, target_normalized: Tensor,
                 present: Tensor) -> Tensor:
    """Mean over every landmark of KL(target || softmax over [pixels, null cell]): in frame, the
    sum-1 Gaussian on the pixels; absent, all mass on the null cell (-log p(null))."""
    _check_maps("kl_null", logits, target_normalized)
    _check_present("kl_null", logits, present)
    if null_logits is None or null_logits.shape != logits.shape[:2]:
        got = None if null_logits is None else tuple(null_logits.shape)
        raise ValueError(f"kl_null: expected null-cell logits of shape {tuple(logits.shape[:2])} "
                         f"(B, L) from the presence head, got {got}")
    cells = torch.cat((logits.float().flatten(2), null_logits.float()[..., None]), dim=-1)
    log_q = torch.log_softmax(cells, dim=-1)
    target = target_normalized.float().flatten(2)
    inside = present.float()
    kl_present = (torch.xlogy(target, target) - target * log_q[..., :-1]).sum(-1)
    return (inside * kl_present + (1.0 - inside) * -log_q[..., -1]).mean()


def presence_bce_loss(presence_logits: Tensor, present: Tensor, presence_xy: Tensor | None = None,
                      landmarks_xy: Tensor | None = None, size: int | None = None) -> Tensor:
    """Mean binary cross-entropy of (B, L) presence logits against the (B, L) in-frame flags,
    plus, when the head's position estimate `presence_xy` (B, L, 2, [-1, 1] over an input of
    `size` pixels) is given, its smooth-L1 error against the true input-pixel positions
    `landmarks_xy` of every landmark whose position is known (absent ones included)."""
    if presence_logits is None or presence_logits.shape != present.shape:
        got = None if presence_logits is None else tuple(presence_logits.shape)
        raise ValueError(f"presence_bce: expected presence logits of shape {tuple(present.shape)} "
                         f"(B, L) from the presence head, got {got}")
    loss = F.binary_cross_entropy_with_logits(presence_logits.float(), present.float())
    if presence_xy is None:
        return loss
    if landmarks_xy is None or size is None or presence_xy.shape != landmarks_xy.shape:
        raise ValueError(f"presence_bce: expected true positions of shape "
                         f"{tuple(presence_xy.shape)} and the input size with the position "
                         f"estimate")
    # pixel centres -> [-1, 1], as the head's grid
    target = (2.0 * landmarks_xy.float() + 1.0) / size - 1.0
    known = (landmarks_xy.abs() < POSITION_KNOWN_LIMIT).all(-1).float()
    error = F.smooth_l1_loss(presence_xy.float(), target, reduction="none",
                             beta=POSITION_BETA).sum(-1)
    return loss + _masked_mean(error, known)


def _check_bone_distance(logits: Tensor, bone_distance: Tensor, present: Tensor,
                         landmark_bones: Sequence[int], bone_labels: Sequence[int]) -> None:
    if logits.ndim != 4:
        raise ValueError(f"bone_distance: expected heatmap logits (B, L, h, w), "
                         f"got {tuple(logits.shape)}")
    _check_present("bone_distance", logits, present)
    if bone_distance is None:
        raise ValueError("bone_distance: the batch carries no distance maps (build the frames with "
                         "with_bone_distance=True)")
    if (bone_distance.ndim != 4 or bone_distance.shape[:2] != (logits.shape[0], len(bone_labels))
            or bone_distance.shape[-2] % logits.shape[-2]
            or bone_distance.shape[-1] % logits.shape[-1]):
        raise ValueError(f"bone_distance: expected distance maps ({logits.shape[0]}, "
                         f"{len(bone_labels)}, H, W) with H, W multiples of the heatmaps' "
                         f"{tuple(logits.shape[-2:])}, got {tuple(bone_distance.shape)}")
    if len(landmark_bones) != logits.shape[1]:
        raise ValueError(f"bone_distance: expected one bone per landmark ({logits.shape[1]}), "
                         f"got {len(landmark_bones)}")


def bone_distance_loss(logits: Tensor, bone_distance: Tensor, present: Tensor,
                       landmark_bones: Sequence[int] = anatomy.LANDMARK_BONE_INDEX,
                       bone_labels: Sequence[int] = anatomy.LANDMARK_BONE_LABELS) -> Tensor:
    """Mean over in-frame landmarks whose bone is in view of E_softmax(H_i)[d_i] (input pixels).

    bone_distance: (B, K, H, W) distance of every input pixel to bone k of `bone_labels`
    (silr.training.dataset.bone_distance_maps, moved by the augmentation); a heatmap pixel's
    distance is the mean over the input pixels it covers, so a cell half outside the bone costs
    half as much.
    """
    _check_bone_distance(logits, bone_distance, present, landmark_bones, bone_labels)
    stride = bone_distance.shape[-1] // logits.shape[-1]
    distance = bone_distance.float()
    if stride > 1:
        distance = F.avg_pool2d(distance, stride)
    slots = bones_on(distance.device,
                     tuple(tuple(bone_labels).index(int(b)) for b in landmark_bones))
    distance = distance.index_select(1, slots).flatten(2)  # (B, L, hw)
    # A bone nowhere near the frame (silr.training.dataset.BONE_DISTANCE_ABSENT) leaves its
    # landmarks out.
    in_view = distance.amin(-1) < BONE_DISTANCE_IN_VIEW
    q = torch.softmax(logits.float().flatten(2), dim=-1)
    expected = (q * distance).sum(-1)
    return _masked_mean(expected, present.float() * in_view.float())


def continuous_visibility(heatmap_logits: Tensor, presence_logits: Tensor, seg_logits: Tensor, *,
                          source: str, detach_segmentation: bool = DEFAULT_DETACH_SEGMENTATION,
                          landmark_bones: Sequence[int] = anatomy.LANDMARK_BONE_INDEX) -> Tensor:
    """Differentiable v_hat (B, L) = sigmoid(z) * (0.5 + 0.5 * p_inside), z the learned presence
    logit."""
    if presence_logits is None:
        raise ValueError("visibility_continuous: the network has no presence head (the loss must "
                         "train one)")
    p_present = torch.sigmoid(presence_logit(heatmap_logits.float(), presence_logits.float(),
                                             source))
    p_inside = _bone_mass(heatmap_logits, seg_logits, detach_segmentation, landmark_bones)
    return p_present * (0.5 + 0.5 * p_inside)


def _bone_index(num_landmarks: int, landmark_bones: Sequence[int],
                device: torch.device) -> Tensor:
    if len(landmark_bones) != num_landmarks:
        raise ValueError(f"visibility: expected one bone label per landmark ({num_landmarks}), "
                         f"got {len(landmark_bones)}")
    return bones_on(device, tuple(int(b) for b in landmark_bones))


def soft_visibility(heatmap_logits: Tensor, seg_logits: Tensor, *,
                    detach_segmentation: bool = DEFAULT_DETACH_SEGMENTATION,
                    landmark_bones: Sequence[int] = anatomy.LANDMARK_BONE_INDEX) -> Tensor:
    """Differentiable v_hat (B, L) = p_present * (0.5 + 0.5 * p_inside).

    p_present = sigmoid(max H_i); p_inside = sum over pixels of softmax(H_i) times the
    segmentation probability of landmark i's bone. With `detach_segmentation` the
    segmentation is a constant here, so the term cannot pull the masks to the landmarks.
    It tends to the discrete v_hat as the heatmap softmax and sigmoid sharpen.
    """
    p_inside = _bone_mass(heatmap_logits, seg_logits, detach_segmentation, landmark_bones)
    p_present = torch.sigmoid(heatmap_logits.float().flatten(2).amax(-1))
    return p_present * (0.5 + 0.5 * p_inside)


def _bone_mass(heatmap_logits: Tensor, seg_logits: Tensor, detach_segmentation: bool,
               landmark_bones: Sequence[int]) -> Tensor:
    """(B, L): sum over heatmap pixels of softmax(H_i) times the predicted probability of
    landmark i's bone."""
    if (heatmap_logits.ndim != 4 or seg_logits.ndim != 4
            or heatmap_logits.shape[0] != seg_logits.shape[0]
            or seg_logits.shape[2] % heatmap_logits.shape[2]
            or seg_logits.shape[3] % heatmap_logits.shape[3]
            or seg_logits.shape[2] // heatmap_logits.shape[2]
            != seg_logits.shape[3] // heatmap_logits.shape[3]):
        raise ValueError(f"visibility: expected heatmaps (B, L, h, w) and segmentation "
                         f"(B, C, H, W) of the same B, with H, W the same multiple of h, w, got "
                         f"{tuple(heatmap_logits.shape)} and {tuple(seg_logits.shape)}")
    heatmaps = heatmap_logits.float().flatten(2)  # (B, L, HW)
    bones = _bone_index(heatmaps.shape[1], landmark_bones, heatmaps.device)
    if max(landmark_bones) >= seg_logits.shape[1]:
        raise ValueError(f"visibility: bone label {max(landmark_bones)} needs at least "
                         f"{max(landmark_bones) + 1} segmentation classes, "
                         f"got {seg_logits.shape[1]}")
    seg_prob = torch.softmax(seg_logits.float(), dim=1)
    stride = seg_logits.shape[2] // heatmap_logits.shape[2]
    if stride > 1:  # heatmaps at a coarser stride: the bone probability of each pixel's area
        seg_prob = F.avg_pool2d(seg_prob, stride)
    seg_prob = seg_prob.flatten(2)  # (B, C, hw)
    if detach_segmentation:
        seg_prob = seg_prob.detach()
    bone_prob = seg_prob.index_select(1, bones)  # (B, L, HW)
    return (torch.softmax(heatmaps, dim=-1) * bone_prob).sum(-1)
