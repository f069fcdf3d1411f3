"""Per-batch target classes for distributional alignment (Shen et al., ICLR 2024, "Finetuning
Text-to-Image Diffusion Models for Fairness"; their code: sail-sg/finetune-fair-diffusion).

Each generated image with a face has class probabilities p_i (n x K). The batch should follow a
target distribution q, so each image gets the class optimal transport assigns it:

1. For one count vector b (b_k images of class k, sum n), the exact OT between the n images (weight 1
   each) and the classes (weight b_k), with cost the L1 distance from p_i to the class's one-hot
   vertex e_k (`ot.dist(..., metric="euclidean", p=1)` in their exp-6; 2 * (1 - p_ik) on the
   simplex). With integer weights the optimum is a permutation (Birkhoff), found exactly by
   `scipy.optimize.linear_sum_assignment` on the cost with class k's column repeated b_k times.
2. The counts of a batch drawn from q are themselves random, b ~ Multinomial(n, q): the plan P (n x K)
   averages the assignments over count vectors, weighted by their probability. As the paper does,
   count vectors are enumerated in decreasing probability until they cover 95% of the mass (exp-6,
   renormalised); where there are more than `max_enumerated` of them (K=7 races at n=32: 2.8 M), a
   seeded Monte Carlo sample of count vectors stands in.
3. target = argmax P, uncertainty = 1 - max P; an image whose uncertainty is above the threshold
   (paper: 0.2) gets target -1 and no fairness loss.

For K=2 this is the paper's rank rule (exp-1): rank the images by p[:, 1]; the top m ~ Binomial(n, q1)
get class 1, so the image of rank r (0-based, ascending) gets class 1 with probability
`binom.cdf(r, n, 1 - q1)`. Their exp-1 uses that formula without the 95% truncation, and two
differences hold only at their q1 = 0.5: `rank >= n * target_ratio` gives class 1 to a share
1 - target_ratio, and the uncertainty of target 0 uses `binom.cdf(r, n, target_ratio)`.

Two choices of ours: count vectors of equal probability (a symmetric q has many) are kept or
dropped together at the 95% cut, so the plan does not depend on enumeration order and relabelling
the classes relabels the plan; classes with q_k = 0 take no part in the enumeration (their count is
always 0), so a degenerate target does not inflate the number of count vectors.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from pipelines.reporting.statistics import parse_distribution

UNCERTAINTY_THRESHOLD = 0.2  # the paper's --uncertainty_threshold
COVERAGE = 0.95  # the share of count vectors' probability mass the paper enumerates (exp-6)
MAX_ENUMERATED = 5000  # above this many count vectors, Monte Carlo
MONTE_CARLO_SAMPLES = 100
SUM_TOLERANCE = 1e-6
PROBS_TOLERANCE = 1e-3  # rows of float16/float32 softmaxes sum to 1 only this closely


# --- the target distribution ---------------------------------------------------------------------


def parse_target(text: str, labels: list[str], field: str = "target") -> np.ndarray:
    """The target distribution in `labels` order, from "female=0.7,male=0.3" (empty: uniform), in the
    syntax `evaluate_bias --targets` reads (`reporting.statistics.parse_distribution`: an unnamed label
    gets 0; a one-line `ConfigError` names `field` and what is allowed).

    Example:
        >>> parse_target("female=0.7, male=0.3", ["male", "female"]).tolist()
        [0.3, 0.7]
        >>> parse_target("", ["a", "b", "c", "d"]).tolist()
        [0.25, 0.25, 0.25, 0.25]
    """
    if not labels:
        raise ValueError("parse_target needs at least one label")
    if not text.strip():
        return np.full(len(labels), 1.0 / len(labels))
    return np.array(parse_distribution(text, labels, field))


# --- one count vector: exact OT ------------------------------------------------------------------


def transport_cost(probs: np.ndarray) -> np.ndarray:
    """The L1 distance from each image's probabilities to each class's one-hot vertex (n x K)."""
    vertices = np.eye(probs.shape[1])
    return np.abs(probs[:, None, :] - vertices[None, :, :]).sum(-1)


def optimal_assignment(probs: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The class of each image (n,) under the exact OT plan to classes with these `counts` (K,).

    Ties (images with equal probabilities) are broken by the solver, so only the total cost is unique.
    """
    probs, counts = np.asarray(probs, dtype=np.float64), np.asarray(counts)
    if counts.shape != (probs.shape[1],) or np.any(counts < 0) or counts.sum() != len(probs):
        raise ValueError(f"counts {counts.tolist()}: need {probs.shape[1]} counts >= 0 summing to {len(probs)}")
    return _assign(transport_cost(probs), counts)


def _assign(cost: np.ndarray, counts: np.ndarray) -> np.ndarray:
    from scipy.optimize import linear_sum_assignment

    columns = np.repeat(np.arange(len(counts)), counts)  # one column per slot of each class
    rows, slots = linear_sum_assignment(cost[:, columns])
    classes = np.empty(len(cost), dtype=np.int64)
    classes[rows] = columns[slots]
    return classes


