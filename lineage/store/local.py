"""A repository in a local folder: temp file + rename for files, stage + rename for versions."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

from tritonflow.lineage.errors import NotFound, RepositoryError
from tritonflow.lineage.store.base import Store


class LocalStore(Store):
    def __init__(self, uri: str) -> None:
        path = uri[len("file://") :] if uri.startswith("file://") else uri
        self.root = Path(path).expanduser().resolve()
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / key if key else self.root

    def read(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise NotFound(f"{self._path(key)} does not exist") from None

    def write(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), 0o644)  # mkstemp makes 0600: a server run as another user must read it
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def create(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True

    def list(self, prefix: str) -> list[str]:
        try:
            return sorted(p.name for p in self._path(prefix).iterdir())
        except (FileNotFoundError, NotADirectoryError):
            if not prefix:  # a mistyped repository path is an error, not an empty repository
                raise NotFound(f"repository {self.root} does not exist (or is not a folder)") from None
            return []

    def delete(self, prefix: str) -> None:
        path = self._path(prefix)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)

    def publish(self, prefix: str, files: dict[str, bytes], last: str) -> None:
        target = self._path(prefix)
        target.parent.mkdir(parents=True, exist_ok=True)
        # NOTE: staged beside the target so the rename stays on one file system (atomic).
        stage = target.parent / f".staging-{target.name}-{uuid.uuid4().hex[:8]}"
        try:
            for name, data in sorted(files.items(), key=lambda item: item[0] == last):
                dest = stage / name
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(data)
            os.rename(stage, target)
        except OSError as exc:
            shutil.rmtree(stage, ignore_errors=True)
            raise RepositoryError(f"could not publish {target}: {exc}") from exc
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
