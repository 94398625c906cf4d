"""A client library of the reactive ML daemon, for other services.

Three clients, typed answers and one exception hierarchy; importing this package needs
neither the daemon's configuration nor scikit-learn (only the standard library, and
msgpack when that format is used).

Predictions over HTTP (keep-alive; JSON or msgpack; retries that honour ``Retry-After``;
a per-call server deadline and an overall client deadline)::

    from rml_client import PredictionClient, BadRequest, Unavailable

    with PredictionClient("http://127.0.0.1:8472", "rml-demo-token", format="msgpack",
                          timeout_s=2.0, retries=3, deadline_s=5.0) as client:
        answer = client.predict(location_id=3, deadline_ms=50)
        print(answer.label, answer.probability, answer.model_version, answer.fallback)
        try:
            client.predict(location_id=123456)
        except BadRequest as exc:
            print(exc.status, exc.reason)  # 400 unknown_location: ...

The same through Thespian, from a Python service on the daemon's host (the root
supervisor routes the request to a live predictor)::

    from rml_client import ThespianPredictionClient

    with ThespianPredictionClient(admin_port=19471) as client:
        answer = client.predict(location_id=3)

A field gateway: readings in batches, a batch resent until acknowledged (a resent reading
is reported as a duplicate, never stored twice), refused items reported by name::

    from rml_client import GatewayClient

    with GatewayClient("http://127.0.0.1:8471", "rml-demo-token", batch_size=1000) as gw:
        result = gw.send(readings)  # or gw.add(reading) ... gw.flush()
        print(result.accepted, result.duplicates, result.rejected_by_error())
        for item in result.rejected:
            print(item.index, item.error, item.detail)

Errors: ``RmlError`` <- ``HttpStatusError`` (``status``, ``reason``) <- ``BadRequest``
(400), ``Unauthorized`` (401), ``Unavailable`` (503 after the retries); and
``ConnectionFailed`` (also a ``ConnectionError``), ``DeadlineExceeded`` (also a
``TimeoutError``), ``UnexpectedAnswer``.
"""

from __future__ import annotations

from rml_client.errors import (
    BadRequest,
    ConnectionFailed,
    DeadlineExceeded,
    HttpStatusError,
    RmlError,
    Unauthorized,
    Unavailable,
    UnexpectedAnswer,
)
from rml_client.gateway import GatewayClient
from rml_client.over_thespian import ThespianPredictionClient
from rml_client.prediction import PredictionClient
from rml_client.results import BatchResult, Prediction, RejectedItem

__all__ = [
    "BadRequest",
    "BatchResult",
    "ConnectionFailed",
    "DeadlineExceeded",
    "GatewayClient",
    "HttpStatusError",
    "Prediction",
    "PredictionClient",
    "RejectedItem",
    "RmlError",
    "ThespianPredictionClient",
    "Unauthorized",
    "Unavailable",
    "UnexpectedAnswer",
]
