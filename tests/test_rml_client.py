"""The client library (``rml_client``): its protocol behaviour against a scripted local HTTP
server (retries, ``Retry-After``, deadlines, dropped connections, framing), and end to end
against a real daemon (predictions over HTTP in JSON and msgpack and over Thespian agree;
a gateway's readings are stored, resent ones reported as duplicates, bad ones by name)."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import msgpack
import pytest

import rml_client
from rml_client import (
    BadRequest,
    BatchResult,
    ConnectionFailed,
    DeadlineExceeded,
    GatewayClient,
    HttpStatusError,
    Prediction,
    PredictionClient,
    RmlError,
    ThespianPredictionClient,
    Unauthorized,
    Unavailable,
    UnexpectedAnswer,
)

REPO = Path(__file__).resolve().parent.parent
ANSWER = {"label": True, "probability": 0.74, "model_version": 3,
          "feature_collection_id": 1, "fallback": False}


def test_importing_the_client_needs_neither_the_daemon_nor_scikit_learn() -> None:
    heavy = {"sklearn", "scipy", "skops", "numpy", "config", "actors", "supervision",
             "storage", "learning", "daemon", "messages", "thespian"}
    code = ("import sys, rml_client; print(sorted({m.split('.')[0] for m in sys.modules} & "
            + repr(heavy) + "))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == "[]"


def test_the_root_supervisor_is_named_as_the_daemon_names_it() -> None:
    from rml_client import over_thespian
    from supervision.spec import ROOT_NAME, SUPERVISOR_CLASS

    assert (over_thespian.ROOT_CLASS, over_thespian.ROOT_NAME) == (SUPERVISOR_CLASS, ROOT_NAME)


# --- a scripted HTTP server (the server side of the protocol tests) ----------------------


@dataclass
class Seen:
    """A request as the server received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    connection: int  # the client's port: one per connection
    at: float


#: What the server does with a request: answer (status, headers, body), write raw bytes,
#: close the connection without an answer, answer and then close (with no
#: ``Connection: close``: a keep-alive connection the server drops while idle), or wait for
#: an event before answering.
Action = tuple[Any, ...]


@dataclass
class ScriptedServer:
    """A local HTTP/1.1 server (127.0.0.1, a free port) that takes its actions from a script;
    once the script is spent it repeats the last action."""

    script: list[Action]
    tls: ssl.SSLContext | None = None
    seen: list[Seen] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                server.seen.append(Seen(self.command, self.path,
                                        {k.lower(): v for k, v in self.headers.items()}, body,
                                        self.client_address[1], time.monotonic()))
                action = server.script.pop(0) if len(server.script) > 1 else server.script[0]
                kind = action[0]
                if kind == "wait":
                    server.release.wait(30.0)
                    action = action[1]
                    kind = action[0]
                if kind == "drop":
                    self.close_connection = True
                    return
                if kind == "raw":
                    self.wfile.write(action[1])
                    self.close_connection = True
                    return
                status, headers, payload = action[1], action[2], action[3]
                if isinstance(payload, dict):
                    payload = json.dumps(payload).encode()
                self.send_response(status)
                headers = {"Content-Type": "application/json", **headers}
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                self.wfile.flush()
                if kind == "answer_then_close":
                    self.close_connection = True

            do_GET = do_POST = _serve  # noqa: N815

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        if self.tls is not None:
            self.httpd.socket = self.tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve() -> Iterator[Callable[..., ScriptedServer]]:
    servers: list[ScriptedServer] = []

    def make(*script: Action, tls: ssl.SSLContext | None = None) -> ScriptedServer:
        server = ScriptedServer(list(script), tls)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


def ok(payload: Any = ANSWER, **headers: str) -> Action:
    return ("answer", 200, headers, payload)


def refuse(status: int, error: str, **headers: str) -> Action:
    return ("answer", status, {k.replace("_", "-"): v for k, v in headers.items()},
            {"error": error})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- predictions over HTTP ---------------------------------------------------------------


