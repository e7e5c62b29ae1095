"""`tritonflow serve`'s flags: each checked as argparse reads it, so a typo is a one-line usage error.

Their defaults live with what they set (serving/app.py, capture.py, connections.py, limits.py,
probe.py); serving/server.py turns the parsed flags into the node's settings.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tritonflow.lineage.arguments import argument_type, count, positive
from tritonflow.serving.access import API_GROUPS, MODEL_CONTROL_MODES, AccessError, Restriction
from tritonflow.serving.app import DEFAULT_MAX_REQUEST_BYTES, DEFAULT_POLL_INTERVAL
from tritonflow.serving.backends import FOREST_ENGINES
from tritonflow.serving.capture import (
    DEFAULT_FILE_ROWS,
    DEFAULT_QUEUE_ROWS,
    DEFAULT_WINDOW_S,
    INPUTS,
    CaptureError,
    CaptureSettings,
    check_root,
)
from tritonflow.serving.connections import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_KEEP_ALIVE_TIMEOUT,
    DEFAULT_SHUTDOWN_TIMEOUT,
)
from tritonflow.serving.limits import DEFAULT_MAX_INFLIGHT_BYTES
from tritonflow.serving.probe import ProbeLimits
from tritonflow.serving.workers import worker_count

listener_port = argument_type(int, lambda v: 0 <= v <= 65535, "a port number in 0-65535 (0: no listener)")
share = argument_type(float, lambda v: 0 < v <= 1, "a share of requests in (0, 1], such as 0.1")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("repository", help="the model repository: a local folder or s3://bucket/prefix")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument(
        "--http-port",
        "--port",
        type=listener_port,
        default=8000,
        help="HTTP port (KServe v2 / Triton HTTP and /metrics); 0: no HTTP listener (default: %(default)s)",
    )
    parser.add_argument(
        "--grpc-port",
        type=listener_port,
        default=8001,
        help="gRPC port (Triton's GRPCInferenceService); 0: no gRPC listener (default: %(default)s)",
    )
    parser.add_argument(
        "--metrics-port",
        type=listener_port,
        default=8002,
        help="a port that answers only GET /metrics, as Triton's; 0: none (default: %(default)s)",
    )
    parser.add_argument(
        "--model-control-mode",
        choices=MODEL_CONTROL_MODES,
        default="poll",
        help="poll: follow the repository; none: load once at start-up; explicit: load and unload by "
        "repository API requests only (the only mode that accepts them) (default: %(default)s)",
    )
    parser.add_argument(
        "--load-model",
        action="append",
        default=[],
        metavar="NAME",
        help="with --model-control-mode explicit: a model to load at start-up (repeatable; '*': all)",
    )
    parser.add_argument(
        "--poll-interval",
        type=positive,
        default=DEFAULT_POLL_INTERVAL,
        metavar="SECONDS",
        help="how often mode poll looks for new versions and config changes; never: --model-control-mode "
        "none (default: %(default)s)",
    )
    parser.add_argument(
        "--restrict",
        action="append",
        default=[],
        type=_restriction,
        metavar="GROUPS:HEADER=VALUE",
        help="answer API GROUPS (comma-separated: " + ", ".join(API_GROUPS) + ") with 403 unless the "
        "request has HEADER=VALUE, like Triton's --http-restricted-api (repeatable)",
    )
    parser.add_argument(
        "--branch",
        metavar="BRANCH",
        help="serve only the models @deploy published from this @project branch (`prod`: production's, "
        "and those deployed without @project); default: every model",
    )
    parser.add_argument(
        "--strict-readiness",
        type=_boolean,
        default=True,
        metavar="true|false",
        help="ready only while every model meant to serve has a version serving (default: true)",
    )
    parser.add_argument(
        "--probe-memory",
        type=positive,
        default=ProbeLimits().memory_bytes / 2**20,
        metavar="MIB",
        help="a new version is first loaded and run in a child process, killed past this resident "
        "memory: the version is refused, the node keeps serving (default: %(default)g)",
    )
    parser.add_argument(
        "--probe-timeout",
        type=positive,
        default=ProbeLimits().timeout_s,
        metavar="SECONDS",
        help="the child's time to load the version and answer once (default: %(default)g)",
    )
    parser.add_argument(
        "--no-probe",
        dest="probe",
        action="store_false",
        help="load new versions in the serving process directly (faster, not isolated)",
    )
    parser.add_argument(
        "--engine",
        choices=FOREST_ENGINES,
        default="auto",
        help="what runs forest (FIL) models: auto measures at load which of FIL's engine and the "
        "version's batch engine file (XGBoost's predictor or ONNX Runtime) is faster for each batch size; "
        "fil: what Triton's FIL backend runs (nvForest when installed, else Treelite's GTIL); "
        "the others force one engine",
    )
    parser.add_argument(
        "--workers",
        type=worker_count,
        default=1,
        metavar="N|auto",
        help="worker processes sharing the ports, each with its own event loop and its own copy of "
        "every model; auto: one per CPU (default: %(default)s)",
    )
    parser.add_argument(
        "--max-request-bytes",
        type=count,
        default=DEFAULT_MAX_REQUEST_BYTES,
        metavar="N",
        help="larger request bodies are refused with 413 (default: %(default)s)",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        metavar="DIR",
        help="where versions from S3 are downloaded "
        "(default: tritonflow/models under $XDG_CACHE_HOME, else under ~/.cache)",
    )
    _add_connection_arguments(parser)
    _add_capture_arguments(parser)


def _add_capture_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("prediction capture")
    group.add_argument(
        "--capture",
        metavar="ROOT",
        help="keep each answered request's rows (inputs, outputs, stamp, role, latency) as Parquet files "
        "under ROOT, a local folder or s3://bucket/prefix, by model, version and hour",
    )
    group.add_argument(
        "--capture-sample",
        type=share,
        metavar="F",
        help="the share of requests captured, whole requests (default: 1.0)",
    )
    group.add_argument(
        "--capture-inputs",
        choices=INPUTS,
        help="all: inputs too; none: outputs and stamps only (default: all)",
    )
    group.add_argument(
        "--capture-file-rows",
        type=count,
        metavar="N",
        help=f"rows per capture file at most (default: {DEFAULT_FILE_ROWS})",
    )
    group.add_argument(
        "--capture-window-s",
        type=positive,
        metavar="SECONDS",
        help="captured rows are written at least this often; a kill -9 loses at most this long of them "
        f"(default: {DEFAULT_WINDOW_S:g})",
    )
    group.add_argument(
        "--capture-queue-rows",
        type=count,
        metavar="N",
        help="captured rows held before they are written; past it, new rows are dropped and counted "
        f"(tritonflow_capture_dropped_total), the requests answered as ever (default: {DEFAULT_QUEUE_ROWS})",
    )


def capture_settings(args: argparse.Namespace) -> CaptureSettings | None:
    """--capture's settings, its root checked writable; the other --capture-* flags need it."""
    given = {
        "sample": args.capture_sample,
        "inputs": None if args.capture_inputs is None else args.capture_inputs == "all",
        "file_rows": args.capture_file_rows,
        "window_s": args.capture_window_s,
        "queue_rows": args.capture_queue_rows,
    }
    given = {k: v for k, v in given.items() if v is not None}
    if args.capture is None:
        if given:
            flag = "--capture-" + next(iter(given)).replace("_", "-")
            raise CaptureError(f"{flag} needs --capture ROOT: give where to keep the captured requests")
        return None
    check_root(args.capture)
    return CaptureSettings(args.capture, **given)


