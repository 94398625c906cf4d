"""A real daemon for end-to-end tests: free ports, a temporary data directory, always stopped."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from config.settings import Settings, load_settings
from runtime.group import end_group, free_ports, group_members, port_accepts
from storage import Stores
from storage.backend import StoreBackend
from storage.registry import ModelRecord

TOKEN = "e2e-test-token-0123"




def wait_for(what: str, predicate: Callable[[], Any], timeout_s: float,
             interval_s: float = 0.05) -> Any:
    """Poll until ``predicate()`` is truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


def scrape(settings: Settings, token: str = TOKEN,
           port: int | None = None) -> dict[str, list[Sample]]:
    """The node's ``GET /metrics`` (its metrics port, or ``port``), parsed by
    prometheus-client's own parser: the samples by family name."""
    url = f"http://127.0.0.1:{port or settings.metrics.port}/metrics"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        text = answer.read().decode()
    return {family.name: list(family.samples)
            for family in text_string_to_metric_families(text)}


def total(families: dict[str, list[Sample]], sample: str, **labels: str) -> float:
    """The sum of ``sample``'s values whose labels include ``labels``."""
    return sum(s.value for samples in families.values() for s in samples if s.name == sample
               and all(s.labels.get(k) == v for k, v in labels.items()))


def stopped(pid: int) -> bool:
    """Whether ``pid`` is in the stopped state (``T``)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] == "T"


@contextmanager
def open_stores(settings: Settings) -> Iterator[Stores]:
    """The stores ``settings`` name, read-only, closed on exit."""
    backend = StoreBackend(settings, read_only=True)
    try:
        yield backend.stores()
    finally:
        backend.close()


@dataclass
class RunningDaemon:
    """Handles on a daemon started by the ``rml`` CLI for a test."""

    config: Path
    settings: Settings
    pgid: int
    started: str = ""  # what `rml start` printed

    def rml(self, *args: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run ``rml --config <ours> ARGS`` and return the finished process."""
        return subprocess.run(
            [sys.executable, "-m", "run_system", "--config", str(self.config), *args],
            capture_output=True, text=True, timeout=timeout_s, env=_env(),
        )

    def status(self) -> dict[str, Any]:
        """``rml status --json``, parsed."""
        done = self.rml("status", "--json")
        assert done.returncode == 0, done.stderr
        return dict(json.loads(done.stdout))

    def actor(self, name: str) -> dict[str, Any]:
        for actor in self.status()["actors"]:
            if actor["name"] == name:
                return dict(actor)
        raise KeyError(name)

    def stores(self) -> AbstractContextManager[Stores]:
        """The daemon's stores, read-only, on its backend."""
        return open_stores(self.settings)

    def champion(self) -> ModelRecord | None:
        """The registry's champion, read from the daemon's store (read-only), if any."""
        with self.stores() as stores:
            return stores.registry.champion()

    def ports(self) -> tuple[int, int, int]:
        s = self.settings
        return (s.actor_system.admin_port, s.ingest.port, s.predict.port)


COUCHBASE_VARIABLES = ("RML_COUCHBASE_URL", "RML_COUCHBASE_USERNAME", "RML_COUCHBASE_PASSWORD")
#: Skips a test unless a Couchbase cluster is given.
NEEDS_CLUSTER = pytest.mark.skipif(
    not all(os.environ.get(name) for name in COUCHBASE_VARIABLES),
    reason="no Couchbase cluster: set " + ", ".join(COUCHBASE_VARIABLES))
#: The backends an end-to-end test runs on: SQLite, and Couchbase when a cluster is given.
BACKENDS = ["sqlite", pytest.param("couchbase", marks=NEEDS_CLUSTER)]


