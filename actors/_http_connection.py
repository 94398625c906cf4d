"""One client connection of an `HttpEdge`: the asyncio Protocol that parses and answers.

The cut is here because this is everything that happens per socket (llhttp callbacks, head and
body limits, answering in request order, flow control, lingering after an error, draining at
stop) and nothing that is shared across them. It is the edge's own machinery, not a separate
component: it reads and updates the `HttpEdge`'s private state (routes, tokens, pending-job
count, worker queue, limits) directly, as it did when both lived in one module, so the hot path
pays for no extra calls. What it touches is declared by `EdgeState`, a Protocol `HttpEdge`
satisfies, so this module does not import `actors.edge` (which imports it).

The hot path: a request that completes while the connection is free (nothing running, nothing
queued, the client reading) is answered inside `on_message_complete`, one `transport.write`,
with no queue and no clock read; everything else goes through `_queue` and `_advance`. A
route with a fast lane (`Route.fast`, the predictor's ``POST /model``) is asked first there,
with the body and Content-Type alone: no `Request` or `Response` is built for what it answers.
"""

from __future__ import annotations

import asyncio
import select
import time
from collections import deque
from collections.abc import Mapping
from queue import SimpleQueue
from types import MappingProxyType
from typing import TYPE_CHECKING, Protocol, cast

import httptools

from actors._http_message import (
    Request,
    Response,
    Route,
    encode_json,
    encode_response,
    make_request,
    with_close,
)

if TYPE_CHECKING:
    from actors._http_message import FastJson
    from actors.metrics import Tally

__all__ = ["Connection", "EdgeState"]

# Request line + headers; llhttp itself has no limit, so without one a client could grow memory.
_MAX_HEAD_BYTES = 64 * 1024
# How long an error-close keeps reading (and discarding) so the client sees the answer, not a RST.
_LINGER_S = 2.0
# Lower-cased header names as received, decoded once.
_NAMES: dict[bytes, str] = {}
# Methods as llhttp reports them (a fixed set), decoded once.
_METHODS: dict[bytes, str] = {}

