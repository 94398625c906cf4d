"""One Couchbase collection through the SDK's key-value API, with the project's errors.

The cut is here so that the stores above speak only in documents and keys: insert
one or many (a key that exists is reported, not raised), get one or many (a
missing key is absent, not raised). Every SDK exception that escapes becomes a
``StoreTimeout`` (the cluster answered too late, or a durable write's outcome is
ambiguous: retry later, answer 503) or a ``StoreUnavailable`` (anything else).
An ambiguous write is safe to retry because every write is an ``insert``: a
second try that finds the key tells the caller the first one landed.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from couchbase.durability import DurabilityLevel, ServerDurability
from couchbase.exceptions import (
    AmbiguousTimeoutException,
    CouchbaseException,
    DocumentExistsException,
    DocumentNotFoundException,
    DurabilityImpossibleException,
    DurabilitySyncWriteAmbiguousException,
    DurabilitySyncWriteInProgressException,
    RequestCanceledException,
    ServiceUnavailableException,
    TemporaryFailException,
    TimeoutException,
    UnAmbiguousTimeoutException,
)
from couchbase.options import GetMultiOptions, GetOptions, InsertMultiOptions, InsertOptions
from couchbase.transcoder import RawBinaryTranscoder

from storage.errors import StoreError, StoreTimeout, StoreUnavailable

__all__ = ["DURABILITY_LEVELS", "KeyValue", "Reachability"]

#: ``[storage.couchbase] durability`` values and the SDK's levels.
DURABILITY_LEVELS: Mapping[str, DurabilityLevel] = {
    "none": DurabilityLevel.NONE,
    "majority": DurabilityLevel.MAJORITY,
    "majority_and_persist_active": DurabilityLevel.MAJORITY_AND_PERSIST_TO_ACTIVE,
    "persist_to_majority": DurabilityLevel.PERSIST_TO_MAJORITY,
}

# The cluster did not answer at all (as opposed to refusing one request).
_UNREACHABLE = (AmbiguousTimeoutException, UnAmbiguousTimeoutException, TimeoutException,
                RequestCanceledException, ServiceUnavailableException)
_LATE = (AmbiguousTimeoutException, UnAmbiguousTimeoutException, TimeoutException,
         TemporaryFailException, RequestCanceledException,
         DurabilitySyncWriteAmbiguousException, DurabilitySyncWriteInProgressException)


def store_error(exc: BaseException, where: str) -> StoreError:
    """The project's error for an SDK exception (or anything else a call raised)."""
    if isinstance(exc, _LATE):
        return StoreTimeout(f"{where}: Couchbase did not answer in time: "
                            f"{type(exc).__name__}")
    if isinstance(exc, DurabilityImpossibleException):
        return StoreUnavailable(f"{where}: the bucket cannot meet [storage.couchbase] "
                                "durability (too few nodes or replicas for it)")
    name = type(exc).__name__ if isinstance(exc, CouchbaseException) else repr(exc)
    return StoreUnavailable(f"{where}: Couchbase refused or failed: {name}")


class Reachability:
    """Whether the cluster answered lately, shared by a connection's collections.

    After a call found the cluster unreachable (it timed out, or the SDK could not get to
    a node), calls fail at once instead of each waiting out its own timeout, so an actor's
    handler or a request waits at most one timeout when an outage begins, and actors keep
    answering their supervisors' heartbeats instead of being killed and restarted over
    and over. With a ``probe`` (a cheap call to the cluster), a thread of its own tries
    it every ``retry_s`` until it answers, and calls fail at once until then: no caller
    ever waits on a probe. Without one, a call goes through every ``retry_s`` as the probe.
    """

    def __init__(self, retry_s: float = 1.0,
                 probe: Callable[[], object] | None = None) -> None:
        self.retry_s = retry_s
        self.probe = probe
        self._down_until = 0.0  # inf: until the probe answers
        self._why = ""
        self._probing = False
        self._lock = threading.Lock()

    def check(self, where: str) -> None:
        """``StoreUnavailable`` while the cluster is known to be unreachable."""
        with self._lock:
            down = self._down_until > time.monotonic()
            why = self._why
        if down:
            raise StoreUnavailable(f"{where}: Couchbase unreachable ({why}); retrying "
                                   f"every {self.retry_s:g} s")

    def failed(self, exc: BaseException) -> None:
        """A call failed: an unreachable cluster marks it down."""
        if not isinstance(exc, _UNREACHABLE):
            return
        with self._lock:
            self._why = type(exc).__name__
            if self.probe is None:
                self._down_until = time.monotonic() + self.retry_s
                return
            self._down_until = math.inf
            if self._probing:
                return
            self._probing = True
        threading.Thread(target=self._probe, name="couchbase-probe", daemon=True).start()

    def _probe(self) -> None:
        assert self.probe is not None
        while True:
            time.sleep(self.retry_s)
            try:
                self.probe()
            except Exception:  # still unreachable (or refusing): try again later
                continue
            with self._lock:
                self._down_until, self._probing = 0.0, False
            return

    def answered(self) -> None:
        """A call got an answer: the cluster is reachable."""
        if self._down_until:
            with self._lock:
                self._down_until = 0.0

    @property
    def reachable(self) -> bool:
        """False while calls fail at once."""
        return time.monotonic() >= self._down_until


