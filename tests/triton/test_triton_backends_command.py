"""`tritonflow triton-backends` on fake Triton installations: the layout it writes and its errors.

(The real server on that layout is tests/triton/test_triton_compat.py.)
"""

from __future__ import annotations

import importlib.resources
import json
from pathlib import Path

import pytest

from tritonflow.cli import main
from tritonflow.lineage.errors import TritonflowError
from tritonflow.serving.triton_backends_command import launch_environment, write_backends


def installation(root: Path, *, wheel: bool = True) -> Path:
    """A Triton installation's shape: the pytriton wheel's (stubs per Python) or an NGC image's."""
    home = root / "site-packages" / "pytriton" / "tritonserver" if wheel else root / "opt" / "tritonserver"
    python = home / "backends" / "python"
    python.mkdir(parents=True)
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        (python / name).write_text(name)
    (home / "backends" / "onnxruntime").mkdir()  # NOTE: no libtriton_onnxruntime.so: not a native one
    (home / "backends" / "identity").mkdir()
    (home / "backends" / "identity" / "libtriton_identity.so").write_text("")
    if wheel:
        for version in ("3.10", "3.11"):
            (home / "python_backend_stubs" / version).mkdir(parents=True)
            (home / "python_backend_stubs" / version / "triton_python_backend_stub").write_text(version)
        (root / "site-packages" / "nvidia_pytriton.libs").mkdir()
    else:
        (python / "triton_python_backend_stub").write_text("ngc")
    return home


def test_writes_python_fil_onnxruntime_and_links_the_other_backends(tmp_path: Path) -> None:
    home = installation(tmp_path)
    out = tmp_path / "backends"
    write_backends(out, home, "3.10")
    assert sorted(p.name for p in (out / "python").iterdir()) == [
        "libtriton_python.so",
        "triton_python_backend_stub",
        "triton_python_backend_utils.py",
    ]
    assert (out / "python" / "triton_python_backend_stub").read_text() == "3.10"
    adapter = importlib.resources.files("tritonflow.serving.triton_backend") / "model.py"
    for backend in ("fil", "onnxruntime"):
        assert (out / backend / "model.py").read_text() == adapter.read_text()
    assert (out / "identity").resolve() == (home / "backends" / "identity").resolve()
    write_backends(out, home, "3.11")  # again over itself: refreshed, not refused
    assert (out / "python" / "triton_python_backend_stub").read_text() == "3.11"


def test_a_native_backend_is_linked_not_replaced(tmp_path: Path) -> None:
    home = installation(tmp_path)
    (home / "backends" / "onnxruntime" / "libtriton_onnxruntime.so").write_text("")
    out = tmp_path / "backends"
    write_backends(out, home, "3.10")
    assert (out / "onnxruntime").is_symlink() and (out / "fil" / "model.py").is_file()
    assert (out / "onnxruntime").resolve() == (home / "backends" / "onnxruntime").resolve()


def test_an_ngc_layout_keeps_its_own_stub(tmp_path: Path) -> None:
    home = installation(tmp_path, wheel=False)
    write_backends(tmp_path / "backends", home, "3.12")
    assert (tmp_path / "backends" / "python" / "triton_python_backend_stub").read_text() == "ngc"


def test_the_launch_environment_points_at_the_wheels_libraries(tmp_path: Path) -> None:
    home = installation(tmp_path)
    env = launch_environment(home, "3.10")
    assert env["LD_LIBRARY_PATH"].split(":")[0] == str(tmp_path / "site-packages" / "nvidia_pytriton.libs")
    assert Path(env["PATH"], "python").exists()


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("no python backend", "is not a Triton installation with the python backend"),
        ("native fil and onnxruntime", "has Triton's native fil and onnxruntime backends"),
        ("no stub", "has no python backend stub for Python 3.9 (stubs for: 3.10, 3.11)"),
    ],
)
def test_errors_say_what_to_do(tmp_path: Path, breakage: str, message: str) -> None:
    home = installation(tmp_path)
    if breakage == "no python backend":
        (home / "backends" / "python" / "libtriton_python.so").unlink()
    elif breakage == "native fil and onnxruntime":
        (home / "backends" / "fil").mkdir()
        (home / "backends" / "fil" / "libtriton_fil.so").write_text("")
        (home / "backends" / "onnxruntime" / "libtriton_onnxruntime.so").write_text("")
    with pytest.raises(TritonflowError, match=message.replace("(", r"\(").replace(")", r"\)")):
        write_backends(tmp_path / "backends", home, "3.9" if breakage == "no stub" else "3.10")


def test_the_command_prints_how_to_start_triton(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = installation(tmp_path)
    out = tmp_path / "backends"
    assert main(["triton-backends", str(out), "--triton-home", str(home), "--python-version", "3.11"]) == 0
    text = capsys.readouterr().out
    assert (
        f'"{home / "bin" / "tritonserver"}" --model-repository REPOSITORY --backend-directory "{out}"' in text
    )
    assert main(["triton-backends", str(out), "--triton-home", str(home), "--json"]) == 0
    launch = json.loads(capsys.readouterr().out)
    assert launch["backend_directory"] == str(out) and set(launch["environment"]) == {
        "LD_LIBRARY_PATH",
        "PATH",
    }
