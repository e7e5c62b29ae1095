"""Where a model's unversioned requests go: its champion, or its canary for a share of them.

The registry builds one Routing at each swap, from the release state and what serves; a request
asks it one question (`pick`): a hash of the request's id at most. The same id always gets the same
version, so a retried request is answered by the version that answered it first; a request without
an id is split at random. With no release state the champion is the highest version serving, as
before releases (and as stock Triton answers unversioned requests).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from hashlib import blake2b

from tritonflow.lineage.releases import ReleaseState
from tritonflow.serving.model_version import ModelVersion
from tritonflow.serving.shadow import Shadow

BUCKETS = 10_000  # a share is followed to the hundredth of a percentage point


@dataclass(frozen=True, slots=True)
class Routing:
    champion: ModelVersion
    canary: ModelVersion | None = None
    threshold: int = 0  # of BUCKETS, those that go to the canary: its percent * 100
    shadow: Shadow | None = None

    def pick(self, request_id: str | None) -> ModelVersion:
        """The version that answers an unversioned request."""
        if self.canary is None:
            return self.champion
        if request_id:
            bucket = int.from_bytes(blake2b(request_id.encode(), digest_size=8).digest(), "big") % BUCKETS
        else:
            bucket = random.randrange(BUCKETS)
        return self.canary if bucket < self.threshold else self.champion

    def role(self, version: int) -> str:
        """'champion', 'canary', 'shadow', or 'challenger' for any other version served."""
        if version == self.champion.version:
            return "champion"
        if self.canary is not None and version == self.canary.version:
            return "canary"
        return "shadow" if self.shadow is not None and version == self.shadow.target.version else "challenger"


def champion_of(serving: dict[int, ModelVersion], state: ReleaseState | None) -> ModelVersion | None:
    """The state's champion when it serves; else the highest version serving that is no canary or
    shadow (no state yet, or the config not yet rewritten: a canary never stands in for it)."""
    if state is not None and state.champion in serving:
        return serving[state.champion]
    others = [v for v in serving if state is None or v not in (state.canary, state.shadow)]
    return serving[max(others)] if others else None


def routing(
    serving: dict[int, ModelVersion], state: ReleaseState | None, shadow: Shadow | None
) -> Routing | None:
    """The routing of what serves under `state` (None: no champion serves); `shadow`: the running one."""
    champion = champion_of(serving, state)
    if champion is None:
        return None
    canary = serving.get(state.canary) if state is not None and state.canary is not None else None
    if canary is None or canary is champion or state is None:
        return Routing(champion, shadow=shadow)
    return Routing(champion, canary, round(state.percent * BUCKETS / 100), shadow)
