"""Scoring and reporting: metrics, baselines, result files, comparisons, the corruption suite, figures.

Imports from the layers below, never from `stages`.
"""
