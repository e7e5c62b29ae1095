"""The release state of a model: which published version is champion, and the history of decisions.

The state is an append-only log of events in the repository beside the model,
`<model>/.releases/<seq:08d>.json`, each written create-if-absent (a hard link of a complete temp
file locally, If-None-Match on S3). Two promotions at once race for the same sequence number: one
wins, the other re-reads and fails with a conflict naming the winner; no event is ever half-written
or overwritten. The current state is the fold of the events. config.pbtxt carries the effect
(`version_policy: specific`), so stock Triton obeys the champion too; the event is written first
(the decision), then the config (its effect), and every later command rewrites the config from the
state, repairing a crash between.

Each event carries the whole state after it (champion, canary and its share, shadow), so the
state is the last event, except that a rollback pops the champions' stack. Only the champion
goes into config.pbtxt: stock Triton sends unversioned requests to the highest version it
serves, so a canary there would take all of them; canary and shadow are followed by
`tritonflow serve`, which reads this log.
"""

from __future__ import annotations

import getpass
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any, Literal

from tritonflow.lineage import layout
from tritonflow.lineage.errors import NotFound, RepositoryError, TritonflowError
from tritonflow.lineage.ids import check_model_name
from tritonflow.lineage.records import utc_now
from tritonflow.lineage.repository import ModelRepository

SCHEMA = "tritonflow.release/v1"
Kind = Literal["promote", "rollback", "canary", "shadow"]
KINDS = ("promote", "rollback", "canary", "shadow")
# (config.pbtxt text, champion, *, pins=, also=) -> the text serving exactly the champion (and `also`),
# an ensemble's steps pinned to `pins`: serving/release_policy.py's champion_config, passed in because
# lineage never imports serving
ConfigPolicy = Callable[..., str]


_DONE = {
    "promote": "promoted",
    "rollback": "rolled back",
    "canary": "set its canary",
    "shadow": "set its shadow",
}
_KEEP: Any = object()  # a keyword's default meaning "as it is now"


class ReleaseError(TritonflowError):
    """A release decision that cannot be made as asked; nothing was written."""


class ReleaseConflict(ReleaseError):
    """Another command changed the model's release state between our read and our write."""


@dataclass(frozen=True)
class ReleaseEvent:
    seq: int
    kind: Kind
    version: int  # the champion after this event
    previous: int | None  # the champion before it (None: the first decision)
    who: str
    when: str  # ISO 8601 UTC, as records.utc_now writes it
    reason: str
    evaluation: dict[str, Any] | None = None  # the scores that justified it, when there are any
    canary: int | None = None  # the canary after this event (None: no canary)
    percent: float = 0.0  # the canary's share of unversioned requests, 0-100
    shadow: int | None = None  # the shadow after this event (None: no shadow)
    schema: str = SCHEMA

    def to_json(self) -> bytes:
        return (json.dumps(asdict(self), indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> ReleaseEvent:
        try:
            data = json.loads(raw)
            event = cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})
        except (ValueError, TypeError) as exc:
            raise RepositoryError(f"{where} is not a release event: {exc}") from None
        valid = (
            event.kind in KINDS
            and _is_version(event.version)
            and all(v is None or _is_version(v) for v in (event.previous, event.canary, event.shadow))
            and isinstance(event.percent, (int, float))
            and 0 <= event.percent <= 100
        )
        if not valid:
            raise RepositoryError(
                f"{where} is not a release event: bad kind, version, previous, canary, percent or shadow"
            )
        return event

    def describe(self) -> str:
        """'v4 was promoted by alice at 2026-12-02T06:00:00.000Z ("beats v3")'."""
        return f"{self.change()} by {self.who} at {self.when}" + (
            f" ({self.reason!r})" if self.reason else ""
        )

    def change(self) -> str:
        """What the event did, in words: 'v5 became canary for 10% of unversioned requests'."""
        if self.kind == "promote":
            return f"v{self.version} was promoted"
        if self.kind == "rollback":
            return f"v{self.previous} was rolled back to v{self.version}"
        if self.kind == "canary":
            if self.canary is None:
                return "the canary was stopped"
            return f"v{self.canary} became canary for {self.percent:g}% of unversioned requests"
        return "the shadow was stopped" if self.shadow is None else f"v{self.shadow} became shadow"


