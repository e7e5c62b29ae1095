"""The API's answers: the commands' documented JSON as read-only mappings with attribute access
(`doc["run"]["pathspec"]` is `doc.run.pathspec`), short reprs, and compact HTML tables for notebooks."""

from __future__ import annotations

import copy
import html
from collections.abc import Iterator, Mapping
from typing import Any

from tritonflow.lineage.releases import ReleaseEvent


class Document(Mapping[str, Any]):
    """A read-only view of a JSON document: nested objects are Documents, lists are fresh copies, so
    nothing a caller changes reaches the document. `to_dict()` is the JSON the command prints."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, Any]) -> None:
        object.__setattr__(self, "_data", data)

    def __getitem__(self, key: str) -> Any:
        return _view(self._data[key])

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # NOTE: copy and pickle look for hooks before __init__ has run
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            raise AttributeError(
                f"{type(self).__name__} has no {name!r}; its keys: {', '.join(self._data)}"
            ) from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only: change a copy, .to_dict()")

    def __reduce__(self) -> tuple[type[Document], tuple[Mapping[str, Any]]]:
        return type(self), (self._data,)  # NOTE: pickle and copy would set the slot through __setattr__

    def __dir__(self) -> list[str]:
        return [*super().__dir__(), *(k for k in self._data if k.isidentifier())]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(self._data)})"

    def to_dict(self) -> dict[str, Any]:
        """A deep copy as plain dicts and lists: `json.dumps(doc.to_dict())` is the command's `--json`."""
        return copy.deepcopy(dict(self._data))


class Lineage(Document):
    """One deployment's lineage (schema tritonflow.lineage/v1): `tritonflow lineage --json`."""

    def __repr__(self) -> str:
        run = self._data["run"]
        return f"Lineage({self._data['deployment']['deployment_id']!r}, run status {run['status']!r})"

    def _repr_html_(self) -> str:
        dep, run, code, data, model = (self._data[k] for k in ("deployment", "run", "code", "data", "model"))
        release, decision = self._data.get("release"), self._data.get("decision")
        dirty = " (uncommitted changes)" if code["uncommitted_changes"] else ""
        git = f"{code['git_commit']} on {code['git_branch']}{dirty}" if code["in_git_checkout"] else "-"
        served = {None: "unknown", True: "yes", False: "no"}[dep["currently_served"]]
        sections: list[tuple[str, list[tuple[Any, Any]]]] = [
            (
                "Deployment",
                [("id", dep["deployment_id"]), ("repository", dep["repository"]), ("served now", served)],
            ),
            ("Run", [("pathspec", run["pathspec"]), ("status", run["status"]), ("user", run["user"])]),
            ("Code", [("git", git), ("script", code["script"]), ("warning", code["warning"])]),
            ("Data", [(a["name"], f"sha {a['sha']}  {a['task']}") for a in data["artifacts"]]),
            ("Parameters", sorted(run["parameters"].items())),
            ("Metrics", sorted(model["metrics"].items())),
        ]
        if decision:
            winner = decision["winner"]["task"]
            rows = [
                (("* " if c["task"] == winner else "") + c["label"], f"{c['score']}  {c['task']}")
                for c in decision["candidates"]
            ]
            sections.append((f"Candidates: {decision['rule']} (* deployed)", rows))
        if release:
            rows = [("role", release["role"] or "no release decisions yet")]
            sections.append(
                ("Release", rows + [(e["when"], f"{e['change']} by {e['who']}") for e in release["history"]])
            )
        return _table(sections)


class Releases(Document):
    """A model's versions, roles and release history (schema tritonflow.releases/v1): `releases --json`."""

    def __repr__(self) -> str:
        versions = [v["version"] for v in self._data["versions"]]
        return f"Releases({self._data['model']!r}, champion {self._data['champion']}, versions {versions})"

    def _repr_html_(self) -> str:
        rows = [
            (v["version"], f"{v['role']}  {v['deployment_id'] or ''}  run {v['run_status']}")
            for v in self._data["versions"]
        ]
        history = [
            (e["seq"], f"{e['when']}  {ReleaseEvent(**e).change()} by {e['who']}  {e['reason']}")
            for e in self._data["history"]
        ]
        warnings = [("warning", w) for w in (self._data["config_drift"], self._data["champion_run"]) if w]
        return _table(
            [(f"{self._data['model']} in {self._data['repository']}", rows + warnings), ("History", history)]
        )


def _view(value: Any) -> Any:
    if isinstance(value, Mapping):
        return Document(value)
    if isinstance(value, list):
        return [_view(item) for item in value]
    return value


def _table(sections: list[tuple[str, list[tuple[Any, Any]]]]) -> str:
    """One two-column table, a heading row per section; every value escaped."""
    cells = []
    for title, rows in sections:
        if rows:
            cells.append(f'<tr><th colspan="2" style="text-align:left">{html.escape(title)}</th></tr>')
            cells.extend(
                f"<tr><td>{html.escape(str(k))}</td><td><code>{html.escape(str(v))}</code></td></tr>"
                for k, v in rows
                if v is not None
            )
    return "<table>" + "".join(cells) + "</table>"
