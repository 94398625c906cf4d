"""The floor: the least a Python server can do for the predictors' ``POST /model``.

asyncio + httptools in ``--workers`` processes (default 2, like the predictor replicas) that
each bind the port with ``SO_REUSEPORT``; keep-alive; the bearer token checked; the JSON
body parsed (``{"location_id": n}`` or ``{"features": {name: number}}``; a null value is
refused, as the project's codec does); the location's feature values taken from a dict
filled once at start from the daemon's feature store (the latest row of every location, on
the champion's collection, as a predictor reads it; missing values imputed, rounded to
float32); the champion's fitted scikit-learn trees walked (one tree in pure Python over
flat lists, a forest or boosting with numpy, over all its trees at once); the answer in the
project's shape. Nothing else: no limits, no timeouts, no drain, no counters, no model refresh.
With ``--loop uvloop`` the workers run uvloop's event loop, as the project's edges do;
asyncio's own by default (the floor as the predictions issue defines it).

Imported by ``bench/predict.py`` (``running_floor``: a process group of its own, always
stopped), or run alone against a daemon's configuration::

    .venv/bin/python bench/_floor.py --config /tmp/rml-x/rml.toml --port 8999 --token T

which prints ``floor ready ...`` once every worker listens, and stops on SIGTERM or SIGINT
(its workers with it). Not a bench itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import hmac
import json
import math
import multiprocessing
import os
import select
import signal
import socket
import subprocess
import sys
import time
from array import array
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httptools  # noqa: E402
import numpy as np  # noqa: E402

from learning.serving.compiled import sigmoid  # noqa: E402

__all__ = ["FloorModel", "load_floor_model", "main", "running_floor", "serve"]

HOST = "127.0.0.1"


# --- the model: flat arrays from the fitted scikit-learn pipeline ---------------------------


class _Tree:
    """One decision tree as flat lists, walked in pure Python (a leaf has ``left == -1``)."""

    __slots__ = ("left", "right", "feature", "threshold", "value")

    def __init__(self, tree: Any, node_values: np.ndarray) -> None:
        self.left: list[int] = tree.children_left.tolist()
        self.right: list[int] = tree.children_right.tolist()
        self.feature: list[int] = tree.feature.tolist()
        self.threshold: list[float] = tree.threshold.tolist()
        self.value: list[float] = node_values.tolist()

    def __call__(self, x: Sequence[float]) -> float:
        left, right, feature, threshold = self.left, self.right, self.feature, self.threshold
        node = 0
        while left[node] != -1:
            node = left[node] if x[feature[node]] <= threshold[node] else right[node]
        return self.value[node]


class _Ensemble:
    """Trees whose leaf values are summed (plus ``offset``, then a sigmoid for boosting),
    walked with numpy level by level over all trees at once: one node table where a leaf
    points at itself with an infinite threshold."""

    def __init__(self, trees: Sequence[tuple[Any, np.ndarray]], offset: float,
                 logistic: bool) -> None:
        children, feature, threshold, values, roots = [], [], [], [], []
        start = depth = 0
        for tree, node_values in trees:
            n = int(tree.node_count)
            left, right = np.asarray(tree.children_left), np.asarray(tree.children_right)
            leaf = left == -1
            own = np.arange(start, start + n)
            # column 0: the right child, column 1: the left one (taken when x <= threshold)
            children.append(np.stack((np.where(leaf, own, right + start),
                                      np.where(leaf, own, left + start)), axis=1))
            feature.append(np.where(leaf, 0, np.asarray(tree.feature)))
            threshold.append(np.where(leaf, np.inf, np.asarray(tree.threshold)))
            values.append(np.asarray(node_values, dtype=np.float64))
            roots.append(start)
            start += n
            depth = max(depth, int(tree.max_depth))
        # Laid out for ``ndarray.take`` (a third cheaper than fancy indexing at 100 trees):
        # node k is slot 2k, its children are next[2k + went_left], and its feature,
        # threshold and value are repeated at 2k and 2k + 1.
        self.next = (np.concatenate(children).astype(np.intp) * 2).ravel()
        self.feature = np.repeat(np.concatenate(feature).astype(np.intp), 2)
        self.threshold = np.repeat(np.concatenate(threshold).astype(np.float64), 2)
        self.value = np.repeat(np.concatenate(values), 2)
        self.roots = np.asarray(roots, dtype=np.intp) * 2
        self.depth, self.offset, self.logistic = depth, offset, logistic

    def __call__(self, x: np.ndarray) -> float:
        step, feature, threshold = self.next, self.feature, self.threshold
        node = self.roots
        for _ in range(self.depth):
            node = step.take(node + (x.take(feature.take(node)) <= threshold.take(node)))
        total = self.offset + float(self.value.take(node).sum())
        return sigmoid(total) if self.logistic else total


@dataclass(frozen=True, slots=True)
class FloorModel:
    """The champion, ready to answer: its walk, and every location's input already made."""

    version: int
    collection_id: int
    feature_names: tuple[str, ...]
    kind: str  # "tree", "forest", "boosting"
    statistics: tuple[float, ...]  # the imputer's, what a missing value becomes
    walk: Callable[[Any], float]  # P(True) for a prepared input
    rows: Mapping[int, Any]  # location -> prepared input (imputed, float32-rounded)
    numpy_input: bool  # ensembles take an ndarray, a tree a list

    def prepare(self, values: Sequence[float]) -> Any:
        """Raw feature values (NaN: missing) as the walk's input: imputed with the medians,
        then rounded to float32, as scikit-learn's trees see them."""
        filled = [s if v != v else v for v, s in zip(values, self.statistics, strict=True)]
        rounded = array("f", filled).tolist()
        return np.asarray(rounded, dtype=np.float64) if self.numpy_input else rounded

    def probability(self, location_id: int) -> float | None:
        x = self.rows.get(location_id)
        return None if x is None else self.walk(x)


