"""Registry operations from the command line: ``rml train``, ``rml models``, ``rml rollback``.

``train`` and ``rollback`` ask the root supervisor, which routes them (``TrainRequest`` to
the learner, whose candidate the publisher answers; ``RollbackRequest`` to the publisher).
``models`` reads the registry and needs no daemon. What a verb prints about a model
comes from the registry, the record of what happened, not only from the answer.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import tomllib
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from config.errors import ConfigError
from config.job import JobConfiguration
from config.settings import Settings
from daemon.models_view import format_metrics, models_view, render_models
from daemon.process import RootClient
from messages.protocol import RollbackRequest, RollbackResult, TrainRequest, TrainResult
from storage.backend import StoreBackend
from storage.errors import StoreError
from storage.registry import ModelRecord

__all__ = ["add_registry_parsers", "ask_with_progress", "load_job_file"]

DEFAULT_TRAIN_TIMEOUT_S = 600.0
_PROGRESS_EVERY_S = 5.0


def load_job_file(path: str | Path) -> JobConfiguration:
    """The ``[job]`` table of a TOML file (or its top level when it has no ``[job]`` table),
    validated; ``ConfigError`` names the offending key."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError("job", f"cannot read {path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError("job", f"{path} is not valid TOML: {exc}") from None
    if "job" in data:
        extra = sorted(key for key in data if key != "job")
        if extra:
            raise ConfigError(extra[0], f"unknown key in {path} (the job goes in its [job] table)")
        data = data["job"]
    return JobConfiguration.from_mapping(data)


def _dead_letter_for(settings: Settings, correlation_id: str) -> str | None:
    """The error of a dead letter recorded for our request (the actor failed on it twice)."""
    backend = StoreBackend(settings, read_only=True)
    try:
        for letter in backend.deadletters().list(50):
            if correlation_id in letter.message:
                return (letter.error.strip().splitlines() or ["failed"])[-1]
    except StoreError:  # no dead-letter store yet (or unreadable now): none recorded
        return None
    finally:
        backend.close()
    return None


def ask_with_progress(settings: Settings, message: Any, timeout_s: float,
                      say: Callable[[float], None], every_s: float = _PROGRESS_EVERY_S) -> Any:
    """Send ``message`` to the root and wait for the answer with its correlation id, calling
    ``say(elapsed_s)`` every ``every_s`` meanwhile. None at the timeout; a ``str`` (the error)
    when the request became a dead letter, so no answer will come."""
    root = RootClient(settings)
    started = time.monotonic()
    root.tell(message)
    while True:
        left = timeout_s - (time.monotonic() - started)
        if left <= 0:
            return None
        answer = root.listen(min(every_s, left))
        if getattr(answer, "correlation_id", None) == message.correlation_id:
            return answer
        if answer is None:
            failed = _dead_letter_for(settings, message.correlation_id)
            if failed is not None:
                return failed
            say(time.monotonic() - started)
        # Anything else is a late answer to someone else's request: keep waiting.


def _record(settings: Settings, version: int) -> ModelRecord | None:
    backend = StoreBackend(settings, read_only=True)
    try:
        return backend.registry().get(version)
    except (KeyError, StoreError):
        return None
    finally:
        backend.close()


def _print_train_result(settings: Settings, result: TrainResult, forced: bool) -> None:
    assert result.version is not None
    record = _record(settings, result.version)
    metrics = dict(result.metrics)
    lineage = json.loads(record.lineage) if record is not None else {}
    job, facts = lineage.get("job", {}), lineage.get("facts", {})
    print(f"candidate: model version {result.version}, {job.get('model_type', '?')} on feature "
          f"collection {record.feature_collection_id if record else '?'}, trained on "
          f"{facts.get('outcomes', '?')} outcomes")
    print(f"holdout metrics: {format_metrics(metrics)}")
    status = record.status if record is not None else ("champion" if result.published else "?")
    if status == "shadow":
        verdict = "not yet: it passed the gate and serves in shadow before its promotion"
    elif result.published:
        verdict = f"yes: version {result.version} is the champion"
    else:
        verdict = f"no ({status})"
    print(f"published: {verdict}")
    if forced:
        print("forced: --force promotes a candidate better than random even when it does not "
              "beat the champion" + (" (it was forced)" if result.published else ""))
    print(f"gate: {result.reason}")


def _cmd_train(settings: Settings, args: argparse.Namespace) -> int:
    """Ask the learner for a run now; wait (with progress) for the publisher's verdict."""
    job = load_job_file(args.job) if args.job else None
    if args.timeout <= 0:
        raise ConfigError("--timeout", f"must be positive, got {args.timeout:g}")
    request = TrainRequest(uuid.uuid4().hex, job, args.force)
    what = f"{job.model_type.value} job from {args.job}" if job else "the configured job"
    print(f"training {what}{' (forced)' if args.force else ''} ...", flush=True)
    answer = ask_with_progress(settings, request, args.timeout,
                               lambda s: print(f"training... {s:.0f} s", flush=True))
    if answer is None:
        print(f"rml: no answer within {args.timeout:g} s; the learner may still be training "
              "(see `rml models` later)", file=sys.stderr)
        return 1
    if isinstance(answer, str):
        print(f"rml: training failed: {answer}", file=sys.stderr)
        return 1
    if not isinstance(answer, TrainResult):
        print(f"rml: unexpected answer {type(answer).__name__}", file=sys.stderr)
        return 1
    if answer.version is None:
        print(f"rml: training failed: {answer.reason}", file=sys.stderr)
        return 1
    _print_train_result(settings, answer, args.force)
    return 0


def _cmd_models(settings: Settings, args: argparse.Namespace) -> int:
    """Every registered version with its lineage (read from the store; no daemon needed)."""
    view = models_view(settings)
    print(json.dumps(view, indent=2) if args.json else render_models(view))
    return 0


def _cmd_rollback(settings: Settings, args: argparse.Namespace) -> int:
    """Make ``VERSION`` the champion again; predictors switch to it at once."""
    if args.version < 1:
        raise ConfigError("VERSION", f"model versions start at 1, got {args.version}")
    request = RollbackRequest(uuid.uuid4().hex, args.version, args.reason)
    answer = ask_with_progress(settings, request, args.timeout,
                               lambda s: print(f"waiting... {s:.0f} s", flush=True))
    if not isinstance(answer, RollbackResult):
        why = answer if isinstance(answer, str) else f"no answer within {args.timeout:g} s"
        print(f"rml: rollback failed: {why}", file=sys.stderr)
        return 1
    if not answer.ok:
        print(f"rml: rollback refused: {answer.reason}", file=sys.stderr)
        return 1
    if answer.previous_version == answer.version:  # it already was: nothing changed
        print(answer.reason)
        return 0
    was = (f" (was version {answer.previous_version})"
           if answer.previous_version is not None else "")
    print(f"rolled back: version {answer.version} is the champion{was}; predictors switch to "
          f"it now\nrecorded: {answer.reason}")
    return 0


def add_registry_parsers(verbs: Any) -> None:
    """Add ``train``, ``models`` and ``rollback`` to the CLI's verbs."""
    train = verbs.add_parser("train", help="train a candidate now and wait for the verdict")
    train.add_argument("--job", metavar="FILE.toml", help="a [job] table (else the configured job)")
    train.add_argument("--force", action="store_true",
                       help="promote it if better than random, even if it does not beat the "
                            "champion")
    train.add_argument("--timeout", type=float, default=DEFAULT_TRAIN_TIMEOUT_S,
                       help=f"seconds to wait (default {DEFAULT_TRAIN_TIMEOUT_S:g})")
    train.set_defaults(run=_cmd_train)
    models = verbs.add_parser("models", help="every model version with its lineage and status")
    models.add_argument("--json", action="store_true")
    models.set_defaults(run=_cmd_models)
    rollback = verbs.add_parser("rollback", help="make an earlier model version the champion")
    rollback.add_argument("version", metavar="VERSION", type=int)
    rollback.add_argument("--reason", default="", help="recorded with the rollback")
    rollback.add_argument("--timeout", type=float, default=30.0)
    rollback.set_defaults(run=_cmd_rollback)
