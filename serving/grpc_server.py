"""The gRPC server: grpc.aio on the running (uvicorn's) event loop, on the port the node held for it.

serving/listeners.py hold() keeps the port from the bind check until here, so no other process can
take it while the models load; gRPC's own sockets join it (SO_REUSEPORT) and the held ones close.
Requests are held to --max-request-bytes by gRPC itself, which refuses a larger message from its
length prefix (RESOURCE_EXHAUSTED), before buffering any of it: a 300 MB message under Triton's
2 GiB limit took the process to ~1 GB. Responses may be as large as Triton's limit (2 GiB - 1).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence

import grpc

log = logging.getLogger("tritonflow.serving")

GRPC_MESSAGE_LIMIT = 2**31 - 1
TLS = tuple[bytes, bytes, bytes | None]  # PEM key, certificate chain, client CAs (None: no client certs)


async def start(
    handler: grpc.GenericRpcHandler, held: Sequence[socket.socket], tls: TLS | None, max_request_bytes: int
) -> grpc.aio.Server:
    """A started server on the held sockets' addresses, which are closed once gRPC listens there."""
    limits = [
        ("grpc.max_receive_message_length", min(max_request_bytes, GRPC_MESSAGE_LIMIT)),
        ("grpc.max_send_message_length", GRPC_MESSAGE_LIMIT),
    ]
    server = grpc.aio.server(options=limits)
    server.add_generic_rpc_handlers((handler,))
    # NOTE: --tls-cert secures gRPC too, and --tls-ca requires client certificates there as well
    credentials = (
        grpc.ssl_server_credentials(
            [tls[:2]], root_certificates=tls[2], require_client_auth=tls[2] is not None
        )
        if tls is not None
        else None
    )
    for sock in held:
        host, port = sock.getsockname()[:2]
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if credentials is None:
            server.add_insecure_port(address)
        else:
            server.add_secure_port(address, credentials)
        log.info("gRPC listening on %s%s", address, "" if credentials is None else " (TLS)")
    await server.start()
    for sock in held:
        sock.close()  # NOTE: gRPC has the port now; a client that connected to the held socket reconnects
    return server