@dataclass(frozen=True)
class ReleaseState:
    model: str
    events: list[ReleaseEvent] = field(default_factory=list)

    @property
    def champions(self) -> list[int]:
        """The champions in the order they took over, the current one last: a promotion pushes, a
        rollback pops (so rolling back twice goes two decisions back, not back and forth)."""
        stack: list[int] = []
        for event in self.events:
            if event.kind == "rollback" and len(stack) > 1 and stack[-2] == event.version:
                stack.pop()
            elif not stack or stack[-1] != event.version:
                stack.append(event.version)
        return stack

    @property
    def champion(self) -> int | None:
        return self.events[-1].version if self.events else None

    @property
    def canary(self) -> int | None:
        return self.events[-1].canary if self.events else None

    @property
    def percent(self) -> float:
        """The canary's share of unversioned requests (0 without a canary)."""
        return self.events[-1].percent if self.events and self.events[-1].canary is not None else 0.0

    @property
    def shadow(self) -> int | None:
        return self.events[-1].shadow if self.events else None

    def role(self, version: int) -> str | None:
        """'champion', 'canary' or 'shadow'; None for any other version."""
        if version == self.champion:
            return "champion"
        if version == self.canary:
            return "canary"
        return "shadow" if version == self.shadow else None

    def history(self, version: int) -> list[ReleaseEvent]:
        """The events that changed what `version` does (its role, or its canary share)."""
        changed, before = [], ReleaseState(self.model)
        for event in self.events:
            after = ReleaseState(self.model, [*before.events, event])
            was, now = before.role(version), after.role(version)
            if was != now or (now == "canary" and before.percent != after.percent):
                changed.append(event)
            before = after
        return changed

    @property
    def next_seq(self) -> int:
        return self.events[-1].seq + 1 if self.events else 1


def who() -> str:
    """The user a decision is recorded for: METAFLOW_USER (as Metaflow records runs), else the login."""
    try:
        return os.environ.get("METAFLOW_USER") or getpass.getuser()
    except (KeyError, OSError):  # NOTE: getpass fails in containers with no passwd entry and no $USER
        return "unknown"


def read_state(repository: ModelRepository, model: str) -> ReleaseState:
    """The model's events in order; a gap or a file that is no event is a RepositoryError."""
    check_model_name(model)
    repository.read_config(model)  # NOTE: a mistyped model says so, rather than "no decisions yet"
    prefix = layout.releases_prefix(model)
    seqs = sorted(s for name in repository.store.list(prefix) if (s := layout.parse_release(name)))
    events = []
    for expected, seq in enumerate(seqs, start=1):
        key = layout.release_key(model, seq)
        where = f"{repository.uri}/{key}"
        event = ReleaseEvent.from_json(repository.store.read(key), where)
        if seq != expected or event.seq != seq:
            raise RepositoryError(
                f"{where} breaks the release history of {model!r} (expected event {expected}): "
                "restore the missing or renamed event files, or remove the .releases folder to start over"
            )
        events.append(event)
    return ReleaseState(model, events)


def promote(
    repository: ModelRepository,
    model: str,
    version: int,
    policy: ConfigPolicy,
    *,
    reason: str = "",
    evaluation: dict[str, Any] | None = None,
    replacing: Any = _KEEP,
) -> tuple[ReleaseState, ReleaseEvent | None]:
    """Make `version` the champion (a canary or shadow of it ends). None as the event: it already was
    (the config is repaired). `replacing`: the champion the decision was made against (None: no
    champion); another one now is a ReleaseConflict, as is a race lost. An empty log was empty when
    the decision was made (it is append-only), so a champion then could only come from `latest 1`,
    which nobody has replaced."""
    state = read_state(repository, model)
    check_published(repository, model, version, "champion")
    if replacing is not _KEEP and state.events and state.champion != replacing and state.champion != version:
        raise ReleaseConflict(
            f"model {model!r} changed since the decision to promote v{version} over "
            f"{_name(replacing)}: {state.events[-1].describe()}; nothing was written"
        )
    if state.champion == version:
        apply_state(repository, state, policy)
        return state, None
    return _append(repository, state, "promote", version, policy, reason, evaluation)


def rollback(
    repository: ModelRepository, model: str, policy: ConfigPolicy, *, reason: str = ""
) -> tuple[ReleaseState, ReleaseEvent]:
    """Make the champion before the current one champion again."""
    state = read_state(repository, model)
    champions = state.champions
    if len(champions) < 2:
        now = f"v{champions[-1]} is the first champion" if champions else "no version was promoted yet"
        raise ReleaseError(
            f"{model!r} has no previous champion to roll back to ({now}): "
            f"promote a version instead (`tritonflow promote {repository.given} {model}:VERSION "
            "--reason ...`)"
        )
    target = champions[-2]
    check_published(repository, model, target, "champion")
    return _append(repository, state, "rollback", target, policy, reason, None)


def set_canary(
    repository: ModelRepository,
    model: str,
    version: int | None,
    percent: float,
    policy: ConfigPolicy,
    *,
    reason: str = "",
) -> tuple[ReleaseState, ReleaseEvent]:
    """Send `percent` of unversioned requests to `version` (None: stop the canary)."""
    state = read_state(repository, model)
    if not isinstance(percent, (int, float)) or not 0 <= percent <= 100:
        raise ReleaseError(f"a canary share is a percentage from 0 to 100, not {percent!r}")
    if version is None:
        if state.canary is None:
            raise ReleaseError(f"{model!r} has no canary to stop")
        return _append(repository, state, "canary", state.champion, policy, reason, None, canary=None)
    _check_role(repository, state, version, "canary")
    return _append(
        repository, state, "canary", state.champion, policy, reason, None, canary=version, percent=percent
    )


