"""The thin shell every actor shares: dispatch by message type, poison handling, lifecycle.

``ReactiveActor`` dispatches a message of type ``T`` to ``on_T(msg, sender)``.
It reproduces Thespian's failure semantics itself (one retry, then a
``PoisonMessage`` back to the sender) so that it can always return the
actor's ``ThespianWatch``: Thespian drops the watch when ``receiveMessage``
raises. ``Worker`` adds the lifecycle every supervised leaf follows: ``Init``
-> ``on_start`` (rebuild state from the stores) -> ``Ready``; ``Peers``;
``Ping``; ``ActorExitRequest`` -> ``on_stop``. ``on_start`` may run more than once (see
below): it keeps what an earlier run acquired.

A ``StoreError`` is not a poison message: the store being down (a Couchbase outage) is
no fault of the message, and a restart would not bring the store back. So a handler that
raises one is logged (once per ``_STORE_LOG_EVERY_S``) and not retried: every message is
a hint, and the periodic timers catch up from the stores once they answer. A Worker whose
``on_start`` cannot read its stores still answers ``Ready`` and its heartbeats, and tries
``on_start`` again every ``_START_RETRY_S``, serving only once it succeeds: an outage does
not become a restart storm that escalates to the root.
"""

from __future__ import annotations

import copy
import os
import socket
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from thespian.actors import (
    Actor,
    ActorExitRequest,
    PoisonMessage,
    ThespianWatch,
    WakeupMessage,
    WatchMessage,
)

import runtime.loopback  # noqa: F401  (keeps Thespian on loopback in this process)
from actors import metrics
from actors.accept_board import AcceptBoard
from actors.edge import HttpEdge, Request, Route
from actors.listeners import borrow_edge, listeners_path
from config.settings import IngestSettings, PredictSettings, Settings
from messages.protocol import (
    Activate,
    Init,
    MessageFailed,
    Peers,
    Ping,
    Pong,
    Ready,
    StoppingNormally,
)
from runtime.group import set_process_name
from runtime.logs import configure_logging, get_logger
from storage.errors import StoreError

__all__ = ["NODE_CAPABILITY", "WORKER_PROCESS_PREFIX", "EdgeWorker", "ReactiveActor", "Worker"]

#: The capability that names a node; a placement requirement names the node wanted.
NODE_CAPABILITY = "rml.node"
#: Workers name their processes ``rml:<role>`` (what ``ps`` shows; how a member's node agent
#: finds workers left over from an earlier tree).
WORKER_PROCESS_PREFIX = "rml:"

_STORE_LOG_EVERY_S = 10.0
_START_RETRY_S = 1.0
_RETRY_START = "rml:retry-start"
# How often a worker adds what its threads counted to the node's metrics (actors.metrics).
_FLUSH_METRICS = "rml:flush-metrics"
_METRICS_FLUSH_S = 1.0


