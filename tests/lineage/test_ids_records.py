"""Deployment IDs (full and short), model names, repository layout, the record's JSON and timestamps,
and how lineage reads records older than its newest keys."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime, timedelta, timezone

import pytest

from tritonflow.lineage import layout
from tritonflow.lineage.errors import RepositoryError, TritonflowError
from tritonflow.lineage.ids import DeploymentId, InvalidDeploymentId, check_model_name
from tritonflow.lineage.records import SCHEMA, DeploymentRecord, iso_utc, utc_now
from tritonflow.lineage.report import lineage_document, render_text


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


def test_one_timestamp_format_whatever_the_zone(monkeypatch):
    paris = datetime(2026, 12, 1, 20, 41, 16, 149000, tzinfo=timezone(timedelta(hours=1)))
    assert iso_utc(paris) == "2026-12-01T19:41:16.149Z"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", utc_now())
    # naive = local time, as Metaflow's Client returns them (datetime.fromtimestamp)
    monkeypatch.setenv("TZ", "IST-5:30")  # NOTE: POSIX spelling: UTC+5:30, no tz database needed
    time.tzset()
    try:
        local = datetime.fromtimestamp(1796154076.149)
        assert local.hour == 1  # the zone is in effect: 19:41 UTC is 01:11 the next day
        assert iso_utc(local) == "2026-12-01T19:41:16.149Z"
    finally:
        monkeypatch.undo()
        time.tzset()


def test_lineage_reads_records_older_than_the_code_identity(make_record):
    """Records written before script_file and the script's git state still render, claiming nothing."""
    bare = make_record()
    older = make_record()
    older.metaflow["git"] = {
        "commit_sha": "b0c8b39" + "0" * 33,
        "branch_name": "main",
        "has_uncommitted_changes": False,
    }
    for record, in_git in ((bare, False), (older, True)):
        doc = lineage_document(record, None, None)
        code = doc["code"]
        assert code["in_git_checkout"] is in_git and code["script_in_commit"] is None
        assert code["warning"] is None and code["script_file"] is None
        assert code["uncommitted_changes"] is (False if in_git else None)
        assert doc["model"]["classes"] is None
        text = render_text(doc)
        assert "WARNING" not in text and "in the commit" not in text and "classes" not in text
        assert ("b0c8b39" in text) is in_git and ("not in a git checkout" in text) is not in_git
