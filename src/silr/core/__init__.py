"""Facts and plumbing: anatomy, coordinate conventions, params, errors, atomic IO, limits.

The bottom layer: imports nothing else of silr, so every other folder may use it.
"""
