"""Where captured predictions live and what a captured row holds.

The contract between the node that writes captures (`tritonflow serve --capture`) and the commands
that read them (`captures`, `lookup`, `drift`): keys relative to the captures root (a local folder
or s3://bucket/prefix), `<model>/<version>/<hour>/<file>.parquet`, hour as `2026-12-02T15` (UTC).
A file appears whole (written aside and renamed, or one S3 put), so a reader never sees part of one;
anything else under the root (a temp file, a foreign file) is not a capture and is skipped.

One Parquet row per row of a request (a batch of 8 rows is 8 captured rows sharing a request id):
the columns below, then `input.<tensor name>` (absent with `--capture-inputs none`) and
`output.<tensor name>`, each a list of the row's values, flattened, as the model got or gave them:
numbers in the tensor's own type, BYTES tensors (an ensemble's string columns, classification labels)
as strings (files written before those were strings hold them as binary; readers take both).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from tritonflow.lineage.errors import TritonflowError
from tritonflow.lineage.ids import check_model_name

SCHEMA = "tritonflow.capture/v1"  # in each file's key-value metadata, under "tritonflow.capture"
SUFFIX = ".parquet"

REQUEST_ID = "request_id"  # string, null when the client sent none
ROW = "row"  # int32: the row's index in its request
TIME = "time"  # timestamp[us, UTC]: when the answer was made
DEPLOYMENT_ID = "deployment_id"  # string: the stamp the response carried
ROLE = "role"  # string: champion, canary, shadow or challenger (asked for by version)
LATENCY_US = "latency_us"  # int64: the request's time in the node, decode to answer
COLUMNS = (REQUEST_ID, ROW, TIME, DEPLOYMENT_ID, ROLE, LATENCY_US)
INPUT = "input."
OUTPUT = "output."

_HOUR_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}")
_FILE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\.parquet")
_VERSION_RE = re.compile(r"[1-9][0-9]{0,18}")


@dataclass(frozen=True)
class CaptureKey:
    model: str
    version: int
    hour: str  # 2026-12-02T15
    name: str

    @property
    def key(self) -> str:
        return f"{self.model}/{self.version}/{self.hour}/{self.name}"


def hour_of(when: datetime) -> str:
    """The hour partition of a UTC time."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H")


def parse_hour(hour: str) -> datetime:
    """The start of an hour partition, as an aware UTC time."""
    return datetime.strptime(hour, "%Y-%m-%dT%H").replace(tzinfo=UTC)


def parse_key(key: str) -> CaptureKey | None:
    """A capture file's parts from its key under the root, or None for anything that is not one."""
    parts = key.split("/")
    if len(parts) != 4:
        return None
    model, version, hour, name = parts
    if not (_VERSION_RE.fullmatch(version) and _HOUR_RE.fullmatch(hour) and _FILE_RE.fullmatch(name)):
        return None
    try:
        check_model_name(model)
        parse_hour(hour)
    except (TritonflowError, ValueError):
        return None
    return CaptureKey(model, int(version), hour, name)
