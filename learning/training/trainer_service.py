"""The external trainer: a small HTTP service that fits a job's pipeline and answers its artifact.

Run it as its own process (``python -m learning.training.trainer_service --port P --token T``; the
token may come from ``$RML_TRAINER_TOKEN`` instead, out of ``ps``), and point a daemon at it
with ``[learning] trainer = "http://127.0.0.1:P"`` and ``trainer_token``. The token travels
over plain HTTP with the training data: keep the service on loopback or a private network
(or behind TLS termination).

``POST /train`` (bearer token; the msgpack job of ``learning.training.external``) -> ``200``
with the fitted pipeline as skops bytes; ``400`` a malformed job, ``401`` no or a wrong token,
``411``/``413`` no or too large a body, ``415`` another content type, ``500`` the fit failed,
``503`` with ``Retry-After`` when ``max_jobs`` jobs are already running (each
``{"error": "..."}``). ``GET /health`` -> ``{"ok": true, "jobs": n, "running": n}`` (no token).
Every error answer closes the connection (a body left unread would put the stream out of
step).

A thread per connection (stdlib ``ThreadingHTTPServer``): jobs are few and long, the fit is
in NumPy/scikit-learn code, and no pickle crosses the wire either way. Untrusted clients are
bounded three ways: at most ``max_connections`` connections at once (past that, a ``503`` and
the connection closed, before any thread starts), every read or write on a connection gives
up after ``request_timeout_s``, and at most ``max_jobs`` bodies are read and fitted at once.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from learning.models.artifacts import dump_model
from learning.training.external import (
    ARTIFACT_TYPE,
    JOB_TYPE,
    BadTrainingJob,
    TrainingJob,
    decode_job,
)
from learning.training.pipeline import fit_locally
from messages.auth import bearer_matches
from messages.codec import MSGPACK_MEDIA_TYPES

__all__ = ["DEFAULT_MAX_BODY_BYTES", "DEFAULT_MAX_CONNECTIONS", "DEFAULT_MAX_JOBS",
           "DEFAULT_REQUEST_TIMEOUT_S", "RETRY_AFTER_S", "TrainerServer", "add_arguments",
           "main", "make_server", "run", "train_artifact"]

#: A training matrix of ~1.3 M rows x 12 features; a larger job is refused with 413.
DEFAULT_MAX_BODY_BYTES = 128 * 1024 * 1024
#: Jobs read and fitted at once: each holds its body and a copy of X (2 x 128 MiB at most)
#: and a core; the next one is answered 503.
DEFAULT_MAX_JOBS = 2
#: Connections (so threads) at once; the next one is answered 503 and closed.
DEFAULT_MAX_CONNECTIONS = 32
#: A connection that sends or takes nothing for this long is closed (a client that connects
#: and stays silent would otherwise hold a thread for ever).
DEFAULT_REQUEST_TIMEOUT_S = 30.0
#: What a 503 asks the client to wait: a fit takes seconds to a minute.
RETRY_AFTER_S = 10
_JOB_TYPES = frozenset({JOB_TYPE, *MSGPACK_MEDIA_TYPES})

#: Turns a decoded job into artifact bytes (the real one fits; tests substitute bad ones).
Produce = Callable[[TrainingJob], bytes]


def train_artifact(job: TrainingJob) -> bytes:
    """Fit the job's pipeline on the rows and return it as skops bytes."""
    return dump_model(fit_locally(job.X, job.y, job.feature_names, job.job))


