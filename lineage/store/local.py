"""A repository in a local folder: temp file + rename for files, stage + rename for versions.

File system failures (permissions, a full or read-only disk, a file where a folder belongs) are
RepositoryErrors naming the path, like the S3 store's.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tritonflow.lineage.errors import NotFound, RepositoryError
from tritonflow.lineage.store.base import Store


@contextmanager
def _failing_as(action: str, path: Path) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise RepositoryError(f"could not {action} {path}: {exc.strerror or exc}") from exc


class LocalStore(Store):
    def __init__(self, uri: str) -> None:
        path = uri[len("file://") :] if uri.startswith("file://") else uri
        self.root = Path(path).expanduser().resolve()
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / key if key else self.root

    def read(self, key: str) -> bytes:
        path = self._path(key)
        with _failing_as("read", path):
            try:
                return path.read_bytes()
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                raise NotFound(f"{path} does not exist") from None

    def write(self, key: str, data: bytes) -> None:
        path = self._path(key)
        with _failing_as("write", path):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
            try:
                with os.fdopen(fd, "wb") as f:
                    # mkstemp makes 0600: a server run as another user must read it
                    os.fchmod(f.fileno(), 0o644)
                    f.write(data)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise

    def create(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        with _failing_as("create", path):
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return True

    def list(self, prefix: str) -> list[str]:
        path = self._path(prefix)
        with _failing_as("list", path):
            try:
                return sorted(p.name for p in path.iterdir())
            except (FileNotFoundError, NotADirectoryError):
                if not prefix:  # a mistyped repository path is an error, not an empty repository
                    raise NotFound(f"repository {self.root} does not exist (or is not a folder)") from None
                return []

    def delete(self, prefix: str) -> None:
        path = self._path(prefix)
        with _failing_as("delete", path):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    def publish(self, prefix: str, files: dict[str, bytes], last: str) -> None:
        target = self._path(prefix)
        # NOTE: staged beside the target so the rename stays on one file system (atomic).
        stage = target.parent / f".staging-{target.name}-{uuid.uuid4().hex[:8]}"
        with _failing_as("publish", target):
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                for name, data in sorted(files.items(), key=lambda item: item[0] == last):
                    dest = stage / name
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(data)
                os.rename(stage, target)
            except BaseException:
                shutil.rmtree(stage, ignore_errors=True)
                raise

    def fingerprint(self, key: str) -> str | None:
        try:
            st = self._path(key).stat()
        except OSError:
            return None
        # NOTE: the inode too: a rewrite (a new file renamed in) of the same size can keep the mtime,
        # whose granularity is a clock tick.
        return f"{st.st_ino}:{st.st_mtime_ns}:{st.st_size}"

    def local_dir(self, prefix: str, cache: Path) -> Path:
        path = self._path(prefix)
        if not path.is_dir():
            raise NotFound(f"{path} is not a folder of the repository")
        return path
