"""Hostile HTTP against a real daemon: every bad request gets a clear 4xx, nothing crashes.

Random, truncated and hostile bodies (random bytes, huge numbers, deep nesting, wrong types,
NaN, invalid UTF-8, bodies just over ``[ingest] max_body_bytes``) go to ``POST /readings``,
``/outcomes`` and ``/model``; raw sockets stall after the headers or half-way through a body.
Each request is answered (never a 5xx, never a dropped connection except after an error
answer or at our idle timeout), the valid items next to bad ones are stored, and at the end no
collector or predictor has been restarted.
"""

from __future__ import annotations

import http.client
import json
import math
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage import open_sqlite_stores
from tests.e2e_support import TOKEN, RunningDaemon, running_daemon

pytestmark = pytest.mark.e2e

MAX_BODY = 2 * 1024 * 1024  # the smallest [ingest] max_body_bytes the settings allow
IDLE_S = 1.0  # short, so a stalled client is cut off within the test
SOCKET_TIMEOUT_S = 30.0  # a bound on a hung test, never a measure of speed
ROUTES = ("/readings", "/outcomes", "/model")
MEDIA = ("application/json", "application/msgpack", "application/x-msgpack",
         "application/vnd.msgpack")
FUZZ = settings(max_examples=40, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    sections = {"ingest": {"max_body_bytes": MAX_BODY, "idle_timeout_s": IDLE_S},
                "predict": {"idle_timeout_s": IDLE_S}}
    with running_daemon(tmp_path_factory.mktemp("fuzz"), sections=sections) as running:
        assert running.settings.ingest.max_body_bytes == MAX_BODY
        assert running.settings.ingest.idle_timeout_s == IDLE_S
        yield running


@pytest.fixture(scope="module")
def before(daemon: RunningDaemon) -> dict[str, tuple[int, int]]:
    """Each collector's and predictor's (pid, restarts) before any fuzzing."""
    return _workers(daemon)


def _workers(daemon: RunningDaemon) -> dict[str, tuple[int, int]]:
    return {a["name"]: (a["pid"], a["restarts"]) for a in daemon.status()["actors"]
            if a["name"].startswith(("collector-", "predictor-"))}


def _port(daemon: RunningDaemon, path: str) -> int:
    return daemon.settings.predict.port if path == "/model" else daemon.settings.ingest.port


def _post(daemon: RunningDaemon, path: str, body: bytes, content_type: str | None,
          headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection; a dropped connection fails the test."""
    conn = http.client.HTTPConnection("127.0.0.1", _port(daemon, path), timeout=SOCKET_TIMEOUT_S)
    try:
        sent = {"Authorization": f"Bearer {TOKEN}", **(headers or {})}
        if content_type is not None:
            sent["Content-Type"] = content_type
        conn.request("POST", path, body=body, headers=sent)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def _assert_clear_4xx(status: int, headers: dict[str, str], data: bytes) -> None:
    assert 400 <= status < 500, (status, data[:300])
    assert headers.get("content-type", "").startswith("application/json"), headers
    error = json.loads(data)["error"]
    assert isinstance(error, str) and error, data


def _assert_answered(path: str, status: int, headers: dict[str, str], data: bytes) -> Any:
    """A 200 (decoded and returned), a clear 4xx, or /model's 503 before any model exists."""
    if status == 200:
        if headers.get("content-type", "").startswith("application/msgpack"):
            return msgpack.unpackb(data)
        return json.loads(data)
    if path == "/model" and status == 503:
        assert "no model" in json.loads(data)["error"], data
        return None
    _assert_clear_4xx(status, headers, data)
    return None


def _encode(doc: Any, media: str) -> bytes:
    if media == "application/json":
        return json.dumps(doc, allow_nan=True).encode()
    packed: bytes = msgpack.packb(doc, use_bin_type=True)
    return packed


def _reading(**changes: Any) -> dict[str, Any]:
    item = {"sensor_id": "fuzz", "location_id": 7, "reading_id": uuid.uuid4().hex,
            "timestamp": 1_700_000_000_000, "animals_lower": 2, "animals_upper": 5,
            "percent_zebras": 0.5}
    item.update(changes)
    return item


def _outcome(**changes: Any) -> dict[str, Any]:
    item = {"location_id": 7, "outcome_id": uuid.uuid4().hex, "timestamp": 1_700_000_000_000,
            "label": True}
    item.update(changes)
    return item


def _valid_body(path: str, media: str) -> bytes:
    if path == "/readings":
        return _encode({"readings": [_reading() for _ in range(3)]}, media)
    if path == "/outcomes":
        return _encode({"outcomes": [_outcome() for _ in range(3)]}, media)
    return _encode({"features": {"animals": 3.0, "zebra_share": 0.25}}, media)


# --- hostile values ------------------------------------------------------------------------

_HUGE = st.sampled_from([2**64, -(2**64), 10**400, 2**31, -1, 2**63 - 1, 1e308, -1e308,
                         5e-324, math.nan, math.inf, -math.inf])
_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), _HUGE,
                     st.text(max_size=20), st.sampled_from(["", "x" * 200, "\ud800", "\x00"]))