class TrainerServer(ThreadingHTTPServer):
    """The HTTP server and what its handlers share: tokens, the fit, limits, job counters."""

    daemon_threads = True  # a stalled client never keeps the process from exiting

    def __init__(self, address: tuple[str, int], tokens: Sequence[str], produce: Produce,
                 max_body_bytes: int, max_jobs: int = DEFAULT_MAX_JOBS,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S) -> None:
        super().__init__(address, _Handler)
        self.tokens = tuple(t.encode() for t in tokens)
        self.produce = produce
        self.max_body_bytes = max_body_bytes
        self.request_timeout_s = request_timeout_s
        self.job_slots = threading.BoundedSemaphore(max_jobs)
        self.connection_slots = threading.BoundedSemaphore(max_connections)
        self.jobs = 0  # jobs answered with an artifact
        self.running = 0  # jobs holding a slot now
        self.lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        """Start the connection's thread, or answer 503 and close it when at the cap."""
        if not self.connection_slots.acquire(blocking=False):
            _refuse_connection(request)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread started: nothing else will give the slot back
            self.connection_slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Serve the connection, then give its slot back."""
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.connection_slots.release()

    def authorised(self, header: str | None) -> bool:
        """Whether ``header`` is ``Bearer <one of our tokens>`` (constant-time compare)."""
        # utf-8, like the tokens: http.client sends the header as latin-1 and http.server
        # decodes it back, so the text equals the configured token, even a non-ASCII one.
        return bearer_matches(header, self.tokens, encoding="utf-8")


def _refuse_connection(request: socket.socket) -> None:
    """Best effort, never blocking the accept loop: a 503 on a connection over the cap."""
    body = json.dumps({"error": "busy: too many connections"}).encode()
    head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: {RETRY_AFTER_S}\r\n"
            f"Connection: close\r\n\r\n").encode()
    try:
        request.setblocking(False)
        request.send(head + body)
    except OSError:
        pass


class _Handler(BaseHTTPRequestHandler):
    server: TrainerServer
    protocol_version = "HTTP/1.1"
    server_version = "rml-trainer"

    def setup(self) -> None:
        """Every read and write on this connection gives up after the server's timeout."""
        super().setup()
        self.connection.settimeout(self.server.request_timeout_s)

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path != "/health":
            self._error(404, f"no route {self.path}")
            return
        with self.server.lock:
            jobs, running = self.server.jobs, self.server.running
        self._answer(200, "application/json",
                     json.dumps({"ok": True, "jobs": jobs, "running": running}).encode())

    def do_POST(self) -> None:  # noqa: N802
        if self.path != "/train":
            self._error(404, f"no route {self.path}")
            return
        if not self.server.authorised(self.headers.get("Authorization")):
            self._error(401, "missing or wrong bearer token")
            return
        kind = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if kind not in _JOB_TYPES:
            self._error(415, f"expected {JOB_TYPE}, got {kind or 'no content type'}")
            return
        length = self.headers.get("Content-Length")
        if length is None or not (length.isascii() and length.isdigit()):
            self._error(411, "a Content-Length is required")
            return
        if int(length) > self.server.max_body_bytes:
            self._error(413, f"body of {length} bytes is over {self.server.max_body_bytes}")
            return
        # The slot is taken before the body is read, so it bounds the bodies held at once too.
        if not self.server.job_slots.acquire(blocking=False):
            self._error(503, "busy: the trainer is running as many jobs as it takes",
                        retry_after=True)
            return
        with self.server.lock:
            self.server.running += 1
        try:
            self._train(int(length))
        finally:
            with self.server.lock:
                self.server.running -= 1
            self.server.job_slots.release()

    def _train(self, length: int) -> None:
        body = self.rfile.read(length)
        try:
            job = decode_job(body)
        except BadTrainingJob as exc:
            self._error(400, f"bad_job: {exc}")
            return
        try:
            artifact = self.server.produce(job)
        except Exception as exc:  # the fit's failure is this job's answer, not the server's
            self._error(500, f"fit_failed: {type(exc).__name__}: {exc}")
            return
        with self.server.lock:
            self.server.jobs += 1
        self._answer(200, ARTIFACT_TYPE, artifact)

    def _error(self, status: int, reason: str, retry_after: bool = False) -> None:
        # Every error closes: a body may be left unread, and the stream would be out of step.
        self.close_connection = True
        headers = (("Retry-After", str(RETRY_AFTER_S)),) if retry_after else ()
        self._answer(status, "application/json", json.dumps({"error": reason}).encode(),
                     headers)

    def _answer(self, status: int, content_type: str, body: bytes,
                headers: Sequence[tuple[str, str]] = ()) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's name)
        sys.stderr.write(f"rml-trainer {self.address_string()} {format % args}\n")


def make_server(host: str, port: int, tokens: Sequence[str], produce: Produce = train_artifact,
                max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, max_jobs: int = DEFAULT_MAX_JOBS,
                max_connections: int = DEFAULT_MAX_CONNECTIONS,
                request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S) -> TrainerServer:
    """A bound trainer server (``port`` 0 picks a free one: ``server.server_address``)."""
    if not tokens or any(len(t) < 8 for t in tokens):
        raise ValueError("the trainer needs bearer tokens of at least 8 characters")
    for name, value in (("max_body_bytes", max_body_bytes), ("max_jobs", max_jobs),
                        ("max_connections", max_connections)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if not (math.isfinite(request_timeout_s) and request_timeout_s > 0):
        raise ValueError(f"request_timeout_s must be a positive number, got {request_timeout_s}")
    return TrainerServer((host, port), tokens, produce, max_body_bytes, max_jobs,
                         max_connections, request_timeout_s)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The service's command-line options (shared with ``tests.faulty_trainer``)."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, required=True, help="port to bind (0: any free)")
    parser.add_argument("--token", action="append", default=None,
                        help="accepted bearer token (repeatable; else $RML_TRAINER_TOKEN)")
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES)
    parser.add_argument("--max-jobs", type=int, default=DEFAULT_MAX_JOBS,
                        help=f"jobs read and fitted at once ({DEFAULT_MAX_JOBS}); then 503")
    parser.add_argument("--max-connections", type=int, default=DEFAULT_MAX_CONNECTIONS,
                        help=f"connections at once ({DEFAULT_MAX_CONNECTIONS}); then 503")
    parser.add_argument("--request-timeout-s", type=float, default=DEFAULT_REQUEST_TIMEOUT_S,
                        help="close a connection idle this long "
                             f"({DEFAULT_REQUEST_TIMEOUT_S:g})")


def run(args: argparse.Namespace, produce: Produce = train_artifact) -> int:
    """Serve until interrupted (SIGINT or SIGTERM); print the address once bound."""
    import signal

    tokens = args.token or [t for t in [os.environ.get("RML_TRAINER_TOKEN", "")] if t]
    try:
        server = make_server(args.host, args.port, tokens, produce, args.max_body_bytes,
                             args.max_jobs, args.max_connections, args.request_timeout_s)
    except (ValueError, OSError) as exc:
        print(f"rml-trainer: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    host, port = server.server_address[:2]
    print(f"rml-trainer: listening on http://{host!s}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m learning.training.trainer_service --port P --token T``."""
    parser = argparse.ArgumentParser(prog="rml-trainer", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
