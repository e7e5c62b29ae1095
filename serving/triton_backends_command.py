"""`tritonflow triton-backends DIR`: a backend directory for a Triton without FIL or ONNX Runtime to
serve our repositories.

Triton builds without the native FIL or onnxruntime backends (the server inside the nvidia-pytriton
wheel, say) still run Python-based backends: for `backend: "fil"` they load `<backends>/fil/model.py`
through the python backend (`<backends>/onnxruntime/model.py` for ONNX). This writes that directory
from a Triton installation, so the repository's configs are served unchanged. Triton's NGC
containers have both native backends: skip this there.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.resources
import importlib.util
import json
import os
import shutil
import sys
import sysconfig
from pathlib import Path

from tritonflow.lineage.errors import TritonflowError
from tritonflow.serving.backends import BACKENDS

STUB = "triton_python_backend_stub"
PYTHON_BACKEND_FILES = ("libtriton_python.so", "triton_python_backend_utils.py")
THIS_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"

EPILOG = """\
Run it from the Python environment that will run the models: it needs tritonflow (`pip install
--no-deps tritonflow` is enough), treelite 4.7.x, numpy, protobuf<7, tritonclient[grpc] and, for ONNX
models, onnxruntime. With nvForest there (numpy>=2) the forests run on it; Triton 24.10's python
backend, the one in the nvidia-pytriton wheel, returns no outputs under numpy 2, so with that server
they run on Treelite.

Then start Triton as printed, e.g. with nvidia-pytriton (numpy<2) installed in that environment:

  tritonflow triton-backends ./triton-backends
  LD_LIBRARY_PATH=<site-packages>/nvidia_pytriton.libs:<python libdir> PATH=<env>/bin:$PATH \\
    <site-packages>/pytriton/tritonserver/bin/tritonserver --model-repository ./models \\
    --backend-directory ./triton-backends --model-control-mode poll --repository-poll-secs 5

PATH picks the Python that the python backend embeds: its first `python3` must be this environment's.
Start it outside a tritonflow source checkout: the backend imports from its working directory first.
In an NGC Triton container, use its native FIL backend instead: no backend directory is needed.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("directory", type=Path, metavar="DIR", help="the backend directory to write")
    parser.add_argument(
        "--triton-home",
        type=Path,
        metavar="PATH",
        help="the Triton installation (holding bin/tritonserver and backends/python); "
        "default: the one inside an importable nvidia-pytriton",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the server, its environment and DIR as JSON"
    )
    parser.add_argument(
        "--python-version",
        default=THIS_PYTHON,
        metavar="X.Y",
        help="the Python that runs the models, when the installation has stubs for several "
        "(default: this one, %(default)s)",
    )


def main(args: argparse.Namespace) -> int:
    home = args.triton_home or pytriton_home()
    write_backends(args.directory, home, args.python_version)
    server, directory = home / "bin" / "tritonserver", args.directory.resolve()
    env = launch_environment(home, args.python_version)
    numpy = _installed("numpy")
    if numpy and int(numpy.split(".")[0]) >= 2:
        # NOTE: seen with Triton 24.10: the model answers, then Triton fails the response.
        print(
            f"warning: numpy {numpy} here; Triton 24.10's python backend (nvidia-pytriton 0.7) returns "
            "no outputs under numpy 2 ('output tensor shape does not match size of output'): "
            "run the models from an environment with numpy<2 unless your Triton's python backend supports 2",
            file=sys.stderr,
        )
    if args.json:
        launch = {"backend_directory": str(directory), "tritonserver": str(server), "environment": env}
        print(json.dumps(launch, indent=2))
        return 0
    ours = ", ".join(name for name in BACKENDS if not native(home, name))
    print(f"wrote {directory}: python (from {home / 'backends' / 'python'}) and {ours} (tritonflow)")
    print("start Triton on a repository with:")
    print(
        f'  LD_LIBRARY_PATH="{env["LD_LIBRARY_PATH"]}" PATH="{env["PATH"]}:$PATH" \\\n'
        f'    "{server}" --model-repository REPOSITORY --backend-directory "{directory}"'
    )
    return 0


