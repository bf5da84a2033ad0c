"""A small fault-injecting HTTP/1.1 proxy for tests, on 127.0.0.1 in front of one real server.

Clients talk to the proxy as if it were the server (MLflow, S3); the proxy relays each request and
its response, unless a `Fault` matches the request, in which case it:

    pass     relays as usual (with `then`: act right after the answer went back)
    status   answers with an HTTP error (default 503) without forwarding
    reset    closes the client's connection with a TCP reset, nothing forwarded
    drop     forwards the request, lets the server act on it, then closes the client's connection
             without the response (the reply is lost on the way back)
    delay    forwards, and holds the response `seconds` before relaying it
    hang     reads the request and never answers (until the proxy stops or goes down)

Each fault can fire a bounded number of `times` and run `then` (say, SIGKILL the server) right
after it acted. `down()` stops listening and cuts every connection (clients get "connection
refused"), `up()` listens again on the same port. Everything is bounded: socket timeouts, a cap
on connections, and only 127.0.0.1 on both sides.
"""

from __future__ import annotations

import contextlib
import re
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.servers import free_port

ACTIONS = ("pass", "status", "reset", "drop", "delay", "hang")
TIMEOUT_S = 60.0
MAX_CONNECTIONS = 256


@dataclass
class Request:
    """What a fault matches on."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Fault:
    """Act on requests whose method matches and whose path matches the regular expression."""

    action: str
    path: str = ".*"
    method: str | None = None
    times: int | None = 1  # None: every matching request
    status: int = 503
    seconds: float = 0.0
    then: Callable[[], None] | None = None
    hits: int = 0
    seen: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown fault action {self.action!r}; one of {ACTIONS}")

    def matches(self, request: Request) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        if self.method is not None and request.method != self.method:
            return False
        return re.search(self.path, request.path) is not None


class _Closed(Exception):
    """The peer closed the connection."""


class _Reader:
    """Buffered reads of HTTP heads and bodies from a socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _more(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise _Closed
        self.buffer += chunk

    def head(self) -> bytes:
        while b"\r\n\r\n" not in self.buffer:
            self._more()
            if len(self.buffer) > 1 << 20:
                raise ValueError("HTTP head over 1 MiB")
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        return head + b"\r\n\r\n"

    def exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self._more()
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            self._more()
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line + b"\r\n"

    def chunked(self) -> bytes:
        """A chunked body, re-emitted as received (sizes, data, trailers)."""
        out = b""
        while True:
            size_line = self.line()
            out += size_line
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                while True:  # trailers, then the empty line
                    trailer = self.line()
                    out += trailer
                    if trailer == b"\r\n":
                        return out
            out += self.exactly(size + 2)

    def until_close(self) -> bytes:
        try:
            while True:
                self._more()
        except (_Closed, OSError):
            pass
        data, self.buffer = self.buffer, b""
        return data


def _parse_head(head: bytes) -> tuple[str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    return lines[0], headers


def _body(reader: _Reader, headers: dict[str, str], *, no_body: bool = False) -> bytes:
    if no_body:
        return b""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return reader.chunked()
    if "content-length" in headers:
        return reader.exactly(int(headers["content-length"]))
    return b""


class FaultProxy:
    """The proxy; use as a context manager. `url` is what clients are pointed at."""

    def __init__(self, target_port: int, *, port: int | None = None) -> None:
        self.target = ("127.0.0.1", target_port)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.faults: list[Fault] = []
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request seen
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._stopped = threading.Event()

    def __enter__(self) -> FaultProxy:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopped.set()
        self.down()

    # -- control --------------------------------------------------------------------------------

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()

    def forget(self) -> None:
        """Faults off and the request log emptied: a fresh start for the next test."""
        with self._lock:
            self.faults.clear()
            self.requests.clear()

    def count(self, path: str, method: str | None = None) -> int:
        """How many requests seen so far match `path` (a regular expression) and `method`."""
        with self._lock:
            return sum(
                1
                for m, p in self.requests
                if (method is None or m == method) and re.search(path, p) is not None
            )

    def up(self) -> None:
        """Listen (again) on the proxy's port."""
        if self._listener is not None:
            return
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        deadline = time.monotonic() + 10
        while True:
            try:
                listener.bind(("127.0.0.1", self.port))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        """Stop listening and cut every open connection: the server looks gone."""
        listener, self._listener = self._listener, None
        if listener is not None:
            _close(listener)
        with self._lock:
            sockets, self._sockets = set(self._sockets), set()
        for sock in sockets:
            _close(sock)

    # -- relaying -------------------------------------------------------------------------------

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            with self._lock:
                if len(self._sockets) >= MAX_CONNECTIONS:
                    _close(client)
                    continue
                self._sockets.add(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _fault_for(self, request: Request) -> Fault | None:
        with self._lock:
            self.requests.append((request.method, request.path))
            for fault in self.faults:
                if fault.matches(request):
                    fault.hits += 1
                    fault.seen.append(request)
                    return fault
        return None

    def _serve(self, client: socket.socket) -> None:
        client.settimeout(TIMEOUT_S)
        upstream: socket.socket | None = None
        reader = _Reader(client)
        try:
            while True:
                head = reader.head()
                request_line, headers = _parse_head(head)
                if headers.get("expect", "").lower() == "100-continue":
                    client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                    head = re.sub(rb"(?im)^expect:[^\r\n]*\r\n", b"", head)
                body = _body(reader, headers)
                method, path = ([*request_line.split(" "), "", ""])[:2]
                request = Request(method, path, headers, body)
                fault = self._fault_for(request)
                if fault is not None and fault.action in ("status", "reset", "hang"):
                    self._act_before(fault, client)
                    if fault.action != "status":
                        return
                    continue
                if upstream is None:
                    upstream = socket.create_connection(self.target, timeout=TIMEOUT_S)
                    with self._lock:
                        self._sockets.add(upstream)
                upstream.sendall(head + body)
                response = self._response(_Reader(upstream), method)
                if fault is not None and fault.action == "drop":
                    _run_then(fault)
                    return
                if fault is not None and fault.action == "delay":
                    self._stopped.wait(fault.seconds)
                client.sendall(response)
                if fault is not None:
                    _run_then(fault)
                if b"connection: close" in response.split(b"\r\n\r\n", 1)[0].lower():
                    return
        except (_Closed, OSError, ValueError):
            return
        finally:
            for sock in (client, upstream):
                if sock is not None:
                    with self._lock:
                        self._sockets.discard(sock)
                    _close(sock)

    def _act_before(self, fault: Fault, client: socket.socket) -> None:
        if fault.action == "status":
            body = f'{{"error": "injected {fault.status}"}}'.encode()
            client.sendall(
                f"HTTP/1.1 {fault.status} Injected\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
        elif fault.action == "reset":
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()  # with linger 0: a reset, not an orderly close
        elif fault.action == "hang":
            self._stopped.wait(TIMEOUT_S)
        _run_then(fault)

    @staticmethod
    def _response(reader: _Reader, method: str) -> bytes:
        """One complete response (interim 1xx responses included) from the server."""
        out = b""
        while True:
            head = reader.head()
            status_line, headers = _parse_head(head)
            status = int(status_line.split(" ")[1])
            if 100 <= status < 200:
                out += head
                continue
            no_body = method == "HEAD" or status in (204, 304)
            if (
                not no_body
                and "content-length" not in headers
                and "chunked" not in headers.get("transfer-encoding", "").lower()
            ):
                return out + head + reader.until_close()
            return out + head + _body(reader, headers, no_body=no_body)


def _run_then(fault: Fault) -> None:
    if fault.then is not None:
        fault.then()


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
