"""`tritonflow serve REPOSITORY`: the serving node on uvicorn (uvloop, httptools, no access log).

Everything that can be checked without loading a model is checked first, each a one-line error with
exit status 2: the flags (as parsed: serving/serve_flags.py), the repository (reachable, and a
repository rather than a model folder), TLS, limits, and the port (serving/listeners.py binds it
before the models load).

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

from tritonflow.lineage.errors import RepositoryError, TritonflowError
from tritonflow.lineage.repository import ModelRepository
from tritonflow.lineage.store.local import LocalStore
from tritonflow.serving.access import AccessError
from tritonflow.serving.app import App, Settings, create_app, default_cache_dir
from tritonflow.serving.connections import connection_limits, guarded_protocol, raise_open_file_limit
from tritonflow.serving.listeners import hold, listen, url
from tritonflow.serving.mirror import Mirror
from tritonflow.serving.probe import ProbeLimits
from tritonflow.serving.serve_flags import add_arguments, capture_settings
from tritonflow.serving.settings import LOG_FORMAT

__all__ = ["add_arguments", "configure_logging", "main", "run_node", "serve_worker"]  # tritonflow/cli.py

log = logging.getLogger("tritonflow.serving")

BACKLOG = 2048  # NOTE: uvicorn's default, for every listener


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
        capture=capture_settings(args),
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
