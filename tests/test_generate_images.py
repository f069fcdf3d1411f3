"""Image generation: deterministic and paired across languages (one or two processes, and resuming
after a kill, are tested for every sharded stage in test_sharded_stages.py)."""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import datasets
import pyarrow.parquet as pq
import pytest

from pipelines import collect_datasets, generate_images
from pipelines.artifacts.store import LocalStore
from pipelines.errors import ConfigError

from .conftest import LoadedByRuns, data_digest, image_arguments


def test_images_dataset_deterministic_and_paired(tiny_study: dict) -> None:
    store = LocalStore(tiny_study["store_root"])
    first = generate_images.run(image_arguments(tiny_study, output_repo="images-a"))
    second = generate_images.run(image_arguments(tiny_study, output_repo="images-b"))
    folder_a, folder_b = store.resolve(str(first), "dataset"), store.resolve(str(second), "dataset")
    assert data_digest(folder_a) == data_digest(folder_b)  # same recipe twice: identical bytes
    assert (
        "drawn on a cpu generator, weights in auto (fp16 on a GPU, fp32 on a CPU)"
        in (folder_a / "README.md").read_text()
    )
    assert len(data_digest(folder_a)) == 4  # 2 configs x 8 images in shards of 4

    english = datasets.load_dataset(str(folder_a), "en_eval_direct", split="train")
    german = datasets.load_dataset(str(folder_a), "de_eval_direct", split="train")
    assert english.num_rows == german.num_rows == 4 * 2
    assert english["prompt_id"] == german["prompt_id"] and english["seed"] == german["seed"]  # paired
    assert english["sample_index"] == [0, 1] * 4
    assert len(set(english["seed"])) == 8
    assert german[0]["prompt"] == "ein Foto des Gesichts eines Arztes"
    image = german[0]["image"]
    assert image.size == (64, 64) and image.mode == "RGB"
    row = english[0]
    assert row["model"] == tiny_study["model"]  # pinned: repo and revision
    assert row["model_revision"] == tiny_study["model"].partition("@")[2]
    assert row["scheduler"] == "PNDMScheduler"  # the model's own, by default
    assert row["seed"] == generate_images.image_seed(0, row["prompt_id"], 0)
    assert row["num_inference_steps"] == 2 and row["profession"] == "doctor"


@pytest.mark.parametrize("native", [False, True])
def test_bfloat16_on_a_cpu_without_it_says_it_will_be_slow_once(
    tiny_study: dict, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, native: bool
) -> None:
    """--dtype bfloat16 on a CPU that does not compute in it (AVX2 only: oneDNN converts every operand)
    runs several times slower than float32, so the stage says so, once however many copies of the
    model its worker threads open; on a CPU with native bfloat16, and in float32, nothing is said."""
    import torch

    from pipelines.modeling import diffusion as stage

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native)
    monkeypatch.setattr(stage, "_WARNED", set())
    # Two images in two shards, one step: a copy of the model per worker, and little bfloat16 to wait on
    # on a CPU that has none (float32 and the other devices are the next test's).
    tiny = {"languages": ["en"], "max_prompts": 2, "num_images": 1, "num_inference_steps": 1, "images_per_shard": 1}
    generate_images.run(image_arguments(tiny_study, output_repo=f"images-bf16-{native}", dtype="bfloat16",
                                        cpu_workers=2, **tiny))  # fmt: skip
    warnings = [line for line in capsys.readouterr().err.splitlines() if "without native bfloat16" in line]
    if native:
        assert warnings == []
    else:
        (line,) = warnings
        assert line.startswith("warning: dtype=bfloat16 on a CPU without native bfloat16 (")
        assert "several times slower than float32" in line


def test_the_bfloat16_warning_is_for_bfloat16_on_a_cpu_only(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import torch

    from pipelines.modeling import diffusion as stage

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    monkeypatch.setattr(stage, "_WARNED", set())
    stage.warn_if_bfloat16_is_emulated(torch.float32, "cpu", "dtype=float32")
    stage.warn_if_bfloat16_is_emulated(torch.float16, "cpu", "dtype=float16")
    stage.warn_if_bfloat16_is_emulated(torch.bfloat16, "cuda", "dtype=bfloat16")
    assert capsys.readouterr().err == ""
    stage.warn_if_bfloat16_is_emulated(torch.bfloat16, "cpu", "mixed_precision=bf16")
    stage.warn_if_bfloat16_is_emulated(torch.bfloat16, "cpu", "mixed_precision=bf16")
    stage.warn_if_bfloat16_is_emulated(torch.bfloat16, "cpu", "dtype=bfloat16")
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" on a CPU")[0] for line in lines] == [
        "warning: mixed_precision=bf16",
        "warning: dtype=bfloat16",
    ]


