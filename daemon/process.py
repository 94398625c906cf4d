"""Start, stop and reach the daemon: a process group we own, a keeper, the actor system.

``start`` spawns a keeper in a new session (so a new process group): the
keeper binds the node's HTTP edge ports (one listening socket each, lent to
the replicas: ``actors.listeners``), starts Thespian's ``multiprocTCPBase``
admin bound to loopback and the root supervisor, waits until every actor
answers, records the group in ``<data_dir>/run/daemon.json`` and then stays,
reaping orphans (it is a child subreaper), until it is told to stop. ``stop``
asks the keeper to let go of the edge ports and the actor system to shut down
(actors drain), then ends whatever is left of the group and checks that no
process and no port remains. The keeper's stdout/stderr go to a log file,
never to a pipe that could close under the actors.

``rml start --foreground`` makes the CLI process itself the keeper
(``daemon.keeper.run_foreground``, for systemd and containers): it prepares as
``start`` does (``prepare_start``, ``keeper_environment``), runs ``serve`` and,
told to stop, drains as ``stop`` does (``drain_system``) before it exits.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from actors.listeners import EdgeListeners, listeners_path, release_listeners
from config.settings import Settings
from runtime.group import (
    NODE_ENV,
    children_of,
    end_group,
    group_members,
    port_accepts,
    port_bindable,
    set_process_name,
    wait_until,
)
from runtime.loopback import NoAdmin, bind_thespian_to, connect_only
from supervision.preload import module_of, preload
from supervision.spec import ROOT_NAME, SUPERVISOR_CLASS

__all__ = [
    "DRAIN_TIMEOUT_S",
    "DaemonError",
    "RunRecord",
    "RootClient",
    "ask_root",
    "clear_record",
    "connect",
    "drain_system",
    "keeper_environment",
    "node_ports",
    "prepare_start",
    "read_record",
    "reap_children",
    "serve",
    "start",
    "stop",
    "wait_joined",
]

_PR_SET_CHILD_SUBREAPER = 36
#: How long ``stop`` (and a foreground keeper told to stop) lets the actors drain.
DRAIN_TIMEOUT_S = 20.0


class DaemonError(RuntimeError):
    """The daemon could not be started, reached or stopped (the message says why)."""


@dataclass(frozen=True, slots=True)
class RunRecord:
    """What ``<data_dir>/run/daemon.json`` says about a running daemon."""

    pgid: int
    keeper_pid: int
    admin_port: int
    ingest_port: int
    predict_port: int
    data_dir: str
    started_at_ms: int
    state: str  # "starting" | "ready"
    admin_pid: int = 0  # Thespian's admin (adopted by the keeper); 0 until it is known


def _record_path(settings: Settings) -> Path:
    return settings.run_dir / "daemon.json"


def read_record(settings: Settings) -> RunRecord | None:
    """The run record, or None when there is none (or it is unreadable)."""
    try:
        return RunRecord(**json.loads(_record_path(settings).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _write_record(settings: Settings, record: RunRecord) -> None:
    path = _record_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(record)))
    os.replace(tmp, path)


def clear_record(settings: Settings) -> None:
    """Remove the run record (the daemon it describes is gone)."""
    _record_path(settings).unlink(missing_ok=True)


#: Thespian's convention timers (read by every admin at start; set on every node): a
#: member re-registers every 2 s and is dropped after 3 missed registrations, so the
#: leader's Thespian lets go of a dead member in 4-6 s instead of 22-30 minutes. All three
#: together: the period alone dropped live members (measured, see docs/cluster.md).
CONVENTION_TIMERS = {"CONVENTION_REREGISTRATION_PERIOD": "0:02",
                     "CONVENTION_RESTART_PERIOD": "0:02",
                     "CONVENTION_REGISTRATION_MISS_MAX": "3"}


def _node_capabilities(settings: Settings) -> dict[str, Any]:
    """The admin's capabilities: its port, and who this node is (``supervision.nodes``)."""
    capabilities: dict[str, Any] = {
        "Admin Port": settings.actor_system.admin_port, "Process Startup Method": "fork",
        "rml.node": settings.node_name, "rml.roles": settings.cluster.roles,
        "rml.settings": settings,
    }
    leader = settings.cluster.join_address()
    if leader is not None:
        capabilities["Convention Address.IPv4"] = leader
    return capabilities


