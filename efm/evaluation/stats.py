"""How far a success rate measured on n tasks can be trusted: score intervals for one proportion
and for the difference of two, and the verdict they give a claim that one policy beats another.

Wilson's score interval stays inside [0, 1] and keeps its coverage at the rates these
benchmarks measure (0 to 15 successes in 100 tasks), where the normal approximation's interval
collapses to a point at 0 successes. The difference uses Newcombe's hybrid score interval
(method 10 of Newcombe 1998, Statistics in Medicine 17: 873-890), built from the two Wilson
intervals. Both count evaluation noise only (which tasks were drawn and how the sampled policy
acted on them), not how Stage 1 differs from seed to seed. Two policies evaluated on the same
task list (as SFT and Self-Improved are) are treated as independent samples: where their
outcomes correlate across tasks that makes the difference's interval wider than a paired one.
"""

from __future__ import annotations

import math
from typing import Literal

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile: two-sided 95% intervals
Verdict = Literal["supported", "refuted", "inconclusive"]


def successes(rate: float, n: int) -> int:
    """The success count behind a rate measured on n episodes (rates are stored as floats)."""
    k = round(rate * n)
    if not 0 <= k <= n or abs(rate * n - k) > 1e-6:
        raise ValueError(f"success rate {rate} is not a count out of {n} episodes")
    return k


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for k successes in n trials."""
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"{k} successes out of {n} trials")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def difference_interval(k1: int, n1: int, k2: int, n2: int, z: float = Z95) -> tuple[float, float]:
    """Newcombe's hybrid score interval for k1/n1 - k2/n2 (independent samples)."""
    p1, p2 = k1 / n1, k2 / n2
    (l1, u1), (l2, u2) = wilson_interval(k1, n1, z), wilson_interval(k2, n2, z)
    d = p1 - p2
    return d - math.hypot(p1 - l1, u2 - p2), d + math.hypot(u1 - p1, p2 - l2)


def verdict(interval: tuple[float, float]) -> Verdict:
    """'A beats B' from the interval of A - B: supported above 0, refuted below, else neither."""
    lo, hi = interval
    return "supported" if lo > 0 else "refuted" if hi < 0 else "inconclusive"
