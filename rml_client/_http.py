"""One keep-alive HTTP/1.1 connection, and the retry policy around it.

Why not ``http.client``: it parses every answer's headers with the ``email`` package. A
client sending thousands of predictions a second on the daemon's host takes its CPU from
the daemon: measured here (``POST /model``, one keep-alive connection), ``http.client``
and ``json`` cost about 120 us of client CPU a prediction, ``PredictionClient`` over this
module about 55 us, a bare socket that parses nothing about 33 us. This module speaks the
small part of HTTP/1.1 a client of the daemon needs (a request with a body; an answer
framed by ``Content-Length``, chunked, or the connection's close) on a plain socket.

The cut is ``Transport.request``: one request in, the final answer out, with every retry
(a broken or stale connection, a 502/503/504 honouring ``Retry-After``) and the deadline
handled inside, and nothing of sockets or HTTP framing outside.
"""

from __future__ import annotations

import email.utils
import math
import random
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple
from urllib.parse import urlsplit

from rml_client.errors import ConnectionFailed, DeadlineExceeded, UnexpectedAnswer

__all__ = ["Answer", "Endpoint", "Transport", "retry_after_s"]

#: Statuses that say "not now": a gateway or a proxy in front of it sends them while a
#: replica restarts, and the daemon's edges while overloaded.
RETRYABLE = frozenset({502, 503, 504})
_MAX_HEAD = 64 * 1024
_USER_AGENT = "rml-client/0.1"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a service listens: ``http``/``https``, host, port and a path prefix."""

    scheme: str
    host: str
    port: int
    prefix: str = ""

    @classmethod
    def parse(cls, base_url: str | None, host: str | None, port: int | None,
              default_port: int) -> Endpoint:
        """From ``base_url`` (``http://host:port[/prefix]``), or else ``host`` and ``port``."""
        if base_url is None:
            return cls("http", host or "127.0.0.1", default_port if port is None else port)
        if host is not None or port is not None:
            raise ValueError("give base_url or host/port, not both")
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url must be http://host[:port] or https://...: {base_url!r}")
        if parts.query or parts.fragment or parts.username:
            raise ValueError(f"base_url takes no query, fragment or user: {base_url!r}")
        default = 443 if parts.scheme == "https" else 80
        return cls(parts.scheme, parts.hostname, parts.port or default,
                   parts.path.rstrip("/"))

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host_header}{self.prefix}"


class Answer(NamedTuple):
    """The final answer to a request: status, headers (lower-case names), body, and how
    many times the request was sent (1: no retry)."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    attempts: int


def retry_after_s(value: str | None) -> float | None:
    """A ``Retry-After`` header in seconds (delta-seconds or an HTTP date), or None."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return max(0.0, seconds) if math.isfinite(seconds) else None


class _Garbled(ValueError):
    """The bytes that came back are not an HTTP/1.x answer."""


class _Broken(Exception):
    """An exchange failed. ``sent``: the request may have reached the server; ``stale``: a
    reused keep-alive connection that the server had closed (no byte came back)."""

    def __init__(self, cause: BaseException, sent: bool, stale: bool) -> None:
        super().__init__(str(cause))
        self.cause, self.sent, self.stale = cause, sent, stale


