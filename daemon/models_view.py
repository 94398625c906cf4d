"""What ``rml models`` shows: every registered version with its lineage, status and history.

Read from the registry (read-only), so it works with or without a running daemon.
"""

from __future__ import annotations

import json
from typing import Any

from config.settings import Settings
from daemon.status import utc_text
from storage.backend import StoreBackend
from storage.errors import StoreError, StoreUnavailable
from storage.shadow import ShadowTrial
from storage.training_runs import TrainingRun

__all__ = ["format_metrics", "models_view", "render_models"]


def _lineage(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _shadow(trial: ShadowTrial | None) -> dict[str, Any] | None:
    """The trial's progress (its version is the model's, shown once, on the model)."""
    if trial is None:
        return None
    return {k: v for k, v in trial.to_mapping().items() if k != "version"}


def _runs(backend: StoreBackend, versions: list[int]) -> dict[int, TrainingRun]:
    """The training run that registered each version (those the training runs know)."""
    if not versions:
        return {}
    try:
        log = backend.training_runs()
        found = {v: log.run_of(v) for v in versions}
    except StoreError:  # no learner has created the training runs (file or table) yet
        return {}
    return {v: run for v, run in found.items() if run is not None}


#: What a model shows of the run that registered it (the trigger is in its lineage).
_RUN_KEYS = ("correlation_id", "started_at_ms", "trainer", "seconds")


def _run(run: TrainingRun | None) -> dict[str, Any] | None:
    if run is None:
        return None
    return {k: v for k, v in run.to_mapping().items() if k in _RUN_KEYS}


def models_view(settings: Settings) -> dict[str, Any]:
    """Every version (lineage: facts, feature collection, job, metrics, code version, trigger;
    created time; status, its reason and log; shadow progress; the training run that
    registered it: trainer, seconds) and the champion history."""
    backend = StoreBackend(settings, read_only=True)
    try:
        try:
            registry = backend.registry()
        except StoreUnavailable:  # no registry yet: nothing was ever trained here
            return {"models": [], "champion_history": []}
        trials = {t.version: t for t in backend.shadow_trials().trials()}
        records = registry.versions()
        runs = _runs(backend, [record.version for record in records])
        models = []
        for record in records:
            lineage = _lineage(record.lineage)
            models.append({
                "version": record.version,
                "status": record.status,
                "status_reason": record.status_reason,
                "created_at_ms": record.created_at_ms,
                "feature_collection_id": record.feature_collection_id,
                "metrics": dict(record.metrics),
                "facts": lineage.get("facts", {}),
                "feature_collection": lineage.get("feature_collection", {}),
                "job": lineage.get("job", _lineage(record.job)),
                "code_version": lineage.get("code_version", ""),
                "trigger": lineage.get("trigger"),
                "run": _run(runs.get(record.version)),
                "artifact_sha256": record.artifact_sha256,
                "history": [{"status": change.status, "reason": change.reason,
                             "at_ms": change.at_ms}
                            for change in registry.status_history(record.version)],
                "shadow": _shadow(trials.get(record.version)),
            })
        history = [{"version": c.version, "previous_version": c.previous_version,
                    "reason": c.reason, "at_ms": c.at_ms}
                   for c in registry.champion_history()]
    finally:
        backend.close()
    return {"models": models, "champion_history": history}


def format_metrics(metrics: dict[str, float], skip: tuple[str, ...] = ()) -> str:
    """``name value`` pairs by name; counts (``n_*``) and versions (``*_version``) as integers."""
    def shown(name: str, value: float) -> str:
        whole = float(value).is_integer() and (name.startswith("n_") or name.endswith("_version"))
        return f"{name} {int(value)}" if whole else f"{name} {value:.4f}"
    return ", ".join(shown(k, v) for k, v in sorted(metrics.items()) if k not in skip)




def _facts(facts: dict[str, Any]) -> str:
    if not facts:
        return "facts: unknown"
    digest = str(facts.get("content_hash", ""))[:16]
    return (f"facts: {facts.get('readings', '?')} readings, {facts.get('outcomes', '?')} "
            f"outcomes, {utc_text(facts.get('first_timestamp'))} .. "
            f"{utc_text(facts.get('last_timestamp'))}, sha256 {digest}")


def _job(job: dict[str, Any]) -> str:
    params = ", ".join(f"{k}={v}" for k, v in sorted(dict(job.get("hyperparameters", {})).items()))
    rest = ", ".join(f"{k}={job[k]}" for k in ("test_fraction", "seed", "window_ms") if k in job)
    return f"job: {job.get('model_type', '?')} ({params}); {rest}"


def render_models(view: dict[str, Any]) -> str:
    """A human view of ``models_view``: one block per version, then the champion history."""
    models = view["models"]
    if not models:
        return "no models registered"
    lines = []
    for model in models:
        metrics = model["metrics"]
        auc = metrics.get("roc_auc")
        score = f"holdout ROC AUC {auc:.4f}" if auc is not None else "no ROC AUC"
        collection = model["feature_collection"]
        features = ", ".join(collection.get("features", []))
        lines.append(f"version {model['version']:<4} {model['status']:<9} "
                     f"created {utc_text(model['created_at_ms'])}  {score}")
        lines.append(f"    {model['status']}: {model['status_reason']}")
        lines.append(f"    {_facts(model['facts'])}")
        lines.append(f"    feature collection {model['feature_collection_id']}: {features}")
        lines.append(f"    {_job(model['job'])}")
        if model.get("trigger"):
            run = model.get("run")
            where = (f" (run {run['correlation_id'][:12]}: {run['trainer']}, "
                     f"{run['seconds']:.1f} s)") if run else ""
            lines.append(f"    trained because: {model['trigger'].get('kind')}: "
                         f"{model['trigger'].get('reason', '')}{where}")
        lines.append(f"    metrics: {format_metrics(metrics, skip=('roc_auc',))}")
        lines.append(f"    code {model['code_version']}, artifact sha256 "
                     f"{model['artifact_sha256'][:16]}")
        shadow = model["shadow"]
        if shadow is not None:
            lines.append(f"    shadow: {shadow['served']}/{shadow['target']} requests, "
                         f"{shadow['agreed']} agreed with the champion, {shadow['errors']} "
                         "errors")
    lines.append("champion history:")
    for change in view["champion_history"]:
        was = (f" (replacing version {change['previous_version']})"
               if change["previous_version"] is not None else "")
        lines.append(f"  {utc_text(change['at_ms'])}  version {change['version']}{was}: "
                     f"{change['reason']}")
    return "\n".join(lines)
