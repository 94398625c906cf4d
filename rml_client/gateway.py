"""``GatewayClient``: readings and outcomes to the daemon's ingest port, in batches."""

from __future__ import annotations

import ssl
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal

from rml_client._http import Answer, Endpoint, Transport
from rml_client._wire import CONTENT_TYPES, check_format, decode, encode, health, refusal
from rml_client.errors import RmlError, UnexpectedAnswer
from rml_client.results import BatchResult, RejectedItem

__all__ = ["GatewayClient"]

DEFAULT_INGEST_PORT = 8471
Kind = Literal["readings", "outcomes"]


class GatewayClient:
    """A field gateway's client of the ingest port (``POST /readings``, ``POST /outcomes``).

    Items are plain mappings, as docs/http-api.md shows them (a reading: ``sensor_id``,
    ``location_id``, ``reading_id``, ``timestamp`` in ms, ``animals_lower``,
    ``animals_upper``, ``percent_zebras``; the talk's camelCase ``PreyReading`` too). Two ways
    to send:

    - ``send(readings)`` (and ``send_outcomes``): now, in batches of ``batch_size``;
    - ``add(reading)`` buffers, and sends the buffer as a batch once it holds
      ``batch_size`` (that batch's ``BatchResult`` is returned); ``flush()`` sends the rest.
      Leaving a ``with`` block normally flushes.

    A batch that is not acknowledged (a broken connection, no answer within ``timeout_s``,
    a 503 with ``Retry-After``) is sent again, up to ``retries`` more times within
    ``deadline_s`` per batch. That is safe: a reading is an immutable fact keyed by sensor
    and reading id, and one the daemon already stored comes back as a duplicate, never
    stored twice. Items the collector refuses are in the result's ``rejected`` (index, item,
    error name, detail); the items next to them are stored.

    A batch that still is not acknowledged raises (``Unavailable``, ``ConnectionFailed``,
    ``DeadlineExceeded``, ...) with ``acknowledged`` (the result of the batches before it)
    and ``unacknowledged`` (its items and those after it) set on the error; after ``add`` or
    ``flush`` those stay buffered, and the next ``flush`` sends them again.

    Example::

        with GatewayClient("http://127.0.0.1:8471", "rml-demo-token",
                           format="msgpack") as gateway:
            result = gateway.send(readings)
            for item in result.rejected:
                print(item.index, item.error, item.detail)
    """

    def __init__(self, base_url: str | None = None, token: str | None = None, *,
                 host: str | None = None, port: int | None = None, format: str = "json",
                 batch_size: int = 1000, timeout_s: float = 30.0, retries: int = 20,
                 deadline_s: float | None = 120.0,
                 tls_context: ssl.SSLContext | None = None) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.endpoint = Endpoint.parse(base_url, host, port, DEFAULT_INGEST_PORT)
        self.format = check_format(format)
        self.batch_size = batch_size
        self._content_type = CONTENT_TYPES[self.format]
        self._transport = Transport(self.endpoint, token, timeout_s=timeout_s, retries=retries,
                                    deadline_s=deadline_s, tls=tls_context)
        self._buffer: list[Mapping[str, Any]] = []

    # --- sending now ------------------------------------------------------------------

    def send(self, readings: Iterable[Mapping[str, Any]]) -> BatchResult:
        """Send ``readings`` in batches, each until acknowledged; what the collectors said
        (a rejected item's ``index`` is its place in ``readings``)."""
        return self._send("readings", readings)

    def send_outcomes(self, outcomes: Iterable[Mapping[str, Any]]) -> BatchResult:
        """Send outcomes (``location_id``, ``outcome_id``, ``timestamp``, ``label``), as
        ``send`` does readings."""
        return self._send("outcomes", outcomes)

    def send_encoded(self, body: bytes, kind: Kind = "readings") -> BatchResult:
        """Send one batch already encoded in this client's format (``{"readings": [...]}``),
        as a gateway that keeps its unacknowledged batches as bytes does; rejected items
        come back with ``item=None``."""
        return self._result(self._post(kind, body), None, 0)

    def _send(self, kind: Kind, items: Iterable[Mapping[str, Any]]) -> BatchResult:
        todo = items if isinstance(items, Sequence) else list(items)
        total = BatchResult()
        for start in range(0, len(todo), self.batch_size):
            batch = todo[start:start + self.batch_size]
            try:
                answer = self._post(kind, encode({kind: list(batch)}, self.format))
                total += self._result(answer, batch, start)
            except RmlError as exc:
                exc.acknowledged, exc.unacknowledged = total, tuple(todo[start:])
                raise
        return total

    # --- buffering --------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Readings buffered by ``add`` and not yet acknowledged."""
        return len(self._buffer)

    def add(self, reading: Mapping[str, Any]) -> BatchResult | None:
        """Buffer ``reading``; once ``batch_size`` are buffered, send them (see ``flush``)."""
        self._buffer.append(reading)
        if len(self._buffer) >= self.batch_size:
            return self.flush()
        return None

    def flush(self) -> BatchResult:
        """Send every buffered reading, a batch at a time; each acknowledged batch leaves
        the buffer, a failed one stays (with those after it) and the error is raised."""
        total, done = BatchResult(), 0
        while self._buffer:
            batch = self._buffer[:self.batch_size]
            try:
                answer = self._post("readings", encode({"readings": batch}, self.format))
                total += self._result(answer, batch, done)
            except RmlError as exc:
                exc.acknowledged, exc.unacknowledged = total, tuple(self._buffer)
                raise
            del self._buffer[:len(batch)]
            done += len(batch)
        return total

    # --- the wire ---------------------------------------------------------------------

    def _post(self, kind: Kind, body: bytes) -> Answer:
        answer = self._transport.request("POST", f"/{kind}", body, self._content_type)
        if answer.status != 200:
            raise refusal(answer)
        return answer

    def _result(self, answer: Answer, batch: Sequence[Mapping[str, Any]] | None,
                offset: int) -> BatchResult:
        doc = decode(answer.body, answer.headers.get("content-type"))
        try:
            accepted, duplicates, refused = doc["accepted"], doc["duplicates"], doc["rejected"]
            rejected = tuple(_rejected(item, batch, offset) for item in refused)
        except (TypeError, KeyError, ValueError, AttributeError) as exc:
            raise UnexpectedAnswer(f"not an ingest answer: {doc!r:.200}") from exc
        if type(accepted) is not int or type(duplicates) is not int:
            raise UnexpectedAnswer(f"not an ingest answer: {doc!r:.200}")
        return BatchResult(accepted, duplicates, rejected, 1, answer.attempts - 1)

    def health(self) -> dict[str, Any]:
        """``GET /health`` of whichever collector answers."""
        return health(self._transport)

    def close(self) -> None:
        """Close the connection (buffered readings stay buffered)."""
        self._transport.close()

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        try:
            if kind is None:
                self.flush()
        finally:
            self.close()

    def __repr__(self) -> str:
        return (f"GatewayClient({str(self.endpoint)!r}, format={self.format!r}, "
                f"batch_size={self.batch_size})")


def _rejected(item: Mapping[str, Any], batch: Sequence[Mapping[str, Any]] | None,
              offset: int) -> RejectedItem:
    """One entry of an answer's ``rejected``, with the item it names."""
    index = item["index"]
    if type(index) is not int or index < 0 or (batch is not None and index >= len(batch)):
        raise ValueError(f"no item {index!r} in the batch")
    return RejectedItem(offset + index, batch[index] if batch is not None else None,
                        str(item["error"]), str(item.get("detail", "")))
