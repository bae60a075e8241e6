"""Verdicts: each claim of the paper or the report, the criterion that decides it, and the outcome computed from our
numbers. Each experiment module states its claims (``verdicts(summary)``); nothing is hard-coded to an outcome.

Outcomes:

* ``reproduced`` / ``not reproduced``: the criterion was evaluated on a run at the published scale;
* ``not run at scale``: the run was smaller than the published one (fewer epochs, a subset, a narrower network,
  fewer seeds); the criterion is still evaluated and shown as an indication only (the report also marks
  experiments without results so);
* ``inconclusive``: the check could not have failed (e.g. no weight ever flipped).

Example:
    >>> v = Verdict("a claim", "abs(ours - 0.97) <= 0.02", "0.96", met=True)
    >>> v.outcome(at_scale=True), v.outcome(at_scale=False), v.indication()
    ('reproduced', 'not run at scale', 'criterion met at this scale')
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Verdict"]


@dataclass(frozen=True)
class Verdict:
    claim: str
    criterion: str
    measured: str
    met: bool | None  # None: could not be evaluated
    scale_independent: bool = False  # an exact property: the verdict does not need the published scale

    def outcome(self, at_scale: bool) -> str:
        if self.met is None:
            return "inconclusive"
        if at_scale or self.scale_independent:
            return "reproduced" if self.met else "not reproduced"
        return "not run at scale"

    def indication(self) -> str:
        return {True: "criterion met at this scale", False: "criterion not met at this scale", None: "not evaluable"}[
            self.met
        ]
