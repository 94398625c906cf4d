"""``ThespianPredictionClient``: the same predictions through Thespian, for Python services on
the daemon's host.

The request goes to the root supervisor (the one actor with a global name), which hands it
to a live predictor; the predictor answers this client directly. Thespian's transport is
unauthenticated pickle, so the daemon keeps it on loopback: this client binds its own
Thespian socket there too (``runtime.loopback``, applied before its actor system starts)
and is only for processes on the daemon's host. Elsewhere, use ``PredictionClient``.

The messages are the daemon's own classes (``messages.protocol``), so this module needs
the daemon's package importable; it imports it (and Thespian) only when a client is made.
"""

from __future__ import annotations

import json
import random
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from rml_client.errors import (
    BadRequest,
    ConnectionFailed,
    DeadlineExceeded,
    HttpStatusError,
    RmlError,
    Unavailable,
    UnexpectedAnswer,
)
from rml_client.prediction import query_payload
from rml_client.results import Prediction

__all__ = ["ROOT_CLASS", "ROOT_NAME", "ThespianPredictionClient"]

#: The root supervisor's class and global name (``supervision.spec``, not imported here: it
#: needs the daemon's configuration package).
ROOT_CLASS = "supervision.supervisor.Supervisor"
ROOT_NAME = "rml-root"
DEFAULT_ADMIN_PORT = 19471


