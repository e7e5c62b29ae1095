"""@project branches: where a deploy publishes, so that no branch but production changes what
production serves.

Metaflow's `@project(name=...)` puts every run on a branch: `user.<name>` (the default),
`test.<branch>` (`--branch`), `prod` (`--production`) or `prod.<branch>` (both). Only `prod`
publishes to the model name itself; every other branch publishes to `<name>.<branch>`, a model
of its own, with the branch spelled as Metaflow spells it. So `--production --branch x` is a
second production namespace (`<name>.prod.x`) that never replaces `prod`'s model either.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from tritonflow.lineage.errors import TritonflowError
from tritonflow.lineage.ids import check_model_name
from tritonflow.lineage.records import PRODUCTION_BRANCH

# Metaflow's own branch names are [a-z0-9_] with a dot after user/test/prod; a user name
# (`user.<METAFLOW_USER>`) can hold anything, e.g. an e-mail address.
_UNSAFE_RE = re.compile(r"[^A-Za-z0-9_.\-]+")


@dataclass(frozen=True)
class ProjectBranch:
    """The run's @project and branch, and the model name a deploy on it publishes to."""

    project: str
    branch: str
    production: bool
    production_model: str  # the name `prod` publishes to: what production serves
    model: str  # where this branch publishes

    @property
    def touches_production(self) -> bool:
        return self.model == self.production_model

    def to_record(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """One line for the step log: where it published and why."""
        if self.touches_production:
            return f"branch {self.branch} (production): published as {self.model}"
        kind = "a production namespace of its own, " if self.production else ""
        return (
            f"branch {self.branch}: published as {self.model}, {kind}production untouched "
            f"(only branch {PRODUCTION_BRANCH} publishes {self.production_model})"
        )


def branch_model_name(name: str, branch: str) -> str:
    """`name` on `branch`: the name itself on `prod`, else `<name>.<branch>` made name-safe."""
    if branch == PRODUCTION_BRANCH:
        return name
    suffix = re.sub(r"\.{2,}", ".", _UNSAFE_RE.sub("-", branch)).strip(".-")
    if not suffix:
        raise TritonflowError(f"@project branch {branch!r} leaves nothing to name a model with")
    model = f"{name}.{suffix}"
    try:
        return check_model_name(model)
    except TritonflowError as exc:
        raise TritonflowError(
            f"on @project branch {branch!r} the model is published as {model!r}, and {exc}: "
            "pass a shorter @deploy(name=...) or --branch"
        ) from None


def current_branch(name: str) -> ProjectBranch | None:
    """The @project branch of this Metaflow process (set by @project's flow_init, which runs
    before step_init), or None for a flow without @project."""
    from metaflow import current

    # NOTE: set by @project only; not in Metaflow's type stubs
    project = getattr(current, "project_name", None)
    branch = getattr(current, "branch_name", None)
    if not project or not branch:
        return None
    return ProjectBranch(
        project=str(project),
        branch=str(branch),
        production=bool(getattr(current, "is_production", False)),
        production_model=name,
        model=branch_model_name(name, str(branch)),
    )
