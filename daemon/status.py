"""What ``rml status`` shows: the supervision tree from the root, counters from the stores."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict
from typing import Any

from config.settings import Settings
from daemon.process import DaemonError, ask_root, read_record
from messages.protocol import StatusReport, StatusRequest
from storage.errors import StoreError

__all__ = ["collect_status", "drift_view", "render_status", "utc_text"]


def _store_view(settings: Settings) -> dict[str, Any]:
    """Counters, champion and active collection, read straight from the stores (read-only)."""
    from storage.backend import StoreBackend

    view: dict[str, Any] = {}
    backend = StoreBackend(settings, read_only=True)
    try:
        stores = backend.stores()
        counts = stores.facts.counts()
        view["counters"] = {
            "readings_stored": counts.readings,
            "outcomes_stored": counts.outcomes,
            "models_registered": len(stores.registry.versions()),
            "dead_letters": stores.deadletters.count(),
        }
        champion = stores.registry.champion()
        view["model"] = None if champion is None else {
            "version": champion.version,
            "feature_collection_id": champion.feature_collection_id,
            "metrics": dict(champion.metrics),
        }
        view["feature_collection"] = _feature_view(stores.features)
        view["shadow"] = _shadow_view(backend, stores.registry)
        view["drift"] = drift_view(settings, backend)
    finally:
        backend.close()
    return view


def drift_view(settings: Settings, backend: Any = None) -> dict[str, Any]:
    """The newest drift check (PSI per feature, threshold, when), from the learner's drift
    log, and the last training run (trigger, trainer, outcome), from the training runs
    (nothing yet: ``None`` for each). ``backend``: a read-only ``StoreBackend`` to use."""
    from storage.backend import StoreBackend
    from storage.errors import StoreError

    own = backend is None
    stores = StoreBackend(settings, read_only=True) if backend is None else backend
    view: dict[str, Any] = {"threshold": settings.learning.drift_threshold,
                            "check_interval_s": settings.learning.drift_check_interval_s,
                            "last_check": None, "last_run": None}
    try:
        try:  # before the learner's first run, an SQLite data directory has no such file
            runs = stores.training_runs().runs(1)
            view["last_run"] = runs[0].to_mapping() if runs else None
        except StoreError:
            pass
        try:
            check = stores.drift_log().latest_check()
        except StoreError:
            check = None
    finally:
        if own:
            stores.close()
    if check is not None:
        view["last_check"] = {
            "at_ms": check.at_ms, "champion_version": check.champion_version,
            "collection_id": check.collection_id, "threshold": check.threshold,
            "window": {"start_ms": check.window_start_ms, "end_ms": check.window_end_ms},
            "rows": check.rows, "psi": dict(check.scores), "max_psi": check.max_psi,
            "above_threshold": check.above, "episode_started_at_ms": check.episode_started_at_ms,
        }
    return view


#: A shadow model's progress before its trial has begun (``ShadowTrial.to_mapping``'s keys).
_NO_TRIAL: dict[str, Any] = {"target": None, "served": 0, "agreed": 0, "errors": 0}


def _shadow_view(backend: Any, registry: Any) -> list[dict[str, Any]]:
    """Models serving in shadow, each with how far it is towards its promotion."""
    from storage.registry import SHADOW

    shadows = [r for r in registry.versions() if r.status == SHADOW]
    if not shadows:
        return []
    trials = backend.shadow_trials()
    view = []
    for record in shadows:
        trial = trials.get(record.version)
        progress = trial.to_mapping() if trial else _NO_TRIAL
        view.append({"version": record.version,
                     "feature_collection_id": record.feature_collection_id,
                     **{key: progress[key] for key in _NO_TRIAL},
                     "roc_auc": dict(record.metrics).get("roc_auc")})
    return view


def _feature_view(features: Any) -> dict[str, Any]:
    """The active collection, every collection, invalid features (first verdict each, with its
    reason) and the history of switches."""
    from learning.features.collections import usable_collection_ids

    collections = features.collections()
    invalid = features.invalid_features()
    usable = usable_collection_ids(collections, invalid)
    active = features.active_collection_id()
    first_verdicts: dict[str, Any] = {}
    for record in features.invalid_feature_log():
        first_verdicts.setdefault(record.feature, asdict(record))
    return {
        "active": active,
        "active_features": next((list(c.features) for c in collections if c.id == active), []),
        "invalid_features": sorted(invalid),
        "invalid": list(first_verdicts.values()),
        "collections": [{"id": c.id, "features": list(c.features), "usable": c.id in usable}
                        for c in collections],
        "switches": [asdict(s) for s in features.switches()],
    }


def collect_status(settings: Settings, timeout_s: float = 10.0) -> dict[str, Any]:
    """Everything ``status --json`` prints. Raises DaemonError when no daemon answers."""
    record = read_record(settings)
    report = ask_root(settings, StatusRequest(uuid.uuid4().hex), timeout_s)
    if not isinstance(report, StatusReport):
        raise DaemonError(f"the root supervisor did not answer in {timeout_s:.0f} s")
    status: dict[str, Any] = {
        "running": True,
        "pgid": record.pgid if record else None,
        "data_dir": settings.data_dir,
        "ports": {"admin": settings.actor_system.admin_port, "ingest": settings.ingest.port,
                  "predict": settings.predict.port},
        "node": settings.node_name,
        "nodes": [
            {"name": n.name, "address": n.address, "roles": list(n.roles),
             "joined_at_ms": n.joined_at_ms, "last_seen_ms": n.last_seen_ms,
             "state": n.state, "leader": n.leader, "problem": n.problem or None}
            for n in report.nodes
        ],
        "actors": [
            {"name": a.name, "node": a.node, "role": a.role, "pid": a.pid,
             "restarts": a.restarts, "state": a.state, "supervisor": a.supervisor,
             **({"notes": {k: _plain(v) for k, v in a.notes}} if a.notes else {})}
            for a in report.actors
        ],
    }
    if settings.mqtt.url:
        collectors = {a.name: _plain(dict(a.notes).get("mqtt")) for a in report.actors
                      if a.role == "collector" and a.state == "running"}
        status["mqtt"] = {"url": settings.mqtt.url,
                          "connected": sum(bool(c and c.get("connected"))
                                           for c in collectors.values()),
                          "collectors": collectors}
    status["store"] = _store_health(settings)
    try:
        status.update(_store_view(settings))
    except StoreError as exc:  # the tree is still worth showing; the store's state says why
        status["store"].update(healthy=False, error=str(exc))
    return status


def _plain(value: Any) -> Any:
    """A note's value as JSON: a tuple of pairs is a mapping."""
    if isinstance(value, tuple) and all(isinstance(p, tuple) and len(p) == 2 for p in value):
        return {k: _plain(v) for k, v in value}
    return value


