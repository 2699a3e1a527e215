"""Training building blocks: frames on the device with augmentation, a run's setup and record, the
training loop with its validations and checkpoints, the presence-head refit, the resume store, the
dvclive logs and progress.

Imports from the layers below (`core`, `data`, `model`), never from `inference` or `evaluation`.
"""
