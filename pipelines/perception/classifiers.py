"""Perceived-attribute classifiers behind one interface: batched, the model loaded once.

- `fairface`: torchvision ResNet-34 with an 18-logit head (race 7, gender 2, age 9, in that order),
  weights from a path or a model repo (`.pt`/`.pth` state dict, loaded with `weights_only=True`);
- `clip`: open_clip zero-shot ("a photo of a man, male, masculine" against "... woman, female,
  feminine", race and age prompts), with an optional non-binary bucket when the two genders are
  within `margin` of each other;
- `deepface`: deepface's `analyze` (age, gender, race) on the onnxruntime/PyTorch backends; its
  weights cannot be downloaded here, so stand-in models can be injected and a missing weight is
  a clear error.

Every classifier maps its labels onto the study's: gender {male, female}, FairFace's seven race
groups and their four-group merge, FairFace's nine age groups.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from pipelines.errors import ConfigError

GENDER_LABELS = ["male", "female"]
RACE_LABELS = ["White", "Black", "Latino_Hispanic", "East Asian", "Southeast Asian", "Indian", "Middle Eastern"]
# The four-group merge: FairFace's race4 groups (White, Black, Asian, Indian); the groups race4 lacks
# join the one FairFace's annotation guide places them nearest.
RACE4 = {
    "White": "White",
    "Black": "Black",
    "Latino_Hispanic": "White",
    "East Asian": "Asian",
    "Southeast Asian": "Asian",
    "Indian": "Indian",
    "Middle Eastern": "White",
}
RACE4_LABELS = ["White", "Black", "Asian", "Indian"]
AGE_GROUPS = ["0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "70+"]
NON_BINARY = "non-binary"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class Attributes:
    """Perceived attributes of one face, with the probabilities behind them."""

    gender: str
    gender_scores: list[float]
    race: str
    race_scores: list[float]
    age: str
    age_scores: list[float]

    @property
    def race4(self) -> str:
        return RACE4[self.race]


class AttributeClassifier(Protocol):
    name: str

    def classify(self, chips: list[np.ndarray]) -> list[Attributes]:
        """Attributes of each face chip (RGB uint8), in one batched pass."""
        ...


def _from_probabilities(gender: np.ndarray, race: np.ndarray, age: np.ndarray) -> list[Attributes]:
    return [
        Attributes(
            GENDER_LABELS[int(g.argmax())],
            g.tolist(),
            RACE_LABELS[int(r.argmax())],
            r.tolist(),
            AGE_GROUPS[int(a.argmax())],
            a.tolist(),
        )
        for g, r, a in zip(gender, race, age)
    ]


def _tensor(chips: list[np.ndarray], size: int, device: str) -> torch.Tensor:
    import torch.nn.functional as F

    batch = torch.from_numpy(np.stack(chips)).permute(0, 3, 1, 2).float().div(255)
    batch = F.interpolate(batch, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((batch - mean) / std).to(device)


class FairFaceClassifier:
    """FairFace's ResNet-34 (race 7, gender 2, age 9 logits)."""

    name = "fairface"

    def __init__(self, weights: str | Path, device: str = "cpu"):
        import torchvision

        self.device = device
        self.model = torchvision.models.resnet34(weights=None)
        self.model.fc = torch.nn.Linear(self.model.fc.in_features, 18)
        state = torch.load(weights_file(weights, (".pt", ".pth", ".bin")), map_location="cpu", weights_only=True)
        self.model.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
        self.model.eval().to(device)

    @torch.inference_mode()
    def classify(self, chips: list[np.ndarray]) -> list[Attributes]:
        if not chips:
            return []
        logits = self.model(_tensor(chips, 224, self.device)).float().cpu()
        race, gender, age = logits[:, :7].softmax(1), logits[:, 7:9].softmax(1), logits[:, 9:18].softmax(1)
        return _from_probabilities(gender.numpy(), race.numpy(), age.numpy())


def weights_file(weights: str | Path, suffixes: tuple[str, ...]) -> Path:
    """A weights file: the path itself, or the one file with a matching suffix in a folder."""
    path = Path(weights)
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.suffix in suffixes)
        if len(found) != 1:
            raise ConfigError(f"{path}: expected one weights file ({', '.join(suffixes)}), found {len(found)}")
        return found[0]
    if not path.is_file():
        raise ConfigError(f"weights {str(path)!r} not found")
    return path


