"""The garbage collector and the loop: what a node keeps for good is frozen out of the collector's walks.

A full collection walks every tracked object: ~60k once nvForest is imported, 14 ms in which the
loop answers nothing; under load that was the p99 (16 ms against a 2 ms p90 at 64 connections).
pandas, which pyarrow imports for the capture writer's first table, brings as many again: with it
unfrozen, capture cost +90% p99 at 64 connections even with no row captured.
"""

from __future__ import annotations

import gc


def settle_heap() -> None:
    """Freeze what is alive now (loaded engines, imported modules) after a collection; unfreezing
    first lets what was retired since the last freeze (old versions' cycles) go."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
