"""An actor's HTTP edge: an asyncio + httptools server in a thread of the actor's process.

The cut is here so the hot path (parse, authorise, answer from an immutable snapshot) never
takes an actor hop: handlers read attributes the actor swaps by plain assignment, and wake the
actor through a `Waker` it watches with `ThespianWatch`. One slow or hostile client never stalls
the others: the loop only writes to transports, pauses reading where a client does not keep up,
and refuses overload (413, 431, 503) instead of buffering it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import queue
import socket
import threading
from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from types import MappingProxyType
from typing import Any

import httptools

__all__ = ["Handler", "HttpEdge", "Request", "Response", "Route", "Waker"]

_log = logging.getLogger(__name__)

# Request line + headers; llhttp itself has no limit, so without one a client could grow memory.
_MAX_HEAD_BYTES = 64 * 1024
# How long an error-close keeps reading (and discarding) so the client sees the answer, not a RST.
_LINGER_S = 2.0
_REASONS = {status.value: status.phrase for status in HTTPStatus}
_RESERVED = frozenset({"content-length", "content-type", "connection", "transfer-encoding"})
_UNSAFE = frozenset("\r\n\0")
# One encoder for every response: json.dumps with options builds a new encoder per call.
_dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
# Lower-cased header names as received, decoded once.
_NAMES: dict[bytes, str] = {}
# Status line + Content-Type + "Content-Length: " per (status, content type), built once.
_heads: dict[tuple[int, str], bytes] = {}


@dataclass(frozen=True, slots=True)
class Request:
    """One parsed HTTP request; `path` is as sent (not percent-decoded), without the query."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes
    peer: str


@dataclass(frozen=True, slots=True)
class Response:
    """What a handler answers; the edge adds Content-Length (and Connection when it closes)."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def json(cls, status: int, payload: Mapping[str, Any]) -> Response:
        """A strict JSON response (NaN and infinities are refused, as on the rest of the wire)."""
        return cls(status, _dumps(payload).encode())

    @classmethod
    def error(cls, status: int, message: str) -> Response:
        """The uniform error body `{"error": message}`."""
        return cls.json(status, {"error": message})


Handler = Callable[[Request], Response]


@dataclass(frozen=True, slots=True)
class Route:
    """`blocking` handlers run in the edge's single worker thread; the others inline in the loop."""

    method: str
    path: str
    handler: Handler
    blocking: bool = False
    public: bool = False


def _head(status: int, content_type: str) -> bytes:
    key = (status, content_type)
    head = _heads.get(key)
    if head is None:
        if not _UNSAFE.isdisjoint(content_type):
            raise ValueError(f"invalid content type {content_type!r}")
        reason = _REASONS.get(status, "Unknown")
        text = f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: "
        head = text.encode("latin-1")
        if len(_heads) < 1024:  # bounded, whatever handlers invent
            _heads[key] = head
    return head


def _encode(response: Response, keep_alive: bool, head_only: bool = False) -> bytes:
    """The response on the wire; raises ValueError for a header that could break framing.

    `head_only` (a HEAD request) keeps the Content-Length but sends no body.
    """
    head, body = _head(response.status, response.content_type), response.body
    end = b"\r\n" if keep_alive else b"\r\nConnection: close\r\n"
    for name, value in response.headers:
        # Refuse header injection and the framing headers the edge owns.
        if name.lower() in _RESERVED or not _UNSAFE.isdisjoint(name + value) or ":" in name:
            raise ValueError(f"invalid response header {name!r}")
        end += f"{name}: {value}\r\n".encode("latin-1")
    return b"%s%d%s\r\n%s" % (head, len(body), end, b"" if head_only else body)