def set_shadow(
    repository: ModelRepository,
    model: str,
    version: int | None,
    policy: ConfigPolicy,
    *,
    reason: str = "",
) -> tuple[ReleaseState, ReleaseEvent]:
    """Run a copy of unversioned requests on `version`, off the response path (None: stop)."""
    state = read_state(repository, model)
    if version is None:
        if state.shadow is None:
            raise ReleaseError(f"{model!r} has no shadow to stop")
        return _append(repository, state, "shadow", state.champion, policy, reason, None, shadow=None)
    _check_role(repository, state, version, "shadow")
    return _append(repository, state, "shadow", state.champion, policy, reason, None, shadow=version)


def apply_state(repository: ModelRepository, state: ReleaseState, policy: ConfigPolicy) -> bool:
    """Rewrite config.pbtxt so that it serves exactly the champion; True when it changed.

    An ensemble moves with its steps: each step model first serves the versions pinned by the
    ensemble's champion, the champion before it, canary and shadow (so the node can swap either
    way without a gap), then the ensemble's config pins its steps to the champion's."""
    if state.champion is None:
        return False
    pins = step_pins(repository, state.model, state.champion)
    if pins:
        kept = [state.champion, *state.champions[-2:-1], state.canary, state.shadow]
        pinned = [
            step_pins(repository, state.model, v) for v in dict.fromkeys(v for v in kept if v is not None)
        ]
        for step, version in pins.items():
            also = {p[step] for p in pinned if step in p}
            _rewrite(repository, step, partial(policy, champion=version, also=also))
    return _rewrite(repository, state.model, partial(policy, champion=state.champion, pins=pins))


def step_pins(repository: ModelRepository, model: str, version: int) -> dict[str, int]:
    """The step versions an ensemble version pins ({} for other models and versions without a record)."""
    try:
        return repository.read_record(model, version).pins
    except NotFound:
        return {}


def _rewrite(repository: ModelRepository, model: str, change: Callable[[str], str]) -> bool:
    text = repository.read_config(model)
    wanted = change(text)
    if wanted == text:
        return False
    repository.store.write(layout.config_key(model), wanted.encode())
    return True


def _append(
    repository: ModelRepository,
    state: ReleaseState,
    kind: Kind,
    version: int | None,
    policy: ConfigPolicy,
    reason: str,
    evaluation: dict[str, Any] | None,
    *,
    canary: Any = _KEEP,
    percent: float | None = None,
    shadow: Any = _KEEP,
) -> tuple[ReleaseState, ReleaseEvent]:
    """Write the next event (or lose the race for its number: a conflict), then the config. The canary
    and shadow stay unless given, and end when they become champion."""
    if version is None:
        raise ReleaseError(
            f"{state.model!r} has no champion yet: promote a version first (`tritonflow promote "
            f"{repository.given} {state.model}:VERSION --reason ...`)"
        )
    current = repository.read_config(state.model)
    policy(current, version)  # NOTE: a config that cannot serve the version refuses before the event
    canary = state.canary if canary is _KEEP else canary
    shadow = state.shadow if shadow is _KEEP else shadow
    percent = state.percent if percent is None else float(percent)
    if canary == version:
        canary = None
    if shadow == version:
        shadow = None
    event = ReleaseEvent(
        state.next_seq,
        kind,
        version,
        state.champion,
        who(),
        utc_now(),
        reason,
        evaluation,
        canary=canary,
        percent=percent if canary is not None else 0.0,
        shadow=shadow,
    )
    if not repository.store.create(layout.release_key(state.model, event.seq), event.to_json()):
        winner = read_state(repository, state.model).events[event.seq - 1]
        raise ReleaseConflict(
            f"model {state.model!r} changed while you {_DONE[kind]}: {winner.describe()}; "
            "nothing of yours was written: run the command again"
        )
    new_state = ReleaseState(state.model, [*state.events, event])
    apply_state(repository, new_state, policy)
    return new_state, event


def _check_role(repository: ModelRepository, state: ReleaseState, version: int, role: str) -> None:
    """A canary or shadow is a published version beside a champion, other than the champion."""
    if state.champion is None:
        raise ReleaseError(
            f"{state.model!r} has no champion yet, so no {role} beside it: promote a version first "
            f"(`tritonflow promote {repository.given} {state.model}:VERSION --reason ...`)"
        )
    if version == state.champion:
        raise ReleaseError(f"{state.model}:{version} is the champion: a {role} is another version")
    check_published(repository, state.model, version, role)


def check_published(repository: ModelRepository, model: str, version: int, role: str) -> None:
    """Refuse a version without a readable deployment record (unpublished, unfinished, damaged)."""
    if version in repository.version_numbers(model) and version not in repository.versions(model):
        raise ReleaseError(
            f"cannot make {model}:{version} {role}: it is not published (its folder has no "
            f"{layout.RECORD}: a deploy still under way or killed); published: {repository.versions(model)}"
        )
    try:
        repository.read_record(model, version)
    except NotFound as exc:
        raise ReleaseError(f"cannot make {model}:{version} {role}: {exc}") from None
    except RepositoryError as exc:
        raise ReleaseError(f"cannot make {model}:{version} {role}, its record does not read: {exc}") from None


def _name(version: int | None) -> str:
    return f"v{version}" if version is not None else "no champion"


def _is_version(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
