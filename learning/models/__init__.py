"""A registered model: what it is made of, and when it may serve.

``artifacts`` writes and reads a fitted pipeline as skops bytes (no pickle; only the types our
pipelines are made of); ``lineage`` records what a model saw and which code built it;
``gate`` decides whether a candidate may become the champion; ``rollback`` whether a
registered version may be made champion again.
"""
