"""The segmentation-informed landmark network: a timm HRNet encoder and two decoders.

Encoder: a timm HRNet with `features_only=True, feature_location=''`, whose four parallel
branches (strides 4, 8, 16, 32) are fused HRNetV2-style (every branch upsampled to stride
4, bilinear, and concatenated): "the final encoder feature map" of the paper.

Decoders (one for the landmark heatmaps, one for the segmentation; same design): repeated
[2x bilinear upsampling, 3x3 conv, BN, ReLU, residual block (3x3 conv, BN, ReLU, 3x3 conv,
BN, identity skip, ReLU)] from stride 4 towards the input resolution, then a 1x1 conv to
the logits. `decoder_channels` gives the width after each upsampling step, so its length
is the number of 2x steps: 2 (the paper's design) ends at the input resolution; 1 or 0
(an empty list: a 1x1 conv on the fused map) end at stride 2 or 4, several times cheaper
on a CPU. The heatmaps stay at that stride (`heatmap_stride`; the codec decodes them with
sub-pixel refinement); the segmentation logits are upsampled bilinearly to the input.

Presence head (optional, `presence_head=True`; built when the loss trains it, silr.model.losses):
one logit per landmark from the detached fused features and heatmaps (`PresenceHead`). It is
built after the decoders and trains nothing but itself, so a network with it starts from the
same random weights as one without, and (for the same loss otherwise) learns the same
heatmaps and segmentation.

Backbones are named in `BACKBONES` (a registry of builders). Weights are never downloaded;
`init_checkpoint` may name a local state dict for the encoder or the whole network.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from silr.core import anatomy
from silr.core.errors import CheckpointError, ConfigError
from silr.core.types import ModelOutput

__all__ = [
    "BACKBONES", "BRANCH_STRIDES", "DECODER_STEPS", "ENCODER_STRIDE", "INPUT_MULTIPLE",
    "PresenceHead", "SILRNet", "build_model", "check_backbone", "heatmap_stride",
    "load_init_checkpoint", "model_config",
]

# Strides of the HRNet branches the encoder returns; the fused map lives at the first one.
BRANCH_STRIDES: tuple[int, ...] = (4, 8, 16, 32)
ENCODER_STRIDE = BRANCH_STRIDES[0]
# Input sides must be multiples of the coarsest stride so every branch tiles the input exactly.
INPUT_MULTIPLE = BRANCH_STRIDES[-1]
# Number of 2x upsampling steps from the fused map (stride 4) to the input resolution.
DECODER_STEPS = ENCODER_STRIDE.bit_length() - 1


def _timm_hrnet(timm_name: str, in_chans: int) -> nn.Module:
    # timm takes seconds to import: only when a network is built, not for this module's
    # constants (silr.model.card reads heatmap_stride) or `silr --help`.
    import timm

    # out_indices (1..4) drops the stride-2 stem output and keeps the four branches.
    return timm.create_model(timm_name, pretrained=False, features_only=True, feature_location="",
                             in_chans=in_chans, out_indices=(1, 2, 3, 4))


# Backbone name (params `model.backbone`) -> builder(in_chans) of a timm HRNet feature encoder.
BACKBONES: dict[str, Callable[[int], nn.Module]] = {
    name: partial(_timm_hrnet, name)
    for name in ("hrnet_w18_small", "hrnet_w18_small_v2", "hrnet_w18", "hrnet_w30", "hrnet_w32",
                 "hrnet_w40", "hrnet_w44", "hrnet_w48", "hrnet_w64")
}


class ConvBNReLU(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class ResidualBlock(nn.Module):
    """Two 3x3 conv + BN with an identity skip (ResNet basic block, constant width)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + x, inplace=True)


