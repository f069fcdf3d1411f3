"""Statistics for comparing methods on the same prompts and seeds: a paired test on per-occupation
bias, and intervals for shares.

Two methods evaluated on the same occupations (and, in this toolkit, the same seeds) are compared
occupation by occupation: the difference of their L1 distances from uniform, averaged. Its p-value
is the sign-flip permutation test (under "no difference", each occupation's difference is as likely
negative as positive), exact over all 2^n sign patterns up to 16 occupations and Monte Carlo
beyond; its interval is a bootstrap over occupations.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

EXACT_UP_TO = 16  # occupations; 2^16 sign patterns


def paired_test(
    baseline: Sequence[float],
    method: Sequence[float],
    *,
    rounds: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """The mean of `method - baseline` over paired occupations, its bootstrap interval, and the
    two-sided sign-flip permutation p-value.

    Example:
        >>> result = paired_test([0.5] * 6, [0.3] * 6)
        >>> round(result["mean_difference"], 3), result["p_value"], result["exact"]
        (-0.2, 0.03125, True)
        >>> paired_test([0.2, 0.4], [0.3, 0.3])["p_value"]
        1.0
    """
    a, b = np.asarray(baseline, dtype=float), np.asarray(method, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired values must be two lists of the same length, got {a.shape} and {b.shape}")
    if len(a) == 0:
        nan = float("nan")
        return {"n": 0, "mean_difference": nan, "ci_low": nan, "ci_high": nan, "p_value": nan, "exact": True}
    differences = b - a
    observed = abs(differences.mean())
    rng = np.random.default_rng(seed)
    exact = len(differences) <= EXACT_UP_TO
    if exact:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(differences))))
    else:
        signs = rng.choice((1.0, -1.0), size=(rounds, len(differences)))
    flipped = np.abs((signs * differences).mean(axis=1))
    # A small tolerance: a pattern as extreme as the observed one counts, whatever the float rounding.
    p_value = float(np.mean(flipped >= observed - 1e-12))
    if not exact:
        p_value = (p_value * rounds + 1) / (rounds + 1)  # the observed pattern is one of them
    resampled = differences[rng.integers(0, len(differences), size=(rounds, len(differences)))].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(resampled, [alpha, 1 - alpha])
    return {
        "n": len(differences),
        "mean_difference": float(differences.mean()),
        "ci_low": float(low),
        "ci_high": float(high),
        "p_value": p_value,
        "exact": exact,
    }


def wilson_interval(successes: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a share (sound at 0 and 1, unlike the normal approximation).

    Example:
        >>> [round(x, 3) for x in wilson_interval(50, 100)]
        [0.404, 0.596]
        >>> wilson_interval(0, 0)
        (nan, nan)
    """
    if total == 0:
        return (float("nan"), float("nan"))
    z = _normal_quantile(1 - (1 - confidence) / 2)
    share = successes / total
    centre = (share + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(share * (1 - share) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return (max(0.0, centre - half), min(1.0, centre + half))


def _normal_quantile(p: float) -> float:
    """The standard normal quantile, by bisection on erf (no scipy needed)."""
    low, high = -10.0, 10.0
    for _ in range(100):
        mid = (low + high) / 2
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < p:
            low = mid
        else:
            high = mid
    return (low + high) / 2
