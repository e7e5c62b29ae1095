"""A repository in a local folder: temp file + rename for files, stage + rename for versions.

File system failures (permissions, a full or read-only disk, a file where a folder belongs) are
RepositoryErrors naming the path, like the S3 store's. Beyond the spelling of keys, a path that a
symbolic link leads outside the root is refused too: the store reads and writes only inside it.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tritonflow.lineage.errors import NotFound, RepositoryError
from tritonflow.lineage.store.base import Store, StoredFile, UnsafeKey, check_files, check_key, key_problem

# The store's own unfinished work beside a target, left only by a killed process (`tritonflow gc`
# removes it): a version folder staged by `publish`, a temp file of `write` (mkstemp's 8 characters).
STAGING = re.compile(r"\.staging-(?P<target>.+)-[0-9a-f]{8}")
TEMP = re.compile(r"\.(?P<target>.+)\.[a-z0-9_]{8}")


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
        self._inside_root = os.path.join(self.uri, "")  # "/repo/": a prefix only paths inside have

    def _path(self, key: str, *, root: bool = False) -> Path:
        """The path of a checked key, refused if a symbolic link on the way leads outside the root."""
        path = self.root / key if check_key(key, root=root) else self.root
        if self._through_symlink(key) and not self._inside(path):
            raise self._outside(key)
        return path

    def _through_symlink(self, key: str) -> bool:
        """Whether a symlink is on the way from the root to `key`: one lstat per part below the
        root, several times cheaper than a realpath, which most calls then skip."""
        at = self.uri
        for part in key.split("/") if key else []:
            at = os.path.join(at, part)
            try:
                if stat.S_ISLNK(os.lstat(at).st_mode):
                    return True
            except OSError:  # absent (or unreadable): nothing below it can lead anywhere
                return False
        return False

    def _outside(self, key: str) -> UnsafeKey:
        return UnsafeKey(
            key,
            f"a symbolic link leads it outside the repository {self.root}: put the file itself in "
            "the repository, or point the link inside it",
        )

    def _inside(self, path: Path | str) -> bool:
        # NOTE: os.path.realpath, not Path.resolve: in 3.11 resolve raises on a symlink loop, realpath
        # leaves the loop in place and the file operation then fails with ELOOP, a RepositoryError.
        real = os.path.realpath(path)
        return real == self.uri or real.startswith(self._inside_root)

    def _listable(self, entry: os.DirEntry[str]) -> bool:
        """Whether a listing may hand out this name: the store would accept it as a key.

        A symlink is listed only when it leads to something inside the root: a dangling one or a
        loop would fail the next call on it, and one name must not fail a whole listing's user.
        """
        if key_problem(entry.name) is not None:
            return False
        return not entry.is_symlink() or (self._inside(entry.path) and os.path.exists(entry.path))

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
            tmp = _aside(path, data)
            try:
                os.replace(tmp, path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise

    def create(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        with _failing_as("create", path):
            tmp = _aside(path, data)
            try:
                # NOTE: link, not O_EXCL on the target: a reader that loses the race reads the whole
                # file, never the empty one an exclusive open shows until its write lands
                os.link(tmp, path)
            except FileExistsError:
                return False
            finally:
                tmp.unlink(missing_ok=True)
            return True

    def walk(self, prefix: str) -> list[StoredFile]:
        top = self._path(prefix, root=True)
        found: list[StoredFile] = []
        folders = [top]
        with _failing_as("walk", top):
            while folders:
                folder = folders.pop()
                try:
                    with os.scandir(folder) as scan:
                        entries = [e for e in scan if self._listable(e)]
                except (FileNotFoundError, NotADirectoryError):
                    if folder == top:
                        self._check_root_exists(prefix)
                    continue  # a folder removed while walking lists as empty, like `list`
                for entry in entries:
                    # NOTE: symlinked folders are not followed: each file is listed once, under one key.
                    if entry.is_dir(follow_symlinks=False):
                        folders.append(Path(entry.path))
                    elif entry.is_file():
                        try:
                            st = entry.stat()
                        except FileNotFoundError:  # renamed or removed since the listing
                            continue
                        key = Path(entry.path).relative_to(self.root).as_posix()
                        found.append(StoredFile(key, st.st_size, st.st_mtime))
        return sorted(found, key=lambda f: f.key)

    def list(self, prefix: str) -> list[str]:
        path = self._path(prefix, root=True)
        with _failing_as("list", path):
            try:
                with os.scandir(path) as entries:
                    return sorted(e.name for e in entries if self._listable(e))
            except (FileNotFoundError, NotADirectoryError):
                self._check_root_exists(prefix)
                return []

    def _check_root_exists(self, prefix: str) -> None:
        """A missing folder lists as empty, but a mistyped repository path is an error."""
        if not prefix:
            raise NotFound(f"repository {self.root} does not exist (or is not a folder)")

    def delete(self, prefix: str) -> None:
        path = self._path(prefix)
        with _failing_as("delete", path):
            # NOTE: a symlink is removed itself, never the folder it points to.
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, onerror=_unless_gone)
            else:
                path.unlink(missing_ok=True)

    def publish(self, prefix: str, files: dict[str, bytes], last: str) -> None:
        check_files(prefix, files, last)
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
        path = self.root / check_key(key)  # a key spelled to escape is a caller's bug: raised
        # NOTE: a file that a symlink puts outside the repository is not in it: None, like an
        # unreadable file, so that one such file cannot fail the serving node's whole scan.
        if self._through_symlink(key) and not self._inside(path):
            return None
        try:
            st = path.stat()
        except OSError:
            return None
        # NOTE: the inode too: a rewrite (a new file renamed in) of the same size can keep the mtime,
        # whose granularity is a clock tick.
        return f"{st.st_ino}:{st.st_mtime_ns}:{st.st_size}"

    def local_dir(self, prefix: str, cache: Path) -> Path:
        path = self._path(prefix, root=True)
        if not path.is_dir():
            raise NotFound(f"{path} is not a folder of the repository")
        # NOTE: the caller reads this folder's files directly: none may be a way out of the root.
        for folder, dirs, names in os.walk(path):
            for name in [*dirs, *names]:
                if not self._inside(os.path.join(folder, name)):
                    key = Path(folder, name).relative_to(self.root).as_posix()
                    raise self._outside(key)
        return path


def _unless_gone(
    function: object, path: str, exc_info: tuple[type[BaseException], BaseException, Any]
) -> None:
    """rmtree's error handler: a file already removed (a concurrent delete) is fine, others fail."""
    if not isinstance(exc_info[1], FileNotFoundError):
        raise exc_info[1]


def _aside(path: Path, data: bytes) -> Path:
    """`data` in a temp file beside `path` (`.<name>.XXXXXXXX`), readable by all, for a rename or link."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            # NOTE: mkstemp makes 0600: a server run as another user must read it
            os.fchmod(f.fileno(), 0o644)
            f.write(data)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)
