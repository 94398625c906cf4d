"""The edge ports' listening sockets: bound once per node by its keeper, lent to replicas.

The pre-fork model: each HTTP edge port (ingest, predict) has one listening socket on a
node, bound by the keeper (which outlives every actor) before the actor system starts.
Each collector or predictor borrows a duplicate of it over a Unix socket in the node's run
directory (``SCM_RIGHTS``) and accepts from it. So a replica that is stopped (SIGSTOP, a
hang) just does not accept, and the others take every new connection; a replica that dies
closes only its duplicate, so the connections queued in the socket's accept backlog wait
for another replica instead of being reset by the kernel (with SO_REUSEPORT, each replica
had a listener and a backlog of its own, and the kernel handed a stopped one its share).
With each listener goes the port's accept board (``actors.accept_board``, a shared memory
file the keeper creates), on which the replicas share out new connections.

The Unix socket hands out listening sockets: it is ``0600`` in a directory only the
daemon's user can write, and the keeper also checks each peer's uid (``SO_PEERCRED``).
Forks of the keeper (Thespian's admin, and every actor below it) close their inherited
copies at once: only the keeper and the replicas that borrowed one hold a listener.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import os
import socket
import stat
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from actors.accept_board import AcceptBoard

if TYPE_CHECKING:
    from config.settings import Settings

__all__ = [
    "LISTEN_BACKLOG",
    "EdgeListeners",
    "ListenerUnavailable",
    "bind_listener",
    "borrow_edge",
    "borrow_listener",
    "edge_ports",
    "listeners_path",
    "release_listeners",
]

#: The accept backlog of every edge listener (the kernel caps it at ``somaxconn``).
LISTEN_BACKLOG = 1024
_SOCKET_NAME = "listeners.sock"
_MAX_REQUEST = 512
_TIMEOUT_S = 2.0
# sun_path holds 108 bytes with its NUL; longer paths are reached through the directory.
_MAX_UNIX_PATH = 100
_UCRED = struct.Struct("3i")  # SO_PEERCRED: pid, uid, gid


class ListenerUnavailable(OSError):
    """The keeper did not lend a listener (the message says why)."""


def listeners_path(settings: Settings) -> Path:
    """Where this node's keeper lends its listeners: a Unix socket in the run directory."""
    return settings.run_dir / _SOCKET_NAME


def bind_listener(host: str, port: int, *, reuse_port: bool = True) -> socket.socket:
    """A non-blocking TCP socket listening on ``host:port``, as every edge port is bound."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port and hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def borrow_listener(path: Path, host: str, port: int,
                    timeout_s: float = _TIMEOUT_S) -> socket.socket:
    """A duplicate of the listener the keeper at ``path`` holds for ``host:port`` (see
    `borrow_edge`, which also gives its accept board)."""
    sock, board = borrow_edge(path, host, port, timeout_s)
    if board is not None:
        board.close()
    return sock


def borrow_edge(path: Path, host: str, port: int, timeout_s: float = _TIMEOUT_S,
                ) -> tuple[socket.socket, AcceptBoard | None]:
    """A duplicate of the listener the keeper at ``path`` holds for ``host:port``, and the
    port's `AcceptBoard` (None where the keeper has none: no shared memory files here).

    Raises ``FileNotFoundError`` where no keeper lends listeners (no daemon here),
    ``ListenerUnavailable`` when it holds none for that address, another ``OSError``
    when it cannot be reached.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout_s)
        with _unix_address(path) as address:
            conn.connect(address)
        conn.sendall(f"lend {host} {port}\n".encode())
        answer, fds, _, _ = socket.recv_fds(conn, _MAX_REQUEST, 2)
    for fd in fds:
        os.set_inheritable(fd, False)
    if not fds:
        raise ListenerUnavailable(answer.decode(errors="replace").strip() or "no answer")
    sock = socket.socket(fileno=fds[0])
    board: AcceptBoard | None = None
    try:
        if (sock.type != socket.SOCK_STREAM or sock.getsockname()[1] != port
                or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)):
            raise ListenerUnavailable(f"the keeper lent something else than {host}:{port}")
        if len(fds) > 1:
            board = AcceptBoard(fds[1])
    except BaseException:
        sock.close()
        for fd in fds[1:]:
            with contextlib.suppress(OSError):
                os.close(fd)
        raise
    return sock, board