def connect(settings: Settings, leader: bool = False) -> Any:
    """A Thespian client of this node's admin, or with ``leader`` of the leader's (where the
    root runs; the same on a single node). Never starts a system of its own."""
    host, port = settings.actor_system.bind, settings.actor_system.admin_port
    joined = settings.cluster.join_address() if leader else None
    if joined is not None:
        host, port = joined
    if not port_accepts(host, port):
        raise DaemonError(f"no daemon answers on {host}:{port}"
                          + (" (the leader this node joins)" if joined else
                             " (is it started? `rml start`)"))
    bind_thespian_to(settings.actor_system.bind)
    from thespian.actors import ActorSystem

    capabilities: dict[str, Any] = {"Admin Port": port}
    if joined is not None:
        capabilities["Convention Address.IPv4"] = joined
    try:
        with connect_only():  # stopped since the probe: no admin of our own
            return ActorSystem("multiprocTCPBase", capabilities, logDefs=None,
                               transientUnique=True)
    except NoAdmin:
        raise DaemonError(f"no daemon answers on {host}:{port} (it stopped as we "
                          f"connected)") from None


def ask_root(settings: Settings, message: Any, timeout_s: float = 10.0) -> Any:
    """Send ``message`` to the root supervisor and return its answer (None on timeout).

    Each call makes a new Thespian client; a service that asks often keeps a ``RootClient``.
    """
    return RootClient(settings).ask(message, timeout_s)


class RootClient:
    """A reusable Thespian client of the root supervisor (one per thread: Thespian's
    external interface is not thread-safe)."""

    def __init__(self, settings: Settings) -> None:
        self._asys = connect(settings, leader=True)
        self._root = self._asys.createActor(SUPERVISOR_CLASS, globalName=ROOT_NAME)

    def ask(self, message: Any, timeout_s: float = 10.0) -> Any:
        """Send ``message`` to the root and wait for one answer (None on timeout)."""
        return self._asys.ask(self._root, message, timeout_s)

    def tell(self, message: Any) -> None:
        """Send ``message`` to the root without waiting (answers come through ``listen``)."""
        self._asys.tell(self._root, message)

    def listen(self, timeout_s: float = 10.0) -> Any:
        """The next message sent to this client (None when none comes within ``timeout_s``)."""
        return self._asys.listen(timeout_s)


def _daemon_alive(record: RunRecord) -> bool:
    return bool(group_members(record.pgid))


def _admin_alive(settings: Settings, record: RunRecord) -> bool:
    """Whether Thespian's admin itself still runs: only then is it worth asking anything.

    Actors fork from the admin and inherit its listening socket, so orphans of a killed
    admin still accept connections on the admin port without ever answering, and a
    Thespian client only gives up on them after about 15 s.
    """
    if record.admin_pid:
        return record.admin_pid in group_members(record.pgid)
    return port_accepts(settings.actor_system.bind, record.admin_port)  # still starting


def _root_answers(settings: Settings, record: RunRecord) -> bool:
    """Whether the recorded daemon is alive: its keeper and admin run and its root answers.

    Both processes are looked up in /proc first: without its keeper the group is a
    leftover whatever else still runs, and without the admin nothing would answer.
    """
    members = group_members(record.pgid)
    if record.keeper_pid not in members or not _admin_alive(settings, record):
        return False
    if not settings.cluster.leads:
        return record.state == "ready"  # a member runs no root of its own
    from messages.protocol import Ping

    try:
        return ask_root(settings, Ping(uuid.uuid4().hex), timeout_s=3.0) is not None
    except Exception:  # Thespian refuses an admin that does not answer: it is not alive
        return False


