"""Scoring and reporting: metrics, baselines, result files, comparisons, the corruption suite,
tables and figures.

Imports from the layers below, never from `stages`.
"""
