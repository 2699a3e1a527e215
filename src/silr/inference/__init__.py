"""The one inference path (decoding, ensembles) and the readers of users' frames for `silr predict`.

Imports from the layers below (`core`, `data`, `model`).
"""
