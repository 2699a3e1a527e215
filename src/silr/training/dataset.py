"""A fold's frames as device-resident tensors, and the training augmentation.

The 8x data set is small (about 50 MB), so a fold's frames are prepared once (scaled to
[0, 1] per frame and padded to 192x192 by `silr.core.network_input`, landmarks shifted by
`coords.pad_offset`) and kept on the training device. Batches are index selections and
the augmentation runs batched on the same device: no per-step host copies.

The augmentation is the paper's MONAI pipeline, applied in this order, each transform
independently with probability `augment.prob` per sample:

  RandZoom(min_zoom, max_zoom, keep_size=True)   image bilinear, labels nearest
  RandRotate(range_x=rotate, keep_size=True)     image bilinear, labels nearest, border padding
  RandAdjustContrast(gamma)                      image only

It is re-implemented batched with `grid_sample` so that it runs on the GPU in one call
per batch; for fixed parameters every step reproduces MONAI's `Zoom`, `Rotate` and
`AdjustContrast` (tests/test_dataset.py compares them). Landmarks go through the same
affine maps as the pixels; a landmark moved outside the 180x180 frame region becomes
absent. Heatmap targets are rendered afterwards, from the moved landmarks, by the loss.
Labels use `nearest-exact` semantics (a pixel takes the label under its centre), so they
stay aligned with the image; MONAI's plain `nearest` zoom is half a pixel off.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from silr.core import coords
from silr.core.anatomy import FRAME_SIZE_PX, LANDMARK_BONE_LABELS, NETWORK_INPUT_PX, NUM_LANDMARKS
from silr.core.errors import DataError
from silr.core.network_input import pad_labels, to_network_input
from silr.core.params import AugmentParams
from silr.core.types import Batch
from silr.data.processed import ProcessedData

__all__ = [
    "BONE_DISTANCE_ABSENT", "OUTLIER_KINDS", "UNKNOWN_POSITION", "AugmentDraw", "FrameSet",
    "adjust_contrast", "augment", "batch_indices", "bone_distance_maps", "describe_augmentation",
    "draw_augmentation", "frame_set", "in_frame_region", "outlier_frames", "rotation_matrices",
    "zoom_matrices",
]

# MONAI AdjustContrast's guard against a constant image.
CONTRAST_EPSILON = 1e-7
# The stand-in position of a landmark whose position the file does not give (input pixels).
UNKNOWN_POSITION = 1.0e6
# The distance map of a bone that is not in the frame: far beyond any frame (the term skips it).
BONE_DISTANCE_ABSENT = 4096.0


@dataclass
class FrameSet:
    """Frames in network-input coordinates, all on one device.

    images (N, 1, S, S) float32 in [0, 1]; labels (N, S, S) uint8; landmarks_xy (N, L, 2)
    float32 input pixels; present (N, L) bool (inside the 180x180 frame); keys: the
    (specimen, frame) of each row.
    """

    images: Tensor
    labels: Tensor
    landmarks_xy: Tensor
    present: Tensor
    keys: list[tuple[int, int]]
    # (N, K, S, S) float16 distance to each landmark bone (`bone_distance_maps`), when a loss
    # needs it.
    bone_distance: Tensor | None = None

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def device(self) -> torch.device:
        return self.images.device

    def batch(self, index: Tensor) -> Batch:
        """The rows `index` (a device tensor) as a Batch; labels as int64 for the losses."""
        distance = self.bone_distance[index].float() if self.bone_distance is not None else None
        return Batch(self.images[index], self.labels[index].long(), self.landmarks_xy[index],
                     self.present[index], distance)


def bone_distance_maps(labels: np.ndarray,
                       bones: Sequence[int] = LANDMARK_BONE_LABELS) -> np.ndarray:
    """(N, K, H, W) float32: the Euclidean distance (pixels) from every pixel to bone k of (N, H, W)
    integer labels, 0 on the bone; BONE_DISTANCE_ABSENT everywhere when the bone is not in the
    frame."""
    # Lazy: scipy.ndimage takes most of a second to import; only the bone_distance term needs it.
    from scipy.ndimage import distance_transform_edt

    labels = np.asarray(labels)
    result = np.full((len(labels), len(bones), *labels.shape[1:]), BONE_DISTANCE_ABSENT,
                     dtype=np.float32)
    for n, frame in enumerate(labels):
        for k, bone in enumerate(bones):
            outside = frame != bone
            if not outside.all():
                result[n, k] = distance_transform_edt(outside)
    return result


def frame_set(data: ProcessedData, keys: Sequence[tuple[int, int]],
              device: torch.device | str = "cpu",
              source: str = "processed data", with_bone_distance: bool = False) -> FrameSet:
    """The frames `keys` of `data` (a silr.data.processed.ProcessedData) prepared for the network;
    `with_bone_distance` adds the distance maps of the bone_distance term (computed once here,
    then moved by the augmentation with the labels)."""
    if not keys:
        raise DataError(f"{source}: no frames selected (an empty split)")
    images, labels, landmarks = [], [], []
    for specimen, frame in keys:
        frames_of = data.specimens.get(specimen)
        if frames_of is None:
            raise DataError(f"{source}: no specimen {specimen} (have {sorted(data.specimens)})")
        if not 0 <= frame < len(frames_of.images):
            raise DataError(f"{source}: specimen {specimen} has no frame {frame} "
                            f"(it has {len(frames_of.images)} frames)")
        images.append(frames_of.images[frame])
        labels.append(frames_of.labels[frame])
        landmarks.append(frames_of.landmarks_xy[frame])
    image_stack = np.stack(images)
    height, width = image_stack.shape[-2:]
    if (height, width) != (FRAME_SIZE_PX, FRAME_SIZE_PX):
        raise DataError(f"{source}: frames are {height}x{width}, the network expects "
                        f"{FRAME_SIZE_PX}x{FRAME_SIZE_PX} (8x downsampled) frames")
    xy = np.stack(landmarks).astype(np.float64)
    if xy.shape[1:] != (NUM_LANDMARKS, 2):
        raise DataError(f"{source}: landmarks have shape {xy.shape[1:]}, "
                        f"expected ({NUM_LANDMARKS}, 2)")
    present = coords.in_frame(xy, width, height)
    # A landmark without a position (NaN in the file) gets a finite stand-in far outside every
    # frame: it must not put NaN into any sum, and the presence head's position estimate must not
    # learn it (losses.presence_bce skips positions beyond UNKNOWN_POSITION / 2).
    xy = (np.where(np.isfinite(xy), xy, UNKNOWN_POSITION)
          + coords.pad_offset(FRAME_SIZE_PX, NETWORK_INPUT_PX))
    padded_labels = pad_labels(np.stack(labels)).to(torch.uint8)
    distance = None
    if with_bone_distance:
        # float16 halves the memory; distances up to 2048 px keep a step of at most 1 px.
        maps = bone_distance_maps(padded_labels.numpy())
        distance = torch.from_numpy(maps).to(torch.float16).to(device)
    return FrameSet(
        images=to_network_input(image_stack).to(device),
        labels=padded_labels.to(device),
        landmarks_xy=torch.from_numpy(xy.astype(np.float32)).to(device),
        present=torch.from_numpy(present).to(device),
        keys=[(int(s), int(f)) for s, f in keys],
        bone_distance=distance,
    )


def batch_indices(count: int, batch_size: int, generator: torch.Generator | None,
                  device: torch.device | str) -> Iterator[Tensor]:
    """Index tensors covering 0..count-1 in batches; shuffled with `generator` when given.

    A trailing batch of a single frame is dropped when shuffling (batch norm cannot train
    on one sample); every frame still gets its turn over the epochs.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if generator is None:
        order = torch.arange(count, device=device)
    else:
        order = torch.randperm(count, generator=generator, device=generator.device).to(device)
    for start in range(0, count, batch_size):
        index = order[start:start + batch_size]
        if generator is not None and len(index) == 1 and count > 1:
            break
        yield index


