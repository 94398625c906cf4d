"""How a reader takes a model's status log beside the champion log (``registry``).

Promotion on the Data service is three writes, not a transaction; each status entry
carries a fence, a champion-log number, and a reader that read champion entries 1..M
takes every version's status "as of M" by these rules (the module docstring of
``storage.couchbase.registry`` argues why a reader then sees exactly one champion).
Pure functions over documents: tested beside the registry's own tests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from storage.registry import CHAMPION, RETIRED

__all__ = ["EffectiveStatus", "effective_statuses", "implied_retirement", "replaced_reason",
           "status_entry"]

Doc = dict[str, Any]


def status_entry(status: str, reason: str, at_ms: int, fence: int) -> Doc:
    """A status log entry: status, reason, when, and its fence."""
    return {"s": status, "r": reason, "at": at_ms, "c": fence}


def replaced_reason(version: int, reason: str) -> str:
    """Why a champion was retired by a promotion."""
    return f"replaced by version {version}: {reason}"


@dataclass(frozen=True, slots=True)
class EffectiveStatus:
    """One entry of a version's status as a reader takes it (see the module docstring)."""

    status: str
    reason: str
    at_ms: int
    fence: int
    stored: bool = True  # False: the record's initial status, or a retirement not written


def implied_retirement(champions: Sequence[Doc], n: int) -> EffectiveStatus:
    """The retirement promotion ``n`` (1-based) implies for the champion it replaced."""
    change = champions[n - 1]
    return EffectiveStatus(RETIRED, replaced_reason(int(change["v"]), str(change["r"])),
                   int(change["at"]), n, stored=False)


def effective_statuses(version: int, record: Mapping[str, Any], raw: Sequence[Mapping[str, Any]],
               champions: Sequence[Doc]) -> list[EffectiveStatus]:
    """``version``'s status log as of the champion-log snapshot ``champions``, oldest first."""
    m = len(champions)
    retirements = {int(e["c"]) for e in raw if e["s"] == RETIRED}
    crowned: set[int] = set()
    out: list[EffectiveStatus] = []
    for e in raw:
        fence = int(e["c"])
        if fence > m:
            continue  # written after the snapshot
        if e["s"] == CHAMPION:
            if fence < 1 or champions[fence - 1]["v"] != version or fence in crowned:
                continue  # a promotion that never committed (or a redelivered one)
            crowned.add(fence)
            out.append(EffectiveStatus(CHAMPION, str(e["r"]), int(e["at"]), fence))
            if (fence < m and champions[fence]["p"] == version
                    and fence + 1 not in retirements):
                out.append(implied_retirement(champions, fence + 1))  # its promoter died before (3)
        else:
            out.append(EffectiveStatus(str(e["s"]), str(e["r"]), int(e["at"]), fence))
    if not out:  # the registration has not written entry 1 (yet, or ever)
        out.append(EffectiveStatus(str(record["status"]), str(record["reason"]), int(record["at"]),
                           0, stored=False))
    last = out[-1]
    if last.status == CHAMPION and last.fence != m:
        # Only the version entry M names is champion at M, whatever else was written.
        out.append(implied_retirement(champions, last.fence + 1))
    return out