def _store_health(settings: Settings) -> dict[str, Any]:
    """Which store the daemon uses, where; healthy until a read fails."""
    storage = settings.storage
    if storage.backend == "couchbase":
        cb = storage.couchbase
        where = f"{cb.connection_string} {cb.bucket}.{cb.scope}"
    else:
        where = str(settings.data_path)
    return {"backend": storage.backend, "where": where, "healthy": True, "error": None}


def utc_text(at_ms: Any) -> str:
    """A store's millisecond timestamp as a UTC time people read (``?`` for none)."""
    if at_ms is None:
        return "?"
    try:
        return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(int(at_ms) / 1000))
    except (TypeError, ValueError, OverflowError):
        return str(at_ms)


def render_status(status: dict[str, Any]) -> str:
    """A human view of ``collect_status``: the tree, then model and counters."""
    lines = [f"daemon: running (process group {status['pgid']}), data in {status['data_dir']}"]
    ports = status["ports"]
    lines.append(f"ports: ingest {ports['ingest']}, predict {ports['predict']}, "
                 f"actor system {ports['admin']} (loopback)")
    nodes = status.get("nodes", [])
    if len(nodes) > 1:
        lines.append(f"nodes (this is {status.get('node')}):")
        for node in nodes:
            lead = " (leader)" if node["leader"] else ""
            problem = f": {node['problem']}" if node.get("problem") else ""
            lines.append(f"  - {node['name']}{lead}: {node['state']}{problem}; roles "
                         f"{', '.join(node['roles'])}; joined {utc_text(node['joined_at_ms'])}, "
                         f"last seen {utc_text(node['last_seen_ms'])}")
    lines.append("supervision tree:")
    children: dict[str, list[dict[str, Any]]] = {}
    for actor in status["actors"]:
        children.setdefault(actor["supervisor"], []).append(actor)

    def walk(name: str, depth: int) -> None:
        for actor in children.get(name, []):
            where = f" on {actor['node']}" if len(nodes) > 1 and actor.get("node") else ""
            lines.append(f"{'  ' * depth}- {actor['name']:<18} {actor['state']:<10} "
                         f"pid {actor['pid']:<7} restarts {actor['restarts']}{where}")
            walk(actor["name"], depth + 1)

    walk("", 1)
    mqtt = status.get("mqtt")
    if mqtt:
        lines.append(f"mqtt: {mqtt['url']}: {mqtt['connected']}/{len(mqtt['collectors'])} "
                     "collectors connected")
        for name, state in sorted(mqtt["collectors"].items()):
            if state and not state.get("connected"):
                lines.append(f"  {name}: {state.get('error')} (since "
                             f"{utc_text(state.get('since_ms'))})")
    store = status.get("store")
    if store:
        state = "ok" if store["healthy"] else f"UNAVAILABLE: {store['error']}"
        lines.append(f"store: {store['backend']} at {store['where']}: {state}")
    model = status.get("model")
    if model:
        auc = model["metrics"].get("roc_auc")
        lines.append(f"champion model: version {model['version']} on feature collection "
                     f"{model['feature_collection_id']} (holdout ROC AUC {auc:.3f})")
    else:
        lines.append("champion model: none yet")
    for shadow in status.get("shadow", []):
        lines.append(f"shadow model: version {shadow['version']} on feature collection "
                     f"{shadow['feature_collection_id']}: {shadow['served']}/{shadow['target']} "
                     f"requests served in shadow ({shadow['agreed']} agreed with the champion, "
                     f"{shadow['errors']} errors)")
    fc = status.get("feature_collection", {})
    lines.append(f"active feature collection: {fc.get('active')} "
                 f"({', '.join(fc.get('active_features', []))})")
    for verdict in fc.get("invalid", []):
        lines.append(f"  invalid feature {verdict['feature']}: {verdict['reason']}")
    for switch in fc.get("switches", []):
        lines.append(f"  switched to collection {switch['collection_id']} at "
                     f"{utc_text(switch['at_ms'])}: {switch['reason']}")
    lines.extend(_render_drift(status.get("drift")))
    lines.append("counters: " + json.dumps(status.get("counters", {})))
    return "\n".join(lines)