# ------------------------------------------------------------------ augmentation

@dataclass(frozen=True)
class AugmentDraw:
    """Per-sample parameters of one augmentation call (B,) each, on the batch's device.

    A transform not applied to a sample has its identity value (zoom 1, angle 0,
    gamma 1) and its `do_*` flag False.
    """

    do_zoom: Tensor
    zoom: Tensor
    do_rotate: Tensor
    angle: Tensor
    do_contrast: Tensor
    gamma: Tensor

    @staticmethod
    def fixed(batch_size: int, *, zoom: float | None = None, angle: float | None = None,
              gamma: float | None = None, device: torch.device | str = "cpu") -> AugmentDraw:
        """The same chosen transforms for every sample (None: not applied); for tests and tools."""
        def flag(chosen: float | None) -> Tensor:
            return torch.full((batch_size,), chosen is not None, dtype=torch.bool, device=device)

        def value(chosen: float | None, identity: float) -> Tensor:
            return torch.full((batch_size,), identity if chosen is None else chosen,
                              dtype=torch.float32, device=device)

        return AugmentDraw(flag(zoom), value(zoom, 1.0), flag(angle), value(angle, 0.0),
                           flag(gamma), value(gamma, 1.0))


def draw_augmentation(params: AugmentParams, batch_size: int,
                      generator: torch.Generator) -> AugmentDraw:
    """Random per-sample augmentation parameters from `generator` (on its device)."""
    device = generator.device
    uniform = torch.rand((6, batch_size), generator=generator, device=device)
    do_zoom = uniform[0] < params.prob
    do_rotate = uniform[2] < params.prob
    do_contrast = uniform[4] < params.prob
    low, high = params.zoom
    zoom = torch.where(do_zoom, low + (high - low) * uniform[1], torch.ones_like(uniform[1]))
    angle = torch.where(do_rotate, params.rotate * (2 * uniform[3] - 1),
                        torch.zeros_like(uniform[3]))
    low, high = params.gamma
    gamma = torch.where(do_contrast, low + (high - low) * uniform[5], torch.ones_like(uniform[5]))
    return AugmentDraw(do_zoom, zoom, do_rotate, angle, do_contrast, gamma)