class KeyValue:
    """Insert-only documents in one collection (an SDK ``Collection`` or its stand-in).

    ``where`` names the collection in errors; ``durability`` is a key of
    ``DURABILITY_LEVELS``; ``timeout_s`` bounds every call; ``reachability`` is shared
    with the connection's other collections.
    """

    def __init__(self, collection: Any, where: str, *, durability: str = "none",
                 timeout_s: float = 2.5, read_only: bool = False,
                 reachability: Reachability | None = None) -> None:
        if durability not in DURABILITY_LEVELS:
            raise ValueError(f"unknown durability {durability!r}")
        self.reachability = reachability or Reachability()
        self._collection = collection
        self.where = where
        self.read_only = read_only
        self._timeout = timedelta(seconds=timeout_s)
        level = DURABILITY_LEVELS[durability]
        self._durability = None if level is DurabilityLevel.NONE else ServerDurability(level)

    @contextmanager
    def _errors(self) -> Iterator[None]:
        self.reachability.check(self.where)
        try:
            yield
        except StoreError:
            raise
        except Exception as exc:  # an SDK call raised: never let it out raw
            self.reachability.failed(exc)
            raise store_error(exc, self.where) from exc
        self.reachability.answered()

    def check_writable(self) -> None:
        """``StoreError`` if this collection was opened read-only."""
        if self.read_only:
            raise StoreError(f"{self.where}: opened read-only")

    def _insert_options(self, multi: bool, transcoder: Any = None) -> Any:
        kwargs: dict[str, Any] = {"timeout": self._timeout}
        if self._durability is not None:
            kwargs["durability"] = self._durability
        if transcoder is not None:
            kwargs["transcoder"] = transcoder
        return InsertMultiOptions(**kwargs) if multi else InsertOptions(**kwargs)

    def insert(self, key: str, value: Any) -> bool:
        """Insert one document; False if the key exists (the stored one is kept)."""
        self.check_writable()
        with self._errors():
            try:
                self._collection.insert(key, value, self._insert_options(False))
            except DocumentExistsException:
                return False
        return True

    def insert_many(self, docs: Mapping[str, Any]) -> set[str]:
        """Insert every document (one pipelined call); the keys that existed already.
        Any other failure raises, after every key was tried: some may have landed."""
        return self._insert_many(docs, None)

    def insert_bytes_many(self, docs: Mapping[str, bytes]) -> set[str]:
        """``insert_many`` for binary documents, stored raw (not as JSON)."""
        return self._insert_many(docs, RawBinaryTranscoder())

    def _insert_many(self, docs: Mapping[str, Any], transcoder: Any) -> set[str]:
        self.check_writable()
        if not docs:
            return set()
        with self._errors():
            result = self._collection.insert_multi(dict(docs),
                                                   self._insert_options(True, transcoder))
            existed: set[str] = set()
            for key, exc in result.exceptions.items():
                if not isinstance(exc, DocumentExistsException):
                    raise exc
                existed.add(key)
        return existed

    def get(self, key: str) -> Any | None:
        """The document's value, or None if there is none."""
        with self._errors():
            try:
                return self._collection.get(key, GetOptions(timeout=self._timeout)).value
            except DocumentNotFoundException:
                return None

    def get_many(self, keys: Sequence[str]) -> dict[str, Any]:
        """The values of the keys that exist (one pipelined call)."""
        return self._get_many(keys, None)

    def get_bytes_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        """``get_many`` for documents stored with ``insert_bytes_many``: their raw bytes."""
        return {key: bytes(value)
                for key, value in self._get_many(keys, RawBinaryTranscoder()).items()}

    def _get_many(self, keys: Sequence[str], transcoder: Any) -> dict[str, Any]:
        if not keys:
            return {}
        with self._errors():
            options = GetMultiOptions(timeout=self._timeout, transcoder=transcoder)
            result = self._collection.get_multi(list(dict.fromkeys(keys)), options)
            for exc in result.exceptions.values():
                if not isinstance(exc, DocumentNotFoundException):
                    raise exc
            return {key: got.value for key, got in result.results.items()}
