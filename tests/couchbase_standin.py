"""A file-backed stand-in for the slice of the Couchbase SDK (4.x) the Couchbase store uses.

It lets the store's logic run in CI without a cluster. It is backed by a directory, not by
memory, because the store contract suite opens the store in child processes (a writer
killed mid-run, concurrent writers, a read-only reader) and they must all see one
"cluster". Each document is one file, named by the hex of its UTF-8 key, in a folder per
collection. ``insert`` writes a temporary file and ``os.link``s it to its name, so across
processes a key is created exactly once and is never seen half written. Errors are the
SDK's own exception classes, and results are the SDK's own result classes read through
its own transcoders, so code written against the real SDK runs unchanged.

Fault injection (``set_down``, ``fail_after``) and the counters live in ``root/control``,
under ``fcntl.flock``, so a test sets them in the parent and they apply in the children.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import struct
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import couchbase.exceptions as cb_exc
from couchbase.diagnostics import PingState, ServiceType
from couchbase.durability import ClientDurability, ServerDurability
from couchbase.exceptions import (
    CollectionAlreadyExistsException,
    CouchbaseException,
    DocumentExistsException,
    DocumentNotFoundException,
    InvalidArgumentException,
    ScopeAlreadyExistsException,
    ScopeNotFoundException,
    UnAmbiguousTimeoutException,
)
from couchbase.management.collections import CollectionSpec, ScopeSpec
from couchbase.result import (
    ExistsResult,
    GetResult,
    MultiGetResult,
    MultiMutationResult,
    MutationResult,
)
from couchbase.transcoder import JSONTranscoder

__all__ = ["CRASH_EXIT_CODE", "StandinBucket", "StandinCluster", "StandinCollection",
           "StandinCollectionManager", "StandinScope"]

CRASH_EXIT_CODE = 17
_HEADER = struct.Struct(">QI")  # cas, transcoder flags; the encoded value follows
_NAME = re.compile(r"[A-Za-z0-9_%-][A-Za-z0-9_%.-]{0,250}")  # also keeps names path-safe
_MAX_KEY_BYTES = 250  # the server's limit
_SEGMENT = 200  # hex chars per path part: a 250-byte key's hex exceeds NAME_MAX
_DEFAULT = "_default"


@dataclass
class _CoreResult:
    """What the SDK's result classes read from the C core's result object."""

    raw_result: dict[str, Any]


@dataclass(frozen=True)
class _Admission:
    """How many of an operation's mutations may happen, and how the rest fail."""

    unreachable: str | None  # why nothing may happen, if so
    admitted: int
    failure: type[CouchbaseException] | None = None
    crash: bool = False


def _timeout(message: str) -> CouchbaseException:
    return UnAmbiguousTimeoutException(message=f"standin: {message}")


def _checked_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidArgumentException(message=f"invalid bucket/scope/collection name {name!r}")
    return name


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not 0 < len(key.encode()) <= _MAX_KEY_BYTES:
        raise InvalidArgumentException(message=f"invalid document key {key!r}")


def _transcoder(args: dict[str, Any], key: str) -> Any:
    per_key = (args.get("per_key_options") or {}).get(key) or {}
    return per_key.get("transcoder") or args.get("transcoder") or JSONTranscoder()


def _multi(per_key: dict[str, Any]) -> _CoreResult:
    """The core's answer to a multi op, as the SDK's multi-result classes unpack it."""
    all_ok = not any(isinstance(v, CouchbaseException) for v in per_key.values())
    return _CoreResult({"all_okay": all_ok, **per_key})


