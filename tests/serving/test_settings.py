"""The log and trace settings endpoints with tritonclient.http: real log settings, tracing kept off.

Each refusal is a 400 that names the setting and what to do, and leaves the settings as they were;
a good request follows each one.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from conftest import Server, data, forest, publish, wait_for
from tritonclient.utils import InferenceServerException

MODEL = "fraud-classifier"
LOG_DEFAULTS = {
    "log_file": "",
    "log_info": True,
    "log_warning": True,
    "log_error": True,
    "log_verbose_level": 0,
    "log_format": "default",
}
TRACE_DEFAULTS = {
    "trace_level": ["OFF"],
    "trace_rate": "1000",
    "trace_count": "-1",
    "log_frequency": "0",
    "trace_file": "",
    "trace_mode": "triton",
}
ISO_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z DEBUG ", re.M)


@pytest.fixture
def server(serve, tmp_path: Path) -> Server:
    root = tmp_path / "repo"
    root.mkdir()
    publish(root, MODEL, forest())
    return serve(root)


def _infer(server: Server, request_id: str) -> None:
    tensor = httpclient.InferInput("input__0", [2, data()[0].shape[1]], "FP32")
    tensor.set_data_from_numpy(np.ascontiguousarray(data()[0][:2]))
    assert server.client.infer(MODEL, [tensor], request_id=request_id).as_numpy("output__0").shape == (2, 2)


def _refused(call, *words: str) -> str:
    with pytest.raises(InferenceServerException) as refused:
        call()
    assert refused.value.status() == "400", refused.value
    text = refused.value.message()
    assert all(word in text for word in words) and "Traceback" not in text, text
    return text


def test_verbosity_and_format_change_the_nodes_log(server):
    client = server.client
    assert client.get_log_settings() == LOG_DEFAULTS
    _infer(server, "quiet")
    assert client.update_log_settings({"log_verbose_level": 1}) == LOG_DEFAULTS | {"log_verbose_level": 1}
    _infer(server, "verbose")
    wait_for(lambda: "request 'verbose'" in server.log_text(), what="the request's debug line")
    assert "request 'quiet'" not in server.log_text()
    assert client.update_log_settings({"log_format": "ISO8601"})["log_format"] == "ISO8601"
    _infer(server, "stamped")
    wait_for(lambda: "request 'stamped'" in server.log_text(), what="the ISO 8601 debug line")
    assert ISO_LINE.search(server.log_text().split("request 'verbose'")[1]), server.log_text()[-500:]
    back = client.update_log_settings({"log_verbose_level": 0, "log_format": "default"})
    assert back == LOG_DEFAULTS
    _infer(server, "quiet again")
    assert (
        client.get_inference_statistics(MODEL)["model_stats"][0]["inference_stats"]["success"]["count"] == 4
    )
    assert "request 'quiet again'" not in server.log_text()


def test_log_error_switches_the_nodes_error_lines(server, tmp_path: Path):
    client = server.client
    assert client.update_log_settings({"log_error": False}) == LOG_DEFAULTS | {"log_error": False}
    config = tmp_path / "repo" / "broken" / "config.pbtxt"
    config.parent.mkdir()
    config.write_text("not a config")  # NOTE: each new text of it is refused with an ERROR line
    wait_for(lambda: any(r["name"] == "broken" for r in server.index()), what="the broken config's refusal")
    assert "refused the config of broken" not in server.log_text()
    assert client.update_log_settings({"log_error": True}) == LOG_DEFAULTS
    config.write_text("still not a config")
    wait_for(lambda: "refused the config of broken" in server.log_text(), what="the refusal's ERROR line")
    _infer(server, "after")


def test_log_settings_refusals_change_nothing(server):
    client = server.client
    refusals = [
        ({"log_file": "/tmp/node.log"}, ("'log_file'", "stderr")),
        ({"log_verbose_level": -1}, ("'log_verbose_level'", "integer >= 0")),
        ({"log_verbose_level": "1"}, ("'log_verbose_level'", "integer")),
        ({"log_info": "yes"}, ("'log_info'", "true or false")),
        ({"log_format": "bad"}, ("'log_format'", "default, ISO8601")),
        ({"log_colour": True}, ("'log_colour'", "use one of log_file")),
        ({"log_verbose_level": 1, "log_format": "bad"}, ("'log_format'",)),  # checked whole: nothing applied
    ]
    for update, words in refusals:
        _refused(lambda update=update: client.update_log_settings(update), *words)
        assert client.get_log_settings() == LOG_DEFAULTS
        _infer(server, "after a refusal")
    assert client.update_log_settings({"log_file": ""}) == LOG_DEFAULTS  # the value it has: accepted


def test_trace_settings_answer_tritons_defaults_and_keep_tracing_off(server):
    client = server.client
    assert client.get_trace_settings() == TRACE_DEFAULTS
    assert client.get_trace_settings(MODEL) == TRACE_DEFAULTS
    # updates that keep tracing off are taken and echoed; a model's own override the global ones
    assert client.update_trace_settings(settings={"trace_rate": "500"}) == TRACE_DEFAULTS | {
        "trace_rate": "500"
    }
    model = client.update_trace_settings(MODEL, {"trace_count": "5", "trace_level": ["OFF"]})
    assert model == TRACE_DEFAULTS | {"trace_rate": "500", "trace_count": "5"}
    assert client.get_trace_settings()["trace_count"] == "-1"
    assert client.update_trace_settings(MODEL, {"trace_count": None})["trace_count"] == "-1"
    assert client.update_trace_settings(settings={"trace_rate": None}) == TRACE_DEFAULTS
    refusals = [
        ({"trace_level": ["TIMESTAMPS"]}, ("'trace_level'", "no tracing", "keep it OFF")),
        ({"trace_level": ["BAD"]}, ("'trace_level'", "OFF, TIMESTAMPS, TENSORS")),
        ({"trace_mode": "opentelemetry"}, ("'trace_mode'", "no tracing")),
        ({"trace_file": "/tmp/trace.json"}, ("'trace_file'", "no trace file")),
        ({"trace_rate": "x"}, ("'trace_rate'", "integer >= 0")),
        ({"trace_count": "-2"}, ("'trace_count'", "integer >= -1")),
        ({"trace_colour": "1"}, ("'trace_colour'", "use one of trace_level")),
    ]
    for update, words in refusals:
        for model_name in ("", MODEL):
            _refused(lambda u=update, m=model_name: client.update_trace_settings(m, u), *words)
            assert client.get_trace_settings(model_name) == TRACE_DEFAULTS
            _infer(server, "after a refusal")
    with pytest.raises(InferenceServerException) as unknown:
        client.get_trace_settings("nope")
    assert "Request for unknown model: 'nope' is not found" in unknown.value.message()
