"""`tritonflow serve REPOSITORY`: the serving node on uvicorn (uvloop, httptools, no access log).

SIGINT/SIGTERM stop it cleanly: uvicorn stops accepting, lets in-flight requests finish, then
the app unloads its models.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import uvicorn

from tritonflow.lineage.repository import ModelRepository
from tritonflow.serving.app import DEFAULT_MAX_REQUEST_BYTES, DEFAULT_POLL_INTERVAL, Settings, create_app
from tritonflow.serving.backends import FOREST_ENGINES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("repository", help="the model repository: a local folder or s3://bucket/prefix")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port (default: %(default)s)")
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=DEFAULT_POLL_INTERVAL,
        metavar="SECONDS",
        help="how often to look for new versions and config changes; 0: never (default: %(default)s)",
    )
    parser.add_argument(
        "--engine",
        choices=FOREST_ENGINES,
        default="auto",
        help="what runs forest (FIL) models: nvForest, Treelite's GTIL, or auto (nvForest when installed)",
    )
    parser.add_argument(
        "--max-request-bytes",
        type=int,
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


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # NOTE: a mistyped path or bucket is a one-line error here, not a failed uvicorn startup; the
    # root listing is what fails, the app's first scan reads the rest.
    ModelRepository(args.repository).store.list("")
    settings = Settings(
        repository=args.repository,
        engine=args.engine,
        poll_interval=args.poll_interval,
        max_request_bytes=args.max_request_bytes,
        cache_dir=args.cache_dir,
    )
    config = uvicorn.Config(
        create_app(settings),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_config=None,  # our logging setup above: one format for uvicorn's lines and ours
        server_header=False,
    )
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 1
