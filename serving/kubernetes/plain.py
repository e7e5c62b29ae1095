"""Plain Kubernetes, for clusters without KServe: Deployment, Service (8000 HTTP, 8001 gRPC, 8002
metrics), HorizontalPodAutoscaler (autoscaling/v2, on CPU), a Prometheus Operator ServiceMonitor,
and the Prometheus adapter rule that turns the node's queue-time counters into a per-pod metric."""

from __future__ import annotations

from tritonflow.serving.kubernetes.containers import (
    GRACE_SECONDS,
    GRPC,
    HTTP,
    METRICS,
    Manifest,
    cache_volume,
    gpu_toleration,
    triton_container,
    tritonflow_container,
)
from tritonflow.serving.kubernetes.plan import Plan
from tritonflow.serving.kubernetes.yaml_text import dump

CPU_TARGET_PERCENT = 70
SCRAPE_INTERVAL = "15s"
# Both are Triton's cumulative counters, exported with the same names by `tritonflow serve`
# (serving/metrics.py): their rates' quotient is the mean queue time of the last minute's requests.
QUEUE_US, SUCCESS = "nv_inference_queue_duration_us", "nv_inference_request_success"
QUEUE_METRIC = "nv_inference_queue_us_per_request"  # what the adapter serves to the HPA, per pod


def deployment(plan: Plan) -> Manifest:
    pod: Manifest = {"terminationGracePeriodSeconds": GRACE_SECONDS}
    if plan.options.runtime == "triton":
        pod["containers"] = [triton_container(plan)]
    else:
        pod["containers"] = [tritonflow_container(plan, kserve=False)]
        pod["volumes"] = [cache_volume()]
    if plan.options.gpu:
        pod["tolerations"] = [gpu_toleration()]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": plan.metadata(),
        "spec": {
            # NOTE: no `replicas`: the HPA owns the count, and each `kubectl apply` would reset it
            "selector": {"matchLabels": dict(plan.labels)},
            # NOTE: a rollout adds a pod before it removes one: capacity never dips
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {"metadata": {"labels": dict(plan.labels)}, "spec": pod},
        },
    }


def service(plan: Plan) -> Manifest:
    ports = [("http", HTTP), ("grpc", GRPC), ("metrics", METRICS)]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": plan.metadata(),
        "spec": {
            "selector": dict(plan.labels),
            "ports": [{"name": n, "port": p, "targetPort": n, "protocol": "TCP"} for n, p in ports],
        },
    }


def autoscaler(plan: Plan) -> Manifest:
    low, high = plan.options.replicas
    metrics: list[Manifest] = [
        {
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": CPU_TARGET_PERCENT},
            },
        }
    ]
    if plan.options.queue_us is not None:
        metrics.append(
            {
                "type": "Pods",
                "pods": {
                    "metric": {"name": QUEUE_METRIC},
                    "target": {"type": "AverageValue", "averageValue": str(plan.options.queue_us)},
                },
            }
        )
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": plan.metadata(),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": plan.name},
            "minReplicas": low,
            "maxReplicas": high,
            "metrics": metrics,
        },
    }


def service_monitor(plan: Plan) -> Manifest:
    """Scrapes every pod behind the Service on its metrics port; Prometheus adds namespace and pod."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": plan.metadata(),
        "spec": {
            "selector": {"matchLabels": dict(plan.labels)},
            "endpoints": [{"port": "metrics", "path": "/metrics", "interval": SCRAPE_INTERVAL}],
        },
    }


def adapter_rule() -> Manifest:
    """A prometheus-adapter custom-metrics rule: the mean queue time per request (µs) of each pod."""
    matchers = "<<.LabelMatchers>>"
    query = (
        f"sum(rate({QUEUE_US}{{{matchers}}}[1m])) by (<<.GroupBy>>) / "
        f"clamp_min(sum(rate({SUCCESS}{{{matchers}}}[1m])) by (<<.GroupBy>>), 1e-9)"
    )
    return {
        "seriesQuery": f'{QUEUE_US}{{namespace!="",pod!=""}}',
        "resources": {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}},
        "name": {"matches": f"^{QUEUE_US}$", "as": QUEUE_METRIC},
        "metricsQuery": query,
    }


def adapter_config(plan: Plan) -> Manifest:
    """The rule as a ConfigMap: merge its config.yaml's rules into your prometheus-adapter's config."""
    meta = plan.metadata()
    meta["name"] = f"{plan.name}-prometheus-adapter-rules"
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta,
        "data": {"config.yaml": dump([{"rules": [adapter_rule()]}])},
    }


def plain_manifests(plan: Plan) -> dict[str, Manifest]:
    """file name -> manifest."""
    return {
        "deployment.yaml": deployment(plan),
        "service.yaml": service(plan),
        "hpa.yaml": autoscaler(plan),
        "servicemonitor.yaml": service_monitor(plan),
        "prometheus-adapter-rules.yaml": adapter_config(plan),
    }
