"""The sample-ratio check: was each variant assigned the share of the requests, and of the
users, that the ramp gave it? A broken split makes every other check untrustworthy
(`assessment.assess` then makes the verdict an error).

Invariants:
- Pure: samples in, a `Check` out; no I/O, no clock.
- Assignments are counted, not answers: a candidate that fails is still assigned its share, so
  this check never stands in the way of its rollback.
- It fails only on a p-value (times the number of tests made) below `SAMPLE_RATIO_ALPHA`, and
  is inconclusive, never failed, on too little data.
"""

from __future__ import annotations

import math
from typing import Any

from proxy.analysis.verdict import Check, Result, Sample
from proxy.config.model import AnalysisSpec

SAMPLE_RATIO_ALPHA = 0.001  # as GrowthBook and Eppo: a mismatch this unlikely is a fault


def _mismatch(
    served: tuple[int, int], expected: tuple[float, float], design_effect: float, spec: AnalysisSpec
) -> float | None:
    """The p-value that (stable, candidate) were assigned `served` where `expected` were due: a
    chi-squared test (one degree of freedom) divided by the design effect; None on too little."""
    n = served[0] + served[1]
    if n < spec.min_requests or min(expected) < 5.0:
        return None
    chi2 = sum((o - e) ** 2 / e for o, e in zip(served, expected, strict=True))
    return math.erfc(math.sqrt(chi2 / design_effect / 2.0))


def sample_ratio_check(stable: Sample, candidate: Sample, spec: AnalysisSpec) -> Check:
    """Was each variant assigned the share of randomly assigned requests, and of sampled users'
    first requests, that the ramp gave it, integrated over the window as the share moved?

    Assignments are counted, not answers: a candidate that fails, is ejected or falls back to
    stable is still assigned its share, so this check never stands in the way of its rollback.
    It catches what breaks assignment or observation itself (requests the proxy never sees, a
    client that asks again when the candidate answers, a broken hash).

    Two chi-squared tests. Requests: a user's requests all go one way, so their count varies
    more than independent draws would; the statistic is divided by the design effect (Rao and
    Scott 1981), else one heavy user would fail the test. Users: each sampled user's first
    request in the window is one independent draw at the share of its time. The smaller p-value
    times the number of tests made (Bonferroni) is compared with `SAMPLE_RATIO_ALPHA`."""
    requests = _mismatch(
        (stable.assigned, candidate.assigned),
        (stable.expected, candidate.expected),
        candidate.design_effect,
        spec,
    )
    users = _mismatch(
        (stable.users, candidate.users),
        (stable.users_expected, candidate.users_expected),
        1.0,
        spec,
    )
    n = stable.assigned + candidate.assigned

    def seen(sample: Sample) -> dict[str, Any]:
        return {
            **sample.summary(),
            "assigned": sample.assigned,
            "expected": sample.expected,
            "users": sample.users,
            "users_expected": sample.users_expected,
            "design_effect": sample.design_effect,
        }

    report = seen(stable), seen(candidate)
    tested = [p for p in (requests, users) if p is not None]
    if not tested:
        note = (
            f"fewer than {spec.min_requests} randomly assigned requests, or 5 expected of a variant"
        )
        return Check(
            "sample_ratio", Result.INCONCLUSIVE, SAMPLE_RATIO_ALPHA, None, None, *report, note
        )
    p_value = min(1.0, min(tested) * len(tested))
    failed = p_value < SAMPLE_RATIO_ALPHA
    if not failed:
        note = "each variant was assigned its share of the requests"
    elif requests is not None and requests == min(tested):
        note = (
            f"the candidate was assigned {candidate.assigned} of {n} randomly assigned requests "
            f"where {candidate.expected:.1f} were expected: assignment or observation is broken"
        )
    else:
        note = (
            f"the candidate was assigned the first request of {candidate.users} of "
            f"{stable.users + candidate.users} sampled users where {candidate.users_expected:.1f} "
            "were expected: assignment or observation is broken"
        )
    result = Result.FAIL if failed else Result.PASS
    # (a test was made, so n > 0: users are only counted with their requests)
    observed = candidate.assigned / n
    return Check("sample_ratio", result, SAMPLE_RATIO_ALPHA, observed, p_value, *report, note)
