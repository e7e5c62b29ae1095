"""A version's files, checked against its deployment record before any engine reads them.

The stamp names the run in the record, so only files whose size and sha256 the record lists may
answer under it. The checked files are copied into a folder only the node writes, and the engine
loads that copy: a file replaced after the check (or a checkpoint swapped in from another run)
cannot slip in. Files a version folder holds beyond the record's list are never loaded.
"""

from __future__ import annotations

import hashlib
import shutil
import stat
import tempfile
from pathlib import Path

from tritonflow.lineage.errors import RepositoryError
from tritonflow.lineage.ids import InvalidDeploymentId
from tritonflow.lineage.records import DeploymentRecord

_CHUNK = 1 << 20


class IntegrityError(RepositoryError):
    """The version's files or record are not what its record says: the version is refused."""


class Incomplete(IntegrityError):
    """Files the record lists are missing or still shorter than recorded: a copy may be under way,
    so the version is tried again on later polls."""


def check_record(record: DeploymentRecord, model: str, version: int, has_files: bool = True) -> None:
    """The record must be the record of this folder: same model, same version, its own ID, and
    (`has_files`; an ensemble's folder holds none) the files it vouches for."""
    try:
        did = record.id
    except InvalidDeploymentId as exc:
        raise IntegrityError(f"the record of {model}:{version} has a bad deployment_id: {exc}") from None
    found = {"deployment_id": did.short, "model_name": record.model_name, "version": record.version}
    expected = {"deployment_id": f"{model}:{version}", "model_name": model, "version": version}
    wrong = [f"{k} is {found[k]!r}" for k in expected if found[k] != expected[k]]
    if wrong:
        raise IntegrityError(
            f"the deployment.json in {model}/{version} is not the record of {model}:{version} "
            f"({', '.join(wrong)}): a record copied from another version; republish the version"
        )
    if has_files and not record.files:
        raise IntegrityError(f"the record of {record.deployment_id} lists no files: republish the version")


def checked_copy(source: Path, record: DeploymentRecord, dest_root: Path) -> Path:
    """A new folder under `dest_root` holding exactly the record's files, each checked; the caller
    removes it once the engine has loaded. Raises IntegrityError (Incomplete: try again later)."""
    dest_root.mkdir(parents=True, exist_ok=True)
    dest = Path(tempfile.mkdtemp(prefix=f"{record.model_name}-{record.version}-", dir=dest_root))
    try:
        for entry in record.files:
            name, size, sha256 = _listed(entry, record)
            _copy_checked(source / name, dest / name, size, sha256, f"{name} of {record.deployment_id}")
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return dest


def _listed(entry: dict[str, object], record: DeploymentRecord) -> tuple[str, int, str]:
    """One `files` entry: its path inside the version folder ("<version>/<name>"), size and sha256."""
    path = entry.get("path")
    prefix = f"{record.version}/"
    parts = path[len(prefix) :].split("/") if isinstance(path, str) and path.startswith(prefix) else []
    if not parts or any(p in {"", ".", ".."} or "\\" in p or "\0" in p for p in parts):
        raise IntegrityError(
            f"the record of {record.deployment_id} lists file {path!r}, which is not a path inside "
            f"its version folder {prefix!r}: republish the version"
        )
    size, sha256 = entry.get("size"), entry.get("sha256")
    if not isinstance(sha256, str) or not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise IntegrityError(f"the record of {record.deployment_id} lists {path!r} without sha256 and size")
    return "/".join(parts), size, sha256


def _copy_checked(src: Path, dst: Path, size: int, sha256: str, what: str) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    digest, copied = hashlib.sha256(), 0
    try:
        found = src.stat()
        # NOTE: a FIFO or a device would block or never end: only regular files are read
        if not stat.S_ISREG(found.st_mode):
            raise IntegrityError(f"{what} is not a regular file: republish the version")
        if found.st_size < size:  # a copy under way: no need to read it
            raise Incomplete(f"{what} has {found.st_size} bytes, the record lists {size}")
        with src.open("rb") as f, dst.open("wb") as out:
            # NOTE: one byte past the recorded size is enough to know the file is not the recorded one
            while copied <= size and (chunk := f.read(min(_CHUNK, size + 1 - copied))):
                digest.update(chunk)
                out.write(chunk)
                copied += len(chunk)
    except FileNotFoundError:
        raise Incomplete(f"{what}, listed in its record, is missing") from None
    except OSError as exc:
        raise IntegrityError(f"cannot read {what}: {exc.strerror or exc}") from None
    if copied < size:
        raise Incomplete(f"{what} has {copied} bytes, the record lists {size}")
    if copied > size or digest.hexdigest() != sha256:
        differs = "is larger than" if copied > size else "has another sha256 than"
        raise IntegrityError(
            f"{what} {differs} its record lists: it is not the file that deployment published "
            "(corrupted or replaced); republish the version or restore the file"
        )