class _Connection:
    """A socket and what has been read from it but not yet parsed."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.timeout_s = sock.gettimeout()  # settimeout is two fcntl calls: only on a change
        self.buffer = bytearray()
        self.got_bytes = False  # during the current exchange

    @classmethod
    def open(cls, endpoint: Endpoint, timeout_s: float,
             tls: ssl.SSLContext | None) -> _Connection:
        sock = socket.create_connection((endpoint.host, endpoint.port), timeout=timeout_s)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if tls is not None:
                sock = tls.wrap_socket(sock, server_hostname=endpoint.host)
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    def close(self) -> None:
        self.sock.close()

    def _fill(self, deadline: float) -> bool:
        """Read what the server sent next into the buffer; False at the end of the stream."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("timed out waiting for the answer")
        if self.timeout_s is None or self.timeout_s - remaining > 0.01:
            self.timeout_s = remaining  # a slow answer: keep to the deadline (within 10 ms)
            self.sock.settimeout(remaining)
        data = self.sock.recv(65536)
        if not data:
            return False
        self.got_bytes = True
        self.buffer += data
        return True

    def _take_until(self, marker: bytes, deadline: float, limit: int) -> bytes:
        buffer, start = self.buffer, 0
        while (end := buffer.find(marker, start)) < 0:
            if len(buffer) > limit:
                raise _Garbled("an answer's head or chunk line is too long")
            start = max(0, len(buffer) - len(marker) + 1)
            if not self._fill(deadline):
                raise ConnectionResetError("the server closed the connection mid-answer")
        taken = bytes(buffer[:end])
        del buffer[:end + len(marker)]
        return taken

    def _take(self, size: int, deadline: float) -> bytes:
        while len(self.buffer) < size:
            if not self._fill(deadline):
                raise ConnectionResetError("the server closed the connection mid-answer")
        taken = bytes(self.buffer[:size])
        del self.buffer[:size]
        return taken

    def exchange(self, request: bytes, timeout_s: float,
                 head_only: bool) -> tuple[int, dict[str, str], bytes, bool]:
        """Send ``request``; (status, headers, body, keep the connection)."""
        deadline = time.monotonic() + timeout_s
        self.got_bytes = False
        if timeout_s != self.timeout_s:
            self.timeout_s = timeout_s
            self.sock.settimeout(timeout_s)
        self.sock.sendall(request)
        status, headers, version = self._head(deadline)
        while 100 <= status < 200:  # an interim answer (100 Continue, 103) before the real one
            status, headers, version = self._head(deadline)
        connection = headers.get("connection")
        if connection is None:
            keep = version != b"HTTP/1.0"
        else:
            tokens = {token.strip().lower() for token in connection.split(",")}
            keep = "close" not in tokens and (version != b"HTTP/1.0" or "keep-alive" in tokens)
        length = headers.get("content-length")
        if head_only or status in (204, 304):
            body = b""
        elif length is not None and "transfer-encoding" not in headers:
            if not length.isdigit():
                raise _Garbled(f"Content-Length {length!r}")
            body = self._take(int(length), deadline)
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            body = self._chunked(deadline)
        else:  # framed by the connection's close
            while self._fill(deadline):
                pass
            body, keep = bytes(self.buffer), False
            self.buffer.clear()
        return status, headers, body, keep and not self.buffer

    def _head(self, deadline: float) -> tuple[int, dict[str, str], bytes]:
        head = self._take_until(b"\r\n\r\n", deadline, _MAX_HEAD)
        lines = head.split(b"\r\n")
        version, _, rest = lines[0].partition(b" ")
        code = rest[:3]
        if not (version.startswith(b"HTTP/1.") and code.isdigit() and len(code) == 3
                and rest[3:4] in (b"", b" ")):
            raise _Garbled(f"not an HTTP/1.x answer: {lines[0][:80]!r}")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon:
                raise _Garbled(f"a header line without a colon: {line[:80]!r}")
            key = name.strip().lower().decode("latin-1")
            text = value.strip().decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        return int(code), headers, version

    def _chunked(self, deadline: float) -> bytes:
        body = bytearray()
        while True:
            line = self._take_until(b"\r\n", deadline, 1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _Garbled(f"a chunk size line {line[:40]!r}") from None
            if size == 0:
                while self._take_until(b"\r\n", deadline, _MAX_HEAD):
                    pass  # trailers, up to the empty line
                return bytes(body)
            body += self._take(size + 2, deadline)[:-2]


_DEFAULT = object()


class Transport:
    """Requests to one endpoint over one keep-alive connection, with retries.

    A request that fails is sent again (at most ``retries`` more times, backing off) when
    that is safe: always if the connection could not be made, and otherwise only for an
    ``idempotent`` request. A keep-alive connection the server had closed is opened again
    at once (once a request). A 502/503/504 waits for its ``Retry-After`` (else backs off)
    and tries again; when the retries are spent, or the server asks for a wait past the
    deadline, the last answer is returned. ``deadline_s`` bounds the whole (every attempt
    and wait); each attempt waits at most ``timeout_s``. One request at a time (a lock).
    """

    def __init__(self, endpoint: Endpoint, token: str | None, *, timeout_s: float,
                 retries: int, deadline_s: float | None, backoff_s: float = 0.05,
                 max_backoff_s: float = 1.0, tls: ssl.SSLContext | None = None) -> None:
        if timeout_s <= 0 or retries < 0 or (deadline_s is not None and deadline_s <= 0):
            raise ValueError("timeout_s and deadline_s must be positive, retries at least 0")
        self.endpoint = endpoint
        self.timeout_s, self.retries, self.deadline_s = timeout_s, retries, deadline_s
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        if tls is None and endpoint.scheme == "https":
            tls = ssl.create_default_context()
        self._tls = tls
        self._auth = f"Authorization: Bearer {token}\r\n" if token else ""
        self._heads: dict[tuple[str, str, str | None, bool], bytes] = {}
        self._conn: _Connection | None = None
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the connection (the next request opens a new one)."""
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _request_bytes(self, method: str, path: str, content_type: str | None, body: bytes,
                       auth: bool) -> bytes:
        key = (method, path, content_type, auth)
        head = self._heads.get(key)
        if head is None:
            text = (f"{method} {self.endpoint.prefix}{path} HTTP/1.1\r\n"
                    f"Host: {self.endpoint.host_header}\r\nUser-Agent: {_USER_AGENT}\r\n"
                    + (self._auth if auth else "")
                    + (f"Content-Type: {content_type}\r\n" if content_type else ""))
            head = self._heads[key] = text.encode("latin-1")
        if not body and method in ("GET", "HEAD"):
            return head + b"\r\n"
        return b"%sContent-Length: %d\r\n\r\n%s" % (head, len(body), body)

    def _backoff(self, failures: int) -> float:
        wait = min(self.max_backoff_s, self.backoff_s * 2 ** failures)
        return wait * random.uniform(0.5, 1.0)  # jitter: clients that failed together part

    def request(self, method: str, path: str, body: bytes = b"", content_type: str | None = None,
                *, idempotent: bool = True, auth: bool = True, retries: int | None = None,
                deadline_s: float | None | object = _DEFAULT) -> Answer:
        """Send until answered (see the class); raise ``ConnectionFailed``,
        ``DeadlineExceeded`` or ``UnexpectedAnswer`` when no answer came."""
        retries = self.retries if retries is None else retries
        budget = self.deadline_s if deadline_s is _DEFAULT else deadline_s
        assert budget is None or isinstance(budget, int | float)
        deadline = None if budget is None else time.monotonic() + budget
        request = self._request_bytes(method, path, content_type, body, auth)
        head_only = method == "HEAD"
        failures = attempts = 0
        reopened = False
        last: BaseException | None = None
        with self._lock:
            while True:
                timeout = self.timeout_s
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise DeadlineExceeded(
                            f"{method} {self.endpoint}{path}: no answer within the "
                            f"{budget} s deadline ({attempts} attempts; last: {last})") from last
                    timeout = min(timeout, remaining)
                attempts += 1
                try:
                    status, headers, data = self._exchange(request, timeout, head_only)
                except _Broken as broken:
                    last = broken.cause
                    if broken.stale and not reopened and idempotent:
                        reopened = True  # closed by the server while idle: not a failure
                        continue
                    if (broken.sent and not idempotent) or failures >= retries:
                        if deadline is not None and time.monotonic() >= deadline:
                            continue  # the deadline cut the attempt short: say so above
                        kind = (UnexpectedAnswer if isinstance(last, _Garbled)
                                else ConnectionFailed)
                        raise kind(f"{method} {self.endpoint}{path}: {last} "
                                   f"({attempts} attempts)") from last
                    wait = self._backoff(failures)
                else:
                    if status not in RETRYABLE or failures >= retries:
                        return Answer(status, headers, data, attempts)
                    after = retry_after_s(headers.get("retry-after"))
                    wait = self._backoff(failures) if after is None else after
                    if deadline is not None and time.monotonic() + wait > deadline:
                        return Answer(status, headers, data, attempts)  # no time to wait
                    last = None
                failures += 1
                if deadline is not None:
                    wait = min(wait, max(0.0, deadline - time.monotonic()))
                time.sleep(wait)

    def _exchange(self, request: bytes, timeout_s: float,
                  head_only: bool) -> tuple[int, dict[str, str], bytes]:
        conn = self._conn
        reused = conn is not None
        if conn is None:
            try:
                conn = self._conn = _Connection.open(self.endpoint, timeout_s, self._tls)
            except OSError as exc:
                raise _Broken(exc, sent=False, stale=False) from exc
        try:
            status, headers, body, keep = conn.exchange(request, timeout_s, head_only)
        except (OSError, _Garbled) as exc:
            self._drop()
            stale = reused and not conn.got_bytes and not isinstance(exc, TimeoutError)
            raise _Broken(exc, sent=True, stale=stale) from exc
        if not keep:
            self._drop()
        return status, headers, body
