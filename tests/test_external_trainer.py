"""Hybrid learning: fitting through an external trainer process, with a deadline.

Unit level: the wire format, the settings' checks, and the client against
real trainer processes — the real service (``learning.training.trainer_service``) and deliberately
bad ones (``tests.faulty_trainer``: slow past the deadline, failing with a 500, answering
garbage, answering a pipeline with a type outside the allow-list, answering hostile zips).
The service's own guards against untrusted clients: every error answer closes the
connection, a silent client is dropped, and past its job or connection limit it answers 503.
End to end: a daemon with ``[learning] trainer = URL`` publishes a model the trainer fitted;
with the trainer behind that URL made slow, a training request times out, the champion
stays, the attempt is recorded, and the learner goes on answering; a hostile artifact is one
failed attempt, not a redelivered message.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest

from config.errors import ConfigError
from config.job import JobConfiguration, ModelType
from config.settings import load_settings
from daemon.process import ask_root
from learning.features import FEATURE_TYPES
from learning.features.collections import FeatureCollection
from learning.models.artifacts import MAX_UNCOMPRESSED_BYTES
from learning.training.external import (
    BadTrainingJob,
    ExternalTrainer,
    ExternalTrainerFailed,
    ExternalTrainerTimeout,
    decode_job,
    encode_job,
    fit_step,
)
from learning.training.pipeline import fit_locally, train
from learning.training.sets import build_training_set
from learning.training.trainer_service import RETRY_AFTER_S, make_server
from messages.protocol import TrainRequest, TrainResult
from players.demo import last_midnight_ms
from players.gateway import HttpClient, send_items
from players.simulator import Savanna, reading_item
from runtime.group import free_ports
from storage import SYSTEM_FILE
from storage.sqlite.training_runs import SQLiteTrainingRuns
from storage.training_runs import TrainingRun
from tests.e2e_support import RunningDaemon, running_daemon, wait_for

REPO = Path(__file__).resolve().parent.parent
TOKEN = "trainer-test-token-42"
SAVANNA = Savanna(seed=11, n_locations=12, hours=72, end_ms=last_midnight_ms())
EVERY = FeatureCollection(1, 0, tuple(FEATURE_TYPES))


def rows(n: int = 400, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    X[::9, 1] = np.nan  # empty windows are NaN on the wire too
    return X, X[:, 0] + rng.normal(size=n) > 0


def health(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1.0) as answer:
            return dict(json.loads(answer.read()))
    except OSError:
        return None


class Trainer:
    """A trainer service in a process of its own, on a free port it binds itself (port 0:
    no other process can take it between choosing and binding); read from its first line."""

    def __init__(self, module: str, log: Path, *args: str) -> None:
        self.log = log
        self._out = log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, "--port", "0", "--token", TOKEN, *args],
            cwd=REPO, stdout=self._out, stderr=subprocess.STDOUT)
        self.port = 0

    def _listening(self) -> int:
        found = re.search(r"listening on http://127\.0\.0\.1:(\d+)", self.log.read_text())
        return int(found.group(1)) if found else 0

    def wait_ready(self) -> Trainer:
        self.port = wait_for(f"{self.log.name} listening",
                             lambda: self.process.poll() is not None or self._listening(),
                             60.0, 0.1)
        assert self.process.poll() is None, f"the trainer exited: {self.log.read_text()}"
        return self

    @property
    def url(self) -> str:
        assert self.port, "not ready yet"
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self._out.close()


#: One job at a time, each sleeping past any test, and silent clients dropped after 2 s.
BUSY = ("--mode", "slow", "--sleep-s", "60", "--max-jobs", "1", "--request-timeout-s", "2")


@pytest.fixture(scope="module")
def trainers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Trainer]]:
    """The real trainer and the faulty ones, each a process of its own: ``slow``, ``busy``,
    and ``hostile``, which reads its mode per job from ``hostile.mode`` beside its log (see
    ``answering``), so one process plays every bad answer."""
    logs = tmp_path_factory.mktemp("trainers")
    (logs / "hostile.mode").write_text("real")
    started = {
        "real": Trainer("learning.training.trainer_service", logs / "real.log"),
        "slow": Trainer("tests.faulty_trainer", logs / "slow.log", "--mode", "slow",
                        "--sleep-s", "60"),
        "hostile": Trainer("tests.faulty_trainer", logs / "hostile.log",
                           "--mode-file", str(logs / "hostile.mode")),
        "busy": Trainer("tests.faulty_trainer", logs / "busy.log", *BUSY),
    }
    try:
        for trainer in started.values():  # started together: their imports overlap
            trainer.wait_ready()
        yield started
    finally:
        for trainer in started.values():  # all told first: each takes a poll interval
            if trainer.process.poll() is None:
                trainer.process.terminate()
        for trainer in started.values():
            trainer.stop()


# --- the wire format ---------------------------------------------------------------------


def test_a_job_round_trips_through_the_wire_format() -> None:
    X, y = rows()
    job = JobConfiguration(ModelType.RANDOM_FOREST, (("n_estimators", 5),), seed=3)
    decoded = decode_job(encode_job(job, ("a", "b", "c"), X, y))
    assert decoded.job == job and decoded.feature_names == ("a", "b", "c")
    np.testing.assert_array_equal(decoded.X, X)  # NaN included, bit for bit
    np.testing.assert_array_equal(decoded.y, y)
    assert not decoded.X.flags.writeable


def _body(**changes: Any) -> bytes:
    X, y = rows(10)
    data = msgpack.unpackb(encode_job(JobConfiguration(), ("a", "b", "c"), X, y))
    data.update(changes)
    return bytes(msgpack.packb(data))


@pytest.mark.parametrize(("body", "says"), [
    (b"\xc1 not msgpack", "not msgpack"),
    (msgpack.packb([1, 2]), "expected a map"),
    (_body(extra=1), "unknown ['extra']"),
    (_body(job={"model_type": "svm"}), "job.model_type"),
    (_body(shape=[10, 2]), "shape"),
    (_body(X=b"\x00" * 8), "X: expected 240 bytes"),
    (_body(X=np.full(30, np.inf).tobytes()), "infinite"),
    (_body(y=b"\x02" * 10), "y: expected 0 or 1"),
    (_body(feature_names=["a", "a", "c"]), "feature_names"),
])
def test_a_malformed_job_is_refused_with_what_is_wrong(body: bytes, says: str) -> None:
    with pytest.raises(BadTrainingJob) as caught:
        decode_job(body)
    assert says in str(caught.value)


def test_local_is_the_default_fit_step() -> None:
    assert fit_step("local", "", 60.0) is fit_locally
    assert fit_step("http://127.0.0.1:1", "a-token-123", 5.0) == ExternalTrainer(
        "http://127.0.0.1:1", "a-token-123", 5.0)


# --- settings ------------------------------------------------------------------------------


def _refused(tmp_path: Path, text: str) -> str:
    path = tmp_path / "rml.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path, {})
    return caught.value.key


def test_the_trainer_deadline_must_be_below_the_learners_heartbeat_timeout(
        tmp_path: Path) -> None:
    text = "[learning]\ntrainer_timeout_s = 120\n[supervision]\nbatch_heartbeat_timeout_s = 120\n"
    assert _refused(tmp_path, text) == "learning.trainer_timeout_s"
    assert _refused(tmp_path, "[learning]\ntrainer_timeout_s = 0\n") == "learning.trainer_timeout_s"
    fine = tmp_path / "fine.toml"
    fine.write_text("[learning]\ntrainer_timeout_s = 119.5\n")
    assert load_settings(fine, {}).learning.trainer_timeout_s == 119.5


@pytest.mark.parametrize(("text", "key"), [
    ('trainer = "ftp://127.0.0.1:1"\ntrainer_token = "a-long-token"', "learning.trainer"),
    ('trainer = "127.0.0.1:8480"\ntrainer_token = "a-long-token"', "learning.trainer"),
    ('trainer = "http://127.0.0.1:8480"', "learning.trainer_token"),
    ('trainer = "http://127.0.0.1:8480"\ntrainer_token = "short"', "learning.trainer_token"),
])
def test_a_bad_trainer_setting_is_refused_with_its_key(tmp_path: Path, text: str,
                                                       key: str) -> None:
    assert _refused(tmp_path, f"[learning]\n{text}\n") == key


def test_the_trainer_settings_come_from_the_environment_too() -> None:
    learning = load_settings(None, {"RML_LEARNING_TRAINER": "http://127.0.0.1:8480",
                                    "RML_LEARNING_TRAINER_TOKEN": "a-long-token",
                                    "RML_LEARNING_TRAINER_TIMEOUT_S": "5"}).learning
    assert (learning.trainer, learning.trainer_token, learning.trainer_timeout_s) == (
        "http://127.0.0.1:8480", "a-long-token", 5.0)


# --- the client against real trainer processes ---------------------------------------------


def test_the_external_trainer_fits_the_model_a_local_fit_would(
        trainers: dict[str, Trainer]) -> None:
    X, y = rows()
    job = JobConfiguration(ModelType.GRADIENT_BOOSTING, (("n_estimators", 20),))
    before = health(trainers["real"].port)
    theirs = ExternalTrainer(trainers["real"].url, TOKEN, 30.0)(X, y, ("a", "b", "c"), job)
    ours = fit_locally(X, y, ("a", "b", "c"), job)
    np.testing.assert_array_equal(theirs.predict_proba(X), ours.predict_proba(X))
    after = health(trainers["real"].port)
    assert before is not None and after is not None and after["jobs"] == before["jobs"] + 1


def test_training_through_the_trainer_is_scored_on_the_callers_own_holdout(
        trainers: dict[str, Trainer]) -> None:
    training_set = build_training_set(SAVANNA.readings(), SAVANNA.outcomes(), EVERY,
                                      JobConfiguration().window_ms)
    job = JobConfiguration()
    external = train(training_set, job, ExternalTrainer(trainers["real"].url, TOKEN, 30.0))
    local = train(training_set, job)
    assert external.metrics == local.metrics and external.n_test == local.n_test > 0
    np.testing.assert_array_equal(external.y_score, local.y_score)


def _fit_with(url: str, timeout_s: float = 30.0, token: str = TOKEN) -> Any:
    X, y = rows()
    return ExternalTrainer(url, token, timeout_s)(X, y, ("a", "b", "c"), JobConfiguration())


def test_a_trainer_slower_than_the_deadline_is_a_timeout(trainers: dict[str, Trainer]) -> None:
    with pytest.raises(ExternalTrainerTimeout) as caught:
        _fit_with(trainers["slow"].url, timeout_s=1.0)
    assert caught.value.reason == "no answer within 1 s"
    assert caught.value.trainer == trainers["slow"].url


def answering(trainers: dict[str, Trainer], mode: str) -> str:
    """The hostile trainer's URL, its next jobs answered in ``mode`` (``tests.faulty_trainer``)."""
    hostile = trainers["hostile"]
    (hostile.log.parent / "hostile.mode").write_text(mode)
    return hostile.url