def storage_section(backend: str, scope: str | None = None) -> dict[str, dict[str, Any]]:
    """The config tables for ``backend``: Couchbase on the cluster the variables name, in a
    scope of its own (as each test has a data directory of its own) unless one is given."""
    if backend == "sqlite":
        return {}
    return {"storage": {"backend": "couchbase", "couchbase": {
        "connection_string": os.environ["RML_COUCHBASE_URL"],
        "username": os.environ["RML_COUCHBASE_USERNAME"],
        "password": os.environ["RML_COUCHBASE_PASSWORD"],
        "bucket": os.environ.get("RML_COUCHBASE_BUCKET", "rml"),
        "durability": os.environ.get("RML_COUCHBASE_DURABILITY", "none"),
        "scope": scope or "e2e-" + uuid.uuid4().hex[:12]}}}


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RML_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _toml(value: Any) -> str:
    """A TOML value: JSON's spelling for scalars and arrays, inline tables for dicts (so a
    list of dicts is an array of tables, e.g. ``[[features.collections]]``)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value)


def write_config(data_dir: Path, sections: dict[str, dict[str, Any]] | None = None,
                 store: Path | None = None, **learning: Any) -> Path:
    """A TOML config on free ports in ``data_dir`` (its ``data`` folder, or ``store``);
    ``sections`` adds other tables (e.g. ``{"features": {"plugins": [...]}}``),
    ``learning`` keys go to ``[learning]``."""
    admin, ingest, predict, metrics = free_ports(4)
    tables: dict[str, dict[str, Any]] = {
        "actor_system": {"admin_port": admin},
        "ingest": {"port": ingest, "tokens": [TOKEN]},
        "predict": {"port": predict, "tokens": [TOKEN]},
        "metrics": {"port": metrics},
        "learning": dict(learning),
    }
    for name, keys in (sections or {}).items():
        tables.setdefault(name, {}).update(keys)
    text = f'data_dir = "{store or data_dir / "data"}"\n' + "".join(
        f"[{name}]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in keys.items())
        for name, keys in tables.items())
    config = data_dir / "rml.toml"
    config.write_text(text)
    return config


@contextmanager
def running_daemon(tmp: Path, sections: dict[str, dict[str, Any]] | None = None,
                   store: Path | None = None, **learning: Any) -> Iterator[RunningDaemon]:
    """Start a daemon with the CLI (on the data directory ``store``, if given); on exit stop
    it and prove nothing is left."""
    # Called as ``write_config(tmp, **learning)`` unless sections or a store are given: some
    # tests wrap write_config with that signature.
    config = (write_config(tmp, sections=sections, store=store, **learning)
              if sections or store else write_config(tmp, **learning))
    settings = load_settings(config, environ={})
    started = subprocess.run(
        [sys.executable, "-m", "run_system", "--config", str(config), "start"],
        capture_output=True, text=True, timeout=180, env=_env(),
    )
    record_path = settings.run_dir / "daemon.json"
    pgid = json.loads(record_path.read_text())["pgid"] if record_path.exists() else None
    try:
        assert started.returncode == 0, f"start failed:\n{started.stdout}\n{started.stderr}"
        assert pgid is not None
        yield RunningDaemon(config, settings, pgid, started.stdout)
    finally:
        subprocess.run([sys.executable, "-m", "run_system", "--config", str(config), "stop"],
                       capture_output=True, text=True, timeout=120, env=_env())
        leftover = group_members(pgid) if pgid else []
        if pgid and leftover:
            end_group(pgid)  # never leak a daemon into the next test, even when failing
        assert not leftover, f"processes left after stop: {leftover}"
        ports = (settings.actor_system.admin_port, settings.ingest.port, settings.predict.port,
                 settings.metrics.port)
        busy = [p for p in ports if p and port_accepts("127.0.0.1", p, 0.2)]
        assert not busy, f"ports still bound after stop: {busy}"


# --- several nodes on one machine (``[cluster]``) --------------------------------------------


@dataclass
class Node:
    """One node of a test cluster: its config, settings, and process group once started."""

    name: str
    config: Path
    settings: Settings
    pgid: int | None = None

    def rml(self, *args: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "run_system", "--config", str(self.config), *args],
            capture_output=True, text=True, timeout=timeout_s, env=_env(),
        )

    def start(self) -> None:
        started = self.rml("start", timeout_s=180.0)
        record = self.settings.run_dir / "daemon.json"
        if record.exists():
            self.pgid = json.loads(record.read_text())["pgid"]
        assert started.returncode == 0, f"{self.name}: start failed:\n{started.stdout}\n" \
                                        f"{started.stderr}"

    def stop(self) -> None:
        """``rml stop``, then prove this node left no process and no bound port."""
        self.rml("stop")
        leftover = group_members(self.pgid) if self.pgid else []
        if self.pgid and leftover:
            end_group(self.pgid)
        assert not leftover, f"{self.name}: processes left after stop: {leftover}"
        s = self.settings
        ports = (s.actor_system.admin_port, s.ingest.port, s.predict.port)
        busy = [p for p in ports if port_accepts("127.0.0.1", p, 0.2)]
        assert not busy, f"{self.name}: ports still bound after stop: {busy}"

    def kill(self) -> None:
        """SIGKILL the node's whole process group (its admin, agent and replicas)."""
        assert self.pgid is not None
        end_group(self.pgid)

    def status(self) -> dict[str, Any]:
        done = self.rml("status", "--json")
        assert done.returncode == 0, done.stderr
        return dict(json.loads(done.stdout))

    def stores(self) -> AbstractContextManager[Stores]:
        """The cluster's shared stores, read-only, as this node's settings name them."""
        return open_stores(self.settings)