class ReactiveActor(Actor):
    """Dispatch to ``on_<MessageType>``; never lose the fd watch; report poison."""

    def __init__(self) -> None:
        super().__init__()
        self.name = type(self).__name__
        self.log: Any = get_logger(actor=self.name)
        self.watch_fds: tuple[int, ...] = ()
        self.supervisor: Any = None
        self._handlers: dict[type, Callable[[Any, Any], Any] | None] = {}
        self._store_logged_at = -_STORE_LOG_EVERY_S
        self._store_failures = 0

    @staticmethod
    def actorSystemCapabilityCheck(capabilities: dict[str, Any],  # noqa: N802 (Thespian's)
                                   requirements: dict[str, Any]) -> bool:
        """Placement: an actor created with ``{"rml.node": name}`` among its requirements
        starts only on the node that declares that name (``daemon.process`` puts it among
        each admin's capabilities); without one, anywhere it is created."""
        wanted = requirements.get(NODE_CAPABILITY)
        return wanted is None or capabilities.get(NODE_CAPABILITY) == wanted

    def receiveMessage(self, message: Any, sender: Any) -> Any:  # noqa: N802 (Thespian's name)
        try:
            self._dispatch(message, sender)
        except StoreError as exc:
            self._store_failed(message, exc)
        except Exception:
            self.log.warning("message_failed_once", message_type=type(message).__name__,
                             exc_info=True)
            try:
                self._dispatch(copy.deepcopy(message), sender)
            except StoreError as exc:
                self._store_failed(message, exc)
            except Exception:
                self._poisoned(message, sender, traceback.format_exc())
        return ThespianWatch(list(self.watch_fds)) if self.watch_fds else None

    def _store_failed(self, message: Any, exc: StoreError) -> None:
        """A handler found the store unavailable: log it (not every time), go on."""
        self._store_failures += 1
        now = time.monotonic()
        if now - self._store_logged_at >= _STORE_LOG_EVERY_S:
            self.log.warning("store_unavailable", message_type=type(message).__name__,
                             error=str(exc), failures=self._store_failures)
            self._store_logged_at, self._store_failures = now, 0

    def _dispatch(self, message: Any, sender: Any) -> None:
        kind = type(message)
        handler = self._handlers.get(kind, ...)
        if handler is ...:
            handler = None
            for klass in kind.__mro__:
                handler = getattr(self, f"on_{klass.__name__}", None)
                if handler is not None:
                    break
            self._handlers[kind] = handler
        if handler is None:
            self.log.debug("message_ignored", message_type=kind.__name__)
            return
        handler(message, sender)

    def _poisoned(self, message: Any, sender: Any, error: str) -> None:
        """A message failed twice: tell the sender (Thespian's contract) and the supervisor."""
        self.log.error("poison_message", message_type=type(message).__name__, error=error)
        if isinstance(message, ActorExitRequest | PoisonMessage):
            return
        failed = MessageFailed(self.name, type(message).__name__, repr(message)[:2000], error)
        if sender is not None and sender != self.supervisor:
            self.send(sender, PoisonMessage(message, error))
        if self.supervisor is not None:
            self.send(self.supervisor, failed)

    # Thespian system messages that every actor treats alike.

    def on_Ping(self, msg: Ping, sender: Any) -> None:  # noqa: N802
        self.send(sender, Pong(msg.correlation_id, self.name, os.getpid()))


    def on_PoisonMessage(self, msg: PoisonMessage, sender: Any) -> None:  # noqa: N802
        """Something we sent failed twice at its receiver: record it via the supervisor."""
        poison = msg.poisonMessage
        failed = MessageFailed(str(sender), type(poison).__name__, repr(poison)[:2000],
                               str(msg.details))
        if self.supervisor is not None:
            self.send(self.supervisor, failed)
        else:
            self.on_MessageFailed(failed, sender)

    def on_MessageFailed(self, msg: MessageFailed, sender: Any) -> None:  # noqa: N802
        """Without a supervisor to tell, at least log it."""
        self.log.error("dead_letter", failed_actor=msg.actor, message_type=msg.message_type,
                       error=msg.error)