@pytest.mark.parametrize(("mode", "says"), [
    ("error", "HTTP 500: fit_failed: RuntimeError: this trainer fails on purpose"),
    ("garbage", "refused its artifact: not a skops artifact"),
    ("disallowed", "sklearn.preprocessing._function_transformer.FunctionTransformer"),
])
def test_a_failing_trainer_is_a_named_failure(trainers: dict[str, Trainer], mode: str,
                                              says: str) -> None:
    with pytest.raises(ExternalTrainerFailed) as caught:
        _fit_with(answering(trainers, mode))
    assert says in caught.value.reason


def test_a_wrong_token_is_refused_by_the_trainer(trainers: dict[str, Trainer]) -> None:
    with pytest.raises(ExternalTrainerFailed, match="HTTP 401: missing or wrong bearer token"):
        _fit_with(trainers["real"].url, token="not-the-token")


def test_a_job_over_the_trainers_body_limit_is_refused_unread() -> None:
    server = make_server("127.0.0.1", 0, [TOKEN], max_body_bytes=1000)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(ExternalTrainerFailed, match="HTTP 413: body of [0-9]+ bytes is "
                                                        "over 1000"):
            _fit_with(f"http://127.0.0.1:{server.server_address[1]}")
        assert server.jobs == 0
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(("mode", "says"), [
    ("pipeline_schema", "refused its artifact: artifact does not load (TypeError"),
    ("bomb", f"unpacks to 629155775 bytes, over {MAX_UNCOMPRESSED_BYTES}"),
    ("empty_zip", "refused its artifact: not a skops artifact"),
    ("bad_classes", "not a usable classifier (ValueError"),
])
def test_a_hostile_artifact_is_only_ever_a_named_failure(trainers: dict[str, Trainer],
                                                         mode: str, says: str) -> None:
    with pytest.raises(ExternalTrainerFailed) as caught:
        _fit_with(answering(trainers, mode))
    assert says in caught.value.reason


