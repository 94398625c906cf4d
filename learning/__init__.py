"""Learning: pure machine-learning code, no actors and no I/O of its own.

    features/   feature types (built-in and plugins'), computing rows, collections
    training/   training sets, pipelines, holdout metrics, candidates, triggers,
                the external trainer
    models/     what a registered model is made of and when it may serve: its
                artifact, its lineage, the publish gate, rollback
    serving/    answering a prediction: compiled models, serving snapshots, the
                in-memory row table, shadow trials
    drift/      training profiles, the population stability index, drift samples
    report/     the registry as one HTML page

Modules that moved keep their old names (``MOVED``): importing ``learning.compiled`` gives
``learning.serving.compiled``.
"""

from runtime.moved import keep_old_names

#: Old module name -> where it lives now.
MOVED: dict[str, str] = {
    "learning._feature_registry": "learning.features.registry",
    "learning.collections": "learning.features.collections",
    "learning.feature_batch": "learning.features.batch",
    "learning.candidate": "learning.training.candidate",
    "learning.external": "learning.training.external",
    "learning.metrics": "learning.training.metrics",
    "learning.pipeline": "learning.training.pipeline",
    "learning.trainer_service": "learning.training.trainer_service",
    "learning.triggers": "learning.training.triggers",
    "learning.artifacts": "learning.models.artifacts",
    "learning.gate": "learning.models.gate",
    "learning.lineage": "learning.models.lineage",
    "learning.rollback": "learning.models.rollback",
    "learning.compiled": "learning.serving.compiled",
    "learning.inference": "learning.serving.inference",
    "learning.row_table": "learning.serving.row_table",
    "learning.shadow": "learning.serving.shadow",
    "learning.drift_sample": "learning.drift.sample",
    "learning._plot": "learning.report.plot",
    # players: they drive the daemon from outside (see ``players/__init__.py``)
    "learning.ceiling": "players.ceiling",
    "learning.regime": "players.regime",
    "learning.simulator": "players.simulator",
    "learning._report_evaluation": "learning.report.evaluation",
    "learning._report_lineage": "learning.report.lineage_row",
}

keep_old_names(MOVED)
