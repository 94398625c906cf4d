"""Fitting through an external trainer: the job on the wire, the call with a deadline, and the
answer checked against the artifact allow-list.

Why the cut is here: the learner keeps everything that decides what a model is worth (the
training set, the split, the holdout, the champion's score); a trainer only fits. It gets the
training rows, never the holdout, and its answer is loaded only through
``learning.models.artifacts.load_model``. So a slow, broken or hostile trainer can waste a run
(``ExternalTrainerTimeout``, ``ExternalTrainerFailed``) but can neither run code in the
learner nor grade its own model.

The request (``POST {url}/train``, ``Authorization: Bearer <token>``,
``Content-Type: application/msgpack``) is one msgpack map::

    {"job": JobConfiguration.to_mapping(), "feature_names": [str, ...],
     "shape": [rows, columns], "X": <float64 little-endian bytes, row-major>,
     "y": <one byte per row, 0 or 1>}

The answer is ``200`` with the skops artifact as ``application/octet-stream``, or an error
status with ``{"error": "..."}`` (JSON).
"""

from __future__ import annotations

import http.client
import json
import math
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import msgpack
import numpy as np
from sklearn.pipeline import Pipeline

from config.errors import ConfigError
from config.job import JobConfiguration
from learning.models.artifacts import UntrustedArtifact, load_model
from learning.training.pipeline import Fit, fit_locally

__all__ = [
    "ARTIFACT_TYPE",
    "JOB_TYPE",
    "MAX_ARTIFACT_BYTES",
    "BadTrainingJob",
    "ExternalTrainer",
    "ExternalTrainerError",
    "ExternalTrainerFailed",
    "ExternalTrainerTimeout",
    "TrainingJob",
    "call_trainer",
    "decode_job",
    "encode_job",
    "fit_step",
    "verify_artifact",
]

JOB_TYPE = "application/msgpack"
ARTIFACT_TYPE = "application/octet-stream"
#: A larger answer is refused unread (a random forest of 500 deep trees is ~100 MB).
MAX_ARTIFACT_BYTES = 256 * 1024 * 1024
_KEYS = frozenset({"job", "feature_names", "shape", "X", "y"})
_CHUNK = 1 << 16


class BadTrainingJob(ValueError):
    """A training request that is not a valid job (the trainer answers 400 with this)."""


class ExternalTrainerError(RuntimeError):
    """The external trainer gave no usable model; ``trainer`` is its URL."""

    def __init__(self, trainer: str, reason: str, seconds: float) -> None:
        super().__init__(f"external trainer {trainer}: {reason}")
        self.trainer = trainer
        self.reason = reason
        self.seconds = seconds


class ExternalTrainerTimeout(ExternalTrainerError):
    """No complete answer within the deadline."""


class ExternalTrainerFailed(ExternalTrainerError):
    """Unreachable, refused, an error status, or an artifact that is not an acceptable model."""


@dataclass(frozen=True, slots=True, eq=False)
class TrainingJob:
    """What a trainer receives: the job and the training rows (read-only arrays)."""

    job: JobConfiguration
    feature_names: tuple[str, ...]
    X: np.ndarray  # float64, (rows, len(feature_names)); NaN where a window was empty
    y: np.ndarray  # bool, (rows,)


def encode_job(job: JobConfiguration, feature_names: tuple[str, ...], X: np.ndarray,
               y: np.ndarray) -> bytes:
    """The request body for ``job`` fitted on ``X``, ``y``."""
    matrix = np.ascontiguousarray(X, dtype="<f8")
    labels = np.asarray(y, dtype=bool)
    if matrix.ndim != 2 or matrix.shape != (labels.shape[0], len(feature_names)):
        raise ValueError(f"X of shape {matrix.shape} does not match {labels.shape[0]} labels "
                         f"and {len(feature_names)} features")
    return msgpack.packb({
        "job": job.to_mapping(),
        "feature_names": list(feature_names),
        "shape": list(matrix.shape),
        "X": matrix.tobytes(),
        "y": labels.astype(np.uint8).tobytes(),
    }, use_bin_type=True)


