"""The parts of distributional alignment (Shen et al., ICLR 2024): per-batch OT target assignment,
and classifiers differentiable to the pixels (the planted world's cue, FairFace on dlib's chips).

Each OT result is checked against an independent brute force (every assignment, every count vector);
the FairFace chip against `faces.fairface_chip`, FairFace's predict.py to the byte.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from scipy.stats import binom, multinomial

from pipelines.errors import ConfigError
from pipelines.modeling import world
from pipelines.modeling.tiny import build_tiny_fairface
from pipelines.perception import differentiable, faces
from pipelines.perception.classifiers import (
    FAIRFACE_RACE7_NAMES,
    GENDER_LABELS,
    FaceCrop,
    FairFaceClassifier,
    _tensor,
)
from pipelines.perception.differentiable import FairFaceChips, SoftWorldCue
from training.target_assignment import (
    assign_targets,
    covering_counts,
    optimal_assignment,
    parse_target,
    transport_cost,
)

MALE, FEMALE = GENDER_LABELS.index("male"), GENDER_LABELS.index("female")


# --- brute force references ---------------------------------------------------------------------


def brute_force_assignment(probs: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The cheapest assignment with these counts, over every distinct one (n <= 7)."""
    cost = transport_cost(probs)
    labels = np.repeat(np.arange(len(counts)), counts)
    candidates = np.array(sorted(set(itertools.permutations(labels))))
    totals = cost[np.arange(len(probs)), candidates].sum(1)
    return candidates[np.argmin(totals)]


def total_cost(probs: np.ndarray, classes: np.ndarray) -> float:
    return float(transport_cost(probs)[np.arange(len(probs)), classes].sum())