def _render_drift(drift: dict[str, Any] | None) -> list[str]:
    """The drift section of ``render_status``."""
    if not drift:
        return []
    check, run = drift.get("last_check"), drift.get("last_run")
    if check is None:
        lines = [f"drift: not checked yet (threshold {drift['threshold']:g}, every "
                 f"{drift['check_interval_s']:g} s)"]
    else:
        verdict = "ABOVE threshold" if check["above_threshold"] else "below threshold"
        lines = [f"drift: max PSI {check['max_psi']:.3f}, {verdict} {check['threshold']:g} "
                 f"(champion version {check['champion_version']}, {check['rows']} recent rows, "
                 f"checked at {utc_text(check['at_ms'])})"]
        for name, score in sorted(check["psi"].items(), key=lambda item: -item[1]):
            mark = "  <- drift" if score > check["threshold"] else ""
            lines.append(f"  psi {name:<20} {score:8.3f}{mark}")
    if run is not None:
        trigger = run["trigger"]
        ended = (f"registered version {run['version']}" if run["outcome"] == "registered"
                 else run["outcome"] + (f": {run['error']}" if run["error"] else ""))
        lines.append(f"last training run: {trigger['kind']} at {utc_text(run['started_at_ms'])}: "
                     f"{trigger['reason']} -> {ended} ({run['trainer']}, "
                     f"{run['seconds']:.1f} s)")
    return lines