def test_a_prediction_is_asked_with_the_token_and_comes_back_typed(serve: Any) -> None:
    server = serve(ok())
    with PredictionClient(server.url, "t0k3n") as client:
        answer = client.predict(location_id=3)
        again = client.predict(features={"animal_estimate": 12.5, "reading_count": 9},
                               deadline_ms=50)
    assert answer == again == Prediction(True, 0.74, 3, 1, False)
    first, second = server.seen
    assert (first.method, first.path) == ("POST", "/model")
    assert first.headers["authorization"] == "Bearer t0k3n"
    assert first.headers["content-type"] == "application/json"
    assert json.loads(first.body) == {"location_id": 3}
    assert json.loads(second.body) == {"features": {"animal_estimate": 12.5, "reading_count": 9},
                                       "deadline_ms": 50}
    assert first.connection == second.connection  # one keep-alive connection


def test_msgpack_requests_are_msgpack_and_either_answer_format_is_read(serve: Any) -> None:
    server = serve(ok(), ("answer", 200, {"Content-Type": "application/msgpack"},
                          msgpack.packb(dict(ANSWER, fallback=True))))
    with PredictionClient(server.url, "t", format="msgpack") as client:
        first = client.predict(location_id=7, deadline_ms=20)
        second = client.predict(location_id=7)
    assert first.fallback is False and second.fallback is True
    assert server.seen[0].headers["content-type"] == "application/msgpack"
    assert msgpack.unpackb(server.seen[0].body) == {"location_id": 7, "deadline_ms": 20}


def test_a_503_waits_for_its_retry_after_then_is_asked_again(serve: Any) -> None:
    server = serve(refuse(503, "overloaded", Retry_After="1"), ok())
    with PredictionClient(server.url, "t", retries=3, deadline_s=30.0) as client:
        assert client.predict(location_id=1).model_version == 3
    first, second = server.seen
    assert second.at - first.at >= 1.0  # the server's Retry-After was honoured


def test_a_retry_after_past_the_deadline_is_unavailable_at_once(serve: Any) -> None:
    server = serve(refuse(503, "store unavailable: down", Retry_After="30"))
    with PredictionClient(server.url, "t", retries=5, deadline_s=2.0) as client, \
            pytest.raises(Unavailable) as caught:
        client.predict(location_id=1)
    assert (caught.value.status, caught.value.reason) == (503, "store unavailable: down")
    assert caught.value.retry_after_s == 30.0
    assert len(server.seen) == 1


def test_a_503_still_there_after_the_retries_is_unavailable_with_its_reason(serve: Any) -> None:
    server = serve(refuse(503, "no model has been published yet", Retry_After="0"))
    with PredictionClient(server.url, "t", retries=2) as client, \
            pytest.raises(Unavailable, match="no model") as caught:
        client.predict(location_id=1)
    assert isinstance(caught.value, HttpStatusError) and isinstance(caught.value, RmlError)
    assert len(server.seen) == 3


def test_bad_input_is_a_bad_request_with_the_reason_and_is_not_retried(serve: Any) -> None:
    server = serve(refuse(400, "unknown_location: 123456"))
    with PredictionClient(server.url, "t", retries=5) as client, \
            pytest.raises(BadRequest) as caught:
        client.predict(location_id=123456)
    assert caught.value.reason == "unknown_location: 123456"
    assert len(server.seen) == 1


def test_a_wrong_token_is_unauthorized(serve: Any) -> None:
    server = serve(refuse(401, "missing or invalid bearer token"))
    with PredictionClient(server.url, "wrong") as client, pytest.raises(Unauthorized):
        client.predict(location_id=1)


def test_a_keep_alive_connection_the_server_dropped_is_opened_again(serve: Any) -> None:
    server = serve(("answer_then_close", 200, {}, ANSWER), ok())
    with PredictionClient(server.url, "t", retries=0) as client:
        client.predict(location_id=1)
        client.predict(location_id=2)  # the first connection is gone: a new one, no retry
    assert [json.loads(s.body)["location_id"] for s in server.seen] == [1, 2]
    assert server.seen[0].connection != server.seen[1].connection


