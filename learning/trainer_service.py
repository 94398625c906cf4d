"""The external trainer: a small HTTP service that fits a job's pipeline and answers its artifact.

Run it as its own process (``rml trainer --port P --token T`` or
``python -m learning.trainer_service --port P --token T``; the token may come from
``$RML_TRAINER_TOKEN`` instead, out of ``ps``), and point a daemon at it with
``[learning] trainer = "http://127.0.0.1:P"`` and ``trainer_token``.

``POST /train`` (bearer token; the msgpack job of ``learning.external``) -> ``200`` with the
fitted pipeline as skops bytes; ``400`` a malformed job, ``401`` no or a wrong token,
``411``/``413`` no or too large a body, ``415`` another content type, ``500`` the fit failed
(each ``{"error": "..."}``). ``GET /health`` -> ``{"ok": true, "jobs": n}`` (no token).
A thread per request (stdlib ``ThreadingHTTPServer``): jobs are few and long, the fit is in
NumPy/scikit-learn code, and no pickle crosses the wire either way.
"""

from __future__ import annotations

import argparse
import hmac
import json
import os
import sys
import threading
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from learning.artifacts import dump_model
from learning.external import ARTIFACT_TYPE, JOB_TYPE, BadTrainingJob, TrainingJob, decode_job
from learning.pipeline import fit_locally

__all__ = ["DEFAULT_MAX_BODY_BYTES", "TrainerServer", "add_arguments", "main", "make_server",
           "run", "train_artifact"]

#: A training matrix of ~1.3 M rows x 12 features; a larger job is refused with 413.
DEFAULT_MAX_BODY_BYTES = 128 * 1024 * 1024
_JOB_TYPES = frozenset({JOB_TYPE, "application/x-msgpack", "application/vnd.msgpack"})

#: Turns a decoded job into artifact bytes (the real one fits; tests substitute bad ones).
Produce = Callable[[TrainingJob], bytes]


def train_artifact(job: TrainingJob) -> bytes:
    """Fit the job's pipeline on the rows and return it as skops bytes."""
    return dump_model(fit_locally(job.X, job.y, job.feature_names, job.job))


class TrainerServer(ThreadingHTTPServer):
    """The HTTP server and what its handlers share: tokens, the fit, limits, a job counter."""

    daemon_threads = True  # a stalled client never keeps the process from exiting

    def __init__(self, address: tuple[str, int], tokens: Sequence[str], produce: Produce,
                 max_body_bytes: int) -> None:
        super().__init__(address, _Handler)
        self.tokens = tuple(t.encode() for t in tokens)
        self.produce = produce
        self.max_body_bytes = max_body_bytes
        self.jobs = 0  # jobs answered with an artifact
        self.lock = threading.Lock()

    def authorised(self, header: str | None) -> bool:
        """Whether ``header`` is ``Bearer <one of our tokens>`` (constant-time compare)."""
        scheme, _, given = (header or "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        found = False
        for token in self.tokens:
            found |= hmac.compare_digest(token, given.strip().encode())
        return found


class _Handler(BaseHTTPRequestHandler):
    server: TrainerServer
    protocol_version = "HTTP/1.1"
    server_version = "rml-trainer"

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path != "/health":
            self._error(404, f"no route {self.path}")
            return
        with self.server.lock:
            jobs = self.server.jobs
        self._answer(200, "application/json", json.dumps({"ok": True, "jobs": jobs}).encode())

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
        if length is None or not length.isdigit():
            self._error(411, "a Content-Length is required")
            return
        if int(length) > self.server.max_body_bytes:
            self._error(413, f"body of {length} bytes is over {self.server.max_body_bytes}")
            return
        body = self.rfile.read(int(length))
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

    def _error(self, status: int, reason: str) -> None:
        if status in (401, 411, 413):
            self.close_connection = True  # the body was not read: the stream is out of step
        self._answer(status, "application/json", json.dumps({"error": reason}).encode())

    def _answer(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's name)
        sys.stderr.write(f"rml-trainer {self.address_string()} {format % args}\n")


def make_server(host: str, port: int, tokens: Sequence[str], produce: Produce = train_artifact,
                max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> TrainerServer:
    """A bound trainer server (``port`` 0 picks a free one: ``server.server_address``)."""
    if not tokens or any(len(t) < 8 for t in tokens):
        raise ValueError("the trainer needs bearer tokens of at least 8 characters")
    return TrainerServer((host, port), tokens, produce, max_body_bytes)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The service's command-line options (shared with ``rml trainer``)."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, required=True, help="port to bind (0: any free)")
    parser.add_argument("--token", action="append", default=None,
                        help="accepted bearer token (repeatable; else $RML_TRAINER_TOKEN)")
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES)


def run(args: argparse.Namespace, produce: Produce = train_artifact) -> int:
    """Serve until interrupted (SIGINT or SIGTERM); print the address once bound."""
    import signal

    tokens = args.token or [t for t in [os.environ.get("RML_TRAINER_TOKEN", "")] if t]
    try:
        server = make_server(args.host, args.port, tokens, produce, args.max_body_bytes)
    except (ValueError, OSError) as exc:
        print(f"rml trainer: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    host, port = server.server_address[:2]
    print(f"rml trainer: listening on http://{host!s}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m learning.trainer_service --port P --token T``."""
    parser = argparse.ArgumentParser(prog="rml-trainer", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
