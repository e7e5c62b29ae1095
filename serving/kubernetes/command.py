"""`tritonflow kube MODEL --repository s3://...`: manifests that serve the model in a cluster.

Without --out, one multi-document YAML on stdout (`| kubectl apply -f -`); with --out DIR, one file
per object, a kustomization.yaml listing them (`kubectl apply -k DIR`) and, for the tritonflow
runtime, the image's Dockerfile. Notes about what the cluster will and will not do go to stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tritonflow.serving.kubernetes.containers import Manifest, tritonflow_image
from tritonflow.serving.kubernetes.dockerfile import dockerfile
from tritonflow.serving.kubernetes.kserve import kserve_manifests
from tritonflow.serving.kubernetes.plain import plain_manifests
from tritonflow.serving.kubernetes.plan import Options, Plan, make_plan
from tritonflow.serving.kubernetes.yaml_text import dump
from tritonflow.serving.triton_releases import NEWEST_TRITON


def _replicas(text: str) -> tuple[int, int]:
    low, sep, high = text.partition(":")
    try:
        bounds = (int(low), int(high if sep else low))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not MIN:MAX, e.g. 2:10") from None
    if not 1 <= bounds[0] <= bounds[1]:
        raise argparse.ArgumentTypeError(f"{text!r}: need 1 <= MIN <= MAX")
    return bounds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="the model's name in the repository")
    parser.add_argument(
        "--repository", required=True, help="s3://bucket/prefix: the repository the pods read (not a folder)"
    )
    parser.add_argument(
        "--runtime",
        choices=("triton", "tritonflow"),
        default="triton",
        help="NVIDIA Triton (a public image), or `tritonflow serve` (stamps, canary and shadow on the node; "
        "an image built from the written Dockerfile) (default: %(default)s)",
    )
    parser.add_argument(
        "--target",
        choices=("kubernetes", "kserve"),
        default="kubernetes",
        help="plain Deployment, Service, HPA and ServiceMonitor; or a KServe InferenceService "
        "(default: %(default)s)",
    )
    parser.add_argument("--out", metavar="DIR", help="write one file per object here (default: stdout)")
    parser.add_argument("--name", help="the objects' name (default: the model's, as a Kubernetes name)")
    parser.add_argument("--namespace", help="the objects' namespace (default: kubectl's current one)")
    parser.add_argument(
        "--triton-version",
        metavar="YY.MM",
        help=f"the Triton image's release (default: the model's deployed-for release, else {NEWEST_TRITON})",
    )
    parser.add_argument(
        "--replicas",
        type=_replicas,
        default=(1, 3),
        metavar="MIN:MAX",
        help="autoscaling bounds (default: 1:3)",
    )
    parser.add_argument("--cpu", default="1", help="CPU request per pod (default: %(default)s)")
    parser.add_argument(
        "--memory", default="2Gi", help="memory request and limit per pod (default: %(default)s)"
    )
    parser.add_argument("--gpu", action="store_true", help="one nvidia.com/gpu per pod (KIND_GPU models)")
    parser.add_argument("--image", help="the tritonflow runtime's image (default: tritonflow:VERSION[-gpu])")
    parser.add_argument(
        "--secret",
        default="tritonflow-s3",
        help="the Secret with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (and optionally AWS_DEFAULT_REGION, "
        "AWS_SESSION_TOKEN, AWS_ENDPOINT_URL) (default: %(default)s)",
    )
    parser.add_argument(
        "--s3-endpoint", metavar="URL", help="an S3-compatible store's endpoint, as the pods reach it"
    )
    parser.add_argument(
        "--scale-on-queue-us",
        type=int,
        metavar="US",
        help="also scale out when the mean queue time per request passes US microseconds "
        "(needs the written Prometheus adapter rule installed)",
    )


def main(args: argparse.Namespace) -> int:
    plan = make_plan(
        Options(
            model=args.model,
            repository=args.repository,
            runtime=args.runtime,
            target=args.target,
            name=args.name,
            triton_version=args.triton_version,
            replicas=args.replicas,
            cpu=args.cpu,
            memory=args.memory,
            gpu=args.gpu,
            namespace=args.namespace,
            image=args.image,
            secret=args.secret,
            s3_endpoint=args.s3_endpoint,
            queue_us=args.scale_on_queue_us,
        )
    )
    manifests = manifests_of(plan)
    for note in notes(plan):
        print(f"note: {note}", file=sys.stderr)
    if args.out is None:
        sys.stdout.write(dump(list(manifests.values())))
        return 0
    written = write(plan, manifests, Path(args.out))
    print(f"wrote {', '.join(written)} in {args.out}")
    for step in next_steps(plan, args.out):
        print(f"  {step}")
    return 0


def manifests_of(plan: Plan) -> dict[str, Manifest]:
    """file name -> manifest, for the chosen target."""
    return kserve_manifests(plan) if plan.options.target == "kserve" else plain_manifests(plan)


def write(plan: Plan, manifests: dict[str, Manifest], out: Path) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    files = {name: dump([manifest]) for name, manifest in manifests.items()}
    files["kustomization.yaml"] = dump(
        [
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": list(manifests),
            }
        ]
    )
    if plan.options.runtime == "tritonflow":
        files["Dockerfile"] = dockerfile(plan, tritonflow_image(plan))
    for name, text in files.items():
        (out / name).write_text(text)
    return list(files)


def notes(plan: Plan) -> list[str]:
    """What a reader of the manifests would otherwise learn from the cluster."""
    found = []
    kserve, triton = plan.options.target == "kserve", plan.options.runtime == "triton"
    if plan.canary is not None and triton and not kserve:
        found.append(
            f"stock Triton serves only the champion: canary v{plan.canary} ({plan.percent:g}%) needs "
            "--target kserve or --runtime tritonflow"
        )
    if plan.canary is not None and triton and kserve:
        found.append(
            f"canaryTrafficPercent {plan.canary_percent}: this revision serves canary v{plan.canary}; "
            "KServe's last rolled-out revision serves the rest (KServe's Serverless mode only)"
        )
    if plan.canary_percent is not None and triton and kserve and plan.canary_percent != plan.percent:
        found.append(f"KServe takes whole percents: {plan.percent:g}% became {plan.canary_percent}%")
    if plan.kind == "gpu" and not plan.options.gpu:
        found.append("config.pbtxt asks for KIND_GPU: without --gpu, `tritonflow serve` runs it on the CPU")
    return found


def next_steps(plan: Plan, out: str) -> list[str]:
    steps = [
        f"kubectl create secret generic {plan.options.secret} --from-literal=AWS_ACCESS_KEY_ID=... "
        "--from-literal=AWS_SECRET_ACCESS_KEY=...",
        f"kubectl apply -k {out}",
    ]
    if plan.options.runtime == "tritonflow":
        steps.insert(
            0, f"docker build -t {tritonflow_image(plan)} {out}  (and push it where the cluster pulls)"
        )
    if plan.options.target == "kserve" and plan.options.runtime == "triton":
        steps.append("after each promote or canary: run this command again and apply (a new KServe revision)")
    return steps
