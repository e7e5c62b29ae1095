"""A fault-injecting HTTP proxy in front of the real S3 server (moto), like toxiproxy: passes every
request through unchanged until told to fail: to be unreachable, or to answer bucket listings with an
empty result (the one-poll glitch a store can have). The node under test talks to it as its endpoint.
"""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

EMPTY_LISTING = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
    "<Name>{bucket}</Name><Prefix>{prefix}</Prefix><KeyCount>0</KeyCount><MaxKeys>1000</MaxKeys>"
    "<Delimiter>/</Delimiter><IsTruncated>false</IsTruncated></ListBucketResult>"
)


class S3Faults:
    """`endpoint` is the proxy's URL. `down = True`: connections are dropped unanswered.
    `empty_listings = n`: the next n listings of folder `prefix` come back empty."""

    def __init__(self, target: str, prefix: str) -> None:
        self.target = urlsplit(target)
        self.prefix = prefix.strip("/") + "/"
        self.down = False
        self.empty_listings = 0
        self.emptied = 0  # listings answered empty so far
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _take_empty(self, path: str, query: str) -> bool:
        params = parse_qs(query)
        if params.get("list-type") != ["2"] or params.get("prefix") != [self.prefix]:
            return False
        with self._lock:
            if self.empty_listings <= 0:
                return False
            self.empty_listings -= 1
            self.emptied += 1
            return True

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        faults = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _proxy(self) -> None:
                if faults.down:
                    self.close_connection = True
                    self.connection.close()
                    return
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if self.command == "GET" and faults._take_empty(url.path, url.query):
                    bucket = url.path.strip("/").split("/")[0]
                    self._answer(200, EMPTY_LISTING.format(bucket=bucket, prefix=faults.prefix).encode())
                    return
                upstream = http.client.HTTPConnection(faults.target.hostname, faults.target.port, timeout=30)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                    headers["Host"] = faults.target.netloc
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                    self.send_response(response.status)
                    for key, value in response.getheaders():
                        if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                            self.send_header(key, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    upstream.close()

            def _answer(self, status: int, data: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _proxy

        return Handler