_JSON_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=20,
)


def _fits_msgpack(value: Any) -> bool:
    if isinstance(value, int) and not isinstance(value, bool):
        return -(2**63) <= value < 2**64
    if isinstance(value, str):
        return _encodable(value)
    if isinstance(value, list):
        return all(_fits_msgpack(v) for v in value)
    if isinstance(value, dict):
        return all(_encodable(k) and _fits_msgpack(v) for k, v in value.items())
    return True


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


# --- bodies ----------------------------------------------------------------------------------


@FUZZ
@given(path=st.sampled_from(ROUTES), body=st.binary(max_size=512),
       media=st.sampled_from([*MEDIA, None, "text/plain", "application/json; charset=latin-1"]))
def test_random_bytes_get_a_clear_4xx(daemon: RunningDaemon, before: Any, path: str,
                                      body: bytes, media: str | None) -> None:
    _assert_clear_4xx(*_post(daemon, path, body, media))


@FUZZ
@given(path=st.sampled_from(ROUTES), value=_JSON_VALUES, wrap=st.booleans(),
       media=st.sampled_from(MEDIA))
def test_hostile_documents_are_answered_never_a_server_error(
    daemon: RunningDaemon, before: Any, path: str, value: Any, wrap: bool, media: str
) -> None:
    key = {"/readings": "readings", "/outcomes": "outcomes", "/model": "features"}[path]
    doc = {key: value} if wrap else value
    if media != "application/json" and not _fits_msgpack(doc):
        media = "application/json"
    body = _encode(doc, media)  # JSON sends a lone surrogate escaped, as "\ud800"
    answer = _assert_answered(path, *_post(daemon, path, body, media))
    if answer is not None and path != "/model":
        items = value if isinstance(value, list) else []
        assert answer["accepted"] + answer["duplicates"] + len(answer["rejected"]) == len(items)


@FUZZ
@given(path=st.sampled_from(ROUTES), media=st.sampled_from(MEDIA[:2]),
       cut=st.floats(0, 1, exclude_max=True))
def test_a_truncated_body_is_a_400(daemon: RunningDaemon, before: Any, path: str, media: str,
                                   cut: float) -> None:
    body = _valid_body(path, media)
    status, headers, data = _post(daemon, path, body[: int(len(body) * cut)], media)
    _assert_clear_4xx(status, headers, data)
    assert status == 400


@FUZZ
@given(path=st.sampled_from(ROUTES), at=st.floats(0, 1),
       junk=st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80",
                             b"\x80", b"\xe2\x82"]))
def test_invalid_utf8_is_a_400(daemon: RunningDaemon, before: Any, path: str, at: float,
                               junk: bytes) -> None:
    body = _valid_body(path, "application/json")
    position = int(len(body) * at)
    status, headers, data = _post(daemon, path, body[:position] + junk + body[position:],
                                  "application/json")
    _assert_clear_4xx(status, headers, data)
    # In msgpack: a str whose bytes are not UTF-8.
    bad_str = b"\x81\xa8readings\x91\x81\xa9sensor_id\xa2" + junk[:1] + b"a"
    _assert_clear_4xx(*_post(daemon, path, bad_str, "application/msgpack"))


@pytest.mark.parametrize("path", ROUTES)
@pytest.mark.parametrize("depth", [33, 1_000, 200_000])
def test_deep_nesting_is_a_400(daemon: RunningDaemon, before: Any, path: str,
                               depth: int) -> None:
    as_json = b"[" * depth + b"]" * depth
    status, headers, data = _post(daemon, path, as_json, "application/json")
    _assert_clear_4xx(status, headers, data)
    as_msgpack = b"\x91" * depth + b"\x90"
    _assert_clear_4xx(*_post(daemon, path, as_msgpack, "application/msgpack"))