def exchange(port: int, request: bytes) -> bytes:
    """Send ``request`` on a fresh connection and read until the server closes it (20 s at
    most: a server that keeps it open fails the caller's assertions)."""
    with socket.create_connection(("127.0.0.1", port), timeout=20.0) as sock:
        sock.sendall(request)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except TimeoutError:
            pass
        return received


def post(path: str, body: bytes, content_type: str = "application/msgpack") -> bytes:
    """A raw HTTP/1.1 POST with our token and a keep-alive connection."""
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            "Connection: keep-alive\r\n\r\n").encode() + body


#: A body that is itself a request: if the server answered early and kept reading, it would
#: take this for the connection's next request and answer it too.
SMUGGLED = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


@pytest.mark.parametrize(("path", "content_type", "status"), [
    ("/nowhere", "application/msgpack", b"404"),
    ("/train", "text/plain", b"415"),
])
def test_an_early_error_answer_closes_the_connection_unread_body_and_all(
        trainers: dict[str, Trainer], path: str, content_type: str, status: bytes) -> None:
    received = exchange(trainers["real"].port, post(path, SMUGGLED, content_type))
    assert received.startswith(b"HTTP/1.1 " + status)
    assert b"\r\nConnection: close\r\n" in received
    assert received.count(b"HTTP/1.1 ") == 1  # the body was never taken for a request


