"""The deployment card: real Metaflow runs of a select join, the card read back as a user would."""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_deploy_flow import run_flow

from tritonflow.lineage.repository import ModelRepository
from tritonflow.plugin.card import CARD_ID, card_components, fill_card
from tritonflow.plugin.options import OptionError, parse_options

CARD_FLOW = Path(__file__).parent / "flows" / "card_flow.py"


def card_command(env: dict, cwd: Path, *args: str) -> None:
    """`python card_flow.py card ...`: cards read as a user reads them, from where the run wrote them."""
    got = subprocess.run(
        [sys.executable, str(CARD_FLOW), "--no-pylint", "card", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    assert got.returncode == 0, got.stdout + got.stderr


def card_data(html: str) -> str:
    """The card's components as JSON text: Metaflow embeds them base64-encoded for its JS to draw."""
    encoded = re.search(r'window\.__MF_DATA__\["[^"]+"\] = "([^"]+)"', html)
    assert encoded, "no card data in the HTML"
    return base64.b64decode(encoded.group(1)).decode()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, metaflow_env_module: dict[str, str]):
    """Two runs into one repository: v1 with card=False, then v2 with a card and promote=if_better, which
    scores it against champion v1."""
    folder = tmp_path_factory.mktemp("card")
    env = {**metaflow_env_module, "TRITONFLOW_REPOSITORY": str(folder / "repo")}
    ids = []
    for deploy in ({"card": False}, {"promote": "if_better:roc_auc", "labels": "y_val"}):
        result = run_flow(CARD_FLOW, env, folder, deploy=deploy)
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
        listing = folder / "cards.json"
        card_command(env, folder, "list", "select", "--as-json", "--file", str(listing))
        ids.append(sorted(card["id"] for card in json.loads(listing.read_text())["cards"]))
    return env, folder, ids


@pytest.mark.slow
def test_card_false_attaches_no_card(runs):
    _, _, ids = runs
    assert ids[0] == ["notes"]  # the step's own card still renders


@pytest.mark.slow
def test_card_shows_the_winner_parity_release_and_how_to_serve(runs):
    env, folder, ids = runs
    assert ids[1] == sorted(["notes", CARD_ID])
    repository = ModelRepository(str(folder / "repo"))
    record = repository.read_record("card-model", 2)
    html = folder / "card.html"
    card_command(env, folder, "get", "select", "--id", CARD_ID, str(html))
    card = json.loads(card_data(html.read_text()))
    text = json.dumps(card)

    assert f"Deployed `{record.deployment_id}`" in text
    assert f"tritonflow lineage {record.deployment_id} --repository {repository.uri}" in text
    tables = [c for c in card["components"][0]["contents"][0]["contents"] if c["type"] == "table"]
    candidates = next(t for t in tables if "candidate" in t["columns"])
    assert [row[:2] for row in candidates["data"]] == [["", "stump"], ["★ winner", "deep"]]
    assert candidates["data"][1][3] == record.selection["winner"]["task"]
    parity = record.model["parity"]
    assert ["max |difference|", f"{parity['max_abs_diff']:.4g}"] in _rows(tables)
    assert ["rows compared", str(parity["rows"])] in _rows(tables)
    assert parity["missing_value_rows"] > 0  # a forest takes NaN: the gate sent it some
    assert ["rows with a missing value", str(parity["missing_value_rows"])] in _rows(tables)
    evaluation = record.release["evaluation"]
    assert ["compared with", "champion v1"] in _rows(tables)
    assert ["champion v1's roc_auc", f"{evaluation['champion']['score']:.4g}"] in _rows(tables)
    assert ["decision", "promoted" if record.release["promoted"] else "not promoted"] in _rows(tables)
    assert set(parity["latency"]["median_ms"]) == {"1", "1000"}
    assert all(ms > 0 for ms in parity["latency"]["median_ms"].values())
    for entry in record.files:
        assert [entry["path"], f"{entry['size']:,} B", entry["sha256"]] in _rows(tables)
    assert "`fraud`, `legit`" in text  # the class labels
    assert 'label_filename: \\"labels.txt\\"' in text  # config.pbtxt as it is in the repository


def _rows(tables: list[dict]) -> list[list]:
    return [row for table in tables for row in table["data"]]


@pytest.mark.slow
def test_a_card_that_cannot_be_made_is_logged_and_the_deploy_stands(runs, capsys):
    _, folder, _ = runs
    record = ModelRepository(str(folder / "repo")).read_record("card-model", 1)
    fill_card(record, "release line")  # NOTE: outside a task, Metaflow has no current.card
    assert "@deploy: warning: no deployment card" in capsys.readouterr().err


def test_a_branch_deploy_says_production_is_untouched(runs):
    _, folder, _ = runs
    record = ModelRepository(str(folder / "repo")).read_record("card-model", 1)
    project = {"project": "fraud", "branch": "test.alice", "production": False}
    project |= {"production_model": "card-model", "model": "card-model.test.alice"}
    branch = dataclasses.replace(record, metaflow={**record.metaflow, "project": project})
    text = "".join(c.render().get("source", "") for c in card_components(branch, "", "line"))
    assert (
        "**@project** `fraud`, branch `test.alice`: a model of its own; production serves `card-model`"
        in text
    )
    plain = "".join(c.render().get("source", "") for c in card_components(record, "", "line"))
    assert "@project" not in plain


@pytest.mark.parametrize(
    ("given", "expected"), [(None, True), (False, False), ("false", False), ("True", True)]
)
def test_card_option(given, expected):
    attributes = {} if given is None else {"card": given}
    assert parse_options(attributes, "CardFlow", is_join=False).card is expected


def test_card_option_refuses_other_values():
    with pytest.raises(OptionError, match="card='maybe' must be True or False"):
        parse_options({"card": "maybe"}, "CardFlow", is_join=False)
