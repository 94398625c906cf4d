"""One client connection of an `HttpEdge`: the asyncio Protocol that parses and answers.

The cut is here because this is everything that happens per socket (llhttp callbacks, head and
body limits, answering in request order, flow control, lingering after an error) and nothing
that is shared across them. It is the edge's own machinery, not a separate component: it reads
and updates the `HttpEdge`'s private state (routes, pending-job count, worker queue, limits)
directly, as it did when both lived in one module, so the hot path pays for no extra calls.
"""

from __future__ import annotations

import asyncio
from collections import deque
from types import MappingProxyType
from typing import TYPE_CHECKING

import httptools

from actors._http_message import Request, Response, encode_response

if TYPE_CHECKING:
    from actors.edge import HttpEdge

__all__ = ["Connection"]

# Request line + headers; llhttp itself has no limit, so without one a client could grow memory.
_MAX_HEAD_BYTES = 64 * 1024
# How long an error-close keeps reading (and discarding) so the client sees the answer, not a RST.
_LINGER_S = 2.0
# Lower-cased header names as received, decoded once.
_NAMES: dict[bytes, str] = {}

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


class Connection(asyncio.Protocol):
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
        self._queue.append((None, encode_response(response, keep_alive=False)))

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
                self._send(encode_response(route, keep_alive, request.method == "HEAD"), keep_alive)
            elif route.blocking:
                if edge._pending >= edge._max_pending:
                    data = encode_response(_OVERLOADED, keep_alive, request.method == "HEAD")
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
