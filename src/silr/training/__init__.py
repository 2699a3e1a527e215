"""Training building blocks: frames on the device with augmentation, the resume store, progress.

Imports from the layers below (`core`, `data`, `model`), never from `inference` or `evaluation`.
"""
