"""Faces, perceived attributes, the fairness evaluate module, and the classify/evaluate_bias stages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import datasets
import evaluate
import numpy as np
import pytest
import skimage.data

from pipelines import build_tiny_model, classify, evaluate_bias, generate_images
from pipelines.artifacts.store import LocalStore
from pipelines.errors import ConfigError
from pipelines.perception.classifiers import (
    AGE_GROUPS,
    GENDER_LABELS,
    RACE_LABELS,
    ClipZeroShotClassifier,
    DeepFaceClassifier,
    FairFaceClassifier,
)
from pipelines.perception.faces import face_chip, load_detector

from .conftest import REPO_ROOT, image_arguments

METRIC = str(REPO_ROOT / "spaces" / "fairness_metrics")


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage.data.astronaut()


@pytest.fixture(scope="module")
def tiny_classifiers(tiny_study: dict) -> dict[str, Path]:
    """Random-weight FairFace and open_clip models, published by the real stage and read back by path."""
    store = LocalStore(tiny_study["store_root"])
    common = {"store_root": tiny_study["store_root"], "namespace": "study"}
    fairface = build_tiny_model.run(build_tiny_model.Arguments(**common, kind="fairface"))
    clip = build_tiny_model.run(build_tiny_model.Arguments(**common, kind="open-clip"))
    return {"fairface": store.resolve(str(fairface), "model"), "clip": store.resolve(str(clip), "model")}


# --- faces -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mtcnn", "haar"])
def test_astronaut_has_exactly_one_face(name: str, astronaut: np.ndarray) -> None:
    (faces, blank) = load_detector(name).detect([astronaut, np.zeros((128, 128, 3), dtype=np.uint8)])
    assert len(faces) == 1 and blank == []
    x1, y1, x2, y2 = faces[0].box
    assert 150 < (x1 + x2) / 2 < 300 and 50 < (y1 + y2) / 2 < 200  # her face, upper middle of the photo
    if name == "mtcnn":
        assert faces[0].landmarks.dtype == np.float32 and faces[0].landmarks.shape == (5, 2)
        left_eye, right_eye = faces[0].landmarks[:2]
        assert left_eye[0] < right_eye[0] and abs(left_eye[1] - right_eye[1]) < 15
    chip = face_chip(astronaut, faces[0])
    assert chip.shape == (300, 300, 3) and chip.dtype == np.uint8


def test_optional_dlib_fails_clearly_when_missing() -> None:
    try:
        import dlib  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="detector='dlib' needs the optional extra"):
            load_detector("dlib")
    with pytest.raises(ConfigError, match="detector='retina': allowed mtcnn, haar, dlib, none"):
        load_detector("retina")


# --- classifiers -------------------------------------------------------------------------------


def test_fairface_classifies_the_astronaut(astronaut: np.ndarray, tiny_classifiers: dict) -> None:
    (faces,) = load_detector("mtcnn").detect([astronaut])
    classifier = FairFaceClassifier(tiny_classifiers["fairface"])
    chips = [face_chip(astronaut, faces[0]), face_chip(astronaut, faces[0])]
    first, second = classifier.classify(chips)
    assert first == second  # batched, deterministic
    assert first.gender in GENDER_LABELS and first.race in RACE_LABELS and first.age in AGE_GROUPS
    for scores, size in ((first.gender_scores, 2), (first.race_scores, 7), (first.age_scores, 9)):
        assert len(scores) == size and abs(sum(scores) - 1) < 1e-5
    assert first.gender == GENDER_LABELS[int(np.argmax(first.gender_scores))]


def test_fairface_rejects_pickled_objects(tmp_path: Path) -> None:
    import torch

    torch.save({"weights": object()}, tmp_path / "evil.pt")
    with pytest.raises(Exception, match="[Ww]eights only load failed|Unsupported"):
        FairFaceClassifier(tmp_path / "evil.pt")


def test_clip_zero_shot_and_non_binary_bucket(astronaut: np.ndarray, tiny_classifiers: dict) -> None:
    chip = face_chip(astronaut, load_detector("haar").detect([astronaut])[0][0])
    plain = ClipZeroShotClassifier(str(tiny_classifiers["clip"])).classify([chip])[0]
    assert plain.gender in GENDER_LABELS and abs(sum(plain.race_scores) - 1) < 1e-5
    bucketed = ClipZeroShotClassifier(str(tiny_classifiers["clip"]), margin=1.0).classify([chip])[0]
    assert bucketed.gender == "non-binary"  # any difference is within a margin of 1


class StandIn:
    def __init__(self, output):
        self.output = np.asarray(output, dtype=np.float32)
        self.calls = 0

    def predict(self, image):
        self.calls += 1
        return self.output


def test_deepface_with_stand_in_models(astronaut: np.ndarray) -> None:
    stand_ins = {
        "Age": StandIn(34.0),
        "Gender": StandIn([0.2, 0.8]),
        "Race": StandIn([0.1, 0.6, 0.1, 0.1, 0.05, 0.05]),
    }
    classifier = DeepFaceClassifier(models=stand_ins)
    (result,) = classifier.classify([face_chip(astronaut, load_detector("haar").detect([astronaut])[0][0])])
    assert stand_ins["Gender"].calls == 1
    # deepface's labels: Gender [Woman, Man]; Race [asian, indian, black, white, middle eastern, latino hispanic]
    assert result.gender == "male" and result.gender_scores == pytest.approx([0.8, 0.2], abs=1e-4)
    assert result.race == "Indian" and result.age == "30-39"


def test_deepface_missing_weights_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from deepface.modules import modeling

    monkeypatch.setattr(modeling, "cached_models", {task: {} for task in modeling.AVAILABLE_MODELS}, raising=False)

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(modeling, "build_model", offline)
    with pytest.raises(ConfigError, match="classifier='deepface': weights of its Age model are missing"):
        DeepFaceClassifier()


# --- the fairness module -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def metric():
    return evaluate.load(METRIC)


def test_metric_values_by_hand(metric) -> None:
    predictions = ["male"] * 3 + ["female"] + ["male", "female"] + [None, None]
    references = ["CEO"] * 4 + ["nurse"] * 2 + ["poet"] * 2
    result = metric.compute(predictions=predictions, references=references, labels=["male", "female"], rounds=50)
    ceo = result["per_occupation"]["CEO"]
    assert ceo["n"] == 4 and ceo["distribution"] == [0.75, 0.25]
    assert ceo["l1"] == pytest.approx(0.5) and ceo["l2"] == pytest.approx(np.sqrt(0.125))
    assert result["per_occupation"]["nurse"]["l1"] == 0.0
    assert result["mean_l1"] == pytest.approx(0.25) and result["std_l1"] == pytest.approx(0.25)
    assert result["excluded_occupations"] == ["poet"] and result["occupations"] == ["CEO", "nurse"]
    three = metric.compute(predictions=["a", "a", "b"], references=["x"] * 3, labels=["a", "b", "c"], rounds=10)
    assert three["per_occupation"]["x"]["l1"] == pytest.approx(abs(2 / 3 - 1 / 3) + abs(1 / 3 - 1 / 3) + 1 / 3)


def test_metric_counts_config_matches_labels(metric) -> None:
    counts = evaluate.load(METRIC, "counts")
    by_counts = counts.compute(
        predictions=[[3, 1], [1, 1]], references=["CEO", "nurse"], labels=["male", "female"], rounds=100
    )
    by_labels = metric.compute(
        predictions=["male"] * 3 + ["female", "male", "female"],
        references=["CEO"] * 4 + ["nurse"] * 2,
        labels=["male", "female"],
        rounds=100,
    )
    for key in ("mean_l1", "mean_l2", "mean_l1_ci", "expected_max_unfairness", "random_expected_max_unfairness"):
        assert by_counts[key] == pytest.approx(by_labels[key])


def test_metric_properties(metric) -> None:
    rng = np.random.default_rng(1)
    labels = ["male", "female"]
    # Uniform gives 0; the maximum is 2 (1 - 1/K) for L1 and sqrt(1 - 1/K) for L2.
    uniform = metric.compute(predictions=["male", "female"] * 5, references=["x"] * 10, labels=labels, rounds=20)
    assert uniform["mean_l1"] == 0 and uniform["mean_l2"] == 0
    skewed = metric.compute(predictions=["male"] * 10, references=["x"] * 10, labels=labels, rounds=20)
    assert skewed["mean_l1"] == pytest.approx(1.0) and skewed["mean_l2"] == pytest.approx(np.sqrt(0.5))
    # Permutation invariance: the order of images does not matter.
    predictions = list(rng.choice(labels, 200))
    references = list(rng.choice(["a", "b", "c", "d"], 200))
    order = rng.permutation(200)
    first = metric.compute(predictions=predictions, references=references, labels=labels, rounds=200)
    second = metric.compute(
        predictions=[predictions[i] for i in order],
        references=[references[i] for i in order],
        labels=labels,
        rounds=200,
    )
    assert first["mean_l1"] == pytest.approx(second["mean_l1"])
    for name in first["occupations"]:
        assert first["per_occupation"][name] == second["per_occupation"][name]
    # Bounds of the bootstrap figures, and a fair model near the random reference.
    assert 0 <= first["random_expected_max_unfairness"] <= 1 and 0 <= first["expected_max_unfairness"] <= 1
    assert first["mean_l1_ci"][0] <= first["mean_l1"] + 0.05 and first["mean_l1_ci"][1] >= first["mean_l1"] - 0.05
    biased = metric.compute(predictions=["male"] * 90 + ["female"] * 10, references=["x"] * 100, labels=labels)
    assert biased["expected_max_unfairness"] > biased["random_expected_max_unfairness"]


def test_more_images_never_widen_the_interval_on_average(metric) -> None:
    rng = np.random.default_rng(7)
    widths = {}
    for size in (20, 80, 320):
        runs = []
        for repeat in range(8):
            predictions = list(rng.choice(["male", "female"], size, p=[0.7, 0.3]))
            references = list(rng.choice(["a", "b"], size))
            result = metric.compute(
                predictions=predictions, references=references, labels=["male", "female"], rounds=300, seed=repeat
            )
            runs.append(result["mean_l1_ci"][1] - result["mean_l1_ci"][0])
        widths[size] = np.mean(runs)
    assert widths[20] > widths[80] > widths[320]


def test_metric_loads_in_a_fresh_process() -> None:
    code = (
        "import evaluate; m = evaluate.load('spaces/fairness_metrics'); "
        "r = m.compute(predictions=['male','female'], references=['x','x'], labels=['male','female'], rounds=5); "
        "print(r['mean_l1'])"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "0.0"


# --- the stages, end to end on the tiny pipeline's images --------------------------------------


def test_classify_and_evaluate_bias_end_to_end(tiny_study: dict, tiny_classifiers: dict, tmp_path: Path) -> None:
    common = {"store_root": tiny_study["store_root"], "namespace": "study"}
    store = LocalStore(tiny_study["store_root"])
    images = generate_images.run(image_arguments(tiny_study, output_repo="bias-images", num_images=3))
    # Add a corrupt image to the images, as a shard of its own: recorded, not a crash.
    folder = tmp_path / "images"
    import shutil

    shutil.copytree(store.resolve(str(images), "dataset"), folder)
    import pyarrow.parquet as pq

    table = pq.read_table(next((folder / "data" / "en_eval_direct").glob("*.parquet")))
    broken = table.slice(0, 1).to_pylist()
    broken[0]["image"] = {"bytes": b"not a png", "path": None}
    broken_path = folder / "data" / "en_eval_direct" / "train-99999.parquet"
    pq.write_table(__import__("pyarrow").Table.from_pylist(broken, schema=table.schema), broken_path)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    with_corrupt = store.push(folder, "study/bias-images-corrupt", "dataset", "with a corrupt image")

    attributes = classify.run(
        classify.Arguments(
            **common,
            input=f"study/bias-images-corrupt@{with_corrupt}",
            detector="none",
            classifier="fairface",
            classifier_model="tiny-fairface",
            batch_size=5,
        )
    )
    found = store.resolve(str(attributes), "dataset")
    english = datasets.load_dataset(str(found), "en_eval_direct", split="train")
    assert english.num_rows == 4 * 3 + 1
    assert english["status"].count("corrupt") == 1 and english["status"].count("ok") == 12
    assert set(english["gender"]) - {None} <= set(GENDER_LABELS)
    ok = next(row for row in english if row["status"] == "ok")
    assert ok["detector"] == "none" and ok["classifier"] == "fairface" and len(ok["race_scores"]) == 7
    assert "| `en_eval_direct` | 13 | 12 | 0 | 0 | 1 | 7.7% |" in (found / "README.md").read_text()

    results = evaluate_bias.run(
        evaluate_bias.Arguments(**common, input=str(attributes), rounds=50, num_occupations=4, images_per_occupation=3)
    )
    folder = store.resolve(str(results), "dataset")
    summary = datasets.load_dataset(str(folder), "summary", split="train").to_pandas()
    assert sorted(set(summary["attribute"])) == ["age", "gender", "gender_race", "race", "race4"]
    assert sorted(set(summary["language"])) == ["de", "en"]
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
    assert english_gender["mean_l1"] == pytest.approx(direct["mean_l1"])
    assert english_gender["expected_max_unfairness"] == pytest.approx(direct["expected_max_unfairness"])
    per_occupation = datasets.load_dataset(str(folder), "per_occupation", split="train")
    assert per_occupation.num_rows == 2 * 5 * 4  # languages x attributes x occupations
    assert (folder / "plots" / "en_eval_direct_gender.png").stat().st_size > 1000
    # Our model's card now carries the results as model-index.
    card = (store.resolve("study/tiny-altdiffusion", "model") / "README.md").read_text()
    assert "model-index:" in card and "gender_mean_l1" in card


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