def zoom_matrices(zoom: Tensor, size: int) -> Tensor:
    """(B, 2, 3) maps output pixel (x, y, 1) -> input pixel (x, y) of MONAI's Zoom(keep_size=True).

    MONAI resizes to floor(size * zoom) with `interpolate(recompute_scale_factor=True)`,
    i.e. input = (zoomed + 0.5) * size / zoomed_size - 0.5, then centre-crops (or pads)
    back to `size` (`ResizeWithPadOrCrop`): zoomed = output + start.
    """
    zoomed_size = torch.floor(size * zoom)
    scale = size / zoomed_size
    crop_start = torch.floor(zoomed_size / 2) - size // 2
    pad_start = -torch.floor((size - zoomed_size) / 2)
    start = torch.where(zoomed_size >= size, crop_start, pad_start)
    offset = (start + 0.5) * scale - 0.5
    zero = torch.zeros_like(scale)
    return torch.stack([torch.stack([scale, zero, offset], -1),
                        torch.stack([zero, scale, offset], -1)], -2)


def rotation_matrices(angle: Tensor, size: int) -> Tensor:
    """(B, 2, 3) maps output pixel (x, y, 1) -> input pixel (x, y) of MONAI's
    Rotate(keep_size=True).

    MONAI turns (row, col) about the centre c = (size - 1) / 2 by
    [[cos, -sin], [sin, cos]] (output -> input); written in (x, y) = (col, row) order.
    """
    cos, sin = torch.cos(angle), torch.sin(angle)
    centre = (size - 1) / 2
    # x_in = cos * (x - c) + sin * (y - c) + c ; y_in = -sin * (x - c) + cos * (y - c) + c
    offset_x = centre - cos * centre - sin * centre
    offset_y = centre + sin * centre - cos * centre
    return torch.stack([torch.stack([cos, sin, offset_x], -1),
                        torch.stack([-sin, cos, offset_y], -1)], -2)


