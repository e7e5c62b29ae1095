"""Hostile model names and versions on every endpoint: a 4xx, and not one byte from outside the repository.

The repository sits in a folder that also holds what `..` would reach: a config.pbtxt and a
version folder with a record, each carrying a secret. Every URL of the router is tried with every
hostile name (raw, percent-encoded, NUL, too long) and version; no answer may be a 5xx or hold
the secret, and the node keeps serving.
"""

from __future__ import annotations

import re

import pytest
from conftest import Server, forest, publish
from test_reload import infer

from tritonflow.serving.http import ROUTES

MODEL = "fraud-classifier"
SECRET = "OUTSIDE-THE-REPOSITORY-7f3a"
NAMES = ["..", "%2e%2e", ".%2e", "%2E.", "a..b", "%00", "fraud%00classifier", "x" * 300, "%20", "-leading"]
VERSIONS = ["0", "01", "-1", "1" * 5000, "9" * 20, "1%00", "%2e%2e"]


@pytest.fixture(scope="module")
def server(serve_module, tmp_path_factory: pytest.TempPathFactory) -> Server:
    outside = tmp_path_factory.mktemp("names")
    (outside / "config.pbtxt").write_text(f'name: "{SECRET}"\nbackend: "fil"\n')
    (outside / "1").mkdir()
    (outside / "1" / "deployment.json").write_text(f'{{"deployment_id": "{SECRET}"}}')
    repo = outside / "repo"
    repo.mkdir()
    publish(repo, MODEL, forest(0))
    # explicit: load and unload requests reach the registry too
    return serve_module(repo, "--model-control-mode", "explicit", "--load-model", "*")


def paths() -> list[tuple[str, str]]:
    found = set()
    for method, template, _group, _handler in ROUTES:
        if (
            "{model}" not in template
        ):  # NOTE: a region name is no path: shared memory keys are (test_shared_memory)
            continue
        for name in NAMES:
            found.add((method, template.replace("{model}", name).replace("{version}", "1")))
        if "{version}" in template:
            for version in VERSIONS:
                found.add((method, template.replace("{model}", MODEL).replace("{version}", version)))
    return sorted(found)


def test_every_endpoint_refuses_hostile_names_without_reading_outside(server: Server):
    answered = []
    for method, path in paths():
        status, _, body = server.request(method, path, b"{}" if method == "POST" else None)
        answered.append((status, method, path))
        assert 400 <= status < 500, (method, path[:80], status, body[:300])
        assert SECRET.encode() not in body, (method, path[:80])
    for status, method, path in answered:
        if re.search(r"/(models|repository/models)/(\.\.|%2e%2e|\.%2e|%2E\.)/", path):
            assert status == 400, (method, path, status)  # refused by the name rule, not just missed
    assert infer(server).status == 200
    index = server.index()
    assert [r["name"] for r in index] == [MODEL] and SECRET not in str(index)


def test_the_name_error_says_what_a_name_may_hold(server: Server):
    status, _, body = server.request("GET", "/v2/models/%2e%2e/versions/1/lineage")
    assert status == 400 and b"is not a valid Triton model name" in body
    status, _, body = server.request("GET", f"/v2/models/{MODEL}/versions/{'1' * 5000}")
    assert status == 400 and b"is not a version number" in body
