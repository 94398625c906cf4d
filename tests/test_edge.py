"""The actor's HTTP edge over real sockets on 127.0.0.1: framing, auth, limits, overload."""

from __future__ import annotations

import asyncio
import http.client
import json
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httptools
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram

from actors.edge import HttpEdge, Request, Response, Route, Waker
from actors.metrics import LATENCY_BUCKETS, EdgeFamilies, Tally

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DEADLINE_S = 5.0


def wait_until(condition: Callable[[], bool], timeout_s: float = DEADLINE_S) -> None:
    """Poll `condition` until it holds; fail the test at the deadline."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        time.sleep(0.005)


def ping(request: Request) -> Response:
    return Response.json(200, {"path": request.path, "query": request.query})


EdgeFactory = Callable[..., HttpEdge]


@pytest.fixture(params=["default", "asyncio"])
def make_edge(request: pytest.FixtureRequest) -> Iterator[EdgeFactory]:
    """Start edges on free ports of 127.0.0.1; every one is stopped at teardown. Each test
    runs on the edge's default loop (uvloop's, where installed) and on asyncio's own."""
    edges: list[HttpEdge] = []

    def make(routes: list[Route] | None = None, **options: Any) -> HttpEdge:
        options.setdefault("port", 0)
        options.setdefault("tokens", [TOKEN])
        if request.param == "asyncio":
            options.setdefault("loop_factory", asyncio.new_event_loop)
        edge = HttpEdge(host="127.0.0.1", routes=routes or [Route("GET", "/ping", ping)], **options)
        edges.append(edge)
        edge.start()
        return edge

    yield make
    for edge in edges:
        edge.stop()


_clients: list[http.client.HTTPConnection] = []


@pytest.fixture(autouse=True)
def close_clients() -> Iterator[None]:
    yield
    while _clients:
        _clients.pop().close()


def client(edge: HttpEdge) -> http.client.HTTPConnection:
    """An http.client connection, closed after the test."""
    conn = http.client.HTTPConnection("127.0.0.1", edge.port, timeout=DEADLINE_S)
    _clients.append(conn)
    return conn


def call(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, http.client.HTTPResponse, Any]:
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    payload = response.read()
    return response.status, response, json.loads(payload) if payload else None


def raw(edge: HttpEdge) -> socket.socket:
    return socket.create_connection(("127.0.0.1", edge.port), timeout=DEADLINE_S)


class _Parsed:
    """Collects responses from a raw socket with httptools' response parser."""

    def __init__(self) -> None:
        self.done: list[tuple[int, dict[str, str], bytes]] = []
        self._headers: dict[str, str] = {}
        self._body = b""
        self.parser = httptools.HttpResponseParser(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode().lower()] = value.decode()

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        self.done.append((self.parser.get_status_code(), self._headers, self._body))
        self._headers, self._body = {}, b""


def read_responses(sock: socket.socket, count: int) -> list[tuple[int, dict[str, str], bytes]]:
    parsed = _Parsed()
    while len(parsed.done) < count:
        data = sock.recv(65536)
        if not data:
            break
        parsed.parser.feed_data(data)
    return parsed.done


def closed_by_peer(sock: socket.socket) -> bool:
    """True once the server closed: recv returns EOF (or a reset) within the deadline."""
    sock.settimeout(DEADLINE_S)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return True


# auth


def test_protected_route_refuses_missing_or_wrong_token_with_401(make_edge: EdgeFactory) -> None:
    edge = make_edge()
    conn = client(edge)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        status, response, payload = call(conn, "GET", "/ping", headers=headers)
        assert status == 401
        assert payload == {"error": "missing or invalid bearer token"}
        assert response.getheader("WWW-Authenticate") == "Bearer"
    status, _, payload = call(conn, "GET", "/ping?a=1", headers=AUTH)
    assert (status, payload) == (200, {"path": "/ping", "query": "a=1"})


def test_each_request_on_a_keep_alive_connection_is_authorised_on_its_own(
        make_edge: EdgeFactory) -> None:
    # The connection remembers the header it proved (to skip the constant-time check when
    # the same one comes again): a different one, or none, is still refused.
    edge = make_edge()
    conn = client(edge)
    for headers, status in ((AUTH, 200), ({"Authorization": "Bearer wrong"}, 401), ({}, 401),
                            ({"Authorization": f"Bearer {TOKEN}x"}, 401), (AUTH, 200),
                            ({"Authorization": f"bearer  {TOKEN} "}, 200), (AUTH, 200),
                            ({"Authorization": f"Bearer {TOKEN}"[:-1]}, 401)):
        assert call(conn, "GET", "/ping", headers=headers)[0] == status, headers