def release_listeners(path: Path, timeout_s: float = _TIMEOUT_S) -> bool:
    """Ask the keeper at ``path`` to close its listeners (``rml stop``, before the actors
    drain): then the last replica to close its duplicate closes the port, and new clients
    are refused rather than queued until the keeper exits. True when it answered."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout_s)
            with _unix_address(path) as address:
                conn.connect(address)
            conn.sendall(b"release\n")
            return conn.recv(_MAX_REQUEST).startswith(b"ok")
    except OSError:
        return False


class EdgeListeners:
    """The keeper's side: the node's edge listeners, and the thread that lends them."""

    def __init__(self, path: Path, listeners: dict[tuple[str, int], socket.socket],
                 log: Any) -> None:
        self._path = path
        self._listeners = listeners  # the lending thread's alone once it runs
        # Each listener's accept board (a shared memory file's descriptor), where the
        # system has them.
        self._boards: dict[tuple[str, int], int] = {}
        self._log = log
        self._server: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._closing = False

    @classmethod
    def open(cls, settings: Settings, log: Any) -> EdgeListeners:
        """Bind the edge ports this node serves and start lending them. Raises
        ``OSError`` whose message names the setting (``predict.port: 127.0.0.1:8001 is
        in use by another process``) when a port cannot be bound."""
        listeners: dict[tuple[str, int], socket.socket] = {}
        holder = cls(listeners_path(settings), listeners, log)
        try:
            for key, host, port in edge_ports(settings):
                try:
                    listeners[(host, port)] = bind_listener(host, port)
                except OSError as exc:
                    reason = ("is in use by another process" if exc.errno == errno.EADDRINUSE
                              else f"cannot be bound: {exc.strerror or exc}")
                    raise OSError(exc.errno, f"{key}: {host}:{port} {reason}") from exc
                with contextlib.suppress(AttributeError, OSError):  # no memfd: no board
                    holder._boards[(host, port)] = AcceptBoard.create()
            holder._serve()
        except BaseException:
            holder.close()
            raise
        log.info("edge_listeners_held", path=str(holder._path),
                 addresses=[f"{host}:{port}" for host, port in listeners])
        return holder

    @property
    def addresses(self) -> tuple[tuple[str, int], ...]:
        """The ``(host, port)`` pairs held (as bound at ``open``)."""
        return tuple(self._listeners)

    def close(self) -> None:
        """Stop lending, close the listeners and remove the Unix socket (the keeper exits)."""
        self._closing = True
        server, self._server = self._server, None
        if server is not None:
            with contextlib.suppress(OSError):
                server.shutdown(socket.SHUT_RDWR)  # wakes the thread's accept()
        if self._thread is not None:
            self._thread.join(_TIMEOUT_S * 2)
        if server is not None:
            server.close()
            with contextlib.suppress(OSError):
                self._path.unlink()
        self._close_listeners()
        _HOLDERS.discard(self)

    def _close_listeners(self) -> None:
        for sock in self._listeners.values():
            sock.close()
        self._listeners.clear()
        for fd in self._boards.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._boards.clear()

    def _serve(self) -> None:
        """Create the Unix socket (``0600``, in a private directory) and start lending."""
        _private_directory(self._path.parent)
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()  # a crashed keeper's
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with _unix_address(self._path) as address:
                server.bind(address)
            os.chmod(self._path, 0o600)  # before listen(): no one connects in between
            server.listen(16)
        except BaseException:
            server.close()
            raise
        self._server = server
        _HOLDERS.add(self)
        # In a copy of this thread's context: its log lines carry the keeper's (structlog's
        # contextvars: actor, pid, node).
        self._thread = threading.Thread(target=contextvars.copy_context().run,
                                        args=(self._lend, server), name="rml-listeners",
                                        daemon=True)
        self._thread.start()

    def _lend(self, server: socket.socket) -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                if self._closing:
                    return
                continue
            with conn:
                try:
                    self._answer(conn)
                except OSError as exc:  # a client that went away: its loss
                    self._log.warning("listener_request_failed", error=str(exc))

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(_TIMEOUT_S)
        _, uid, _ = _UCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                  _UCRED.size))
        if uid != os.geteuid():
            self._log.warning("listener_request_refused", peer_uid=uid)
            return
        request = b""
        while not request.endswith(b"\n") and len(request) < _MAX_REQUEST:
            chunk = conn.recv(_MAX_REQUEST)
            if not chunk:
                return
            request += chunk
        words = request.decode(errors="replace").split()
        if words == ["release"]:
            self._close_listeners()
            self._log.info("listeners_released")
            conn.sendall(b"ok")
            return
        if len(words) != 3 or words[0] != "lend" or not words[2].isdigit():
            conn.sendall(b"no: not a request")
            return
        listener = self._listeners.get((words[1], int(words[2])))
        if listener is None:
            conn.sendall(f"no: the keeper holds no listener on {words[1]}:{words[2]}".encode())
            return
        fds = [listener.fileno()]
        board = self._boards.get((words[1], int(words[2])))
        if board is not None:
            fds.append(board)
        socket.send_fds(conn, [b"ok"], fds)

    def _forget_in_child(self) -> None:
        """In a fork of the keeper: close the inherited copies, touch nothing shared."""
        self._closing = True
        if self._server is not None:
            self._server.close()
            self._server = None
        self._close_listeners()
        self._thread = None


def edge_ports(settings: Settings) -> list[tuple[str, str, int]]:
    """``(setting, host, port)`` of each edge port this node's replicas serve (a port 0,
    a fresh one per replica, is left to them)."""
    roles = settings.cluster.roles
    wanted = [("ingest.port", settings.ingest.host, settings.ingest.port, "collector"),
              ("predict.port", settings.predict.host, settings.predict.port, "predictor")]
    return [(key, host, port) for key, host, port, role in wanted if port and role in roles]


def _private_directory(path: Path) -> None:
    """Make ``path`` a directory of ours that no one else can write."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = os.stat(path, follow_symlinks=False)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise PermissionError(errno.EPERM, f"{path} is not a directory of this user's")
    if info.st_mode & 0o022:
        os.chmod(path, stat.S_IMODE(info.st_mode) & ~0o022)


@contextlib.contextmanager
def _unix_address(path: Path) -> Iterator[str]:
    """``path`` as a Unix socket address: through the directory's descriptor when it is
    too long for ``sun_path`` (a deep data directory)."""
    if len(os.fsencode(path)) <= _MAX_UNIX_PATH:
        yield str(path)
        return
    directory = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{directory}/{path.name}"
    finally:
        os.close(directory)


_HOLDERS: set[EdgeListeners] = set()


def _forget_all_in_child() -> None:
    for holder in list(_HOLDERS):
        holder._forget_in_child()
    _HOLDERS.clear()


os.register_at_fork(after_in_child=_forget_all_in_child)
