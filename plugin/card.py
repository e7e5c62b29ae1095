"""The deployment card: what @deploy published, in Metaflow's card viewer (`python flow.py card view <step>`).

@deploy puts Metaflow's own `@card(type="blank")` on its step, so the user adds nothing, and fills it
from `task_post_step` with Metaflow's components, from the deployment record. Metaflow renders it when
the task has finished, in a process of its own. Building the card never fails a deploy: the version is
published by then, so an error here is logged and the step goes on.
"""

from __future__ import annotations

import shlex
import sys
from typing import Any

from tritonflow.lineage.records import DeploymentRecord
from tritonflow.lineage.repository import ModelRepository

CARD_ID = "deployment"  # `python flow.py card view <step> --id deployment` where a step has other cards


def attach_card(decorators: list[Any], step_name: str) -> None:
    """Append a blank `@card` to the step's decorators (from `step_init`, so Metaflow initialises it next).

    Marked as inserted by @deploy: Metaflow does not pass it on to the task's process with `--with`,
    where @deploy's own step_init inserts it again.
    """
    try:
        from metaflow.plugins.cards.card_decorator import CardDecorator

        if any(isinstance(d, CardDecorator) and d.attributes.get("id") == CARD_ID for d in decorators):
            return
        card = CardDecorator(attributes={"type": "blank", "id": CARD_ID}, inserted_by=["deploy"])
        card.external_init()
        decorators.append(card)
        # NOTE: a user's @card listed before @deploy has counted the step's cards already, without this
        # one; Metaflow finalises current.card once that many cards have started (private API)
        CardDecorator._set_card_counts_per_step(
            step_name, sum(isinstance(d, CardDecorator) for d in decorators)
        )
    except Exception as exc:  # NOTE: a card must not stop a deploy
        _warn(exc)


def fill_card(record: DeploymentRecord, release_line: str) -> None:
    """Add the card's components to `current.card[CARD_ID]`; on any error, log it and keep the deploy."""
    try:
        from metaflow import current

        config = ModelRepository(record.repository).read_config(record.model_name)
        cards = current.card  # type: ignore[attr-defined]  # NOTE: set by @card at task start, not typed
        cards[CARD_ID].extend(card_components(record, config, release_line))
    except Exception as exc:  # NOTE: the deploy is published: a card must not fail it
        _warn(exc)


def _warn(exc: Exception) -> None:
    print(f"@deploy: warning: no deployment card ({type(exc).__name__}: {exc})", file=sys.stderr)


def card_components(record: DeploymentRecord, config_text: str, release_line: str) -> list[Any]:
    """The card, top to bottom: what serves, how to use it, why this model, and what was checked."""
    from metaflow.cards import Markdown

    parity = record.model.get("parity") or {}
    return [
        Markdown(f"# Deployed `{record.deployment_id}`"),
        Markdown(
            f"Published {record.created_at} to `{record.repository}` by task `{record.task_pathspec}`.\n\n"
            f"{_project(record.metaflow.get('project'))}**Release:** {release_line}"
        ),
        *_highlights(record, parity),
        Markdown("## Serve it, trace it"),
        Markdown(_commands(record)),
        *_selection(record.selection),
        *_release(record.release),
        *_export(record, parity),
        *_latency(parity),
        *_signature(record),
        *_files(record),
        Markdown("## config.pbtxt (as in the repository after this deploy)"),
        Markdown(f"```\n{config_text.rstrip()}\n```"),
    ]


def _project(project: dict[str, Any] | None) -> str:
    """The @project line: the branch, and whether this deploy is what production serves."""
    if not project:
        return ""
    where = (
        "what production serves"
        if project["model"] == project["production_model"]
        else f"a model of its own; production serves `{project['production_model']}`, untouched"
    )
    return f"**@project** `{project['project']}`, branch `{project['branch']}`: {where}.\n\n"


def _highlights(record: DeploymentRecord, parity: dict[str, Any]) -> list[Any]:
    from metaflow.cards import Table, ValueBox

    release = record.release or {}
    median = (parity.get("latency") or {}).get("median_ms", {})
    boxes: list[Any] = [
        ValueBox(
            title="Parity",
            value=f"{parity.get('max_abs_diff', float('nan')):.2g}",
            subtitle=f"max |diff|, {parity.get('rows')} rows, tolerance {_number(parity.get('tolerance'))}",
            theme="success",
        ),
        ValueBox(
            title="Release",
            value="promoted" if release.get("promoted") else "not promoted",
            subtitle=f"promote={release.get('promote', 'always')}",
            theme="success" if release.get("promoted") else "warning",
        ),
    ]
    boxes += [
        ValueBox(title=_rows(n), value=_duration(ms), subtitle="engine latency here, median")
        for n, ms in median.items()
    ]
    return [Table([boxes])]  # NOTE: one table row lays the boxes side by side


def _commands(record: DeploymentRecord) -> str:
    repository = shlex.quote(record.repository)
    return (
        "```\n"
        f"tritonflow serve {repository}\n"
        f"tritonflow lineage {shlex.quote(record.deployment_id)} --repository {repository}\n"
        "```\n"
        f"Every response of the node carries the deployment ID `{record.deployment_id}` "
        "(`parameters.deployment_id`, header `x-deployment-id`)."
    )