def _invert(matrices: Tensor) -> Tensor:
    """Inverse of (B, 2, 3) affine maps, closed form (linalg.inv would sync a GPU for errors)."""
    a, b, c = matrices[:, 0, 0], matrices[:, 0, 1], matrices[:, 0, 2]
    d, e, f = matrices[:, 1, 0], matrices[:, 1, 1], matrices[:, 1, 2]
    det = a * e - b * d
    ia, ib, id_, ie = e / det, -b / det, -d / det, a / det
    return torch.stack([torch.stack([ia, ib, -(ia * c + ib * f)], -1),
                        torch.stack([id_, ie, -(id_ * c + ie * f)], -1)], -2)


def _map_points(matrices: Tensor, xy: Tensor) -> Tensor:  # (B, 2, 3) maps of (B, L, 2) points
    return xy @ matrices[:, :, :2].transpose(1, 2) + matrices[:, :, 2].unsqueeze(1)


def _sample(values: Tensor, matrices: Tensor, mode: str) -> Tensor:
    """Resample (B, C, S, S) at input = matrices @ output (pixel units), border padding."""
    batch, _, height, width = values.shape
    ys = torch.arange(height, device=values.device, dtype=matrices.dtype)
    xs = torch.arange(width, device=values.device, dtype=matrices.dtype)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    pixels = torch.stack([grid_x, grid_y], dim=-1).reshape(1, -1, 2).expand(batch, -1, -1)
    source = _map_points(matrices, pixels).reshape(batch, height, width, 2)
    # Pixel centres -> grid_sample's [-1, 1] with align_corners=False (MONAI's default).
    grid = torch.stack([(2 * source[..., 0] + 1) / width - 1,
                        (2 * source[..., 1] + 1) / height - 1], dim=-1)
    return F.grid_sample(values, grid.to(values.dtype), mode=mode, padding_mode="border",
                         align_corners=False)


def _resample_where(batch: Batch, apply: Tensor, matrices: Tensor) -> Batch:
    """Apply a spatial step to the samples flagged in `apply` (others are left bit-exact). Only
    those are resampled (grid_sample treats each sample alone, so the values are those of
    resampling all): at augment.prob 0.5 that halves the cost, for one GPU sync per step."""
    chosen = apply.nonzero().squeeze(1)
    if len(chosen) == 0:
        return batch
    selected = matrices[chosen]
    images = batch.images.index_copy(0, chosen, _sample(batch.images[chosen], selected, "bilinear"))
    moved_labels = _sample(batch.labels[chosen].unsqueeze(1).to(batch.images.dtype), selected,
                           "nearest")
    labels = batch.labels.index_copy(0, chosen,
                                     moved_labels.squeeze(1).round().to(batch.labels.dtype))
    landmarks = batch.landmarks_xy.index_copy(
        0, chosen, _map_points(_invert(selected), batch.landmarks_xy[chosen]))
    distance = batch.bone_distance
    if distance is not None:
        # The maps are similarity transforms (zoom, rotation): a distance of d input pixels
        # spans d / scale output pixels, scale = the matrix's |determinant|^(1/2).
        scale = (selected[:, 0, 0] * selected[:, 1, 1]
                 - selected[:, 0, 1] * selected[:, 1, 0]).abs().sqrt()
        moved = _sample(distance[chosen], selected, "bilinear") / scale.view(-1, 1, 1, 1)
        distance = distance.index_copy(0, chosen, moved)
    return Batch(images, labels, landmarks, batch.present, distance)


def adjust_contrast(images: Tensor, gamma: Tensor) -> Tensor:
    """MONAI AdjustContrast per sample: ((x - min) / (range + eps)) ** gamma * range + min."""
    flat = images.flatten(1)
    low = flat.min(dim=1).values.view(-1, 1, 1, 1)
    span = flat.max(dim=1).values.view(-1, 1, 1, 1) - low
    return ((images - low) / (span + CONTRAST_EPSILON)) ** gamma.view(-1, 1, 1, 1) * span + low


def in_frame_region(landmarks_xy: Tensor, frame: int = FRAME_SIZE_PX,
                    size: int = NETWORK_INPUT_PX) -> Tensor:
    """(B, L) True where input-pixel landmarks lie inside the frame region (coords.in_frame
    rule)."""
    frame_xy = landmarks_xy - coords.pad_offset(frame, size)
    return (torch.isfinite(frame_xy).all(-1) & (frame_xy >= 0).all(-1)
            & (frame_xy <= frame - 1).all(-1))