def test_public_route_is_open_without_token(make_edge: EdgeFactory) -> None:
    edge = make_edge([Route("GET", "/health", ping, public=True)])
    status, _, payload = call(client(edge), "GET", "/health")
    assert (status, payload["path"]) == (200, "/health")


def test_empty_token_set_refuses_protected_routes(make_edge: EdgeFactory) -> None:
    edge = make_edge(tokens=[])
    for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer"}):
        status, _, _ = call(client(edge), "GET", "/ping", headers=headers)
        assert status == 401


# routing and framing errors


def test_unknown_path_is_404_and_wrong_method_is_405_with_allow(make_edge: EdgeFactory) -> None:
    edge = make_edge([Route("GET", "/ping", ping), Route("PUT", "/ping", ping)])
    conn = client(edge)
    status, _, payload = call(conn, "GET", "/nowhere", headers=AUTH)
    assert (status, payload) == (404, {"error": "not found"})
    status, response, payload = call(conn, "DELETE", "/ping", headers=AUTH)
    assert (status, payload) == (405, {"error": "method not allowed"})
    assert response.getheader("Allow") == "GET, PUT"


def test_head_request_is_answered_without_a_body(make_edge: EdgeFactory) -> None:
    edge = make_edge([Route("HEAD", "/ping", ping), Route("GET", "/ping", ping)])
    with raw(edge) as sock:
        sock.sendall(b"HEAD /ping HTTP/1.1\r\nHost: x\r\n\r\nGET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        # The 401 to HEAD declares its length but carries no body; the GET's answer follows.
        head = b"HTTP/1.1 401 Unauthorized\r\n"
        data = b""
        while data.count(b"HTTP/1.1 401") < 2 or not data.endswith(b"}"):
            data += sock.recv(65536)
        assert data.startswith(head)
        first, second = data.split(b"\r\n\r\n", 1)
        assert b"Content-Length: 43" in first and second.startswith(head)


def test_declared_body_over_limit_is_413_before_the_body_is_sent(make_edge: EdgeFactory) -> None:
    edge = make_edge([Route("POST", "/in", ping)], max_body_bytes=1024)
    with raw(edge) as sock:
        sock.sendall(b"POST /in HTTP/1.1\r\nHost: x\r\nContent-Length: 1025\r\n\r\n")
        [(status, headers, body)] = read_responses(sock, 1)
        assert status == 413 and headers["connection"] == "close"
        assert json.loads(body) == {"error": "request body too large"}
        assert closed_by_peer(sock)


def test_body_at_the_limit_is_accepted(make_edge: EdgeFactory) -> None:
    echo = Route("POST", "/in", lambda r: Response(200, r.body, "application/octet-stream"))
    edge = make_edge([echo], max_body_bytes=1024)
    conn = client(edge)
    conn.request("POST", "/in", body=b"x" * 1024, headers=AUTH)
    response = conn.getresponse()
    assert (response.status, response.read()) == (200, b"x" * 1024)


def test_chunked_body_over_limit_is_413(make_edge: EdgeFactory) -> None:
    edge = make_edge([Route("POST", "/in", ping)], max_body_bytes=1024)
    with raw(edge) as sock:
        sock.sendall(b"POST /in HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        sock.sendall(b"200\r\n" + b"y" * 512 + b"\r\n")  # 512 bytes: under the limit so far
        sock.sendall(b"200\r\n" + b"y" * 512 + b"\r\n" + b"1\r\nz\r\n0\r\n\r\n")
        [(status, _, body)] = read_responses(sock, 1)
        assert (status, json.loads(body)) == (413, {"error": "request body too large"})
        assert closed_by_peer(sock)


def test_oversized_request_head_is_431(make_edge: EdgeFactory) -> None:
    edge = make_edge()
    with raw(edge) as sock:
        sock.sendall(b"GET /ping HTTP/1.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n")
        [(status, _, _)] = read_responses(sock, 1)
        assert status == 431


def test_malformed_request_is_400_and_closed(make_edge: EdgeFactory) -> None:
    edge = make_edge()
    with raw(edge) as sock:
        sock.sendall(b"GET /ping HTTP/1.1\r\nBad Header\r\n\r\n")
        [(status, _, body)] = read_responses(sock, 1)
        assert (status, json.loads(body)) == (400, {"error": "malformed request"})
        assert closed_by_peer(sock)


# connections


def test_keep_alive_serves_several_requests_on_one_connection(make_edge: EdgeFactory) -> None:
    edge = make_edge([Route("GET", "/peer", lambda r: Response.json(200, {"peer": r.peer}))])
    conn = client(edge)
    peers = {call(conn, "GET", "/peer", headers=AUTH)[2]["peer"] for _ in range(5)}
    assert len(peers) == 1  # one client port: the same connection throughout
    assert edge.requests_served == 5


def test_pipelined_requests_are_answered_in_request_order(make_edge: EdgeFactory) -> None:
    routes = [Route("GET", "/inline", ping, public=True), Route("GET", "/slow", ping, True, True)]
    edge = make_edge(routes)
    paths = [f"/{'slow' if i % 3 == 0 else 'inline'}?i={i}" for i in range(12)]
    with raw(edge) as sock:
        sock.sendall(b"".join(f"GET {p} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for p in paths))
        answers = read_responses(sock, len(paths))
    assert [json.loads(body)["query"] for _, _, body in answers] == [f"i={i}" for i in range(12)]


def test_connection_close_is_honoured(make_edge: EdgeFactory) -> None:
    edge = make_edge([Route("GET", "/ping", ping, public=True)])
    with raw(edge) as sock:
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        [(status, headers, _)] = read_responses(sock, 1)
        assert status == 200 and headers["connection"] == "close"
        assert closed_by_peer(sock)


def test_http_1_0_closes_by_default(make_edge: EdgeFactory) -> None:
    edge = make_edge([Route("GET", "/ping", ping, public=True)])
    with raw(edge) as sock:
        sock.sendall(b"GET /ping HTTP/1.0\r\n\r\n")
        [(status, _, _)] = read_responses(sock, 1)
        assert status == 200
        assert closed_by_peer(sock)


def test_handler_exception_is_500_reported_and_the_connection_goes_on(
    make_edge: EdgeFactory,
) -> None:
    errors: list[tuple[BaseException, Request | None]] = []

    def boom(request: Request) -> Response:
        raise RuntimeError("model exploded")

    edge = make_edge(
        [Route("GET", "/boom", boom), Route("GET", "/ping", ping)],
        on_error=lambda error, request: errors.append((error, request)),
    )
    conn = client(edge)
    status, _, payload = call(conn, "GET", "/boom", headers=AUTH)
    assert (status, payload) == (500, {"error": "internal error"})
    assert str(errors[0][0]) == "model exploded" and errors[0][1] is not None
    assert errors[0][1].path == "/boom"
    assert call(conn, "GET", "/ping", headers=AUTH)[0] == 200


def test_blocking_route_runs_off_the_loop_thread(make_edge: EdgeFactory) -> None:
    threads: dict[str, int] = {}

    def record(name: str) -> Callable[[Request], Response]:
        def handler(request: Request) -> Response:
            threads[name] = threading.get_ident()
            return Response.json(200, {})

        return handler

    edge = make_edge(
        [
            Route("GET", "/inline", record("inline")),
            Route("GET", "/commit", record("blocking"), True),
        ]
    )
    conn = client(edge)
    assert call(conn, "GET", "/inline", headers=AUTH)[0] == 200
    assert call(conn, "GET", "/commit", headers=AUTH)[0] == 200
    assert threads["blocking"] != threads["inline"]
    assert threading.get_ident() not in threads.values()


def test_overload_beyond_max_pending_is_503_with_retry_after(make_edge: EdgeFactory) -> None:
    entered, release = threading.Event(), threading.Event()

    def commit(request: Request) -> Response:
        entered.set()
        release.wait(DEADLINE_S)
        return Response.json(200, {"committed": True})

    edge = make_edge(
        [Route("POST", "/commit", commit, blocking=True), Route("GET", "/ping", ping)],
        max_pending=2,
    )
    held = [client(edge), client(edge)]
    try:
        for conn in held:  # one runs, one waits for the worker: max_pending reached
            conn.request("POST", "/commit", body=b"{}", headers=AUTH)
        assert entered.wait(DEADLINE_S)
        wait_until(lambda: edge._pending == 2)
        status, response, payload = call(client(edge), "POST", "/commit", b"{}", AUTH)
        assert (status, payload) == (503, {"error": "overloaded"})
        assert response.getheader("Retry-After") == "1"
        assert call(client(edge), "GET", "/ping", headers=AUTH)[0] == 200  # inline still served
    finally:
        release.set()
    assert [conn.getresponse().status for conn in held] == [200, 200]
    assert call(client(edge), "POST", "/commit", b"{}", AUTH)[0] == 200


def test_connections_past_the_cap_get_503_with_retry_after(make_edge: EdgeFactory) -> None:
    edge = make_edge(max_connections=2)
    held = [client(edge), client(edge)]
    for conn in held:
        assert call(conn, "GET", "/ping", headers=AUTH)[0] == 200
    wait_until(lambda: len(edge._connections) == 2)
    status, response, payload = call(client(edge), "GET", "/ping", headers=AUTH)
    assert (status, payload) == (503, {"error": "overloaded"})
    assert response.getheader("Retry-After") == "1"
    for conn in held:  # the ones inside are served on
        assert call(conn, "GET", "/ping", headers=AUTH)[0] == 200
    held.pop().close()
    wait_until(lambda: len(edge._connections) <= 1)
    assert call(client(edge), "GET", "/ping", headers=AUTH)[0] == 200


def test_bodies_past_the_edges_byte_budget_get_503_and_the_budget_comes_back(
        make_edge: EdgeFactory) -> None:
    entered, release = threading.Event(), threading.Event()

    def commit(request: Request) -> Response:
        entered.set()
        release.wait(DEADLINE_S)
        return Response.json(200, {"size": len(request.body)})

    edge = make_edge([Route("POST", "/commit", commit, blocking=True)],
                     max_body_bytes=1000, max_buffered_bytes=2500, max_pending=10)
    held = [client(edge), client(edge)]
    try:
        for conn in held:  # 2 x 1000 bytes held: one running, one queued for the worker
            conn.request("POST", "/commit", body=b"x" * 1000, headers=AUTH)
        assert entered.wait(DEADLINE_S)
        wait_until(lambda: edge._held == 2000)
        # Declared length over what is left: refused before its body is read.
        status, response, payload = call(client(edge), "POST", "/commit", b"y" * 600, AUTH)
        assert (status, payload) == (503, {"error": "overloaded"})
        assert response.getheader("Retry-After") == "1"
        # Chunked, counted as it arrives: refused once it passes the budget.
        sock = raw(edge)
        sock.sendall(b"POST /commit HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                     + TOKEN.encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + b"258\r\n" + b"z" * 600 + b"\r\n")
        assert read_responses(sock, 1)[0][0] == 503
        sock.close()
        assert edge._held == 2000  # what was refused is not counted
        within = client(edge)  # what still fits is taken (and waits its turn)
        within.request("POST", "/commit", body=b"w" * 400, headers=AUTH)
        held.append(within)
        wait_until(lambda: edge._held == 2400)
    finally:
        release.set()
    assert [conn.getresponse().status for conn in held] == [200, 200, 200]
    wait_until(lambda: edge._held == 0)
    assert call(client(edge), "POST", "/commit", b"v" * 1000, AUTH)[0] == 200
    wait_until(lambda: edge._held == 0)


def test_stalled_partial_request_is_closed_after_idle_timeout(make_edge: EdgeFactory) -> None:
    edge = make_edge(idle_timeout_s=0.2)
    started = time.monotonic()  # before connecting: the edge's clock starts at accept
    with raw(edge) as sock:
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        assert closed_by_peer(sock)
        assert time.monotonic() - started >= 0.2


def test_idle_keep_alive_connection_is_closed_after_idle_timeout(make_edge: EdgeFactory) -> None:
    edge = make_edge([Route("GET", "/ping", ping, public=True)], idle_timeout_s=0.2)
    with raw(edge) as sock:
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_responses(sock, 1)[0][0] == 200
        assert closed_by_peer(sock)


def test_client_that_never_reads_does_not_stall_others(make_edge: EdgeFactory) -> None:
    big = Response(200, b"z" * 256 * 1024, "application/octet-stream")
    routes = [Route("GET", "/big", lambda r: big, public=True), Route("GET", "/ping", ping)]
    edge = make_edge(routes)
    with raw(edge) as hog:
        hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        request = b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n"
        hog.setblocking(False)
        sent = 0
        try:  # pipeline until the server stops reading us: our send buffer fills
            while sent < 64 * 1024 * 1024:
                sent += hog.send(request * 64)
        except BlockingIOError:
            pass
        assert sent < 64 * 1024 * 1024  # the edge stopped reading the hog: flow control
        conn = client(edge)
        for _ in range(20):
            assert call(conn, "GET", "/ping", headers=AUTH)[0] == 200


# lifecycle


def test_stop_frees_the_port_and_is_idempotent(make_edge: EdgeFactory) -> None:
    edge = make_edge(reuse_port=False)
    assert call(client(edge), "GET", "/ping", headers=AUTH)[0] == 200
    edge.stop()
    edge.stop()
    with socket.socket() as sock:  # no SO_REUSEPORT: only a freed port binds
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", edge.port))
        sock.listen()


def test_start_raises_the_bind_error_in_the_caller() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        edge = HttpEdge(
            host="127.0.0.1", port=taken.getsockname()[1], routes=[], tokens=[], reuse_port=False
        )
        with pytest.raises(OSError):
            edge.start()
        edge.stop()


def test_two_edges_with_reuse_port_share_one_port_and_both_serve(make_edge: EdgeFactory) -> None:
    first = make_edge([Route("GET", "/ping", ping, public=True)])
    second = make_edge([Route("GET", "/ping", ping, public=True)], port=first.port)
    assert second.port == first.port
    deadline = time.monotonic() + DEADLINE_S
    while not (first.requests_served and second.requests_served):
        assert time.monotonic() < deadline, "the kernel never spread connections over both"
        conn = client(first)  # a fresh connection: a fresh source port to hash
        assert call(conn, "GET", "/ping")[0] == 200
        conn.close()


# draining at stop


def stop_in_background(edge: HttpEdge, timeout_s: float = DEADLINE_S) -> threading.Thread:
    stopper = threading.Thread(target=edge.stop, args=(timeout_s,), name="test-stop")
    stopper.start()
    return stopper


def refuses_connections(port: int) -> bool:
    """True once nothing listens on the port (a connection that gets in is closed at once)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S).close()
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:  # caught in the backlog of the listener as it closed
        return True
    return False


def assert_port_free(port: int) -> None:
    with socket.socket() as sock:  # no SO_REUSEPORT: only a freed port binds
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))


def held_commit(commits: list[bytes], entered: threading.Event, release: threading.Event) -> Route:
    """A blocking route whose handler waits for `release`, then records the body it commits."""

    def commit(request: Request) -> Response:
        entered.set()
        release.wait(DEADLINE_S)
        commits.append(request.body)
        return Response.json(200, {"committed": request.body.decode()})

    return Route("POST", "/commit", commit, blocking=True)


def test_stop_answers_running_and_queued_blocking_requests_then_closes(
    make_edge: EdgeFactory,
) -> None:
    commits: list[bytes] = []
    entered, release = threading.Event(), threading.Event()
    edge = make_edge([held_commit(commits, entered, release)], reuse_port=False)
    running, queued = client(edge), client(edge)
    running.request("POST", "/commit", body=b"first", headers=AUTH)
    assert entered.wait(DEADLINE_S)
    queued.request("POST", "/commit", body=b"second", headers=AUTH)
    wait_until(lambda: edge._pending == 2)  # one in the handler, one waiting for the worker
    stopper = stop_in_background(edge)
    try:
        wait_until(lambda: refuses_connections(edge.port))  # the listener closes first
        assert stopper.is_alive()  # ... and stop waits for the handler
    finally:
        release.set()
    for conn, body in ((running, "first"), (queued, "second")):
        response = conn.getresponse()
        assert (response.status, json.loads(response.read())) == (200, {"committed": body})
        assert response.getheader("Connection") == "close"
    stopper.join(DEADLINE_S)
    assert not stopper.is_alive()
    assert commits == [b"first", b"second"]  # each side effect exactly once
    assert_port_free(edge.port)


def test_stop_refuses_pipelined_requests_not_started_with_503(make_edge: EdgeFactory) -> None:
    commits: list[bytes] = []
    entered, release = threading.Event(), threading.Event()
    edge = make_edge([held_commit(commits, entered, release), Route("GET", "/ping", ping)])
    post = b"POST /commit HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n" % TOKEN.encode()
    with raw(edge) as sock:
        sock.sendall(
            post
            + b"Content-Length: 1\r\n\r\na"
            + b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n"
            + post
            + b"Content-Length: 1\r\n\r\nb"
        )
        assert entered.wait(DEADLINE_S)
        wait_until(lambda: any(len(c._queue) == 2 for c in list(edge._connections)))
        stopper = stop_in_background(edge)
        try:
            wait_until(lambda: refuses_connections(edge.port))
        finally:
            release.set()
        answers = read_responses(sock, 3)
        assert closed_by_peer(sock)
    stopper.join(DEADLINE_S)
    assert not stopper.is_alive()
    assert [status for status, _, _ in answers] == [200, 503, 503]
    for _, headers, body in answers[1:]:
        assert json.loads(body) == {"error": "shutting down"}
        assert headers["retry-after"] == "1"
    # Only the last answer closes: a client may not expect answers after a `close`.
    assert [headers.get("connection") for _, headers, _ in answers] == [None, None, "close"]
    assert commits == [b"a"]


def test_stop_refuses_a_request_still_arriving_with_503(make_edge: EdgeFactory) -> None:
    commits: list[bytes] = []
    entered, release = threading.Event(), threading.Event()
    release.set()
    edge = make_edge([held_commit(commits, entered, release)])
    with raw(edge) as sock:
        sock.sendall(
            b"POST /commit HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
            b"Content-Length: 10\r\n\r\nabcd" % TOKEN.encode()
        )
        wait_until(lambda: any(c._in_message for c in list(edge._connections)))
        stopper = stop_in_background(edge)
        [(status, headers, body)] = read_responses(sock, 1)
        assert (status, json.loads(body)) == (503, {"error": "shutting down"})
        assert headers["retry-after"] == "1" and headers["connection"] == "close"
        sock.sendall(b"efghij")  # the rest of the body: read and discarded, never a reset
        assert closed_by_peer(sock)
    stopper.join(DEADLINE_S)
    assert not stopper.is_alive()
    assert commits == [] and not entered.is_set()


def test_stop_closes_idle_keep_alive_connections_at_once(make_edge: EdgeFactory) -> None:
    commits: list[bytes] = []
    entered, release = threading.Event(), threading.Event()
    edge = make_edge([held_commit(commits, entered, release), Route("GET", "/ping", ping)])
    with raw(edge) as idle:
        idle.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_responses(idle, 1)[0][0] == 401  # answered, and kept alive
        busy = client(edge)
        busy.request("POST", "/commit", body=b"c", headers=AUTH)
        assert entered.wait(DEADLINE_S)
        stopper = stop_in_background(edge)
        try:
            assert closed_by_peer(idle)  # while the other request is still being drained
            assert stopper.is_alive()
        finally:
            release.set()
    assert busy.getresponse().status == 200
    stopper.join(DEADLINE_S)
    assert not stopper.is_alive()


def test_stop_returns_within_its_timeout_when_a_handler_never_finishes(
    make_edge: EdgeFactory,
) -> None:
    commits: list[bytes] = []
    entered, release = threading.Event(), threading.Event()
    edge = make_edge([held_commit(commits, entered, release)], reuse_port=False)
    try:
        with raw(edge) as sock:
            sock.sendall(
                b"POST /commit HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                b"Content-Length: 1\r\n\r\nx" % TOKEN.encode()
            )
            assert entered.wait(DEADLINE_S)
            started = time.monotonic()
            edge.stop(timeout_s=0.5)
            elapsed = time.monotonic() - started
            assert read_responses(sock, 1) == []  # aborted: no answer was ever sent
        assert 0.2 <= elapsed < 1.0
        assert_port_free(edge.port)
    finally:
        release.set()


# a route's fast lane


class _Lane:
    """A fast lane that takes bodies starting with ``{`` (its answers say so), and a handler
    that answers every request the same way, saying it was the handler."""

    def __init__(self) -> None:
        self.asked: list[tuple[bytes, str | None]] = []

    def fast(self, body: bytes, content_type: str | None) -> tuple[int, bytes] | None:
        self.asked.append((body, content_type))
        if body == b"{boom}":
            raise RuntimeError("fast lane exploded")
        if not body.startswith(b"{"):
            return None
        return 201, json.dumps({"by": "fast", "body": body.decode()}).encode()

    @staticmethod
    def handler(request: Request) -> Response:
        return Response.json(201, {"by": "handler", "body": request.body.decode()})


def _post(path: str, body: bytes, *, close: bool = False, auth: bool = True) -> bytes:
    head = [f"POST {path} HTTP/1.1", "Host: x", "Content-Type: application/json",
            f"Content-Length: {len(body)}"]
    if auth:
        head.append(f"Authorization: Bearer {TOKEN}")
    if close:
        head.append("Connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def test_a_fast_lane_answers_its_usual_requests_and_leaves_the_rest_to_the_handler(
    make_edge: EdgeFactory,
) -> None:
    registry = CollectorRegistry()
    tally = Tally(EdgeFamilies(
        Counter("t_requests", "requests", ("route", "status"), registry=registry),
        Histogram("t_seconds", "latency", ("route",), buckets=LATENCY_BUCKETS,
                  registry=registry)))
    lane = _Lane()
    errors: list[tuple[BaseException, Request | None]] = []
    edge = make_edge([Route("POST", "/echo", lane.handler, fast=lane.fast)], tally=tally,
                     on_error=lambda error, request: errors.append((error, request)))
    with raw(edge) as sock:  # no token on a new connection: 401, the lane never asked
        sock.sendall(_post("/echo", b'{"z":0}', auth=False))
        assert [status for status, _, _ in read_responses(sock, 1)] == [401]
    with raw(edge) as sock:
        for body in (b'{"a":1}', b"plain", b"{boom}", b'{"b":2}'):
            sock.sendall(_post("/echo", body))
            [(status, headers, answer)] = read_responses(sock, 1)
            assert headers["content-type"] == "application/json"
            if body == b"{boom}":  # raised: a 500, reported, and the connection goes on
                assert (status, json.loads(answer)) == (500, {"error": "internal error"})
                continue
            by = "fast" if body.startswith(b"{") else "handler"
            assert (status, json.loads(answer)) == (201, {"by": by, "body": body.decode()})
        # A query string, or no token: the whole path (the token's 401 from the edge).
        sock.sendall(_post("/echo?x=1", b'{"c":3}') + _post("/echo", b'{"d":4}', auth=False))
        [(first, _, with_query), (second, _, _)] = read_responses(sock, 2)
        assert (first, json.loads(with_query)["by"], second) == (201, "handler", 401)
    assert [body for body, _ in lane.asked] == [b'{"a":1}', b"plain", b"{boom}", b'{"b":2}']
    assert {content_type for _, content_type in lane.asked} == {"application/json"}
    [(error, request)] = errors
    assert str(error) == "fast lane exploded"
    assert request is not None and (request.method, request.path, request.body) == (
        "POST", "/echo", b"{boom}")
    tally.flush()
    for code, n in (("201", 4), ("500", 1), ("401", 2)):
        assert registry.get_sample_value("t_requests_total",
                                         {"route": "/echo", "status": code}) == n
    assert registry.get_sample_value("t_seconds_count", {"route": "/echo"}) == 5
    assert edge.requests_served == 7


def test_a_fast_lane_closes_when_asked_and_waits_its_turn_behind_a_blocking_request(
    make_edge: EdgeFactory,
) -> None:
    lane = _Lane()
    release = threading.Event()

    def slow(request: Request) -> Response:
        release.wait(DEADLINE_S)
        return Response.json(200, {"by": "slow"})

    edge = make_edge([Route("POST", "/echo", lane.handler, fast=lane.fast),
                      Route("GET", "/slow", slow, blocking=True, public=True)])
    with raw(edge) as sock:
        # Pipelined behind a blocking request: queued, so the handler answers, in order.
        sock.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n" + _post("/echo", b'{"e":5}'))
        release.set()
        answers = read_responses(sock, 2)
        assert [json.loads(body)["by"] for _, _, body in answers] == ["slow", "handler"]
        sock.sendall(_post("/echo", b'{"f":6}', close=True))
        [(status, headers, body)] = read_responses(sock, 1)
        assert (status, headers["connection"], json.loads(body)["by"]) == (201, "close", "fast")
        assert closed_by_peer(sock)
    assert [body for body, _ in lane.asked] == [b'{"f":6}']


def test_the_edge_runs_on_uvloop_where_it_is_installed() -> None:
    uvloop = pytest.importorskip("uvloop")
    loops: list[type] = []

    def which(request: Request) -> Response:
        loops.append(type(asyncio.get_running_loop()))
        return Response.json(200, {})

    edge = HttpEdge(host="127.0.0.1", port=0, tokens=[], routes=[
        Route("GET", "/which", which, public=True)])
    edge.start()
    try:
        assert call(client(edge), "GET", "/which")[0] == 200
    finally:
        edge.stop()
    assert loops == [uvloop.Loop]


def test_a_blocking_route_cannot_have_a_fast_lane() -> None:
    with pytest.raises(ValueError, match="fast lane"):
        HttpEdge(host="127.0.0.1", port=0, tokens=[TOKEN],
                 routes=[Route("POST", "/x", _Lane.handler, blocking=True, fast=_Lane().fast)])


# waker


def readable(waker: Waker, timeout_s: float = 0.0) -> bool:
    return bool(select.select([waker.fileno()], [], [], timeout_s)[0])


def test_waker_coalesces_notifications_until_drained() -> None:
    with Waker() as waker:
        assert not readable(waker)
        for _ in range(10_000):
            waker.notify()
        assert readable(waker, DEADLINE_S)
        assert pending_bytes(waker) == 1
        waker.drain()
        assert not readable(waker)
        waker.notify()
        assert readable(waker, DEADLINE_S)


def pending_bytes(waker: Waker) -> int:
    with socket.socket(fileno=socket.dup(waker.fileno())) as peek:
        peek.setblocking(False)
        try:
            return len(peek.recv(4096, socket.MSG_PEEK))
        except BlockingIOError:
            return 0


def test_waker_is_safe_from_many_threads_and_after_close() -> None:
    waker = Waker()

    def notify_many() -> None:
        for _ in range(2_000):
            waker.notify()

    threads = [threading.Thread(target=notify_many) for _ in range(8)]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        assert pending_bytes(waker) <= 1
        if readable(waker, 0.001):
            waker.drain()
    for thread in threads:
        thread.join()
    waker.drain()
    waker.notify()  # a notify after the last drain is never lost
    assert readable(waker, DEADLINE_S) and pending_bytes(waker) == 1
    waker.close()
    waker.notify()
    waker.drain()


# An edge in a process with almost no file descriptors left: it prints its port, then serves
# until its stdin closes.
_SHORT_OF_DESCRIPTORS = """
import http.client, os, resource, sys, time
from actors.edge import HttpEdge, Request, Response, Route
edge = HttpEdge(host="127.0.0.1", port=0, tokens=[],
                routes=[Route("GET", "/who", lambda r: Response.json(200, {}), public=True)])
edge.start()
def sockets():
    return sum(os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
               for fd in os.listdir("/proc/self/fd") if os.path.exists(f"/proc/self/fd/{fd}"))
# One connection served and gone first: the loop keeps what its first one opens (libuv, under
# uvloop, holds a spare descriptor from then on).
idle = sockets()
warm = http.client.HTTPConnection("127.0.0.1", edge.port, timeout=10)
warm.request("GET", "/who")
warm.getresponse().read()
warm.close()
deadline = time.monotonic() + 10
while sockets() > idle and time.monotonic() < deadline:
    time.sleep(0.01)
opened = len(os.listdir("/proc/self/fd")) - 1  # not the listing's own
resource.setrlimit(resource.RLIMIT_NOFILE, (opened + 2, resource.getrlimit(
    resource.RLIMIT_NOFILE)[1]))
print(edge.port, flush=True)
sys.stdin.read()
edge.stop()
"""


def test_out_of_descriptors_the_edge_waits_and_accepts_again() -> None:
    child = subprocess.Popen([sys.executable, "-c", _SHORT_OF_DESCRIPTORS],
                             cwd=Path(__file__).resolve().parent.parent, text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    assert child.stdout is not None and child.stdin is not None
    connections: list[http.client.HTTPConnection] = []
    try:
        port = int(child.stdout.readline())
        for _ in range(2):  # what the descriptors left allow (kept open)
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            connections.append(connection)
            connection.request("GET", "/who")
            assert connection.getresponse().read() == b"{}"
        # Accepting the next fails (EMFILE): the client waits in the backlog, not refused.
        waiting = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connections.append(waiting)
        waiting.request("GET", "/who")
        assert child.stderr is not None
        ready, _, _ = select.select([child.stderr], [], [], 30)
        assert ready, "the edge said nothing"
        assert "accept failed, retrying in 1.0 s" in child.stderr.readline()
        assert child.poll() is None
        connections.pop(0).close()  # a descriptor comes free
        answer = waiting.getresponse()
        assert (answer.status, answer.read()) == (200, b"{}")
        child.stdin.close()
        assert child.wait(30) == 0
    finally:
        for connection in connections:
            connection.close()
        child.kill()
        child.wait(10)
