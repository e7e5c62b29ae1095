"""The Dockerfile of the `tritonflow serve` image the tritonflow runtime's manifests run.

CPU (the default): python:3.11-slim and the base install (forests on Treelite's GTIL, ONNX Runtime),
a small image. --gpu: a CUDA base image and `tritonflow[gpu]` (nvForest; ~3.4 GB of CUDA wheels),
which runs KIND_GPU models on the pod's GPU. A wheel beside the Dockerfile is installed in preference
to the package index (`pip wheel --no-deps -w DIR <checkout>`), so an unreleased build works too.
"""

from __future__ import annotations

from tritonflow import __version__
from tritonflow.serving.kubernetes.containers import GRPC, HTTP, METRICS
from tritonflow.serving.kubernetes.plan import Plan

CPU_BASE = "python:3.11-slim"
GPU_BASE = "nvidia/cuda:12.8.1-base-ubuntu24.04"  # the CUDA libraries come with nvForest's wheels
USER_ID = 10001

_GPU_PYTHON = """\
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \\
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/tritonflow
ENV PATH=/opt/tritonflow/bin:$PATH
"""


def dockerfile(plan: Plan, image: str) -> str:
    gpu = plan.options.gpu
    package = f"tritonflow{'[gpu]' if gpu else ''}=={__version__}"
    return f"""\
# `tritonflow serve` for Kubernetes ({"GPU: nvForest" if gpu else "CPU"}), written by `tritonflow kube`.
# Build beside this file:  docker build -t {image} .
# (a tritonflow-*.whl here is installed in preference to the package index)
FROM {GPU_BASE if gpu else CPU_BASE}
{_GPU_PYTHON if gpu else ""}\
# NOTE: Dockerfile always matches, so the COPY works with no wheel here
COPY Dockerfile *.whl /tmp/wheels/
RUN pip install --no-cache-dir --find-links /tmp/wheels "{package}" && rm -rf /tmp/wheels
RUN useradd --uid {USER_ID} --create-home tritonflow
USER {USER_ID}
EXPOSE {HTTP} {GRPC} {METRICS}
ENTRYPOINT ["tritonflow"]
CMD ["serve", "--help"]
"""
