"""An actor's HTTP edge: an asyncio + httptools server in a thread of the actor's process.

Its event loop is uvloop's (asyncio's API over libuv) where uvloop is installed, else
asyncio's own (`new_event_loop`).

The cut is here so the hot path (parse, authorise, answer from an immutable snapshot) never
takes an actor hop: handlers read attributes the actor swaps by plain assignment, and wake the
actor through a `Waker` it watches with `ThespianWatch`. One slow or hostile client never stalls
the others: the loop only writes to transports, pauses reading where a client does not keep up,
and refuses overload (413, 431, 503) instead of buffering it.

`HttpEdge` (this module) owns what is shared: the listener, the loop thread, the route table
and the tokens, the single worker thread for blocking handlers, the sweeper that enforces
deadlines, and the drain at `stop`. Each socket is an `_http_connection.Connection`, which
routes, authorises (with `_authorized`) and answers its own requests; the values handlers see
(`Request`, `Response` and its fast `make_response`, `Route`) live in `_http_message`, below
both; `Waker` lives in `actors.waker`. All are re-exported here, the one module callers
import.

The listener is usually not the edge's own: in a daemon, the node's keeper binds each edge
port once and every replica accepts from a duplicate of that socket (`actors.listeners`),
so a replica that is stopped leaves new connections to the others, and one that dies
leaves its queued connections to them. The keeper lends the port's accept board with it
(`actors.accept_board`): a replica holding more connections than another leaves the next to
it, for a moment. Without a keeper (an edge on its own, a test), the edge binds its own
listener with SO_REUSEPORT.

Stopping drains, so nothing a handler acknowledged is lost: the listener closes first,
which closes only this edge's copy of a shared one (new and queued connections are
accepted by another replica; the kernel resets the queued ones, unread, only when the last
copy closes, or when this edge's own listener does); idle connections close at once;
a request whose handler runs or waits for the worker finishes and its answer is sent, with
`Connection: close`; requests that had not started (pipelined behind, or still arriving) are
answered 503 `shutting down` with `Retry-After: 1`; then those connections close (after the
client reads its answers). Whatever is still running at `stop`'s timeout is aborted.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
import logging
import queue
import socket
import threading
import time
from collections.abc import Callable, Collection, Sequence
from types import ModuleType

from actors._http_connection import Connection
from actors._http_message import (
    FastJson,
    Handler,
    Request,
    Response,
    Route,
    encode_response,
    make_response,
)
from actors.accept_board import DEFER_S, AcceptBoard
from actors.listeners import bind_listener
from actors.metrics import Tally
from actors.waker import Waker
from messages.auth import bearer_matches

_uvloop: ModuleType | None
try:  # with this module, which supervisors preload before they fork: one copy for all edges
    import uvloop as _uvloop
except ImportError:  # a platform without uvloop (a dependency everywhere else)
    _uvloop = None

__all__ = ["FastJson", "Handler", "HttpEdge", "Request", "Response", "Route", "Waker",
           "make_response", "new_event_loop"]

_log = logging.getLogger(__name__)

_INTERNAL = Response.error(500, "internal error")
# accept() failures that pass: the process is out of descriptors or memory (accepting resumes
# after _ACCEPT_RETRY_S, the backlog holding the clients meanwhile).
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_ACCEPT_RETRY_S = 1.0
# What stop() keeps of its timeout, after the drain, to abort the rest and join the threads.
_STOP_MARGIN_S = 0.25


def new_event_loop() -> asyncio.AbstractEventLoop:
    """The edge's event loop: uvloop's (libuv, its transports in C) where it is installed,
    else asyncio's own. Measured on the predictor's hot path: 12% more requests a second
    with 8 connections (docs/benchmarks.md)."""
    if _uvloop is None:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = _uvloop.new_event_loop()
    return loop


class HttpEdge:
    """An HTTP/1.1 server on its own thread and event loop, answering `routes`.

    `on_error(exception, request)` hears of every handler failure (answered 500), in the thread
    that ran the handler: the loop's for inline routes, the worker's for blocking ones.
    `loop_factory` makes the loop's event loop (default: `new_event_loop`).
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
        max_connections: int = 1024,
        max_buffered_bytes: int | None = None,
        reuse_port: bool = True,
        name: str = "edge",
        on_error: Callable[[BaseException, Request | None], None] | None = None,
        tally: Tally | None = None,
        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
    ) -> None:
        self._new_loop = loop_factory or new_event_loop
        self._routes: dict[str, dict[str, Route]] = {}
        # Routes with a fast lane, by their path as sent: (method as llhttp reports it, route).
        self._fast: dict[bytes, tuple[bytes, Route, FastJson]] = {}
        for route in routes:
            methods = self._routes.setdefault(route.path, {})
            if route.method.upper() in methods:
                raise ValueError(f"duplicate route {route.method} {route.path}")
            methods[route.method.upper()] = route
            if route.fast is not None:
                if route.blocking:
                    raise ValueError(f"route {route.method} {route.path}: a fast lane "
                                     "answers inline, its route cannot be blocking")
                self._fast[route.path.encode("latin-1")] = (
                    route.method.upper().encode(), route, route.fast)
        not_allowed = Response.error(405, "method not allowed").body
        self._allow = {
            path: Response(405, not_allowed, headers=(("Allow", ", ".join(sorted(methods))),))
            for path, methods in self._routes.items()
        }
        self._tokens = tuple(token.encode() for token in tokens if token)
        # The usual header, `Bearer <token>`, by length: compared whole, constant-time.
        self._bearers: dict[int, tuple[bytes, ...]] = {}
        for token in self._tokens:
            value = b"Bearer " + token
            self._bearers[len(value)] = (*self._bearers.get(len(value), ()), value)
        self._host, self._requested_port = host, port
        self._max_body_bytes = max_body_bytes
        self._idle_timeout_s = idle_timeout_s
        self._max_pending = max_pending
        # The whole edge's memory bound: at most this many connections (more get a 503 with
        # Retry-After), and request bodies held (arriving, queued or running) up to
        # `max_buffered_bytes` in all (default: four of the largest) before 503s.
        self._max_connections = max_connections
        self._max_held = (max_buffered_bytes if max_buffered_bytes is not None
                          else 4 * max_body_bytes)
        self._held = 0  # body bytes held by every connection (the loop's thread only)
        self._reuse_port = reuse_port
        self._name = name
        self._on_error = on_error
        # Requests by route and status, and their latency (None: not counted).
        self._tally = tally
        self._connections: set[Connection] = set()
        self._pending = 0
        self._served = 0
        self._port = 0
        self._jobs: queue.SimpleQueue[tuple[Connection, Route, Request, bool, float] | None]
        self._jobs = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        # The listening socket (the loop's thread only) and, when it is shared, its board.
        self._listener: socket.socket | None = None
        self._board: AcceptBoard | None = None
        self._deferred: asyncio.TimerHandle | None = None  # a connection left to another
        self._thread: threading.Thread | None = None
        self._worker: threading.Thread | None = None
        self._lifecycle = threading.Lock()
        self._stopped = False
        # By when stop() returns, and when the drain gives up: time.monotonic(), the loop's clock.
        self._stop_deadline = self._drain_deadline = 0.0
        self._draining = False  # read by connections; set in the loop
        self._drained: asyncio.Event | None = None  # set when the last connection has gone
        self._tasks: set[asyncio.Task[None]] = set()
        self._accepting = 0  # accepted, not yet a Connection

    @property
    def port(self) -> int:
        """The bound port (the real one when constructed with port=0)."""
        return self._port

    @property
    def requests_served(self) -> int:
        """Responses written so far, errors included."""
        return self._served

    def start(self, timeout_s: float = 5.0) -> None:
        """`prepare`, then `listen`: bind (an OSError is raised here) and serve."""
        self.prepare(timeout_s)
        try:
            self.listen()
        except BaseException:
            self.stop(timeout_s)
            raise

    def listen(self, sock: socket.socket | None = None,
               board: AcceptBoard | None = None) -> None:
        """Accept from `sock`, a listening socket shared with other processes (this edge's
        copy: its own to close), or else bind and listen now, in the caller's thread (an
        OSError is raised here); the prepared loop accepts from the next turn on (until then
        the kernel queues clients). `board` (its own to close) is the shared listener's
        `AcceptBoard`: then this edge leaves a new connection to a replica holding fewer.

        Cheap on purpose: a standby actor prepares its edge while it waits and only
        listens when promoted, so that taking a dead replica's place costs a borrowed
        listener (or a bind).
        """
        loop = self._loop
        if loop is None or self._stopped or self._port:
            if sock is not None:
                sock.close()
            if board is not None:
                board.close()
            if self._port:
                return  # listening already (a handler retried after a later failure)
            raise RuntimeError(f"{self._name} is not prepared, or stopped")
        if sock is None:
            sock = bind_listener(self._host, self._requested_port, reuse_port=self._reuse_port)
        sock.setblocking(False)
        self._port = sock.getsockname()[1]
        try:
            loop.call_soon_threadsafe(self._open, sock, board)
        except RuntimeError:  # the loop ended meanwhile (stopped)
            sock.close()
            if board is not None:
                board.close()
            raise

    def prepare(self, timeout_s: float = 5.0) -> None:
        """Start the loop and the worker threads, with no listener yet (see `listen`)."""
        with self._lifecycle:
            if self._thread is not None or self._stopped:
                raise RuntimeError(f"{self._name} already started or stopped")
            ready = threading.Event()
            failure: list[BaseException] = []
            self._thread = threading.Thread(
                target=self._serve, args=(ready, failure), name=self._name, daemon=True
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
        """Drain (see the module docstring), stop the loop, join the threads; safe to call twice.

        Returns within `timeout_s`: what is still running then is aborted. Called from a
        handler, it starts the drain and returns at once (a thread cannot wait for itself).
        """
        with self._lifecycle:
            if self._stopped:
                return
            self._stopped = True
            self._stop_deadline = time.monotonic() + timeout_s
            self._drain_deadline = self._stop_deadline - min(_STOP_MARGIN_S, timeout_s / 5)
        loop = self._loop
        scheduled = False
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(self._drain)
                scheduled = True
        if not scheduled:
            # No loop to drain (never started, or _serve drains itself): let the worker end.
            self._jobs.put(None)
        current = threading.current_thread()
        if current is self._thread or current is self._worker:
            return
        for thread in (self._thread, self._worker):
            if thread is not None:
                thread.join(max(0.0, self._stop_deadline - time.monotonic()))

    def _open(self, sock: socket.socket, board: AcceptBoard | None) -> None:
        """In the loop: accept from the listening `sock` (closed instead if we are stopping)."""
        if self._draining:
            sock.close()
            if board is not None:
                board.close()
            return
        if board is not None:
            board.holding(len(self._connections))
            if not board.claim():
                _log.warning("%s: every slot of the accept board is held; accepting "
                             "without it", self._name)
                board.close()
                board = None
        self._listener, self._board = sock, board
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)

    # Accepting: one connection per turn of the loop. asyncio's own server accepts a whole
    # burst per wakeup, so from a listener several replicas share, whichever ran first took
    # every connection of a client's pool (all 8 went to one of 2 replicas 35-42% of the
    # time), one per turn in about 1 run in 6 under load; with the board
    # (`actors.accept_board`), 4 and 4 in 9 of 10 runs of wrk, 5 and 3 in the other.

    def _readable(self) -> None:
        """In the loop: the listener has a connection queued; take it, or leave it to a
        replica holding fewer (for `DEFER_S`, see `_deferral_over`)."""
        board = self._board
        if board is not None:
            board.looked()
            other = board.less_loaded()
            if other is not None:
                assert self._listener is not None
                loop = asyncio.get_running_loop()
                loop.remove_reader(self._listener.fileno())
                self._deferred = loop.call_later(DEFER_S, self._deferral_over, *other)
                return
        self._accept()

    def _deferral_over(self, slot: int, accepts: int) -> None:
        """In the loop: the connection left to the replica in `slot` (which had accepted
        `accepts`) is still queued if it did not take one: then take it, and note that
        replica's miss (see `AcceptBoard.missed`)."""
        self._deferred = None
        listener, board = self._listener, self._board
        if listener is None or board is None:
            return  # drained meanwhile
        if board.accepts(slot) == accepts and self._accept():
            board.missed(slot)
        asyncio.get_running_loop().add_reader(listener.fileno(), self._readable)

    def _accept(self) -> bool:
        """In the loop: accept one queued connection, if any; True when one was."""
        listener = self._listener
        assert listener is not None
        try:
            conn, _ = listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return False  # another replica took it, or the client gave up
        except OSError as exc:
            if exc.errno not in _OUT_OF_RESOURCES:
                _log.error("%s: accept failed: %s", self._name, exc)
                return False
            _log.error("%s: accept failed, retrying in %s s: %s", self._name,
                       _ACCEPT_RETRY_S, exc)
            loop = asyncio.get_running_loop()
            loop.remove_reader(listener.fileno())
            self._deferred = loop.call_later(_ACCEPT_RETRY_S, self._resume_accepting)
            return False
        conn.setblocking(False)
        if self._board is not None:
            self._board.accepted()
        self._accepting += 1
        self._held_changed()
        loop = asyncio.get_running_loop()
        task = loop.create_task(self._connect(loop, conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    def _resume_accepting(self) -> None:
        self._deferred = None
        if self._listener is not None:
            asyncio.get_running_loop().add_reader(self._listener.fileno(), self._readable)

    async def _connect(self, loop: asyncio.AbstractEventLoop, conn: socket.socket) -> None:
        """Serve the accepted `conn` as a `Connection`."""
        try:
            await loop.connect_accepted_socket(lambda: Connection(self, loop), conn)
        except Exception as exc:  # the client went away before we could serve it
            conn.close()
            _log.debug("%s: accepted connection not served: %r", self._name, exc)
        finally:
            self._accepting -= 1
            self._held_changed()

    def _stop_accepting(self) -> None:
        """In the loop: close the listener (this edge's copy) and leave the board."""
        if self._deferred is not None:
            self._deferred.cancel()
            self._deferred = None
        listener, self._listener = self._listener, None
        if listener is not None:
            asyncio.get_running_loop().remove_reader(listener.fileno())
            listener.close()
        board, self._board = self._board, None
        if board is not None:
            board.close()

    def _serve(self, ready: threading.Event, failure: list[BaseException]) -> None:
        loop = self._new_loop()
        try:
            self._drained = asyncio.Event()
            sweeper = loop.create_task(self._sweep())
            loop.call_soon(ready.set)
            # Published only now, so stop() either reaches this loop or we see _stopped here.
            self._loop = loop
            if self._stopped:
                loop.call_soon(self._drain)
            loop.run_forever()
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(sweeper)
        except BaseException as error:  # reported to prepare()
            failure.append(error)
            ready.set()
        finally:
            loop.close()

    def _drain(self) -> None:
        """In the loop: close the listener, drain every connection, then stop (see `_finish`)."""
        if self._draining:
            return
        self._draining = True
        self._stop_accepting()
        for connection in list(self._connections):
            connection.drain()
        # Queued after every job the loop handed over (none are handed over from now on):
        # the worker runs them all, then ends.
        self._jobs.put(None)
        task = asyncio.get_running_loop().create_task(self._finish())
        self._tasks.add(task)  # the loop holds tasks weakly
        task.add_done_callback(self._tasks.discard)

    async def _finish(self) -> None:
        """Wait for the drained connections to go, abort what is left at the deadline, stop."""
        loop = asyncio.get_running_loop()
        assert self._drained is not None
        # A connection accepted just before the close is served (and drained) too.
        while (self._connections or self._accepting) and loop.time() < self._drain_deadline:
            self._drained.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), self._drain_deadline - loop.time())
            await asyncio.sleep(0)  # a connection accepted just before the close: let it in
        if self._connections:
            _log.warning(
                "%s: stop aborted %d connection(s) not done in time",
                self._name,
                len(self._connections),
            )
            for connection in list(self._connections):
                connection.expire()
            await asyncio.sleep(0)  # let the connection_lost callbacks abort() scheduled run
        loop.stop()

    def _connection_gone(self, connection: Connection) -> None:
        self._connections.discard(connection)
        self._held_changed()

    def _held_changed(self) -> None:
        """In the loop: a connection came or went; say so on the board, and to the drain."""
        if self._board is not None:
            self._board.holding(len(self._connections) + self._accepting)
        if (self._draining and not self._connections and not self._accepting
                and self._drained is not None):
            self._drained.set()

    async def _sweep(self) -> None:
        """Close connections whose client kept us waiting past their deadline."""
        loop = asyncio.get_running_loop()
        interval = min(max(self._idle_timeout_s / 4, 0.01), 1.0)
        timeout = self._idle_timeout_s
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            for connection in list(self._connections):
                deadline = connection.deadline
                if deadline is None:
                    continue
                if connection.active:  # answered since we last looked: the wait starts over
                    connection.active = False
                    connection.deadline = now + timeout
                elif deadline <= now:
                    connection.expire()

    def _authorized(self, header: str | None) -> bool:
        """Whether `header` (Authorization) carries one of the tokens; constant-time in content."""
        if header is None:
            return False
        candidates = self._bearers.get(len(header))
        if candidates is not None:  # the usual form, `Bearer <token>`, compared whole
            raw = header.encode("latin-1")
            matched = False
            for expected in candidates:  # no early exit: the time spent says nothing
                matched |= hmac.compare_digest(raw, expected)
            if matched:
                return True
        # Any other spelling: scheme in any case, spaces around the token.
        return bearer_matches(header, self._tokens)

    def _run(self, route: Route, request: Request, keep_alive: bool,
             began: float | None = None) -> bytes:
        """The handler's answer as bytes; counted in the tally, timed from ``began`` (a
        blocking request's hand-over to the worker) or from now."""
        tally = self._tally
        if tally is not None and began is None:
            began = time.perf_counter()
        try:
            response = route.handler(request)
            data = encode_response(response, keep_alive, request.method == "HEAD")
            status = response.status
        except Exception as error:
            self._report(error, request)
            data, status = encode_response(_INTERNAL, keep_alive, request.method == "HEAD"), 500
        if tally is not None:
            assert began is not None
            tally.record(route.path, status, time.perf_counter() - began)
        return data

    def _refused(self, path: str, status: int) -> None:
        """A request answered by the edge itself (401, 404, 405, 503 overloaded, ...)."""
        if self._tally is not None:
            self._tally.record(path if path in self._routes else "unmatched", status)

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
            connection, route, request, keep_alive, began = job
            data = self._run(route, request, keep_alive, began)
            loop = self._loop
            if loop is None:
                return
            try:
                loop.call_soon_threadsafe(connection.blocking_done, data, keep_alive)
            except RuntimeError:  # the loop is closed: stop() gave up waiting for us
                _log.warning("%s: a blocking handler finished after stop()", self._name)
                return
