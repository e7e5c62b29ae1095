"""The shape every store has. Keys are '/'-separated paths relative to the repository root."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path


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
