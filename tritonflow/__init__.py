"""tritonflow: Metaflow runs -> Triton model repositories -> stamped serving -> lineage.

The Python API (tritonflow/api.py: `lineage_of`, `models`, `releases`, `promote`, ...) is exported
here on first use, so `import tritonflow` (and every command) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> the module that defines it, imported when the name is first read
_LAZY = {
    **dict.fromkeys(
        ("lineage_of", "deployments_of_run", "models", "releases", "promote", "rollback", "canary", "shadow"),
        "tritonflow.api",
    ),
    "Lineage": "tritonflow.documents",
    "Releases": "tritonflow.documents",
    "TritonflowError": "tritonflow.lineage.errors",
}
__all__ = ["__version__", *_LAZY]

if TYPE_CHECKING:  # NOTE: the lazy names' types, for type checkers and editors
    from tritonflow.api import canary as canary
    from tritonflow.api import deployments_of_run as deployments_of_run
    from tritonflow.api import lineage_of as lineage_of
    from tritonflow.api import models as models
    from tritonflow.api import promote as promote
    from tritonflow.api import releases as releases
    from tritonflow.api import rollback as rollback
    from tritonflow.api import shadow as shadow
    from tritonflow.documents import Lineage as Lineage
    from tritonflow.documents import Releases as Releases
    from tritonflow.lineage.errors import TritonflowError as TritonflowError


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'tritonflow' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # NOTE: once read, a plain attribute: no second lookup
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
