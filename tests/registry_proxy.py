"""A fault-injecting HTTP proxy in front of the real test registry (stdlib only, loopback only).

Requests are forwarded unchanged (the Host header too, so the registry's Location headers point
back at the proxy); a fault rule can hold a request instead, bounded in time, so that a test can
interrupt a client while its push is in flight.
"""

from __future__ import annotations

import http.client
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"}
MAX_HOLD_SECONDS = 60.0


@dataclass
class Faults:
    """What the proxy does to matching requests; changed by the test while it runs."""

    hold: re.Pattern[str] | None = None  # "METHOD path" held until released (or 60 s, then 503)
    released: threading.Event = field(default_factory=threading.Event)
    held: threading.Event = field(default_factory=threading.Event)  # set once a request is held
    seen: list[str] = field(default_factory=list)
    # (request line, status, headers, body) -> what to answer instead; None keeps the answer.
    rewrite: Rewrite | None = None
    # Takes the whole answer over (cut or trickled bodies); True when it answered.
    raw: RawFault | None = None
    # Authorization headers that reached the proxy, in order (for canary checks).
    authorizations: list[str] = field(default_factory=list)
    # (User-Agent, Authorization or "") of every request: which client asked, and as whom.
    clients: list[tuple[str, str]] = field(default_factory=list)


Answer = tuple[int, dict[str, str], bytes]
Rewrite = Callable[[str, Answer], Answer | None]
RawFault = Callable[[str, BaseHTTPRequestHandler], bool]


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks: list[bytes] = []
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                handler.rfile.readline()
                return b"".join(chunks)
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()
    length = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(length) if length else b""


def _handler(upstream: tuple[str, int], faults: Faults) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            return None

        def _forward(self) -> None:
            line = f"{self.command} {self.path}"
            faults.seen.append(line)
            if "Authorization" in self.headers:
                faults.authorizations.append(self.headers["Authorization"])
            agent = self.headers.get("User-Agent", "")
            faults.clients.append((agent, self.headers.get("Authorization", "")))
            body = _read_body(self)
            if faults.raw is not None and faults.raw(line, self):
                self.close_connection = True
                return
            if faults.hold is not None and faults.hold.search(line):
                faults.held.set()
                if not faults.released.wait(MAX_HOLD_SECONDS):
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
            connection = http.client.HTTPConnection(*upstream, timeout=60)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            headers["Content-Length"] = str(len(body))
            connection.request(self.command, self.path, body=body, headers=headers)
            response = connection.getresponse()
            answer: Answer = (
                response.status,
                {k: v for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP},
                response.read(),
            )
            connection.close()
            if faults.rewrite is not None:
                answer = faults.rewrite(line, answer) or answer
            status, reply_headers, data = answer
            try:
                self.send_response(status)
                for key, value in reply_headers.items():
                    if key.lower() != "content-length":
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                # The client was stopped mid-request (as interrupt tests do): no one to answer.
                self.close_connection = True

        do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

    return Handler


@contextmanager
def registry_proxy(upstream: str, faults: Faults) -> Iterator[str]:
    """Serve on 127.0.0.1:<free port> in front of upstream ("127.0.0.1:port"); yields host:port."""
    host, port = upstream.rsplit(":", 1)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler((host, int(port)), faults))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        faults.released.set()
        server.shutdown()
        server.server_close()


def _matching(pattern: str, times: int) -> Callable[[str], bool]:
    """True for the first `times` requests whose line matches pattern (times < 0: always)."""
    compiled = re.compile(pattern)
    count = [0]
    lock = threading.Lock()

    def hit(line: str) -> bool:
        if not compiled.search(line):
            return False
        with lock:
            count[0] += 1
            return times < 0 or count[0] <= times

    return hit


def fail_with(
    pattern: str, status: int, times: int, headers: dict[str, str] | None = None
) -> RawFault:
    """Answer `status` (with headers) instead of forwarding, the first `times` times."""
    hit = _matching(pattern, times)

    def fault(line: str, handler: BaseHTTPRequestHandler) -> bool:
        if not hit(line):
            return False
        handler.send_response(status)
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", "0")
        handler.end_headers()
        return True

    return fault


def reset(pattern: str, times: int) -> RawFault:
    """Close the connection without answering, the first `times` times."""
    hit = _matching(pattern, times)

    def fault(line: str, handler: BaseHTTPRequestHandler) -> bool:
        if not hit(line):
            return False
        handler.connection.shutdown(socket.SHUT_RDWR)
        return True

    return fault


def hang(pattern: str, seconds: float) -> RawFault:
    """Accept the request and say nothing for `seconds` (bounded), then close."""
    hit = _matching(pattern, -1)

    def fault(line: str, handler: BaseHTTPRequestHandler) -> bool:
        if not hit(line):
            return False
        time.sleep(seconds)
        return True

    return fault


def send_partial(
    handler: BaseHTTPRequestHandler, headers: dict[str, str], body: bytes, pause: float = 0.0
) -> None:
    """Answer 200 with these headers, then only `body` (byte by byte `pause` s apart when
    pause > 0), then stop: a cut or trickling body. A client that gives up ends it early."""
    handler.send_response(200)
    for key, value in headers.items():
        handler.send_header(key, value)
    handler.end_headers()
    try:
        if pause <= 0:
            handler.wfile.write(body)
            handler.wfile.flush()
            return
        for byte in body:
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()
            time.sleep(pause)
    except (BrokenPipeError, ConnectionResetError):
        return  # the client gave up, as it must


def basic_challenge(line: str, handler: BaseHTTPRequestHandler) -> bool:
    """The proxy demands a login, as a private registry does."""
    if "Authorization" in handler.headers:
        return False
    handler.send_response(401)
    handler.send_header("WWW-Authenticate", 'Basic realm="test"')
    handler.send_header("Content-Length", "0")
    handler.end_headers()
    return True