def _installed(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def pytriton_home() -> Path:
    """The Triton installation inside the nvidia-pytriton wheel, found without importing it."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonflowError(
            "no Triton installation given and nvidia-pytriton is not importable here: "
            "pass --triton-home (e.g. /opt/tritonserver) or `pip install nvidia-pytriton` (numpy<2)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "tritonserver"


def native(home: Path, backend: str) -> bool:
    """Whether the installation has Triton's own library for `backend` (libtriton_<backend>.so)."""
    return (home / "backends" / backend / f"libtriton_{backend}.so").is_file()


def write_backends(directory: Path, home: Path, python_version: str) -> None:
    """DIR/python (the installation's python backend and stub), DIR/<backend>/model.py for each of
    our backends the installation lacks, and links to its other backends, so that DIR alone can be
    Triton's --backend-directory."""
    source = home / "backends" / "python"
    if not (source / "libtriton_python.so").is_file():
        raise TritonflowError(
            f"{home} is not a Triton installation with the python backend "
            f"({source / 'libtriton_python.so'} is missing): pass --triton-home"
        )
    missing = [name for name in BACKENDS if not native(home, name)]
    if not missing:
        raise TritonflowError(
            f"{home} has Triton's native {' and '.join(BACKENDS)} backends: serve the repository with "
            "its own backends"
        )
    stub = _stub(home, python_version)
    python = directory / "python"
    python.mkdir(parents=True, exist_ok=True)
    for name in PYTHON_BACKEND_FILES:
        shutil.copy2(source / name, python / name)
    shutil.copy2(stub, python / STUB)
    adapter = (importlib.resources.files("tritonflow.serving.triton_backend") / "model.py").read_text()
    for name in missing:
        if (directory / name).is_symlink():  # NOTE: a link a run against another installation left
            (directory / name).unlink()
        (directory / name).mkdir(exist_ok=True)
        (directory / name / "model.py").write_text(adapter)
    for other in sorted((home / "backends").iterdir()):
        link = directory / other.name
        if other.name not in ("python", *missing) and other.is_dir() and not link.exists():
            link.symlink_to(other.resolve(), target_is_directory=True)


def _stub(home: Path, python_version: str) -> Path:
    # NGC images ship one stub in backends/python; the pytriton wheel one per Python version.
    for stub in (
        home / "python_backend_stubs" / python_version / STUB,
        home / "backends" / "python" / STUB,
    ):
        if stub.is_file():
            return stub
    available = sorted(p.name for p in (home / "python_backend_stubs").glob("*")) or ["none"]
    raise TritonflowError(
        f"{home} has no python backend stub for Python {python_version} "
        f"(stubs for: {', '.join(available)}): pass --python-version or use a matching Python"
    )


def launch_environment(home: Path, python_version: str) -> dict[str, str]:
    """What to put in front of LD_LIBRARY_PATH and PATH for tritonserver: copied out of the
    installation, the backend loses its relative RPATH; and the stub embeds the first `python3` on PATH."""
    libraries = [
        d
        for d in (home / "lib", home / "external_libs", home.parent.parent / "nvidia_pytriton.libs")
        if d.is_dir()
    ]
    if python_version == THIS_PYTHON:
        # NOTE: the stub links libpython by soname: this interpreter's own keeps it in step with its stdlib.
        libdir = sysconfig.get_config_var("LIBDIR")
        if libdir and any(Path(libdir).glob(f"libpython{python_version}*.so*")):
            libraries.append(Path(libdir))
    return {
        "LD_LIBRARY_PATH": os.pathsep.join(str(d) for d in libraries),
        "PATH": str(Path(sys.executable).parent),
    }