def _true_fractions(estimator: Any, true_column: int) -> np.ndarray:
    value = np.asarray(estimator.tree_.value[:, 0, :], dtype=np.float64)
    return np.asarray(value[:, true_column] / value.sum(axis=1))


def model_from_pipeline(pipeline: Any, *, version: int, collection_id: int,
                        feature_names: Sequence[str],
                        rows: Mapping[int, Sequence[float]]) -> FloorModel:
    """A ``FloorModel`` from a fitted ``SimpleImputer -> tree / forest / boosting`` pipeline
    and the locations' raw rows (``ValueError`` for any other shape)."""
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.tree import DecisionTreeClassifier

    steps = [step for _, step in pipeline.steps]
    if len(steps) != 2 or not isinstance(steps[0], SimpleImputer):
        kinds = [type(s).__name__ for s in steps]
        raise ValueError(f"the floor walks imputer -> trees, not {kinds}")
    imputer, model = steps
    statistics = tuple(float(s) for s in imputer.statistics_)
    classes = [bool(c) for c in model.classes_]
    true_column = classes.index(True)
    walk: Callable[[Any], float]
    if isinstance(model, DecisionTreeClassifier):
        kind, walk = "tree", _Tree(model.tree_, _true_fractions(model, true_column))
    elif isinstance(model, RandomForestClassifier):
        n = len(model.estimators_)
        kind, walk = "forest", _Ensemble(
            [(e.tree_, _true_fractions(e, true_column) / n) for e in model.estimators_],
            0.0, logistic=False)
    elif isinstance(model, GradientBoostingClassifier) and model.estimators_.shape[1] == 1:
        rate = float(model.learning_rate)
        # scikit-learn's initial raw prediction for a binary log-loss: the prior's log-odds
        prior = model.init_.predict_proba(np.zeros((1, len(statistics))))[:, 1]
        eps = np.finfo(np.float32).eps
        p = float(np.clip(prior, eps, 1 - eps, dtype=np.float64)[0])
        sign = 1.0 if true_column == 1 else -1.0  # raw scores are for classes_[1]
        kind, walk = "boosting", _Ensemble(
            [(e.tree_, sign * rate * e.tree_.value[:, 0, 0]) for e in model.estimators_[:, 0]],
            sign * math.log(p / (1.0 - p)), logistic=True)
    else:
        raise ValueError(f"the floor walks trees, not a {type(model).__name__}")
    shell = FloorModel(version, collection_id, tuple(feature_names), kind, statistics, walk,
                       {}, kind != "tree")
    prepared = {location: shell.prepare(values) for location, values in rows.items()}
    return FloorModel(version, collection_id, tuple(feature_names), kind, statistics, walk,
                      prepared, kind != "tree")