def _clear_stale(settings: Settings, out: Any) -> None:
    """A daemon that crashed (or was SIGKILLed) leaves a record and maybe orphans: clear both."""
    record = read_record(settings)
    if record is None:
        return
    if _daemon_alive(record):
        if _root_answers(settings, record):
            raise DaemonError(f"a daemon is already running (process group {record.pgid}); "
                              "`rml stop` first")
        print(f"clearing a stale daemon (process group {record.pgid})", file=out)
        if not end_group(record.pgid):
            raise DaemonError(f"could not clear the stale process group {record.pgid}")
    clear_record(settings)


def node_ports(settings: Settings) -> list[tuple[str, str, int]]:
    """``(setting, host, port)`` of every fixed TCP port the node's daemon binds."""
    wanted = [
        ("actor_system.admin_port", settings.actor_system.bind, settings.actor_system.admin_port),
        ("ingest.port", settings.ingest.host, settings.ingest.port),
        ("predict.port", settings.predict.host, settings.predict.port),
        ("metrics.port", settings.metrics.host, settings.metrics.port),
    ]
    return [(key, host, port) for key, host, port in wanted if port]


def _check_ports(settings: Settings) -> None:
    for key, host, port in node_ports(settings):
        if not wait_until(functools.partial(port_bindable, host, port), 3.0):
            raise DaemonError(f"{key}: {host}:{port} is in use by another process")


def _prepare_store(settings: Settings, out: Any) -> None:
    """Couchbase: reach the cluster (within ``bootstrap_timeout_s``) and create the scope and
    collections that are missing, before anything starts, so an unreachable cluster or a
    refused login is one clear error and leaves nothing running. SQLite: nothing to do."""
    if settings.storage.backend != "couchbase":
        _migrate_sqlite(settings, out)
        return
    from storage.couchbase.cluster import connect
    from storage.errors import StoreError

    if settings.storage.couchbase.password and not os.environ.get(
            "RML_STORAGE_COUCHBASE_PASSWORD"):
        print("warning: the Couchbase password is in the configuration file; prefer "
              "RML_STORAGE_COUCHBASE_PASSWORD", file=out, flush=True)
    try:
        connection = connect(settings.storage.couchbase)
        try:
            connection.ensure_collections()
        finally:
            connection.close()
    except StoreError as exc:
        raise DaemonError(f"storage: {exc}") from exc


def _migrate_sqlite(settings: Settings, out: Any) -> None:
    """Bring a data directory written by an earlier release to the current schema before
    any actor opens it (a rebuild can take a while on a large file; said first)."""
    import sqlite3

    from storage import FACTS_FILE
    from storage.errors import StoreError
    from storage.sqlite.connection import schema_version
    from storage.sqlite.facts import SQLiteFactStore

    path = settings.data_path / FACTS_FILE
    if not path.exists():
        return
    newest = schema_version(SQLiteFactStore.MIGRATIONS)
    try:
        with contextlib.closing(sqlite3.connect(path)) as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.Error as exc:
        raise DaemonError(f"storage: {path}: {exc}") from exc
    if version >= newest:
        return
    print(f"migrating {path} from schema {version} to {newest} ...", file=out, flush=True)
    began = time.monotonic()
    try:
        SQLiteFactStore(path, busy_timeout_s=settings.storage.busy_timeout_s).close()
    except StoreError as exc:
        raise DaemonError(f"storage: migrating {path}: {exc}") from exc
    print(f"  done in {time.monotonic() - began:.1f} s", file=out, flush=True)


def prepare_start(settings: Settings, out: Any) -> None:
    """Everything before a keeper starts: clear a stale daemon, check the ports are free,
    reach and prepare the store, make the log and run directories. Raises DaemonError."""
    _clear_stale(settings, out)
    _check_ports(settings)
    _prepare_store(settings, out)
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    settings.run_dir.mkdir(parents=True, exist_ok=True)


