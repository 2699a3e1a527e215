"""The model: network, heatmap codec, losses, model card and checkpoint file.

Imports only from `silr.core` and `silr.data`.
"""
