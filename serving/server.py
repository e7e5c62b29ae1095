"""`tritonflow serve REPOSITORY`: the serving node on uvicorn (uvloop, httptools, no access log).

Everything that can be checked without loading a model is checked first, each a one-line error with
exit status 2: the flags, the repository (reachable, and a repository rather than a model folder),
TLS, limits, and the port (serving/listeners.py binds it before the models load).

Connections are guarded by serving/connections.py (timeouts, a cap that fits the open-file limit)
and request bodies by serving/limits.py (the in-flight budget); --tls-cert/--tls-key serve HTTPS.
SIGINT/SIGTERM stop it cleanly: uvicorn stops accepting, lets in-flight requests finish (those
still arriving or answered at --shutdown-timeout are cut), the app unloads its models, and the
process exits with status 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import ssl
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import uvicorn

from tritonflow.lineage.arguments import argument_type, count, positive
from tritonflow.lineage.errors import RepositoryError, TritonflowError
from tritonflow.lineage.repository import ModelRepository
from tritonflow.lineage.store.local import LocalStore
from tritonflow.serving.access import API_GROUPS, MODEL_CONTROL_MODES, AccessError, Restriction
from tritonflow.serving.app import (
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_POLL_INTERVAL,
    App,
    Settings,
    create_app,
    default_cache_dir,
)
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
    connection_limits,
    guarded_protocol,
    raise_open_file_limit,
)
from tritonflow.serving.limits import DEFAULT_MAX_INFLIGHT_BYTES
from tritonflow.serving.listeners import hold, listen, url
from tritonflow.serving.mirror import Mirror
from tritonflow.serving.probe import ProbeLimits
from tritonflow.serving.settings import LOG_FORMAT
from tritonflow.serving.workers import worker_count

log = logging.getLogger("tritonflow.serving")

BACKLOG = 2048  # NOTE: uvicorn's default, for every listener
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


def _capture_settings(args: argparse.Namespace) -> CaptureSettings | None:
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


def _check_repository(uri: str, cache_dir: Path) -> None:
    """A mistyped path or bucket, or a model folder given for the repository, is a one-line error
    here, not a failed uvicorn start-up or a node that serves nothing; a folder with no models yet
    is served (a deploy may publish one), with a warning. A remote repository that cannot be read is
    let through when the node has a copy of what it last served (the app says so)."""
    repository = ModelRepository(uri)
    try:
        has_model = repository.check_layout("tritonflow serve {}")
    except RepositoryError:
        if isinstance(repository.store, LocalStore) or Mirror(cache_dir, repository.uri).repository() is None:
            raise
        return
    if not has_model:
        log.warning(
            "%s has no models yet (a model is a folder with config.pbtxt): serving none until a deploy "
            "publishes one",
            uri,
        )


def _tls(cert: Path | None, key: Path | None, ca: Path | None) -> dict[str, Any]:
    """uvicorn's TLS settings; files that cannot be loaded are a one-line error, not a failed start-up."""
    if cert is None and key is None:
        if ca is not None:
            raise TritonflowError("--tls-ca needs --tls-cert and --tls-key: client certificates need TLS")
        return {}
    if cert is None or key is None:
        given, missing = ("--tls-cert", "--tls-key") if key is None else ("--tls-key", "--tls-cert")
        raise TritonflowError(f"{given} needs {missing}: give the certificate and its private key")
    try:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        if ca is not None:
            context.load_verify_locations(ca)
    except (OSError, ssl.SSLError) as exc:
        raise TritonflowError(f"cannot use --tls-cert {cert}, --tls-key {key}, --tls-ca {ca}: {exc}") from exc
    required = {"ssl_ca_certs": str(ca), "ssl_cert_reqs": ssl.CERT_REQUIRED} if ca is not None else {}
    return {"ssl_certfile": str(cert), "ssl_keyfile": str(key), **required}


def _grpc_tls(cert: Path, key: Path, ca: Path | None) -> tuple[bytes, bytes, bytes | None]:
    """gRPC's credentials take the PEM bytes (the files were checked by _tls)."""
    return key.read_bytes(), cert.read_bytes(), ca.read_bytes() if ca is not None else None


class Node(uvicorn.Server):
    """uvicorn's server, minus the signal it re-raises after a graceful shutdown (exit status 143
    on SIGTERM): a node that has drained as the signal asked exits with status 0. Its app's gRPC
    server drains at the same time as HTTP connections do."""

    def __init__(self, config: uvicorn.Config, app: App, metrics_port: int) -> None:
        super().__init__(config)
        self.app = app
        self.metrics_port = metrics_port

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        for sock in sockets or []:  # NOTE: uvicorn logs its address only for sockets it bound itself
            metrics = sock.getsockname()[1] == self.metrics_port
            log.info(
                "%s on %s",
                "metrics (GET /metrics only)" if metrics else "listening",
                url(sock, self.config.is_ssl),
            )

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        grpc_stopped = asyncio.ensure_future(self.app.stop_grpc())
        await super().shutdown(sockets)
        await grpc_stopped

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        handled = (signal.SIGINT, signal.SIGTERM)
        originals = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in originals.items():
                signal.signal(sig, handler)