def exhaustive_plan(probs: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The plan averaged over every count vector, by brute-force assignments and scipy's pmf."""
    n, k = probs.shape
    plan = np.zeros((n, k))
    for counts in itertools.product(range(n + 1), repeat=k):
        if sum(counts) == n:
            classes = brute_force_assignment(probs, np.array(counts))
            plan[np.arange(n), classes] += multinomial.pmf(counts, n, target)
    return plan


# --- optimal transport per batch ----------------------------------------------------------------


@pytest.mark.parametrize("k", [2, 3])
def test_optimal_assignment_is_the_cheapest_with_those_counts(k: int) -> None:
    rng = np.random.default_rng(k)
    for n in (1, 2, 4, 5, 7, 7):
        probs = rng.dirichlet(np.ones(k) * 0.7, size=n)
        counts = rng.multinomial(n, np.ones(k) / k)
        classes = optimal_assignment(probs, counts)
        assert np.bincount(classes, minlength=k).tolist() == counts.tolist()
        # Ties would let the two pick different images, so the costs are compared.
        assert total_cost(probs, classes) == pytest.approx(total_cost(probs, brute_force_assignment(probs, counts)))
    with pytest.raises(ValueError, match=r"counts \[1, 1\]: need 2 counts >= 0 summing to 3"):
        optimal_assignment(rng.dirichlet(np.ones(2), size=3), np.array([1, 1]))


def test_averaged_plan_equals_exhaustive_enumeration() -> None:
    rng = np.random.default_rng(0)
    for n, target in ((3, np.array([0.2, 0.5, 0.3])), (5, np.array([0.6, 0.1, 0.3])), (4, np.ones(3) / 3)):
        probs = rng.dirichlet(np.ones(3), size=n)
        targets, plan = assign_targets(probs, target, threshold=1.0, coverage=1.0)
        assert np.allclose(plan, exhaustive_plan(probs, target), atol=1e-12)
        assert np.allclose(plan.sum(1), 1) and targets.tolist() == plan.argmax(1).tolist()
        # The paper's 95%: a different, renormalised plan, still a distribution per image.
        _, truncated = assign_targets(probs, target, threshold=1.0)
        assert np.allclose(truncated.sum(1), 1) and not np.allclose(truncated, plan)


def test_the_cut_keeps_the_fewest_likeliest_count_vectors_and_their_ties() -> None:
    for n, target in ((8, np.array([0.5, 0.5])), (6, np.array([0.2, 0.3, 0.5])), (9, np.ones(4) / 4)):
        counts, weights = covering_counts(n, target, 0.95)
        assert np.allclose(weights, multinomial.pmf(counts, n, target))
        assert weights.sum() > 0.95 and np.all(np.diff(weights) <= 1e-15)
        # Without the last group of equally likely vectors, less than 95% would remain.
        last = weights >= weights[-1] * (1 - 1e-9)
        assert weights[~last].sum() <= 0.95
    # Binomial(8, 1/2): 4 holds 27%, 3 and 5 with it 71%, 2 and 6 with them 93%: a cut at 80%
    # falls between 2 and 6, which are kept together; at 95% 1 and 7 join.
    for coverage, kept in ((0.8, [2, 3, 4, 5, 6]), (0.95, [1, 2, 3, 4, 5, 6, 7])):
        counts, _ = covering_counts(8, np.array([0.5, 0.5]), coverage)
        assert sorted(c[0] for c in counts) == kept


@pytest.mark.parametrize("q1", [0.3, 0.5, 0.7])
def test_two_classes_follow_the_papers_rank_rule(q1: float) -> None:
    """exp-1: rank by p[:, 1]; the top m ~ Binomial(n, q1) get class 1, so rank r gets it with
    probability binom.cdf(r, n, 1 - q1)."""
    rng = np.random.default_rng(int(q1 * 10))
    for n in (5, 8, 9, 16):
        p1 = rng.random(n)
        probs = np.stack([1 - p1, p1], 1)
        targets, plan = assign_targets(probs, np.array([1 - q1, q1]), threshold=1.0, coverage=1.0)
        rank = np.argsort(np.argsort(p1))
        assert np.allclose(plan[:, 1], binom.cdf(rank, n, 1 - q1), atol=1e-12)
        if q1 == 0.5 and n % 2 == 0:  # their code's own setting (odd n ties one image at 0.5)
            paper_targets = (rank >= n * 0.5).astype(int)
            paper_uncertainty = np.where(paper_targets == 1, 1 - binom.cdf(rank, n, 1 - q1), binom.cdf(rank, n, q1))
            assert targets.tolist() == paper_targets.tolist()
            assert np.allclose(1 - plan.max(1), paper_uncertainty, atol=1e-12)
            # Their threshold: targets_all[uncertainty_all > 0.2] = -1.
            kept, _ = assign_targets(probs, np.array([1 - q1, q1]), coverage=1.0)
            assert kept.tolist() == np.where(paper_uncertainty > 0.2, -1, paper_targets).tolist()
            assert 0 < (kept == -1).sum() < n


def test_relabelling_the_classes_relabels_the_plan() -> None:
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(3), size=9)
    for target in (np.ones(3) / 3, np.array([0.5, 0.3, 0.2])):
        targets, plan = assign_targets(probs, target)  # the paper's 95% cut, uniform: many ties
        for order in ([2, 1, 0], [1, 2, 0]):
            moved_targets, moved = assign_targets(probs[:, order], target[order])
            assert np.allclose(moved, plan[:, order], atol=1e-12)
            relabel = np.argsort(order)
            assert moved_targets.tolist() == [-1 if t == -1 else int(relabel[t]) for t in targets]
    # Two classes: reversed probabilities reverse every image's assignment.
    p1 = rng.random(10)
    targets, _ = assign_targets(np.stack([1 - p1, p1], 1), np.array([0.5, 0.5]), threshold=1.0)
    reversed_targets, _ = assign_targets(np.stack([p1, 1 - p1], 1), np.array([0.5, 0.5]), threshold=1.0)
    assert reversed_targets.tolist() == (1 - targets).tolist()


def test_a_batch_at_the_target_keeps_its_own_classes() -> None:
    rng = np.random.default_rng(4)
    for target, counts in ((np.array([0.5, 0.5]), [5, 5]), (np.array([0.2, 0.4, 0.4]), [2, 4, 4])):
        own = rng.permutation(np.repeat(np.arange(len(target)), counts))
        probs = np.full((10, len(target)), 0.02)
        probs[np.arange(10), own] = rng.uniform(0.85, 0.97, 10)
        probs /= probs.sum(1, keepdims=True)
        targets, plan = assign_targets(probs, target, threshold=1.0)
        assert targets.tolist() == own.tolist()
        kept, _ = assign_targets(probs, target)
        assert np.all((kept == own) | (kept == -1))
        # The most confident image of each class keeps its target under the paper's threshold.
        for k in range(len(target)):
            assert kept[np.flatnonzero(own == k)[np.argmax(probs[own == k, k])]] == k