def test_a_request_whose_answer_was_lost_is_sent_again(serve: Any) -> None:
    server = serve(("drop",), ok())
    with PredictionClient(server.url, "t", retries=1) as client:
        assert client.predict(location_id=5).label is True
    assert len(server.seen) == 2


def test_a_request_that_is_not_idempotent_is_not_sent_twice(serve: Any) -> None:
    from rml_client._http import Endpoint, Transport

    server = serve(("drop",), ok())
    transport = Transport(Endpoint("http", "127.0.0.1", server.port), "t", timeout_s=5.0,
                          retries=3, deadline_s=None)
    with pytest.raises(ConnectionFailed):  # it may have been processed: not sent again
        transport.request("POST", "/model", b"{}", "application/json", idempotent=False)
    assert len(server.seen) == 1
    assert transport.request("POST", "/model", b"{}", "application/json").status == 200
    transport.close()


def test_no_server_is_a_connection_failure(serve: Any) -> None:
    with PredictionClient(f"http://127.0.0.1:{free_port()}", "t", retries=1) as client, \
            pytest.raises(ConnectionFailed) as caught:
        client.predict(location_id=1)
    assert isinstance(caught.value, ConnectionError)


def test_an_answer_that_never_comes_ends_at_the_client_deadline(serve: Any) -> None:
    server = serve(("wait", ok()))
    with PredictionClient(server.url, "t", timeout_s=0.2, retries=10, deadline_s=0.5) as client, \
            pytest.raises(DeadlineExceeded) as caught:
        client.predict(location_id=1)
    assert isinstance(caught.value, TimeoutError)


def test_chunked_and_close_framed_answers_are_read(serve: Any) -> None:
    body = json.dumps(ANSWER).encode()
    chunked = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n"
               + b"%x\r\n%s\r\n" % (10, body[:10]) + b"%x\r\n%s\r\n" % (len(body) - 10, body[10:])
               + b"0\r\n\r\n")
    until_close = b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + body
    server = serve(("raw", chunked), ("raw", until_close))
    with PredictionClient(server.url, "t", retries=0) as client:
        assert client.predict(location_id=1) == client.predict(location_id=1) == Prediction(
            True, 0.74, 3, 1, False)


def test_a_garbled_answer_is_unexpected(serve: Any) -> None:
    server = serve(("raw", b"SSH-2.0-OpenSSH_9.2\r\n\r\n"))
    with PredictionClient(server.url, "t", retries=1) as client, \
            pytest.raises(UnexpectedAnswer):
        client.predict(location_id=1)
    server = serve(ok({"label": "yes"}))
    with PredictionClient(server.url, "t") as client, pytest.raises(UnexpectedAnswer):
        client.predict(location_id=1)


def test_a_base_url_path_prefixes_every_route(serve: Any) -> None:
    server = serve(ok({"status": "ok", "actor": "predictor-1"}))
    with PredictionClient(server.url + "/rml/", "t") as client:
        assert client.health()["actor"] == "predictor-1"
    assert server.seen[0].path == "/rml/health"


def test_a_query_needs_a_location_or_features_not_both() -> None:
    client = PredictionClient(port=free_port())
    with pytest.raises(ValueError):
        client.predict()
    with pytest.raises(ValueError):
        client.predict(1, features={"a": 1.0})
    with pytest.raises(ValueError):
        PredictionClient(format="xml")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl to make a certificate")
