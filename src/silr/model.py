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

from silr import anatomy
from silr.errors import CheckpointError, ConfigError
from silr.types import ModelOutput

# Strides of the HRNet branches the encoder returns; the fused map lives at the first one.
BRANCH_STRIDES: tuple[int, ...] = (4, 8, 16, 32)
ENCODER_STRIDE = BRANCH_STRIDES[0]
# Input sides must be multiples of the coarsest stride so every branch tiles the input exactly.
INPUT_MULTIPLE = BRANCH_STRIDES[-1]
# Number of 2x upsampling steps from the fused map (stride 4) to the input resolution.
DECODER_STEPS = ENCODER_STRIDE.bit_length() - 1


def _timm_hrnet(timm_name: str, in_chans: int) -> nn.Module:
    import timm  # heavy import, only when a network is built

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
    """ConfigError unless `backbone` names a builder in BACKBONES (callers check early, before any output)."""
    if backbone not in BACKBONES:
        raise ConfigError(f"model.backbone: unknown backbone {backbone!r} (known: {', '.join(BACKBONES)})")


class SILRNet(nn.Module):
    """HRNet encoder + landmark decoder + segmentation decoder.

    forward: (B, in_chans, H, W) float, H and W multiples of 32 ->
    ModelOutput(heatmaps (B, num_landmarks, H, W), segmentation (B, num_classes, H, W)), logits.
    `config` holds the constructor arguments (plain values) so a checkpoint can rebuild it.
    """

    def __init__(self, backbone: str, decoder_channels: Sequence[int], *,
                 num_landmarks: int = anatomy.NUM_LANDMARKS, num_classes: int = anatomy.NUM_CLASSES,
                 in_chans: int = 1) -> None:
        super().__init__()
        check_backbone(backbone)
        decoder_channels = _check_decoder_channels(decoder_channels)
        for key, value in (("num_landmarks", num_landmarks), ("num_classes", num_classes), ("in_chans", in_chans)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"model.{key} must be an integer >= 1, got {value!r}")
        self.config: dict[str, Any] = {
            "backbone": backbone, "decoder_channels": list(decoder_channels),
            "num_landmarks": num_landmarks, "num_classes": num_classes, "in_chans": in_chans,
        }
        self.in_chans = in_chans
        self.encoder = BACKBONES[backbone](in_chans)
        reductions = tuple(self.encoder.feature_info.reduction())
        if reductions != BRANCH_STRIDES:  # a guard against a timm change, not a user error
            raise RuntimeError(f"{backbone}: expected encoder branches at strides {BRANCH_STRIDES}, got {reductions}")
        fused_channels = sum(self.encoder.feature_info.channels())
        self.heatmap_decoder = Decoder(fused_channels, decoder_channels, num_landmarks)
        self.segmentation_decoder = Decoder(fused_channels, decoder_channels, num_classes)
        self.heatmap_stride = heatmap_stride(decoder_channels)
        # What init_checkpoint loaded, if anything (the CLI reports it; nothing here prints).
        self.init_report: dict[str, Any] | None = None

    def check_input(self, images: Tensor) -> None:
        if (images.ndim != 4 or images.shape[1] != self.in_chans
                or images.shape[2] % INPUT_MULTIPLE or images.shape[3] % INPUT_MULTIPLE
                or images.shape[2] == 0 or images.shape[3] == 0):
            raise ValueError(f"SILRNet expects images of shape (B, {self.in_chans}, H, W) with H and W "
                             f"divisible by {INPUT_MULTIPLE}, got {tuple(images.shape)}")

    def encode(self, images: Tensor) -> Tensor:
        """The fused HRNetV2 feature map: every branch upsampled to stride 4, concatenated."""
        branches = self.encoder(images)
        size = branches[0].shape[-2:]
        upsampled = [branches[0]] + [F.interpolate(b, size=size, mode="bilinear", align_corners=False)
                                     for b in branches[1:]]
        return torch.cat(upsampled, dim=1)

    def forward(self, images: Tensor) -> ModelOutput:
        self.check_input(images)
        features = self.encode(images)
        segmentation = self.segmentation_decoder(features)
        if self.heatmap_stride > 1:
            segmentation = F.interpolate(segmentation, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return ModelOutput(heatmaps=self.heatmap_decoder(features), segmentation=segmentation)


def _check_decoder_channels(decoder_channels: Sequence[int]) -> tuple[int, ...]:
    try:
        channels = tuple(decoder_channels)
    except TypeError:
        raise ConfigError(f"model.decoder_channels must be a list of at most {DECODER_STEPS} integers, "
                          f"got {decoder_channels!r}") from None
    if len(channels) > DECODER_STEPS or not all(
            isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in channels):
        raise ConfigError(f"model.decoder_channels must be at most {DECODER_STEPS} integers >= 1 (one per 2x "
                          f"upsampling step from stride {ENCODER_STRIDE}; [] = heads on the stride-"
                          f"{ENCODER_STRIDE} map), got {list(channels)!r}")
    return channels


def heatmap_stride(decoder_channels: Sequence[int]) -> int:
    """Input pixels per heatmap pixel of a decoder with these upsampling steps (4, 2 or 1)."""
    return ENCODER_STRIDE >> len(tuple(decoder_channels))


def model_config(model: SILRNet) -> dict[str, Any]:
    """Plain constructor arguments that rebuild `model` with `build_model(**config)`."""
    return dict(model.config, decoder_channels=list(model.config["decoder_channels"]))


def build_model(backbone: str, decoder_channels: Sequence[int], *, num_landmarks: int = anatomy.NUM_LANDMARKS,
                num_classes: int = anatomy.NUM_CLASSES, init_checkpoint: str | Path | None = None,
                in_chans: int = 1) -> SILRNet:
    """A SILRNet, randomly initialised (seed with torch.manual_seed), optionally from a local checkpoint."""
    model = SILRNet(backbone, decoder_channels, num_landmarks=num_landmarks, num_classes=num_classes,
                    in_chans=in_chans)
    if init_checkpoint is not None:
        model.init_report = load_init_checkpoint(model, init_checkpoint)
    return model


# ------------------------------------------------------------------ init checkpoint

_STATE_KEYS = ("state_dict", "model_state", "model")


def load_init_checkpoint(model: SILRNet, path: str | Path) -> dict[str, Any]:
    """Load a local state dict into the whole network or, if its keys are the encoder's, the encoder.

    Accepts a bare state dict or a dict holding one under 'state_dict', 'model_state' or
    'model' (a silr checkpoint qualifies). A 'module.' prefix (DataParallel) is removed.
    Loading is non-strict (an ImageNet classifier's head is simply unused); an RGB stem is
    folded to `in_chans` the way timm adapts input convolutions. Returns what was loaded.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model.init_checkpoint: {path}: no such file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        raise CheckpointError(f"model.init_checkpoint: {path}: not a readable torch state dict ({exc})") from None
    state = payload
    for key in _STATE_KEYS:
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"model.init_checkpoint: {path}: expected a state dict of tensors "
                              f"(or a dict with one of {', '.join(_STATE_KEYS)})")
    state = {k.removeprefix("module."): v for k, v in state.items()}

    whole_model = any(k.startswith("encoder.") for k in state)
    target: nn.Module = model if whole_model else model.encoder
    own = target.state_dict()
    if not whole_model:
        state = _adapt_stem(state, own)
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if mismatched:
        k = mismatched[0]
        raise CheckpointError(f"model.init_checkpoint: {path}: {len(mismatched)} tensors do not fit "
                              f"{model.config['backbone']}, e.g. {k} has shape {tuple(state[k].shape)}, "
                              f"expected {tuple(own[k].shape)}")
    matched = [k for k in state if k in own]
    if not matched:
        raise CheckpointError(f"model.init_checkpoint: {path}: none of its {len(state)} tensors belongs to "
                              f"a {model.config['backbone']} {'network' if whole_model else 'encoder'}")
    result = target.load_state_dict(state, strict=False)
    return {"path": str(path), "target": "model" if whole_model else "encoder", "loaded": len(matched),
            "missing": len(result.missing_keys), "unexpected": len(result.unexpected_keys)}


def _adapt_stem(state: dict[str, Tensor], own: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Fold an ImageNet (3-channel) stem conv to the encoder's input channels (timm's rule)."""
    key = "conv1.weight"
    if key in state and key in own and state[key].ndim == 4 and state[key].shape[1] != own[key].shape[1]:
        from timm.models import adapt_input_conv

        state = dict(state)
        state[key] = adapt_input_conv(own[key].shape[1], state[key])
    return state
