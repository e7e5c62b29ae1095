"""What the repository holds of one model, read in one blocking call (the registry runs it in a thread).

One call, so the registry compares a whole picture (config text and the labels files it names) with
the last one it examined: a change to either re-checks the config. The release log only adds to
config.pbtxt, so a log that does not read is returned as its reason, never raised.
"""

from __future__ import annotations

from collections.abc import Sequence

from tritonflow.lineage.releases import ReleaseState, read_state
from tritonflow.lineage.repository import ModelRepository
from tritonflow.serving.labels import folder_reader, model_files
from tritonflow.serving.model_config import ConfigError, parse_config

ModelFiles = dict[str, bytes | None]  # the labels files a config names -> their bytes (None: absent)


def read_model(
    repository: ModelRepository, name: str, published: Sequence[int] | None
) -> tuple[str, ModelFiles, list[int], ReleaseState | str | None]:
    """The config text, the labels files it names, the published versions (`published`: as a scan
    just found them; None: listed here) and the release state (None: no decision yet; a string: why
    it does not read)."""
    text = repository.read_config(name)
    try:
        names = model_files(parse_config(text))
    except ConfigError:  # its check says why
        names = []
    read = folder_reader(repository.store, name)
    files = {file: read(file) for file in names}
    versions = repository.versions(name) if published is None else list(published)
    try:
        state = read_state(repository, name)
    except Exception as exc:  # NOTE: the log only adds to config.pbtxt: whatever breaks it, serve on
        return text, files, versions, str(exc) or type(exc).__name__
    return text, files, versions, state if state.events else None
