"""Epochs of the counts since a rollout began, so that `method: sequential` also catches a
candidate that turns bad late: the counts since the start dilute a late change (hours of good
requests outweigh minutes of bad ones), a fresh epoch's counts do not.

Invariants:
- Pure: samples in, the current epoch's samples out; no I/O, no clock.
- An epoch ends once both variants have `EPOCH_LENGTH` times `min_requests` requests in it; the
  verdict on the full epoch is taken, and the next epoch starts from the counts of that verdict.
  (Shorter epochs hold too little to beat the smaller error rate of later epochs; longer ones
  dilute a change again.) Epoch boundaries depend on request counts only,
  never on errors, latencies or outcomes, so each epoch's bound stays valid at any look.
- Epochs are numbered from 1; epoch k spends `(1 - TOTAL_SHARE) / (k (k + 1))` of the error
  rate (`proxy.analysis.assessment.assess`), which sums to at most the rest over all epochs.
- The first epoch starts at the counts first given (a process that begins deciding mid-rollout
  judges what is new from then on); counts that went down (a new rollout: they start anew)
  start the epochs anew, from 1.
"""

from __future__ import annotations

from typing import Any

from proxy.analysis.verdict import Sample

EPOCH_LENGTH = 16  # times min_requests per variant (measured against 8 and 32: see above)


def full(stable_requests: Any, candidate_requests: Any, min_requests: int) -> Any:
    """Whether an epoch holding these requests per variant is full (it ends after this
    verdict); elementwise on arrays of counts too (`grayscale selftest` steps many runs)."""
    length = EPOCH_LENGTH * min_requests
    return (stable_requests >= length) & (candidate_requests >= length)


class Epochs:
    """The epochs of one route's counts since its rollout began, as the analysis sees them."""

    __slots__ = ("_start", "number")

    def __init__(self) -> None:
        self.number = 1
        self._start: tuple[Sample, Sample] | None = None

    def recent(
        self, stable: Sample, candidate: Sample, min_requests: int
    ) -> tuple[Sample, Sample, int]:
        """Stable's and the candidate's counts in the current epoch, and its number, given their
        counts since the rollout began; an epoch that is full ends after this verdict."""
        start = self._start
        if (
            start is None
            or stable.requests < start[0].requests
            or candidate.requests < start[1].requests
        ):
            start = self._start = (stable, candidate)
            self.number = 1
        recent = (stable - start[0], candidate - start[1], self.number)
        if full(recent[0].requests, recent[1].requests, min_requests):
            self._start = (stable, candidate)
            self.number += 1
        return recent