def test_an_all_female_batch_sends_its_least_female_half_to_male() -> None:
    rng = np.random.default_rng(5)
    female = rng.uniform(0.8, 0.99, 10)
    probs = np.zeros((10, 2))
    probs[:, FEMALE], probs[:, MALE] = female, 1 - female
    targets, plan = assign_targets(probs, np.array([0.5, 0.5]), threshold=1.0)
    least_female = set(np.argsort(female)[:5].tolist())
    assert set(np.flatnonzero(targets == MALE).tolist()) == least_female
    kept, _ = assign_targets(probs, np.array([0.5, 0.5]))
    assert kept[np.argmin(female)] == MALE and kept[np.argmax(female)] == FEMALE
    assert set(np.flatnonzero(kept == MALE).tolist()) <= least_female


def test_monte_carlo_beyond_the_enumeration_limit() -> None:
    rng = np.random.default_rng(6)
    probs, target = rng.dirichlet(np.ones(3), size=12), np.array([0.5, 0.3, 0.2])
    with pytest.raises(ValueError, match="too many count vectors to list; pass rng"):
        assign_targets(probs, target, max_enumerated=10)
    first = assign_targets(probs, target, max_enumerated=10, rng=np.random.default_rng(1))
    second = assign_targets(probs, target, max_enumerated=10, rng=np.random.default_rng(1))
    assert np.array_equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    _, sampled = assign_targets(probs, target, max_enumerated=10, rng=np.random.default_rng(2), samples=4000)
    _, exact = assign_targets(probs, target, coverage=1.0)
    assert np.abs(sampled - exact).max() < 0.05 and np.allclose(sampled.sum(1), 1)


def test_empty_single_and_degenerate_batches() -> None:
    targets, plan = assign_targets(np.zeros((0, 2)), np.array([0.5, 0.5]))
    assert targets.shape == (0,) and plan.shape == (0, 2)
    # One image: its plan is the target itself (which class the single draw is).
    targets, plan = assign_targets(np.array([[0.3, 0.7]]), np.array([0.9, 0.1]), coverage=1.0)
    assert np.allclose(plan, [[0.9, 0.1]]) and targets.tolist() == [0]
    targets, plan = assign_targets(np.array([[0.3, 0.7]]), np.array([0.5, 0.5]))
    assert targets.tolist() == [-1]  # uncertainty 0.5
    # A class the target excludes gets nobody, however likely.
    probs = np.random.default_rng(7).dirichlet(np.ones(3), size=6)
    targets, plan = assign_targets(probs, np.array([0.0, 1.0, 0.0]))
    assert targets.tolist() == [1] * 6 and np.allclose(plan[:, 1], 1)
    with pytest.raises(ValueError, match=r"probs of shape \(6, 3\): need \(n, 2\)"):
        assign_targets(probs, np.array([0.5, 0.5]))


def test_parse_target_reads_evaluate_bias_s_target_syntax() -> None:
    assert parse_target("female=0.7,male=0.3", GENDER_LABELS).tolist() == [0.3, 0.7]
    assert parse_target(" male = 1 , female = 0 ", GENDER_LABELS).tolist() == [1.0, 0.0]
    assert parse_target("female=1", GENDER_LABELS).tolist() == [0.0, 1.0]  # an unnamed label gets 0
    assert parse_target("", GENDER_LABELS).tolist() == [0.5, 0.5]
    labels = re.escape("label=share,... with labels among male, female and shares in [0, 1]")
    for text, problem in (
        ("female=0.7,man=0.3", labels),
        ("female=1.2,male=-0.2", labels),
        ("female=half,male=0.5", labels),
        ("female=0.6,male=0.3", "the shares must sum to 1, not 0.9"),
    ):
        with pytest.raises(ConfigError, match=rf"^target='{re.escape(text)}': {problem}$"):
            parse_target(text, GENDER_LABELS)
    with pytest.raises(ConfigError, match=r"^target_distribution='x=1': label=share"):
        parse_target("x=1", GENDER_LABELS, field="target_distribution")


# --- the world's cue, softened ------------------------------------------------------------------