def augment(batch: Batch, draw: AugmentDraw) -> Batch:
    """Zoom, rotate, adjust contrast (each where drawn); landmarks follow, out-of-frame ones
    become absent."""
    size = batch.images.shape[-1]
    if batch.images.shape[-2] != size:
        raise ValueError(f"augment expects square images, got {tuple(batch.images.shape[-2:])}")
    geometry_dtype = torch.float32
    batch = _resample_where(batch, draw.do_zoom, zoom_matrices(draw.zoom.to(geometry_dtype), size))
    batch = _resample_where(batch, draw.do_rotate,
                            rotation_matrices(draw.angle.to(geometry_dtype), size))
    images = torch.where(draw.do_contrast.view(-1, 1, 1, 1),
                         adjust_contrast(batch.images, draw.gamma), batch.images)
    present = batch.present & in_frame_region(batch.landmarks_xy, FRAME_SIZE_PX, size)
    return Batch(images, batch.labels, batch.landmarks_xy, present, batch.bone_distance)


# Outlier frames for the presence head's frame gate (outlier exposure: Hendrycks et al., 2019):
# images that are not line-integral projections of a pelvis, made from the training frames
# themselves so that they work on any data set. `inverted`: the frame with bone dark;
# `shuffled`: its 6 x 6 blocks permuted (local texture kept, anatomy destroyed); `smooth`:
# smooth random intensities (bicubic upsampling of 12 x 12 uniform noise).
OUTLIER_KINDS = ("inverted", "shuffled", "smooth")
_OUTLIER_BLOCKS = 6


def outlier_frames(images: Tensor, count: int, generator: torch.Generator,
                   frame: int = FRAME_SIZE_PX) -> Tensor:
    """(count, 1, S, S) outlier frames from the first `count` of (B, 1, S, S) network inputs (the
    frame centred, zero padding around it; the padding stays zero), kinds drawn with `generator`."""
    size = images.shape[-1]
    origin = (size - frame) // 2
    device = images.device
    kinds = torch.randint(len(OUTLIER_KINDS), (count,), generator=generator,
                          device=generator.device).tolist()
    made = []
    for i, kind in enumerate(kinds):
        source = images[i % len(images), :, origin:origin + frame, origin:origin + frame]
        name = OUTLIER_KINDS[kind]
        if name == "inverted":
            pixels = 1.0 - source
        elif name == "shuffled":
            side = frame // _OUTLIER_BLOCKS
            blocks = source[:, :side * _OUTLIER_BLOCKS, :side * _OUTLIER_BLOCKS].reshape(
                1, _OUTLIER_BLOCKS, side, _OUTLIER_BLOCKS, side).permute(0, 1, 3, 2, 4).reshape(
                1, -1, side, side)
            order = torch.randperm(blocks.shape[1], generator=generator,
                                   device=generator.device).to(device)
            pixels = torch.zeros_like(source)
            pixels[:, :side * _OUTLIER_BLOCKS, :side * _OUTLIER_BLOCKS] = blocks[:, order].reshape(
                1, _OUTLIER_BLOCKS, _OUTLIER_BLOCKS, side, side).permute(0, 1, 3, 2, 4).reshape(
                1, side * _OUTLIER_BLOCKS, side * _OUTLIER_BLOCKS)
        else:
            noise = torch.rand((1, 1, 12, 12), generator=generator,
                               device=generator.device).to(device)
            pixels = F.interpolate(noise, size=(frame, frame), mode="bicubic",
                                   align_corners=False)[0]
            pixels = (pixels - pixels.min()) / (pixels.max() - pixels.min()).clamp_min(1e-6)
        made.append(F.pad(pixels, (origin, size - frame - origin, origin, size - frame - origin)))
    return torch.stack(made)


def describe_augmentation(params: AugmentParams) -> str:
    """One line for logs and the model card."""
    return (f"p={params.prob}: zoom {params.zoom[0]}-{params.zoom[1]}, "
            f"rotate +-{params.rotate:.3g} rad ({math.degrees(params.rotate):.1f} deg), "
            f"contrast gamma {params.gamma[0]}-{params.gamma[1]}")