_BAD_FIELD_VALUES = {
    # (an integer id is valid: the same identity as its decimal string)
    "sensor_id": st.sampled_from([None, 1.5, True, 2**64, "", "x" * 129, ["s"], "\ud800"]),
    "location_id": st.sampled_from([-1, 2**31, 2**70, 1.5, "7", None, True, math.nan]),
    "timestamp": st.sampled_from([-5, 1.0e12, "now", None, 2**62, math.inf]),
    # (a bound is a real number: 2.5 is valid)
    "animals_lower": st.sampled_from([-1, -0.5, 10**9 + 1, 10**30, True, math.nan, "3", None]),
    "percent_zebras": st.sampled_from([-0.1, 1.5, math.nan, math.inf, "0.5", None, [0.5]]),
}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(media=st.sampled_from(MEDIA), data=st.data(),
       bad_at=st.sets(st.integers(0, 7), min_size=1, max_size=4))
def test_valid_readings_next_to_bad_ones_are_kept(
    daemon: RunningDaemon, before: Any, media: str, data: st.DataObject, bad_at: set[int]
) -> None:
    items: list[Any] = []
    for index in range(8):
        item = _reading()
        if index in bad_at:
            field = data.draw(st.sampled_from(sorted(_BAD_FIELD_VALUES)))
            item[field] = data.draw(_BAD_FIELD_VALUES[field])
            shape = data.draw(st.sampled_from(["value", "value", "extra", "missing", "scalar"]))
            if shape == "extra":
                item["extra"] = 1
            elif shape == "missing":
                del item["reading_id"]
            elif shape == "scalar":
                item = data.draw(_SCALARS)
        items.append(item)
    doc = {"readings": items}
    if media != "application/json" and not _fits_msgpack(doc):
        media = "application/json"
    body = _encode(doc, media)
    status, headers, raw = _post(daemon, "/readings", body, media)
    assert status == 200, raw[:300]
    answer = _assert_answered("/readings", status, headers, raw)
    good = [i for i in range(len(items)) if i not in bad_at]
    assert answer["accepted"] == len(good)
    assert sorted(r["index"] for r in answer["rejected"]) == sorted(bad_at)
    assert all(r["error"] and isinstance(r["detail"], str) for r in answer["rejected"])
    with open_sqlite_stores(daemon.settings.data_path, read_only=True) as stores:
        for index, item in enumerate(items):
            if not isinstance(item, dict) or type(item.get("reading_id")) is not str:
                continue
            stored = stores.facts.get_reading(item["sensor_id"], item["reading_id"]) \
                if type(item.get("sensor_id")) is str and _encodable(item["sensor_id"]) else None
            assert (stored is not None) == (index in good), (index, item)


def test_valid_outcomes_next_to_bad_ones_are_kept(daemon: RunningDaemon, before: Any) -> None:
    items: list[Any] = [_outcome(), _outcome(label=1), _outcome(), _outcome(timestamp=-1),
                        "not an outcome", _outcome(location_id=2**40), _outcome()]
    status, headers, raw = _post(daemon, "/outcomes", _encode({"outcomes": items}, MEDIA[1]),
                                 MEDIA[1])
    answer = _assert_answered("/outcomes", status, headers, raw)
    assert (answer["accepted"], answer["duplicates"]) == (3, 0)
    assert [r["index"] for r in answer["rejected"]] == [1, 3, 4, 5]
    with open_sqlite_stores(daemon.settings.data_path, read_only=True) as stores:
        kept = [stores.facts.get_outcome(7, items[i]["outcome_id"]) for i in (0, 2, 6)]
        assert all(o is not None for o in kept)
        assert stores.facts.get_outcome(7, items[1]["outcome_id"]) is None


# --- size limits -------------------------------------------------------------------------------


def _padded(path: str, size: int) -> bytes:
    """A valid JSON body of exactly ``size`` bytes (whitespace is free in JSON)."""
    body = _valid_body(path, "application/json")
    assert len(body) <= size
    return body + b" " * (size - len(body))


@pytest.mark.parametrize("path", ["/readings", "/outcomes"])
def test_a_body_at_the_limit_is_taken_and_one_byte_more_is_a_413(
    daemon: RunningDaemon, before: Any, path: str
) -> None:
    assert _post(daemon, path, _padded(path, MAX_BODY), "application/json")[0] == 200
    status, headers, data = _post(daemon, path, _padded(path, MAX_BODY + 1), "application/json")
    _assert_clear_4xx(status, headers, data)
    assert status == 413