def test_soft_world_cue_decides_as_read_cue_and_its_gradient_points_to_red() -> None:
    rng = np.random.default_rng(8)
    female = rng.random(300) < 0.5
    pictures = world.draw_figures(female, rng)
    read, _ = world.read_cue(pictures)
    images = torch.from_numpy(pictures).permute(0, 3, 1, 2).float().div(255).requires_grad_(True)
    cue = SoftWorldCue()
    logits, valid = cue(images)
    assert logits["gender"].shape == (300, 2) and valid.all()
    assert (logits["gender"].argmax(1) == FEMALE).numpy().tolist() == read.tolist()
    (gradient,) = torch.autograd.grad(logits["gender"][:, FEMALE].sum(), images)
    disc = torch.from_numpy((pictures.max(-1).astype(int) - pictures.min(-1)) / 255 > 0.3)
    assert torch.isfinite(gradient).all() and gradient[:, 0][disc].abs().sum() > 0
    assert gradient.permute(1, 0, 2, 3)[:, ~disc].abs().max() == 0  # grey pixels do not vote
    redder = images.detach().clone()
    redder[:, 0] = torch.where(disc, redder[:, 0] + 0.03, redder[:, 0])  # unclamped: some discs are at 1
    raised = cue(redder)[0]["gender"][:, FEMALE] - logits["gender"][:, FEMALE].detach()
    assert (raised > 0).all()
    grey = torch.full((1, 3, 16, 16), 0.5)
    assert cue(grey)[1].tolist() == [False]
    assert cue.describe()["name"] == "world-cue"


# --- FairFace on differentiable chips -----------------------------------------------------------


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage.data.astronaut()


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A FairFace-shaped checkpoint (random weights) under its published name."""
    return build_tiny_fairface(tmp_path_factory.mktemp("fairface") / FAIRFACE_RACE7_NAMES[0], seed=0)


@pytest.fixture(scope="module")
def dlib_detector() -> faces.FaceDetector:
    return faces.load_detector("dlib")


class Recording:
    """A detector that remembers what it was given and found."""

    def __init__(self, detector: faces.FaceDetector) -> None:
        self.detector, self.name = detector, detector.name

    def detect(self, images: list[np.ndarray]) -> list[list[faces.Face]]:
        self.images, self.found = images, self.detector.detect(images)
        return self.found


class FixedFaces:
    """A detector that returns given faces: the dlib detection once, for tests that reuse it."""

    name = "fixed"

    def __init__(self, found: list[list[faces.Face]]) -> None:
        self.found = found

    def detect(self, images: list[np.ndarray]) -> list[list[faces.Face]]:
        assert len(images) == len(self.found)
        return self.found


def pixels(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1).float().div(255)


@pytest.fixture(scope="module")
def batch(astronaut: np.ndarray, weights: Path, dlib_detector: faces.FaceDetector) -> dict:
    """The astronaut and a grey image through FairFaceChips with dlib's detector, with gradients."""
    images = torch.stack([pixels(astronaut), torch.full((3, 512, 512), 0.5)]).requires_grad_(True)
    detector = Recording(dlib_detector)
    classifier = FairFaceChips(weights, detector=detector)
    logits, valid = classifier(images)
    loss = torch.nn.functional.cross_entropy(logits["gender"][valid], torch.tensor([MALE]))
    (gradient,) = torch.autograd.grad(loss, images)
    assert np.array_equal(detector.images[0], astronaut)  # the detector saw the photo's own bytes
    face = max(detector.found[0], key=lambda found: found.area)
    return {"classifier": classifier, "logits": logits, "valid": valid, "gradient": gradient, "face": face}


@pytest.mark.parametrize(
    "rows, cols, depth",
    [((0, 512), (0, 512), 0), ((75, 160), (170, 255), 1), ((0, 512), (100, 400), 0)],
    ids=["astronaut", "close-up-pyramid", "portrait"],
)
def test_differentiable_chips_are_fairface_s_to_the_byte(
    astronaut: np.ndarray, dlib_detector: faces.FaceDetector, rows: tuple, cols: tuple, depth: int
) -> None:
    """dlib's resize in its single precision, its chip rectangle, its pyramid for a face larger than
    twice the chip's (the close-up): the forward pass is `faces.fairface_chip`, not within a tolerance."""
    image = np.ascontiguousarray(astronaut[slice(*rows), slice(*cols)])
    ((face,),) = dlib_detector.detect([image])
    chip = differentiable.fairface_chip(pixels(image), face)
    assert chip.shape == (3, 300, 300)
    assert np.array_equal(chip.permute(1, 2, 0).numpy(), faces.fairface_chip(image, face).astype(np.float64))
    points = np.round(face.landmarks * round(face.scale * max(image.shape[:2])) / max(image.shape[:2]))
    template = (faces.CHIP_PADDING + faces.DLIB5_TEMPLATE) / (1 + 2 * faces.CHIP_PADDING) * faces.CHIP_SIZE
    assert differentiable.ChipGeometry(faces.similarity(template, points), 300).depth == depth