def load_floor_model(config: str | Path) -> tuple[FloorModel, str]:
    """The daemon's champion and its collection's latest rows, read once from the stores
    named by ``config`` (read-only, while the daemon runs); and a note on what was loaded."""
    from config.settings import load_settings
    from learning.features.collections import valid_collection
    from learning.models.artifacts import load_model
    from learning.models.lineage import feature_names_of
    from storage.backend import StoreBackend

    settings = load_settings(Path(config), environ={})
    backend = StoreBackend(settings, read_only=True)
    try:
        registry, features = backend.registry(), backend.features()
        champion = registry.champion()
        if champion is None:
            raise LookupError("the daemon has no champion yet")
        names = feature_names_of(champion.lineage)
        collections = features.collections()
        active = valid_collection(collections, features.invalid_features()).id
        by_id = {c.id: c for c in collections}
        collection = by_id[champion.feature_collection_id]
        if tuple(collection.features) != names:
            raise ValueError(f"collection {collection.id}'s features {collection.features} "
                             f"are not the model's {names}")
        rows = {r.location_id: r.values for r in features.latest_rows(collection.id)}
        pipeline = load_model(registry.artifact(champion.version))
    finally:
        backend.close()
    model = model_from_pipeline(pipeline, version=champion.version,
                                collection_id=champion.feature_collection_id,
                                feature_names=names, rows=rows)
    note = (f"model {model.version} ({model.kind}, {len(names)} features), collection "
            f"{model.collection_id}" + ("" if model.collection_id == active
                                        else f" (the active one is {active})")
            + f", {len(rows)} locations")
    return model, note


# --- the server --------------------------------------------------------------------------------

_REASONS = {200: b"OK", 400: b"Bad Request", 401: b"Unauthorized", 404: b"Not Found"}


def _response(status: int, body: bytes, keep_alive: bool) -> bytes:
    return b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n%sContent-Length: %d\r\n\r\n%s" % (
        status, _REASONS[status], b"" if keep_alive else b"Connection: close\r\n", len(body), body)


def _error(status: int, reason: str) -> tuple[int, bytes]:
    return status, json.dumps({"error": reason}, separators=(",", ":")).encode()


class _App:
    """What every connection shares: the token, the model, the rows."""

    def __init__(self, model: FloorModel, token: str) -> None:
        self.model = model
        self.bearer = b"Bearer " + token.encode()
        self._version, self._collection = model.version, model.collection_id

    def answer(self, method: bytes, url: bytes, auth: bytes | None,
               body: bytes) -> tuple[int, bytes]:
        if method != b"POST" or url != b"/model":
            return _error(404, "not found")
        if auth is None or not hmac.compare_digest(auth, self.bearer):
            return _error(401, "missing or invalid bearer token")
        try:
            doc = json.loads(body)
        except ValueError:
            return _error(400, "malformed JSON")
        if not isinstance(doc, dict):
            return _error(400, "expected an object")
        model = self.model
        location = doc.get("location_id")
        if location is not None:
            if type(location) is not int:
                return _error(400, "location_id: expected an integer")
            x = model.rows.get(location)
            if x is None:
                return _error(400, f"unknown_location: no features for location {location} yet")
        else:
            given = doc.get("features")
            if not isinstance(given, dict) or set(given) != set(model.feature_names):
                return _error(400, f"features: give exactly {', '.join(model.feature_names)}")
            values = []
            for name in model.feature_names:
                v = given[name]
                if type(v) not in (int, float):  # null too, as the project's codec
                    return _error(400, f"features[{name}]: expected a number")
                values.append(float(v))
            x = model.prepare(values)
        probability = float(model.walk(x))
        return 200, json.dumps({"label": probability >= 0.5, "probability": probability,
                                "model_version": self._version,
                                "feature_collection_id": self._collection,
                                "fallback": False}, separators=(",", ":")).encode()


