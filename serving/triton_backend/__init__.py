"""Triton's `fil` backend as a Python-based backend, for Triton builds that lack the native one.

`model.py` is not imported here: Triton's python backend stub loads it from
`<backends>/fil/model.py`, which `tritonflow triton-backends DIR` writes.
"""
