"""How a published version gets into the serving process, through walls that each refuse it with a reason.

1. The record must be its folder's own (model, version, ID): a record copied from elsewhere is refused.
2. Every file the record lists is copied into a folder only the node writes, its size and sha256
   checked on the way: a corrupted, truncated or swapped file never reaches an engine, so the stamp
   (the record's deployment ID) can only name the run whose files answer.
3. The copy is loaded and run once on generated rows in a child process with a memory limit and a
   timeout (`probe`): a file that crashes, hangs or floods the engine costs a child, not the node.
4. Only then does the serving process load the same copy.

Runs in a worker thread (blocking I/O and engine loads).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tritonflow.lineage import layout
from tritonflow.lineage.errors import RepositoryError, TritonflowError
from tritonflow.lineage.records import DeploymentRecord
from tritonflow.lineage.repository import ModelRepository
from tritonflow.serving.backends import Backend, backend_name, load_backend
from tritonflow.serving.integrity import Incomplete, IntegrityError, check_record, checked_copy
from tritonflow.serving.mirror import Mirror
from tritonflow.serving.model_config import ModelConfig, check_config
from tritonflow.serving.probe import ProbeFailed, ProbeLimits, probe_version

log = logging.getLogger("tritonflow.serving")

# What a version folder looked like when it was refused: (file name, store fingerprint) pairs.
Token = tuple[tuple[str, str | None], ...]


@dataclass(frozen=True)
class LoadSettings:
    engine: str  # the forest engine (`--engine`); other backends choose their own
    cache_dir: Path  # downloads, checked copies, the mirror
    probe: ProbeLimits | None  # None: load in the serving process directly (no isolation)


@dataclass(frozen=True)
class Refusal:
    """Why a published version does not serve, and when to try it again."""

    reason: str
    # a metric label: "incomplete" | "integrity" | "probe" | "load" | "store" | "steps" (an ensemble waiting)
    kind: str
    token: Token | None  # retried once the folder no longer looks like this; None: at every poll


def files_token(repository: ModelRepository, model: str, version: int) -> Token:
    """A cheap picture of a version folder (a listing and a fingerprint per file)."""
    key = layout.version_key(model, version)
    store = repository.store
    return tuple((name, store.fingerprint(f"{key}/{name}")) for name in store.list(key))


class VersionRefused(TritonflowError):
    """A version that does not load, with its Refusal (built where the folder was read)."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.reason)
        self.refusal = refusal


def refusal(exc: BaseException, token: Token | None) -> Refusal:
    if isinstance(exc, Incomplete):
        return Refusal(str(exc), "incomplete", token)
    if isinstance(exc, IntegrityError):
        return Refusal(str(exc), "integrity", token)
    if isinstance(exc, ProbeFailed):
        return Refusal(str(exc), "probe", token)
    if isinstance(exc, RepositoryError):  # the store failed us, not the version: try again soon
        return Refusal(str(exc), "store", None)
    reason = str(exc) if isinstance(exc, TritonflowError) else f"{type(exc).__name__}: {exc}"
    return Refusal(reason, "load", token)


class Loader:
    def __init__(self, settings: LoadSettings, mirror: Mirror | None) -> None:
        self.settings = settings
        self.mirror = mirror
        # NOTE: one folder per process: nodes may share a cache; what a killed one left is removed here
        loading = settings.cache_dir / "loading"
        self._checked = loading / str(os.getpid())
        for folder in loading.glob("*"):
            if folder.name.isdigit() and not _alive(int(folder.name)):
                shutil.rmtree(folder, ignore_errors=True)

    def open(
        self, repository: ModelRepository, name: str, version: int, config: ModelConfig
    ) -> tuple[DeploymentRecord, Backend]:
        """The version's record and its started engine; raises VersionRefused with the reason."""
        # NOTE: the folder's picture is taken first: a file that changes after it triggers a retry
        try:
            token: Token | None = files_token(repository, name, version)
        except TritonflowError:
            token = None
        try:
            return self._open(repository, name, version, config)
        except Exception as exc:
            raise VersionRefused(refusal(exc, token)) from exc

    def _open(
        self, repository: ModelRepository, name: str, version: int, config: ModelConfig
    ) -> tuple[DeploymentRecord, Backend]:
        record = repository.read_record(name, version)
        check_record(record, name, version)
        source = repository.store.local_dir(layout.version_key(name, version), self.settings.cache_dir)
        folder = checked_copy(source, record, self._checked)
        try:
            engine = self.settings.engine if backend_name(config) == "fil" else "auto"
            if self.settings.probe is not None:
                probe_version(folder, config, engine, self.settings.probe)
            backend = load_backend(folder, config, engine)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        self._keep(name, version, folder, record)
        return record, backend

    def _keep(self, name: str, version: int, folder: Path, record: DeploymentRecord) -> None:
        """The checked copy goes to the mirror (remote repositories), else away: the engine has it."""
        if self.mirror is not None:
            try:
                self.mirror.keep_version(name, version, folder, record)
                return
            except OSError as exc:
                log.warning("could not keep %s:%d in the mirror %s: %s", name, version, self.mirror.root, exc)
        shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


@contextmanager
def published_backend(
    repository: ModelRepository, model: str, version: int
) -> Iterator[tuple[ModelConfig, Backend]]:
    """A published version started as the node starts it (config checked, files verified against
    the record, engine loaded), outside any node: for decisions that must judge what would serve.
    Unloaded on exit; a version that does not load raises VersionRefused with the node's reason."""
    where = f"{repository.uri}/{layout.config_key(model)}"
    config = check_config(repository.read_config(model), where, model)
    with tempfile.TemporaryDirectory(prefix="tritonflow-published-") as cache:
        loader = Loader(LoadSettings(engine="auto", cache_dir=Path(cache), probe=None), mirror=None)
        _, backend = loader.open(repository, model, version, config)
        try:
            yield config, backend
        finally:
            backend.unload()