def test_a_chunked_body_over_the_limit_is_a_413(daemon: RunningDaemon, before: Any) -> None:
    chunk = b" " * 65536
    chunks = [_valid_body("/readings", "application/json")] + [chunk] * (MAX_BODY // len(chunk))
    conn = http.client.HTTPConnection("127.0.0.1", daemon.settings.ingest.port,
                                      timeout=SOCKET_TIMEOUT_S)
    try:
        conn.request("POST", "/readings", body=iter(chunks), encode_chunked=True,
                     headers={"Authorization": f"Bearer {TOKEN}",
                              "Content-Type": "application/json",
                              "Transfer-Encoding": "chunked"})
        response = conn.getresponse()
        status, headers = response.status, {k.lower(): v for k, v in response.getheaders()}
        _assert_clear_4xx(status, headers, response.read())
        assert status == 413
    finally:
        conn.close()


def test_a_model_query_over_its_limit_is_a_413(daemon: RunningDaemon, before: Any) -> None:
    limit = daemon.settings.predict.max_body_bytes
    status, headers, data = _post(daemon, "/model", _padded("/model", limit + 1),
                                  "application/json")
    _assert_clear_4xx(status, headers, data)
    assert status == 413


# --- slow and half-open connections --------------------------------------------------------


def _raw(daemon: RunningDaemon, path: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", _port(daemon, path)), timeout=SOCKET_TIMEOUT_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _head(path: str, length: int, media: str = "application/json") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: {media}\r\nContent-Length: {length}\r\n\r\n").encode()


def _read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (EOF or reset); bounded by the timeout."""
    received = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk


@pytest.mark.parametrize("path", ROUTES)
@pytest.mark.parametrize("stall_after", ["partial-head", "head", "half-body"])
def test_a_stalled_client_is_cut_off_at_the_idle_timeout_and_stalls_nobody(
    daemon: RunningDaemon, before: Any, path: str, stall_after: str
) -> None:
    body = _valid_body(path, "application/json")
    head = _head(path, len(body))
    sent = {"partial-head": head[: len(head) // 2], "head": head,
            "half-body": head + body[: len(body) // 2]}[stall_after]
    with _raw(daemon, path) as stalled:
        stalled.sendall(sent)
        # While it stalls, others are served on the same port.
        status, headers, data = _post(daemon, path, _valid_body(path, "application/json"),
                                      "application/json")
        _assert_answered(path, status, headers, data)
        # Then the server, not the client, ends it: nothing or a 4xx, never a success or 5xx.
        answer = _read_until_closed(stalled)
        assert answer == b"" or answer.startswith(b"HTTP/1.1 4"), answer[:200]


@pytest.mark.parametrize("path", ROUTES)
@pytest.mark.parametrize("how", ["shutdown", "close"])
def test_a_client_that_goes_away_mid_body_leaves_the_edge_serving(
    daemon: RunningDaemon, before: Any, path: str, how: str
) -> None:
    body = _valid_body(path, "application/json")
    sock = _raw(daemon, path)
    with sock:
        sock.sendall(_head(path, len(body)) + body[: len(body) // 2])
        if how == "shutdown":  # half-open: we can still read what the server says
            sock.shutdown(socket.SHUT_WR)
            answer = _read_until_closed(sock)
            assert answer == b"" or answer.startswith(b"HTTP/1.1 4"), answer[:200]
    _assert_answered(path, *_post(daemon, path, _valid_body(path, "application/json"),
                                  "application/json"))


@pytest.mark.parametrize("path", ROUTES)
def test_a_request_dribbled_byte_by_byte_is_answered(daemon: RunningDaemon, before: Any,
                                                     path: str) -> None:
    body = _valid_body(path, "application/msgpack")
    with _raw(daemon, path) as sock:
        for byte in _head(path, len(body), "application/msgpack") + body:
            sock.send(bytes([byte]))
        response = http.client.HTTPResponse(sock)
        response.begin()
        data = response.read()
        headers = {k.lower(): v for k, v in response.getheaders()}
        _assert_answered(path, response.status, headers, data)
        if path != "/model":
            assert response.status == 200
            assert msgpack.unpackb(data)["accepted"] == 3


@pytest.mark.parametrize("path", ROUTES)
def test_garbage_instead_of_http_is_a_400_then_closed(daemon: RunningDaemon, before: Any,
                                                      path: str) -> None:
    with _raw(daemon, path) as sock:
        sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64)  # TLS hello
        answer = _read_until_closed(sock)
        assert answer.startswith(b"HTTP/1.1 400"), answer[:200]


# --- afterwards ------------------------------------------------------------------------------


def test_no_collector_or_predictor_crashed(daemon: RunningDaemon,
                                           before: dict[str, tuple[int, int]]) -> None:
    """Runs last in this module: the same processes, no restart, after everything above."""
    after = _workers(daemon)
    assert after == before
    assert all(restarts == 0 for _, restarts in after.values()), after
    assert any(name.startswith("collector-") for name in after)
    assert any(name.startswith("predictor-") for name in after)