def decode_job(body: bytes) -> TrainingJob:
    """A request body back into a ``TrainingJob``; ``BadTrainingJob`` says what is wrong."""
    try:
        data = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except (ValueError, msgpack.UnpackException) as exc:
        raise BadTrainingJob(f"not msgpack: {exc}") from None
    if not isinstance(data, dict):
        raise BadTrainingJob("expected a map")
    if data.keys() != _KEYS:
        missing, extra = _KEYS - data.keys(), data.keys() - _KEYS
        raise BadTrainingJob(f"missing {sorted(missing)}, unknown {sorted(map(str, extra))}")
    try:
        job = JobConfiguration.from_mapping(data["job"])
    except ConfigError as exc:
        raise BadTrainingJob(str(exc)) from None
    names, shape, x_bytes, y_bytes = data["feature_names"], data["shape"], data["X"], data["y"]
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)
            and len(set(names)) == len(names)):
        raise BadTrainingJob("feature_names: expected distinct strings")
    if not (isinstance(shape, list) and len(shape) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in shape)
            and shape[0] >= 2 and shape[1] == len(names)):
        raise BadTrainingJob(f"shape: expected [rows >= 2, {len(names)}], got {shape!r}")
    rows, columns = shape
    if not isinstance(x_bytes, bytes) or len(x_bytes) != rows * columns * 8:
        raise BadTrainingJob(f"X: expected {rows * columns * 8} bytes of float64")
    if not isinstance(y_bytes, bytes) or len(y_bytes) != rows:
        raise BadTrainingJob(f"y: expected {rows} bytes")
    X = np.frombuffer(x_bytes, dtype="<f8").reshape(rows, columns).astype(np.float64)
    codes = np.frombuffer(y_bytes, dtype=np.uint8)
    if np.isinf(X).any():
        raise BadTrainingJob("X: infinite values")
    if (codes > 1).any():
        raise BadTrainingJob("y: expected 0 or 1")
    y = codes.astype(bool)
    for array in (X, y):
        array.setflags(write=False)
    return TrainingJob(job, tuple(names), X, y)


def verify_artifact(data: bytes, n_features: int) -> Pipeline:
    """The pipeline in a trainer's answer, loaded through the allow-list and checked to be a
    binary classifier over ``n_features`` columns; ``UntrustedArtifact`` otherwise (whatever
    the check itself raised on a hostile object)."""
    pipeline = load_model(data)
    try:
        _check_classifier(pipeline, n_features)
    except UntrustedArtifact:
        raise
    except Exception as exc:  # a model that cannot answer is no model
        raise UntrustedArtifact(f"the model is not a usable classifier ({type(exc).__name__}: "
                                f"{exc})") from exc
    return pipeline


def _check_classifier(pipeline: Pipeline, n_features: int) -> None:
    """Raise unless ``pipeline`` classifies ``n_features`` columns into False/True."""
    classes = getattr(pipeline, "classes_", None)
    if classes is None or sorted(bool(c) for c in classes) != [False, True]:
        raise UntrustedArtifact(f"the model's classes are {classes!r}, not [False, True]")
    if getattr(pipeline, "n_features_in_", n_features) != n_features:
        raise UntrustedArtifact(f"the model takes {pipeline.n_features_in_} features, "
                                f"not {n_features}")
    pipeline.predict_proba(np.zeros((1, n_features)))