class _LogHandler(logging.StreamHandler):
    """Log lines to stderr until its reader is gone (`tritonflow serve R 2>&1 | head`), then to
    /dev/null: the node keeps serving. Left on the dead pipe, the lines it could not write would fail
    every later flush of stderr, the one before each probe child starts included (each new version
    refused with BrokenPipeError)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def handleError(self, record: logging.LogRecord) -> None:
        if isinstance(sys.exc_info()[1], BrokenPipeError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), self.stream.fileno())
        else:
            super().handleError(record)


def _boolean(text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected true or false")
    return text.lower() == "true"


def _restriction(text: str) -> Restriction:
    try:
        return Restriction.parse(text)
    except AccessError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def configure_logging(fmt: str = LOG_FORMAT) -> None:
    logging.basicConfig(level=logging.INFO, format=fmt, handlers=[_LogHandler()])


def main(args: argparse.Namespace) -> int:
    configure_logging()
    settings, options = _node(args)
    # NOTE: last checks, so no error leaves a port bound; gRPC binds its port itself, held till then
    http = listen(args.host, args.http_port, BACKLOG) if args.http_port else []
    held = hold(args.host, args.grpc_port, BACKLOG, "--grpc-port") if args.grpc_port else []
    metrics = listen(args.host, args.metrics_port, BACKLOG, "--metrics-port") if args.metrics_port else []
    if args.workers > 1:
        from tritonflow.serving.workers import Supervisor  # NOTE: only nodes with --workers need it

        return Supervisor(args, [*http, *metrics], held).run()
    return run_node(settings, options, [*http, *metrics], held)


def serve_worker(
    args: argparse.Namespace,
    sockets: list[socket.socket],
    held: list[socket.socket],
    index: int,
    run_dir: Path,
) -> int:
    """One worker of `--workers N` (serving/workers.py) on the supervisor's sockets."""
    from tritonflow.serving.peers import Peers, WorkerApp

    settings, options = _node(args)
    return run_node(
        settings, options, sockets, held, lambda app: WorkerApp(app, Peers(app, index, args.workers, run_dir))
    )


def _node(args: argparse.Namespace) -> tuple[Settings, dict[str, Any]]:
    """Every check of the flags and the repository; the app's settings and uvicorn's options."""
    _check_repository(args.repository, args.cache_dir or default_cache_dir())
    if args.load_model and args.model_control_mode != "explicit":
        raise AccessError(
            "--load-model needs --model-control-mode explicit (the other modes load every model)"
        )
    if not args.http_port and not args.grpc_port:
        raise TritonflowError(
            "--http-port 0 and --grpc-port 0 leave no way to reach the node: give either a port"
        )
    tls = _tls(args.tls_cert, args.tls_key, args.tls_ca)
    fd_limit = raise_open_file_limit()
    limits = connection_limits(
        args.max_connections, fd_limit, args.header_timeout, args.body_timeout, args.shutdown_timeout
    )
    log.info("accepting up to %d connections (open-file limit %d)", limits.max_connections, fd_limit)
    settings = Settings(
        repository=args.repository,
        engine=args.engine,
        poll_interval=args.poll_interval,
        model_control=args.model_control_mode,
        load_models=tuple(args.load_model),
        restrictions=tuple(args.restrict),
        strict_readiness=args.strict_readiness,
        probe=ProbeLimits(int(args.probe_memory * 2**20), args.probe_timeout) if args.probe else None,
        max_request_bytes=args.max_request_bytes,
        cache_dir=args.cache_dir,
        max_inflight_bytes=args.max_inflight_bytes,
        metrics_port=args.metrics_port,
        shutdown_timeout=args.shutdown_timeout,
        grpc_tls=_grpc_tls(args.tls_cert, args.tls_key, args.tls_ca) if tls else None,
        capture=_capture_settings(args),
        branch=args.branch,
    )
    options = dict(
        host=args.host,
        port=args.http_port,
        loop="uvloop",
        http=guarded_protocol(limits),
        ws="none",  # NOTE: no WebSocket API, and an upgraded connection would leave the guarded protocol
        timeout_keep_alive=args.keep_alive_timeout,
        # NOTE: the protocol cuts stalled connections at the deadline; a second later, what still runs
        # (their requests unwinding, an engine call) is cancelled
        timeout_graceful_shutdown=args.shutdown_timeout + 1,
        **tls,
        lifespan="on",
        access_log=False,
        log_config=None,  # our logging setup above: one format for uvicorn's lines and ours
        server_header=False,
    )
    return settings, options


def run_node(
    settings: Settings,
    options: dict[str, Any],
    sockets: list[socket.socket],
    held: list[socket.socket],
    wrap: Callable[[App], Any] | None = None,
) -> int:
    """The node on bound sockets until a signal stops it; 1 when it could not start. `wrap`: the ASGI
    app uvicorn runs around the App (a worker's, serving/peers.py)."""
    app = create_app(settings, held)
    server = Node(uvicorn.Config(wrap(app) if wrap else app, **options), app, settings.metrics_port)
    server.run(sockets=sockets)
    return 0 if server.started else 1
