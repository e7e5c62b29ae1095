"""The node's own copy of what it serves from a remote repository, so it can start while S3 is down.

A Triton repository of its own under the cache folder: the accepted config.pbtxt of every model and
the checked files and record of every serving version. It follows the serving state (a version that
stops serving leaves it), and every file in it is checked against its record again when loaded, like
any repository's.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path

from tritonflow.lineage import layout
from tritonflow.lineage.records import DeploymentRecord
from tritonflow.lineage.repository import ModelRepository

log = logging.getLogger("tritonflow.serving")

_SOURCE = ".mirror-of"  # names the repository mirrored; hidden from the repository listing


class Mirror:
    def __init__(self, cache_dir: Path, uri: str) -> None:
        self.uri = uri
        self.root = cache_dir / "mirror" / hashlib.sha256(uri.encode()).hexdigest()[:16]

    def repository(self) -> ModelRepository | None:
        """The mirror as a repository; None when it holds no model yet."""
        if not self.root.is_dir() or not any(self.root.glob(f"*/{layout.CONFIG}")):
            return None
        return ModelRepository(self.root)

    def keep_config(self, model: str, text: str, files: dict[str, bytes | None]) -> None:
        """The accepted config.pbtxt, with the labels files beside it (written first, as a publish does)."""
        for name, data in files.items():
            if data is not None:
                self._write(self.root / model / name, data)
        self._write(self.root / layout.config_key(model), text.encode())

    def keep_version(self, model: str, version: int, folder: Path, record: DeploymentRecord) -> None:
        """Move a checked copy of a version's files (`folder`) in, with its record."""
        (folder / layout.RECORD).write_bytes(record.to_json())
        target = self.root / layout.version_key(model, version)
        target.parent.mkdir(parents=True, exist_ok=True)
        self._write(self.root / _SOURCE, self.uri.encode())
        shutil.rmtree(target, ignore_errors=True)
        os.replace(folder, target)

    def follow(self, model: str, serving: set[int]) -> None:
        """Forget the versions of `model` that no longer serve; the model itself when none does."""
        folder = self.root / model
        if not serving:
            shutil.rmtree(folder, ignore_errors=True)
            return
        entries = [p.name for p in folder.iterdir()] if folder.is_dir() else []
        for version in layout.version_numbers(entries):
            if version not in serving:
                shutil.rmtree(folder / str(version), ignore_errors=True)

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)
