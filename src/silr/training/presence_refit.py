"""The presence head refitted alone on the frozen best weights, after training
(train.presence_refit_epochs)."""

from __future__ import annotations

import torch

from silr.core.types import Batch
from silr.model import checkpoint
from silr.model.codec import presence_logit
from silr.model.losses import presence_bce_loss
from silr.model.network import SILRNet
from silr.training.dataset import augment, batch_indices, draw_augmentation, outlier_frames
from silr.training.run import Setup, TrainingRecord, build_like

__all__ = ["refit_presence_head"]


def refit_presence_head(setup: Setup, record: TrainingRecord) -> dict[str, torch.Tensor] | None:
    """The best weights with the presence head retrained alone (train.presence_refit_epochs) on the
    augmented training frames, every other weight frozen and every batch norm in eval mode, so that
    the head learns from the features it will see at test time (in training, batch norm normalises
    with the batch's own statistics). Each batch also holds train.presence_outliers outlier frames
    (silr.training.dataset.outlier_frames), which train the head's frame gate (outlier frame -> 0,
    training frame -> 1; the landmark logits learn from the training frames only). None when there
    is no head or no refit. Deterministic: its own generator, seeded with train.seed."""
    train = setup.params.train
    if setup.codec.presence_source is None or train.presence_refit_epochs == 0:
        return None
    model = build_like(setup)
    model.load_state_dict(record.best_state if record.best_state is not None
                          else checkpoint.model_state_cpu(setup.model))
    model.eval()
    head = model.presence_head
    optimizer = torch.optim.AdamW(head.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    generator = torch.Generator(device=setup.runtime.device)
    generator.manual_seed(train.seed)
    frames = setup.train_frames
    for _ in range(train.presence_refit_epochs):
        for index in batch_indices(len(frames), train.presence_refit_batch, generator,
                                   frames.device):
            batch = frames.batch(index)
            batch = augment(batch, draw_augmentation(setup.params.augment, len(index), generator))
            loss = _refit_loss(setup, model, batch, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    if train.presence_outliers:
        head.frame_gate_trained.fill_(True)
    return checkpoint.model_state_cpu(model)


def _refit_loss(setup: Setup, model: SILRNet, batch: Batch,
                generator: torch.Generator) -> torch.Tensor:
    """The head's loss on one augmented batch (and its outlier frames) of frozen features."""
    train, codec, runtime = setup.params.train, setup.codec, setup.runtime
    images = batch.images
    if train.presence_outliers:
        images = torch.cat((images, outlier_frames(images, train.presence_outliers, generator)))
    with torch.no_grad(), runtime.autocast():
        features = model.encode(images.contiguous(memory_format=runtime.memory_format))
        heatmaps = model.heatmap_decoder(features)
    logits, position, gate = model.presence_head(features, heatmaps)
    real = len(batch.images)
    z = presence_logit(heatmaps[:real].float(), logits[:real].float(), codec.presence_source)
    loss = presence_bce_loss(z, batch.present, position[:real], batch.landmarks_xy, codec.size[1])
    if train.presence_outliers:
        in_domain = torch.zeros_like(gate, dtype=torch.float32)
        in_domain[:real] = 1.0
        loss = loss + torch.nn.functional.binary_cross_entropy_with_logits(gate.float(), in_domain)
    return loss