def test_a_client_that_sends_nothing_is_dropped(trainers: dict[str, Trainer]) -> None:
    busy = trainers["busy"]  # its request timeout is 2 s
    assert exchange(busy.port, b"") == b""
    assert exchange(busy.port, b"POST /train HTTP/1.1\r\n") == b""  # and one that stalls
    assert health(busy.port) is not None


def test_a_trainer_at_its_job_limit_answers_503_with_retry_after(
        trainers: dict[str, Trainer]) -> None:
    busy = trainers["busy"]  # one job at a time, and each sleeps 60 s
    X, y = rows(10)
    body = encode_job(JobConfiguration(), ("a", "b", "c"), X, y)
    with socket.create_connection(("127.0.0.1", busy.port), timeout=20.0) as first:
        first.sendall(post("/train", body))
        wait_for("the first job running", lambda: (health(busy.port) or {}).get("running"),
                 20.0)
        received = exchange(busy.port, post("/train", body))
        assert received.startswith(b"HTTP/1.1 503")
        assert f"\r\nRetry-After: {RETRY_AFTER_S}\r\n".encode() in received
        assert b"\r\nConnection: close\r\n" in received
        with pytest.raises(ExternalTrainerFailed, match="HTTP 503: busy"):
            _fit_with(busy.url)


def test_a_trainer_at_its_connection_limit_answers_503_without_a_thread() -> None:
    server = make_server("127.0.0.1", 0, [TOKEN], max_connections=2)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    idle = [socket.create_connection(("127.0.0.1", port), timeout=20.0) for _ in range(2)]
    try:
        # Accepted in order: both idle connections hold their slots before this one comes.
        received = exchange(port, b"")
        assert received.startswith(b"HTTP/1.1 503")
        assert f"\r\nRetry-After: {RETRY_AFTER_S}\r\n".encode() in received
        idle.pop().close()
        assert wait_for("a slot given back", lambda: health(port), 20.0)["ok"] is True
    finally:
        for sock in idle:
            sock.close()
        server.shutdown()
        server.server_close()


def test_an_unreachable_trainer_is_a_named_failure() -> None:
    (port,) = free_ports(1)
    with pytest.raises(ExternalTrainerFailed, match="ConnectionRefusedError"):
        _fit_with(f"http://127.0.0.1:{port}")


# --- end to end: a daemon whose learner fits through the trainer ---------------------------


class Behind:
    """The trainer behind the daemon's trainer URL: one process, bound before the daemon picks
    its ports (so nothing else can take this one), whose behaviour a test switches."""

    def __init__(self, logs: Path) -> None:
        self.mode_file = logs / "mode"
        self.become("real")
        # Enough job slots that the slow test's sleeping job never makes a later one a 503.
        self.trainer = Trainer("tests.faulty_trainer", logs / "behind.log",
                               "--mode-file", str(self.mode_file), "--sleep-s", "60",
                               "--max-jobs", "8")

    @property
    def url(self) -> str:
        return self.trainer.url

    def become(self, mode: str) -> None:
        """Every job from now on gets ``mode``'s behaviour (see ``tests.faulty_trainer``)."""
        self.mode_file.write_text(mode)


