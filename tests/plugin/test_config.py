"""@deploy attributes from a Metaflow Config (`Config`, `config_expr`): real runs with a config file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tritonflow.lineage.repository import ModelRepository

CONFIG_FLOW = Path(__file__).parent / "flows" / "config_flow.py"

pytestmark = pytest.mark.slow


def run_with(settings: dict, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    (cwd / "settings.json").write_text(json.dumps(settings))
    return subprocess.run(
        [sys.executable, str(CONFIG_FLOW), "--no-pylint", "--config", "settings", "settings.json", "run"],
        env={**os.environ, **env, "TRITONFLOW_REPOSITORY": str(cwd / "repo")},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_deploy_takes_its_attributes_from_a_config_file(tmp_path, metaflow_env) -> None:
    settings = {"model": {"name": "scorer"}, "serving": {"max_batch_size": 64, "instance_kind": "cpu"}}
    done = run_with(settings, metaflow_env, tmp_path)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    repository = ModelRepository(str(tmp_path / "repo"))
    assert repository.models() == ["scorer"]
    assert "max_batch_size: 64" in repository.read_config("scorer")
    record = repository.read_record("scorer", 1)
    assert record.config["max_batch_size"] == 64
    assert record.metaflow["parameters"]["settings"] == settings  # the config is in the record


def test_a_wrong_config_value_is_refused_before_the_run(tmp_path, metaflow_env) -> None:
    settings = {"model": {"name": "bad name"}, "serving": {"max_batch_size": 0, "instance_kind": "tpu"}}
    done = run_with(settings, metaflow_env, tmp_path)
    out = done.stdout + done.stderr
    assert done.returncode != 0 and "3 @deploy attributes are wrong" in out
    assert "'bad name' is not a valid Triton model name" in out and "instance_kind='tpu'" in out
    assert "max_batch_size=0 must be a whole number >= 1" in out
    assert "Workflow starting" not in out and not (tmp_path / "repo").exists()
