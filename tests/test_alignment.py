"""The CLIP-score evaluate module and the evaluate_alignment stage."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import datasets
import evaluate
import numpy as np
import pytest
import torch
from PIL import Image

from pipelines import build_tiny_model, evaluate_alignment, generate_images
from pipelines.artifacts.store import LocalStore
from pipelines.errors import ConfigError
from pipelines.modeling.clip import REFERENCE_CLIP, load_open_clip
from pipelines.modeling.tiny import build_tiny_open_clip

from .conftest import REPO_ROOT, LoadedByRuns, image_arguments, run_python

MODULE = str(REPO_ROOT / "spaces" / "clip_score")


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(build_tiny_open_clip(tmp_path_factory.mktemp("tiny-clip")))


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in range(5)]


TEXTS = ["a photo of a doctor", "a photo of a nurse", "a photo of a doctor", "a photo of a CEO", "a photo of a nurse"]


def direct_cosines(model_folder: str, images: list[Image.Image], texts: list[str]) -> np.ndarray:
    """The same computation written out plainly: one image and one text at a time."""
    model, preprocess, tokenizer = load_open_clip(model_folder)
    out = []
    with torch.no_grad():
        for image, text in zip(images, texts):
            a = model.encode_image(preprocess(image)[None]).float()
            b = model.encode_text(tokenizer([text])).float()
            out.append(torch.nn.functional.cosine_similarity(a, b).item())
    return np.array(out)


def test_scores_equal_a_direct_computation(tiny_clip: str, images: list) -> None:
    module = evaluate.load(MODULE)
    result = module.compute(predictions=images, references=TEXTS, model=tiny_clip, batch_size=2)
    expected = direct_cosines(tiny_clip, images, TEXTS)
    assert np.allclose(result["scores"], expected, atol=1e-5)
    assert result["mean"] == pytest.approx(expected.mean(), abs=1e-6)
    scaled = module.compute(predictions=images, references=TEXTS, model=tiny_clip, convention="torchmetrics")
    assert np.allclose(scaled["scores"], 100 * np.maximum(expected, 0), atol=1e-3)
    with pytest.raises(ValueError, match="convention='percent': allowed cosine, torchmetrics"):
        module.compute(predictions=images, references=TEXTS, model=tiny_clip, convention="percent")


def test_other_texts_score_against_one_encoding_of_each_image(tiny_clip: str, images: list) -> None:
    """Each image is encoded once however many texts it is scored against, and each set's scores are
    the very bytes a call with that set alone gives."""
    module = evaluate.load(MODULE)
    others = {"occupation": list(reversed(TEXTS)), "person": ["a photo of a person"] * len(TEXTS)}
    module.compute(predictions=images[:1], references=TEXTS[:1], model=tiny_clip)  # loads the model
    (clip, _, _) = next(iter(module.__dict__["_models"].values()))
    calls = []
    original = clip.encode_image
    clip.encode_image = lambda pixels: calls.append(len(pixels)) or original(pixels)
    try:
        together = module.compute(predictions=images, references=TEXTS, model=tiny_clip, batch_size=2,
                                  other_references=others)  # fmt: skip
        assert calls == [2, 2, 1]  # five images in batches of two, once
        for name, texts in {"": TEXTS, **others}.items():
            alone = module.compute(predictions=images, references=texts, model=tiny_clip, batch_size=2)
            assert (together["other"][name] if name else together)["scores"] == alone["scores"]
    finally:
        clip.encode_image = original
    expected = direct_cosines(tiny_clip, images, others["occupation"])
    assert np.allclose(together["other"]["occupation"]["scores"], expected, atol=1e-5)
    with pytest.raises(ValueError, match=r"other_references\['person'\]: 2 texts for 5 images"):
        module.compute(predictions=images, references=TEXTS, model=tiny_clip, other_references={"person": TEXTS[:2]})


def test_half_precision_scores_near_full_and_a_module_s_models_go_with_it(tiny_clip: str, images: list) -> None:
    """fp16 (the reference study's CLIP precision) moves a cosine by rounding only; the models a module
    loaded are its own, released with it (a class-level cache held them for the rest of the process)."""
    import gc
    import weakref

    module = evaluate.load(MODULE)
    full = np.array(module.compute(predictions=images, references=TEXTS, model=tiny_clip)["scores"])
    half = np.array(module.compute(predictions=images, references=TEXTS, model=tiny_clip, precision="fp16")["scores"])
    assert np.allclose(half, full, atol=2e-2) and not np.array_equal(half, full)
    with pytest.raises(ValueError, match="precision='bf8': allowed fp32, fp16"):
        module.compute(predictions=images, references=TEXTS, model=tiny_clip, precision="bf8")
    models = [weakref.ref(clip) for clip, _, _ in module._models.values()]
    assert len(models) == 2 and evaluate.load(MODULE).__dict__.get("_models") is None  # another module: none
    del module
    gc.collect()
    assert [ref() for ref in models] == [None, None]


class OpenClipForTorchmetrics:
    """open_clip behind the model/processor interface torchmetrics' CLIPScore calls."""

    def __init__(self, folder: str):
        self.model, self.preprocess, self.tokenizer = load_open_clip(folder)
        self.config = type("Config", (), {})()

    def to(self, device: torch.device) -> OpenClipForTorchmetrics:
        return self

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixel_values)

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.model.encode_text(input_ids)

    def __call__(
        self,
        images: list[torch.Tensor] | None = None,
        text: list[str] | None = None,
        return_tensors: str = "pt",
        padding: bool = True,
    ) -> dict[str, torch.Tensor]:
        if images is not None:
            pixels = [self.preprocess(Image.fromarray(image.permute(1, 2, 0).numpy())) for image in images]
            return {"pixel_values": torch.stack(pixels)}
        ids = self.tokenizer(text)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def test_agrees_with_torchmetrics_clipscore(tiny_clip: str, images: list) -> None:
    from torchmetrics.multimodal.clip_score import CLIPScore

    wrapper = OpenClipForTorchmetrics(tiny_clip)
    module = evaluate.load(MODULE)
    tensors = [torch.from_numpy(np.array(image)).permute(2, 0, 1) for image in images]
    for image, tensor, text in zip(images, tensors, TEXTS):  # per pair: 100 * max(cos, 0)
        metric = CLIPScore(model_name_or_path=lambda: (wrapper, wrapper))
        metric.update(tensor, text)
        ours = module.compute(predictions=[image], references=[text], model=tiny_clip, convention="torchmetrics")
        assert ours["scores"][0] == pytest.approx(metric.compute().item(), abs=1e-4)
    metric = CLIPScore(model_name_or_path=lambda: (wrapper, wrapper))
    metric.update(tensors, TEXTS)
    ours = module.compute(predictions=images, references=TEXTS, model=tiny_clip, convention="torchmetrics")
    assert ours["mean"] == pytest.approx(metric.compute().item(), abs=1e-4)  # the aggregate, clamped as torchmetrics