def test_https_with_the_callers_certificate_authority(serve: Any, tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(cert, key)
    server = serve(ok(), tls=server_side)
    trusted = ssl.create_default_context(cafile=str(cert))
    with PredictionClient(server.url, "t", tls_context=trusted) as client:
        assert client.predict(location_id=1).probability == 0.74
    with PredictionClient(server.url, "t", retries=0) as client, \
            pytest.raises(ConnectionFailed):  # the system's authorities do not know it
        client.predict(location_id=1)


# --- the gateway client against the scripted server --------------------------------------


def ingest(accepted: int, duplicates: int = 0, rejected: tuple[tuple[int, str], ...] = ()
           ) -> Action:
    return ok({"accepted": accepted, "duplicates": duplicates,
               "rejected": [{"index": i, "error": e, "detail": f"item {i}: {e}"}
                            for i, e in rejected]})


def items(n: int) -> list[dict[str, Any]]:
    return [{"sensor_id": "s", "reading_id": f"r{i}"} for i in range(n)]


def test_batches_are_sent_in_order_and_rejections_name_the_items(serve: Any) -> None:
    server = serve(ingest(2), ingest(1, rejected=((1, "bounds_inverted"),)), ingest(1))
    sent = items(5)
    with GatewayClient(server.url, "t", batch_size=2, format="msgpack") as gateway:
        result = gateway.send(sent)
    assert [msgpack.unpackb(s.body)["readings"] for s in server.seen] == [
        sent[0:2], sent[2:4], sent[4:]]
    assert (result.accepted, result.duplicates, result.batches, result.resent) == (4, 0, 3, 0)
    (bad,) = result.rejected
    assert (bad.index, bad.item, bad.error) == (3, sent[3], "bounds_inverted")
    assert result.rejected_by_error() == {"bounds_inverted": 1}
    assert {s.path for s in server.seen} == {"/readings"}


def test_a_batch_whose_answer_was_lost_is_resent_and_counted_as_duplicates(serve: Any) -> None:
    server = serve(("drop",), refuse(503, "overloaded", Retry_After="0"), ingest(0, 3))
    with GatewayClient(server.url, "t") as gateway:
        result = gateway.send_outcomes(items(3))
    assert result == BatchResult(accepted=0, duplicates=3, batches=1, resent=2)
    assert [s.path for s in server.seen] == ["/outcomes"] * 3
    assert len({s.body for s in server.seen}) == 1  # the very same batch each time


def test_a_batch_never_acknowledged_is_raised_with_what_was_and_was_not(serve: Any) -> None:
    server = serve(ingest(2), refuse(503, "store unavailable", Retry_After="0"))
    sent = items(5)
    with GatewayClient(server.url, "t", batch_size=2, retries=1) as gateway, \
            pytest.raises(Unavailable) as caught:
        gateway.send(sent)
    assert caught.value.acknowledged == BatchResult(accepted=2, batches=1)
    assert list(caught.value.unacknowledged) == sent[2:]


def test_buffered_readings_stay_buffered_until_acknowledged(serve: Any) -> None:
    server = serve(refuse(503, "overloaded", Retry_After="0"), ingest(2), ingest(1, 1))
    gateway = GatewayClient(server.url, "t", batch_size=2, retries=0)
    sent = items(3)
    assert gateway.add(sent[0]) is None
    with pytest.raises(Unavailable):
        gateway.add(sent[1])  # a full batch is sent: refused, kept
    assert gateway.pending == 2
    gateway.add(sent[2])  # flushes: the kept batch first, then the rest
    assert gateway.pending == 0
    assert [json.loads(s.body)["readings"] for s in server.seen] == [
        sent[:2], sent[:2], sent[2:]]
    gateway.close()


# --- end to end, on a real daemon ---------------------------------------------------------


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.e2e_support import running_daemon

    # A generous server deadline: the answers over HTTP and Thespian are compared exactly,
    # and a loaded machine must not turn one of them into a (correctly marked) fallback.
    with running_daemon(tmp_path_factory.mktemp("rml-client"),
                        {"predict": {"deadline_ms": 5000}}, min_outcomes=500) as running:
        yield running


def _reading(**overrides: Any) -> dict[str, Any]:
    item = {"sensor_id": "client-e2e", "location_id": 998, "reading_id": uuid.uuid4().hex,
            "timestamp": int(time.time() * 1000) - 1000, "animals_lower": 3,
            "animals_upper": 9, "percent_zebras": 0.5}
    item.update(overrides)
    return item


@pytest.mark.e2e
@pytest.mark.parametrize("fmt", ["json", "msgpack"])
def test_gateway_readings_are_stored_resent_ones_are_duplicates_bad_ones_named(
        daemon: Any, fmt: str) -> None:
    from tests.e2e_support import TOKEN

    good = [_reading() for _ in range(3)]
    batch = [good[0], _reading(animals_lower=10, animals_upper=2), good[1],
             _reading(colour="striped"), good[2]]
    with GatewayClient(port=daemon.settings.ingest.port, token=TOKEN, format=fmt) as gateway:
        first = gateway.send(batch)
        again = gateway.send(batch)
    assert (first.accepted, first.duplicates) == (3, 0)
    assert (again.accepted, again.duplicates) == (0, 3)
    for result in (first, again):
        assert [(r.index, r.error) for r in result.rejected] == [(1, "bounds_inverted"),
                                                                  (3, "unknown_field")]
        assert [r.item for r in result.rejected] == [batch[1], batch[3]]
    with daemon.stores() as stores:
        for item in good:
            assert stores.facts.get_reading(item["sensor_id"], item["reading_id"]) is not None
        assert stores.facts.get_reading("client-e2e", batch[1]["reading_id"]) is None


@pytest.mark.e2e
def test_predictions_over_http_json_msgpack_and_thespian_agree(daemon: Any) -> None:
    from players.demo import last_midnight_ms
    from players.simulator import Savanna
    from tests.e2e_support import TOKEN, wait_for

    savanna = Savanna(seed=7, end_ms=last_midnight_ms())
    port = daemon.settings.ingest.port
    with GatewayClient(port=port, token=TOKEN, format="msgpack") as gateway:
        readings = gateway.send(savanna.traffic().items)
        outcomes = gateway.send_outcomes(savanna.outcome_items())
    assert readings.accepted > 0 and outcomes.accepted == len(savanna.outcomes())
    wait_for("a champion", daemon.champion, 120.0, 0.2)
    over_json = PredictionClient(port=daemon.settings.predict.port, token=TOKEN)
    over_msgpack = PredictionClient(f"http://127.0.0.1:{daemon.settings.predict.port}", TOKEN,
                                    format="msgpack")
    over_thespian = ThespianPredictionClient(daemon.settings.actor_system.admin_port)
    try:
        def answers() -> bool:
            try:
                over_json.predict(location_id=1)
            except (BadRequest, Unavailable):  # no features or no model in the predictor yet
                return False
            return True

        wait_for("a prediction for location 1", answers, 30.0, 0.1)
        for location in range(1, 6):
            via_json = over_json.predict(location_id=location)
            via_msgpack = over_msgpack.predict(location_id=location, deadline_ms=5000)
            via_thespian = over_thespian.predict(location_id=location)
            assert via_json.fallback is False
            for other in (via_msgpack, via_thespian):
                assert other.probability == pytest.approx(via_json.probability, abs=1e-12)
                assert (other.label, other.model_version, other.feature_collection_id,
                        other.fallback) == (via_json.label, via_json.model_version,
                                            via_json.feature_collection_id, via_json.fallback)
        for client in (over_json, over_msgpack, over_thespian):
            with pytest.raises(BadRequest) as unknown:
                client.predict(location_id=123456)
            assert unknown.value.reason.startswith("unknown_location"), unknown.value
            with pytest.raises(BadRequest) as missing:
                client.predict(features={"animal_estimate": 10.0})
            assert missing.value.reason.startswith("missing_feature"), missing.value
        with pytest.raises(BadRequest) as refused:  # checked before it is sent, as HTTP does
            over_thespian.predict(location_id=-1)
        assert refused.value.reason.startswith("out_of_range"), refused.value
        assert over_json.health()["model_version"] == via_json.model_version
    finally:
        for closing in (over_json, over_msgpack, over_thespian):
            closing.close()
    with PredictionClient(port=daemon.settings.predict.port, token="wrong") as anonymous, \
            pytest.raises(Unauthorized):
        anonymous.predict(location_id=1)


def test_a_thespian_client_with_no_daemon_fails_fast() -> None:
    with pytest.raises(ConnectionFailed):
        ThespianPredictionClient(free_port())


def test_the_package_exports_what_its_docstring_shows() -> None:
    for name in rml_client.__all__:
        assert getattr(rml_client, name) is not None
    assert rml_client.__doc__ and "GatewayClient" in rml_client.__doc__