@pytest.fixture(scope="module")
def behind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Behind]:
    switch = Behind(tmp_path_factory.mktemp("behind"))
    try:
        switch.trainer.wait_ready()
        yield switch
    finally:
        switch.trainer.stop()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, behind: Behind) -> Iterator[RunningDaemon]:
    with running_daemon(tmp_path_factory.mktemp("hybrid"), min_outcomes=200,
                        trainer=behind.url, trainer_token=TOKEN, trainer_timeout_s=2.0) as d:
        yield d


def attempts(daemon: RunningDaemon) -> tuple[TrainingRun, ...]:
    """The daemon's training runs, newest first (tests/test_training_runs.py tests the log)."""
    log = SQLiteTrainingRuns(daemon.settings.data_path / SYSTEM_FILE, read_only=True)
    try:
        return log.runs()
    finally:
        log.close()


@pytest.mark.e2e
def test_a_model_fitted_by_the_external_trainer_is_published(
        daemon: RunningDaemon, behind: Behind, ingest: HttpClient) -> None:
    behind.become("real")
    readings = [reading_item(r) for r in SAVANNA.readings()]
    assert send_items(ingest, "readings", readings, batch_size=2000).accepted == len(readings)
    outcomes = SAVANNA.outcome_items()
    assert send_items(ingest, "outcomes", outcomes, batch_size=5000).accepted == len(outcomes)
    record = wait_for("a champion", daemon.champion, 60.0, 0.2)
    ok = [a for a in attempts(daemon) if a.version == record.version]
    assert len(ok) == 1 and ok[0].outcome == "registered" and ok[0].trainer == behind.url
    assert ok[0].trigger.kind == "outcomes"  # the first model
    served = health(behind.trainer.port)
    assert served is not None and served["jobs"] >= 1
    # The learner scored it on its own holdout: the trainer sends no metrics at all.
    assert 0.5 < record.metrics_map["roc_auc"] <= 1.0


@pytest.mark.e2e
def test_a_trainer_past_the_deadline_leaves_the_champion_and_is_recorded(
        daemon: RunningDaemon, behind: Behind) -> None:
    before = daemon.champion()
    assert before is not None, "needs the model of the previous test"
    behind.become("slow")
    request = TrainRequest(uuid.uuid4().hex, force=True)
    result = ask_root(daemon.settings, request, 60.0)
    assert isinstance(result, TrainResult) and result.correlation_id == request.correlation_id
    assert (result.published, result.version) == (False, None)
    assert result.reason == (f"external trainer {behind.url}: no answer within 2 s; "
                             "the champion stays")
    after = daemon.champion()
    assert before is not None and after is not None and after.version == before.version
    mine = [a for a in attempts(daemon) if a.correlation_id == request.correlation_id]
    assert [(a.outcome, a.trainer, a.version) for a in mine] == [("timeout", behind.url, None)]
    assert mine[0].error == "no answer within 2 s" and mine[0].trigger.kind == "request"


@pytest.mark.e2e
def test_the_learner_goes_on_after_a_timeout_and_reports_a_failing_trainer(
        daemon: RunningDaemon, behind: Behind) -> None:
    behind.become("error")
    seen = len(attempts(daemon))
    done = daemon.rml("train", "--force")  # the CLI: it prints the TrainResult's reason
    assert done.returncode == 1, done.stdout
    assert (f"rml: training failed: external trainer {behind.url}: HTTP 500: fit_failed: "
            "RuntimeError: this trainer fails on purpose; the champion stays") in done.stderr
    newest = attempts(daemon)
    assert len(newest) == seen + 1 and newest[0].outcome == "failed"
    learner = daemon.actor("learner")
    assert learner["state"] == "running" and learner["restarts"] == 0


@pytest.mark.e2e
def test_a_hostile_artifact_is_one_failed_attempt_not_a_redelivered_run(
        daemon: RunningDaemon, behind: Behind) -> None:
    behind.become("pipeline_schema")  # skops itself raises TypeError on this one
    seen = len(attempts(daemon))
    before = daemon.champion()
    done = daemon.rml("train", "--force")
    assert done.returncode == 1, done.stdout
    assert "refused its artifact: artifact does not load (TypeError" in done.stderr
    newest = attempts(daemon)
    assert len(newest) == seen + 1 and newest[0].outcome == "failed"  # one fit, recorded
    after = daemon.champion()
    assert before is not None and after is not None and after.version == before.version
    learner = daemon.actor("learner")
    assert learner["state"] == "running" and learner["restarts"] == 0
