"""One drift check from names to a document: resolve the version, read its reference profile and its
captured rows, compare. What `tritonflow drift` prints and flows/monitor_flow.py renders as a card."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow.compute as pc

from tritonflow.lineage import capture_layout as cl
from tritonflow.lineage.captures import CaptureError, nothing_found, open_captures, skipped_note
from tritonflow.lineage.drift import Thresholds, drift_document
from tritonflow.lineage.errors import NotFound
from tritonflow.lineage.reference import read_reference
from tritonflow.lineage.repository import ModelRepository, default_repository


def check_drift(
    target: str,
    captures_root: str,
    repository: str | None = None,
    since: timedelta | None = None,
    thresholds: Thresholds | None = None,
) -> dict[str, Any]:
    """The drift document of `target` (MODEL:VERSION or a deployment ID) against its captures under
    `captures_root`, the rows of the last `since` only when given. Files under the root that are not
    captures are named in the document's `skipped` (None when there were none)."""
    repo = ModelRepository(default_repository(repository))
    try:
        record = repo.resolve(target)
    except NotFound:
        repo.check_layout(f"tritonflow drift {target} --repository {{}}")
        raise
    profile = read_reference(repo.store, record)
    captures = open_captures(captures_root, record.model_name, record.version, since)
    table = captures.read()
    if table is not None and since is not None:
        table = table.filter(pc.greater_equal(table[cl.TIME], datetime.now(UTC) - since))
    if table is None:
        raise nothing_found(captures, f"{record.model_name}:{record.version}")
    if table.num_rows == 0:
        raise CaptureError(
            f"no rows of {record.model_name}:{record.version} captured in the last {since} under "
            f"{captures.root}: widen --since"
        )
    doc = drift_document(record.deployment_id, profile, record.signature, table, thresholds or Thresholds())
    return {**doc, "skipped": skipped_note(captures)}