def test_what_determinism_holds(tiny_study: dict) -> None:
    """Exactly what the README claims: with the same batch size and threads an image's bytes do not
    depend on which prompts share its batch; another batch size may move a few pixels by 1/255."""
    import numpy as np

    store = LocalStore(tiny_study["store_root"])

    def german(output_repo: str, **options: Any) -> datasets.Dataset:
        published = generate_images.run(image_arguments(tiny_study, output_repo=output_repo, **options))
        return datasets.load_dataset(str(store.resolve(str(published), "dataset")), "de_eval_direct", split="train")

    # Batches hold one language's prompts (a shard is one config), of several professions. Two images
    # each of doctor, nurse, CEO, teacher in shards of 6 and batches of 3: [d d n] [n C C] [t t]; without
    # the doctor: [n n C] [C t t]. The nurse's and the CEO's images share calls of 3 with other mates
    # in each run, and are the same bytes. (The sizes must match: a call of 1 against a call of 3 is
    # another batch size, which may move a pixel by 1/255 on some CPUs and not on others.)
    options = {"images_per_shard": 6, "batch_size": 3}
    mixed = german("determinism-mixed", **options)
    alone = german("determinism-alone", professions=["nurse", "CEO", "teacher"], **options)
    batches = [tuple(zip(run["profession"][i : i + 3], run["sample_index"][i : i + 3]))
               for run in (mixed, alone) for i in range(0, len(run), 3)]  # fmt: skip
    assert (("doctor", 0), ("doctor", 1), ("nurse", 0)) in batches  # the comparison is a real one
    assert (("nurse", 0), ("nurse", 1), ("CEO", 0)) in batches
    for profession in ("nurse", "CEO"):
        assert [r["image"].tobytes() for r in mixed if r["profession"] == profession] == [
            r["image"].tobytes() for r in alone if r["profession"] == profession
        ]
    assert set(alone["profession"]) == {"nurse", "CEO", "teacher"}
    alone = german("determinism-german", languages=["de"])
    seeds = german("determinism-seeds", seeds="index")
    assert seeds["seed"] == [0, 1] * 4  # the reference evaluation's seeds 0..N-1 for every prompt
    one_by_one = german("determinism-batch-1", languages=["de"], batch_size=1)
    difference = np.abs(
        np.stack([np.asarray(r["image"], dtype=int) for r in one_by_one])
        - np.stack([np.asarray(r["image"], dtype=int) for r in alone])
    )
    assert difference.max() <= 2  # same seeds; only batched float sums round differently


