"""The node's listening sockets, bound before any model loads and handed to uvicorn.

A busy port, a privileged one or a --host that is not this machine's is a one-line error at once,
not after every model has loaded; and as the sockets listen from then on, no other process can
take the port between this check and the start. Clients that connect while the models load wait
in the kernel's queue and are answered once the node has started.
"""

from __future__ import annotations

import errno
import socket

from tritonflow.lineage.errors import TritonflowError


def listen(
    host: str, port: int, backlog: int, flag: str = "--port", reuse_port: bool = False
) -> list[socket.socket]:
    """Listening sockets on every address `host` resolves to (IPv4 and IPv6 for 'localhost');
    port 0: one free port, the same on each address. `reuse_port`: for hold()."""
    try:
        # NOTE: no host (""): every interface, as uvicorn and asyncio take it
        found = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise TritonflowError(
            f"cannot listen on --host {host}: {exc.strerror}: give an address of this machine "
            "(127.0.0.1: this machine only, 0.0.0.0: every interface) or a name that resolves to one"
        ) from None
    # NOTE: getaddrinfo repeats an address once per protocol it knows for the socket type
    addresses = list(dict.fromkeys((family, address) for family, _, _, _, address in found))
    sockets: list[socket.socket] = []
    try:
        for family, address in addresses:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            # NOTE: a restarted node must not wait for the last one's connections in TIME_WAIT
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:  # NOTE: as asyncio does: '::' and '0.0.0.0' are separate
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(sockets) > 1:
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            try:
                sock.bind(address)
            except OSError as exc:
                raise _refusal(exc, str(address[0]), port, flag) from None
            sock.listen(backlog)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def hold(host: str, port: int, backlog: int, flag: str) -> list[socket.socket]:
    """Sockets that hold a port for a server that binds it itself later (gRPC, whose sockets set
    SO_REUSEPORT): a port no socket has, not even one that allows SO_REUSEPORT (another node's gRPC)."""
    probe = listen(host, port, backlog, flag)
    port = probe[0].getsockname()[1]
    for sock in probe:
        sock.close()
    return listen(host, port, backlog, flag, reuse_port=True)


def url(sock: socket.socket, tls: bool) -> str:
    """What clients use to reach a listening socket: http(s)://host:port, brackets around IPv6."""
    host, port = sock.getsockname()[:2]
    return f"{'https' if tls else 'http'}://{f'[{host}]' if ':' in host else host}:{port}"


def _refusal(exc: OSError, host: str, port: int, flag: str) -> TritonflowError:
    if exc.errno == errno.EADDRINUSE:
        return TritonflowError(f"port {port} on {host} is in use: stop the other server or pass {flag} N")
    if exc.errno == errno.EACCES:
        return TritonflowError(
            f"port {port} on {host} needs privileges (ports below 1024 do): pass {flag} N above 1023"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return TritonflowError(
            f"{host} is not an address of this machine: pass --host 127.0.0.1 (this machine only), "
            "0.0.0.0 (every interface) or one of its own addresses"
        )
    return TritonflowError(f"cannot listen on {host} port {port}: {exc.strerror}")