def cluster_configs(tmp: Path, names: tuple[str, ...],
                    sections: dict[str, dict[str, Any]] | None = None,
                    **learning: Any) -> list[Node]:
    """Configs for a leader (``names[0]``) and members on free ports, one data directory."""
    leader_admin = None
    nodes = []
    for i, name in enumerate(names):
        folder = tmp / name
        folder.mkdir()
        cluster: dict[str, Any] = {"node_name": name}
        if i:
            cluster.update(join=f"127.0.0.1:{leader_admin}", roles=["collector", "predictor"])
        tables = {**(sections or {}), "cluster": cluster}
        config = write_config(folder, sections=tables, **learning)
        text = config.read_text().replace(f'data_dir = "{folder / "data"}"',
                                          f'data_dir = "{tmp / "data"}"')
        config.write_text(text)
        settings = load_settings(config, environ={})
        if not i:
            leader_admin = settings.actor_system.admin_port
        nodes.append(Node(name, config, settings))
    return nodes


@contextmanager
def running_cluster(tmp: Path, names: tuple[str, ...] = ("a", "b"),
                    sections: dict[str, dict[str, Any]] | None = None,
                    **learning: Any) -> Iterator[list[Node]]:
    """A leader and members started with the CLI; each member's replicas running before
    this yields; on exit every node is stopped and proved to leave nothing."""
    nodes = cluster_configs(tmp, names, sections, **learning)
    try:
        for node in nodes:
            node.start()
        for node in nodes[1:]:
            wait_for(f"{node.name}'s replicas running", functools.partial(
                _at_home, nodes[0], node), 60.0, 0.2)
        yield nodes
    finally:
        errors = []
        for node in reversed(nodes):
            try:
                node.stop()
            except AssertionError as exc:
                errors.append(str(exc))
        assert not errors, errors


def _at_home(leader: Node, member: Node) -> bool:
    return replicas_on(leader.status(), member.name) == replica_names(member)


def replica_names(node: Node) -> set[str]:
    """The slots a member hosts at home."""
    s = node.settings
    return ({f"collector-{i}@{node.name}" for i in range(1, s.ingest.collectors + 1)}
            | {f"predictor-{i}@{node.name}" for i in range(1, s.predict.replicas + 1)})


def replicas_on(status: dict[str, Any], node: str) -> set[str]:
    """The names of the actors running on ``node`` that are collectors or predictors."""
    return {a["name"] for a in status["actors"]
            if a["node"] == node and a["state"] == "running"
            and a["role"] in ("collector", "predictor")}