class UpBlock(nn.Sequential):
    """2x bilinear upsampling, 3x3 conv + BN + ReLU, residual block."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            ConvBNReLU(in_channels, out_channels),
            ResidualBlock(out_channels),
        )


class PresenceHead(nn.Module):
    """Whether each landmark is in the frame: (fused features, heatmap logits) -> (B, L) logits.

    Per landmark i, from what the network already computed, detached (the head reads the
    features and heatmaps but never trains them, so localisation is exactly that of the same
    loss without it):
    - the features under the landmark's heatmap: sum over x of softmax(H_i)(x) F(x), F the fused
      map reduced by a 1x1 conv + BN + ReLU;
    - the frame's global average and max of F (max lets a channel act as a detector anywhere);
    - the heatmap's geometry: its soft-argmax (x, y) in [-1, 1], the soft-argmax's distance to
      the nearest border, its spread along x and y, max H_i and logsumexp H_i;
    - every landmark's geometry (the shape context: the pelvis is nearly rigid, so where the
      other landmarks are says where this one must be);
    - which landmark it is (one-hot);
    concatenated -> Linear, ReLU -> Linear -> one logit and a correction of the soft-argmax:
    the head's estimate of the landmark's position, trained (losses.presence_bce) on every
    landmark whose position is known, absent ones included, so that the hidden layer must place
    a landmark past the border from the others. A frame gate (a linear layer on the global
    pooling) says whether the frame is a projection like the training frames at all; it is
    trained with outlier frames (inverted, block-shuffled, smooth noise) when the head is
    refitted after training, and the presence probability is then sigmoid(z) x sigmoid(gate):
    P(present) = P(a projection like the training frames) x P(present | one). (mmpose's
    VisPredictHead pools the
    features globally; the per-landmark attention and geometry are ours: an absent landmark is
    one whose evidence points past the frame's border.)
    """

    GEOMETRY = 7

    def __init__(self, in_channels: int, num_landmarks: int, width: int = 64,
                 hidden: int = 64) -> None:
        super().__init__()
        self.num_landmarks = num_landmarks
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, width, 1, bias=False),
                                    nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        # Each landmark also sees every landmark's geometry (the shape context: where the other
        # landmarks are says where this one must be, inside the frame or past its border).
        context = self.GEOMETRY * num_landmarks
        in_features = 3 * width + self.GEOMETRY + context + num_landmarks
        self.classify = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True),
                                      nn.Linear(hidden, 3))
        # The frame gate: is this a projection like the training frames at all? Trained only when
        # the head is refitted with outlier frames (silr.stages.train); until then it is not used.
        self.frame_classify = nn.Linear(2 * width, 1)
        self.register_buffer("frame_gate_trained", torch.zeros((), dtype=torch.bool))

    def forward(self, features: Tensor, heatmaps: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        features, heatmaps = features.detach(), heatmaps.detach().float()
        batch, num_landmarks, height, width = heatmaps.shape
        reduced = self.reduce(features)
        if tuple(reduced.shape[-2:]) != (height, width):
            reduced = F.adaptive_avg_pool2d(reduced, (height, width))
        reduced = reduced.float()
        q = torch.softmax(heatmaps.flatten(2), dim=-1)  # (B, L, hw)
        attended = torch.einsum("blx,bcx->blc", q, reduced.flatten(2))  # (B, L, C)
        # The frame's global average and max of the reduced map: (B, 2C).
        pooled = torch.cat((reduced.mean(dim=(-2, -1)), reduced.amax(dim=(-2, -1))), dim=1)
        # Heatmap pixel centres in [-1, 1] over the input (grid_sample's align_corners=False
        # convention): the units of the position estimate, whatever the stride.
        xs = (2.0 * torch.arange(width, device=heatmaps.device) + 1.0) / width - 1.0
        ys = (2.0 * torch.arange(height, device=heatmaps.device) + 1.0) / height - 1.0
        q_map = q.view(batch, num_landmarks, height, width)
        px, py = q_map.sum(-2), q_map.sum(-1)  # marginals (B, L, w), (B, L, h)
        mean_x, mean_y = (px * xs).sum(-1), (py * ys).sum(-1)
        spread_x = ((px * (xs - mean_x[..., None]) ** 2).sum(-1) + 1e-8).sqrt()
        spread_y = ((py * (ys - mean_y[..., None]) ** 2).sum(-1) + 1e-8).sqrt()
        border = 1.0 - torch.maximum(mean_x.abs(), mean_y.abs())
        flat = heatmaps.flatten(2)
        geometry = torch.stack((mean_x, mean_y, border, spread_x, spread_y, flat.amax(-1) / 10.0,
                                torch.logsumexp(flat, -1) / 10.0), dim=-1)
        identity = torch.eye(num_landmarks, device=heatmaps.device).expand(batch, -1, -1)
        context = geometry.reshape(batch, 1, -1).expand(-1, num_landmarks, -1)
        inputs = torch.cat((attended, pooled[:, None, :].expand(-1, num_landmarks, -1), geometry,
                            context, identity), dim=-1)
        output = self.classify(inputs)
        # The logit, the soft-argmax moved by the head's correction (its estimate of where the
        # landmark is, inside the frame or past its border), and the frame gate's logit.
        return (output[..., 0], torch.stack((mean_x, mean_y), dim=-1) + output[..., 1:],
                self.frame_classify(pooled).squeeze(-1))


class Decoder(nn.Module):
    """Stride-4 features -> logits of `out_channels` maps at stride 4 / 2^len(channels)."""

    def __init__(self, in_channels: int, channels: Sequence[int], out_channels: int) -> None:
        super().__init__()
        widths = [in_channels, *channels]
        self.blocks = nn.Sequential(*(UpBlock(a, b) for a, b in zip(widths[:-1], widths[1:])))
        self.head = nn.Conv2d(widths[-1], out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(x))


def check_backbone(backbone: str) -> None:
    """ConfigError unless `backbone` names a builder in BACKBONES (callers check early, before
    any output)."""
    if backbone not in BACKBONES:
        raise ConfigError(f"model.backbone: unknown backbone {backbone!r} "
                          f"(known: {', '.join(BACKBONES)})")


class SILRNet(nn.Module):
    """HRNet encoder + landmark decoder + segmentation decoder.

    forward: (B, in_chans, H, W) float, H and W multiples of 32 ->
    ModelOutput(heatmaps (B, num_landmarks, H/s, W/s), segmentation (B, num_classes, H, W),
    presence (B, num_landmarks) or None), logits.
    `config` holds the constructor arguments (plain values) so a checkpoint can rebuild it.
    """

    def __init__(self, backbone: str, decoder_channels: Sequence[int], *,
                 num_landmarks: int = anatomy.NUM_LANDMARKS, num_classes: int = anatomy.NUM_CLASSES,
                 in_chans: int = 1, presence_head: bool = False) -> None:
        super().__init__()
        check_backbone(backbone)
        if not isinstance(presence_head, bool):
            raise ConfigError(f"model presence_head must be true or false, got {presence_head!r}")
        decoder_channels = _check_decoder_channels(decoder_channels)
        for key, value in (("num_landmarks", num_landmarks), ("num_classes", num_classes),
                           ("in_chans", in_chans)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"model.{key} must be an integer >= 1, got {value!r}")
        self.config: dict[str, Any] = {
            "backbone": backbone, "decoder_channels": list(decoder_channels),
            "num_landmarks": num_landmarks, "num_classes": num_classes, "in_chans": in_chans,
        }
        # only then, so that the config (and checkpoint) of other networks is unchanged
        if presence_head:
            self.config["presence_head"] = True
        self.in_chans = in_chans
        self.encoder = BACKBONES[backbone](in_chans)
        reductions = tuple(self.encoder.feature_info.reduction())
        if reductions != BRANCH_STRIDES:  # a guard against a timm change, not a user error
            raise RuntimeError(f"{backbone}: expected encoder branches at strides "
                               f"{BRANCH_STRIDES}, got {reductions}")
        fused_channels = sum(self.encoder.feature_info.channels())
        self.heatmap_decoder = Decoder(fused_channels, decoder_channels, num_landmarks)
        self.segmentation_decoder = Decoder(fused_channels, decoder_channels, num_classes)
        # Built last: the other modules draw the same random initial weights with or without it.
        self.presence_head = PresenceHead(fused_channels, num_landmarks) if presence_head else None
        self.heatmap_stride = heatmap_stride(decoder_channels)
        # What init_checkpoint loaded, if anything (the CLI reports it; nothing here prints).
        self.init_report: dict[str, Any] | None = None

    def check_input(self, images: Tensor) -> None:
        if (images.ndim != 4 or images.shape[1] != self.in_chans
                or images.shape[2] % INPUT_MULTIPLE or images.shape[3] % INPUT_MULTIPLE
                or images.shape[2] == 0 or images.shape[3] == 0):
            raise ValueError(f"SILRNet expects images of shape (B, {self.in_chans}, H, W) with "
                             f"H and W divisible by {INPUT_MULTIPLE}, got {tuple(images.shape)}")

    def encode(self, images: Tensor) -> Tensor:
        """The fused HRNetV2 feature map: every branch upsampled to stride 4, concatenated."""
        branches = self.encoder(images)
        size = branches[0].shape[-2:]
        upsampled = [branches[0]] + [
            F.interpolate(b, size=size, mode="bilinear", align_corners=False)
            for b in branches[1:]]
        return torch.cat(upsampled, dim=1)

    def forward(self, images: Tensor) -> ModelOutput:
        self.check_input(images)
        features = self.encode(images)
        segmentation = self.segmentation_decoder(features)
        if self.heatmap_stride > 1:
            segmentation = F.interpolate(segmentation, size=images.shape[-2:], mode="bilinear",
                                         align_corners=False)
        heatmaps = self.heatmap_decoder(features)
        presence = presence_xy = frame = None
        if self.presence_head is not None:
            presence, presence_xy, frame = self.presence_head(features, heatmaps)
            if not bool(self.presence_head.frame_gate_trained):
                frame = None
        return ModelOutput(heatmaps=heatmaps, segmentation=segmentation, presence=presence,
                           presence_xy=presence_xy, presence_frame=frame)


def _check_decoder_channels(decoder_channels: Sequence[int]) -> tuple[int, ...]:
    try:
        channels = tuple(decoder_channels)
    except TypeError:
        raise ConfigError(f"model.decoder_channels must be a list of at most {DECODER_STEPS} "
                          f"integers, got {decoder_channels!r}") from None
    if len(channels) > DECODER_STEPS or not all(
            isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in channels):
        raise ConfigError(f"model.decoder_channels must be at most {DECODER_STEPS} integers >= 1 "
                          f"(one per 2x upsampling step from stride {ENCODER_STRIDE}; [] = heads "
                          f"on the stride-{ENCODER_STRIDE} map), got {list(channels)!r}")
    return channels


def heatmap_stride(decoder_channels: Sequence[int]) -> int:
    """Input pixels per heatmap pixel of a decoder with these upsampling steps (4, 2 or 1)."""
    return ENCODER_STRIDE >> len(tuple(decoder_channels))


def model_config(model: SILRNet) -> dict[str, Any]:
    """Plain constructor arguments that rebuild `model` with `build_model(**config)`."""
    return dict(model.config, decoder_channels=list(model.config["decoder_channels"]))


def build_model(backbone: str, decoder_channels: Sequence[int], *,
                num_landmarks: int = anatomy.NUM_LANDMARKS, num_classes: int = anatomy.NUM_CLASSES,
                init_checkpoint: str | Path | None = None, in_chans: int = 1,
                presence_head: bool = False) -> SILRNet:
    """A SILRNet, randomly initialised (seed with torch.manual_seed), optionally from a local
    checkpoint."""
    model = SILRNet(backbone, decoder_channels, num_landmarks=num_landmarks,
                    num_classes=num_classes, in_chans=in_chans, presence_head=presence_head)
    if init_checkpoint is not None:
        model.init_report = load_init_checkpoint(model, init_checkpoint)
    return model


# ------------------------------------------------------------------ init checkpoint

_STATE_KEYS = ("state_dict", "model_state", "model")


def load_init_checkpoint(model: SILRNet, path: str | Path) -> dict[str, Any]:
    """Load a local state dict into the whole network or, if its keys are the encoder's, the
    encoder.

    Accepts a bare state dict or a dict holding one under 'state_dict', 'model_state' or
    'model' (a silr checkpoint qualifies). A 'module.' prefix (DataParallel) is removed.
    Loading is non-strict (an ImageNet classifier's head is simply unused); an RGB stem is
    folded to `in_chans` the way timm adapts input convolutions. Returns what was loaded.
    """
    path = Path(path)
    state = _read_init_state(path)
    whole_model = any(k.startswith("encoder.") for k in state)
    target: nn.Module = model if whole_model else model.encoder
    own = target.state_dict()
    if not whole_model:
        state = _adapt_stem(state, own)
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if mismatched:
        k = mismatched[0]
        raise CheckpointError(f"model.init_checkpoint: {path}: {len(mismatched)} tensors do not "
                              f"fit {model.config['backbone']}, e.g. {k} has shape "
                              f"{tuple(state[k].shape)}, expected {tuple(own[k].shape)}")
    matched = [k for k in state if k in own]
    if not matched:
        kind = "network" if whole_model else "encoder"
        raise CheckpointError(f"model.init_checkpoint: {path}: none of its {len(state)} tensors "
                              f"belongs to a {model.config['backbone']} {kind}")
    result = target.load_state_dict(state, strict=False)
    return {"path": str(path), "target": "model" if whole_model else "encoder",
            "loaded": len(matched), "missing": len(result.missing_keys),
            "unexpected": len(result.unexpected_keys)}


def _read_init_state(path: Path) -> dict[str, Tensor]:
    """The state dict of tensors in the file `path` (bare or under one of _STATE_KEYS), its
    'module.' prefixes removed."""
    if not path.is_file():
        raise CheckpointError(f"model.init_checkpoint: {path}: no such file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        # torch's own messages run to paragraphs (a refused pickle explains weights_only at
        # length): the exception type is enough to tell them apart, on one line.
        raise CheckpointError(f"model.init_checkpoint: {path}: not a readable torch state dict "
                              f"(corrupt, not a torch file, or holding objects other than "
                              f"tensors, which are never unpickled: {type(exc).__name__})"
                              ) from None
    state = payload
    for key in _STATE_KEYS:
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"model.init_checkpoint: {path}: expected a state dict of tensors "
                              f"(or a dict with one of {', '.join(_STATE_KEYS)})")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _adapt_stem(state: dict[str, Tensor], own: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Fold an ImageNet (3-channel) stem conv to the encoder's input channels (timm's rule)."""
    key = "conv1.weight"
    if (key in state and key in own and state[key].ndim == 4
            and state[key].shape[1] != own[key].shape[1]):
        # timm is heavy (seconds to import) and this module is imported for its constants
        # too (silr.model.card): like _timm_hrnet, only when it is needed.
        from timm.models import adapt_input_conv

        state = dict(state)
        state[key] = adapt_input_conv(own[key].shape[1], state[key])
    return state
