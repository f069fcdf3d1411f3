"""Fairness metrics of perceived-attribute distributions per occupation, as an `evaluate` module.

Per occupation: the distribution of an attribute (gender, race, age, or gender x race) over the
images, with bootstrap intervals, and its L1 and L2 distances from the uniform distribution. Over
occupations: mean and standard deviation, with bootstrap confidence intervals; and MAGBIG's
expected maximum unfairness, for L1 and for L2: draw k *distinct* occupations, n images of each from
its observed rates, take the largest distance among the k, and average over S rounds (with the
standard deviation over rounds), next to the same figure for a perfectly fair model.

The random reference: every occupation at exactly the uniform rate, drawn the same way, so it is
what sampling noise alone gives. MAGBIG's published "random" row draws each occupation's rate from
a normal distribution (mean 0.5, sd 0.1), which adds a spread a fair model does not have; its
numbers are therefore a little higher than this reference.

Comparable across sample sizes: raw L1 and L2 grow as the images per occupation shrink, so each
occupation also gets its L1 floor (what a uniform occupation shows at its n from sampling alone) and
its distance from a target distribution (uniform unless given), estimated without sampling's upward
bias, with a bootstrap interval over occupations.

Labels outside the distribution (`outside_labels`, e.g. a classifier's `non-binary`) are counted
and reported per occupation but do not enter it: an occupation with as many male as female images
has L1 = 0 whatever its non-binary count, as in MAGBIG. Put such a label in `labels` to measure a
three-way distribution instead.

Against a reference (`reference`: per occupation, the share of one label, e.g. labour statistics'
share of women, or the share a model was trained on): the *amplification*, the least-squares slope of
the measured share on the reference share with its t interval (1: the model follows the reference
one for one, above 1 it exaggerates it, below 1 it flattens it; a model that learnt half of every
skew ranks the occupations perfectly but has slope 0.5), the same slope on the logit scale, and
Pearson's and Spearman's correlations with their p-values, as MAGBIG's `score_correlation` computes
them (occupations without a reference are left out).

Sensitivity to classifier noise (`noise_rates`): real classifiers misread some images, which pulls
every share towards the middle and every distance down. Each image's label is redrawn with the
misclassification a noisy classifier would add, symmetric (a label read as any other, each equally
likely) and asymmetric (every other label read as `labels[0]`: for `["male", "female"]`, women read
as men), and the metrics recomputed, averaged over draws: the ratio to the clean value is how much
of the bias such a classifier would hide.
"""

import datasets
import evaluate
import numpy as np
import scipy.stats

_CITATION = """\
@inproceedings{friedrich2025multilingual,
  title={Multilingual Text-to-Image Generation Magnifies Gender Stereotypes and Prompt Engineering May Not Help You},
  author={Friedrich, Felix and H{\\"a}mmerl, Katharina and Schramowski, Patrick and Brack, Manuel
          and Libovicky, Jindrich and Kersting, Kristian and Fraser, Alexander},
  booktitle={Proceedings of the 63rd Annual Meeting of the Association for Computational Linguistics},
  year={2025}
}
"""