def _options(opts: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Merge the positional options object and kwargs as the SDK does; check what we can."""
    if opts and not isinstance(opts[0], Mapping):
        raise InvalidArgumentException(message=f"expected an options object, got {opts[0]!r}")
    merged = {**(opts[0] if opts else {}), **kwargs}
    timeout = merged.get("timeout")
    if timeout is not None and not isinstance(timeout, timedelta):
        raise InvalidArgumentException(message=f"Expected timedelta instead of {type(timeout)}")
    durability = merged.get("durability")
    # The SDK silently ignores any other type (e.g. a bare DurabilityLevel); we refuse it.
    if durability is not None and not isinstance(durability, ClientDurability | ServerDurability):
        raise InvalidArgumentException(message=f"invalid durability {durability!r}")
    return merged


class StandinCluster:
    """Stands in for ``couchbase.cluster.Cluster``; every instance on ``root`` shares its data,
    its fault injection and its counters."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self._control = self.root / "control"
        self._control.mkdir(parents=True, exist_ok=True)
        self._closed = False

    def bucket(self, name: str) -> StandinBucket:
        """The bucket ``name``; buckets exist implicitly, each with its ``_default`` scope."""
        self._ensure_open()
        path = self.root / "data" / _checked_name(name)
        (path / _DEFAULT / _DEFAULT).mkdir(parents=True, exist_ok=True)
        return StandinBucket(self, path)

    def wait_until_ready(self, timeout: timedelta, *opts: Any, **kwargs: Any) -> None:
        """Return at once, or raise ``UnAmbiguousTimeoutException`` while the cluster is down."""
        _options((), {"timeout": timeout})
        self._ensure_reachable()

    def close(self) -> None:
        """Close this handle; later operations raise ``RuntimeError`` as the SDK's do."""
        self._closed = True

    def set_down(self, down: bool) -> None:
        """Make every operation, in every process, time out (``True``) or work again."""
        with self._state() as state:
            state["down"] = down

    def fail_after(self, n: int | None, exc_name: str = "TemporaryFailException",
                   *, crash: bool = False) -> None:
        """Let ``n`` more mutations through, then fail each with ``exc_name`` (by default a
        write the cluster refuses for now; ``set_down`` is the outage), or, if ``crash``,
        ``os._exit(17)`` the process), until ``fail_after(None)``. Every insert attempt that
        reaches the store counts, whatever its outcome."""
        failure = getattr(cb_exc, exc_name, None)
        if not (isinstance(failure, type) and issubclass(failure, CouchbaseException)):
            raise ValueError(f"{exc_name!r} is not an exception of couchbase.exceptions")
        with self._state() as state:
            state["fail"] = None if n is None else {"left": n, "exc": exc_name, "crash": crash}

    def mutations(self) -> int:
        """Insert attempts (per key) that have reached the store, in all processes."""
        with self._state(write=False) as state:
            return int(state["mutations"])

    def operations(self) -> int:
        """Calls to the collection API (a multi op counts once), in all processes."""
        with self._state(write=False) as state:
            return int(state["operations"])

    def _ensure_reachable(self) -> None:
        """Raise as the SDK does when closed, or time out while down (management calls)."""
        self._ensure_open()
        with self._state(write=False) as state:
            if state["down"]:
                raise _timeout("cluster is down")

    def _admit(self, mutations: int, *, reachable: bool) -> _Admission:
        """Count one collection API call and take up to ``mutations`` of the budget."""
        self._ensure_open()
        with self._state() as state:
            state["operations"] += 1
            if state["down"] or not reachable:
                # The SDK times out on both: an unreachable cluster, an unknown collection.
                why = "cluster is down" if state["down"] else "collection does not exist"
                return _Admission(unreachable=why, admitted=0)
            fail = state["fail"]
            admitted = mutations if fail is None else min(mutations, fail["left"])
            state["mutations"] += admitted
            if fail is None:
                return _Admission(unreachable=None, admitted=admitted)
            fail["left"] -= admitted
            return _Admission(None, admitted, getattr(cb_exc, fail["exc"]), fail["crash"])

    def _ensure_open(self) -> None:
        if self._closed:
            raise RuntimeError("Cannot perform operations on a closed cluster. "
                               "Create a new cluster instance to reconnect.")

    @contextmanager
    def _state(self, *, write: bool = True) -> Iterator[dict[str, Any]]:
        """The shared state under an exclusive lock; saved afterwards if ``write``."""
        fd = os.open(self._control / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            path = self._control / "state.json"
            state = (json.loads(path.read_text()) if path.exists() else
                     {"operations": 0, "mutations": 0, "down": False, "fail": None})
            yield state
            if write:
                # Replace, never rewrite in place: a SIGKILLed writer must not leave half a file.
                tmp = self._control / f".state-{os.getpid()}"
                tmp.write_text(json.dumps(state))
                os.replace(tmp, path)
        finally:
            os.close(fd)  # which releases the flock


class StandinBucket:
    """Stands in for ``couchbase.bucket.Bucket``."""

    def __init__(self, cluster: StandinCluster, path: Path) -> None:
        self._cluster, self._path = cluster, path

    def scope(self, name: str) -> StandinScope:
        """The scope ``name``; like the SDK's, it need not exist until it is used."""
        return StandinScope(self._cluster, self._path / _checked_name(name))

    def collections(self) -> StandinCollectionManager:
        """The manager that creates and lists this bucket's scopes and collections."""
        return StandinCollectionManager(self._cluster, self._path)

    def ping(self, *opts: Any, **kwargs: Any) -> Any:
        """A report of one Data service endpoint, ``ok`` (``UnAmbiguousTimeoutException``
        while the cluster is down, as the SDK's connect does then)."""
        self._cluster._ensure_reachable()
        endpoint = SimpleNamespace(state=PingState.OK, remote="standin")
        return SimpleNamespace(endpoints={ServiceType.KeyValue: [endpoint]})


class StandinScope:
    """Stands in for ``couchbase.scope.Scope``."""

    def __init__(self, cluster: StandinCluster, path: Path) -> None:
        self._cluster, self._path = cluster, path

    def collection(self, name: str) -> StandinCollection:
        """The collection ``name``; operations on it time out until it is created."""
        return StandinCollection(self._cluster, self._path / _checked_name(name))


class StandinCollectionManager:
    """Stands in for ``couchbase.management.collections.CollectionManager``."""

    def __init__(self, cluster: StandinCluster, bucket_path: Path) -> None:
        self._cluster, self._path = cluster, bucket_path

    def create_scope(self, scope_name: str, *options: Any, **kwargs: Any) -> None:
        """Create a scope; ``ScopeAlreadyExistsException`` if it exists."""
        self._cluster._ensure_reachable()
        try:
            (self._path / _checked_name(scope_name)).mkdir()  # mkdir is atomic across processes
        except FileExistsError:
            raise ScopeAlreadyExistsException(message=f"scope {scope_name!r} exists") from None

    def create_collection(self, *args: Any, **kwargs: Any) -> None:
        """Create a collection: ``(scope_name, collection_name, settings=None)`` or the older
        ``(CollectionSpec)``; ``CollectionAlreadyExistsException`` if it exists."""
        self._cluster._ensure_reachable()
        spec = args[0] if args and isinstance(args[0], CollectionSpec) else kwargs.get("collection")
        if isinstance(spec, CollectionSpec):
            scope_name, name = spec.scope_name, spec.name
        else:
            names = [*args[:2], kwargs.get("scope_name"), kwargs.get("collection_name")]
            scope_name, name = [n for n in names if n is not None][:2]
        scope = self._path / _checked_name(scope_name)
        if not scope.is_dir():
            raise ScopeNotFoundException(message=f"scope {scope_name!r} not found")
        try:
            (scope / _checked_name(name)).mkdir()
        except FileExistsError:
            raise CollectionAlreadyExistsException(
                message=f"collection {scope_name}.{name} exists") from None

    def get_all_scopes(self, *options: Any, **kwargs: Any) -> list[Any]:
        """Every scope as the SDK's ``ScopeSpec``, with its collections as ``CollectionSpec``."""
        self._cluster._ensure_reachable()
        return [ScopeSpec(s.name, [CollectionSpec(c.name, s.name)
                                   for c in sorted(s.iterdir()) if c.is_dir()])
                for s in sorted(self._path.iterdir()) if s.is_dir()]


class StandinCollection:
    """Stands in for ``couchbase.collection.Collection``: insert-only, as the store is."""

    def __init__(self, cluster: StandinCluster, path: Path) -> None:
        self._cluster, self._dir = cluster, path

    def insert(self, key: str, value: Any, *opts: Any, **kwargs: Any) -> Any:
        """Create the document; ``DocumentExistsException`` if ``key`` exists."""
        outcome = self._insert({key: value}, _options(opts, kwargs))[key]
        if isinstance(outcome, CouchbaseException):
            raise outcome
        return MutationResult(outcome, key=key)

    def insert_multi(self, keys_and_docs: dict[str, Any], *opts: Any, **kwargs: Any) -> Any:
        """Insert each document; per-key exceptions are returned unless ``return_exceptions``
        is False, when the first is raised (after every insert was tried, as in the SDK)."""
        if not isinstance(keys_and_docs, dict):
            raise InvalidArgumentException(message="Expected keys_and_docs to be a dict.")
        args = _options(opts, kwargs)
        raw = self._insert(keys_and_docs, args)
        return MultiMutationResult(_multi(raw), args.get("return_exceptions", True))

    def get(self, key: str, *opts: Any, **kwargs: Any) -> Any:
        """The document; ``DocumentNotFoundException`` if ``key`` does not exist."""
        args = _options(opts, kwargs)
        raw = self._read_all([key])[key]
        if isinstance(raw, CouchbaseException):
            raise raw
        return GetResult(raw, transcoder=_transcoder(args, key), key=key)

    def get_multi(self, keys: list[str], *opts: Any, **kwargs: Any) -> Any:
        """Each document; missing keys map to ``DocumentNotFoundException``."""
        if not isinstance(keys, list):
            raise InvalidArgumentException(message="Expected keys to be a list.")
        args = _options(opts, kwargs)
        raw = self._read_all(keys)
        transcoders = {key: _transcoder(args, key) for key in keys}
        return MultiGetResult(_multi(raw), args.get("return_exceptions", True), transcoders)

    def exists(self, key: str, *opts: Any, **kwargs: Any) -> Any:
        """Whether ``key`` exists, as the SDK's ``ExistsResult``."""
        _options(opts, kwargs)
        raw = self._read_all([key])[key]
        if isinstance(raw, UnAmbiguousTimeoutException):
            raise raw
        found = not isinstance(raw, DocumentNotFoundException)
        cas = raw.raw_result["cas"] if found else 0
        return ExistsResult(_CoreResult({"document_exists": found, "cas": cas}), key=key)

    def _insert(self, keys_and_docs: dict[str, Any], args: dict[str, Any]) -> dict[str, Any]:
        """Per key, the core result or the exception; one admission for the whole batch."""
        for key in keys_and_docs:
            _check_key(key)
        encoded = [(key, *_transcoder(args, key).encode_value(value))
                   for key, value in keys_and_docs.items()]
        admission = self._cluster._admit(len(encoded), reachable=self._dir.is_dir())
        raw: dict[str, Any] = {}
        for i, (key, payload, flags) in enumerate(encoded):
            if admission.unreachable:
                raw[key] = _timeout(f"{admission.unreachable}, inserting {key!r}")
            elif i < admission.admitted:
                raw[key] = self._write(key, payload, flags)
            elif admission.crash:
                os._exit(CRASH_EXIT_CODE)  # the writer dies between two writes
            else:
                assert admission.failure is not None
                raw[key] = admission.failure(message=f"standin: injected failure on {key!r}")
        return raw

    def _read_all(self, keys: list[str]) -> dict[str, Any]:
        for key in keys:
            _check_key(key)
        unreachable = self._cluster._admit(0, reachable=self._dir.is_dir()).unreachable
        return {key: _timeout(f"{unreachable}, reading {key!r}") if unreachable
                else self._read(key) for key in keys}

    def _path(self, key: str) -> Path:
        name = key.encode().hex()
        parts = [name[i:i + _SEGMENT] for i in range(0, len(name), _SEGMENT)]
        # "-" is not a hex digit, so a folder never collides with a shorter key's file.
        return self._dir.joinpath(*[p + "-" for p in parts[:-1]], parts[-1])

    def _write(self, key: str, payload: bytes, flags: int) -> Any:
        final = self._path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        cas = time.time_ns()
        fd, tmp = tempfile.mkstemp(dir=self._dir, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(_HEADER.pack(cas, flags) + payload)
            os.link(tmp, final)  # fails if the key exists, in this process or any other
        except FileExistsError:
            return DocumentExistsException(message=f"document {key!r} already exists")
        finally:
            os.unlink(tmp)
        return _CoreResult({"cas": cas})

    def _read(self, key: str) -> Any:
        try:
            data = self._path(key).read_bytes()
        except FileNotFoundError:
            return DocumentNotFoundException(message=f"document {key!r} not found")
        cas, flags = _HEADER.unpack_from(data)
        return _CoreResult({"cas": cas, "flags": flags, "value": data[_HEADER.size:]})
