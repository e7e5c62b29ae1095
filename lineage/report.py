"""The lineage of one deployment as a document (`--json`, the serving node's /lineage) and as text.

The deployment record is the source of truth; live Metaflow facts are added when available.
Schema `tritonflow.lineage/v1`: deployment, run, code, data, model, decision, release, inspect,
metaflow.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from tritonflow.lineage.records import DeploymentRecord
from tritonflow.lineage.releases import ReleaseState
from tritonflow.lineage.runs import LiveRun

SCHEMA = "tritonflow.lineage/v1"
MAX_CLASSES = 20  # class labels the text names; the JSON has them all


def lineage_document(
    record: DeploymentRecord,
    live: LiveRun | None,
    served_versions: list[int] | None,
    releases: ReleaseState | None = None,
) -> dict[str, Any]:
    """Everything known about a deployment; `served_versions` and `releases` (the model's release
    state) None when they were not read."""
    meta, model = record.metaflow, record.model
    live = live or LiveRun(False, "live Metaflow lookup not requested")
    task = meta.get("task")
    winner = (record.selection or {}).get("winner") or {}
    # NOTE: the deploying task holds the model too (@deploy(select=...) sets it before the step).
    training_task = winner.get("task") or task
    return {
        "schema": SCHEMA,
        "deployment": {
            "deployment_id": record.deployment_id,
            "model": record.model_name,
            "version": record.version,
            "repository": record.repository,
            "created_at": record.created_at,
            "format": record.format,
            "backend": record.backend,
            "files": record.files,
            "steps": record.steps,
            "signature": record.signature,
            "config": record.config,
            "triton_version": record.triton_version,
            "served_versions": served_versions,
            "currently_served": None if served_versions is None else record.version in served_versions,
        },
        "run": {
            "flow": meta.get("flow"),
            "run_id": meta.get("run_id"),
            "pathspec": f"{meta['flow']}/{meta['run_id']}" if meta.get("flow") else None,
            "status": live.run.get("status", "unknown"),
            "user": meta.get("user"),
            "created_at": live.run.get("created_at"),
            "finished_at": live.run.get("finished_at"),
            "tags": sorted(set(meta.get("tags") or []) | set(live.run.get("user_tags", []))),
            "parameters": meta.get("parameters") or {},
            "step": meta.get("step"),
            "task": task,
            "attempt": meta.get("attempt"),
            "project": meta.get("project"),  # @project: project, branch, production; None without it
        },
        "code": {
            **code_identity(meta),
            "code_package": meta.get("code_package"),
            "metaflow_version": meta.get("metaflow_version"),
            "python_version": meta.get("python_version"),
            "libraries": {model.get("library", "model"): model.get("library_version"), **record.exporter},
        },
        "data": {
            "artifacts": [{**item, "sha_matches_metaflow": _matches(item, live)} for item in record.data],
            "files": meta.get("data_files") or [],
        },
        "model": {
            "class": model.get("class"),
            "library": model.get("library"),
            "library_version": model.get("library_version"),
            "hyperparameters": model.get("hyperparameters") or {},
            "n_classes": model.get("n_classes"),
            "classes": model.get("classes"),
            "metrics": record.metrics,
            "parity": model.get("parity"),
        },
        "decision": record.selection,
        "release": release_section(record, releases),
        "inspect": {
            "run": f"Run('{meta['flow']}/{meta['run_id']}')" if meta.get("flow") else None,
            "deploy_task": f"Task('{task}')" if task else None,
            "model": f"Task('{training_task}').data.{meta.get('model_artifact', 'model')}"
            if training_task
            else None,
            "artifacts": [f"Task('{d['task']}')['{d['name']}']" for d in record.data],
        },
        "metaflow": {"available": live.available, "notice": live.notice},
    }


def release_section(record: DeploymentRecord, state: ReleaseState | None) -> dict[str, Any] | None:
    """The version's role now and the release events that changed it, with @deploy's own decision
    (`record.release`); None when the release state was not read."""
    if state is None:
        return None
    role = (state.role(record.version) or "challenger") if state.events else None
    history = [{**asdict(e), "change": e.change()} for e in state.history(record.version)]
    return {"role": role, "deploy": record.release, "history": history}


def code_identity(meta: dict[str, Any]) -> dict[str, Any]:
    """The document's git and script facts, and a warning when the commit lacks the code that ran.

    `script_in_commit` is "identical", "modified" or "untracked"; None when it was not checked
    (no checkout, a task run from a code package, a record older than the check).
    `uncommitted_changes` is Metaflow's check of tracked files, made true by a script that is
    not the committed one (Metaflow's check ignores untracked files).
    """
    git = meta.get("git") or {}
    tracked, matches = git.get("script_tracked"), git.get("script_matches_commit")
    states: dict[Any, str] = {True: "identical", False: "modified"}
    state = None if tracked is None else "untracked" if not tracked else states.get(matches)
    dirty = True if state in ("modified", "untracked") else git.get("has_uncommitted_changes")
    script_file = meta.get("script_file")
    return {
        "git_commit": git.get("commit_sha"),
        "git_branch": git.get("branch_name"),
        "git_repository": git.get("repo_url"),
        "in_git_checkout": bool(git),
        "uncommitted_changes": dirty,
        "script": meta.get("script"),
        "script_file": script_file,
        "script_path": git.get("script_path"),
        "script_in_commit": state,
        "untracked_modules": git.get("untracked_modules") or [],
        "untracked_modules_more": git.get("untracked_modules_more") or 0,
        "warning": _code_warning(
            git.get("script_path") or meta.get("script"), git.get("commit_sha"), state, script_file
        ),
    }


def _code_warning(script: str | None, commit: str | None, state: str | None, file: Any) -> str | None:
    if state not in ("modified", "untracked"):
        return None
    name, where = script or "the flow script", f"commit {commit[:7]}" if commit else "any commit"
    how = f"is not in {where} (untracked)" if state == "untracked" else f"differs from {where} (modified)"
    sha = f"; its sha256 is {file['sha256']}" if file else ""
    return f"{name} {how}: the commit does not contain the code that ran{sha}"


def _matches(item: dict[str, Any], live: LiveRun) -> bool | None:
    found = live.artifacts.get(item["name"])
    return None if found is None else found == item.get("sha")


# -- text ---------------------------------------------------------------------------------------
def render_text(doc: dict[str, Any]) -> str:
    """Readable sections of aligned `key  value` lines: the chain from response to run."""
    dep, run, code, data, model = (doc[k] for k in ("deployment", "run", "code", "data", "model"))
    lines: list[str] = []
    served = dep["currently_served"]
    _section(
        lines,
        "Deployment",
        [
            ("id", dep["deployment_id"]),
            ("model", f"{dep['model']}  version {dep['version']}"),
            ("repository", dep["repository"]),
            ("created", dep["created_at"]),
            (
                "served now",
                "unknown"
                if served is None
                else "yes"
                if served
                else f"no (the version policy serves {dep['served_versions'] or 'none'})",
            ),
            ("backend", f"{dep['backend']} ({dep['format']}), Triton {dep['triton_version']}"),
            ("signature", _signature(dep["signature"])),
            *[(f"file {f['path']}", f"{f['size']:,} bytes  sha256 {f['sha256'][:16]}") for f in dep["files"]],
            *[
                (f"step {s['step']}", f"{s['deployment_id']} ({s['backend']})")
                for s in dep.get("steps") or []
            ],
            *[
                (f"file {s['model']}/{f['path']}", f"{f['size']:,} bytes  sha256 {f['sha256'][:16]}")
                for s in dep.get("steps") or []
                for f in s["files"]
            ],
        ],
    )
    _section(
        lines,
        "Run",
        [
            ("pathspec", run["pathspec"]),
            ("status", run["status"]),
            ("user", run["user"]),
            ("created", run["created_at"]),
            ("finished", run["finished_at"]),
            ("tags", ", ".join(run["tags"]) or "-"),
            ("deployed by", f"{run['task']} (attempt {run['attempt']})"),
            ("project", _project(run.get("project"))),
            *[(f"param {k}", v if v != "" else "''") for k, v in sorted(run["parameters"].items())],
        ],
    )
    _section(
        lines,
        "Code",
        [
            ("git", _git(code)),
            ("script", _script(code)),
            ("in the commit", _IN_COMMIT[code["script_in_commit"]]),
            ("untracked", _untracked(code)),
            ("code package", _package(code["code_package"])),
            ("metaflow", code["metaflow_version"]),
            ("python", code["python_version"]),
            ("libraries", ", ".join(f"{k} {v}" for k, v in code["libraries"].items() if v)),
        ],
    )
    if code["warning"]:
        lines.append(f"  WARNING: {code['warning']}")
    _section(
        lines,
        "Data",
        [
            *[
                (a["name"], f"sha {a['sha']}  {a.get('size') or '?'} bytes  {a['task']}{_check(a)}")
                for a in data["artifacts"]
            ],
            *[(f"file {f['path']}", f"sha256 {f['sha256']}  {f['size']:,} bytes") for f in data["files"]],
        ],
    )
    params = ", ".join(f"{k}={v}" for k, v in sorted(model["hyperparameters"].items()) if v is not None)
    _section(
        lines,
        "Model",
        [
            ("class", f"{model['class']} ({model['library']} {model['library_version']})"),
            ("classes", _classes(model["classes"], dep["signature"])),
            ("hyperparameters", params or "-"),
            *[(f"metric {k}", v) for k, v in sorted(model["metrics"].items())],
            ("parity", _parity(model["parity"])),
        ],
    )
    decision = doc["decision"]
    if decision:
        winner = decision["winner"]["task"]
        rows = [
            (("* " if c["task"] == winner else "  ") + c["label"], f"{_score(c['score'])}  {c['task']}")
            for c in decision["candidates"]
        ]
        _section(lines, f"Decision: {decision['rule']} (* = deployed)", rows)
    release = doc.get("release")
    if release:
        deploy = release["deploy"] or {}
        rows = [("role", release["role"] or "no release decisions yet (the version policy decides)")]
        if deploy:
            rows.append(("at deploy", _at_deploy(deploy)))
        rows += [(e["when"], _event(e)) for e in release["history"]]
        _section(lines, "Releases", rows)
    inspect = doc["inspect"]
    _section(
        lines,
        "Inspect (Metaflow Client, after namespace(None))",
        [("run", inspect["run"]), ("deploying task", inspect["deploy_task"]), ("model", inspect["model"])],
    )
    if doc["metaflow"]["notice"]:
        lines.append(f"note: {doc['metaflow']['notice']}")
    return "\n".join(lines)


def _project(project: dict[str, Any] | None) -> str | None:
    if not project:
        return None
    production_model = project.get("production_model")
    where = (
        "the production model"
        if project.get("model") == production_model
        else f"a branch model; the production model is {production_model}"
    )
    flag = ", --production" if project.get("production") else ""
    return f"{project['project']}  branch {project['branch']}{flag} ({where})"


def _at_deploy(deploy: dict[str, Any]) -> str:
    done = "decided to promote" if deploy.get("promoted") else "not promoted"  # NOTE: the role says if it did
    reason = f": {deploy['reason']}" if deploy.get("reason") else ""
    return f"{done} (promote={deploy.get('promote', 'always')}){reason}"


def _event(event: dict[str, Any]) -> str:
    reason = f"  {event['reason']!r}" if event["reason"] else ""
    return f"{event['change']} by {event['who']}{reason}"


def _section(lines: list[str], title: str, rows: list[tuple[str, Any]]) -> None:
    rows = [(k, v) for k, v in rows if v is not None]
    if lines:
        lines.append("")
    lines.append(title)
    width = max((len(k) for k, _ in rows), default=0)
    lines.extend(f"  {k.ljust(width)}  {v}" for k, v in rows)


_IN_COMMIT = {
    "identical": "yes: the script is the committed file",
    "modified": "no: the script differs from the committed file",
    "untracked": "no: the script is untracked",
    None: None,
}


def _git(code: dict[str, Any]) -> str:
    if not code["in_git_checkout"]:
        return "(the flow was not in a git checkout)"
    dirty = " (uncommitted changes)" if code["uncommitted_changes"] else ""
    return f"{code['git_commit'] or '(no commit yet)'} on {code['git_branch'] or '-'}{dirty}"


def _script(code: dict[str, Any]) -> str | None:
    file = code["script_file"]
    if not file:
        return code["script"]
    return f"{code['script_path'] or file['path']}  {file['size']:,} bytes  sha256 {file['sha256']}"


def _untracked(code: dict[str, Any]) -> str | None:
    names, more = code["untracked_modules"], code["untracked_modules_more"]
    if not names:
        return None
    listed = ", ".join(names) + (f" and {more} more" if more else "")
    return f"{listed} (Python files beside the script, in no commit)"


def _package(package: dict[str, Any] | None) -> str:
    if not package:
        return "-"
    sha = package.get("sha")
    return f"{package.get('url')}  sha {sha}" if sha else str(package.get("url"))


def _classes(classes: list[Any] | None, signature: dict[str, Any]) -> str | None:
    if not classes:
        return None
    outputs: list[dict[str, Any]] = signature.get("outputs") or [{}]
    output = outputs[0].get("name", "output__0")
    shown = ", ".join(f"{i}={c!r}" for i, c in enumerate(classes[:MAX_CLASSES]))
    more = f", ... ({len(classes)} classes)" if len(classes) > MAX_CLASSES else ""
    return f"{output} columns: {shown}{more}"


def _signature(sig: dict[str, Any]) -> str:
    def tensors(items: list[dict[str, Any]]) -> str:
        return ", ".join(f"{t['name']} {t['datatype']}{t['dims']}" for t in items)

    return f"{tensors(sig.get('inputs', []))} -> {tensors(sig.get('outputs', []))}"


def _check(artifact: dict[str, Any]) -> str:
    return {True: "  (matches Metaflow)", False: "  (DIFFERS from Metaflow)", None: ""}[
        artifact["sha_matches_metaflow"]
    ]


def _parity(parity: dict[str, Any] | None) -> str | None:
    if not parity:
        return None
    missing = parity.get("missing_value_rows")  # NOTE: absent from records written before 2026-12-06
    rows = f"{parity['rows']} rows" + (f" + {missing} with a missing value" if missing else "")
    return f"max |diff| {parity['max_abs_diff']:.2e} <= {parity['tolerance']:g} on {rows}"


def _score(score: float | None) -> str:
    return "   n/a" if score is None else f"{score:.6f}"