class ThespianPredictionClient:
    """Predictions through Thespian's ``PredictRequest``, from the daemon's host.

    ``admin_port`` is the daemon's ``[actor_system] admin_port`` (of the leader, on a
    cluster: the root runs there), ``host`` its ``[actor_system] bind`` (loopback unless
    the daemon was told otherwise). The same ``predict`` as ``PredictionClient``, the same
    answers and errors; an answer that does not come within ``timeout_s`` (or a 503) is
    asked again, up to ``retries`` more times within ``deadline_s``. Thespian's external
    interface is not thread-safe: calls are serialized; use one client per thread.

    Example::

        with ThespianPredictionClient(admin_port=19471) as client:
            answer = client.predict(location_id=3)
    """

    def __init__(self, admin_port: int = DEFAULT_ADMIN_PORT, *, host: str = "127.0.0.1",
                 timeout_s: float = 10.0, retries: int = 3,
                 deadline_s: float | None = 30.0) -> None:
        if timeout_s <= 0 or retries < 0 or (deadline_s is not None and deadline_s <= 0):
            raise ValueError("timeout_s and deadline_s must be positive, retries at least 0")
        self.host, self.admin_port = host, admin_port
        self.timeout_s, self.retries, self.deadline_s = timeout_s, retries, deadline_s
        from messages import codec, protocol
        from runtime.loopback import bind_thespian_to, connect_only

        bind_thespian_to(host)  # before any actor system of this process binds a socket
        self._protocol, self._codec = protocol, codec
        self._connect_only = connect_only
        self._asys: Any = None
        self._root: Any = None
        self._lock = threading.Lock()
        with self._lock:
            self._connect()

    def _connect(self) -> None:
        """A Thespian client of the admin, and the root's address. The admin is probed
        first, for a clear error, and Thespian is kept from starting an admin of its own in
        this process if the daemon stops between the probe and the connection."""
        try:
            socket.create_connection((self.host, self.admin_port), timeout=2.0).close()
        except OSError as exc:
            raise ConnectionFailed(f"no daemon answers on {self.host}:{self.admin_port} "
                                   f"(its [actor_system] admin_port): {exc}") from exc
        from thespian.actors import ActorSystem

        try:
            with self._connect_only():  # a daemon stopped since the probe: no admin here
                asys = ActorSystem("multiprocTCPBase", {"Admin Port": self.admin_port},
                                   logDefs=None, transientUnique=True)
            try:
                root = asys.createActor(ROOT_CLASS, globalName=ROOT_NAME)
            except BaseException:
                _release(asys)
                raise
        except Exception as exc:  # Thespian's own errors: an admin that does not answer
            raise ConnectionFailed(f"Thespian admin {self.host}:{self.admin_port}: "
                                   f"{type(exc).__name__}: {exc}") from exc
        self._asys, self._root = asys, root

    def _disconnect(self) -> None:
        if self._asys is not None:
            _release(self._asys)
        self._asys = self._root = None

    def close(self) -> None:
        """Let go of this client's Thespian sockets (the daemon is not touched)."""
        with self._lock:
            self._disconnect()

    def __enter__(self) -> ThespianPredictionClient:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    def predict(self, location_id: int | None = None, *,
                features: Mapping[str, float] | None = None,
                deadline_ms: float | None = None) -> Prediction:
        """As ``PredictionClient.predict``: by ``location_id`` or ``features``; the request
        is checked by the daemon's own codec first, so a bad one is the same ``BadRequest``
        as over HTTP."""
        payload = json.dumps(query_payload(location_id, features, deadline_ms)).encode()
        try:
            query = self._codec.decode_predict_query(payload, "application/json")
        except self._codec.BodyError as exc:
            raise BadRequest(400, str(exc)) from None
        deadline = None if self.deadline_s is None else time.monotonic() + self.deadline_s
        failures = 0
        with self._lock:
            while True:
                timeout = self.timeout_s
                if deadline is not None:
                    timeout = min(timeout, deadline - time.monotonic())
                    if timeout <= 0:
                        raise DeadlineExceeded(f"no prediction within {self.deadline_s} s "
                                               f"({failures} failed attempts)")
                error = self._attempt(query, timeout)
                if isinstance(error, Prediction):
                    return error
                if isinstance(error, BadRequest) or failures >= self.retries:
                    raise error
                wait = min(1.0, 0.05 * 2 ** failures) * random.uniform(0.5, 1.0)
                if deadline is not None and time.monotonic() + wait >= deadline:
                    raise error
                failures += 1
                time.sleep(wait)

    def _attempt(self, query: Any, timeout_s: float) -> Prediction | RmlError:
        """One ask: the prediction, or the error it came to (raised only by the caller)."""
        protocol = self._protocol
        correlation_id = uuid.uuid4().hex
        request = protocol.PredictRequest(correlation_id, query.location_id, query.features,
                                          query.deadline_ms)
        try:
            if self._asys is None:
                self._connect()
            answer = self._ask(request, correlation_id, timeout_s)
        except ConnectionFailed as exc:
            self._disconnect()
            return exc
        except Exception as exc:  # Thespian's own: the admin went away mid-ask
            self._disconnect()
            return ConnectionFailed(f"Thespian: {type(exc).__name__}: {exc}")
        if answer is None:
            self._disconnect()  # the daemon may have restarted: ask the new root next time
            return DeadlineExceeded(f"no answer through Thespian within {timeout_s:.3g} s")
        if isinstance(answer, protocol.Prediction):
            return Prediction(answer.label, answer.probability, answer.model_version,
                              answer.feature_collection_id, answer.fallback)
        if isinstance(answer, protocol.PredictionError):
            if answer.status == 400:
                return BadRequest(400, answer.reason)
            if answer.status == 503:
                return Unavailable(503, answer.reason)
            return HttpStatusError(answer.status, answer.reason)
        return UnexpectedAnswer(f"not a prediction: {answer!r:.200}")

    def _ask(self, request: Any, correlation_id: str, timeout_s: float) -> Any:
        """The answer that repeats ``correlation_id`` (None at the timeout). An earlier
        request's late answer can arrive first: it is passed over."""
        until = time.monotonic() + timeout_s
        answer = self._asys.ask(self._root, request, timeout_s)
        while answer is not None and getattr(answer, "correlation_id", None) != correlation_id:
            remaining = until - time.monotonic()
            if remaining <= 0:
                return None
            answer = self._asys.listen(remaining)
        return answer

    def __repr__(self) -> str:
        return f"ThespianPredictionClient(admin_port={self.admin_port}, host={self.host!r})"


def _release(asys: Any) -> None:
    """Close a transient Thespian client's sockets. Not ``shutdown()``: from a client, that
    asks the admin to shut the whole actor system down."""
    transport = getattr(getattr(asys, "_systemBase", None), "transport", None)
    if transport is not None:
        transport.close()