# --- counts drawn from the target ----------------------------------------------------------------


def count_vectors(n: int, support: int) -> np.ndarray:
    """Every way of splitting n images among `support` classes (stars and bars), one per row."""
    if support == 1:
        return np.array([[n]])
    bars = np.array(list(itertools.combinations(range(n + support - 1), support - 1))).reshape(-1, support - 1)
    edges = np.concatenate([np.full((len(bars), 1), -1), bars, np.full((len(bars), 1), n + support - 1)], axis=1)
    return np.diff(edges, axis=1) - 1


def multinomial_pmf(counts: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Multinomial(n, target) probability of each row of `counts` (target > 0 on every column)."""
    from scipy.special import gammaln

    n = counts[0].sum()
    log_pmf = gammaln(n + 1) - gammaln(counts + 1).sum(1) + (counts * np.log(target)).sum(1)
    return np.exp(log_pmf)


def covering_counts(n: int, target: np.ndarray, coverage: float) -> tuple[np.ndarray, np.ndarray]:
    """The most probable count vectors covering `coverage` of the mass, and their probabilities.

    Vectors as probable as the last one kept are kept too, so that the cut does not depend on the
    order in which equally likely vectors happen to be listed."""
    counts = count_vectors(n, len(target))
    weights = multinomial_pmf(counts, target)
    order = np.argsort(-weights, kind="stable")
    counts, weights = counts[order], weights[order]
    if coverage >= 1.0:
        return counts, weights
    covered = np.cumsum(weights) / weights.sum()
    last = min(int(np.searchsorted(covered, coverage, side="right")), len(weights) - 1)
    keep = weights >= weights[last] * (1 - 1e-9)
    return counts[keep], weights[keep]


def sampled_counts(
    n: int, target: np.ndarray, samples: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """`samples` count vectors drawn from Multinomial(n, target), the repeated ones merged."""
    counts, frequency = np.unique(rng.multinomial(n, target, size=samples), axis=0, return_counts=True)
    return counts, frequency.astype(np.float64)


# --- the averaged plan and the targets -----------------------------------------------------------


def assign_targets(
    probs: np.ndarray,
    target: np.ndarray,
    threshold: float = UNCERTAINTY_THRESHOLD,
    rng: np.random.Generator | None = None,
    max_enumerated: int = MAX_ENUMERATED,
    coverage: float = COVERAGE,
    samples: int = MONTE_CARLO_SAMPLES,
) -> tuple[np.ndarray, np.ndarray]:
    """Target classes for a batch (n,), -1 where uncertain, and the averaged plan P (n x K).

    Args:
        probs (`np.ndarray`, n x K): class probabilities of the images with a face; rows sum to 1.
        target (`np.ndarray`, K): the target distribution (`parse_target`).
        threshold (`float`): images with uncertainty 1 - max P above it get target -1.
        rng (`np.random.Generator`): draws the count vectors when there are more than
            `max_enumerated` of them; needed only then.
        coverage (`float`): the share of the count vectors' probability that is enumerated (1.0: all).
        samples (`int`): the count vectors drawn for Monte Carlo.
    """
    probs, target = _checked(probs, target)
    n, k = probs.shape
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros((0, k))
    support = np.flatnonzero(target > 0)
    if math.comb(n + len(support) - 1, len(support) - 1) <= max_enumerated:
        counts, weights = covering_counts(n, target[support], coverage)
    elif rng is None:
        raise ValueError(f"{n} images in {len(support)} classes: too many count vectors to list; pass rng")
    else:
        counts, weights = sampled_counts(n, target[support], samples, rng)
    cost = transport_cost(probs)[:, support]
    plan = np.zeros((n, k))
    for count, weight in zip(counts, weights):
        plan[np.arange(n), support[_assign(cost, count)]] += weight
    plan /= weights.sum()
    targets = plan.argmax(1)
    targets[1 - plan.max(1) > threshold] = -1
    return targets, plan


def _checked(probs: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs, target = np.asarray(probs, dtype=np.float64), np.asarray(target, dtype=np.float64)
    if target.ndim != 1 or np.any(target < 0) or abs(target.sum() - 1) > SUM_TOLERANCE:
        raise ValueError(f"target {target.tolist()}: need shares >= 0 summing to 1")
    if probs.ndim != 2 or probs.shape[1] != len(target):
        raise ValueError(f"probs of shape {probs.shape}: need (n, {len(target)}), one column per class of the target")
    if len(probs) and (np.any(probs < 0) or np.any(np.abs(probs.sum(1) - 1) > PROBS_TOLERANCE)):
        raise ValueError("probs: need rows of probabilities >= 0 summing to 1 (softmax outputs)")
    return probs, target