_INTERNAL = Response.error(500, "internal error")
_UNAUTHORIZED = Response(
    401,
    Response.error(401, "missing or invalid bearer token").body,
    headers=(("WWW-Authenticate", "Bearer"),),
)
_NOT_FOUND = Response.error(404, "not found")
_OVERLOADED = Response(503, Response.error(503, "overloaded").body, headers=(("Retry-After", "1"),))
_HEAD_TOO_LARGE = Response.error(431, "request header fields too large")
_BODY_TOO_LARGE = Response.error(413, "request body too large")
_MALFORMED = Response.error(400, "malformed request")
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class _Refused(Exception):
    """Raised from a parser callback to stop parsing and answer `response`, then close."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


class _Connection(asyncio.Protocol):
    """One client connection: parse, answer in request order, one request at a time."""

    def __init__(self, edge: HttpEdge, loop: asyncio.AbstractEventLoop) -> None:
        self._edge = edge
        self._loop = loop
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._peer = ""
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._body_size = 0
        self._head_bytes = 0
        self._in_head = False
        self._fresh_head = False
        # Parsed requests not yet answered: (request, keep_alive) or (None, final error bytes).
        self._queue: deque[tuple[Request | None, bytes | bool]] = deque()
        self._busy = False  # a blocking handler runs for this connection
        self._write_paused = False
        self._reading = True
        self._parsing = True  # False once a request was refused: later bytes are discarded
        self._lingering = False
        self._closed = False
        self._eof = False
        self.deadline: float | None = None  # when the sweeper closes us (waiting on the client)

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self._peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self._edge._connections.add(self)
        self.deadline = self._loop.time() + self._edge._idle_timeout_s

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._queue.clear()
        self._edge._connections.discard(self)

    def data_received(self, data: bytes) -> None:
        if not self._parsing:
            return  # lingering after an error: discard
        self._fresh_head = False
        try:
            self._parser.feed_data(data)
            if self._in_head and not self._fresh_head:
                # httptools buffers a header internally until it ends: bound a dribbled one too.
                self._head_bytes += len(data)
                if self._head_bytes > _MAX_HEAD_BYTES:
                    raise _Refused(_HEAD_TOO_LARGE)
        except _Refused as refused:
            self._refuse(refused.response)
        except httptools.HttpParserUpgrade:
            # Upgrades are not served: answer the request that asked, then close.
            if self._queue and self._queue[-1][0] is not None:
                self._queue[-1] = (self._queue[-1][0], False)
            self._parsing = False
        except httptools.HttpParserCallbackError as error:
            cause = error.__context__
            refusal = cause.response if isinstance(cause, _Refused) else None
            self._refuse(refusal or _MALFORMED)
        except httptools.HttpParserError:
            self._refuse(_MALFORMED)
        self._advance()

    def eof_received(self) -> bool:
        self._eof = True
        if self._lingering or (not self._busy and not self._queue):
            self._close()
        return True  # keep the write side open until queued answers are out

    def pause_writing(self) -> None:
        self._write_paused = True
        self._settle()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._advance()

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._body = []
        self._body_size = 0
        self._head_bytes = 0
        self._in_head = True
        self._fresh_head = True

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)
        if self._head_bytes > _MAX_HEAD_BYTES:
            raise _Refused(_HEAD_TOO_LARGE)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value)
        if self._head_bytes > _MAX_HEAD_BYTES:
            raise _Refused(_HEAD_TOO_LARGE)
        key = _NAMES.get(name)
        if key is None:
            key = name.decode("latin-1").lower()
            if len(_NAMES) < 1024:  # bounded, whatever clients invent
                _NAMES[name] = key
        text = value.decode("latin-1")
        previous = self._headers.get(key)
        self._headers[key] = text if previous is None else f"{previous}, {text}"

    def on_headers_complete(self) -> None:
        self._in_head = False
        length = self._headers.get("content-length")
        if length is not None and int(length) > self._edge._max_body_bytes:
            raise _Refused(_BODY_TOO_LARGE)
        expect = self._headers.get("expect")
        if expect is not None and expect.lower() == "100-continue" and self._idle():
            assert self._transport is not None
            self._transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self._edge._max_body_bytes:
            raise _Refused(_BODY_TOO_LARGE)
        self._body.append(body)

    def on_message_complete(self) -> None:
        url = self._url
        if url[:1] == b"/":
            path, _, query = url.partition(b"?")
        else:  # absolute-form or `*`
            try:
                parsed = httptools.parse_url(url)
                path, query = parsed.path or b"/", parsed.query or b""
            except httptools.HttpParserInvalidURLError:
                path, query = url, b""
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        request = Request(
            self._parser.get_method().decode("ascii"),
            path.decode("latin-1"),
            query.decode("latin-1"),
            MappingProxyType(self._headers),
            body,
            self._peer,
        )
        self._queue.append((request, self._parser.should_keep_alive()))
        self.deadline = None

    # answering

    def _idle(self) -> bool:
        return not self._busy and not self._queue and not self._write_paused

    def _refuse(self, response: Response) -> None:
        self._parsing = False
        self._queue.append((None, _encode(response, keep_alive=False)))

    def _advance(self) -> None:
        """Answer queued requests in order while nothing blocks this connection."""
        edge = self._edge
        while self._queue and not self._busy and not self._write_paused and not self._closed:
            request, extra = self._queue.popleft()
            if request is None:
                assert isinstance(extra, bytes)
                self._send(extra, keep_alive=False, linger=True)
                break
            keep_alive = bool(extra)
            route = edge._route(request)
            if isinstance(route, Response):  # refused: 401, 404, 405
                self._send(_encode(route, keep_alive, request.method == "HEAD"), keep_alive)
            elif route.blocking:
                if edge._pending >= edge._max_pending:
                    data = _encode(_OVERLOADED, keep_alive, request.method == "HEAD")
                    self._send(data, keep_alive)
                else:
                    edge._pending += 1
                    self._busy = True
                    edge._jobs.put((self, route, request, keep_alive))
            else:
                self._send(edge._run(route, request, keep_alive), keep_alive)
        if self._eof and not self._busy and not self._queue:
            self._close()
        self._settle()

    def blocking_done(self, data: bytes, keep_alive: bool) -> None:
        """Called in the loop when the worker finished this connection's request."""
        self._edge._pending -= 1
        self._busy = False
        if not self._closed:
            self._send(data, keep_alive)
            self._advance()

    def _send(self, data: bytes, keep_alive: bool, linger: bool = False) -> None:
        if self._closed:
            return
        assert self._transport is not None
        self._transport.write(data)
        self._edge._served += 1
        if keep_alive:
            return
        self._queue.clear()
        self._parsing = False
        if linger and not self._eof:
            # Keep reading and discarding so the client reads the error instead of a reset.
            self._lingering = True
            self._transport.write_eof()
            self.deadline = self._loop.time() + min(_LINGER_S, self._edge._idle_timeout_s)
        else:
            self._close()

    def _settle(self) -> None:
        """Read only when idle (flow control); set the deadline while waiting on the client."""
        if self._closed or self._transport is None:
            return
        want = self._lingering or (self._parsing and self._idle())
        if want != self._reading:
            self._reading = want
            if want:
                self._transport.resume_reading()
            else:
                self._transport.pause_reading()
        if self._lingering:
            return
        if self._busy or (self._queue and not self._write_paused):
            self.deadline = None
        elif self.deadline is None:
            self.deadline = self._loop.time() + self._edge._idle_timeout_s

    def _close(self) -> None:
        if self._closed or self._transport is None:
            return
        self._closed = True
        self._transport.close()
        # A closing transport whose client never reads would never go: the sweeper aborts it.
        self.deadline = self._loop.time() + self._edge._idle_timeout_s

    def expire(self) -> None:
        """The client kept us waiting past the deadline (idle, slowloris, not reading)."""
        self._closed = True
        self.deadline = None
        if self._transport is not None:
            self._transport.abort()