def _selection(selection: dict[str, Any] | None) -> list[Any]:
    from metaflow.cards import Markdown, Table

    if not selection:
        return [Markdown("## Candidates"), Markdown("No selection: the model is this step's own.")]
    rule = selection["rule"]
    best = "highest" if selection["direction"] == "max" else "lowest"
    winner = selection["winner"]["task"]
    rows = [
        ["★ winner" if c["task"] == winner else "", c["label"], _number(c["score"]), c["task"]]
        for c in selection["candidates"]
    ]
    return [
        Markdown("## Candidates"),
        Markdown(
            f"Selection rule `select={rule}`: the {best} `{selection['metric']}` wins; a tie goes to the "
            "first in foreach order; a candidate without a finite score is never chosen."
        ),
        Table(rows, headers=["", "candidate", selection["metric"], "task"]),
    ]


def _release(release: dict[str, Any] | None) -> list[Any]:
    from metaflow.cards import Markdown, Table

    if not release:
        return []
    evaluation = release.get("evaluation") or {}
    champion = evaluation.get("champion") or {}
    champion_version = release.get("champion")
    rows = [
        ["rule", f"promote={release.get('promote')}"],
        ["compared with", f"champion v{champion_version}" if champion_version else "no champion yet"],
        ["decision", "promoted" if release.get("promoted") else "not promoted"],
        ["reason", release.get("reason") or "the rule alone decides"],
    ]
    if evaluation:
        metric = evaluation.get("metric")
        rows += [
            [f"this version's {metric}", _number(evaluation.get("new"))],
            [
                f"champion v{champion.get('version')}'s {metric}",
                _number(champion["score"]) if "score" in champion else champion.get("error", "?"),
            ],
            ["rows scored", str(evaluation.get("rows"))],
        ]
    if release.get("pending"):
        rows.append(["pending", "becomes champion once the whole run has succeeded"])
    return [Markdown("## Release decision"), Table(rows)]


def _export(record: DeploymentRecord, parity: dict[str, Any]) -> list[Any]:
    from metaflow.cards import Markdown, Table

    versions = ", ".join(f"{lib} {v}" for lib, v in sorted(record.exporter.items()))
    export: list[list[Any]] = [
        ["model", record.model.get("class", "?")],
        ["format", record.format],
        ["Triton backend", record.backend],
        ["target Triton release", record.triton_version],
        ["written with", versions],
    ]
    check: list[list[Any]] = [
        ["max |difference|", _number(parity.get("max_abs_diff"))],
        ["rows compared", str(parity.get("rows"))],
        ["rows with a missing value", str(parity.get("missing_value_rows", "-"))],
        ["tolerance", f"{_number(parity.get('tolerance'))} ({parity.get('rule')})"],
        ["served by", str(parity.get("engine"))],
    ]
    return [
        Markdown("## Export"),
        Table(export),
        Markdown("## Parity: the exported files, served, against the trained model"),
        Table(check),
    ]


def _latency(parity: dict[str, Any]) -> list[Any]:
    from metaflow.cards import Markdown, Table

    latency = parity.get("latency")
    if not latency:
        return []
    rows: list[list[Any]] = [[_rows(n), _duration(ms)] for n, ms in latency["median_ms"].items()]
    return [
        Markdown("## Engine latency on this machine"),
        Markdown(
            f"`{parity.get('engine')}` on `{latency.get('host')}` ({latency.get('cpus')} CPUs), measured at "
            f"deploy time: the median of {latency.get('repeats')} calls after a warm-up, the engine alone "
            "(no HTTP, no batching). Another machine, or `tritonflow serve --engine`, gives other figures."
        ),
        Table(rows, headers=["batch", "median"]),
    ]


def _signature(record: DeploymentRecord) -> list[Any]:
    from metaflow.cards import Markdown, Table

    signature = record.signature
    tensors = [
        [kind, t["name"], t["datatype"], str(t["dims"])]
        for kind in ("inputs", "outputs")
        for t in signature.get(kind, [])
    ]
    names = signature.get("feature_names")
    classes = record.model.get("classes")
    facts = [
        f"{signature.get('n_features')} features: "
        + (", ".join(f"`{n}`" for n in names) if names else "(no names: the sample had none)"),
        "Class labels, one per column of the output, in order: "
        + (", ".join(f"`{c}`" for c in classes) if classes else "none (a regressor)"),
    ]
    return [
        Markdown("## Signature"),
        Table(tensors, headers=["", "tensor", "datatype", "dims"]),
        Markdown("\n\n".join(facts)),
    ]


def _files(record: DeploymentRecord) -> list[Any]:
    from metaflow.cards import Markdown, Table

    files: list[dict[str, Any]] = [
        *record.files,
        *(record.config.get("model_files") or []),
        *([record.reference] if record.reference else []),
    ]
    rows = [[f["path"], f"{f['size']:,} B", f["sha256"]] for f in files]
    rows.append(["config.pbtxt (as this deploy wrote it)", "", record.config.get("sha256", "")])
    return [
        Markdown(f"## Files, under `{record.repository}/{record.model_name}`"),
        Table(rows, headers=["path", "size", "sha256"]),
    ]


def _rows(n: str) -> str:
    return "1 row" if n == "1" else f"{int(n):,} rows"


def _duration(ms: float) -> str:
    return f"{ms * 1e3:.3g} µs" if ms < 1 else f"{ms:.3g} ms"


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, int | float) and not isinstance(value, bool) else str(value)