def test_fairface_chips_give_fairface_classifier_s_logits(astronaut: np.ndarray, batch: dict, weights: Path) -> None:
    face = batch["face"]
    reference_chip = faces.fairface_chip(astronaut, face)
    classifier = FairFaceClassifier(weights)
    with torch.inference_mode():
        reference = classifier.model(_tensor([reference_chip], 224, "cpu"))[0]
    ours = batch["logits"]
    assert torch.allclose(torch.cat([ours["race"][0], ours["gender"][0], ours["age"][0]]), reference, atol=1e-5)
    (attributes,) = classifier.classify([FaceCrop(astronaut, face, reference_chip)])
    assert ours["gender"][0].softmax(0).tolist() == pytest.approx(attributes.gender_scores, abs=1e-6)
    assert ours["race"][0].softmax(0).tolist() == pytest.approx(attributes.race_scores, abs=1e-6)
    # The normalisation alone: bit for bit the uint8 path's.
    chip = torch.from_numpy(reference_chip).permute(2, 0, 1)[None].double()
    assert torch.equal(differentiable.fairface_input(chip), _tensor([reference_chip], 224, "cpu"))


def test_gradients_reach_the_face_and_nothing_far_from_it(astronaut: np.ndarray, batch: dict) -> None:
    assert batch["valid"].tolist() == [True, False]
    gradient = batch["gradient"][0].abs().sum(0)
    assert torch.isfinite(batch["gradient"]).all()
    face = batch["face"]
    x1, y1, x2, y2 = (int(round(v)) for v in face.box)
    assert gradient[y1:y2, x1:x2].sum() > 0 and (gradient[y1:y2, x1:x2] > 0).float().mean() > 0.9
    width = x2 - x1
    far = torch.ones_like(gradient, dtype=torch.bool)
    far[max(y1 - width, 0) : y2 + width, max(x1 - width, 0) : x2 + width] = False
    assert gradient[far].max() == 0


def test_an_image_without_a_face_is_not_valid_and_adds_no_loss(batch: dict) -> None:
    for name, labels in batch["classifier"].labels.items():
        assert batch["logits"][name].shape == (2, len(labels))
        assert batch["logits"][name][1].abs().max() == 0
    assert batch["gradient"][1].abs().max() == 0
    described = batch["classifier"].describe()
    assert described["race7_checkpoint"] == FAIRFACE_RACE7_NAMES[0] and len(described["race7_sha256"]) == 64


def test_a_batch_without_faces_costs_no_model_call(weights: Path) -> None:
    classifier = FairFaceChips(weights, detector=FixedFaces([[], []]))
    logits, valid = classifier(torch.rand(2, 3, 64, 64, requires_grad=True))
    assert valid.tolist() == [False, False] and not logits["gender"].requires_grad
    assert logits["age"].shape == (2, 9) and logits["age"].abs().max() == 0


def test_whole_image_faces_for_offline_runs(weights: Path) -> None:
    """detector='none' (face crops, offline runs): the whole image is the face, resized to the chip."""
    images = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    logits, valid = FairFaceChips(weights, detector="none")(images)
    assert valid.tolist() == [True, True] and torch.isfinite(logits["race"]).all()
    (gradient,) = torch.autograd.grad(logits["gender"][:, FEMALE].sum(), images)
    assert (gradient.abs().sum(1) > 0).float().mean() > 0.9  # every pixel is in the chip
    chip = differentiable.fairface_chip(images[0].detach(), faces.Face((0.0, 0.0, 96.0, 96.0), 1.0))
    assert chip.shape == (3, 300, 300) and 0 <= chip.min() and chip.max() <= 255