def call_trainer(url: str, token: str, body: bytes, timeout_s: float) -> bytes:
    """POST ``body`` to ``{url}/train`` and return the artifact bytes, all within
    ``timeout_s`` (connect, send and every read get only the time that is left).

    ``ExternalTrainerTimeout`` past the deadline; ``ExternalTrainerFailed`` when the
    trainer is unreachable or answers anything but 200 with an artifact.
    """
    began = time.monotonic()
    deadline = began + timeout_s

    def left() -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        return remaining

    parts = urlsplit(url)
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = kind(parts.hostname or "", parts.port, timeout=left())
    try:
        conn.request("POST", parts.path.rstrip("/") + "/train", body=body, headers={
            "Authorization": f"Bearer {token}", "Content-Type": JOB_TYPE,
            "Accept": ARTIFACT_TYPE})
        # Kept: after a "Connection: close" answer http.client hands the socket to the
        # response and forgets it, but every read below must still get only the time left.
        sock = conn.sock
        assert sock is not None
        sock.settimeout(left())
        response = conn.getresponse()
        length = int(response.getheader("Content-Length") or -1)
        if length > MAX_ARTIFACT_BYTES:
            raise _Refused(f"answer of {length} bytes is over {MAX_ARTIFACT_BYTES}")
        chunks: list[bytes] = []
        size = 0
        while True:
            sock.settimeout(left())
            chunk = response.read1(_CHUNK)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_ARTIFACT_BYTES:
                raise _Refused(f"answer over {MAX_ARTIFACT_BYTES} bytes")
        data = b"".join(chunks)
        if response.status != 200:
            raise _Refused(f"HTTP {response.status}: {_error_text(data)}")
        return data
    except TimeoutError:  # socket.timeout too
        raise ExternalTrainerTimeout(url, f"no answer within {timeout_s:g} s",
                                     time.monotonic() - began) from None
    except _Refused as exc:
        raise ExternalTrainerFailed(url, str(exc), time.monotonic() - began) from None
    except Exception as exc:  # OSError, HTTPException, a bad header: any broken exchange
        raise ExternalTrainerFailed(url, f"unreachable or broken answer ({type(exc).__name__}: "
                                         f"{exc})", time.monotonic() - began) from None
    finally:
        conn.close()


class _Refused(Exception):
    """An answer that is not an artifact (inside ``call_trainer`` only)."""


def _error_text(data: bytes) -> str:
    try:
        answer = json.loads(data)
        if isinstance(answer, dict) and isinstance(answer.get("error"), str):
            return str(answer["error"])[:500]
    except ValueError:
        pass
    return data[:200].decode("utf-8", "replace") or "(empty body)"


@dataclass(frozen=True, slots=True)
class ExternalTrainer:
    """A fit step (``learning.training.pipeline.Fit``) that ships the rows to the trainer at ``url``
    and waits at most ``timeout_s``; raises ``ExternalTrainerTimeout`` or
    ``ExternalTrainerFailed`` (an untrusted artifact included) instead of a model, and never
    any other exception for anything the trainer sent (so the learner's handler does not
    fail and have Thespian deliver the whole run again)."""

    url: str
    token: str
    timeout_s: float

    def __call__(self, X: np.ndarray, y: np.ndarray, feature_names: tuple[str, ...],
                 job: JobConfiguration) -> Pipeline:
        """The fitted pipeline the trainer sent, verified."""
        if not (math.isfinite(self.timeout_s) and self.timeout_s > 0):
            raise ValueError(f"timeout_s must be a positive number, got {self.timeout_s!r}")
        began = time.monotonic()
        data = call_trainer(self.url, self.token, encode_job(job, feature_names, X, y),
                            self.timeout_s)
        try:
            return verify_artifact(data, len(feature_names))
        except UntrustedArtifact as exc:
            raise ExternalTrainerFailed(self.url, f"refused its artifact: {exc}",
                                        time.monotonic() - began) from exc
        except Exception as exc:  # belt and braces: verify_artifact should name every failure
            raise ExternalTrainerFailed(self.url, f"refused its artifact ({type(exc).__name__}: "
                                                  f"{exc})", time.monotonic() - began) from exc


def fit_step(trainer: str, token: str, timeout_s: float) -> Fit:
    """The fit step ``[learning] trainer`` names: ``"local"``, or an external trainer's URL."""
    if trainer == "local":
        return fit_locally
    return ExternalTrainer(trainer, token, timeout_s)