def _add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connections, limits and TLS")
    group.add_argument(
        "--max-inflight-bytes",
        type=count,
        default=DEFAULT_MAX_INFLIGHT_BYTES,
        metavar="N",
        help="bytes of request bodies held at once, all connections and gRPC messages together; a request "
        "past it gets 503 with Retry-After, its body unread (gRPC: UNAVAILABLE). JSON bodies take about 4x "
        "this in memory at peak (their numbers decoded to Python floats) (default: %(default)s)",
    )
    group.add_argument(
        "--max-connections",
        type=count,
        metavar="N",
        help="connections open at once; one more is answered 503 and closed (default: 4096, or fewer "
        "to fit the open-file limit, whose soft value is raised to the hard one at start-up)",
    )
    group.add_argument(
        "--header-timeout",
        type=positive,
        default=DEFAULT_HEADER_TIMEOUT,
        metavar="SECONDS",
        help="a request's headers must be in this long after its first byte, else 408 (default: %(default)s)",
    )
    group.add_argument(
        "--body-timeout",
        type=positive,
        default=DEFAULT_BODY_TIMEOUT,
        metavar="SECONDS",
        help="a request's whole body must be in this long after its headers, else 408; a client that "
        "stops reading a response for as long is dropped (default: %(default)s)",
    )
    group.add_argument(
        "--keep-alive-timeout",
        type=positive,
        default=DEFAULT_KEEP_ALIVE_TIMEOUT,
        metavar="SECONDS",
        help="a connection with no request begun this long after it opened or after its last response "
        "is closed; behind a load balancer, set it above the balancer's idle timeout (default: %(default)s)",
    )
    group.add_argument(
        "--shutdown-timeout",
        type=positive,
        default=DEFAULT_SHUTDOWN_TIMEOUT,
        metavar="SECONDS",
        help="on SIGTERM/SIGINT, requests in progress get this long to finish before their connections "
        "are cut (default: %(default)s)",
    )
    group.add_argument("--tls-cert", type=Path, metavar="PEM", help="serve HTTPS with this certificate")
    group.add_argument("--tls-key", type=Path, metavar="PEM", help="the private key of --tls-cert")
    group.add_argument("--tls-ca", type=Path, metavar="PEM", help="require client certificates of these CAs")


def _boolean(text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected true or false")
    return text.lower() == "true"


def _restriction(text: str) -> Restriction:
    try:
        return Restriction.parse(text)
    except AccessError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
