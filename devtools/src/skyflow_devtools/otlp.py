"""A local OTLP/HTTP endpoint for benchmarks and tests: it answers every export with 200."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class OTLPSink:
    """Where exporters send (``endpoint``, e.g. for ``OTEL_EXPORTER_OTLP_ENDPOINT``) and, when
    kept, what they sent: ``(path, body)`` per export, in arrival order."""

    endpoint: str
    payloads: list[tuple[str, bytes]] = field(default_factory=list)


@contextmanager
def otlp_sink(*, keep: bool = False) -> Iterator[OTLPSink]:
    """An OTLP/HTTP endpoint on 127.0.0.1 for as long as the block runs.

    Every POST gets 200 with an empty protobuf body (a valid empty export response). With
    ``keep`` the bodies are kept for the caller to decode; without, they are read and dropped,
    as a benchmark wants.
    """
    payloads: list[tuple[str, bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        # Keep-alive, as a collector: an exporter then pays for a connection once, not per
        # export (HTTP/1.0, the default here, would close after each reply).
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if keep:
                payloads.append((self.path, body))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            """Quiet."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield OTLPSink(f"http://127.0.0.1:{server.server_address[1]}", payloads)
    finally:
        server.shutdown()
        server.server_close()