class _Connection(asyncio.Protocol):
    """One keep-alive connection: parse with httptools, answer inline."""

    def __init__(self, app: _App) -> None:
        self.app = app
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.auth: bytes | None = None
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's transport, or uvloop's (which does not derive from asyncio.Transport).
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.write(_response(400, b'{"error":"malformed request"}', False))
            self.transport.close()

    def on_message_begin(self) -> None:
        self.url, self.auth, self.body = b"", None, []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) == 13 and name.lower() == b"authorization":
            self.auth = value

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        transport = self.transport
        assert transport is not None
        keep_alive = self.parser.should_keep_alive()
        status, body = self.app.answer(self.parser.get_method(), self.url, self.auth,
                                       b"".join(self.body))
        transport.write(_response(status, body, keep_alive))
        if not keep_alive:
            transport.close()


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent dies (a floor never outlives its parent)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _worker(model: FloorModel, port: int, token: str, ready: Any, loop_name: str) -> None:
    _die_with_parent()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((HOST, port))
    sock.listen(1024)
    sock.setblocking(False)
    app = _App(model, token)
    loop: asyncio.AbstractEventLoop
    if loop_name == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    loop.run_until_complete(loop.create_server(lambda: _Connection(app), sock=sock,
                                               backlog=1024))
    ready.set()
    loop.run_forever()


def serve(model: FloorModel, port: int, token: str, workers: int = 2,
          on_ready: Callable[[], None] | None = None, loop_name: str = "asyncio") -> int:
    """Serve ``model`` on ``127.0.0.1:port`` from ``workers`` forked processes until SIGTERM
    or SIGINT (or a worker dies: then 1); the workers are always stopped."""
    context = multiprocessing.get_context("fork")
    stopping = False

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    processes = []
    try:
        for i in range(workers):
            ready = context.Event()
            process = context.Process(target=_worker, args=(model, port, token, ready, loop_name),
                                      name=f"floor-{i + 1}", daemon=True)
            process.start()
            processes.append(process)
            while not ready.wait(0.1):
                if not process.is_alive() or stopping:
                    return 1
        if on_ready is not None:
            on_ready()
        while not stopping:
            if not all(p.is_alive() for p in processes):
                return 1
            time.sleep(0.2)
        return 0
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join(5.0)
            if process.is_alive():
                process.kill()
                process.join(5.0)
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def running_floor(config: str | Path, port: int, token: str, workers: int = 2,
                  timeout_s: float = 120.0, loop_name: str = "asyncio") -> Iterator[str]:
    """Run ``bench/_floor.py`` for the daemon of ``config`` in a process group of its own;
    yield its ``ready`` line once every worker listens. Always stopped (SIGTERM to the
    group, then SIGKILL)."""
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--config", str(config),
         "--port", str(port), "--token", token, "--workers", str(workers),
         "--loop", loop_name],
        stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert process.stdout is not None
        line = b""
        deadline = time.monotonic() + timeout_s
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or process.poll() is not None:
                raise RuntimeError(f"the floor did not start (exit {process.poll()}): "
                                   f"{line.decode(errors='replace')}")
            if select.select([process.stdout], [], [], min(left, 0.5))[0]:
                chunk = os.read(process.stdout.fileno(), 4096)
                if not chunk:
                    process.wait(5.0)
                    continue
                line += chunk
        yield line.decode().strip()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10.0)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10.0)
        # Workers left in the group (the parent gone first) go too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        if process.stdout is not None:
            process.stdout.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the daemon's rml.toml (its stores)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio",
                        help="the workers' event loop: asyncio's own (the floor as defined), "
                             "or uvloop's (as the project's edges)")
    args = parser.parse_args(argv)
    model, note = load_floor_model(args.config)

    def ready() -> None:
        print(f"floor ready on {HOST}:{args.port}, {args.workers} workers on {args.loop}: "
              f"{note}", flush=True)

    return serve(model, args.port, args.token, args.workers, ready, args.loop)


if __name__ == "__main__":
    sys.exit(main())