_RETRY = (("Retry-After", "1"),)
_OVERLOADED = Response(503, Response.error(503, "overloaded").body, headers=_RETRY)
_SHUTTING_DOWN = Response(503, Response.error(503, "shutting down").body, headers=_RETRY)
_UNAUTHORIZED = Response(
    401,
    Response.error(401, "missing or invalid bearer token").body,
    headers=(("WWW-Authenticate", "Bearer"),),
)
_NOT_FOUND = Response.error(404, "not found")
_HEAD_TOO_LARGE = Response.error(431, "request header fields too large")
_BODY_TOO_LARGE = Response.error(413, "request body too large")
_MALFORMED = Response.error(400, "malformed request")
_INTERNAL = Response.error(500, "internal error")
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class _Refused(Exception):
    """Raised from a parser callback to stop parsing and answer `response`, then close."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


class EdgeState(Protocol):
    """The edge's state a connection reads and updates (in the loop's thread): `HttpEdge`."""

    _routes: dict[str, dict[str, Route]]
    _fast: dict[bytes, tuple[bytes, Route, FastJson]]
    _tally: Tally | None
    _allow: dict[str, Response]
    _connections: set[Connection]
    _jobs: SimpleQueue[tuple[Connection, Route, Request, bool, float] | None]
    _max_connections: int
    _max_body_bytes: int
    _max_held: int
    _max_pending: int
    _idle_timeout_s: float
    _draining: bool
    _held: int
    _pending: int
    _served: int

    def _connection_gone(self, connection: Connection) -> None: ...

    def _authorized(self, header: str | None) -> bool: ...

    def _run(self, route: Route, request: Request, keep_alive: bool,
             began: float | None = None) -> bytes: ...

    def _refused(self, path: str, status: int) -> None: ...

    def _report(self, error: BaseException, request: Request | None) -> None: ...


class Connection(asyncio.Protocol):
    """One client connection: parse, answer in request order, one request at a time."""

    def __init__(self, edge: EdgeState, loop: asyncio.AbstractEventLoop) -> None:
        self._edge = edge
        self._loop = loop
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._peer = ""
        self._proven: str | None = None  # the last Authorization header that held a token
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._body_size = 0
        # Body bytes this connection counts against the edge's `max_buffered_bytes`: the
        # request arriving (its Content-Length reserved up front), and parsed requests until
        # they are answered.
        self._held = 0
        self._arriving_held = 0
        self._running_held = 0
        self._head_bytes = 0
        self._in_message = False  # a request has begun and not yet completed
        self._in_head = False
        self._fresh_head = False
        # Parsed requests not yet answered: (request, keep_alive) or (None, final error bytes).
        self._queue: deque[tuple[Request | None, bytes | bool]] = deque()
        self._busy = False  # a blocking handler runs (or waits for the worker) for us
        self._write_paused = False
        self._reading = True
        self._parsing = True  # False once a request was refused: later bytes are discarded
        self._lingering = False
        self._closed = False
        self._eof = False
        self._draining = False  # the edge is stopping: answer what started, refuse the rest
        # When the sweeper closes us (waiting on the client); None while we owe an answer.
        self.deadline: float | None = None
        # Answered a request since the sweeper last looked: it pushes `deadline` on, so the hot
        # path never reads the clock.
        self.active = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's transport, or uvloop's (which does not derive from asyncio.Transport).
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self._peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        edge = self._edge
        crowded = len(edge._connections) >= edge._max_connections
        edge._connections.add(self)
        self.deadline = self._loop.time() + edge._idle_timeout_s
        if edge._draining:  # accepted just before the listener closed
            self.drain()
        elif crowded:
            # Past the connection cap: a 503 with Retry-After, then close (after lingering,
            # so the client reads it rather than a reset).
            self._refuse(_OVERLOADED)
            self._advance()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._queue.clear()
        self._release(self._held)
        self._edge._connection_gone(self)

    def _hold(self, size: int) -> None:
        self._held += size
        self._edge._held += size

    def _release(self, size: int) -> None:
        size = min(size, self._held)
        self._held -= size
        self._edge._held -= size

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
            self._parsing = False  # upgrades are not served (the request was answered `close`)
        except httptools.HttpParserCallbackError as error:
            cause = error.__context__
            refusal = cause.response if isinstance(cause, _Refused) else None
            self._refuse(refusal or _MALFORMED)
        except httptools.HttpParserError:
            self._refuse(_MALFORMED)
        if self._queue or self._busy or self._write_paused or self._draining or not self._parsing:
            self._advance()
        # Otherwise every request was answered inline: still idle, reading, deadline set.

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
        self._body_size = 0
        self._head_bytes = 0
        self._in_message = True
        self._in_head = True
        self._fresh_head = True

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)
        if self._head_bytes > _MAX_HEAD_BYTES:
            raise _Refused(_HEAD_TOO_LARGE)

    def on_header(self, name: bytes, value: bytes) -> None:
        size = self._head_bytes + len(name) + len(value)
        self._head_bytes = size
        if size > _MAX_HEAD_BYTES:
            raise _Refused(_HEAD_TOO_LARGE)
        key = _NAMES.get(name)
        if key is None:
            key = name.decode("latin-1").lower()
            if len(_NAMES) < 1024:  # bounded, whatever clients invent
                _NAMES[name] = key
        headers = self._headers
        if key in headers:
            headers[key] = f"{headers[key]}, {value.decode('latin-1')}"
        else:
            headers[key] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._draining:  # a request that begins while we stop is refused, body unread
            raise _Refused(_SHUTTING_DOWN)
        headers = self._headers
        length = headers.get("content-length")
        if length is not None:
            size = int(length)
            if size > self._edge._max_body_bytes:
                raise _Refused(_BODY_TOO_LARGE)
            if self._edge._held + size > self._edge._max_held:
                raise _Refused(_OVERLOADED)  # before reading it: the edge holds enough
            self._hold(size)
            self._arriving_held = size
        expect = headers.get("expect")
        if expect is not None and expect.lower() == "100-continue" and self._idle():
            assert self._transport is not None
            self._transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self._edge._max_body_bytes:
            raise _Refused(_BODY_TOO_LARGE)
        if self._body_size > self._arriving_held:  # chunked: counted as it comes
            grown = self._body_size - self._arriving_held
            if self._edge._held + grown > self._edge._max_held:
                raise _Refused(_OVERLOADED)
            self._hold(grown)
            self._arriving_held = self._body_size
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._in_message = False
        self._arriving_held = 0  # now held by the parsed request, until it is answered
        url = self._url
        chunks = self._body
        if chunks:
            body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            self._body = []
        else:
            body = b""
        parser = self._parser
        fast = self._edge._fast.get(url)
        if (fast is not None and parser.get_method() == fast[0] and not self._busy
                and not self._queue and not self._write_paused and not self._draining
                and not self._closed and self._answer_fast(fast[1], fast[2], body)):
            return
        if url[:1] == b"/":
            path, _, query = url.partition(b"?")
        else:  # absolute-form or `*`
            try:
                parsed = httptools.parse_url(url)
                path, query = parsed.path or b"/", parsed.query or b""
            except httptools.HttpParserInvalidURLError:
                path, query = url, b""
        raw_method = parser.get_method()
        method = _METHODS.get(raw_method)
        if method is None:
            method = _METHODS[raw_method] = raw_method.decode("ascii")
        headers = self._headers
        request = make_request(
            method,
            path.decode("latin-1"),
            query.decode("latin-1") if query else "",
            MappingProxyType(headers),
            body,
            self._peer,
        )
        # An upgrade (or CONNECT) is answered, never switched to: its answer closes.
        keep_alive = parser.should_keep_alive() and not parser.should_upgrade()
        if self._busy or self._queue or self._write_paused or self._draining or self._closed:
            if not self._closed:
                self._queue.append((request, keep_alive))
            return
        self._answer(request, headers, keep_alive)

    # answering

    def _answer_fast(self, route: Route, fast: FastJson, body: bytes) -> bool:
        """Answer through the route's fast lane (see `Route.fast`), if it takes the request
        (and the client holds a token, unless the route is public); False: it did not."""
        headers = self._headers
        if not route.public and not self._authorized(headers.get("authorization")):
            return False  # the whole path says why
        edge = self._edge
        tally = edge._tally
        began = time.perf_counter() if tally is not None else 0.0
        parser = self._parser
        keep_alive = parser.should_keep_alive() and not parser.should_upgrade()
        try:
            answer = fast(body, headers.get("content-type"))
        except Exception as error:
            edge._report(error, self._request(body))
            status, data = 500, encode_response(_INTERNAL, keep_alive)
        else:
            if answer is None:
                return False
            status, data = answer[0], encode_json(answer[0], answer[1], keep_alive)
        if tally is not None:
            tally.record(route.path, status, time.perf_counter() - began)
        self._release(len(body))
        self._send(data, keep_alive)
        return True

    def _request(self, body: bytes) -> Request:
        """The request just parsed, whole (for a report: the fast lane builds none)."""
        url = self._url
        path, _, query = url.partition(b"?")
        return make_request(self._parser.get_method().decode("ascii"), path.decode("latin-1"),
                            query.decode("latin-1"), MappingProxyType(self._headers), body,
                            self._peer)

    def _answer(self, request: Request, headers: Mapping[str, str], keep_alive: bool) -> None:
        """Route, authorise and run (or hand to the worker) one request, in its turn."""
        edge = self._edge
        methods = edge._routes.get(request.path)
        if methods is None:
            refusal = _NOT_FOUND
        else:
            route: Route | None = methods.get(request.method)
            if route is None:
                refusal = edge._allow[request.path]
            elif not route.public and not self._authorized(headers.get("authorization")):
                refusal = _UNAUTHORIZED
            elif not route.blocking:
                self._release(len(request.body))
                self._send(edge._run(route, request, keep_alive), keep_alive)
                return
            elif edge._pending >= edge._max_pending:
                refusal = _OVERLOADED
            else:
                edge._pending += 1
                self._busy = True
                self._running_held = len(request.body)
                self.deadline = None  # we owe the answer now, not the client
                edge._jobs.put((self, route, request, keep_alive,
                                time.perf_counter()))
                return
        self._release(len(request.body))
        edge._refused(request.path, refusal.status)
        self._send(encode_response(refusal, keep_alive, request.method == "HEAD"), keep_alive)

    def _authorized(self, header: str | None) -> bool:
        """Whether `header` (Authorization) carries a token: checked by the edge, in constant
        time, unless it is the very header this connection's client already proved."""
        if header is not None and header == self._proven:
            # Plain comparison, on purpose: its time tells the client about a header it sent
            # itself, nothing about the tokens.
            return True
        if self._edge._authorized(header):
            self._proven = header
            return True
        return False

    def _idle(self) -> bool:
        return not self._busy and not self._queue and not self._write_paused

    def _refuse(self, response: Response) -> None:
        self._edge._refused(self._url.partition(b"?")[0].decode("latin-1"), response.status)
        self._parsing = False
        self._in_message = False
        self._body = []
        self._release(self._arriving_held)  # what arrived of it is dropped
        self._arriving_held = 0
        self._queue.append((None, encode_response(response, keep_alive=False)))

    def _advance(self) -> None:
        """Answer queued requests in order while nothing blocks this connection."""
        while self._queue and not self._busy and not self._write_paused and not self._closed:
            request, extra = self._queue.popleft()
            if request is None:
                assert isinstance(extra, bytes)
                self._send(extra, keep_alive=False, linger=True)
                break
            if self._draining:
                # Never started: refused, and only the last answer closes the connection.
                keep_alive = bool(extra) and (bool(self._queue) or self._in_message)
                head_only = request.method == "HEAD"
                self._release(len(request.body))
                self._edge._refused(request.path, _SHUTTING_DOWN.status)
                self._send(encode_response(_SHUTTING_DOWN, keep_alive, head_only), keep_alive)
            else:
                self._answer(request, request.headers, bool(extra))
        if self._draining and not self._busy and not self._queue:
            self._drained()
        if self._eof and not self._busy and not self._queue:
            self._close()
        self._settle()

    def blocking_done(self, data: bytes, keep_alive: bool) -> None:
        """Called in the loop when the worker finished this connection's request."""
        self._edge._pending -= 1
        self._busy = False
        self._release(self._running_held)
        self._running_held = 0
        if self._closed:
            return
        if self._draining and keep_alive and not self._queue and not self._in_message:
            data, keep_alive = with_close(data), False  # the connection's last answer
        self._send(data, keep_alive)
        self._advance()

    def _send(self, data: bytes, keep_alive: bool, linger: bool = False) -> None:
        if self._closed:
            return
        assert self._transport is not None
        # Counted before the write: a client that has read the answer must see it counted.
        self._edge._served += 1
        self._transport.write(data)
        if keep_alive:
            self.active = True
            return
        self.active = False
        self._queue.clear()
        self._parsing = False
        if (linger or self._draining) and not self._eof:
            # Keep reading and discarding so the client reads the answer instead of a reset
            # (it may have pipelined more requests we will never read).
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
        self.active = False
        self._transport.close()
        # A closing transport whose client never reads would never go: the sweeper aborts it.
        self.deadline = self._loop.time() + self._edge._idle_timeout_s

    def expire(self) -> None:
        """The client kept us waiting past the deadline (idle, slowloris, not reading)."""
        self._closed = True
        self.deadline = None
        if self._transport is not None:
            self._transport.abort()

    # stopping

    def drain(self) -> None:
        """The edge stops: finish what started, refuse the rest (503), then close.

        A request running or waiting for the worker is answered, its answer the last one
        (`Connection: close`); requests parsed behind it, and one still arriving, get 503
        `shutting down`; an idle connection closes now.
        """
        if self._draining:
            return
        self._draining = True
        if not self._closed and not self._lingering:
            self._advance()

    def _drained(self) -> None:
        """Draining, nothing running or queued: refuse a request still arriving, or close."""
        if self._closed or self._lingering:
            return
        if self._in_message:
            # Part of a request arrived: it never reached a handler; say so, then close.
            self._parsing = False
            self._in_message = False
            data = encode_response(_SHUTTING_DOWN, keep_alive=False)
            self._send(data, keep_alive=False, linger=True)
        elif self._parsing and self._unread():
            return  # a request may be in the kernel's buffer: read it (data_received refuses it)
        else:
            self._close()

    def _unread(self) -> bool:
        """Whether the socket holds bytes (or an EOF) we have not read yet."""
        assert self._transport is not None
        poll = select.poll()
        poll.register(self._transport.get_extra_info("socket").fileno(), select.POLLIN)
        return bool(poll.poll(0))
