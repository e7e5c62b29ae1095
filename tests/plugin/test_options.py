"""@deploy attribute validation: every bad value is refused with a message that says what to do."""

import re

import pytest

from tritonflow.lineage.errors import TritonflowError
from tritonflow.plugin.options import SelectRule, kebab_case, parse_options


def options(**attributes):
    return parse_options(attributes, "FraudFlow", is_join=True)


def test_defaults(monkeypatch):
    monkeypatch.delenv("TRITONFLOW_REPOSITORY", raising=False)
    opts = options()
    assert (opts.model, opts.name, opts.repository, opts.format) == (
        "model",
        "fraud-flow",
        "model_repository",
        "auto",
    )
    assert (opts.instance_kind, opts.max_batch_size, opts.max_queue_delay_us) == ("cpu", 8192, 100)
    assert opts.select is None and opts.triton_version


def test_repository_from_environment(monkeypatch):
    monkeypatch.setenv("TRITONFLOW_REPOSITORY", "s3://models/prod")
    assert options().repository == "s3://models/prod"
    assert options(repository="/tmp/r").repository == "/tmp/r"


def test_cli_strings_are_accepted():
    opts = options(max_batch_size="64", max_queue_delay_us="0", select="min:val_loss")
    assert opts.max_batch_size == 64 and opts.max_queue_delay_us == 0
    assert opts.select == SelectRule("min", "val_loss")


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        ({"format": "pickle"}, "format='pickle' is not one of"),
        ({"instance_kind": "tpu"}, "instance_kind='tpu'"),
        ({"select": "best:auc"}, "not a selection rule"),
        ({"select": "max:"}, "not a selection rule"),
        ({"name": "../etc"}, "not a valid Triton model name"),
        ({"name": "fraud model"}, "not a valid Triton model name"),
        ({"name": "a/b"}, "not a valid Triton model name"),
        ({"max_batch_size": 0}, "max_batch_size=0 must be a whole number >= 1"),
        ({"max_batch_size": "many"}, "max_batch_size='many'"),
        ({"max_queue_delay_us": -1}, "max_queue_delay_us=-1"),
        ({"triton_version": "latest"}, "not a Triton release"),
        ({"triton_version": "23.01"}, "not supported"),
        ({"model": "my model"}, "must name an artifact"),
        ({"sample": "X-val"}, "must name an artifact"),
    ],
)
def test_bad_values_are_refused(attributes, message):
    with pytest.raises(TritonflowError, match=message.replace("(", r"\(").replace("[", r"\[")):
        options(**attributes)


def test_select_needs_a_join():
    with pytest.raises(TritonflowError, match="not a join"):
        parse_options({"select": "max:auc"}, "F", is_join=False)


def test_remote_steps_need_s3():
    with pytest.raises(TritonflowError, match="@kubernetes"):
        parse_options({"repository": "./model_repository"}, "F", is_join=False, remote="@kubernetes")
    assert parse_options({"repository": "s3://b/p"}, "F", False, remote="@batch").repository == "s3://b/p"


def test_kebab_case():
    assert kebab_case("FraudFlow") == "fraud-flow"
    assert kebab_case("XGBoostFlow") == "xg-boost-flow"
    assert kebab_case("my_flow") == "my-flow"


def test_every_wrong_attribute_is_reported_at_once():
    with pytest.raises(TritonflowError) as caught:
        parse_options(
            {"select": "maxx:auc", "instance_kind": "tpu", "max_batch_size": 0, "format": "onnx"},
            "F",
            is_join=True,
        )
    headline, *lines = str(caught.value).splitlines()
    assert headline == "3 @deploy attributes are wrong:"
    assert [line.split("=")[0] for line in lines] == ["  select", "  instance_kind", "  max_batch_size"]
    # each line as specific as when it is the only problem
    for line, alone in zip(
        lines, ({"select": "maxx:auc"}, {"instance_kind": "tpu"}, {"max_batch_size": 0}), strict=True
    ):
        with pytest.raises(TritonflowError) as single:
            options(**alone)
        assert line == f"  {single.value}" and "\n" not in str(single.value)


def test_a_select_rule_on_a_step_that_is_no_join_is_reported_with_the_rest():
    with pytest.raises(TritonflowError) as caught:
        parse_options({"select": "max:auc", "sample": "X-val"}, "F", is_join=False)
    assert str(caught.value).startswith("2 @deploy attributes are wrong:")
    assert "not a join" in str(caught.value) and "sample='X-val' must name an artifact" in str(caught.value)


@pytest.mark.parametrize(
    ("repository", "message"),
    [
        ("ftp://host/models", "unsupported repository 'ftp://host/models'"),
        ("s3://", "'s3://' is not an S3 repository"),
        ("s3://bucket/../other", "'s3://bucket/../other' is not a safe repository URI"),
    ],
)
def test_repositories_that_cannot_work_are_refused_before_the_run(repository, message):
    with pytest.raises(TritonflowError, match=f"^repository: {re.escape(message)}"):
        options(repository=repository)


def test_a_bad_repository_from_the_environment_says_so(monkeypatch):
    monkeypatch.setenv("TRITONFLOW_REPOSITORY", "gs://bucket/models")
    with pytest.raises(TritonflowError, match=r"TRITONFLOW_REPOSITORY.*'gs://bucket/models'"):
        options()


def test_a_flow_name_that_makes_no_model_name_asks_for_one():
    with pytest.raises(TritonflowError, match=r"from the flow name '___'.*pass @deploy\(name=...\)"):
        parse_options({}, "___", is_join=False)
