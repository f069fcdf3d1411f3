"""Statistics for comparing methods on the same prompts and seeds: a paired test on per-occupation
bias with Holm's correction for many tests, intervals for shares, a regression slope, and a
goodness-of-fit test of shares against known ones.

Two methods evaluated on the same cells (occupations, or language x occupation; in this toolkit on
the same seeds) are compared cell by cell: the difference of their bias, averaged. Its p-value is
the sign-flip permutation test (under "no difference", each cell's difference is as likely negative
as positive), exact over all 2^n sign patterns up to 16 cells and Monte Carlo beyond; its interval
is Student's t over cells, centred on the estimate. A table of many such tests is corrected with
Holm's step-down method, so that the chance of any false "different" in the table stays at alpha.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from pipelines.errors import ConfigError

EXACT_UP_TO = 16  # occupations; 2^16 sign patterns


def paired_test(
    baseline: Sequence[float],
    method: Sequence[float],
    *,
    rounds: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """The mean of `method - baseline` over paired cells, its t interval, and the two-sided sign-flip
    permutation p-value.

    The interval is Student's t over the cells' differences (a percentile bootstrap of so few values
    covered the truth in 84% of simulations at 6 cells); it is centred on the estimate, so never
    leaves it out. With differences of unbiased estimates (the squared distances of
    `spaces/fairness_metrics`) it covers the mean true difference of the cells at least at its level
    (`tests/test_methods.py` simulates it at the methods table's design).

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
    if len(differences) > 1:
        error = differences.std(ddof=1) / math.sqrt(len(differences))
        half = _t_quantile(1 - (1 - confidence) / 2, len(differences) - 1) * error
        low, high = differences.mean() - half, differences.mean() + half
    else:
        low = high = float("nan")
    return {
        "n": len(differences),
        "mean_difference": float(differences.mean()),
        "ci_low": float(low),
        "ci_high": float(high),
        "p_value": p_value,
        "exact": exact,
    }


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Student's t interval of the mean of `values` (nan below two values).

    Example:
        >>> [round(v, 3) for v in mean_interval([1.0, 2.0, 3.0])]
        [-0.484, 4.484]
    """
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return float("nan"), float("nan")
    half = _t_quantile(1 - (1 - confidence) / 2, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return float(values.mean() - half), float(values.mean() + half)


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values: reject where the adjusted p is below alpha, and the chance
    of any false rejection among all the tests stays at alpha. Missing values (None, nan) stay so.

    Example:
        >>> holm([0.01, 0.04, 0.03, None])
        [0.03, 0.06, 0.06, None]
    """
    present = [(p, i) for i, p in enumerate(p_values) if p is not None and not math.isnan(p)]
    adjusted: list[float | None] = [None if p is None else float("nan") for p in p_values]
    running = 0.0
    for rank, (p, index) in enumerate(sorted(present)):
        running = max(running, min(1.0, (len(present) - rank) * p))
        adjusted[index] = running
    return adjusted


def parse_distribution(text: str, labels: Sequence[str], what: str) -> list[float]:
    """`label=share,...` as shares in `labels` order; unnamed labels get 0. One line of error on
    anything that is not a distribution over `labels`.

    Example:
        >>> parse_distribution("female=0.75, male=0.25", ["male", "female"], "target")
        [0.25, 0.75]
    """
    shares = dict.fromkeys(labels, 0.0)
    for item in filter(None, (part.strip() for part in str(text).split(","))):
        label, sep, value = item.partition("=")
        try:
            share = float(value) if sep else math.nan
        except ValueError:
            share = math.nan
        if label.strip() not in shares or not 0 <= share <= 1:
            raise ConfigError(
                f"{what}={text!r}: label=share,... with labels among {', '.join(labels)} and shares in [0, 1]"
            )
        shares[label.strip()] = share
    if abs(sum(shares.values()) - 1) > 1e-6:
        raise ConfigError(f"{what}={text!r}: the shares must sum to 1, not {sum(shares.values()):g}")
    return list(shares.values())


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


def slope(x: Sequence[float], y: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    """The least-squares slope of `y` on `x`, with its t interval: 1 means `y` follows `x` one for
    one, above 1 amplifies it, below 1 attenuates it (a model that learnt half a skew has 0.5, while
    its correlation can still be 0.99).

    Example:
        >>> result = slope([0.1, 0.3, 0.5, 0.9], [0.2, 0.3, 0.4, 0.6])
        >>> round(result["slope"], 3), round(result["intercept"], 3), result["ci_low"] < 0.5 < result["ci_high"]
        (0.5, 0.15, True)
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    nan = float("nan")
    if len(x) < 3 or np.ptp(x) == 0:
        return {"slope": nan, "ci_low": nan, "ci_high": nan, "intercept": nan}
    centred = x - x.mean()
    b = float((centred * (y - y.mean())).sum() / (centred**2).sum())
    intercept = float(y.mean() - b * x.mean())
    residual = y - intercept - b * x
    error = math.sqrt((residual**2).sum() / (len(x) - 2) / (centred**2).sum())
    half = _t_quantile(1 - (1 - confidence) / 2, len(x) - 2) * error
    return {"slope": b, "ci_low": b - half, "ci_high": b + half, "intercept": intercept}


def goodness_of_fit(
    successes: Sequence[int], totals: Sequence[int], shares: Sequence[float], *, rounds: int = 20_000, seed: int = 0
) -> dict[str, float]:
    """Are the observed counts what `shares` would give? One test over all cells at once.

    Two statistics catch two kinds of wrong answer: Pearson's X², the sum over cells of
    (x - n p)² / (n p (1 - p)), sees many cells a little off (a skew learnt by half); the smallest
    cell's own two-sided binomial p-value sees one cell far off, which X² dilutes among the others.
    The test takes the smaller of the two p-values and calibrates that minimum itself, so its size
    stays exact. Every p-value is read not from a curve (the chi-square one is poor near shares of
    0 or 1 and at small n) but from `rounds` draws of every cell from Binomial(n, p): exact for the
    design at hand up to Monte Carlo error, so a model whose true shares are `shares` gets
    p < alpha with probability alpha.

    Example:
        >>> fit = goodness_of_fit([50, 20], [100, 100], [0.5, 0.2])
        >>> fit["statistic"], fit["p_value"] > 0.9
        (0.0, True)
        >>> goodness_of_fit([90, 20], [100, 100], [0.5, 0.2])["p_value"] < 0.001
        True
    """
    from math import lgamma

    x = np.asarray(successes, dtype=np.int64)
    n = np.asarray(totals, dtype=np.int64)
    p = np.asarray(shares, dtype=float)
    # A share of exactly 0 or 1 has no variance: any other count there is impossible under it.
    variance = np.maximum(n * p * (1 - p), 1e-9)
    # Per cell, the two-sided binomial p-value of every possible count: the mass of counts at least
    # as far from n p.
    tails = []
    for size, share in zip(n.tolist(), p.tolist()):
        k = np.arange(size + 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            log = [lgamma(size + 1) - lgamma(j + 1) - lgamma(size - j + 1) for j in k]
            pmf = np.exp(np.asarray(log) + k * np.log(share) + (size - k) * np.log1p(-share))
        pmf = np.nan_to_num(pmf) if 0 < share < 1 else (k == round(share * size)).astype(float)
        distance = np.abs(k - size * share)
        order = np.argsort(-distance, kind="stable")
        farther = np.searchsorted(-distance[order], -distance + 1e-9, side="right")  # counts at least as far
        tails.append(np.cumsum(pmf[order])[farther - 1])
    cells = np.arange(len(n))

    def statistics(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pearson = ((counts - n * p) ** 2 / variance).sum(-1)
        smallest = np.min([tails[c][counts[..., c]] for c in cells], axis=0)
        return pearson, smallest

    draws = np.random.default_rng(seed).binomial(n, p, size=(rounds, len(n)))
    null_sum, null_cell = statistics(draws)
    observed_sum, observed_cell = statistics(x[None])
    # p-values as shares of the draws at least as extreme (large X², small cell p); the observed
    # counts are one more draw under the null.
    by_sum, by_cell = np.sort(null_sum), np.sort(null_cell)

    def p_sum(values: np.ndarray, extra: int) -> np.ndarray:
        return (rounds - np.searchsorted(by_sum, values - 1e-9) + extra) / (rounds + extra)

    def p_cell(values: np.ndarray, extra: int) -> np.ndarray:
        return (np.searchsorted(by_cell, values + 1e-12, side="right") + extra) / (rounds + extra)

    smallest = min(float(p_sum(observed_sum, 1)[0]), float(p_cell(observed_cell, 1)[0]))
    null_min = np.minimum(p_sum(null_sum, 0), p_cell(null_cell, 0))
    return {
        "statistic": float(observed_sum[0]),
        "cells": len(n),
        "p_sum": float(p_sum(observed_sum, 1)[0]),
        "p_cell": float(p_cell(observed_cell, 1)[0]),
        "smallest_cell_p": float(observed_cell[0]),
        "p_value": float(((null_min <= smallest + 1e-12).sum() + 1) / (rounds + 1)),
    }


def _t_quantile(p: float, df: int) -> float:
    """Student's t quantile (exact: at 2 degrees of freedom, three seeds, an expansion is 2% short)."""
    from scipy.stats import t

    return float(t.ppf(p, df))
