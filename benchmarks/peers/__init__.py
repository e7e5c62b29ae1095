"""The servers users would pick instead of tritonflow's node, each in its own virtual environment.

One module per peer (mlserver.py, kserve.py, bentoml.py, mlflow.py), each of the same shape:
`REQUIREMENTS` (pinned, installed by environment.py) and `contender(...)`, which writes that peer's
model folder from the model file every other contender serves and says how to start it.
contenders.py starts none of them: it makes the environments and checks answers, serving.py times them.
"""

from __future__ import annotations

PEERS = ("mlserver", "kserve", "bentoml", "mlflow")


def parse(spec: str) -> tuple[str, ...]:
    """`--peers`: "all", "none" or a comma-separated list of PEERS."""
    if spec == "all":
        return PEERS
    if spec == "none":
        return ()
    names = tuple(name.strip() for name in spec.split(",") if name.strip())
    unknown = sorted(set(names) - set(PEERS))
    if unknown:
        raise ValueError(
            f"--peers: unknown peer(s) {', '.join(unknown)}; choose from all, none, {','.join(PEERS)}"
        )
    return names
