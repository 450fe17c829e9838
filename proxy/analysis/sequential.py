"""Always-valid bounds: margins that hold at every look at once.

A fixed-sample test at 95 % is wrong 5 % of the times it is looked at; looked at every few
seconds for a day, chance alone fails a good candidate sooner or later. These margins are
confidence sequences instead: with probability at least 1 - alpha, the true value lies within
them at every sample size simultaneously, so a rule that rolls back when a bound crosses the
threshold rolls back a candidate that is truly within it with probability at most alpha,
however often verdicts are taken and however long the rollout runs.

The boundary is the normal mixture of Robbins (1970), "Statistical methods related to the law of
the iterated logarithm", in the form of Howard, Ramdas, McAuliffe and Sekhon (2021),
"Time-uniform, nonparametric, nonasymptotic confidence sequences", Annals of Statistics 49(2),
eq. (14): for a sum S of independent increments with variance V (intrinsic time) and a mixing
parameter rho, |S| < sqrt((V + rho) * (2 log(1/alpha) + log(1 + V/rho))) at every V with
probability at least 1 - alpha. It is also the boundary of the mixture sequential probability
ratio test of Johari, Koomen, Pekelis and Walsh (2022), "Always valid inference: continuous
monitoring of A/B tests", Operations Research 70(3). Dividing by sqrt(V) gives the factor
`z_always` that replaces the fixed test's z.

Small counts. The normal boundary assumes a mean that is nearly normal; a mean of rare events (1 %
errors, 0.5 % conversions) is skewed, and its upper tail is heavier than the normal one until
many events were seen. `margin` adds Bernstein's correction for increments bounded by `scale`
above (sub-gamma with scale `scale / 3`: Howard et al. 2021, section 3): at the boundary's own
crossing point, z·se becomes z·se + z²·scale/6. It vanishes as counts grow (scale falls as 1/n,
the standard error as 1/sqrt(n)) and keeps the stated rate where events are few.

Invariants
- Pure: numbers in, numbers out; no I/O.
- `z_always` is never below the fixed one-sided z at the same alpha, and grows only with the log
  of the sample size: the price of looking any number of times.
- The mixture is scaled by `n0` observations per variant (the analysis's `min_requests`, where
  verdicts begin): at 95 % the factor is 3.66 at n0, least (3.04) near 8 n0, 3.90 at 10,000 n0.
- A margin is never below z·se, and its correction never below 0.
"""

from __future__ import annotations

import math


def z_always(information: float, alpha: float) -> float:
    """The factor by which a standard error is multiplied for a bound valid at every look.

    `information` is the observed variance of the sum over the mixing parameter (V / rho): the
    sample size over `n0` when every observation weighs the same.
    """
    x = max(information, 1e-12)
    return math.sqrt((1.0 + 1.0 / x) * (2.0 * math.log(1.0 / alpha) + math.log1p(x)))


def margin(z: float, se: float, scale: float) -> float:
    """How far a bound lies from its estimate: `z` standard errors `se`, plus Bernstein's
    correction for increments at most `scale` above their mean (see the module's text)."""
    return z * se + z * z * max(scale, 0.0) / 6.0