class Worker(ReactiveActor):
    """A supervised leaf: ``Init`` -> ``on_start`` -> ``Ready``; the rest is the subclass's."""

    role = "worker"

    def __init__(self) -> None:
        super().__init__()
        self.settings: Settings | None = None
        self.peers = Peers(())
        self._init_id: str | None = None
        self.started = False  # on_start succeeded (it is retried while the store is down)
        self._init: Init | None = None
        self._promoted = False
        self._flushing = False  # the metrics timer runs

    # Hooks for subclasses.

    def on_start(self, init: Init) -> None:
        """Open stores and rebuild state from them (never from memory). Run again, every
        ``_START_RETRY_S``, while it raises ``StoreError``: keep what a run acquired."""

    def on_serve(self) -> None:
        """Open what faces the outside (an HTTP edge): right after ``on_start``, or when
        a warm standby is promoted."""

    def on_activate(self) -> None:
        """A standby is promoted: catch up with the stores (they moved on while it waited)."""

    def on_stop(self) -> None:
        """Release what ``on_start`` acquired (threads, sockets, stores)."""

    def on_peers(self) -> None:
        """The live addresses of other roles changed."""

    def on_timer(self, payload: Any) -> None:
        """A ``wakeupAfter`` fired."""

    def on_readable(self, fds: list[int]) -> None:
        """A watched file descriptor is readable."""

    def flush_metrics(self) -> None:
        """Add what this actor's threads counted since the last call to the node's metrics
        (``actors.metrics``): every second, and once more when it stops."""

    def stop_normally(self) -> None:
        """Exit on purpose: a ``transient`` child stopped this way is not restarted."""
        if self.supervisor is not None:
            self.send(self.supervisor, StoppingNormally(self.name))
        self.send(self.myAddress, ActorExitRequest())

    # Lifecycle messages.

    def _dispatch(self, message: Any, sender: Any) -> None:
        # Until on_start has succeeded, only the lifecycle runs: the handlers need the
        # state it rebuilds, and what they would act on is in the stores anyway.
        if self.started or isinstance(message, _BEFORE_START):
            super()._dispatch(message, sender)
        else:
            self.log.debug("message_before_start", message_type=type(message).__name__)

    def on_Init(self, msg: Init, sender: Any) -> None:  # noqa: N802
        if self._init_id != msg.correlation_id:
            self.name = msg.name
            self.settings = msg.settings
            self.supervisor = sender
            set_process_name(f"{WORKER_PROCESS_PREFIX}{msg.role}")
            configure_logging(msg.settings.log_dir, msg.settings.log_level, actor=msg.name)
            self.log = get_logger(actor=msg.name, role=msg.role)
            self._init = msg
            self._start()
            self._init_id = msg.correlation_id
        self.send(sender, Ready(self.name, msg.role, os.getpid(), msg.correlation_id))

    def _start(self) -> None:
        """``on_start`` (then ``on_serve``, unless a standby not yet promoted); while the
        stores cannot be read, release what the attempt opened and try again later."""
        init = self._init
        assert init is not None
        began = time.perf_counter()
        try:
            self.on_start(init)
        except StoreError as exc:
            # on_start runs again: it keeps what it acquired (its StoreBackend, whose
            # connection may still be on its way) and reads the stores again.
            self.log.warning("start_waits_for_store", error=str(exc), retry_s=_START_RETRY_S)
            self.wakeupAfter(_START_RETRY_S, payload=_RETRY_START)
            return
        self.started = True
        if not self._flushing:
            self._flushing = True
            self.wakeupAfter(_METRICS_FLUSH_S, payload=_FLUSH_METRICS)
        if not init.standby or self._promoted:
            self.on_serve()
        self.log.info("actor_started", standby=init.standby and not self._promoted,
                      start_ms=round((time.perf_counter() - began) * 1000, 1))

    def on_Activate(self, msg: Activate, sender: Any) -> None:  # noqa: N802
        if self._init_id != msg.correlation_id and not self.started:
            # Promoted while its start still waits for the store: it serves once started.
            self._promoted = True
            self.name = msg.name
            self.log = get_logger(actor=msg.name, role=msg.role)
            self._init_id = msg.correlation_id
        if self._init_id != msg.correlation_id:
            assert self.settings is not None
            began = time.perf_counter()
            standby = self.name
            self.name = msg.name
            # Serve first: the dead replica's clients wait on this, not on the catch-up
            # below, which only applies what the standby may have missed (a publish seen
            # a moment late, as by any replica between a publish and its notice). Both
            # steps are idempotent, so Thespian's redelivery after a failure repeats them.
            self.on_serve()
            serving = time.perf_counter()
            configure_logging(self.settings.log_dir, self.settings.log_level, actor=msg.name)
            self.log = get_logger(actor=msg.name, role=msg.role)
            self.on_activate()
            self._init_id = msg.correlation_id
            self.log.info("standby_promoted", standby=standby,
                          serve_ms=round((serving - began) * 1000, 1),
                          catch_up_ms=round((time.perf_counter() - serving) * 1000, 1))
        self.send(sender, Ready(self.name, msg.role, os.getpid(), msg.correlation_id))

    def on_Peers(self, msg: Peers, sender: Any) -> None:  # noqa: N802
        self.peers = msg
        if self.started:
            self.on_peers()

    def on_WakeupMessage(self, msg: WakeupMessage, sender: Any) -> None:  # noqa: N802
        if msg.payload == _RETRY_START:
            if not self.started and self._init is not None:
                self._start()
        elif msg.payload == _FLUSH_METRICS:
            self.wakeupAfter(_METRICS_FLUSH_S, payload=_FLUSH_METRICS)
            self._flush_metrics()
        elif self.started:
            self.on_timer(msg.payload)

    def on_WatchMessage(self, msg: WatchMessage, sender: Any) -> None:  # noqa: N802
        self.on_readable(list(msg.ready))

    def on_ActorExitRequest(self, msg: ActorExitRequest, sender: Any) -> None:  # noqa: N802
        self.watch_fds = ()
        try:
            self.on_stop()
        finally:
            self._flush_metrics()
            self.log.info("actor_stopped")

    def _flush_metrics(self) -> None:
        try:
            self.flush_metrics()
        except Exception:  # a metric must never take the actor down
            self.log.warning("metrics_flush_failed", exc_info=True)