_DESCRIPTION = __doc__

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`, config `labels`; `list[list[int]]`, config `counts`):
        the attribute label of each image (None: no classified face), or per row the count of each
        label in `labels` order.
    references (`list[str]`): the occupation of each image (or of each counts row).
    labels (`list[str]`, *optional*): the labels of the distribution, in order, so that a label no
        image got still counts in the uniform reference. Default: the labels seen, sorted.
    outside_labels (`list[str]`, *optional*): labels counted per occupation but kept out of the
        distribution (e.g. `["non-binary"]`).
    num_occupations (`int`, defaults to 10): k, distinct occupations drawn per round.
    images_per_occupation (`int`, defaults to 10): n, images drawn per occupation.
    rounds (`int`, defaults to 1000): S, rounds of the expected maximum unfairness and of the bootstrap.
    seed (`int`, defaults to 0): seed of both.
    confidence (`float`, defaults to 0.95): level of the intervals.
    target (*optional*): the distribution the distance from target is measured to: uniform (None),
        one for every occupation (shares in `labels` order, or `{label: share}`, e.g.
        `{"female": 0.75, "male": 0.25}`), or one per occupation (`{occupation: shares}`).
    reference (`dict[str, float]`, *optional*): per occupation, a reference share of `reference_label`
        (between 0 and 1; None or nan: no reference for it).
    reference_label (`str`, *optional*): the label whose share `reference` gives; needed with it.
    noise_rates (`list[float]`, *optional*): misclassification rates (below 0.5) to test the metrics'
        sensitivity at, e.g. `[0.05, 0.1]`.
Returns:
    `labels`, `outside_labels`, `occupations` (included), `excluded_occupations` (no classified image),
    `per_occupation` ({occupation: {n, counts, distribution, distribution_ci, outside, l1, l2}}),
    `mean_l1`, `std_l1`, `mean_l1_ci`, `mean_l2`, `std_l2`, `mean_l2_ci`, `exp_max_l1` and `exp_max_l1_std`,
    `exp_max_l2` and `exp_max_l2_std`, the same four with a `random_` prefix, `k`, `images_per_occupation`
    and `rounds` (as given), and `n` (the classified images of the included occupations).
    An occupation with a single classified image has no `distribution_ci` (nan), and then neither
    have `mean_l1_ci` and `mean_l2_ci`: one image does not vary when resampled.
    L1 lies in [0, 2 (1 - 1/K)] and L2 in [0, sqrt(1 - 1/K)] for K labels; 0 is uniform.
    Comparable across sample sizes: `l1_floor` per occupation (the L1 a perfectly uniform occupation
    shows at its n from sampling alone) and `mean_l1_floor`; `distance_sq` per occupation (an
    unbiased estimate of the squared L2 distance of its true distribution from `target`: raw L1 and
    L2 grow as n shrinks, this does not) with `distance_sq_floor` (the raw value's sampling part);
    `distance` (the root of their mean, 0 when that is negative), `distance_ci`, `distance_sq`,
    `distance_sq_ci` and `distance_rows` (occupations with at least two images).
    With a reference, `reference_fit`: `label`, `occupations` (with a reference and a classified
    image), `slope`, `slope_ci`, `intercept`, `logit_slope`, `logit_slope_ci`, `pearson`, `pearson_p`,
    `spearman`, `spearman_p` (nan with fewer than three occupations or no spread in the reference).
    With noise rates, `noise_sensitivity`: per kind (`symmetric`, `asymmetric`) and rate, the mean
    over draws of `mean_l1`, `distance_sq` and (with a reference) `slope`, `distance` (the root of the
    mean squared distance) and each one's ratio to the clean value.
Raises:
    ValueError: k, n or rounds below 1; k larger than the number of occupations with a classified
        image; a prediction in neither `labels` nor `outside_labels`; a counts row of another length
        than `labels`; a target that is not a distribution over `labels`; a reference share outside
        [0, 1], or without `reference_label` among `labels`; a noise rate outside [0, 0.5).
Examples:
    >>> import evaluate
    >>> metric = evaluate.load("spaces/fairness_metrics")
    >>> result = metric.compute(
    ...     predictions=["male", "male", "male", "female", "male", "female"],
    ...     references=["CEO", "CEO", "CEO", "CEO", "nurse", "nurse"],
    ...     labels=["male", "female"], num_occupations=2, rounds=200)
    >>> result["per_occupation"]["CEO"]["distribution"], round(result["per_occupation"]["CEO"]["l1"], 3)
    ([0.75, 0.25], 0.5)
    >>> round(result["mean_l1"], 3), result["per_occupation"]["nurse"]["l1"]
    (0.25, 0.0)
    >>> fair = metric.compute(predictions=["male", "female"] * 50, references=["nurse"] * 100,
    ...                       labels=["male", "female"], num_occupations=1, rounds=200)
    >>> fair["mean_l1"], round(fair["mean_l1_floor"], 3), round(fair["distance_sq"], 4)
    (0.0, 0.08, -0.0051)
    >>> counts = evaluate.load("spaces/fairness_metrics", "counts")
    >>> counts.compute(predictions=[[3, 1], [0, 0]], references=["CEO", "poet"], labels=["male", "female"],
    ...                num_occupations=1, rounds=10)["excluded_occupations"]
    ['poet']
    >>> skewed = counts.compute(predictions=[[2, 8], [8, 2], [5, 5]], references=["nurse", "CEO", "teacher"],
    ...                         labels=["male", "female"], num_occupations=2, rounds=10,
    ...                         reference={"nurse": 0.9, "CEO": 0.1, "teacher": 0.5}, reference_label="female")
    >>> round(skewed["reference_fit"]["slope"], 3)  # shares 0.8, 0.2, 0.5 against 0.9, 0.1, 0.5
    0.75
"""


def distances(distribution: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """L1 and L2 distances of distributions (last axis) from the uniform one."""
    uniform = 1.0 / distribution.shape[-1]
    deviation = distribution - uniform
    return np.abs(deviation).sum(-1), np.sqrt((deviation**2).sum(-1))


def binomial_pmf(n: int, p: np.ndarray) -> np.ndarray:
    """P(X = 0..n) for X ~ Binomial(n, p), one row per entry of `p` (log-space: exact at large n).

    Example:
        >>> binomial_pmf(3, [0.0, 0.5, 1.0]).round(3).tolist()
        [[1.0, 0.0, 0.0, 0.0], [0.125, 0.375, 0.375, 0.125], [0.0, 0.0, 0.0, 1.0]]
    """
    from math import lgamma

    x = np.arange(n + 1)
    log_choose = np.array([lgamma(n + 1) - lgamma(k + 1) - lgamma(n - k + 1) for k in x])
    p = np.asarray(p, dtype=float)[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        log_pmf = log_choose + x * np.log(p) + (n - x) * np.log1p(-p)
    pmf = np.exp(log_pmf)
    # p = 0 or 1: all the mass on one count (the logs above give nan there).
    pmf = np.where(p == 0, (x == 0).astype(float), np.where(p == 1, (x == n).astype(float), pmf))
    return pmf


def l1_floor(n: int, target: np.ndarray) -> float:
    """The sampling floor of L1: its expected value for a cell whose true distribution *is* `target`,
    measured on n images. Each label's count is Binomial(n, t), so E[L1] = sum over labels of
    E|X/n - t|, exact. A perfectly fair cell of two labels shows 0.080 at n = 100 and 0.176 at n = 20."""
    if n < 1:
        return float("nan")
    x = np.arange(n + 1) / n
    target = np.asarray(target, dtype=float)
    return float((binomial_pmf(n, target) * np.abs(x - target[:, None])).sum())


def squared_distances(counts: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of counts: an unbiased estimate of the squared L2 distance of its true distribution
    from `target` (rows: one target each, or one for all), and the raw value's sampling floor.

    The raw squared distance of the observed shares is biased upwards by sampling noise: its
    expectation is the true one plus sum_k p_k (1 - p_k) / n. Subtracting sum_k p̂_k (1 - p̂_k) / (n - 1)
    removes that bias exactly (E[p̂(1 - p̂)] = p(1 - p)(n - 1) / n), so the estimate is centred on
    the truth at any n, and may be negative when the truth is near the target. The floor is what
    the raw value shows for a cell exactly at the target: sum_k t_k (1 - t_k) / n. Rows with fewer
    than two images have no unbiased estimate (nan).
    """
    counts = np.asarray(counts, dtype=float)
    n = counts.sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        shares = counts / n[..., None]
        raw = ((shares - target) ** 2).sum(-1)
        unbiased = np.where(n >= 2, raw - (shares * (1 - shares)).sum(-1) / (n - 1), np.nan)
        floor = (target * (1 - target)).sum(-1) / n
    return unbiased, floor


def distance_from_target(
    counts: np.ndarray, target: np.ndarray, rounds: int, rng: np.random.Generator | None, confidence: float
) -> dict:
    """The root mean square L2 distance of the rows' true distributions from their targets, from the
    unbiased squared distances, with a bootstrap interval.

    The interval is the basic (pivotal) parametric bootstrap of the mean unbiased squared distance:
    counts redrawn from shares smoothed by one count per label (so that a row seen all one way
    still varies), the spread of the redrawn estimates around their known centre mapped back onto
    the estimate. It keeps the estimate inside its interval. Simulated at 95% (`tests/test_bias.py`),
    it covered the truth in 93-95% of studies of 24 cells of 100 images and in 90-93% with 3 to 6
    cells of 10 to 50 images: with few cells it runs a little narrow.
    """
    counts = np.asarray(counts, dtype=np.int64).reshape(-1, np.shape(target)[-1])
    target = np.broadcast_to(np.asarray(target, dtype=float), counts.shape)
    usable = counts.sum(-1) >= 2
    if not usable.any():
        nan = float("nan")
        return {"distance": nan, "distance_ci": [nan, nan], "distance_sq": nan, "distance_sq_ci": [nan, nan],
                "distance_rows": 0}  # fmt: skip
    counts, target = counts[usable], target[usable]
    unbiased, _ = squared_distances(counts, target)
    estimate = float(unbiased.mean())
    totals = counts.sum(-1)
    smoothed = (counts + 1.0) / (totals + 1.0 * counts.shape[-1])[:, None]
    redrawn = rng.multinomial(totals[None, :], smoothed[None].repeat(rounds, 0))
    boot = squared_distances(redrawn, target[None])[0].mean(-1)
    centre = float(((smoothed - target) ** 2).sum(-1).mean())  # the redrawn estimates' exact mean
    alpha = (1 - confidence) / 2
    low, high = (estimate - float(q) for q in np.quantile(boot - centre, [1 - alpha, alpha]))
    return {
        "distance": float(np.sqrt(max(estimate, 0.0))),
        "distance_ci": [float(np.sqrt(max(low, 0.0))), float(np.sqrt(max(high, 0.0)))],
        "distance_sq": estimate,
        "distance_sq_ci": [low, high],
        "distance_rows": int(usable.sum()),
    }


def target_rows(target: list | dict | None, labels: list[str], occupations: list[str]) -> np.ndarray:
    """One target distribution per occupation, in `labels` order: uniform (None), one for all (a
    list of shares, or `{label: share}`), or one per occupation (`{occupation: shares}`)."""
    width = len(labels)

    def checked(value: object, what: str) -> np.ndarray:
        if isinstance(value, dict):
            unknown = sorted(set(value) - set(labels))
            if unknown:
                raise ValueError(f"{what}: labels {unknown} are not among {labels}")
            value = [value.get(label, 0.0) for label in labels]
        shares = np.asarray(value, dtype=float)
        if shares.shape != (width,) or not np.isfinite(shares).all() or (shares < 0).any():
            raise ValueError(f"{what}={value!r}: {width} shares of at least 0, one per label {labels}")
        if abs(shares.sum() - 1) > 1e-6:
            raise ValueError(f"{what}={value!r}: the shares must sum to 1, not {shares.sum():g}")
        return shares

    if target is None:
        return np.full((len(occupations), width), 1.0 / width)
    if isinstance(target, dict) and set(target) & set(occupations) and not set(target) & set(labels):
        missing = [o for o in occupations if o not in target]
        if missing:
            raise ValueError(f"target: no target for the occupations {missing}")
        return np.stack([checked(target[o], f"target[{o!r}]") for o in occupations])
    return np.tile(checked(target, "target"), (len(occupations), 1))


def expected_max_unfairness(
    rates: np.ndarray, k: int, n: int, rounds: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Per round: k distinct occupations, n images each drawn from their rates; the largest L1 and L2."""
    chosen = rng.permuted(np.tile(np.arange(rates.shape[0]), (rounds, 1)), axis=1)[:, :k]
    counts = rng.multinomial(n, rates[chosen])  # (rounds, k, K), one vectorised draw
    l1, l2 = distances(counts / n)
    return l1.max(axis=1), l2.max(axis=1)


def reference_fit(counts: np.ndarray, reference: np.ndarray, label: int, confidence: float) -> dict:
    """The measured share of label `label` per occupation (rows of `counts`) against the reference
    shares (nan: no reference): slopes with t intervals on the share and logit scales, and MAGBIG's
    Pearson and Spearman correlations. nan where fewer than three occupations have a reference."""
    nan = float("nan")
    fit = {
        "occupations": 0,
        "slope": nan,
        "slope_ci": [nan, nan],
        "intercept": nan,
        "logit_slope": nan,
        "logit_slope_ci": [nan, nan],
        "pearson": nan,
        "pearson_p": nan,
        "spearman": nan,
        "spearman_p": nan,
    }
    known = np.isfinite(reference)
    counts, x = counts[known], reference[known]
    fit["occupations"] = int(len(x))
    if len(x) < 3 or np.ptp(x) == 0:
        return fit
    hits, totals = counts[:, label].astype(float), counts.sum(-1).astype(float)
    y = hits / totals
    quantile = scipy.stats.t.ppf(1 - (1 - confidence) / 2, len(x) - 2)
    line = scipy.stats.linregress(x, y)
    fit |= {
        "slope": float(line.slope),
        "intercept": float(line.intercept),
        "slope_ci": [float(line.slope - quantile * line.stderr), float(line.slope + quantile * line.stderr)],
    }
    # The logit scale: a reference of exactly 0 or 1 has no logit and is left out; a measured share of
    # 0 or 1 gets the empirical logit, log((x + 1/2) / (n - x + 1/2)).
    inner = (x > 0) & (x < 1)
    if inner.sum() >= 3 and np.ptp(x[inner]) > 0:
        measured = np.log((hits[inner] + 0.5) / (totals[inner] - hits[inner] + 0.5))
        logit = scipy.stats.linregress(np.log(x[inner] / (1 - x[inner])), measured)
        half = scipy.stats.t.ppf(1 - (1 - confidence) / 2, int(inner.sum()) - 2) * logit.stderr
        fit |= {
            "logit_slope": float(logit.slope),
            "logit_slope_ci": [float(logit.slope - half), float(logit.slope + half)],
        }
    if np.ptp(y) > 0:  # a constant share has no correlation
        pearson, spearman = scipy.stats.pearsonr(y, x), scipy.stats.spearmanr(y, x)
        fit |= {
            "pearson": float(pearson.statistic),
            "pearson_p": float(pearson.pvalue),
            "spearman": float(spearman.statistic),
            "spearman_p": float(spearman.pvalue),
        }
    return fit  # fmt: skip


def confusion(kind: str, rate: float, width: int) -> np.ndarray:
    """A classifier's misreading as a matrix (rows: true label, columns: label read): `symmetric`,
    any other label equally likely; `asymmetric`, every label but the first read as the first.

    Example:
        >>> confusion("asymmetric", 0.2, 3).tolist()
        [[1.0, 0.0, 0.0], [0.2, 0.8, 0.0], [0.2, 0.0, 0.8]]
        >>> confusion("symmetric", 0.2, 3).tolist()
        [[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]]
    """
    if kind == "symmetric":
        matrix = np.full((width, width), rate / max(width - 1, 1))
        np.fill_diagonal(matrix, 1 - rate)
    else:
        matrix = np.eye(width) * (1 - rate)
        matrix[:, 0] += rate
        matrix[0] = np.eye(width)[0]
    return matrix


def noise_sensitivity(
    counts: np.ndarray,
    targets: np.ndarray,
    rates: list[float],
    reference: np.ndarray | None,
    label: int,
    clean: dict,
    rounds: int,
    rng: np.random.Generator,
) -> list[dict]:
    """The metrics after a noisy classifier: every image's label redrawn through the confusion matrix
    (`rounds` times), the metrics recomputed and averaged, and each one's ratio to its clean value."""
    width = counts.shape[-1]
    out = []
    for kind in ("symmetric", "asymmetric"):
        for rate in rates:
            matrix = np.broadcast_to(confusion(kind, rate, width), (rounds, *counts.shape, width))
            noisy = rng.multinomial(np.broadcast_to(counts, (rounds, *counts.shape)), matrix).sum(-2)
            totals = noisy.sum(-1, keepdims=True)
            mean_l1 = float(np.abs(noisy / totals - 1.0 / width).sum(-1).mean())
            # A cell of one image has no unbiased distance (nan); where every cell is such, the mean is
            # nan too, without numpy's empty-slice warning.
            per_cell = squared_distances(noisy, targets[None])[0]
            distance_sq = float(np.nanmean(per_cell, axis=-1).mean()) if np.isfinite(per_cell).any() else float("nan")
            row = {"kind": kind, "rate": float(rate), "mean_l1": mean_l1, "distance_sq": distance_sq,
                   "distance": float(np.sqrt(max(distance_sq, 0.0))), "slope": float("nan")}  # fmt: skip
            if reference is not None and clean.get("slope") == clean.get("slope"):  # a clean slope exists
                known = np.isfinite(reference)
                x = reference[known] - reference[known].mean()
                y = noisy[:, known, label] / totals[:, known, 0]
                row["slope"] = float(((y - y.mean(-1, keepdims=True)) * x).sum(-1).mean() / (x**2).sum())
            for name in ("mean_l1", "distance", "slope"):
                value = clean.get(name, float("nan"))
                row[f"{name}_ratio"] = row[name] / value if value else float("nan")
            out.append(row)
    return out


def check_noise_rates(rates: list | None) -> list[float]:
    rates = list(rates or [])
    for rate in rates:
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 0.5:
            raise ValueError(f"noise_rates: {rate!r} is not a misclassification rate in [0, 0.5)")
    return [float(r) for r in rates]


def reference_vector(
    reference: dict | None, label: str | None, labels: list[str], occupations: list[str]
) -> np.ndarray | None:
    """The reference share of each occupation (nan where it has none), checked."""
    if reference is None:
        return None
    if label not in labels:
        raise ValueError(f"reference_label={label!r}: the label whose share `reference` gives, one of {labels}")
    if not isinstance(reference, dict):
        raise ValueError(f"reference: {{occupation: share}}, not {type(reference).__name__}")
    out = np.full(len(occupations), np.nan)
    for i, occupation in enumerate(occupations):
        share = reference.get(occupation)
        if share is None:
            continue
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not (0 <= share <= 1 or share != share):
            raise ValueError(f"reference[{occupation!r}]={share!r}: a share between 0 and 1")
        out[i] = float(share)
    return out


def check_counts(k: int, n: int, rounds: int, confidence: float) -> None:
    for name, value in (("num_occupations", k), ("images_per_occupation", n), ("rounds", rounds)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}={value!r}: must be an integer of at least 1")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence!r}: must be between 0 and 1")


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class FairnessMetrics(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        if self.config_name == "counts":
            features = datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("int64")), "references": datasets.Value("string")}
            )
        else:
            features = datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            )
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=features,
            reference_urls=["https://arxiv.org/abs/2401.16092"],
        )

    def compute(self, *, predictions: list | None = None, references: list | None = None, **kwargs: object) -> dict:
        """Computes the metrics (see the module's description)."""
        # evaluate's format check infers types from the first value and fails on a None there (no face
        # in a config's first image, or none at all), so None stands in as "" on the way in.
        if self.config_name != "counts" and predictions is not None:
            predictions = ["" if p is None else p for p in predictions]
        return super().compute(predictions=predictions, references=references, **kwargs)

    def _compute(
        self,
        predictions: list,
        references: list[str],
        labels: list[str] | None = None,
        outside_labels: list[str] | None = None,
        num_occupations: int = 10,
        images_per_occupation: int = 10,
        rounds: int = 1000,
        seed: int = 0,
        confidence: float = 0.95,
        target: list | dict | None = None,
        reference: dict | None = None,
        reference_label: str | None = None,
        noise_rates: list | None = None,
    ) -> dict:
        check_counts(num_occupations, images_per_occupation, rounds, confidence)
        noise_rates = check_noise_rates(noise_rates)
        outside_labels = list(outside_labels or [])
        occupations = list(dict.fromkeys(references))
        if self.config_name == "counts":
            width = len(labels) if labels is not None else (len(predictions[0]) if predictions else 0)
            labels = list(labels) if labels is not None else [str(i) for i in range(width)]
            counts = np.zeros((len(occupations), len(labels)), dtype=np.int64)
            outside = np.zeros(len(occupations), dtype=np.int64)
            for row, occupation in zip(predictions, references):
                if len(row) != len(labels):
                    raise ValueError(f"a counts row has {len(row)} values for {len(labels)} labels: {list(row)}")
                counts[occupations.index(occupation)] += np.asarray(row, dtype=np.int64)
        else:
            given = [p if p != "" else None for p in predictions]
            if labels is None:
                labels = sorted({p for p in given if p is not None and p not in outside_labels})
            labels = list(labels)
            index = {label: i for i, label in enumerate(labels)}
            unknown = sorted({p for p in given if p is not None and p not in index and p not in outside_labels})
            if unknown:
                raise ValueError(f"predictions hold labels in neither `labels` nor `outside_labels`: {unknown}")
            counts = np.zeros((len(occupations), len(labels)), dtype=np.int64)
            rows = [occupations.index(o) for p, o in zip(given, references) if p in index]
            cols = [index[p] for p in given if p in index]
            np.add.at(counts, (rows, cols), 1)
            outside = np.zeros(len(occupations), dtype=np.int64)
            np.add.at(outside, [occupations.index(o) for p, o in zip(given, references) if p in outside_labels], 1)
        reference_shares = reference_vector(reference, reference_label, labels, occupations)
        totals = counts.sum(1)
        keep = totals > 0  # an occupation with no classified face is excluded and counted, never divided by
        included = [o for o, kept in zip(occupations, keep) if kept]
        result = {
            "labels": labels,
            "outside_labels": outside_labels,
            "occupations": included,
            "excluded_occupations": [o for o, kept in zip(occupations, keep) if not kept],
            "k": num_occupations,
            "images_per_occupation": images_per_occupation,
            "n": int(totals[keep].sum()),  # the classified images the metrics rest on, not a parameter
            "rounds": rounds,
        }
        if not included:
            nan = float("nan")
            names = ("mean_l1", "std_l1", "mean_l2", "std_l2", "exp_max_l1", "exp_max_l1_std", "exp_max_l2")
            names += ("exp_max_l2_std",)
            return result | {
                "per_occupation": {},
                **dict.fromkeys(names, nan),
                **{f"random_{name}": nan for name in names if name.startswith("exp_max")},
                "mean_l1_ci": [nan, nan],
                "mean_l2_ci": [nan, nan],
                **distance_from_target(np.zeros((0, len(labels))), np.zeros(len(labels)), 1, None, confidence),
                "mean_l1_floor": nan,
                **({"reference_fit": {"label": reference_label, **reference_fit(counts[:0], np.zeros(0), 0, 0.95)}}
                   if reference_shares is not None else {}),
                **({"noise_sensitivity": []} if noise_rates else {}),
            }  # fmt: skip
        if num_occupations > len(included):
            raise ValueError(
                f"num_occupations={num_occupations}: larger than the {len(included)} occupation(s) with a "
                "classified image; k distinct occupations are drawn per round"
            )
        counts, totals, outside = counts[keep], totals[keep], outside[keep]
        targets = target_rows(target, labels, included)
        rates = counts / totals[:, None]
        l1, l2 = distances(rates)
        uniform = np.full(len(labels), 1.0 / len(labels))
        floors = [l1_floor(int(t), uniform) for t in totals]
        unbiased, floor_sq = squared_distances(counts, targets)
        rng = np.random.default_rng(seed)
        # Bootstrap: resample each occupation's images from its observed rates, recompute everything.
        resampled = rng.multinomial(totals[None, :], rates[None].repeat(rounds, 0)) / totals[None, :, None]
        boot_l1, boot_l2 = distances(resampled)
        alpha = (1 - confidence) / 2
        share_low = np.quantile(resampled, alpha, axis=0)
        share_high = np.quantile(resampled, 1 - alpha, axis=0)
        # One image cannot vary when resampled: its interval would be a point. No interval for such an
        # occupation, nor for the mean over occupations that includes it.
        single = totals < 2
        share_low[single], share_high[single] = np.nan, np.nan
        mean_cis = [np.quantile(boot.mean(1), [alpha, 1 - alpha]).tolist() for boot in (boot_l1, boot_l2)]
        if single.any():
            mean_cis = [[float("nan")] * 2] * 2
        emu_l1, emu_l2 = expected_max_unfairness(rates, num_occupations, images_per_occupation, rounds, rng)
        fair = np.full_like(rates, 1.0 / rates.shape[1])
        ref_l1, ref_l2 = expected_max_unfairness(fair, num_occupations, images_per_occupation, rounds, rng)
        result |= distance_from_target(counts, targets, rounds, rng, confidence)
        if reference_shares is not None:
            label = labels.index(reference_label)
            result["reference_fit"] = {
                "label": reference_label,
                **reference_fit(counts, reference_shares[keep], label, confidence),
            }
        if noise_rates:
            clean = {"mean_l1": float(l1.mean()), "distance": result["distance"],
                     "slope": result.get("reference_fit", {}).get("slope", float("nan"))}  # fmt: skip
            shares = reference_shares[keep] if reference_shares is not None else None
            result["noise_sensitivity"] = noise_sensitivity(
                counts, targets, noise_rates, shares, labels.index(reference_label) if shares is not None else 0,
                clean, rounds, rng,
            )  # fmt: skip
        return result | {
            "per_occupation": {
                o: {
                    "n": int(t),
                    "counts": c.tolist(),
                    "distribution": r.tolist(),
                    "distribution_ci": [lo.tolist(), hi.tolist()],
                    "outside": int(x),
                    "l1": float(a),
                    "l2": float(b),
                    "l1_floor": f,
                    "target": g.tolist(),
                    "distance_sq": float(d),
                    "distance_sq_floor": float(e),
                }
                for o, t, c, r, lo, hi, x, a, b, f, g, d, e in zip(
                    included,
                    totals,
                    counts,
                    rates,
                    share_low,
                    share_high,
                    outside,
                    l1,
                    l2,
                    floors,
                    targets,
                    unbiased,
                    floor_sq,
                )  # fmt: skip
            },
            "mean_l1_floor": float(np.mean(floors)),
            "mean_l1": float(l1.mean()),
            "std_l1": float(l1.std()),
            "mean_l2": float(l2.mean()),
            "std_l2": float(l2.std()),
            "mean_l1_ci": mean_cis[0],
            "mean_l2_ci": mean_cis[1],
            "exp_max_l1": float(emu_l1.mean()),
            "exp_max_l1_std": float(emu_l1.std()),
            "exp_max_l2": float(emu_l2.mean()),
            "exp_max_l2_std": float(emu_l2.std()),
            "random_exp_max_l1": float(ref_l1.mean()),
            "random_exp_max_l1_std": float(ref_l1.std()),
            "random_exp_max_l2": float(ref_l2.mean()),
            "random_exp_max_l2_std": float(ref_l2.std()),
        }
