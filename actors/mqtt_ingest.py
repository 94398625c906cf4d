"""A collector's MQTT ingress: a shared QoS 1 subscription, acknowledged only once committed.

Each collector replica (not a standby until it is promoted) runs one MQTT client in a
thread of its own (paho-mqtt, MQTT 5):

- **At least once in, exactly once stored.** The client acknowledges a message (PUBACK)
  only after its items are committed durably (``manual_ack``). A collector that dies
  before that leaves the message unacknowledged in its session, and the broker sends it
  again to the replacement, which reconnects under the same client id
  (``<prefix>-<collector slot>``) with ``clean_start=False`` and a session expiry: the
  items come again and are stored once, by key.
- **Replicas split the load**: ``$share/<group>/<topic>``, one copy of each message for the
  group.
- **Payloads** are JSON or msgpack (the message's content type, else sniffed), a batch
  (``{"readings": [...]}``), an array of items or one item: the HTTP edge's rules and
  errors. Rejected items (or a malformed payload) are published to the message's MQTT 5
  response topic when it has one (with its correlation data), else to
  ``rml/rejected/<gateway>`` (the last level of the topic it came on); a message with a
  response topic is always answered, as over HTTP.
- **A store that is down**: the message is held (unacknowledged; the broker sends no more
  than its in-flight window) and tried again with backoff; nothing is acknowledged early.
- **A broker that is down or restarts**: connect again with backoff (``reconnect_min_s`` ..
  ``reconnect_max_s``); subscriptions are made on every connect. The state is kept for
  ``status`` and logged at each change; the HTTP edge does not depend on it.
"""

from __future__ import annotations

import contextlib
import json
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from actors import metrics
from config.settings import MqttSettings
from messages.codec import BodyError, decode_message, ingest_answer
from storage.errors import StoreError
from storage.facts import FactStore, InsertResult

__all__ = ["MqttIngest", "MqttState", "client_id"]

_RETRY_MIN_S = 0.2
_RETRY_MAX_S = 5.0


def client_id(settings: MqttSettings, collector: str) -> str:
    """The collector slot's client id (``rml-collector-1``, ``rml-collector-2.b`` for a
    member's slot): stable across restarts and across the nodes a slot is placed on, so its
    session (and the messages it left unacknowledged) goes to its replacement wherever that
    runs."""
    return f"{settings.client_id_prefix}-{collector.replace('@', '.')}"


@dataclass(frozen=True, slots=True)
class MqttState:
    """What ``status`` shows of one collector's MQTT client."""

    connected: bool
    since_ms: int
    error: str | None
    messages: int  # acknowledged since the collector started
    held: int  # received, not yet committed (the store is down)

    def to_mapping(self) -> dict[str, Any]:
        return {"connected": self.connected, "since_ms": self.since_ms, "error": self.error,
                "messages": self.messages, "held": self.held}


@dataclass
class _Held:
    """A message whose commit failed: acknowledged only once it succeeds."""

    message: Any
    next_try: float
    delay: float


