"""The keeper's edge listeners (``actors.listeners``): one socket per port, lent to edges.

No daemon here: an ``EdgeListeners`` in the test's process plays the keeper, and
``HttpEdge``s borrow from it as replicas do. The real daemon's faults (a SIGSTOPped or
killed replica) are in ``test_shared_listener_e2e``.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import stat
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from actors.edge import HttpEdge, Request, Response, Route
from actors.listeners import (
    EdgeListeners,
    ListenerUnavailable,
    borrow_listener,
    listeners_path,
    release_listeners,
)
from config.settings import Settings
from runtime.group import free_ports, port_accepts
from runtime.logs import get_logger

HOST = "127.0.0.1"


def node_settings(data_dir: Path, roles: tuple[str, ...] = ("collector", "predictor",
                                                             "learning")) -> Settings:
    ingest, predict = free_ports(2)
    base = Settings()
    return replace(base, data_dir=str(data_dir), ingest=replace(base.ingest, port=ingest),
                   predict=replace(base.predict, port=predict),
                   cluster=replace(base.cluster, roles=roles))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return node_settings(tmp_path / "data")


@pytest.fixture
def holder(settings: Settings) -> Iterator[EdgeListeners]:
    listeners = EdgeListeners.open(settings, get_logger())
    yield listeners
    listeners.close()


def edge(name: str) -> HttpEdge:
    def who(request: Request) -> Response:
        return Response.json(200, {"edge": name})

    serving = HttpEdge(host=HOST, port=0, routes=[Route("GET", "/who", who, public=True)],
                       tokens=[], name=name)
    serving.prepare()
    return serving


def who(port: int) -> str:
    """Which edge answers a new connection to ``port``."""
    connection = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        connection.request("GET", "/who")
        answer = connection.getresponse()
        assert answer.status == 200
        return str(json.loads(answer.read())["edge"])
    finally:
        connection.close()


def borrow(settings: Settings) -> socket.socket:
    return borrow_listener(listeners_path(settings), HOST, settings.predict.port)


def test_the_keeper_binds_the_edge_ports_of_its_roles(settings: Settings,
                                                      holder: EdgeListeners) -> None:
    assert set(holder.addresses) == {(HOST, settings.ingest.port),
                                     (HOST, settings.predict.port)}
    assert port_accepts(HOST, settings.predict.port)  # the kernel queues clients already
    member = node_settings(Path(settings.data_dir) / "b", roles=("collector",))
    only_ingest = EdgeListeners.open(member, get_logger())
    try:
        assert only_ingest.addresses == ((HOST, member.ingest.port),)
    finally:
        only_ingest.close()


def test_a_port_in_use_is_refused_naming_the_setting(settings: Settings) -> None:
    with socket.socket() as taken:
        taken.bind((HOST, settings.predict.port))
        taken.listen()
        with pytest.raises(OSError, match=rf"predict.port: {HOST}:{settings.predict.port} "
                                          r"is in use by another process"):
            EdgeListeners.open(settings, get_logger())
    assert not listeners_path(settings).exists()
    assert not port_accepts(HOST, settings.ingest.port)  # bound first, closed again


def test_edges_share_the_keepers_listener_and_one_stopping_leaves_the_port_to_the_other(
        settings: Settings, holder: EdgeListeners) -> None:
    port = settings.predict.port
    first, second = edge("first"), edge("second")
    try:
        first.listen(borrow(settings))
        second.listen(borrow(settings))
        assert first.port == second.port == port
        first.stop()
        assert {who(port) for _ in range(20)} == {"second"}
        second.stop()
        assert port_accepts(HOST, port), "the keeper's copy keeps the port"
    finally:
        first.stop()
        second.stop()


def test_a_connection_queued_while_no_edge_accepts_is_answered_by_the_next(
        settings: Settings, holder: EdgeListeners) -> None:
    port = settings.predict.port
    gone = edge("gone")
    gone.listen(borrow(settings))
    gone.stop()  # as a replica that died: its copy closed
    with socket.create_connection((HOST, port), timeout=10) as queued:
        queued.sendall(b"GET /who HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        later = edge("later")
        try:
            later.listen(borrow(settings))
            answer = b""
            while chunk := queued.recv(65536):
                answer += chunk
        finally:
            later.stop()
    assert answer.startswith(b"HTTP/1.1 200") and b'"later"' in answer


def test_after_release_the_port_closes_with_the_last_borrowed_copy(
        settings: Settings, holder: EdgeListeners) -> None:
    port = settings.predict.port
    serving = edge("last")
    try:
        serving.listen(borrow(settings))
        assert release_listeners(listeners_path(settings))
        assert who(port) == "last"
        with pytest.raises(ListenerUnavailable, match="holds no listener"):
            borrow(settings)
    finally:
        serving.stop()
    assert not port_accepts(HOST, port)


def test_an_address_the_keeper_does_not_hold_is_refused(settings: Settings,
                                                       holder: EdgeListeners) -> None:
    with pytest.raises(ListenerUnavailable, match="holds no listener"):
        borrow_listener(listeners_path(settings), "::1", settings.predict.port)


def test_without_a_keeper_there_is_nothing_to_borrow(settings: Settings) -> None:
    with pytest.raises(FileNotFoundError):
        borrow(settings)
    assert not release_listeners(listeners_path(settings))


def test_the_lending_socket_is_the_users_alone(tmp_path: Path) -> None:
    settings = node_settings(tmp_path / "data")
    settings.run_dir.mkdir(parents=True)
    os.chmod(settings.run_dir, 0o777)
    listeners = EdgeListeners.open(settings, get_logger())
    try:
        mode = os.stat(listeners_path(settings)).st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
        assert stat.S_IMODE(os.stat(settings.run_dir).st_mode) & 0o022 == 0
    finally:
        listeners.close()
    assert not listeners_path(settings).exists()


def test_a_run_directory_too_deep_for_a_unix_address_still_works(tmp_path: Path) -> None:
    deep = tmp_path.joinpath(*["d" * 40] * 4)
    settings = node_settings(deep)
    assert len(str(listeners_path(settings))) > 108
    listeners = EdgeListeners.open(settings, get_logger())
    try:
        with borrow(settings) as sock:
            assert sock.getsockname() == (HOST, settings.predict.port)
    finally:
        listeners.close()


def socket_inodes() -> set[int]:
    """The inodes of the sockets this process holds (``/proc/self/fd``)."""
    links = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor, closed since
            links.append(os.readlink(f"/proc/self/fd/{fd}"))
    return {int(link[8:-1]) for link in links if link.startswith("socket:[")}


def test_a_fork_of_the_keeper_holds_no_listener(settings: Settings,
                                                holder: EdgeListeners) -> None:
    with borrow(settings) as sock:
        listener = os.fstat(sock.fileno()).st_ino
    assert listener in socket_inodes()  # the keeper's own copy
    pid = os.fork()
    if pid == 0:  # the child: what Thespian's admin would inherit
        os._exit(1 if listener in socket_inodes() else 0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
