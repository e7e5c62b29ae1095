"""Labels files: what each column of an output is, one label per line, as Triton reads them.

Triton resolves an output's `label_filename` against the model folder (beside config.pbtxt, shared
by every version) and reads it line by line with getline, so a model fails to load in Triton when
the file is missing, and its classification extension names column i by line i. A model name keeps
its labels like its signature: versions share the file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeAlias

from tritonclient.grpc import model_config_pb2 as pb

from tritonflow.lineage.errors import NotFound
from tritonflow.lineage.store.base import Store, key_problem

# A file of the model folder by its name relative to that folder; None when it is absent.
ReadFile: TypeAlias = Callable[[str], bytes | None]


def folder_reader(store: Store, model: str) -> ReadFile:
    """The files of a model folder in a repository's store."""

    def read(name: str) -> bytes | None:
        try:
            return store.read(f"{model}/{name}")
        except NotFound:
            return None

    return read


def labels_text(labels: Sequence[str]) -> bytes:
    """The file's bytes: every label on its own line, each line ended."""
    return "".join(f"{label}\n" for label in labels).encode()


def parse_labels(data: bytes) -> list[str]:
    """The labels in a file, as getline reads them: lines split on '\\n', the last one ended or not."""
    lines = data.decode().split("\n")
    return lines[:-1] if lines[-1] == "" else lines


def line_break(labels: Sequence[str]) -> str | None:
    """The first label a labels file cannot hold (one with a line break), or None."""
    # NOTE: '\r' too: getline would keep it, but any tool that normalises line endings would not.
    return next((label for label in labels if "\n" in label or "\r" in label), None)


def label_files(config: pb.ModelConfig) -> dict[str, str]:
    """Output name -> its label_filename, for the outputs that have one."""
    return {t.name: t.label_filename for t in config.output if t.label_filename}


def model_files(config: pb.ModelConfig) -> list[str]:
    """The labels files a config names that are paths inside the model folder (the others are errors)."""
    return sorted({name for name in label_files(config).values() if key_problem(name) is None})


def read_labels(config: pb.ModelConfig, output: str, read_file: ReadFile) -> list[str] | None:
    """The labels of `output` from the model folder; None when it has none (or its file cannot be read)."""
    name = label_files(config).get(output)
    data = read_file(name) if name and key_problem(name) is None else None
    try:
        return parse_labels(data) if data is not None else None
    except UnicodeDecodeError:
        return None


def label_problems(config: pb.ModelConfig, read_file: ReadFile | None) -> list[str]:
    """Why the config's labels files are wrong: a path outside the model folder and, when the folder
    can be read (`read_file`), a missing file, one that is not text, or one label per column not held."""
    found = []
    dims = {t.name: list(t.dims) for t in config.output}
    for output, name in label_files(config).items():
        what = f"label_filename {name!r} of output {output!r}"
        if (unsafe := key_problem(name)) is not None:
            found.append(f"{what} must be a path inside the model folder: {unsafe}")
            continue
        if read_file is None:  # the text alone: a config about to be written with its files
            continue
        data = read_file(name)
        if data is None:
            found.append(
                f"{what}: no such file in the model folder, and Triton does not load the model without it: "
                "restore the file, or republish the model"
            )
            continue
        try:
            labels = parse_labels(data)
        except UnicodeDecodeError:
            found.append(f"{what} is not UTF-8 text: one label per line")
            continue
        columns = dims[output]
        if len(columns) == 1 and columns[0] > 0 and len(labels) != columns[0]:
            found.append(
                f"{what} holds {len(labels)} labels for {columns[0]} columns: one label per column, in "
                "column order"
            )
    return found
