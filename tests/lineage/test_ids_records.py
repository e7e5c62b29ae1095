"""Deployment IDs (full and short), model names, repository layout and the record's JSON."""

from __future__ import annotations

import json

import pytest

from tritonflow.lineage import layout
from tritonflow.lineage.errors import RepositoryError, TritonflowError
from tritonflow.lineage.ids import DeploymentId, InvalidDeploymentId, check_model_name
from tritonflow.lineage.records import SCHEMA, DeploymentRecord


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "fraud-classifier:3@FraudFlow/1795314379884117",
            ("fraud-classifier", 3, "FraudFlow", "1795314379884117"),
        ),
        ("m.v2_x:12@Flow/argo-train-abc12", ("m.v2_x", 12, "Flow", "argo-train-abc12")),
        ("fraud-classifier:3", ("fraud-classifier", 3, None, None)),
        ("  m:1\n", ("m", 1, None, None)),
    ],
)
def test_parse_and_format(text, expected):
    did = DeploymentId.parse(text)
    assert (did.model, did.version, did.flow, did.run_id) == expected
    assert DeploymentId.parse(str(did)) == did and str(did) == text.strip()
    assert did.short == f"{expected[0]}:{expected[1]}" and did.is_short == (expected[2] is None)


@pytest.mark.parametrize(
    "text",
    [
        "m:0@F/1",  # versions start at 1
        "m:0",
        "m:01",  # not the canonical spelling of a version
        "m:-1",
        "m:x",
        "m:1 @F/1",  # spaces
        "my model:1",
        "m:1@F/1 2",
        "m",  # missing parts
        "m:",
        ":1",
        "m:1@F",
        "m:1@F/",
        "m:1@/1",
        "m:1@F/1/extra",
        "../m:1",  # a model name that would leave the repository
        "a/b:1",
        "",
    ],
)
def test_invalid_ids_say_what_is_expected(text):
    with pytest.raises(InvalidDeploymentId, match="expected '<model>:<version>@<flow>/<run_id>'") as info:
        DeploymentId.parse(text)
    assert repr(text) in str(info.value) and "short form" in str(info.value)
    assert isinstance(info.value, TritonflowError)


@pytest.mark.parametrize("name", ["fraud-classifier", "m", "M_1.v2", "9lives"])
def test_good_model_names(name):
    assert check_model_name(name) == name


@pytest.mark.parametrize("name", ["", "a/b", "..", "a..b", ".hidden", "-x", "a b", "m\n", "x" * 129, "é"])
def test_bad_model_names(name):
    with pytest.raises(TritonflowError, match="not a valid Triton model name"):
        check_model_name(name)


def test_layout_keys_and_versions():
    assert layout.config_key("m") == "m/config.pbtxt"
    assert layout.version_key("m", 3) == "m/3"
    assert layout.record_key("m", 3) == "m/3/deployment.json"
    assert layout.claim_key("m", 3) == "m/.versions/3"
    assert [layout.parse_version(n) for n in ["1", "42", "0", "01", "-1", "x", "", "²", ".versions"]] == [
        1,
        42,
        *[None] * 7,
    ]


def test_record_json_round_trip(make_record):
    record = make_record("m", 2, files={"checkpoint.tl": b"trees"})
    raw = record.to_json()
    assert DeploymentRecord.from_json(raw) == record
    data = json.loads(raw)
    assert list(data) == sorted(data) and data["schema"] == SCHEMA
    assert raw == DeploymentRecord.from_json(raw).to_json()  # stable bytes
    assert record.id == DeploymentId("m", 2, "TrainFlow", "1795314379884117")
    assert record.task_pathspec == "TrainFlow/1795314379884117/deploy/1"


def test_record_ignores_unknown_keys(make_record):
    record = make_record()
    data = {**record.to_dict(), "added_in_v2": {"x": 1}}
    assert DeploymentRecord.from_json(json.dumps(data).encode()) == record


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{not json", "is not valid JSON"),
        (b"\xff\xfe", "is not valid JSON"),
        (b"[1, 2]", "must hold a JSON object"),
        (b'{"deployment_id": "m:1"}', "deployment record is incomplete"),
    ],
)
def test_malformed_records_are_repository_errors(raw, message):
    with pytest.raises(RepositoryError, match=f"^s3://b/m/1/deployment.json:? {message}"):
        DeploymentRecord.from_json(raw, where="s3://b/m/1/deployment.json")
