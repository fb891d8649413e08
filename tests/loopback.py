"""A scripted HTTP server on 127.0.0.1 for provider tests.

    with LoopbackServer() as server:
        server.add(Reply(200, {"Content-Type": "text/event-stream"}, body, plan="bytes:3"))
        ... point a base URL at server.url ...
        server.requests[0].path, .headers["user-agent"], .json

Each request takes the next scripted Reply (a 599 when none is left) and is logged with its
method, path, headers (lower-case names) and body. A Reply can write its body a few bytes at a
time (`plan="bytes:N"`), wait before answering (`delay`), stall mid-body (`stall_after`,
`stall`), or drop the connection mid-body (`close_after`). Every wait is bounded and ends when
the server stops; connections time out after a few seconds, so no test can hang on it.
"""
from __future__ import annotations

import json
import socket
import ssl
import threading
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

#: Seconds a connection may sit idle before the server gives up on it.
SOCKET_TIMEOUT = 5.0


class Reply:
    """One scripted response.

    framing: "chunked" (default; what streaming APIs send), "length" (Content-Length) or
    "close" (the body ends when the connection closes, as HTTP/1.0).
    """

    def __init__(self, status: int = 200, headers: dict[str, str] | None = None,
                 body: bytes | str = b"", *, plan: str | None = None, gap: float = 0.0,
                 delay: float = 0.0, stall_after: int | None = None, stall: float = 0.0,
                 close_after: int | None = None, framing: str = "chunked") -> None:
        self.status = status
        self.headers = dict(headers or {})
        self.body = body.encode("utf-8") if isinstance(body, str) else body
        self.step = int(plan.partition(":")[2]) if plan else 0
        self.gap = gap
        self.delay = delay
        self.stall_after = stall_after
        self.stall = stall
        self.close_after = close_after
        self.framing = framing

    @classmethod
    def json(cls, status: int, obj: object, headers: dict[str, str] | None = None) -> Reply:
        """A JSON body with Content-Length, as providers send their errors."""
        head = {"Content-Type": "application/json", **(headers or {})}
        return cls(status, head, json.dumps(obj).encode(), framing="length")

    @classmethod
    def sse(cls, body: bytes | str, **kwargs: object) -> Reply:
        """A 200 text/event-stream reply."""
        return cls(200, {"Content-Type": "text/event-stream"}, body, **kwargs)


class Request:
    """What the server received."""

    def __init__(self, method: str, path: str, headers: dict[str, str], body: bytes) -> None:
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body
        try:
            self.json = json.loads(body) if body else None
        except ValueError:
            self.json = None

    def __repr__(self) -> str:
        return f"Request({self.method} {self.path})"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = SOCKET_TIMEOUT

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        self._serve()

    do_GET = do_PUT = do_CONNECT = do_POST

    def _serve(self) -> None:
        owner: LoopbackServer = self.server.owner  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        owner._log(Request(self.command, self.path, headers, body))
        reply = owner._next()
        self.close_connection = True
        try:
            self._write(reply, owner.stopping)
        except (OSError, ValueError):
            pass   # the client went away: that is what some tests do

    def _write(self, reply: Reply, stopping: threading.Event) -> None:
        if reply.delay and stopping.wait(reply.delay):
            return
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if reply.framing == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
        elif reply.framing == "length":
            self.send_header("Content-Length", str(len(reply.body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.flush()
        body = reply.body
        cut = reply.close_after is not None and reply.close_after < len(body)
        if cut:
            body = body[:reply.close_after]
        step = reply.step or max(1, len(body))
        sent = 0
        for start in range(0, len(body), step):
            piece = body[start:start + step]
            if reply.stall_after is not None and sent <= reply.stall_after < sent + len(piece):
                head, piece = piece[:reply.stall_after - sent], piece[reply.stall_after - sent:]
                self._send(head, reply.framing)
                sent += len(head)
                if stopping.wait(reply.stall):
                    return
            self._send(piece, reply.framing)
            sent += len(piece)
            if reply.gap and stopping.wait(reply.gap):
                return
        if reply.stall_after is not None and reply.stall_after >= len(body):
            if stopping.wait(reply.stall):
                return
        if cut:
            # Drop the connection without the end of the body (no last chunk).
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if reply.framing == "chunked":
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

    def _send(self, piece: bytes, framing: str) -> None:
        if not piece:
            return
        if framing == "chunked":
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        else:
            self.wfile.write(piece)
        self.wfile.flush()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request: object, client_address: object) -> None:
        pass   # a test client that hangs up (or speaks TLS to plain HTTP) is expected


class LoopbackServer:
    """A threaded HTTP(S) server on 127.0.0.1 with an ephemeral port; a context manager."""

    def __init__(self, *, certfile: str | None = None, keyfile: str | None = None) -> None:
        self._replies: deque[Reply] = deque()
        self._lock = threading.Lock()
        self.requests: list[Request] = []
        self.stopping = threading.Event()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self  # type: ignore[attr-defined]
        self.scheme = "http"
        if certfile:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(certfile, keyfile)
            self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
            self.scheme = "https"
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.01}, daemon=True)

    @property
    def url(self) -> str:
        """`http://127.0.0.1:PORT` (no trailing slash)."""
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def add(self, *replies: Reply) -> LoopbackServer:
        """Queue replies, served in order, one per request."""
        with self._lock:
            self._replies.extend(replies)
        return self

    def start(self) -> LoopbackServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _log(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def _next(self) -> Reply:
        with self._lock:
            if self._replies:
                return self._replies.popleft()
        return Reply.json(599, {"error": {"message": "the test scripted no reply for this"}})


def dead_port() -> int:
    """A loopback port nobody listens on: connecting to it is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
