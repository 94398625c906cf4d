"""``rml demo``: the whole loop on a real daemon, in about two minutes.

Starts a daemon on the settings given (a fresh data directory under
``data_dir``), plays field gateways over HTTP (duplicates, late and
malformed readings included; one in the talk's ``PreyReading`` format) and
one over MQTT (through a Mosquitto it starts, when one is installed), waits for a
published model, asks for
predictions over HTTP and through Thespian, SIGKILLs a predictor and a
collector and shows both answer again, prints a summary and stops the daemon,
checking that no process and no port is left. The HTTP gateways and the predictions
are ``rml_client``'s, as another service's would be.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from config.settings import Settings
from daemon.process import RootClient, start, stop
from daemon.status import collect_status
from learning.models.lineage import outcomes_seen
from messages.protocol import ActorInfo, StatusReport, StatusRequest
from players.broker import Broker, mosquitto_binary, running_broker
from players.ceiling import holdout_best_auc
from players.gateway import IngestTally, publish_items, talk_item
from players.simulator import Savanna
from rml_client import (
    BatchResult,
    GatewayClient,
    Prediction,
    PredictionClient,
    RmlError,
    ThespianPredictionClient,
)

__all__ = ["run_demo"]


def _say(text: str) -> None:
    print(text, flush=True)


def _wait(what: str, predicate: Any, timeout_s: float, every_s: float = 0.2) -> Any:
    """Wait for ``predicate()`` to return something truthy, showing progress; raise on timeout."""
    started = time.monotonic()
    shown = 0.0
    while True:
        value = predicate()
        if value:
            return value
        elapsed = time.monotonic() - started
        if elapsed > timeout_s:
            raise TimeoutError(f"gave up waiting for {what} after {timeout_s:.0f} s")
        if elapsed - shown >= 2.0:
            _say(f"  ... waiting for {what} ({elapsed:.0f} s)")
            shown = elapsed
        time.sleep(every_s)


def _champion(settings: Settings) -> Any:
    """The champion now (None before the publisher's first), read-only from the registry."""
    from storage.backend import StoreBackend
    from storage.errors import StoreError

    backend = StoreBackend(settings, read_only=True)
    try:
        return backend.registry().champion()
    except StoreError:  # no registry yet: no champion yet; the caller polls again
        return None
    finally:
        backend.close()


def _kill_and_wait(root: RootClient, name: str, probe: Any) -> float:
    """SIGKILL an actor by pid; return seconds until it runs again and ``probe()`` succeeds.

    The root's directory is asked through one long-lived client: a fresh Thespian client
    per poll (~65 ms) would be most of what is measured."""

    def actor() -> ActorInfo:
        report = root.ask(StatusRequest(uuid.uuid4().hex), 5.0)
        if not isinstance(report, StatusReport):
            raise TimeoutError("the root supervisor did not answer")
        return next(a for a in report.actors if a.name == name)

    before = actor()
    killed_at = time.monotonic()
    os.kill(before.pid, signal.SIGKILL)

    def back() -> bool:
        now = actor()
        return now.state == "running" and now.pid != before.pid and bool(probe())

    _wait(f"{name} to answer again", back, 30.0, every_s=0.01)
    return time.monotonic() - killed_at


def last_midnight_ms() -> int:
    """The latest midnight (UTC) before now: simulated days then end at the same hour in
    every run, so the hour-of-day features (and the AUCs) are the same in every run."""
    day = 86_400_000
    return (int(time.time() * 1000) // day) * day


def run_demo(base: Settings, config_path: str | None) -> int:
    """Run the demo; 0 when every step did what it should."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    data_dir = os.path.join(base.data_dir, "demo-" + stamp)
    settings = replace(base, data_dir=data_dir)
    os.environ["RML_DATA_DIR"] = data_dir  # the keeper re-reads settings from the environment
    where = data_dir
    if settings.storage.backend == "couchbase":  # a fresh scope, as a fresh data directory
        couchbase = replace(settings.storage.couchbase,
                            scope=f"{settings.storage.couchbase.scope}-demo-{stamp}")
        settings = replace(settings, storage=replace(settings.storage, couchbase=couchbase))
        os.environ["RML_STORAGE_COUCHBASE_SCOPE"] = couchbase.scope
        where += f" and Couchbase scope {couchbase.scope!r}"
    started = time.monotonic()
    _say(f"Reactive ML demo: data in {where}")
    with contextlib.ExitStack() as stack:
        broker = _demo_broker(settings, stack)
        if broker is not None:
            settings = replace(settings, mqtt=replace(settings.mqtt, url=broker.url))
            os.environ["RML_MQTT_URL"] = broker.url
        return _run(settings, config_path, broker, started)
    return 1


def _demo_broker(settings: Settings, stack: contextlib.ExitStack) -> Broker | None:
    """A Mosquitto for the MQTT gateway, on the project's own config and a free port, when
    one is installed and no broker is configured; None (said why) otherwise."""
    if settings.mqtt.url:
        _say(f"MQTT: the configured broker {settings.mqtt.url} is not the demo's: the fourth "
             "gateway sends over HTTP")
        return None
    if mosquitto_binary() is None:
        _say("MQTT: no mosquitto installed (Debian's `mosquitto` package): the fourth "
             "gateway sends over HTTP")
        return None
    broker = stack.enter_context(running_broker(Path(settings.data_dir).resolve() / "mosquitto"))
    _say(f"MQTT: a Mosquitto for the demo at {broker.url} (deploy/mosquitto.conf)")
    return broker


def _run(settings: Settings, config_path: str | None, broker: Broker | None,
         started: float) -> int:
    _say("starting the daemon ...")
    record = start(settings, config_path)
    try:
        _say(f"  up in {time.monotonic() - started:.1f} s (process group {record.pgid})")
        return _play(settings, started, broker)
    except Exception as exc:
        _say(f"demo failed: {type(exc).__name__}: {exc}")
        return 1
    finally:
        _say("stopping the daemon ...")
        report = stop(settings)
        if report.leftover_pids or report.busy_ports:
            _say(f"  LEFT BEHIND: processes {list(report.leftover_pids)}, ports "
                 f"{list(report.busy_ports)}")
        else:
            _say(f"  stopped ({'drained' if report.graceful else 'forced'}): no process and "
                 "no bound port left")
        _say(f"demo took {time.monotonic() - started:.0f} s")


def _play(settings: Settings, started: float, broker: Broker | None) -> int:
    ingest = settings.ingest
    token = ingest.tokens[0]
    savanna = Savanna(seed=7, end_ms=last_midnight_ms())
    traffic = savanna.traffic()
    _say(f"playing 4 field gateways: {len(traffic.items)} reading items "
         f"({traffic.n_duplicates} resent, {traffic.n_late} late, {len(traffic.malformed)} "
         "malformed): JSON, msgpack, the talk's PreyReading format (camelCase, real-valued "
         "bounds), and " + ("MQTT" if broker else "msgpack (no MQTT broker)") + " ...")
    if broker is not None:
        _wait("the collectors subscribed to the broker",
              lambda: collect_status(settings)["mqtt"]["connected"] == ingest.collectors, 30.0)
    tally = IngestTally()
    lock = threading.Lock()

    def gateway(part: int) -> None:
        mine = IngestTally()
        items = traffic.items[part::4]
        if part == 3 and broker is not None:
            mine = publish_items("127.0.0.1", broker.port, "demo-gateway-4", "readings", items)
        else:
            if part == 2:
                items = tuple(talk_item(item) for item in items)
            with GatewayClient(host=ingest.host, port=ingest.port, token=token,
                               format="msgpack" if part % 2 else "json",
                               batch_size=1000) as client:
                try:
                    mine.add_result(client.send(items))
                except RmlError as exc:  # a batch never acknowledged: said below
                    mine.add_result(exc.acknowledged or BatchResult())
                    mine.failed_batches += -(-len(exc.unacknowledged) // client.batch_size)
        with lock:
            tally.merge(mine)

    threads = [threading.Thread(target=gateway, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _say(f"  readings: {tally.accepted} stored, {tally.duplicates} duplicates detected, "
         f"{sum(tally.rejected.values())} rejected ({dict(tally.rejected)})"
         + (f"; {tally.failed_batches} batches NOT ACKNOWLEDGED" if tally.failed_batches
            else ""))
    with GatewayClient(host=ingest.host, port=ingest.port, token=token,
                       batch_size=5000) as rangers:
        outcomes = rangers.send_outcomes(savanna.outcome_items())
        resent = rangers.send_outcomes(savanna.outcome_items()[:100])
    _say(f"  outcomes: {outcomes.accepted} stored; 100 resent -> {resent.duplicates} duplicates")

    _say("waiting for the learner to train and the publisher to publish a model ...")

    def trained_on_everything() -> Any:
        champion = _champion(settings)
        if champion is None:
            return None
        return champion if outcomes_seen(champion.lineage) >= outcomes.accepted else None

    champion = _wait("a published model trained on every outcome", trained_on_everything, 90.0)
    metrics = dict(champion.metrics)
    best = holdout_best_auc(savanna, json.loads(champion.job))
    _say(f"  model version {champion.version} on feature collection "
         f"{champion.feature_collection_id}: holdout ROC AUC {metrics['roc_auc']:.3f} "
         f"(best achievable {best:.3f})")

    predict = PredictionClient(host=settings.predict.host, port=settings.predict.port,
                               token=settings.predict.tokens[0])

    def http_prediction(location: int) -> Prediction | None:
        try:
            return predict.predict(location_id=location)
        except RmlError:  # no features for it yet, no model yet, replicas restarting
            return None

    _wait("features for location 1", lambda: http_prediction(1), 30.0)
    # How another Python service on this host would ask, through Thespian.
    thespian = ThespianPredictionClient(settings.actor_system.admin_port,
                                        host=settings.actor_system.bind)
    agree = 0
    for location in range(1, 6):
        over_http = predict.predict(location_id=location)
        over_thespian: Prediction | None = None
        try:
            over_thespian = thespian.predict(location_id=location)
        except RmlError as exc:
            _say(f"  location {location}: Thespian: {type(exc).__name__}: {exc}")
        same = (over_thespian is not None
                and abs(over_thespian.probability - over_http.probability) < 1e-12
                and over_thespian.model_version == over_http.model_version)
        agree += same
        _say(f"  location {location}: HTTP p={over_http.probability:.3f} "
             f"label={over_http.label} v{over_http.model_version} | Thespian "
             f"p={over_thespian.probability if over_thespian else float('nan'):.3f} "
             f"{'(agree)' if same else '(DISAGREE)'}")
    thespian.close()
    root = RootClient(settings)  # the root's status, through Thespian

    _say("crash test: SIGKILL predictor-1 and collector-1 ...")
    took = _kill_and_wait(root, "predictor-1", lambda: http_prediction(1))
    _say(f"  predictor-1 replaced and answering in {took * 1000:.0f} ms")
    probe = GatewayClient(host=ingest.host, port=ingest.port, token=token)

    def collector_answers() -> bool:
        try:
            probe.send_encoded(b'{"readings":[]}')
        except RmlError:
            return False
        return True

    took = _kill_and_wait(root, "collector-1", collector_answers)
    probe.close()
    _say(f"  collector-1 replaced and answering in {took * 1000:.0f} ms")
    after = http_prediction(1)
    status = collect_status(settings)
    restarts = {a["name"]: a["restarts"] for a in status["actors"] if a["restarts"]}
    counters = status["counters"]
    predict.close()
    ok = (agree == 5 and after is not None and after.model_version == champion.version
          and counters["readings_stored"] == traffic.n_unique_valid
          and not tally.failed_batches)
    _say("")
    _say("summary")
    _say(f"  facts stored:       {counters['readings_stored']} readings, "
         f"{counters['outcomes_stored']} outcomes")
    _say(f"  duplicates:         {tally.duplicates} readings, {resent.duplicates} outcomes")
    _say(f"  rejected:           {sum(tally.rejected.values())}: "
         + ", ".join(f"{k} {v}" for k, v in sorted(tally.rejected.items())))
    _say(f"  model:              version {champion.version}, holdout ROC AUC "
         f"{metrics['roc_auc']:.3f} vs best achievable {best:.3f}")
    _say(f"  restarts:           {restarts}")
    _say(f"  predictions agree:  {agree}/5 (HTTP vs Thespian); after the crash: "
         f"version {after.model_version if after else None}")
    _say(f"  time so far:        {time.monotonic() - started:.0f} s")
    _say("demo: OK" if ok else "demo: SOMETHING WAS OFF (see above)")
    return 0 if ok else 1


