"""Schemathesis against a real daemon, from the OpenAPI documents it serves.

Each service's ``GET /openapi.json`` is loaded from the running daemon; schemathesis then
sends schema-valid and schema-breaking requests (JSON and msgpack, with and without the
bearer token) and checks every answer: never a server error, and status code, content type,
headers and body as the document says.

One check is off for ingest, by design: ``negative_data_rejection``. A batch whose *items*
break the Reading or Outcome schema is still a usable body: the collector answers 200 and
lists those items under ``rejected`` (the good items next to them are stored), as the
document's description says; only a body unusable as a whole is a 400.
"""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from messages.openapi import (
    INGEST_OPENAPI_JSON,
    MSGPACK_MEDIA_TYPES,
    PREDICT_OPENAPI_JSON,
    ingest_document,
    predict_document,
)
from tests.e2e_support import TOKEN, RunningDaemon, running_daemon

pytestmark = pytest.mark.e2e

MAX_EXAMPLES = 25


def _packable(value: Any) -> Any:
    """``value`` with integers msgpack cannot hold sent as floats (still the wrong type)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and not -(2**63) <= value < 2**64:
        try:
            return float(value)
        except OverflowError:
            return str(value)
    if isinstance(value, list):
        return [_packable(v) for v in value]
    if isinstance(value, dict):
        return {k: _packable(v) for k, v in value.items()}
    return value


@schemathesis.serializer(*MSGPACK_MEDIA_TYPES)
def _to_msgpack(ctx: Any, value: Any) -> bytes:
    packed: bytes = msgpack.packb(_packable(value), use_bin_type=True,
                                  unicode_errors="surrogatepass")
    return packed


@schemathesis.deserializer(*MSGPACK_MEDIA_TYPES)
def _from_msgpack(ctx: Any, response: Any) -> Any:
    return msgpack.unpackb(response.content)


def _config(*, negative_rejection: bool, server_errors: str = "") -> schemathesis.Config:
    """Bounded runs, the bearer token through the document's own security scheme."""
    extra = f', "{server_errors}"' if server_errors else ""
    return schemathesis.Config.from_str(f"""
seed = 7
[generation]
mode = "all"
max-examples = {MAX_EXAMPLES}
[auth.openapi.bearer]
bearer = "{TOKEN}"
[checks]
negative_data_rejection.enabled = {str(negative_rejection).lower()}
not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx"{extra}]
""")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    with running_daemon(tmp_path_factory.mktemp("schemathesis")) as running:
        yield running


def _document_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/openapi.json"


def _get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)  # no token: the document is public
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def ingest_url(daemon: RunningDaemon) -> str:
    port = daemon.settings.ingest.port
    assert _get(port, "/openapi.json") == (200, INGEST_OPENAPI_JSON)
    return f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def predict_url(daemon: RunningDaemon) -> str:
    port = daemon.settings.predict.port
    status, served = _get(port, "/openapi.json")
    if status == 404:
        pytest.skip("the predictor serves no GET /openapi.json yet (its route is not added)")
    assert (status, served) == (200, PREDICT_OPENAPI_JSON)
    return f"http://127.0.0.1:{port}"


# Loaded from the module's documents, which the fixtures above prove the daemon serves:
# schemathesis' lazy `from_fixture` loader does not run under pytest 9 (it sets `_nodeid`).
ingest = schemathesis.openapi.from_dict(ingest_document(),
                                        config=_config(negative_rejection=False))
# Before any model is published a valid query is answered 503 "no model": documented.
predict = schemathesis.openapi.from_dict(
    predict_document(), config=_config(negative_rejection=True, server_errors="503"))



@predict.hook("map_body")
def _whole_numbers_as_integers(context: Any, body: Any) -> Any:
    """Send 5.0 as 5, as the document asks: to JSON Schema it is an integer, to the codec not."""
    if isinstance(body, float) and body.is_integer() and abs(body) < 2**63:
        return int(body)
    if isinstance(body, list):
        return [_whole_numbers_as_integers(context, v) for v in body]
    if isinstance(body, dict):
        return {k: _whole_numbers_as_integers(context, v) for k, v in body.items()}
    return body


_SETTINGS = settings(max_examples=MAX_EXAMPLES, deadline=None,
                     suppress_health_check=list(HealthCheck))


@ingest.parametrize()
@_SETTINGS
def test_ingest_service_conforms_to_its_document(case: Any, ingest_url: str) -> None:
    case.call_and_validate(base_url=ingest_url)


@predict.parametrize()
@_SETTINGS
def test_predict_service_conforms_to_its_document(case: Any, predict_url: str) -> None:
    case.call_and_validate(base_url=predict_url)
