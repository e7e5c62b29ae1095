"""The shape every store has. Keys are '/'-separated paths relative to the repository root.

Every method checks its keys with `check_key`, whoever calls it: a key spelled to leave the
repository ('..', an absolute path, a backslash a Windows path would split on) is refused before
any file or object is touched. Listings never hand out a name the store would refuse.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from tritonflow.lineage.errors import RepositoryError

# The rule: names joined by '/', none of them '.' or '..', no backslash, no C0, DEL or C1 control
# (NUL truncates paths in C code, newlines forge log and listing lines), no leading drive ('C:').
_PART = r"(?!\.\.?(?:/|\Z))[^/\\\x00-\x1f\x7f-\x9f]+"
_SAFE_KEY = re.compile(rf"(?![A-Za-z]:){_PART}(?:/{_PART})*")
_BAD_CHARACTER = re.compile(r"[\x00-\x1f\x7f-\x9f\\]")


class UnsafeKey(RepositoryError):
    """A key that would lead outside the repository, or that no store can hold as a path."""

    def __init__(self, key: str, why: str) -> None:
        super().__init__(f"refused repository key {key!r}: {why}")
        self.key = key


def key_problem(key: str) -> str | None:
    """Why `key` is not a safe key, or None when it is.

    `_SAFE_KEY` decides (one regex match: listings test every name); the rest only explains.
    """
    if _SAFE_KEY.fullmatch(key):
        return None
    parts = key.split("/")
    if not key:
        return "it is empty"
    if key.startswith("/") or ":" in parts[0]:
        return "it is an absolute path"
    if bad := _BAD_CHARACTER.search(key):
        return "it holds a backslash" if bad[0] == "\\" else f"it holds the control character {bad[0]!r}"
    if "" in parts:
        return "it has an empty part ('//' or a trailing '/')"
    return "it has a '..' or '.' part"


def check_key(key: str, *, root: bool = False) -> str:
    """Return `key` if it names something inside the repository, else raise `UnsafeKey`.

    `root=True` also accepts '' (the repository's root), for the methods that take a folder.
    """
    if root and key == "":
        return key
    problem = key_problem(key)
    if problem is not None:
        raise UnsafeKey(
            key,
            f"{problem}; a key is a '/'-separated path inside the repository (no '..' or '.' parts, "
            "no empty parts, no leading '/', backslashes or control characters)",
        )
    return key


@dataclass(frozen=True)
class StoredFile:
    """One file of a recursive listing: what `tritonflow gc` needs to judge a leftover."""

    key: str  # relative to the repository root
    size: int  # bytes
    modified: float  # seconds since the epoch, as the store recorded it


class Store(ABC):
    uri: str

    @abstractmethod
    def read(self, key: str) -> bytes:
        """The object's bytes; raises `NotFound` when absent."""

    @abstractmethod
    def write(self, key: str, data: bytes) -> None:
        """Create or replace; readers see the old or the new bytes, never a mix."""

    @abstractmethod
    def create(self, key: str, data: bytes) -> bool:
        """Create only if absent, atomically; False when the key already exists."""

    @abstractmethod
    def walk(self, prefix: str) -> list[StoredFile]:
        """Every file under folder `prefix` ('' is the root), at any depth, sorted by key."""

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Names of the files and folders directly under `prefix` ('' is the root), sorted."""

    @abstractmethod
    def delete(self, prefix: str) -> None:
        """Remove a file or a folder with everything under it; absent is fine."""

    @abstractmethod
    def publish(self, prefix: str, files: dict[str, bytes], last: str) -> None:
        """Make folder `prefix` appear with `files`, `files[last]` written after all the others.

        A reader never sees `last` before every other file is complete. On failure nothing
        named `last` exists and the partial folder is removed where the store allows.
        """

    @abstractmethod
    def fingerprint(self, key: str) -> str | None:
        """A cheap token that changes when the object changes (None when absent)."""

    @abstractmethod
    def local_dir(self, prefix: str, cache: Path) -> Path:
        """A local folder holding `prefix`'s files (a download under `cache` for remote stores)."""


def check_files(prefix: str, files: dict[str, bytes], last: str) -> None:
    """The keys `publish` writes: the folder and every name inside it (`last` among them)."""
    check_key(prefix)
    for name in [*files, last]:
        check_key(name)
