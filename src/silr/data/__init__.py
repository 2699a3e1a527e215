"""File formats and data transforms: the DeepFluoro HDF5 layouts, ingestion, splits, image readers.

Imports only from `silr.core`.
"""
