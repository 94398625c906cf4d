"""An actor's HTTP edge: an asyncio + httptools server in a thread of the actor's process.

The cut is here so the hot path (parse, authorise, answer from an immutable snapshot) never
takes an actor hop: handlers read attributes the actor swaps by plain assignment, and wake the
actor through a `Waker` it watches with `ThespianWatch`. One slow or hostile client never stalls
the others: the loop only writes to transports, pauses reading where a client does not keep up,
and refuses overload (413, 431, 503) instead of buffering it.

`HttpEdge` (this module) owns what is shared: the listener, the loop thread, routing and
authorisation, the single worker thread for blocking handlers, and the sweeper that enforces
deadlines. Each socket is an `_http_connection.Connection`; the values handlers see
(`Request`, `Response`, `Route`) live in `_http_message`, below both; `Waker` lives in
`actors.waker`. All are re-exported here, the one module callers import.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import queue
import socket
import threading
from collections.abc import Callable, Collection, Sequence

from actors._http_connection import Connection
from actors._http_message import Handler, Request, Response, Route, encode_response
from actors.waker import Waker

__all__ = ["Handler", "HttpEdge", "Request", "Response", "Route", "Waker"]

_log = logging.getLogger(__name__)

_INTERNAL = Response.error(500, "internal error")
_UNAUTHORIZED = Response(
    401,
    Response.error(401, "missing or invalid bearer token").body,
    headers=(("WWW-Authenticate", "Bearer"),),
)
_NOT_FOUND = Response.error(404, "not found")


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
        self._connections: set[Connection] = set()
        self._pending = 0
        self._served = 0
        self._port = 0
        self._jobs: queue.SimpleQueue[tuple[Connection, Route, Request, bool] | None]
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
                loop.create_server(lambda: Connection(self, loop), sock=sock, backlog=1024)
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
            return encode_response(route.handler(request), keep_alive, request.method == "HEAD")
        except Exception as error:
            self._report(error, request)
            return encode_response(_INTERNAL, keep_alive, request.method == "HEAD")

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