def keeper_environment(settings: Settings, environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` as a keeper runs in it: the node's data directory and name, and Thespian's
    convention timers and transmit window unless ``environ`` sets them."""
    env = dict(environ, RML_DATA_DIR=settings.data_dir, PYTHONUNBUFFERED="1",
               **{NODE_ENV: settings.node_name})
    for name, value in CONVENTION_TIMERS.items():
        env.setdefault(name, value)
    # Thespian lets a process have 20 transmits in flight to all receivers together, and
    # one stays in flight until its receiver reads it between two handlers: past that,
    # every send, a Pong to a supervisor included, waits behind the ones to a busy actor.
    # Collectors once filled it with hints to the training learner and were killed as
    # unresponsive; hints are now flow-controlled at the source (actors/hints.py,
    # bench/transmit_window.py). The wider window stays as a margin for the sends that
    # pile up towards an actor that hangs until its supervisor kills it.
    env.setdefault("THESPIAN_MAX_PENDING_TRANSMITS", "1000")
    return env


def start(settings: Settings, config_path: str | None, out: Any = sys.stdout) -> RunRecord:
    """Start the daemon detached; return once every actor answers."""
    prepare_start(settings, out)
    cmd = [sys.executable, "-m", "daemon.keeper"]
    if config_path:
        cmd += ["--config", str(Path(config_path).resolve())]
    env = keeper_environment(settings, os.environ)
    keeper_out = open(settings.log_dir / "daemon.out", "ab")  # noqa: SIM115
    try:
        keeper = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=keeper_out, stderr=subprocess.STDOUT,
            start_new_session=True, env=env, close_fds=True,
            cwd=str(settings.data_path),
        )
    finally:
        keeper_out.close()
    deadline = time.monotonic() + settings.actor_system.start_timeout_s
    while time.monotonic() < deadline:
        record = read_record(settings)
        if record is not None and record.keeper_pid == keeper.pid and record.state == "ready":
            return record
        if keeper.poll() is not None:
            break
        time.sleep(0.01)
    # Failed or too slow: leave nothing behind.
    end_group(keeper.pid)
    keeper.wait(timeout=5)
    clear_record(settings)
    tail = _tail(settings.log_dir / "daemon.out")
    raise DaemonError(f"the daemon did not start (keeper exit {keeper.returncode}); "
                      f"last lines of {settings.log_dir / 'daemon.out'}:\n{tail}")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no output)"


@dataclass(frozen=True, slots=True)
class StopReport:
    """What ``stop`` did and found."""

    was_running: bool
    graceful: bool
    killed: int
    leftover_pids: tuple[int, ...]
    busy_ports: tuple[int, ...]


def stop(settings: Settings, drain_timeout_s: float = DRAIN_TIMEOUT_S) -> StopReport:
    """Shut the actor system down (actors drain), end the group, check nothing is left."""
    record = read_record(settings)
    if record is None:
        return StopReport(False, True, 0, (), ())
    graceful = False
    # The keeper lets go of the edge ports first: they close with the last replica's
    # drain, as new clients should see, and are not left queueing on the keeper's copy.
    release_listeners(listeners_path(settings))
    if _daemon_alive(record) and _admin_alive(settings, record):
        graceful = drain_system(settings, drain_timeout_s)
    # The keeper ends itself once the admin is gone; then end whatever else is left.
    with contextlib.suppress(ProcessLookupError):
        os.kill(record.keeper_pid, signal.SIGTERM)
    if graceful:  # otherwise nothing in the group is about to exit on its own
        wait_until(lambda: not group_members(record.pgid), 5.0)
    leftover = group_members(record.pgid)
    killed = len(leftover)
    if leftover:
        end_group(record.pgid)
    ports = (record.admin_port, record.ingest_port, record.predict_port,
             *((settings.metrics.port,) if settings.metrics.port else ()))
    wait_until(lambda: not any(port_accepts("127.0.0.1", p, 0.2) for p in ports), 5.0)
    busy = tuple(p for p in ports if port_accepts("127.0.0.1", p, 0.2))
    remaining = tuple(group_members(record.pgid))
    if not remaining:
        clear_record(settings)
    return StopReport(True, graceful, killed, remaining, busy)


def _leave(settings: Settings, timeout_s: float = 10.0) -> bool:
    """A member that stops tells the leader first and waits until its replicas run on other
    nodes (they serve until then: make before break); True when they do. A leader that does
    not answer cannot place anything: the member stops all the same."""
    from messages.protocol import LeaveRequest, StatusReport, StatusRequest

    deadline = time.monotonic() + timeout_s
    try:
        client = RootClient(settings)
        if client.ask(LeaveRequest(settings.node_name, uuid.uuid4().hex), 3.0) is None:
            return False
        while time.monotonic() < deadline:
            report = client.ask(StatusRequest(uuid.uuid4().hex), 3.0)
            if isinstance(report, StatusReport) and not any(
                    a.node == settings.node_name and a.state in ("running", "starting")
                    for a in report.actors):
                return True
            time.sleep(0.05)
    except Exception:  # the leader is away: nothing to hand over to
        return False
    return False


def wait_joined(settings: Settings, timeout_s: float = 15.0) -> int | None:
    """A member just started: wait until the leader lists it up with every replica placed
    there running; how many run there, or None when the leader does not answer in time.
    Raises DaemonError with the leader's reason when it refuses the node."""
    from messages.protocol import StatusReport, StatusRequest

    roles = settings.cluster.roles
    wanted = (settings.ingest.collectors * ("collector" in roles)
              + settings.predict.replicas * ("predictor" in roles))
    deadline = time.monotonic() + timeout_s
    try:
        client = RootClient(settings)
    except DaemonError:
        return None
    running: int | None = None
    while time.monotonic() < deadline:
        report = client.ask(StatusRequest(uuid.uuid4().hex), 3.0)
        if isinstance(report, StatusReport):
            mine = [n for n in report.nodes if n.name == settings.node_name]
            if mine and all(n.state == "refused" for n in mine):
                raise DaemonError(f"the leader at {settings.cluster.join} refused node "
                                  f"{settings.node_name}: {mine[-1].problem}")
            here = [a for a in report.actors if a.node == settings.node_name]
            running = sum(a.state == "running" for a in here)
            if any(n.state == "up" for n in mine) and running >= wanted:
                return running
        time.sleep(0.1)
    return running


def drain_system(settings: Settings, timeout_s: float = DRAIN_TIMEOUT_S,
                 cut_short: threading.Event | None = None) -> bool:
    """Shut the recorded daemon's actor system down (actors drain; a member hands its
    replicas over first). True once it has; False when no admin of it runs, or after
    ``timeout_s``, or as soon as ``cut_short`` is set."""
    record = read_record(settings)
    if record is None or not _daemon_alive(record) or not _admin_alive(settings, record):
        return False
    if not settings.cluster.leads:
        _leave(settings)
    return _shutdown_system(settings, timeout_s, cut_short)


def _shutdown_system(settings: Settings, timeout_s: float,
                     cut_short: threading.Event | None = None) -> bool:
    done = threading.Event()

    def run() -> None:
        try:
            connect(settings).shutdown()
        except Exception:
            pass
        finally:
            done.set()

    threading.Thread(target=run, daemon=True, name="rml-stop").start()
    if cut_short is None:
        return done.wait(timeout_s)
    deadline = time.monotonic() + timeout_s
    while not done.wait(0.05):
        if cut_short.is_set() or time.monotonic() >= deadline:
            return False
    return True


# --- the keeper (runs in the daemon's own session) ----------------------------------


def serve(settings: Settings, stop_requested: threading.Event | None = None) -> int:
    """Keeper main: start the actor system and the tree, record it, reap orphans until stopped.

    SIGTERM and SIGINT stop it, unless the caller (the foreground keeper, which handles
    them itself) passes the ``stop_requested`` its handlers set. 0 once stopped (or the
    admin is gone), 1 when the tree could not start."""
    from runtime.logs import configure_logging, get_logger

    configure_logging(settings.log_dir, settings.log_level, actor="keeper")
    set_process_name("rml-keeper")  # the admin and Thespian's logger, forked from it, too
    log = get_logger()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        log.warning("no_subreaper")
    # Every process forked from here on writes its metrics where one scrape merges them.
    from actors.metrics import use_directory

    use_directory(settings.run_dir / "metrics")
    requested = threading.Event() if stop_requested is None else stop_requested
    if stop_requested is None:
        # Set from a thread: Event.set in a handler could wait for the very lock the
        # interrupted main thread holds inside Event.wait.
        def stop(*_: Any) -> None:
            threading.Thread(target=requested.set, name="rml-stop-signal", daemon=True).start()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
    # The edge ports, bound here once for the node's replicas (actors.listeners), before
    # anything forks: a port taken meanwhile is this one clear error, and nothing started.
    try:
        listeners = EdgeListeners.open(settings, log)
    except OSError as exc:
        log.error("start_failed", error=str(exc))
        print(f"start failed: {exc}", flush=True)
        return 1
    held = bool(listeners.addresses)
    try:
        return _run_system(settings, requested, log)
    finally:
        if held and not listeners.addresses:
            # `rml stop` lets go of the edges before it shuts the admin down: the admin
            # gone, this was a stop asked for, not a crash (a foreground keeper's exit 0).
            requested.set()
        listeners.close()


def _run_system(settings: Settings, stop_requested: threading.Event, log: Any) -> int:
    """The keeper's life once the listeners are held: the actor system, then ``_keep``."""
    from runtime.logs import thespian_log_defs

    bind_thespian_to(settings.actor_system.bind)
    _keep_admin_in_our_group()
    _preload_actor_modules(settings)
    from thespian.actors import ActorSystem

    record = RunRecord(os.getpgrp(), os.getpid(), settings.actor_system.admin_port,
                       settings.ingest.port, settings.predict.port, settings.data_dir,
                       int(time.time() * 1000), "starting")
    _write_record(settings, record)
    asys = ActorSystem("multiprocTCPBase", _node_capabilities(settings),
                       logDefs=thespian_log_defs(settings.log_dir, settings.log_level))
    # Opened once the admin has forked: no actor process inherits its listening socket.
    from daemon.metrics_port import open_metrics_port

    try:
        metrics_port = open_metrics_port(settings)
    except OSError as exc:
        log.error("start_failed", error=f"metrics.port: {exc}")
        print(f"start failed: metrics.port: {exc}", flush=True)
        asys.shutdown()
        return 1
    try:
        return _lead_or_join(settings, record, stop_requested, log, asys)
    finally:
        if metrics_port is not None:
            metrics_port.stop()


def _lead_or_join(settings: Settings, record: RunRecord, stop_requested: threading.Event,
                  log: Any, asys: Any) -> int:
    """A leader starts the tree and keeps it; a member keeps what the leader places."""
    from messages.protocol import StartSystem, SystemStarted

    if not settings.cluster.leads:
        return _serve_member(settings, record, stop_requested, log)
    root = asys.createActor(SUPERVISOR_CLASS, globalName=ROOT_NAME)
    correlation_id = uuid.uuid4().hex
    answer = asys.ask(root, StartSystem(settings, correlation_id),
                      settings.actor_system.start_timeout_s)
    if not isinstance(answer, SystemStarted) or not answer.ok:
        log.error("start_failed", answer=repr(answer))
        print(f"start failed: {answer!r}", flush=True)
        asys.shutdown()
        return 1
    # The admin daemonized with a double fork; the keeper, a subreaper, adopted it.
    admins = children_of(os.getpid())
    admin_pid = admins[0] if len(admins) == 1 else 0
    _write_record(settings, RunRecord(**{**asdict(record), "state": "ready",
                                         "admin_pid": admin_pid}))
    log.info("daemon_ready", actors=len(answer.actors), pgid=record.pgid)
    print(f"daemon ready: process group {record.pgid}", flush=True)
    return _keep(settings, stop_requested, log)


def _serve_member(settings: Settings, record: RunRecord, stop_requested: threading.Event,
                  log: Any) -> int:
    """A member's keeper: its admin joins the leader's convention by itself (and keeps
    trying while the leader is away); the leader places replicas on it."""
    admins = children_of(os.getpid())
    _write_record(settings, RunRecord(**{**asdict(record), "state": "ready",
                                         "admin_pid": admins[0] if len(admins) == 1 else 0}))
    log.info("member_ready", pgid=record.pgid, join=settings.cluster.join,
             roles=list(settings.cluster.roles))
    print(f"member ready: process group {record.pgid}; joining {settings.cluster.join}",
          flush=True)
    return _keep(settings, stop_requested, log)


def _keep(settings: Settings, stop_requested: threading.Event, log: Any) -> int:
    """Reap orphans until told to stop or the admin is gone."""
    while not stop_requested.is_set():
        reap_children()
        if not port_accepts(settings.actor_system.bind, settings.actor_system.admin_port, 1.0):
            log.warning("admin_gone")
            break
        stop_requested.wait(1.0)
    reap_children()
    log.info("keeper_exiting")
    return 0


# Modules an actor imports on first use (zipfile's codec, for a skops artifact);
# imported here they are inherited instead of costing each restart its import time.
_IMPORTED_ON_FIRST_USE = ("encodings.cp437",)


def _preload_actor_modules(settings: Settings) -> None:
    """Import the supervisor's and every worker's module once, here, before the admin forks.

    Every actor process is forked from its parent's, down from the admin, which is forked
    from the keeper: what is imported here is shared, copy-on-write, by all of them (one
    copy of numpy and the actors instead of one per supervisor). No worker module imports
    scikit-learn at start (the learner and the publisher do on first use), so none of it
    lands in a predictor's process. On a member, the admin itself forks the replicas placed
    there: it imports theirs.
    """
    from supervision.spec import SupervisorSpec, system_tree

    def workers(spec: SupervisorSpec) -> list[str]:
        return [module for child in spec.children
                for module in [module_of(child.actor_class),
                               *(workers(child.spec) if child.spec else [])]]

    modules = [module_of(SUPERVISOR_CLASS), *_IMPORTED_ON_FIRST_USE,
               *workers(system_tree(settings))]
    if not settings.cluster.leads:
        modules += ["supervision.node_agent", "actors.collector", "actors.predictor"]
    preload(modules)


def _keep_admin_in_our_group() -> None:
    """Thespian's admin daemonizes itself (``setsid`` and a double fork), which would take it
    and every actor out of the process group the keeper owns, and out of ``stop``'s reach.
    The keeper already runs in a session of its own, so the admin's ``setsid`` is skipped;
    its double fork still happens and the keeper (a subreaper) adopts it."""
    from thespian.system import multiprocCommon

    original = multiprocCommon.startAdmin
    if getattr(original, "_rml_wrapped", False):
        return

    def start_admin(*args: Any, **kwargs: Any) -> Any:
        setattr(os, "setsid", os.getpid)  # noqa: B010 (runs only in the forked admin process)
        return original(*args, **kwargs)

    start_admin._rml_wrapped = True  # type: ignore[attr-defined]
    multiprocCommon.startAdmin = start_admin


def reap_children() -> None:
    """Collect every child of this process that has exited (the keeper is a subreaper: the
    daemon's orphans are its children)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
