"""Training: from facts to a fitted, evaluated candidate.

``sets`` builds point-in-time training sets (each outcome joined with its location's
features just before it); ``pipeline`` fits a job's scikit-learn pipeline and measures it on
a holdout (``metrics``); ``candidate`` turns that into a registrable model, compared with
the champion; ``triggers`` says why the learner trains now; ``external`` hands the fit to a
trainer service in another process, and ``trainer_service`` is that service
(``python -m learning.training.trainer_service``). The names ``learning.training`` had as one
module are re-exported here.
"""

from learning.training.sets import TrainingSet, build_training_set

__all__ = ["TrainingSet", "build_training_set"]
