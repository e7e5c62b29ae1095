"""`tritonflow serve --branch B`: serve only the models @deploy published from @project branch B.

A deploy off Metaflow's production branch publishes to a model of its own (`<name>.<branch>`,
plugin/project.py), so it never replaces what production serves; but a node that serves the
whole repository would load those models too, and one that fails to load would make the node not
ready. A model's branch is what its first version's record says (`metaflow.project.branch`); a
model deployed without @project is production's. Read once per model: every version of a model
comes from the same branch, since the branch is in its name.
"""

from __future__ import annotations

import logging

from tritonflow.lineage.errors import TritonflowError
from tritonflow.lineage.records import PRODUCTION_BRANCH
from tritonflow.lineage.repository import ModelRepository

log = logging.getLogger("tritonflow.serving")


class BranchFilter:
    """Which models a node on one branch serves; decided per model from its first record."""

    def __init__(self, branch: str) -> None:
        self.branch = branch
        self._branches: dict[str, str] = {}  # model -> the branch it was deployed from

    def keeps(self, repository: ModelRepository, name: str, versions: tuple[int, ...]) -> bool:
        """Whether to serve `name`; a model with no published version yet waits for one."""
        if name not in self._branches:
            if not versions:
                return False
            try:
                record = repository.read_record(name, min(versions))
            except TritonflowError as exc:  # NOTE: undecided, asked again at the next poll
                log.warning("--branch %s: cannot tell the branch of %s yet: %s", self.branch, name, exc)
                return False
            project = record.metaflow.get("project") or {}
            self._branches[name] = str(project.get("branch") or PRODUCTION_BRANCH)
            if self._branches[name] != self.branch:
                log.info("not serving %s: deployed from branch %s", name, self._branches[name])
        return self._branches[name] == self.branch