#: What a Worker handles before its ``on_start`` has succeeded.
_BEFORE_START = (Init, Activate, Ping, Peers, WakeupMessage, ActorExitRequest, PoisonMessage,
                 MessageFailed)


class EdgeWorker(Worker):
    """A worker that serves HTTP from its own edge: the edge's threads start with the actor
    (``prepare_edge`` in ``on_start``), and it accepts from ``on_serve`` on (at once, or
    when a warm standby is promoted, when that is all that is left to do), from the
    listener its node's keeper lends (``actors.listeners``), or else from one of its own."""

    #: The request counter and latency histogram its edge counts into.
    edge_families: metrics.EdgeFamilies | None = None

    def __init__(self) -> None:
        super().__init__()
        self.edge: HttpEdge | None = None
        self.tally = metrics.Tally(self.edge_families) if self.edge_families else None

    def edge_settings(self) -> IngestSettings | PredictSettings:
        """The section with the edge's address, tokens and limits."""
        raise NotImplementedError

    def edge_routes(self) -> Sequence[Route]:
        """What the edge serves."""
        raise NotImplementedError

    def prepare_edge(self) -> None:
        """Build the edge from ``edge_settings`` and start its threads, with no port yet."""
        section = self.edge_settings()
        self.edge = HttpEdge(
            host=section.host, port=section.port, routes=self.edge_routes(),
            tokens=section.tokens, max_body_bytes=section.max_body_bytes,
            idle_timeout_s=section.idle_timeout_s, max_pending=section.max_pending,
            max_connections=section.max_connections,
            max_buffered_bytes=section.max_buffered_bytes,
            name=self.name, on_error=self._edge_error, tally=self.tally,
        )
        self.edge.prepare()

    def on_serve(self) -> None:
        assert self.edge is not None
        if not self.edge.port:
            self.edge.listen(*self._borrow_listener())

    def _borrow_listener(self) -> tuple[socket.socket | None, AcceptBoard | None]:
        """The node's listener for the edge's port and its accept board, lent by the
        keeper; None (the edge binds its own, with SO_REUSEPORT, and we say so) where no
        keeper lends one."""
        assert self.settings is not None
        section = self.edge_settings()
        if not section.port:
            return None, None  # a fresh port for each replica: nothing to share
        path = listeners_path(self.settings)
        try:
            return borrow_edge(path, section.host, section.port)
        except FileNotFoundError:  # no daemon's keeper here (actors run on their own)
            self.log.info("edge_binds_own_listener", reason=f"no {path}")
        except OSError as exc:
            self.log.warning("edge_binds_own_listener", reason=str(exc) or repr(exc))
        return None, None

    def flush_metrics(self) -> None:
        if self.tally is not None:
            self.tally.flush()

    def stop_edge(self) -> None:
        """Drain and stop the edge (``on_stop``)."""
        if self.edge is not None:
            self.edge.stop()

    def _edge_error(self, exc: BaseException, request: Request | None) -> None:
        self.log.error("edge_error", error=repr(exc), path=request.path if request else None)
