"""Reading captured predictions (lineage/capture_layout.py) from a captures root, local or s3://.

Only keys that parse as captures and files that carry the capture schema are read; everything else
under the root (a foreign file, a temp file, a file that does not read as Parquet) is skipped and
named, so a reader never fails on what another tool left there.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tritonflow.lineage import capture_layout as cl
from tritonflow.lineage.errors import TritonflowError
from tritonflow.lineage.store import Store, open_store

METADATA_KEY = b"tritonflow.capture"


class CaptureError(TritonflowError):
    """The captures root cannot be read as asked, or holds nothing that was asked for."""


@dataclass
class Captures:
    """The capture files of a root that match a filter, and the files skipped on the way."""

    root: str
    store: Store
    keys: list[cl.CaptureKey]
    skipped: list[str] = field(default_factory=list)  # "key (why)"

    def read(self, columns: list[str] | None = None) -> pa.Table | None:
        """Every matching file's rows in one table (None when none read); unreadable files are skipped."""
        tables = [t for key in self.keys if (t := self._table(key)) is not None]
        if not tables:
            return None
        table = pa.concat_tables(tables, promote_options="default")
        return table.select([c for c in columns if c in table.column_names]) if columns else table

    def find(self, request_id: str) -> pa.Table | None:
        """The captured rows of one request, from every file that holds any (None when none does)."""
        found = []
        for key in self.keys:
            table = self._table(key)
            if table is not None:
                hit = table.filter(pc.equal(table[cl.REQUEST_ID], request_id))
                if hit.num_rows:
                    found.append(hit)
        return pa.concat_tables(found, promote_options="default") if found else None

    def rows(self, key: cl.CaptureKey) -> int | None:
        """The file's row count from its footer, or None when it is skipped."""
        file = self._file(key)
        return None if file is None else file.metadata.num_rows

    def _table(self, key: cl.CaptureKey) -> pa.Table | None:
        file = self._file(key)
        try:
            return None if file is None else file.read()
        except (pa.ArrowException, OSError) as exc:
            self.skipped.append(f"{key.key} (not readable as Parquet: {str(exc).splitlines()[0]})")
            return None

    def _file(self, key: cl.CaptureKey) -> pq.ParquetFile | None:
        try:
            file = pq.ParquetFile(io.BytesIO(self.store.read(key.key)))
        except (pa.ArrowException, OSError) as exc:
            self.skipped.append(f"{key.key} (not readable as Parquet: {str(exc).splitlines()[0]})")
            return None
        schema = (file.schema_arrow.metadata or {}).get(METADATA_KEY, b"").decode(errors="replace")
        if schema != cl.SCHEMA:
            self.skipped.append(f"{key.key} (schema {schema or 'none'!r}, not {cl.SCHEMA!r})")
            return None
        return file


def open_captures(
    root: str, model: str | None = None, version: int | None = None, since: timedelta | None = None
) -> Captures:
    """The capture files under `root` of `model` (and `version`), in hours that reach into the last
    `since`; raises CaptureError when the root is missing. Older rows of those hours are the caller's
    to drop."""
    if "://" not in root and not os.path.isdir(root):
        raise CaptureError(
            f"captures root {root!r} does not exist: pass the folder (or s3://bucket/prefix) given to "
            "tritonflow serve --capture"
        )
    store = open_store(root)
    found = Captures(store.uri, store, [])
    cutoff = datetime.now(UTC) - since if since is not None else None
    for stored in store.walk(""):
        key = cl.parse_key(stored.key)
        if key is None:
            found.skipped.append(
                f"{stored.key} (not a capture file: <model>/<version>/<hour>/<name>.parquet)"
            )
        elif _wanted(key, model, version, cutoff):
            found.keys.append(key)
    return found


def _wanted(key: cl.CaptureKey, model: str | None, version: int | None, cutoff: datetime | None) -> bool:
    if model is not None and key.model != model:
        return False
    if version is not None and key.version != version:
        return False
    return cutoff is None or cl.parse_hour(key.hour) + timedelta(hours=1) > cutoff


def skipped_note(captures: Captures) -> str | None:
    """One line naming the files skipped (the first few), or None."""
    if not captures.skipped:
        return None
    shown = "; ".join(captures.skipped[:3])
    more = f" and {len(captures.skipped) - 3} more" if len(captures.skipped) > 3 else ""
    return (
        f"skipped {len(captures.skipped)} file(s) under {captures.root} that are not captures: {shown}{more}"
    )


def nothing_found(captures: Captures, what: str) -> CaptureError:
    """The error for a root with no capture files of `what`, saying what it holds instead."""
    held = (
        f" (it holds only files that are not captures: {skipped_note(captures)})" if captures.skipped else ""
    )
    return CaptureError(
        f"no capture files of {what} under {captures.root}{held}: captures are written by "
        "tritonflow serve --capture ROOT, under <model>/<version>/<hour>/"
    )