def test_clip_score_loads_in_a_fresh_process(tiny_clip: str) -> None:
    code = (
        "import evaluate; from PIL import Image; m = evaluate.load('spaces/clip_score'); "
        f"r = m.compute(predictions=[Image.new('RGB', (32, 32))], references=['a photo'], model={tiny_clip!r}); "
        "print(len(r['scores']))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "1"


def test_evaluate_alignment_stage_scores_every_language_against_english_texts(
    tiny_study: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    common = {"store_root": tiny_study["store_root"], "namespace": "study"}
    store = LocalStore(tiny_study["store_root"])
    loaded = LoadedByRuns(evaluate_alignment.EvaluateAlignment, monkeypatch)
    english = build_tiny_model.run(build_tiny_model.Arguments(**common, kind="open-clip", output_repo="english-clip"))
    multilingual = build_tiny_model.run(
        build_tiny_model.Arguments(**common, kind="open-clip", seed=1, output_repo="multilingual-clip")
    )
    images = generate_images.run(image_arguments(tiny_study, output_repo="align-images"))
    result = evaluate_alignment.run(
        evaluate_alignment.Arguments(
            **common,
            input=str(images),
            clip_model=str(english),
            clip_pretrained=None,
            multilingual_clip_model=str(multilingual),
            batch_size=3,
        )
    )
    folder = store.resolve(str(result), "dataset")
    german = datasets.load_dataset(str(folder), "de_eval_direct", split="train")
    assert german.num_rows == 8 and set(german["status"]) == {"ok"}
    images_de = datasets.load_dataset(str(store.resolve(str(images), "dataset")), "de_eval_direct", split="train")
    english_folder = str(store.resolve(str(english), "model"))
    pictures = [row["image"] for row in images_de]
    professions = images_de["profession"]
    # German images against the English texts, with the English CLIP, as the reference study scores them.
    indirect = direct_cosines(
        english_folder, pictures, [f"a photo of the face of a person who works as a {p}" for p in professions]
    )
    occupation = direct_cosines(english_folder, pictures, [f"a photo of the face of a {p}" for p in professions])
    person = direct_cosines(english_folder, pictures, ["a photo of the face of a person"] * 8)
    assert np.allclose(german["clip_en_indirect"], indirect, atol=1e-5)
    assert np.allclose(german["clip_en_occupation"], occupation, atol=1e-5)
    assert np.allclose(german["clip_en_person"], person, atol=1e-5)
    # The own German prompt with the multilingual CLIP: a separate column, another model's scale.
    own = direct_cosines(str(store.resolve(str(multilingual), "model")), pictures, images_de["prompt"])
    assert np.allclose(german["mclip_own_prompt"], own, atol=1e-5)
    assert not np.allclose(german["mclip_own_prompt"], direct_cosines(english_folder, pictures, images_de["prompt"]))
    summary = datasets.load_dataset(str(folder), "summary", split="train").to_pandas()
    overall = summary[(summary["language"] == "de") & (summary["occupation"] == "__all__")].iloc[0]
    assert overall["num_images"] == 8 and overall["clip_en_person"] == pytest.approx(person.mean())
    assert overall["clip_en_person_std"] == pytest.approx(person.std())
    doctor = summary[(summary["language"] == "de") & (summary["occupation"] == "doctor")].iloc[0]
    mask = np.array(professions) == "doctor"
    assert doctor["mclip_own_prompt"] == pytest.approx(own[mask].mean())
    card = (folder / "README.md").read_text()
    assert "Multilingual CLIP, own prompt (its own scale)" in card and "English CLIP, English texts" in card

    # A second run in the same process with the models swapped scores with its own models.
    assert loaded.alive() == []
    swapped = evaluate_alignment.run(
        evaluate_alignment.Arguments(
            **common, input=str(images), clip_model=str(multilingual), clip_pretrained=None,
            multilingual_clip_model=str(english), batch_size=3, output_repo="align-swapped",
        )
    )  # fmt: skip
    again = datasets.load_dataset(str(store.resolve(str(swapped), "dataset")), "de_eval_direct", split="train")
    assert np.allclose(again["mclip_own_prompt"], direct_cosines(english_folder, pictures, images_de["prompt"]))
    assert not np.allclose(again["clip_en_person"], person)
    assert loaded.alive() == [] and len(loaded.refs) >= 2

    # The reference study's choices: its texts, its CLIP precision, its average of occupation means.
    referenced = evaluate_alignment.run(
        evaluate_alignment.Arguments(
            **common, input=str(images), clip_model=str(english), clip_pretrained=None, batch_size=3,
            clip_texts="reference", clip_precision="fp16", average="occupations", output_repo="align-reference",
        )
    )  # fmt: skip
    folder = store.resolve(str(referenced), "dataset")
    half = datasets.load_dataset(str(folder), "de_eval_direct", split="train")
    assert np.allclose(half["clip_en_person"], person, atol=2e-2) and half["clip_en_person"] != list(person)
    summary = datasets.load_dataset(str(folder), "summary", split="train").to_pandas()
    german = summary[summary["language"] == "de"]
    occupations = german[german["occupation"] != "__all__"]
    overall = german[german["occupation"] == "__all__"].iloc[0]
    assert overall["clip_en_person"] == pytest.approx(occupations["clip_en_person"].mean())
    assert overall["clip_en_person_std"] == pytest.approx(occupations["clip_en_person"].std(ddof=0))
    card = (folder / "README.md").read_text()
    assert "(`--clip_texts reference`)" in card and "CLIP in fp16" in card and "(`--average occupations`)" in card


def test_reference_texts_keep_the_reference_s_article() -> None:
    """ "a accountant", as the reference study's CLIP texts read; the corrected texts say "an"."""
    from pipelines.prompting.grammar import load_grammar

    stage = evaluate_alignment.EvaluateAlignment()
    stage.indirect, stage.grammar = {}, load_grammar("en")
    for reference, text in (
        (True, "a photo of the face of a accountant"),
        (False, "a photo of the face of an accountant"),
    ):
        stage.reference_texts = reference
        assert stage.texts("accountant")["clip_en_occupation"] == text
    with pytest.raises(ConfigError, match="clip_texts='magbig': allowed corrected, reference"):
        evaluate_alignment.Arguments(input="x", clip_texts="magbig")


def test_alignment_defaults_to_the_reference_clip_and_refuses_an_activation_mismatch(tiny_study: dict) -> None:
    args = evaluate_alignment.Arguments(store_root=tiny_study["store_root"], namespace="study")
    assert (args.clip_model, args.clip_pretrained) == REFERENCE_CLIP == ("ViT-L-14-quickgelu", "openai")
    assert args.multilingual_clip_model is None
    with pytest.raises(ConfigError, match="trained with QuickGELU but 'ViT-L-14' runs GELU; use 'ViT-L-14-quickgelu'"):
        evaluate_alignment.Arguments(
            store_root=tiny_study["store_root"], clip_model="ViT-L-14", clip_pretrained="openai"
        )
    # A model built with QuickGELU and weights trained with GELU is the same mistake the other way round.
    with pytest.raises(ConfigError, match="trained with GELU but 'ViT-L-14-quickgelu' runs QuickGELU"):
        evaluate_alignment.Arguments(
            store_root=tiny_study["store_root"], clip_model="ViT-L-14-quickgelu", clip_pretrained="laion2b_s32b_b82k"
        )


def test_the_toolkit_loads_clip_with_the_metric_module_s_own_loader() -> None:
    """One loader: the stages' CLIP comes from the file the standalone metric module loads with, with
    its ValueErrors as the toolkit's one-line ConfigErrors; reading it imports no `evaluate`."""
    import inspect

    from pipelines.modeling import clip
    from spaces.clip_score import clip_score

    module = clip.loader_module()
    assert Path(inspect.getsourcefile(clip_score.load_open_clip)).resolve() == clip.LOADER_FILE.resolve()
    assert Path(module.__file__).resolve() == clip.LOADER_FILE.resolve()
    assert clip.REFERENCE_CLIP == clip_score.REFERENCE_CLIP
    fresh = run_python("-c", "import sys; from pipelines.modeling import clip; "
                       "clip.check_activation('ViT-L-14-quickgelu', 'openai'); "
                       "print(sorted({'evaluate', 'open_clip'} & set(sys.modules)))")  # fmt: skip
    assert fresh.returncode == 0 and fresh.stdout.split() == ["['open_clip']"], fresh.stderr[-2000:]
    with pytest.raises(ValueError, match="trained with QuickGELU"):
        module.check_activation("ViT-L-14", "openai")
    with pytest.raises(ConfigError, match="trained with QuickGELU"):
        clip.check_activation("ViT-L-14", "openai")
    with pytest.raises(ConfigError, match="could not be loaded"):
        clip.load_open_clip("no-such-open-clip-model")
