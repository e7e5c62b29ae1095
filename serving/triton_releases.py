"""Which Triton releases tritonflow writes for, and what differs between them.

Kept apart from model_config (which imports Triton's protobuf schema, ~0.1 s): @deploy checks
`triton_version` in every Metaflow task process it starts, and that check should cost nothing.
"""

from __future__ import annotations

import re

from tritonflow.lineage.errors import TritonflowError

# The FIL config dialect changed in 25.09: `output_class` became `is_classifier`.
IS_CLASSIFIER_SINCE = (25, 9)
OLDEST_TRITON = "24.03"  # Treelite 4.x checkpoints load from here on
NEWEST_TRITON = "26.10"


def parse_triton_version(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d{2})\.(\d{2})", text.strip())
    if not match:
        raise TritonflowError(
            f"triton_version {text!r} is not a Triton release: use YY.MM, e.g. {NEWEST_TRITON!r}"
        )
    release = (int(match[1]), int(match[2]))
    if not _release(OLDEST_TRITON) <= release <= _release(NEWEST_TRITON):
        raise TritonflowError(
            f"triton_version {text!r} is not supported: Treelite 4 checkpoints need Triton "
            f"{OLDEST_TRITON} or later; the newest release supported is {NEWEST_TRITON}"
        )
    return release


def _release(text: str) -> tuple[int, int]:
    year, month = text.split(".")
    return int(year), int(month)


def classifier_key(triton_version: str) -> str:
    """The FIL parameter that says 'classifier' for a Triton release."""
    return "is_classifier" if parse_triton_version(triton_version) >= IS_CLASSIFIER_SINCE else "output_class"
