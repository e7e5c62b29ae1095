"""KServe (serving.kserve.io/v1beta1): an InferenceService for the model, on KServe's Triton runtime
or as a custom `tritonflow serve` predictor container.

Triton: `storageUri` is the repository, copied into the pod by KServe's storage initializer with the
ServiceAccount's S3 Secret; a canary in the release state becomes KServe's canary rollout
(`canaryTrafficPercent`, Serverless mode), the new revision serving the canary, the last rolled-out
one the champion. tritonflow: the node reads S3 and splits canary traffic itself (by request id, with
its stamp), so the InferenceService carries no canaryTrafficPercent: KServe splitting too would
send the canary a share of a share.
"""

from __future__ import annotations

from tritonflow.serving.kubernetes.containers import (
    METRICS,
    Manifest,
    cache_volume,
    gpu_toleration,
    triton_kserve,
    tritonflow_container,
)
from tritonflow.serving.kubernetes.plan import Plan


def service_account_name(plan: Plan) -> str:
    return f"{plan.name}-s3"


def inference_service(plan: Plan) -> Manifest:
    predictor: Manifest = {"minReplicas": plan.options.replicas[0], "maxReplicas": plan.options.replicas[1]}
    if plan.options.runtime == "triton":
        predictor["serviceAccountName"] = service_account_name(plan)
        predictor["model"] = triton_kserve(plan)
        if plan.canary_percent is not None:
            predictor["canaryTrafficPercent"] = plan.canary_percent
    else:
        predictor["containers"] = [tritonflow_container(plan, kserve=True)]
        predictor["volumes"] = [cache_volume()]
    if plan.options.gpu:
        predictor["tolerations"] = [gpu_toleration()]
    meta = plan.metadata()
    meta["annotations"].update(
        {
            # KServe's own switch and where to scrape (its Triton runtime says the same)
            "serving.kserve.io/enable-prometheus-scraping": "true",
            "prometheus.kserve.io/port": str(METRICS),
            "prometheus.kserve.io/path": "/metrics",
        }
    )
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": meta,
        "spec": {"predictor": predictor},
    }


def service_account(plan: Plan) -> Manifest:
    """The storage initializer's credentials: KServe reads the S3 Secret through the ServiceAccount
    (annotate the Secret with serving.kserve.io/s3-endpoint for an S3-compatible store)."""
    meta = plan.metadata()
    meta["name"] = service_account_name(plan)
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": meta,
        "secrets": [{"name": plan.options.secret}],
    }


def kserve_manifests(plan: Plan) -> dict[str, Manifest]:
    """file name -> manifest."""
    manifests = {"inferenceservice.yaml": inference_service(plan)}
    if plan.options.runtime == "triton":
        manifests["serviceaccount.yaml"] = service_account(plan)
    return manifests
