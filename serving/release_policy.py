"""config.pbtxt's side of a release decision: a version_policy that serves exactly the champion.

Stock Triton in poll mode and the node (serving/registry.py) both follow version_policy, so writing
it is what makes a promotion or a rollback take effect; every other field is kept as it was.
"""

from __future__ import annotations

from tritonflow.lineage.errors import TritonflowError
from tritonflow.serving.model_config import ConfigError, check_config, render


def champion_config(text: str, champion: int, where: str = "config.pbtxt") -> str:
    """`text` with `version_policy: { specific: { versions: [champion] } }`. Both texts are checked as
    the node checks a config: a decision never writes one that the node or Triton would refuse."""
    try:
        config = check_config(text, where)
        policy = config.version_policy
        if policy.WhichOneof("policy_choice") == "specific" and list(policy.specific.versions) == [champion]:
            return text  # NOTE: unchanged text, not a re-render: a rewrite is a reload on every node
        config.ClearField("version_policy")
        config.version_policy.specific.versions.append(champion)
        rendered = render(config)
        check_config(rendered, where)
    except ConfigError as exc:
        problems = "; ".join(map(str, exc.problems))
        raise TritonflowError(
            f"{where} is not a valid Triton model config ({problems}): fix it first "
            "(`tritonflow check-config` lists every problem); nothing was changed"
        ) from None
    return rendered