CLIP_GENDER_PROMPTS = ["a photo of a man, male, masculine", "a photo of a woman, female, feminine"]
CLIP_RACE_PROMPTS = [
    f"a photo of a {group} person"
    for group in ["White", "Black", "Latino or Hispanic", "East Asian", "Southeast Asian", "Indian", "Middle Eastern"]
]
CLIP_AGE_PROMPTS = [
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
    """open_clip zero-shot classification against fixed attribute prompts, encoded once."""

    name = "clip"

    def __init__(self, model: str, pretrained: str | None = None, device: str = "cpu", margin: float | None = None):
        from pipelines.modeling.clip import load_open_clip

        self.model, self.preprocess, self.tokenizer = load_open_clip(model, pretrained, device)
        self.device, self.margin = device, margin
        with torch.inference_mode():
            self.text = {
                name: torch.nn.functional.normalize(
                    self.model.encode_text(self.tokenizer(prompts).to(device)).float(), dim=-1
                )
                for name, prompts in (
                    ("gender", CLIP_GENDER_PROMPTS),
                    ("race", CLIP_RACE_PROMPTS),
                    ("age", CLIP_AGE_PROMPTS),
                )
            }
        self.scale = float(self.model.logit_scale.detach().exp()) if hasattr(self.model, "logit_scale") else 100.0

    @torch.inference_mode()
    def classify(self, chips: list[np.ndarray]) -> list[Attributes]:
        from PIL import Image

        if not chips:
            return []
        pixels = torch.stack([self.preprocess(Image.fromarray(chip)) for chip in chips]).to(self.device)
        image = torch.nn.functional.normalize(self.model.encode_image(pixels).float(), dim=-1)
        probs = {name: (self.scale * image @ text.T).softmax(-1).cpu().numpy() for name, text in self.text.items()}
        out = _from_probabilities(probs["gender"], probs["race"], probs["age"])
        if self.margin is not None:
            for attributes, gender in zip(out, probs["gender"]):
                if abs(float(gender[0] - gender[1])) < self.margin:
                    attributes.gender = NON_BINARY
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


def age_group(age: float) -> str:
    """FairFace's age group of an age in years.

    Example:
        >>> age_group(1.5), age_group(35), age_group(70)
        ('0-2', '30-39', '70+')
    """
    bounds = [3, 10, 20, 30, 40, 50, 60, 70]
    return AGE_GROUPS[sum(age >= bound for bound in bounds)]


class DeepFaceClassifier:
    """deepface's `analyze` on pre-cut face chips (`detector_backend="skip"`)."""

    name = "deepface"
    MODELS = ("Age", "Gender", "Race")

    def __init__(self, models: dict[str, Any] | None = None):
        from deepface.modules import modeling

        if not hasattr(modeling, "cached_models"):
            modeling.cached_models = {task: {} for task in modeling.AVAILABLE_MODELS}
        for name, model in (models or {}).items():
            modeling.cached_models["facial_attribute"][name] = model  # stand-ins, as in the tests
        for name in self.MODELS:
            if modeling.cached_models["facial_attribute"].get(name) is None:
                try:
                    modeling.build_model(task="facial_attribute", model_name=name)
                except Exception as err:  # deepface downloads weights on first use; here that fails
                    raise ConfigError(
                        f"classifier='deepface': weights of its {name} model are missing and cannot be downloaded "
                        f"({type(err).__name__}); put them in $DEEPFACE_HOME/.deepface/weights"
                    ) from None

    def classify(self, chips: list[np.ndarray]) -> list[Attributes]:
        from deepface import DeepFace

        out = []
        for chip in chips:  # analyze takes one image; with detection skipped it is a single forward per model
            (result,) = DeepFace.analyze(
                chip[:, :, ::-1].copy(),
                actions=("age", "gender", "race"),
                detector_backend="skip",
                enforce_detection=False,
                silent=True,
            )
            gender = [result["gender"]["Man"] / 100, result["gender"]["Woman"] / 100]
            race = np.zeros(len(RACE_LABELS))
            for label, value in result["race"].items():
                race[RACE_LABELS.index(DEEPFACE_RACES[label])] += value / 100
            age = np.zeros(len(AGE_GROUPS))
            age[AGE_GROUPS.index(age_group(float(result["age"])))] = 1.0
            out.append(
                Attributes(
                    DEEPFACE_GENDERS[result["dominant_gender"]],
                    gender,
                    RACE_LABELS[int(race.argmax())],
                    race.tolist(),
                    age_group(float(result["age"])),
                    age.tolist(),
                )
            )
        return out


CLASSIFIERS = ("fairface", "clip", "deepface")


def load_classifier(name: str, weights: str | None, device: str = "cpu", **options: Any) -> AttributeClassifier:
    if name == "fairface":
        if not weights:
            raise ConfigError("classifier='fairface' needs classifier_model (weights path or model repo)")
        return FairFaceClassifier(weights, device)
    if name == "clip":
        if not weights:
            raise ConfigError("classifier='clip' needs classifier_model (an open_clip name, or a folder)")
        return ClipZeroShotClassifier(weights, options.get("pretrained"), device, options.get("margin"))
    if name == "deepface":
        return DeepFaceClassifier(options.get("models"))
    raise ConfigError(f"classifier={name!r}: allowed {', '.join(CLASSIFIERS)}")