class MqttIngest:
    """One collector's MQTT client (see the module's text). ``store()`` gives the fact store
    the client's thread writes with; ``accepted(kind, n)`` is told of every commit and
    ``changed()`` of every change of the connection's state (both from the client's thread)."""

    def __init__(self, settings: MqttSettings, client: str, store: Callable[[], FactStore],
                 accepted: Callable[[str, int], None], log: Any,
                 max_future_ms: int = 300_000,
                 changed: Callable[[], None] = lambda: None) -> None:
        self.settings = settings
        self.client_id = client
        self._store = store
        self._accepted = accepted
        self._log = log
        self._max_future_ms = max_future_ms
        self._changed = changed
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._connected = False
        self._since_ms = int(time.time() * 1000)
        self._error: str | None = None
        self._messages = 0
        self._held: list[_Held] = []
        self._client = self._make_client()

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Connect (and keep connecting) in a thread of its own."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="rml-mqtt", daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Disconnect (held messages stay unacknowledged: the broker keeps them)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        with contextlib.suppress(Exception):
            self._client.disconnect()

    def state(self) -> MqttState:
        with self._lock:
            return MqttState(self._connected, self._since_ms, self._error, self._messages,
                             len(self._held))

    # --- the client ----------------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             protocol=mqtt.MQTTv5, manual_ack=True)
        s = self.settings
        if s.username:
            client.username_pw_set(s.username, s.password or None)
        _, _, tls = s.address()
        if tls:
            context = ssl.create_default_context(cafile=s.ca_file or None)
            client.tls_set_context(context)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def _run(self) -> None:
        """Connect, loop, and connect again after a loss, with backoff, until stopped."""
        host, port, _ = self.settings.address()
        backoff = self.settings.reconnect_min_s
        connected_once = False
        while not self._stop.is_set():
            try:
                if not connected_once:
                    properties = Properties(PacketTypes.CONNECT)
                    properties.SessionExpiryInterval = self.settings.session_expiry_s
                    self._client.connect(host, port, self.settings.keepalive_s,
                                         clean_start=False, properties=properties)
                    connected_once = True
                else:
                    self._client.reconnect()
            except (OSError, ssl.SSLError, ValueError) as exc:
                self._set_state(False, f"cannot connect to {host}:{port}: {exc}")
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.settings.reconnect_max_s)
                continue
            while not self._stop.is_set():
                rc = self._client.loop(timeout=0.1)
                if rc != mqtt.MQTT_ERR_SUCCESS:
                    self._set_state(False, f"connection lost: {mqtt.error_string(rc)}")
                    break
                if self._connected:
                    backoff = self.settings.reconnect_min_s
                self._retry_held()
            if not self._stop.is_set():
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.settings.reconnect_max_s)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        if reason.is_failure:
            self._set_state(False, f"refused by the broker: {reason}")
            return
        share = self.settings.share_group
        client.subscribe([(f"$share/{share}/{self.settings.readings_topic}", 1),
                          (f"$share/{share}/{self.settings.outcomes_topic}", 1)])
        self._set_state(True, None, session_present=getattr(flags, "session_present", None))

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        if not self._stop.is_set():
            self._set_state(False, f"disconnected: {reason}")

    def _set_state(self, connected: bool, error: str | None, **context: Any) -> None:
        with self._lock:
            changed = connected != self._connected or error != self._error
            self._connected, self._error = connected, error
            if changed:
                self._since_ms = int(time.time() * 1000)
        if changed:
            self._changed()
            if connected:
                self._log.info("mqtt_connected", url=self.settings.url, client=self.client_id,
                               **context)
            else:
                self._log.warning("mqtt_disconnected", url=self.settings.url, error=error)

    # --- messages ------------------------------------------------------------------------

    def _kind(self, topic: str) -> str | None:
        if mqtt.topic_matches_sub(self.settings.readings_topic, topic):
            return "readings"
        if mqtt.topic_matches_sub(self.settings.outcomes_topic, topic):
            return "outcomes"
        return None

    def _on_message(self, client: mqtt.Client, userdata: Any, message: Any) -> None:
        with self._lock:
            holding = bool(self._held)
        if holding:  # keep their order: this one waits behind the held ones
            self._hold(message)
            return
        if not self._handle(message):
            self._hold(message)

    def _hold(self, message: Any) -> None:
        with self._lock:
            self._held.append(_Held(message, time.monotonic() + _RETRY_MIN_S, _RETRY_MIN_S))

    def _retry_held(self) -> None:
        while True:
            with self._lock:
                if not self._held or self._held[0].next_try > time.monotonic():
                    return
                held = self._held[0]
            if not self._handle(held.message):
                held.delay = min(held.delay * 2, _RETRY_MAX_S)
                held.next_try = time.monotonic() + held.delay
                return
            with self._lock:
                self._held.pop(0)

    def _handle(self, message: Any) -> bool:
        """Decode, commit, acknowledge, answer; False when the store refused (held)."""
        kind = self._kind(message.topic)
        properties = getattr(message, "properties", None)
        content_type = getattr(properties, "ContentType", None) if properties else None
        answer: dict[str, Any] | None
        try:
            if kind is None:
                raise BodyError("unknown_topic", f"{message.topic!r} is neither topic")
            batch = decode_message(bytes(message.payload), content_type, kind,
                                   now_ms=int(time.time() * 1000),
                                   max_future_ms=self._max_future_ms)
        except BodyError as exc:
            answer = {"error": str(exc)}
            result = InsertResult(0, 0)
            rejected = True
        else:
            began = time.perf_counter()
            try:
                store = self._store()
                result = (store.insert_readings(batch.items) if kind == "readings"
                          else store.insert_outcomes(batch.items))
            except StoreError as exc:
                self._log.warning("mqtt_store_unavailable", topic=message.topic,
                                  error=str(exc))
                return False
            metrics.count_batch(kind, result.accepted, result.duplicates,
                                (e.error for e in batch.rejected), time.perf_counter() - began)
            answer = ingest_answer(result.accepted, result.duplicates, batch.rejected)
            rejected = bool(batch.rejected)
            if result.accepted and kind is not None:
                self._accepted(kind, result.accepted)
        # Committed (or never committable): only now does the broker hear it arrived.
        if message.qos > 0:
            self._client.ack(message.mid, message.qos)
        with self._lock:
            self._messages += 1
        self._reply(message, properties, answer, rejected)
        return True

    def _reply(self, message: Any, properties: Any, answer: dict[str, Any],
               rejected: bool) -> None:
        """To the response topic (always, with its correlation data), else rejections only
        to ``rml/rejected/<gateway>``."""
        response_topic = getattr(properties, "ResponseTopic", None) if properties else None
        if response_topic is None and not rejected:
            return
        reply = Properties(PacketTypes.PUBLISH)
        reply.ContentType = "application/json"
        correlation = getattr(properties, "CorrelationData", None) if properties else None
        if correlation is not None:
            reply.CorrelationData = correlation
        topic = response_topic or f"rml/rejected/{message.topic.rsplit('/', 1)[-1]}"
        self._client.publish(topic, json.dumps({**answer, "topic": message.topic}), qos=1,
                             properties=reply)
