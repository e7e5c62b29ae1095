"""What killed deploys leave in a repository, and removing it (`tritonflow gc`).

A publish writes, in order: the claim `<model>/.versions/<n>`, the index entries
`<model>/.tasks/<digest>/<n>` and `<model>/.runs/<digest>/<n>`, config.pbtxt, then the version's
files with deployment.json last (locally staged in `<model>/.staging-<n>-<hex>` and renamed into
place; on S3 object by object). A deploy killed on the way leaves a prefix of that: a claim alone,
index entries of a version that never got its record, a staging folder, a version folder without
deployment.json. A killed `write` or `create` of the local store leaves a temp file
`.<name>.<8 characters>` beside the file it was to become: config.pbtxt or the labels file, an index
entry, a claim in `.versions/`, a release event in `.releases/` (on S3 each is one put: none there).

What is never removed: anything of a version that has a deployment.json; anything of a version
any piece of which is younger than `min_age` (a deploy in progress); the highest claim of a model
(claims are why version numbers are never reused); a version folder without a claim, which
tritonflow did not start (a model copied in by hand); a version that the model's release log names
(promoted, rolled back to, canary or shadow: it was published, so a missing deployment.json is damage
to repair, not a killed deploy); the release events themselves. A model's config.pbtxt stays too: a
model with no versions yet is a valid model.
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from tritonflow.lineage import layout
from tritonflow.lineage.errors import RepositoryError
from tritonflow.lineage.releases import read_state
from tritonflow.lineage.repository import ModelRepository
from tritonflow.lineage.store.base import StoredFile
from tritonflow.lineage.store.local import STAGING, TEMP

# The model-level files a publish writes (a killed write leaves a temp file of one of them).
MODEL_FILES = (layout.CONFIG, layout.LABEL_FILE)
DEFAULT_MIN_AGE = 3600.0  # seconds: a deploy in progress has written its pieces more recently


@dataclass(frozen=True)
class Finding:
    """One leftover (a file, or a folder with everything under it), to remove or kept with why."""

    key: str
    remove: bool
    reason: str
    files: int = 1
    size: int = 0
    # The record whose absence the removal relies on: if it appears before the removal, it is kept.
    unless: str | None = None


@dataclass
class _Version:
    """The pieces of one version number of a model that a walk found."""

    claim: StoredFile | None = None
    index: list[StoredFile] = dataclasses.field(default_factory=list)
    files: list[StoredFile] = dataclasses.field(default_factory=list)  # under <model>/<n>/
    staged: dict[str, list[StoredFile]] = dataclasses.field(default_factory=lambda: defaultdict(list))

    def pieces(self) -> list[StoredFile]:
        return [*([self.claim] if self.claim else []), *self.index, *self.files, *self.all_staged()]

    def all_staged(self) -> list[StoredFile]:
        return [f for files in self.staged.values() for f in files]


def plan(
    repository: ModelRepository, min_age: float = DEFAULT_MIN_AGE, now: float | None = None
) -> list[Finding]:
    """The leftovers of killed deploys in `repository`, in the order `apply` removes them; reads only.

    `now` (seconds since the epoch) defaults to the clock: an age is `now` minus the store's time.
    """
    now = time.time() if now is None else now
    models: dict[str, dict[str, StoredFile]] = defaultdict(dict)
    for f in repository.store.walk(""):
        model, _, rest = f.key.partition("/")
        if rest and not model.startswith("."):  # like ModelRepository.models: hidden folders are not models
            models[model][rest] = f
    return [
        finding
        for model, files in sorted(models.items())
        for finding in _model_findings(model, files, _released(repository, model, files), min_age, now)
    ]


def apply(repository: ModelRepository, findings: Iterable[Finding]) -> list[Finding]:
    """Remove what `findings` marks for removal; return them as they ended.

    Just before each removal the version's record is looked up again: once a publish that was only
    slow has written it, its remaining pieces stay (each such removal turns into a kept finding).
    """
    done = []
    for finding in findings:
        if finding.remove and finding.unless and repository.store.fingerprint(finding.unless) is not None:
            finding = dataclasses.replace(
                finding,
                remove=False,
                reason=f"{finding.unless} appeared during gc: the deploy was still running",
            )
        elif finding.remove:
            repository.store.delete(finding.key)
        done.append(finding)
    return done


def _released(repository: ModelRepository, model: str, files: dict[str, StoredFile]) -> dict[int, str]:
    """Why each version that the model's release log names is kept, by version number.

    A history that does not read stops gc before it removes anything: which versions were released
    cannot be told, and a guess could remove a champion's files.
    """
    events = f"{layout.RELEASES}/"
    if not any(r.startswith(events) and layout.parse_release(r[len(events) :]) for r in files):
        return {}  # NOTE: no read for the many models that never had a release decision
    try:
        state = read_state(repository, model)
    except RepositoryError as exc:
        raise RepositoryError(
            f"cannot tell which versions of {model!r} were released, so gc removes nothing: {exc}"
        ) from None
    kept = {}
    for n in {n for e in state.events for n in (e.version, e.previous, e.canary, e.shadow) if n}:
        role = state.role(n)
        kept[n] = (
            f"{model}:{n} is {f'the {role}' if role else 'in the release history'} of {model} but has "
            f"no {layout.RECORD}: restore it (a released version is never removed)"
        )
    return kept


def _model_findings(
    model: str, files: dict[str, StoredFile], released: dict[int, str], min_age: float, now: float
) -> list[Finding]:
    versions: dict[int, _Version] = defaultdict(_Version)
    temps: list[StoredFile] = []
    for rest, f in files.items():
        parts = rest.split("/")
        first = layout.parse_version(parts[0])
        staged = STAGING.fullmatch(parts[0])
        if first is not None:
            versions[first].files.append(f)
        elif staged and (n := layout.parse_version(staged["target"])) is not None:
            versions[n].staged[parts[0]].append(f)
        elif (
            len(parts) == 2
            and parts[0] == layout.CLAIMS
            and (n := layout.parse_version(parts[1])) is not None
        ):
            versions[n].claim = f
        elif (
            len(parts) == 3
            and parts[0] in (layout.TASKS, layout.RUNS)
            and (n := layout.parse_version(parts[2])) is not None
        ):
            versions[n].index.append(f)
        elif _is_temp(parts):
            temps.append(f)
    claims = [n for n, v in versions.items() if v.claim]
    top = max(claims, default=None)
    findings = [
        finding
        for n, v in sorted(versions.items())
        if f"{n}/{layout.RECORD}" not in files  # NOTE: a published version, claim and index included, stays
        for finding in _version_findings(model, n, v, top, released.get(n, ""), min_age, now)
    ]
    for f in temps:
        young = _young(now - f.modified, min_age)
        reason = young or "temp file of a write that was interrupted"
        findings.append(Finding(f.key, not young, reason, 1, f.size))
    return findings


def _version_findings(
    model: str, n: int, v: _Version, top: int | None, released: str, min_age: float, now: float
) -> list[Finding]:
    """Findings for an unpublished version `n`: folder, staging, index entries, then the claim last,
    so that a gc killed halfway leaves the claim for the next gc to finish with. `released`: why the
    release log keeps it ('' when it does not)."""
    young = released or _young(now - max(f.modified for f in v.pieces()), min_age)
    guard = layout.record_key(model, n)
    out = []
    if v.files:
        key = layout.version_key(model, n)
        if v.claim is None:
            reason = (
                f"no deployment.json and no claim {layout.claim_key(model, n)}: not published by tritonflow"
            )
            out.append(_folder(key, v.files, False, reason, guard))
        else:
            out.append(
                _folder(key, v.files, not young, young or "unfinished publish: no deployment.json", guard)
            )
    for name, staged in sorted(v.staged.items()):
        reason = young or f"staging folder of an unfinished publish of version {n}"
        out.append(_folder(f"{model}/{name}", staged, not young, reason, guard))
    for f in v.index:
        reason = young or f"index entry of version {n}, which has no deployment.json"
        out.append(Finding(f.key, not young, reason, 1, f.size, guard))
    if v.claim is not None:
        if young:
            out.append(Finding(v.claim.key, False, young, 1, v.claim.size))
        elif n == top:
            reason = f"the highest claim of {model}: removing it would let the next deploy reuse version {n}"
            out.append(Finding(v.claim.key, False, reason, 1, v.claim.size))
        else:
            reason = f"claim of version {n}, which was never published"
            out.append(Finding(v.claim.key, True, reason, 1, v.claim.size, guard))
    return out


def _folder(key: str, files: list[StoredFile], remove: bool, reason: str, guard: str) -> Finding:
    return Finding(key, remove, reason, len(files), sum(f.size for f in files), guard)


def _is_temp(parts: list[str]) -> bool:
    """Whether the key below a model (split on '/') is a temp file of `LocalStore.write` or `create`."""
    *folder, name = parts
    match = TEMP.fullmatch(name)
    if match is None:
        return False  # NOTE: a real claim `<n>` or event `<seq>.json` never matches: no leading dot
    target = match["target"]
    if not folder:
        return target in MODEL_FILES
    if folder == [layout.RELEASES]:
        return layout.parse_release(target) is not None
    if folder == [layout.CLAIMS] or (len(folder) == 2 and folder[0] in (layout.TASKS, layout.RUNS)):
        return layout.parse_version(target) is not None
    return False


def _young(age: float, min_age: float) -> str:
    """Why a piece this old is kept, or '' when it is old enough to remove."""
    if age >= min_age:
        return ""
    return f"younger than --min-age ({_duration(age)} < {_duration(min_age)}): may be a deploy in progress"


def _duration(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