class HttpEdge:
    """An HTTP/1.1 server on its own thread and event loop, answering `routes`.

    `on_error(exception, request)` hears of every handler failure (answered 500), in the thread
    that ran the handler: the loop's for inline routes, the worker's for blocking ones.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        routes: Sequence[Route],
        tokens: Collection[str],
        max_body_bytes: int = 16 * 1024 * 1024,
        idle_timeout_s: float = 30.0,
        max_pending: int = 64,
        reuse_port: bool = True,
        name: str = "edge",
        on_error: Callable[[BaseException, Request | None], None] | None = None,
    ) -> None:
        self._routes: dict[str, dict[str, Route]] = {}
        for route in routes:
            methods = self._routes.setdefault(route.path, {})
            if route.method.upper() in methods:
                raise ValueError(f"duplicate route {route.method} {route.path}")
            methods[route.method.upper()] = route
        not_allowed = Response.error(405, "method not allowed").body
        self._allow = {
            path: Response(405, not_allowed, headers=(("Allow", ", ".join(sorted(methods))),))
            for path, methods in self._routes.items()
        }
        self._tokens = tuple(token.encode() for token in tokens if token)
        self._host, self._requested_port = host, port
        self._max_body_bytes = max_body_bytes
        self._idle_timeout_s = idle_timeout_s
        self._max_pending = max_pending
        self._reuse_port = reuse_port
        self._name = name
        self._on_error = on_error
        self._connections: set[_Connection] = set()
        self._pending = 0
        self._served = 0
        self._port = 0
        self._jobs: queue.SimpleQueue[tuple[_Connection, Route, Request, bool] | None]
        self._jobs = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._worker: threading.Thread | None = None
        self._lifecycle = threading.Lock()
        self._stopped = False

    @property
    def port(self) -> int:
        """The bound port (the real one when constructed with port=0)."""
        return self._port

    @property
    def requests_served(self) -> int:
        """Responses written so far, errors included."""
        return self._served

    def start(self, timeout_s: float = 5.0) -> None:
        """Bind and listen (an OSError is raised here), then serve from a daemon thread."""
        with self._lifecycle:
            if self._thread is not None or self._stopped:
                raise RuntimeError(f"{self._name} already started or stopped")
            sock = self._bind()
            self._port = sock.getsockname()[1]
            ready = threading.Event()
            failure: list[BaseException] = []
            self._thread = threading.Thread(
                target=self._serve, args=(sock, ready, failure), name=self._name, daemon=True
            )
            self._worker = threading.Thread(
                target=self._work, name=f"{self._name}-worker", daemon=True
            )
            self._worker.start()
            self._thread.start()
        if not ready.wait(timeout_s):
            self.stop(timeout_s)
            raise TimeoutError(f"{self._name} did not start within {timeout_s} s")
        if failure:
            self.stop(timeout_s)
            raise failure[0]

    def stop(self, timeout_s: float = 5.0) -> None:
        """Close the listener and every connection, stop the loop, join the threads.

        Waits up to `timeout_s` for a blocking handler still running; safe to call twice.
        """
        with self._lifecycle:
            if self._stopped:
                return
            self._stopped = True
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(self._shutdown, loop)
        self._jobs.put(None)
        for thread in (self._thread, self._worker):
            # A handler may call stop(): never join the thread we run on.
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout_s)

    def _bind(self) -> socket.socket:
        family, kind, proto, _, address = socket.getaddrinfo(
            self._host, self._requested_port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self._reuse_port and hasattr(socket, "SO_REUSEPORT"):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(address)
            sock.listen(1024)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def _serve(
        self, sock: socket.socket, ready: threading.Event, failure: list[BaseException]
    ) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._server = loop.run_until_complete(
                loop.create_server(lambda: _Connection(self, loop), sock=sock, backlog=1024)
            )
            sweeper = loop.create_task(self._sweep())
            loop.call_soon(ready.set)
            if self._stopped:  # stop() ran before this loop existed: it could not reach us
                self._shutdown(loop)
            loop.run_forever()
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(sweeper)
        except BaseException as error:  # reported to start()
            failure.append(error)
            sock.close()
            ready.set()
        finally:
            loop.close()

    def _shutdown(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._server is not None:
            self._server.close()  # closes the listening socket now
        for connection in list(self._connections):
            connection.expire()
        loop.call_soon(loop.stop)  # after the connection_lost callbacks abort() scheduled

    async def _sweep(self) -> None:
        """Close connections whose client kept us waiting past their deadline."""
        loop = asyncio.get_running_loop()
        interval = min(max(self._idle_timeout_s / 4, 0.01), 1.0)
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            for connection in list(self._connections):
                deadline = connection.deadline
                if deadline is not None and deadline <= now:
                    connection.expire()

    def _route(self, request: Request) -> Route | Response:
        """The route to run, or the refusal to send instead."""
        methods = self._routes.get(request.path)
        if methods is None:
            return _NOT_FOUND
        route = methods.get(request.method)
        if route is None:
            return self._allow[request.path]
        if not route.public and not self._authorized(request.headers.get("authorization")):
            return _UNAUTHORIZED
        return route

    def _authorized(self, header: str | None) -> bool:
        if header is None or not self._tokens:
            return False
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer":
            return False
        candidate = token.strip().encode("latin-1")
        matched = False
        for expected in self._tokens:  # no early exit: the time spent says nothing
            matched |= hmac.compare_digest(candidate, expected)
        return matched

    def _run(self, route: Route, request: Request, keep_alive: bool) -> bytes:
        try:
            return _encode(route.handler(request), keep_alive, request.method == "HEAD")
        except Exception as error:
            self._report(error, request)
            return _encode(_INTERNAL, keep_alive, request.method == "HEAD")

    def _report(self, error: BaseException, request: Request | None) -> None:
        if self._on_error is None:
            _log.error("%s: handler failed", self._name, exc_info=error)
            return
        try:
            self._on_error(error, request)
        except Exception:
            _log.exception("%s: on_error failed", self._name)

    def _work(self) -> None:
        """The single worker thread: run blocking handlers, hand the bytes back to the loop."""
        while (job := self._jobs.get()) is not None:
            connection, route, request, keep_alive = job
            data = self._run(route, request, keep_alive)
            loop = self._loop
            if loop is None:
                return
            try:
                loop.call_soon_threadsafe(connection.blocking_done, data, keep_alive)
            except RuntimeError:  # the loop is closed: stopping
                return


class Waker:
    """A socketpair an actor watches (`ThespianWatch([waker.fileno()])`) and any thread pokes.

    Coalescing: however many `notify` calls arrive before `drain`, at most one byte is pending.
    """

    def __init__(self) -> None:
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)
        self._lock = threading.Lock()
        self._pending = False
        self._closed = False

    def fileno(self) -> int:
        """The read end, to pass to `ThespianWatch`."""
        return self._reader.fileno()

    def notify(self) -> None:
        """Make the read end readable; never blocks, never raises."""
        with self._lock:
            if self._pending or self._closed:
                return
            self._pending = True
            with contextlib.suppress(OSError):  # a full buffer still leaves it readable
                self._writer.send(b"\0")

    def drain(self) -> None:
        """Consume every pending byte; call before looking at what changed."""
        with self._lock:
            if self._closed:
                return
            with contextlib.suppress(BlockingIOError, InterruptedError):
                while self._reader.recv(4096):
                    pass
            self._pending = False

    def close(self) -> None:
        """Close both ends; later `notify` calls do nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._reader.close()
            self._writer.close()

    def __enter__(self) -> Waker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
