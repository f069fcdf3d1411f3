"""The fine-tuning script, launched as users launch it, on the tiny AltDiffusion and the tiny Stable Diffusion."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

from pipelines import build_tiny_model, collect_datasets, generate_images
from pipelines.artifacts.store import LocalStore
from pipelines.errors import ConfigError
from pipelines.modeling.diffusion import LORA_WEIGHTS, load_pipeline
from training.train_text_to_image import TrainArguments

from .conftest import REPO_ROOT, image_arguments

SCRIPT = str(REPO_ROOT / "training" / "train_text_to_image.py")


@pytest.fixture(scope="module")
def training_study(tiny_study: dict) -> dict:
    """The session study plus a tiny Stable Diffusion and a small training dataset."""
    common = {"store_root": tiny_study["store_root"], "namespace": "study"}
    sd = build_tiny_model.run(
        build_tiny_model.Arguments(**common, input=tiny_study["prompts"], kind="stable-diffusion")
    )
    images = generate_images.run(
        image_arguments(
            tiny_study,
            output_repo="train-source",
            languages=["en"],
            variants=["gendered"],
            max_prompts=8,
            num_images=1,
        )
    )
    train = collect_datasets.run(
        collect_datasets.Arguments(
            **common,
            prompts=tiny_study["prompts"],
            images=str(images),
            caption_languages=["en", "de"],
            output_repo="train-small",
        )
    )
    return {**tiny_study, "sd": str(sd), "train": str(train)}


def train(study: dict, model: str, output_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        SCRIPT,
        "--store_root",
        study["store_root"],
        "--namespace",
        "study",
        "--pretrained_model_name_or_path",
        model,
        "--dataset_name",
        study["train"],
        "--resolution",
        "64",
        "--center_crop",
        "--train_batch_size",
        "4",
        "--learning_rate",
        "1e-3",
        "--output_dir",
        str(output_dir),
        *extra,
    ]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def generate_nurse(study: dict, model: str) -> datasets.Dataset:
    """One German nurse image from `model`, made through the generation stage by repo id."""
    images = generate_images.run(
        image_arguments(
            study, model=model, output_repo=f"images-{model}", languages=["de"], num_images=1, professions=["nurse"]
        )
    )
    folder = LocalStore(study["store_root"]).resolve(str(images), "dataset")
    return datasets.load_dataset(str(folder), "de_eval_direct", split="train")


def state(output_dir: Path) -> dict:
    return json.loads((output_dir / "trainer_state.json").read_text())


def test_full_finetune_checkpoints_resume_and_generate(training_study: dict, tmp_path: Path) -> None:
    out = tmp_path / "full"
    train(
        training_study,
        training_study["model"],
        out,
        "--max_train_steps",
        "4",
        "--checkpointing_steps",
        "2",
        "--checkpoints_total_limit",
        "1",
        "--output_repo",
        "debiased",
        "--snr_gamma",
        "5.0",
        "--noise_offset",
        "0.1",
        "--use_ema",
        "--lr_scheduler",
        "polynomial",
    )
    first = state(out)
    assert first["global_step"] == 4
    assert [entry["step"] for entry in first["log_history"]] == [1, 2, 3, 4]
    assert all(math.isfinite(entry["loss"]) for entry in first["log_history"])
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4"]  # pruned to the limit

    # Resume from the latest checkpoint: the step count continues from 4.
    train(
        training_study,
        training_study["model"],
        out,
        "--max_train_steps",
        "6",
        "--checkpointing_steps",
        "2",
        "--checkpoints_total_limit",
        "1",
        "--output_repo",
        "debiased-resumed",
        "--snr_gamma",
        "5.0",
        "--noise_offset",
        "0.1",
        "--use_ema",
        "--resume_from_checkpoint",
        "latest",
    )
    resumed = state(out)
    assert resumed["global_step"] == 6
    assert [entry["step"] for entry in resumed["log_history"]] == [5, 6]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-6"]

    store = LocalStore(training_study["store_root"])
    folder = store.resolve("study/debiased", "model")
    assert (folder / "model_index.json").is_file() and (folder / "unet").is_dir()
    card = (folder / "README.md").read_text()
    assert "base_model: study/tiny-altdiffusion" in card and "train-small" in card
    # The fine-tuned model generates through the generation stage, by repo id.
    rows = generate_nurse(training_study, "debiased")
    assert rows.num_rows == 1 and rows[0]["model"] == "study/debiased" and rows[0]["image"].size == (64, 64)


def test_lora_on_tiny_stable_diffusion_loads_and_changes_output(training_study: dict, tmp_path: Path) -> None:
    out = tmp_path / "lora"
    train(
        training_study,
        training_study["sd"],
        out,
        "--max_train_steps",
        "3",
        "--use_lora",
        "--rank",
        "4",
        "--learning_rate",
        "5e-2",
        "--cache_latents",
        "--random_flip",
        "--output_repo",
        "sd-lora",
        "--validation_prompts",
        "a photo of the face of a nurse",
        "ein Foto des Gesichts eines Arztes",
        "--validation_steps_per_image",
        "2",
    )
    assert all(math.isfinite(entry["loss"]) for entry in state(out)["log_history"])
    store = LocalStore(training_study["store_root"])
    folder = store.resolve("study/sd-lora", "model")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", LORA_WEIGHTS, "validation"]
    assert sorted(p.name for p in (folder / "validation").iterdir()) == ["00.png", "01.png"]

    base, _ = load_pipeline(training_study["sd"], store, scheduler="default")
    tuned, info = load_pipeline("study/sd-lora", store, scheduler="default")
    assert info["model"] == "study/sd-lora"
    assert type(tuned).__name__ == "StableDiffusionPipeline"

    def image(pipe) -> np.ndarray:
        generator = torch.Generator().manual_seed(0)
        return np.asarray(pipe("a photo of the face of a nurse", num_inference_steps=2, generator=generator).images[0])

    assert np.abs(image(base).astype(int) - image(tuned).astype(int)).max() > 0  # the adapter changes the output
    with torch.no_grad():
        unchanged, _ = load_pipeline(training_study["sd"], store, scheduler="default")
        assert np.array_equal(image(base), image(unchanged))  # and the difference is the adapter's, not noise


def text_features(pipe, text: str) -> torch.Tensor:
    from training.train_text_to_image import encode_text

    tokens = pipe.tokenizer(
        [text], padding="max_length", max_length=pipe.tokenizer.model_max_length, return_tensors="pt"
    )
    with torch.no_grad():
        return encode_text(pipe.text_encoder, tokens.input_ids, tokens.attention_mask)


def test_lora_with_text_encoder_on_tiny_altdiffusion(training_study: dict, tmp_path: Path) -> None:
    out = tmp_path / "lora-te"
    train(
        training_study,
        training_study["model"],
        out,
        "--max_train_steps",
        "2",
        "--use_lora",
        "--rank",
        "4",
        "--train_text_encoder",
        "--learning_rate",
        "5e-2",
        "--output_repo",
        "ad-lora-te",
    )
    store = LocalStore(training_study["store_root"])
    folder = store.resolve("study/ad-lora-te", "model")
    assert {"text_encoder_lora.safetensors", "text_encoder_lora_config.json", LORA_WEIGHTS} <= {
        p.name for p in folder.iterdir()
    }
    base, _ = load_pipeline(training_study["model"], store)
    tuned, _ = load_pipeline("study/ad-lora-te", store)
    assert type(tuned.text_encoder).__name__ == "RobertaSeriesModelWithTransformation"
    text = "ein Foto des Gesichts einer Person, die als Pflegekraft arbeitet"
    assert not torch.allclose(text_features(base, text), text_features(tuned, text))  # the encoder's adapter is on
    rows = generate_nurse(training_study, "ad-lora-te")
    assert rows[0]["model"] == "study/ad-lora-te"


def test_full_finetune_with_text_encoder_on_tiny_stable_diffusion(training_study: dict, tmp_path: Path) -> None:
    out = tmp_path / "full-te"
    train(
        training_study,
        training_study["sd"],
        out,
        "--max_train_steps",
        "2",
        "--train_text_encoder",
        "--gradient_checkpointing",
        "--learning_rate",
        "1e-2",
        "--output_repo",
        "sd-full-te",
    )
    store = LocalStore(training_study["store_root"])
    base, _ = load_pipeline(training_study["sd"], store)
    tuned, _ = load_pipeline("study/sd-full-te", store)
    assert type(tuned.text_encoder).__name__ == "CLIPTextModel"
    assert not torch.allclose(text_features(base, "a photo of a nurse"), text_features(tuned, "a photo of a nurse"))


def test_training_on_an_imagefolder(training_study: dict, tmp_path: Path) -> None:
    folder = tmp_path / "imagefolder"
    folder.mkdir()
    rows = datasets.load_dataset(
        str(LocalStore(training_study["store_root"]).resolve(training_study["train"], "dataset")), split="train"
    ).select(range(4))
    with open(folder / "metadata.jsonl", "w") as metadata:
        for index, row in enumerate(rows):
            row["image"].save(folder / f"{index}.png")
            metadata.write(json.dumps({"file_name": f"{index}.png", "text": row["text"]}) + "\n")
    command = [
        sys.executable,
        SCRIPT,
        "--store_root",
        training_study["store_root"],
        "--namespace",
        "study",
        "--pretrained_model_name_or_path",
        training_study["model"],
        "--train_data_dir",
        str(folder),
        "--resolution",
        "64",
        "--center_crop",
        "--train_batch_size",
        "2",
        "--max_train_steps",
        "2",
        "--output_dir",
        str(tmp_path / "out"),
        "--output_repo",
        "from-folder",
    ]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert state(tmp_path / "out")["global_step"] == 2


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"cache_latents": True}, "cache_latents needs center_crop"),
        ({"lr_scheduler": "step"}, "lr_scheduler='step': allowed linear"),
        ({"dataset_name": None}, "give one of dataset_name or train_data_dir"),
        ({"use_ema": True, "use_lora": True}, "use_ema with use_lora"),
        ({"push_to_hub": True}, "push_to_hub needs hub_model_id"),
    ],
)
def test_bad_training_arguments(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", "\\(")):
        TrainArguments(**({"dataset_name": "train"} | overrides))


def test_training_cli_one_line_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, SCRIPT, "--store_root", str(tmp_path), "--dataset_name", "x", "--mixed_precision", "fp8"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "train_text_to_image: error: mixed_precision='fp8': allowed no, fp16, bf16"
    )
