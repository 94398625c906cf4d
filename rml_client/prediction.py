"""``PredictionClient``: ``POST /model`` over HTTP, keep-alive, JSON or msgpack."""

from __future__ import annotations

import re
import ssl
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from rml_client._http import Endpoint, Transport
from rml_client._wire import CONTENT_TYPES, check_format, decode, encode, health, refusal
from rml_client.errors import UnexpectedAnswer
from rml_client.results import Prediction

__all__ = ["PredictionClient", "prediction_from", "query_payload"]

DEFAULT_PREDICT_PORT = 8472
_TRUE = b"true"
# The daemon's own spelling of an answer (``messages.codec.encode_prediction_json``), read
# without the JSON decoder; any other spelling takes the decoder.
_ANSWER = re.compile(rb'\{"label":(true|false),"probability":(-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?'
                     rb'(?:[eE][-+]?[0-9]+)?),"model_version":(-?[0-9]{1,18}),'
                     rb'"feature_collection_id":(-?[0-9]{1,18}),"fallback":(true|false)\}')


def query_payload(location_id: int | None, features: Mapping[str, float] | None,
                  deadline_ms: float | None) -> dict[str, Any]:
    """The body of a prediction request: ``{"location_id": n}`` or ``{"features": {...}}``,
    with ``"deadline_ms"`` when given. Exactly one of the two must be given."""
    if (location_id is None) == (features is None):
        raise ValueError("give location_id or features (exactly one)")
    payload: dict[str, Any] = ({"location_id": location_id} if features is None
                               else {"features": dict(features)})
    if deadline_ms is not None:
        payload["deadline_ms"] = deadline_ms
    return payload


def prediction_from(doc: Any) -> Prediction:
    """A ``Prediction`` from a 200 answer's decoded body; ``UnexpectedAnswer`` if it is not one."""
    try:
        label, probability = doc["label"], doc["probability"]
        version, collection = doc["model_version"], doc["feature_collection_id"]
        fallback = doc.get("fallback", False)
    except (TypeError, KeyError, AttributeError) as exc:
        raise UnexpectedAnswer(f"not a prediction: {doc!r:.200}") from exc
    if not (type(label) is bool and type(fallback) is bool and type(version) is int
            and type(collection) is int and type(probability) in (float, int)):
        raise UnexpectedAnswer(f"not a prediction: {doc!r:.200}")
    return Prediction(label, float(probability), version, collection, fallback)


class PredictionClient:
    """Predictions from the daemon's predict port (``POST /model``).

    One keep-alive connection, opened again when it breaks. A request that gets no answer
    (a broken connection, a timeout) or a 503 is sent again, up to ``retries`` more times
    (a prediction is read-only: sending it twice is safe), waiting for the server's
    ``Retry-After`` when it sends one; ``deadline_s`` bounds each call as a whole (None:
    only ``retries`` and ``timeout_s``, each attempt's wait, do). Calls are serialized: use
    one client per thread for parallel requests.

    Example::

        with PredictionClient("http://127.0.0.1:8472", "rml-demo-token") as client:
            answer = client.predict(location_id=3)  # Prediction(label=True, ...)
            client.predict(features={"animal_estimate": 12.5, ...}, deadline_ms=50)

    Raises ``BadRequest`` (400, e.g. ``unknown_location``), ``Unauthorized`` (401),
    ``Unavailable`` (503 after the retries: no model yet, overloaded), ``DeadlineExceeded``,
    ``ConnectionFailed``; all are ``RmlError``.
    """

    def __init__(self, base_url: str | None = None, token: str | None = None, *,
                 host: str | None = None, port: int | None = None, format: str = "json",
                 timeout_s: float = 10.0, retries: int = 3, deadline_s: float | None = 30.0,
                 tls_context: ssl.SSLContext | None = None) -> None:
        self.endpoint = Endpoint.parse(base_url, host, port, DEFAULT_PREDICT_PORT)
        self.format = check_format(format)
        self._content_type = CONTENT_TYPES[self.format]
        self._transport = Transport(self.endpoint, token, timeout_s=timeout_s, retries=retries,
                                    deadline_s=deadline_s, tls=tls_context)

    def predict(self, location_id: int | None = None, *,
                features: Mapping[str, float] | None = None,
                deadline_ms: float | None = None) -> Prediction:
        """The prediction for ``location_id`` (its latest online features) or for
        ``features`` (exactly the champion's feature names). ``deadline_ms`` is the server's
        deadline for this answer (past it, the fallback model answers, ``fallback=True``);
        None: the daemon's ``[predict] deadline_ms``."""
        if (features is None and deadline_ms is None and type(location_id) is int
                and self.format == "json"):
            body = b'{"location_id":%d}' % location_id  # the usual request, written directly
        else:
            body = encode(query_payload(location_id, features, deadline_ms), self.format)
        answer = self._transport.request("POST", "/model", body, self._content_type)
        if answer.status != 200:
            raise refusal(answer)
        usual = _ANSWER.fullmatch(answer.body)
        if usual is not None:
            label, probability, version, collection, fallback = usual.groups()
            return Prediction(label == _TRUE, float(probability), int(version), int(collection),
                              fallback == _TRUE)
        return prediction_from(decode(answer.body, answer.headers.get("content-type")))

    def health(self) -> dict[str, Any]:
        """``GET /health`` of whichever predictor answers: ``{"status": "ok", "actor": ...,
        "model_version": ...}``."""
        return health(self._transport)

    def close(self) -> None:
        """Close the connection (a later call opens a new one)."""
        self._transport.close()

    def __enter__(self) -> PredictionClient:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PredictionClient({str(self.endpoint)!r}, format={self.format!r})"