def test_two_models_with_sega_in_one_process_each_publish_their_own_images(
    tiny_study: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run is a value: the SEGA pipeline one run builds goes with it. Run in one process, as a recipe
    does: model A, then model B, then A again into another repo. B's images are B's (not A's), and
    A's second run makes A's bytes again; the module's STAGE keeps nothing of any run."""
    from pipelines import build_tiny_model

    common = {"store_root": tiny_study["store_root"], "namespace": "study"}
    other = build_tiny_model.run(
        build_tiny_model.Arguments(**common, input=tiny_study["prompts"], seed=7, output_repo="tiny-sega-other")
    )
    store = LocalStore(tiny_study["store_root"])
    loaded = LoadedByRuns(generate_images.GenerateImages, monkeypatch)
    made, pixels = {}, {}
    for name, model in [("a", tiny_study["model"]), ("b", str(other)), ("a-again", tiny_study["model"])]:
        arguments = image_arguments(tiny_study, model=model, interventions=["sega"], output_repo=f"sega-{name}",
                                    guidance_scale=3.0)  # fmt: skip
        folder = store.resolve(str(generate_images.run(arguments)), "dataset")
        made[name] = data_digest(folder)
        # The images alone (the rows also name the model, which differs whatever the pixels).
        pixels[name] = [
            row["image"]["bytes"] for row in pq.read_table(next(folder.glob("data/*-sega/*.parquet"))).to_pylist()
        ]
        assert vars(generate_images.STAGE) == {}, name
        assert loaded.alive() == [], name  # the pipeline and its SEGA twin went with the run
    assert made["a-again"] == made["a"]
    assert pixels["a"] and all(b != a for a, b in zip(pixels["a"], pixels["b"]))


def stage_names() -> list[str]:
    from pipelines.run import STAGES

    return sorted(set(STAGES) - {"train_text_to_image"})


@pytest.mark.parametrize("stage", stage_names())
def test_no_stage_keeps_run_state_on_its_module(stage: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Loaded models and caches live on a run's own instance: the module-level STAGE has none (after
    every run this session made before this test), and `run` hands `execute` a fresh one each time."""
    import importlib

    from pipelines.harness import stage as harness
    from pipelines.run import STAGES

    module = importlib.import_module(STAGES[stage])
    assert vars(module.STAGE) == {}
    given = []

    def record(instance: Any, args: Any) -> None:
        given.append(instance)
        raise SystemExit("recorded")

    monkeypatch.setattr(harness, "execute", record)
    for _ in range(2):
        with pytest.raises(SystemExit, match="recorded"):
            module.STAGE.run(SimpleNamespace(output_repo="x"))
    assert len(given) == 2 and module.STAGE not in given and given[0] is not given[1]
    assert all(type(instance) is type(module.STAGE) for instance in given)


def test_bad_generation_arguments(tiny_study: dict) -> None:
    with pytest.raises(ConfigError, match="variants: unknown 'portrait'"):
        image_arguments(tiny_study, variants=["portrait"])
    with pytest.raises(ConfigError, match="languages: fr not in the prompts dataset"):
        generate_images.run(image_arguments(tiny_study, languages=["fr"], output_repo="never"))
    with pytest.raises(ConfigError, match="professions: 'astronaut' not in the prompts dataset"):
        generate_images.run(image_arguments(tiny_study, professions=["astronaut"], output_repo="never"))
    import torch

    if not torch.cuda.is_available():  # the reference's CUDA noise needs a CUDA device; refused before any image
        with pytest.raises(ConfigError, match="generator_device='cuda': this machine has no CUDA device"):
            generate_images.run(image_arguments(tiny_study, generator_device="cuda", output_repo="never"))
    with pytest.raises(ConfigError, match="generator_device='mps': allowed cpu, cuda"):
        image_arguments(tiny_study, generator_device="mps")
    assert not LocalStore(tiny_study["store_root"]).exists("study/never", "dataset")


@pytest.mark.slow
def test_collect_datasets_captions_gendered_images_with_their_neutral_twins(tiny_study: dict) -> None:
    store = LocalStore(tiny_study["store_root"])
    images = generate_images.run(
        image_arguments(tiny_study, output_repo="train-images", languages=["en"], variants=["gendered"], num_images=1)
    )
    common = {"store_root": tiny_study["store_root"], "namespace": "study", "prompts": tiny_study["prompts"]}
    prompts = {
        (lang, r["prompt_id"]): r
        for lang in ("en", "de", "zh")
        for r in datasets.load_dataset(str(store.resolve(tiny_study["prompts"], "dataset")), lang, split="train")
    }
    n_images = 4 * 3 * 2 * 2  # professions x ages x genders x places (one style, one dressing)
    # The default is the reference study's debiasing signal: the gender-neutral twin of each prompt.
    default = collect_datasets.run(
        collect_datasets.Arguments(**common, images=str(images), caption_languages=["all"], output_repo="train-all")
    )
    train = datasets.load_dataset(str(store.resolve(str(default), "dataset")), split="train")
    assert train.num_rows == n_images * 3  # every English image once per caption language
    assert sorted(set(train["caption_language"])) == ["de", "en", "zh"]
    assert set(train["caption_variant"]) == {"neutral"} and set(train["gender"]) == {"neutral"}
    assert set(train["image_gender"]) == {"male", "female"}
    card = (store.resolve(str(default), "dataset") / "README.md").read_text(encoding="utf-8")
    # The tiny study's prompts were translated with the default form; the card says which, per language.
    assert "captions' gender-neutral form (from their prompts' card): unmarked (en, zh), inclusive (de)" in card
    assert "caption_forms:" in card
    for row in train.select(range(0, train.num_rows, 5)):
        caption = prompts[(row["caption_language"], row["prompt_id"])]
        assert row["text"] == caption["prompt"] and caption["variant"] == "neutral"
        image_prompt = row["image_prompt"]
        twin = prompts[("en", row["prompt_id"])]["prompt"]
        assert twin == image_prompt.replace(
            f" {row['image_gender']} ", " "
        )  # "a young male doctor" -> "a young doctor"
        assert row["image"].size == (64, 64)
    same = collect_datasets.run(
        collect_datasets.Arguments(
            **common, images=str(images), caption_languages=["de"], caption_variant="same", output_repo="train-same"
        )
    )
    same_rows = datasets.load_dataset(str(store.resolve(str(same), "dataset")), split="train")
    assert same_rows.num_rows == n_images and set(same_rows["caption_variant"]) == {"gendered"}
    assert same_rows["gender"] == same_rows["image_gender"]
    assert all(
        "Ärztin" in t or "Arztes" in t or "doctor" not in i
        for t, i in zip(same_rows["text"], same_rows["image_prompt"])
    )
    mixed = collect_datasets.run(
        collect_datasets.Arguments(
            **common, images=str(images), caption_languages=["en"], caption_variant="mixed", gendered_share=0.5,
            output_repo="train-mixed",
        )
    )  # fmt: skip
    mixed_rows = datasets.load_dataset(str(store.resolve(str(mixed), "dataset")), split="train")
    own = mixed_rows["caption_variant"].count("gendered")
    assert 0.3 * n_images < own < 0.7 * n_images  # about half keep their own gendered prompt
    with pytest.raises(ConfigError, match="caption_variant='neutral-ish': allowed neutral, same, mixed"):
        collect_datasets.Arguments(**common, caption_variant="neutral-ish")
    # Occupations held out of the training set; one that the prompts lack is one line.
    two = collect_datasets.run(
        collect_datasets.Arguments(**common, images=str(images), professions=["nurse", "CEO"], output_repo="train-two")
    )
    two_rows = datasets.load_dataset(str(store.resolve(str(two), "dataset")), split="train")
    assert set(two_rows["profession"]) == {"nurse", "CEO"} and two_rows.num_rows == n_images // 2
    assert (
        "occupations nurse, CEO only (the others held out)"
        in (store.resolve(str(two), "dataset") / "README.md").read_text()
    )
    with pytest.raises(ConfigError, match="professions: 'astronaut' not in"):
        collect_datasets.run(collect_datasets.Arguments(**common, images=str(images), professions=["astronaut"]))


def test_collect_datasets_leaves_out_an_image_that_cannot_be_decoded_and_says_so(
    tiny_study: dict, tmp_path: Path
) -> None:
    import pyarrow as pa

    store = LocalStore(tiny_study["store_root"])
    images = generate_images.run(
        image_arguments(tiny_study, output_repo="train-images", languages=["en"], variants=["gendered"], num_images=1)
    )
    folder = tmp_path / "broken-images"
    shutil.copytree(store.resolve(str(images), "dataset"), folder)
    shard = next((folder / "data" / "en_gendered").glob("*.parquet"))
    table = pq.read_table(shard).to_pylist()
    table[0]["image"] = {"bytes": b"not a png", "path": None}
    shard.chmod(0o644)
    pq.write_table(pa.Table.from_pylist(table, schema=pq.read_schema(shard)), shard)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    broken = "study/broken-images@" + store.push(folder, "study/broken-images", "dataset", "one image broken")
    common = {"store_root": tiny_study["store_root"], "namespace": "study", "prompts": tiny_study["prompts"]}
    made = collect_datasets.run(collect_datasets.Arguments(**common, images=broken, output_repo="train-broken"))
    rows = datasets.load_dataset(str(store.resolve(str(made), "dataset")), split="train")
    assert rows.num_rows == 4 * 3 * 2 * 2 - 1
    assert (
        "1 image(s) of the source could not be decoded"
        in (store.resolve(str(made), "dataset") / "README.md").read_text()
    )


def with_tiny_safety_checker(model: Path, folder: Path, flag_everything: bool) -> Path:
    """A copy of a model folder with a tiny StableDiffusionSafetyChecker (random weights) beside it,
    its thresholds set so that it flags every image or none (a cosine lies in [-1, 1])."""
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    shutil.copytree(model, folder)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    small = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 2}
    config = CLIPConfig(
        text_config=small, vision_config={**small, "image_size": 32, "patch_size": 16}, projection_dim=16
    )
    torch.manual_seed(0)
    checker = StableDiffusionSafetyChecker(config)
    threshold = -1.5 if flag_everything else 1.5
    with torch.no_grad():
        checker.concept_embeds_weights.fill_(threshold)
        checker.special_care_embeds_weights.fill_(threshold)
    checker.save_pretrained(folder / "safety_checker")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        folder / "feature_extractor"
    )
    return folder


def test_the_safety_checker_blacks_out_what_it_flags_and_the_card_counts_it(tiny_study: dict, tmp_path: Path) -> None:
    """Off by default (the raw output); on, the model's own checker runs as the reference ran it: a
    flagged image is black, its row says so and the card counts it; a model without one is refused."""
    import numpy as np
    from PIL import Image

    store = LocalStore(tiny_study["store_root"])
    model = store.resolve(tiny_study["model"], "model")
    common = {"languages": ["en"], "professions": ["doctor"]}
    for flag_everything in (True, False):
        folder = with_tiny_safety_checker(model, tmp_path / f"checked-{flag_everything}", flag_everything)
        arguments = image_arguments(
            tiny_study, **common, model=str(folder), safety_checker=True, output_repo=f"checked-{flag_everything}"
        )
        published = store.resolve(str(generate_images.run(arguments)), "dataset")
        rows = pq.read_table(next(published.glob("data/*/*.parquet"))).to_pylist()
        pixels = [np.asarray(Image.open(io.BytesIO(row["image"]["bytes"]))) for row in rows]
        assert [row["safety_flagged"] for row in rows] == [flag_everything] * 2
        assert all((p.max() == 0) == flag_everything for p in pixels)  # black exactly where flagged
        card = (published / "README.md").read_text(encoding="utf-8")
        assert f"| `en_eval_direct` | 2 | {2 if flag_everything else 0} |" in card
    unchecked = store.resolve(
        str(generate_images.run(image_arguments(tiny_study, **common, output_repo="raw"))), "dataset"
    )
    assert {row["safety_flagged"] for row in pq.read_table(next(unchecked.glob("data/*/*.parquet"))).to_pylist()} == {
        None
    }
    with pytest.raises(ConfigError, match="safety_checker: model .* has no safety checker"):
        generate_images.run(image_arguments(tiny_study, **common, safety_checker=True, output_repo="never"))


def test_the_card_says_when_the_model_learnt_another_neutral_form_than_its_prompts(tmp_path: Path) -> None:
    """A fine-tune whose captions taught the inclusive German form, asked for masculine-generic German
    prompts: the images card says so, with the dry run's words; where the forms agree, or the model
    is not the toolkit's fine-tune, it says nothing."""
    from pipelines.artifacts.cards import model_card
    from pipelines.artifacts.inputs import ModelInput

    def run_with(model_metadata: dict | None, forms: dict[str, str]) -> Any:
        folder = tmp_path / f"model-{len(list(tmp_path.iterdir()))}"
        folder.mkdir()
        if model_metadata is not None:
            model_card(title="m", description="d", languages=["en"], **model_metadata).save(folder / "README.md")
        prompts = SimpleNamespace(config_info=lambda language: {"language": language, "neutral_form": forms[language]})
        return SimpleNamespace(
            args=SimpleNamespace(languages=list(forms)),
            dataset=lambda name: prompts,
            models={"model": ModelInput("m", "folder", "folder:m@sha256:0", folder)},
            store=LocalStore(tmp_path / "store"),
        )

    taught = {"lineage": {"stage": "train_text_to_image"}, "caption_forms": {"en": "unmarked", "de": "inclusive"}}
    note = generate_images.GenerateImages.form_note(run_with(taught, {"en": "unmarked", "de": "masculine-generic"}))
    assert note == [
        "The model learnt from captions in another gender-neutral form than these prompts use (de inclusive "
        "captions, masculine-generic prompts): in those languages it is evaluated on a form it was not taught."
    ]
    assert generate_images.GenerateImages.form_note(run_with(taught, {"en": "unmarked", "de": "inclusive"})) == []
    base = {"lineage": {"stage": "build_tiny_model"}, "caption_forms": taught["caption_forms"]}
    assert generate_images.GenerateImages.form_note(run_with(base, {"de": "masculine-generic"})) == []
    assert generate_images.GenerateImages.form_note(run_with(None, {"de": "masculine-generic"})) == []


def test_the_face_filter_note_says_what_the_reference_s_filter_did() -> None:
    """MAGBIG and the reference check every image, keeping the first N passing seeds of one running
    count per prompt; the toolkit's image i tries its own seeds. Neither is said the other way round."""
    note = " ".join(
        generate_images.GenerateImages.face_filter_note(SimpleNamespace(face_filter="dlib", max_attempts=10))
    )
    assert "Every image is checked, as in MAGBIG and the reference evaluation" in note
    assert "first N passing seeds of one running count per prompt" in note and "image i tries its own seeds" in note
    doc = " ".join(generate_images.__doc__.split())
    assert "after the first seed" not in note and "after the first seed" not in doc
    assert "one running count per prompt" in doc and "image i tries its own seeds" in doc
