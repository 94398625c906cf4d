"""May a registered version be made champion again (``rml rollback``)? Pure.

Any registered version may, whatever its status (retired, rejected, in shadow), as long as
it can be served right now: its artifact verifies (sha256, then the skops allow-list) and
its feature collection has no invalid feature. A predictor can then switch to it at once.
"""

from __future__ import annotations

__all__ = ["rollback_reason", "rollback_refusal"]


def rollback_refusal(version: int, status: str | None, feature_collection_id: int | None,
                     usable_collections: frozenset[int], artifact_error: str | None) -> str | None:
    """Why ``version`` cannot be made champion (a named error first), or None if it can.

    ``status`` None means no such version; ``artifact_error`` says why its artifact failed
    to verify or load (None: it loaded)."""
    if status is None:
        return f"unknown_version: there is no model version {version}"
    if artifact_error is not None:
        return (f"artifact_invalid: the artifact of model version {version} cannot be served "
                f"({artifact_error})")
    if feature_collection_id not in usable_collections:
        return (f"collection_unusable: model version {version} is on feature collection "
                f"{feature_collection_id}, which has an invalid feature")
    return None


def rollback_reason(operator_reason: str) -> str:
    """The reason recorded in the champion and status logs for an operator's rollback."""
    given = " ".join(operator_reason.split())
    return f"rollback by operator: {given}" if given else "rollback by operator"
