"""config.pbtxt's side of a release decision: a version_policy that serves exactly the champion.

Stock Triton in poll mode and the node (serving/registry.py) both follow version_policy, so writing
it is what makes a promotion or a rollback take effect; every other field is kept as it was. An
ensemble's config also pins each step to the version its champion was exported with (Triton reads
one `model_version` per step for all of the ensemble's versions), and each step model serves the
versions the ensemble's roles pin (`also`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from tritonflow.lineage.errors import TritonflowError
from tritonflow.serving.model_config import ConfigError, check_config, render


def champion_config(
    text: str,
    champion: int,
    where: str = "config.pbtxt",
    *,
    pins: Mapping[str, int] | None = None,
    also: Iterable[int] = (),
) -> str:
    """`text` with `version_policy: { specific: { versions: [champion, *also] } }` and, for an
    ensemble, its steps' `model_version` set from `pins` (step model -> version). Both texts are
    checked as the node checks a config: a decision never writes one that the node or Triton would refuse."""
    versions, pins = sorted({champion, *also}), pins or {}
    try:
        config = check_config(text, where)
        policy = config.version_policy
        steps = config.ensemble_scheduling.step
        pinned = all(s.model_version == pins.get(s.model_name, s.model_version) for s in steps)
        specific = policy.WhichOneof("policy_choice") == "specific"
        if specific and list(policy.specific.versions) == versions and pinned:
            return text  # NOTE: unchanged text, not a re-render: a rewrite is a reload on every node
        config.ClearField("version_policy")
        config.version_policy.specific.versions.extend(versions)
        for step in steps:
            step.model_version = pins.get(step.model_name, step.model_version)
        rendered = render(config)
        check_config(rendered, where)
    except ConfigError as exc:
        problems = "; ".join(map(str, exc.problems))
        raise TritonflowError(
            f"{where} is not a valid Triton model config ({problems}): fix it first "
            "(`tritonflow check-config` lists every problem); nothing was changed"
        ) from None
    return rendered
