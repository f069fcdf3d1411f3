"""The fine-tuning script, launched as users launch it, on tiny AltDiffusion, Stable Diffusion and m9's layout."""

from __future__ import annotations

import copy
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pytest
import torch

from pipelines import build_tiny_model, collect_datasets, generate_images
from pipelines.artifacts.inputs import ModelInput, resolve_model
from pipelines.artifacts.store import LocalStore, card_metadata
from pipelines.errors import ConfigError, StoreError
from pipelines.modeling.diffusion import LORA_WEIGHTS, ROBERTA_SERIES_MODULE, load_pipeline
from training.train_text_to_image import TrainArguments

from .conftest import REPO_ROOT, image_arguments, launcher, run_python
from .m9_layout import build_m9_layout
from .preloaded import run_script

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
    return {**tiny_study, "sd": str(sd), "train": str(train), "images": str(images)}


def train(
    study: dict,
    model: str,
    output_dir: Path | None,
    *extra: str,
    check: bool = True,
    cwd: Path = REPO_ROOT,
    fresh: bool = False,
) -> subprocess.CompletedProcess:
    """`python training/train_text_to_image.py ...` on the study's small dataset at 64 px: from the
    preloaded fork server (tests/preloaded.py; the same launch without ~6.5 s of imports), or from a
    fresh interpreter with `fresh`."""
    arguments = [
        "--store_root", study["store_root"],
        *(["--output_dir", str(output_dir)] if output_dir is not None else []),
        "--namespace", "study",
        "--pretrained_model_name_or_path", model,
        "--dataset_name", study["train"],
        "--resolution", "64",
        "--center_crop",
        "--train_batch_size", "4",
        "--learning_rate", "1e-3",
        *extra,
    ]  # fmt: skip
    result = run_python(SCRIPT, *arguments, cwd=cwd) if fresh else run_script(SCRIPT, *arguments, cwd=cwd)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def model_input(study: dict, spec: str) -> ModelInput:
    return resolve_model(spec, LocalStore(study["store_root"]), namespace="study")


def generate_nurse(study: dict, model: str) -> datasets.Dataset:
    """One German nurse image from `model`, made through the generation stage by repo id."""
    images = generate_images.run(
        image_arguments(
            study,
            model=model,
            output_repo=f"images-{Path(model).name}",
            languages=["de"],
            num_images=1,
            professions=["nurse"],
        )
    )
    folder = LocalStore(study["store_root"]).resolve(str(images), "dataset")
    return datasets.load_dataset(str(folder), "de_eval_direct", split="train")


def state(output_dir: Path) -> dict:
    return json.loads((output_dir / "trainer_state.json").read_text())


def run_card_snippet(folder: Path, store_root: str, then: str = "numpy.asarray(image)") -> np.ndarray:
    """Runs a model card's usage snippet literally, in a fresh interpreter, with the store at `./hub`;
    returns the value of the expression `then` (by default the image) evaluated after it."""
    code = re.search(r"```python\n(.*?)```", (folder / "README.md").read_text(), re.DOTALL).group(1)
    code = code.replace(
        '"a photo of the face of a doctor"', '"a photo of the face of a doctor", num_inference_steps=2'
    )
    code += f"\nimport numpy, sys\nnumpy.save(sys.argv[1], {then})\n"
    (Path(store_root).parent / "snippet.py").write_text(code)
    target = Path(store_root).parent / "snippet.npy"
    link = Path(store_root).parent / "hub"
    if not link.exists():
        link.symlink_to(store_root)
    result = subprocess.run(
        [sys.executable, "snippet.py", str(target)],
        cwd=Path(store_root).parent,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return np.load(target)


def test_full_finetune_to_output_dir_checkpoints_resume_and_stock_loading(
    training_study: dict, tmp_path: Path
) -> None:
    from diffusers import UNet2DConditionModel

    out = tmp_path / "full"
    options = ["--checkpointing_steps", "2", "--checkpoints_total_limit", "1", "--snr_gamma", "5.0"]
    options += ["--noise_offset", "0.1", "--use_ema", "--train_text_encoder"]
    first = train(training_study, training_study["model"], out, "--max_train_steps", "4", "--output_repo", "debiased",
                  *options)  # fmt: skip
    assert "***** Running training *****" in first.stdout + first.stderr
    assert "Total optimization steps = 4" in first.stdout + first.stderr
    history = state(out)
    assert history["global_step"] == 4 and [e["step"] for e in history["log_history"]] == [1, 2, 3, 4]
    assert all(math.isfinite(entry["loss"]) for entry in history["log_history"])
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4"]  # pruned to the limit
    # The model is the output folder itself, and a checkpoint holds the models in diffusers' format.
    assert (out / "model_index.json").is_file() and not (out / "final").exists()
    checkpoint = out / "checkpoint-4"
    assert UNet2DConditionModel.from_pretrained(checkpoint / "unet").config.sample_size == 32
    assert (checkpoint / "text_encoder" / "config.json").is_file()
    assert (checkpoint / "ema_unet.safetensors").is_file() and not list(checkpoint.glob("custom_checkpoint*"))

    # Resume from the latest checkpoint: the step count continues, the loss history stays whole.
    train(training_study, training_study["model"], out, "--max_train_steps", "6", "--output_repo", "debiased-resumed",
          "--resume_from_checkpoint", "latest", *options)  # fmt: skip
    resumed = state(out)
    assert resumed["global_step"] == 6 and [e["step"] for e in resumed["log_history"]] == [1, 2, 3, 4, 5, 6]
    assert resumed["log_history"][:4] == history["log_history"]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-6"]

    store = LocalStore(training_study["store_root"])
    folder = store.resolve("study/debiased", "model")
    assert (folder / "model_index.json").is_file() and (folder / "unet").is_dir()
    assert not list(folder.glob("checkpoint-*")) and not (folder / "logs").exists()  # resume state stays out
    card = card_metadata(folder)
    assert card["base_model"] == "study/tiny-altdiffusion" and card["license"] == "apache-2.0"
    assert card["base_model_revision"] == training_study["model"].partition("@")[2]
    # The card's usage snippet is stock diffusers code, and it works as written.
    image = run_card_snippet(folder, training_study["store_root"])
    assert image.shape == (64, 64, 3)
    assert "DiffusionPipeline.from_pretrained(" in (folder / "README.md").read_text()
    # Plain DiffusionPipeline.from_pretrained opens the AltDiffusion export, its text encoder being
    # diffusers' own class; without trust_remote_code, diffusers says to pass it.
    from diffusers import DiffusionPipeline

    stock = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    assert type(stock).__name__ == "AltDiffusionPipeline"
    assert type(stock.text_encoder).__module__ == ROBERTA_SERIES_MODULE
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        DiffusionPipeline.from_pretrained(folder)
    # The fine-tuned model generates through the generation stage, by repo id.
    rows = generate_nurse(training_study, "debiased")
    assert rows.num_rows == 1 and rows[0]["model"].startswith("study/debiased@")


@pytest.mark.slow
def test_the_same_training_in_two_store_folders_publishes_the_same_revision(
    training_study: dict, tmp_path: Path
) -> None:
    """Published models name no path of the machine (diffusers writes each component's `_name_or_path`),
    so the same training gives the same revision id wherever the store lives; a base given as a
    folder that is no repo is not named in the card at all."""
    import shutil

    from .conftest import machine_paths_in

    revisions = []
    for root in (tmp_path / "one" / "hub", tmp_path / "two" / "deeper" / "hub"):
        shutil.copytree(training_study["store_root"], root, ignore=shutil.ignore_patterns(".work", "*.lock"))
        study = {**training_study, "store_root": str(root)}
        train(study, training_study["model"], root.parent / "out", "--max_train_steps", "2", "--output_repo",
              "portable")  # fmt: skip
        revisions.append(LocalStore(root).revision_of("study/portable", "model"))
        assert machine_paths_in(root, root.parent / "out") == []
    assert revisions[0] == revisions[1]
    # From a folder: the card has no base_model, and the title no path.
    folder = LocalStore(tmp_path / "one" / "hub").resolve(training_study["model"], "model")
    local = tmp_path / "a-local-model"
    shutil.copytree(folder, local)
    study = {**training_study, "store_root": str(tmp_path / "one" / "hub")}
    train(study, str(local), tmp_path / "from-folder", "--max_train_steps", "1", "--output_repo", "from-folder")
    published = LocalStore(tmp_path / "one" / "hub").resolve("study/from-folder", "model")
    assert "base_model" not in card_metadata(published) and str(tmp_path) not in (published / "README.md").read_text()
    # A LoRA opens through its base: a folder given by a relative path is published beside it, and the
    # card names it by repo id; its snippet runs as written. To the Hub, such a LoRA is refused at once.
    options = ["--max_train_steps", "1", "--use_lora", "--rank", "2", "--output_repo", "lora-from-folder"]
    refused = train(study, "a-local-model", None, *options, "--push_to_hub", "--hub_model_id", "me/lora", cwd=tmp_path,
                    check=False)  # fmt: skip
    assert refused.returncode == 2 and "needs a base on the Hub" in refused.stderr.strip().splitlines()[-1]
    train(study, "a-local-model", tmp_path / "lora-from-folder", *options, cwd=tmp_path)
    store = LocalStore(tmp_path / "one" / "hub")
    lora = store.resolve("study/lora-from-folder", "model")
    assert (
        card_metadata(lora)["base_model"] == "study/a-local-model"
        and str(tmp_path) not in (lora / "README.md").read_text()
    )
    assert card_metadata(lora)["base_model_revision"] == store.revision_of("study/a-local-model", "model")
    assert run_card_snippet(lora, study["store_root"]).shape == (64, 64, 3)


@pytest.mark.slow
def test_a_checkpoint_cut_short_or_tampered_never_resumes_silently(training_study: dict, tmp_path: Path) -> None:
    """Checkpoints are written aside and renamed whole; what a killed save left aside is removed when
    training starts. One cut short (no trainer_state.json, as a killed save of an older toolkit left
    it) is skipped by `latest`, saying so, and refused by name; random states that cannot be restored
    (here a states file without numpy's, its size relisted) are refused, never logged and ignored."""
    import shutil

    out = tmp_path / "cut"
    left_aside = out / ".checkpoint-9.partial" / "unet"
    left_aside.mkdir(parents=True)
    (left_aside / "config.json").write_text("{}")  # what a run killed while saving checkpoint-9 left
    options = ["--checkpointing_steps", "2", "--use_ema", "--output_repo", "cut-short"]
    first = train(training_study, training_study["model"], out, "--max_train_steps", "2", *options)
    assert [p.name for p in out.iterdir() if p.name.startswith(".checkpoint")] == []  # nothing left aside
    assert "removed .checkpoint-9.partial" in first.stdout + first.stderr
    cut = out / "checkpoint-3"
    shutil.copytree(out / "checkpoint-2", cut)
    (cut / "trainer_state.json").unlink()
    resumed = train(training_study, training_study["model"], out, "--max_train_steps", "4", "--resume_from_checkpoint",
                    "latest", *options[:-2], "--output_repo", "cut-resumed")  # fmt: skip
    assert "skipping checkpoint-3: cut short" in resumed.stdout + resumed.stderr
    assert [e["step"] for e in state(out)["log_history"]] == [1, 2, 3, 4]  # continued from step 2
    refused = train(training_study, training_study["model"], out, "--max_train_steps", "6", "--resume_from_checkpoint",
                    str(cut), *options, check=False)  # fmt: skip
    assert refused.returncode == 2 and "cut short (no trainer_state.json)" in refused.stderr.strip().splitlines()[-1]
    tampered = out / "checkpoint-4"
    states_file = tampered / "random_states_0.pkl"
    states = torch.load(states_file, weights_only=False)
    del states["numpy_random_seed"]
    torch.save(states, states_file)
    marker = state(tampered)
    marker["files"][states_file.name] = states_file.stat().st_size  # whole, as far as the file list can tell
    (tampered / "trainer_state.json").write_text(json.dumps(marker))
    refused = train(training_study, training_study["model"], out, "--max_train_steps", "6", "--resume_from_checkpoint",
                    str(tampered), *options, check=False)  # fmt: skip
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1].startswith("train_text_to_image: error: resume_from_checkpoint=")
    assert "random states (random_states_0.pkl) cannot be restored (no numpy_random_seed)" in refused.stderr


def test_lora_on_tiny_stable_diffusion_with_cached_latents(training_study: dict, tmp_path: Path) -> None:
    out = tmp_path / "lora"
    for stale in ("step-1", "step-500", "final"):  # an earlier run's validation images in a reused folder
        (out / "validation" / stale).mkdir(parents=True)
        (out / "validation" / stale / "07.png").write_bytes(b"earlier run")
    train(
        training_study, training_study["sd"], out, "--max_train_steps", "3", "--use_lora", "--rank", "4",
        "--learning_rate", "5e-2", "--cache_latents", "--random_flip", "--output_repo", "sd-lora",
        "--validation_prompts", "a photo of the face of a nurse", "ein Foto des Gesichts eines Arztes",
        "--validation_steps_per_image", "2",
    )  # fmt: skip
    assert all(math.isfinite(entry["loss"]) for entry in state(out)["log_history"])
    # The cache: fp16 arrays on disk, text states once per distinct caption.
    cache = out / ".cache" / "process-0"
    latents = np.load(cache / "latents.npy", mmap_mode="r")
    hidden = np.load(cache / "hidden.npy", mmap_mode="r")
    rows = datasets.load_dataset(
        str(LocalStore(training_study["store_root"]).resolve(training_study["train"], "dataset")), split="train"
    )  # noqa: E501
    assert latents.dtype == np.float16 and latents.shape[0] == rows.num_rows
    assert hidden.shape[0] == len(set(rows["text"]))
    assert (cache / "latents_flipped.npy").is_file()
    store = LocalStore(training_study["store_root"])
    folder = store.resolve("study/sd-lora", "model")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", LORA_WEIGHTS, "trainer_state.json", "validation"]
    # The card names its captions' gender-neutral form, as the training dataset's card records it.
    forms = card_metadata(store.resolve(training_study["train"], "dataset"))["caption_forms"]
    assert card_metadata(folder)["caption_forms"] == forms and set(forms) == {"en", "de"}
    said = f"Its captions' gender-neutral form (from the training dataset's card): unmarked (en), {forms['de']} (de)"
    assert said in (folder / "README.md").read_text()
    assert sorted(p.name for p in (folder / "validation" / "final").iterdir()) == ["00.png", "01.png"]
    assert sorted(p.name for p in (folder / "validation").iterdir()) == ["final", "step-3"]  # nothing earlier

    base = load_pipeline(model_input(training_study, training_study["sd"]), store)
    tuned = load_pipeline(model_input(training_study, "study/sd-lora"), store)
    assert type(tuned).__name__ == "StableDiffusionPipeline"

    def image(pipe: Any) -> np.ndarray:
        generator = torch.Generator().manual_seed(0)
        return np.asarray(
            pipe("a photo of the face of a doctor", num_inference_steps=2, generator=generator).images[0]
        )

    assert np.abs(image(base).astype(int) - image(tuned).astype(int)).max() > 0  # the adapter changes the output
    unchanged = load_pipeline(model_input(training_study, training_study["sd"]), store)
    assert np.array_equal(image(base), image(unchanged))  # and the difference is the adapter's, not noise
    # Stock diffusers (the card's snippet: the base, then load_lora_weights) makes the same image.
    # (Within 2/255: another process may sum floats over another number of threads.)
    stock = run_card_snippet(folder, training_study["store_root"]).astype(int)
    assert np.abs(stock - image(tuned).astype(int)).max() <= 2 < np.abs(stock - image(base).astype(int)).max()


def text_features(pipe: Any, text: str) -> torch.Tensor:
    from training.models import encode_text

    tokens = pipe.tokenizer(
        [text], padding="max_length", max_length=pipe.tokenizer.model_max_length, return_tensors="pt"
    )
    with torch.no_grad():
        return encode_text(pipe.text_encoder, tokens.input_ids, tokens.attention_mask)


def test_lora_with_text_encoder_on_tiny_altdiffusion(training_study: dict, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    out = tmp_path / "lora-te"
    options = [
        "--use_lora",
        "--rank",
        "4",
        "--train_text_encoder",
        "--learning_rate",
        "5e-2",
        "--checkpointing_steps",
        "2",
    ]
    train(
        training_study, training_study["model"], out, "--max_train_steps", "2", *options, "--output_repo", "ad-lora-te"
    )
    store = LocalStore(training_study["store_root"])
    folder = store.resolve("study/ad-lora-te", "model")
    adapters = ("text_encoder_lora.safetensors", "text_encoder_lora_config.json", LORA_WEIGHTS)
    assert set(adapters) <= {p.name for p in folder.iterdir()}
    # A checkpoint holds the LoRA adapters as the published model does: at the last step, the same tensors.
    checkpoint = out / "checkpoint-2"
    for name in (LORA_WEIGHTS, "text_encoder_lora.safetensors"):
        saved, published = load_file(checkpoint / name), load_file(folder / name)
        assert saved.keys() == published.keys() and all(torch.equal(saved[k], published[k]) for k in saved)
    # And it resumes: the step count and the loss history continue.
    history = state(out)["log_history"]
    train(training_study, training_study["model"], out, "--max_train_steps", "3", *options, "--resume_from_checkpoint",
          "latest", "--output_repo", "ad-lora-te-resumed")  # fmt: skip
    assert [e["step"] for e in state(out)["log_history"]] == [1, 2, 3] and state(out)["log_history"][:2] == history
    base = load_pipeline(model_input(training_study, training_study["model"]), store)
    tuned = load_pipeline(model_input(training_study, "study/ad-lora-te"), store)
    assert type(tuned.text_encoder).__name__ == "RobertaSeriesModelWithTransformation"
    text = "ein Foto des Gesichts einer Person, die als Pflegekraft arbeitet"
    assert not torch.allclose(text_features(base, text), text_features(tuned, text))  # the encoder's adapter is on
    # The card's snippet, run as written, loads both adapters: its text encoder gives the tuned features.
    features = "pipe.text_encoder(**pipe.tokenizer([TEXT], return_tensors='pt'))[0].detach().numpy()"
    stock = run_card_snippet(folder, training_study["store_root"], then=features.replace("TEXT", repr(text)))
    tokens = tuned.tokenizer([text], return_tensors="pt")
    with torch.no_grad():
        ours, plain = (pipe.text_encoder(**tokens)[0].numpy() for pipe in (tuned, base))
    assert np.abs(stock - ours).max() < 1e-4 < np.abs(stock - plain).max()
    rows = generate_nurse(training_study, "ad-lora-te")
    assert rows[0]["model"].startswith("study/ad-lora-te@")


@pytest.mark.slow
def test_two_processes_train_the_unet_and_text_encoder_and_publish_once(training_study: dict) -> None:
    """`torchrun` with two processes, the UNet and AltDiffusion's text encoder trained in full: each
    model is wrapped in DistributedDataParallel, which has no `config` and stops where a trainable
    parameter gets no gradient (RoBERTa-series' pooler, which the UNet never reads); and the main
    process publishes while the other waits on the process group. Before, every multi-process
    training failed at its end (accelerate's `end_training` destroyed the group the harness still
    needed), and one that trained the text encoder at its first step. (The text encoder alone, with a
    frozen UNet, is `align_distribution`'s: tests/test_align_distribution.py.)"""
    name = "ad-two-processes"
    arguments = [
        "--store_root", training_study["store_root"], "--namespace", "study",
        "--pretrained_model_name_or_path", training_study["model"], "--dataset_name", training_study["train"],
        "--resolution", "64", "--center_crop", "--train_batch_size", "2", "--learning_rate", "1e-3",
        "--max_train_steps", "3", "--train_text_encoder", "--cpu_threads", "1", "--output_repo", name,
    ]  # fmt: skip
    result = subprocess.run([*launcher(2), SCRIPT, *arguments], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Total train batch size (w. parallel, distributed & accumulation) = 4" in result.stdout + result.stderr
    store = LocalStore(training_study["store_root"])
    # Each process prints the revision; their lines may interleave.
    published = set(re.findall(rf"study/{name}@[0-9a-f]{{40}}", result.stdout))
    assert len(published) == 1  # each process reports the one revision the main process published
    (revision,) = published
    history = json.loads((store.resolve(revision, "model") / "trainer_state.json").read_text())["log_history"]
    assert [entry["step"] for entry in history] == [1, 2, 3]
    base = load_pipeline(model_input(training_study, training_study["model"]), store)
    tuned = load_pipeline(model_input(training_study, revision), store)
    text = "ein Foto des Gesichts einer Person, die als Pflegekraft arbeitet"
    assert not torch.allclose(text_features(base, text), text_features(tuned, text))  # the encoder was trained
    moved = [not torch.equal(a, b) for a, b in zip(base.unet.parameters(), tuned.unet.parameters())]
    assert sum(moved) > 0.9 * len(moved)  # and the UNet


@pytest.mark.slow
def test_two_processes_resume_to_the_bit_and_refuse_a_resume_in_one(training_study: dict, tmp_path: Path) -> None:
    """Stopped at a checkpoint and resumed in two processes, a two-process training (UNet, text
    encoder, EMA) gives the same losses and weights, to the bit, as the same run straight through; in
    one process the checkpoint is refused in one line (the batch a step sees and the noise each process
    draws would be another run's) and nothing is published."""
    from safetensors.torch import load_file

    def launch(processes: int, output_dir: Path, name: str, *extra: str) -> subprocess.CompletedProcess:
        """The training in `processes` processes (one: plain `python`, as a user resumes alone)."""
        arguments = [
            "--store_root", training_study["store_root"], "--namespace", "study", "--output_dir", str(output_dir),
            "--pretrained_model_name_or_path", training_study["model"], "--dataset_name", training_study["train"],
            "--resolution", "64", "--center_crop", "--train_batch_size", "2", "--learning_rate", "1e-3",
            "--max_train_steps", "4", "--checkpointing_steps", "2", "--train_text_encoder", "--use_ema",
            "--cpu_threads", "1", "--output_repo", name, *extra,
        ]  # fmt: skip
        command = [*launcher(processes), SCRIPT, *arguments]
        return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)

    whole, parts, alone = tmp_path / "whole", tmp_path / "parts", tmp_path / "alone"
    result = launch(2, whole, "ad-2p-straight")
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = whole / "checkpoint-2"
    assert sorted(p.name for p in checkpoint.glob("random_states_*.pkl")) == ["random_states_0.pkl",
                                                                              "random_states_1.pkl"]  # fmt: skip
    for folder in (parts, alone):  # what a run killed after its checkpoint at step 2 leaves
        folder.mkdir()
        shutil.copytree(checkpoint, folder / "checkpoint-2")
    result = launch(2, parts, "ad-2p-resumed", "--resume_from_checkpoint", "latest")
    assert result.returncode == 0, result.stderr[-3000:]
    assert state(parts)["log_history"] == state(whole)["log_history"]  # losses to the last bit
    assert [entry["step"] for entry in state(parts)["log_history"]] == [1, 2, 3, 4]
    for name in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        straight, resumed = load_file(whole / name), load_file(parts / name)
        assert all(torch.equal(straight[k], resumed[k]) for k in straight), name
    result = launch(1, alone, "ad-1p-resumed", "--resume_from_checkpoint", "latest")
    assert result.returncode == 2
    assert f"resume_from_checkpoint={str(alone / 'checkpoint-2')!r}: written by 2 process(es), this run has 1" in (
        result.stderr
    )
    with pytest.raises(StoreError, match="unknown model repo 'study/ad-1p-resumed'"):
        LocalStore(training_study["store_root"]).resolve("study/ad-1p-resumed", "model")


def test_stable_diffusion_output_dir_and_checkpoints_open_with_diffusers(training_study: dict, tmp_path: Path) -> None:
    from diffusers import DiffusionPipeline, UNet2DConditionModel

    out = tmp_path / "full-te"
    train(training_study, training_study["sd"], out, "--max_train_steps", "2", "--train_text_encoder",
          "--gradient_checkpointing", "--learning_rate", "1e-2", "--checkpointing_steps", "1",
          "--output_repo", "sd-full-te")  # fmt: skip
    stock = DiffusionPipeline.from_pretrained(out)  # diffusers' own loader, on the output folder
    assert type(stock).__name__ == "StableDiffusionPipeline" and type(stock.text_encoder).__name__ == "CLIPTextModel"
    unet = UNet2DConditionModel.from_pretrained(out / "checkpoint-1" / "unet")
    assert not torch.equal(next(unet.parameters()), next(stock.unet.parameters()))  # step 1, not the end
    store = LocalStore(training_study["store_root"])
    base = load_pipeline(model_input(training_study, training_study["sd"]), store)
    assert not torch.allclose(text_features(base, "a photo of a nurse"), text_features(stock, "a photo of a nurse"))


def test_a_training_in_the_store_s_work_folder_leaves_nothing_behind(training_study: dict) -> None:
    """Without --output_dir, training works (and checkpoints) in the store's work folder, which the
    published model no longer needs: it is removed, lock and all."""
    train(training_study, training_study["model"], None, "--max_train_steps", "2", "--checkpointing_steps", "1",
          "--output_repo", "no-leftovers")  # fmt: skip
    store = LocalStore(training_study["store_root"])
    assert (store.resolve("study/no-leftovers", "model") / "model_index.json").is_file()
    assert list((Path(training_study["store_root"]) / ".work" / "train_text_to_image").iterdir()) == []


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
    result = run_script(
        SCRIPT, "--store_root", training_study["store_root"], "--namespace", "study",
        "--pretrained_model_name_or_path", training_study["model"], "--train_data_dir", str(folder),
        "--resolution", "64", "--center_crop", "--train_batch_size", "2", "--max_train_steps", "2",
        "--output_dir", str(tmp_path / "out"), "--output_repo", "from-folder", cwd=REPO_ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert state(tmp_path / "out")["global_step"] == 2


def test_m9_layout_loads_generates_fine_tunes_and_reloads(training_study: dict, tmp_path: Path) -> None:
    texts = [
        row["prompt"]
        for language in ("en", "de", "zh")
        for row in datasets.load_dataset(
            str(LocalStore(training_study["store_root"]).resolve(training_study["prompts"], "dataset")), language,
            split="train",
        )
    ]  # fmt: skip
    m9 = build_m9_layout(tmp_path / "AltDiffusion-m9", texts)
    store = LocalStore(training_study["store_root"])
    pipe = load_pipeline(model_input(training_study, str(m9)), store)
    assert pipe.tokenizer.model_max_length == 512 and type(pipe.scheduler).__name__ == "PNDMScheduler"
    assert generate_nurse(training_study, str(m9))[0]["model"].startswith("folder:AltDiffusion-m9@sha256:")
    for kind, extra in (("full", ["--train_text_encoder"]), ("lora", ["--use_lora"])):
        train(training_study, str(m9), tmp_path / kind, "--max_train_steps", "2", "--output_repo", f"m9-{kind}",
              *extra)  # fmt: skip
        folder = store.resolve(f"study/m9-{kind}", "model")
        assert card_metadata(folder)["license"] == "creativeml-openrail-m"  # the base model's, not ours
        tuned = load_pipeline(model_input(training_study, f"study/m9-{kind}"), store)
        image = tuned("ein Foto", num_inference_steps=2, generator=torch.manual_seed(0)).images[0]
        assert image.size == (64, 64)
    full = store.resolve("study/m9-full", "model")
    assert (full / "tokenizer" / "sentencepiece.bpe.model").is_file()  # saved with its sentencepiece file
    assert not (full / "safety_checker").exists()
    # m9's legacy .bin weights became safetensors in the export.
    assert (full / "text_encoder" / "model.safetensors").is_file()
    # The card's snippet assembles it with stock diffusers and transformers classes, as written.
    assert run_card_snippet(full, training_study["store_root"]).shape == (64, 64, 3)


def multi_config_dataset(study: dict, tmp_path: Path) -> str:
    """The small training dataset with a second config (a copy of the first)."""
    store = LocalStore(study["store_root"])
    folder = tmp_path / "two-configs"
    shutil.copytree(store.resolve(study["train"], "dataset"), folder)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    shutil.copytree(folder / "data" / "default", folder / "data" / "again")
    card = (folder / "README.md").read_text()
    card = card.replace(
        "configs:\n",
        "configs:\n- config_name: again\n  data_files:\n  - split: train\n    path: data/again/*.parquet\n",
        1,
    )
    (folder / "README.md").write_text(card)
    return f"study/two-configs@{store.push(folder, 'study/two-configs', 'dataset', 'two configs')}"


def test_multi_config_data_is_never_silently_the_first_config(training_study: dict, tmp_path: Path) -> None:
    dataset = multi_config_dataset(training_study, tmp_path)
    common = ["--store_root", training_study["store_root"], "--namespace", "study", "--dataset_name", dataset,
              "--resolution", "64", "--center_crop", "--train_batch_size", "4", "--num_train_epochs", "1"]  # fmt: skip
    refused = run_script(SCRIPT, *common, "--output_dir", str(tmp_path / "a"), "--output_repo", "two-a", cwd=REPO_ROOT)
    assert refused.returncode == 2
    assert (
        refused.stderr.strip()
        .splitlines()[-1]
        .endswith("has configs again, default: choose with --dataset_config_name (one, several, or all)")
    )
    both = run_script(SCRIPT, *common, "--dataset_config_name", "all", "--output_dir", str(tmp_path / "b"),
                      "--output_repo", "two-b", cwd=REPO_ROOT)  # fmt: skip
    assert both.returncode == 0, both.stderr[-2000:]
    assert "Num examples = 32" in both.stdout + both.stderr  # 16 rows in each config


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"cache_latents": True}, "cache_latents needs center_crop"),
        ({"lr_scheduler": "step"}, "lr_scheduler='step': allowed linear"),
        ({"dataset_name": None}, "give one of dataset_name or train_data_dir"),
        ({"use_ema": True, "use_lora": True}, "use_ema with use_lora"),
        ({"push_to_hub": True}, "push_to_hub needs hub_model_id"),
        ({"max_train_steps": -1}, "max_train_steps=-1: must be at least 1"),
        ({"num_train_epochs": 0}, "num_train_epochs=0: must be at least 1"),
        ({"learning_rate": 0.0}, "learning_rate=0.0: must be above 0"),
        ({"on_corrupt": "ignore"}, "on_corrupt='ignore': allowed skip, stop"),
        ({"dataset_name": "train@v1", "dataset_revision": "v2"}, "dataset_revision='v2' and dataset_name='train@v1'"),
        ({"timestep_bias_strategy": "middle"}, "timestep_bias_strategy='middle': allowed none, earlier, later, range"),
        ({"timestep_bias_multiplier": 0.0}, "timestep_bias_multiplier=0.0: must be above 0"),
        ({"timestep_bias_portion": 1.5}, "timestep_bias_portion=1.5: above 0 and at most 1"),
        ({"timestep_bias_begin": 500, "timestep_bias_end": 400}, "timestep_bias_begin=500, timestep_bias_end=400"),
        ({"proportion_empty_prompts": 1.0}, "proportion_empty_prompts=1.0: at least 0 and below 1"),
        ({"proportion_empty_prompts": -0.1}, "proportion_empty_prompts=-0.1: at least 0 and below 1"),
    ],
)
def test_bad_training_arguments(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        TrainArguments(**({"dataset_name": "train"} | overrides))


def drawn_timesteps(args: TrainArguments, draws: int = 20_000) -> torch.Tensor:
    """The timesteps `training_loss` draws for a batch of `draws` latents under `args`."""
    from types import SimpleNamespace

    from diffusers import DDPMScheduler

    from training.models import Parts
    from training.train_text_to_image import timestep_weights, training_loss

    seen = []

    def unet(noisy: torch.Tensor, timesteps: torch.Tensor, hidden: torch.Tensor, return_dict: bool) -> tuple:
        seen.append(timesteps)
        return (torch.zeros_like(noisy),)

    parts = Parts(
        pipe=None, tokenizer=None, text_encoder=None, vae=SimpleNamespace(config=SimpleNamespace(scaling_factor=1.0)),
        unet=unet, noise_scheduler=DDPMScheduler(), weight_dtype=torch.float32,
        timestep_weights=timestep_weights(args, 1000),
    )  # fmt: skip
    batch = {"latents": torch.zeros(draws, 1, 1, 1), "hidden": torch.zeros(draws, 1, 1)}
    torch.manual_seed(0)
    training_loss(parts, batch, args, SimpleNamespace(device="cpu"))
    return seen[0]


def test_timestep_bias_draws_the_biased_timesteps_that_much_more_often() -> None:
    plain = drawn_timesteps(TrainArguments(dataset_name="train"))
    assert (plain >= 700).float().mean() == pytest.approx(0.3, abs=0.02)
    # The last 30% drawn ten times as often: 3,000 of 3,700 parts of the weight.
    later = TrainArguments(
        dataset_name="train", timestep_bias_strategy="later", timestep_bias_portion=0.3, timestep_bias_multiplier=10
    )
    assert (drawn_timesteps(later) >= 700).float().mean() == pytest.approx(3000 / 3700, abs=0.02)
    earlier = TrainArguments(dataset_name="train", timestep_bias_strategy="earlier", timestep_bias_multiplier=0.5)
    assert (drawn_timesteps(earlier) < 250).float().mean() == pytest.approx(125 / 875, abs=0.02)
    only = TrainArguments(
        dataset_name="train", timestep_bias_strategy="range", timestep_bias_begin=900, timestep_bias_multiplier=1e9
    )
    drawn = drawn_timesteps(only)
    assert drawn.min() >= 900 and len(drawn.unique()) == 100
    with pytest.raises(ConfigError, match="timestep_bias_end=1200: the model has 1000 timesteps"):
        drawn_timesteps(TrainArguments(dataset_name="train", timestep_bias_strategy="range", timestep_bias_end=1200,
                                       timestep_bias_multiplier=2))  # fmt: skip


def test_the_card_names_the_timestep_bias_settings_that_shaped_the_draw() -> None:
    from training.train_text_to_image import timestep_bias_settings

    def named(**given: object) -> list[str]:
        return timestep_bias_settings(TrainArguments(dataset_name="train", **given))

    assert named() == []
    assert named(timestep_bias_strategy="later") == ["timestep_bias_multiplier", "timestep_bias_portion"]
    assert named(timestep_bias_strategy="earlier") == ["timestep_bias_multiplier", "timestep_bias_portion"]
    assert named(timestep_bias_strategy="range") == [
        "timestep_bias_multiplier", "timestep_bias_begin", "timestep_bias_end",
    ]  # fmt: skip


def test_a_preloaded_launch_trains_as_a_fresh_interpreter_does(training_study: dict, tmp_path: Path) -> None:
    """The tests launch the script from a fork server that has imported its libraries (tests/preloaded.py).
    From a fresh interpreter the same training writes the same bytes with the same thread count and
    step count (refusals through the server: test_training_cli_errors_are_one_line_and_publish_nothing)."""
    options = ("--max_train_steps", "2", "--train_text_encoder", "--use_ema", "--checkpointing_steps", "1")
    model = training_study["model"]
    runs = {}
    for fresh in (True, False):
        runs[fresh] = train(training_study, model, tmp_path / str(fresh), *options, "--output_repo",
                            f"launched-fresh-{fresh}", fresh=fresh)  # fmt: skip
    weights = ["unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"]
    weights += ["checkpoint-2/ema_unet.safetensors", "checkpoint-1/unet/diffusion_pytorch_model.safetensors"]
    for name in weights:
        assert (tmp_path / "True" / name).read_bytes() == (tmp_path / "False" / name).read_bytes(), name

    def said(result: subprocess.CompletedProcess) -> list[str]:  # the thread count, not the load it was read at
        text = result.stdout + result.stderr
        lines = [line for line in text.splitlines() if "CPU thread(s)" in line or "optimization steps" in line]
        return [line.partition(" (")[0] for line in lines]

    assert said(runs[True]) == said(runs[False]) and len(said(runs[True])) == 2


def test_training_cli_errors_are_one_line_and_publish_nothing(training_study: dict, tmp_path: Path) -> None:
    store = LocalStore(training_study["store_root"])
    unpinned = {**training_study, "train": training_study["train"].partition("@")[0]}
    for extra, message in (
        (["--mixed_precision", "fp8"], "mixed_precision='fp8': allowed no, fp16, bf16"),
        (
            ["--dataset_revision", "doesnotexist"],
            "unknown revision or tag 'doesnotexist' of dataset 'study/train-small'",
        ),
        (["--max_train_steps", "-1"], "max_train_steps=-1: must be at least 1"),
        # Checked before any training: the test environment is offline (HF_HUB_OFFLINE=1).
        (["--push_to_hub", "--hub_model_id", "someone/model"], "cannot push to model 'someone/model': the Hub is"),
    ):
        result = train(unpinned, training_study["model"], tmp_path / "never", "--output_repo", "never", *extra,
                       check=False)  # fmt: skip
        assert result.returncode == 2, result.stderr[-2000:]
        assert result.stderr.strip().splitlines()[-1].startswith(f"train_text_to_image: error: {message}")
        assert "Running training" not in result.stdout + result.stderr  # refused before any step
    assert not store.exists("study/never", "model")
    # --dataset_revision is read: a real revision is the one trained on.
    revision = training_study["train"].partition("@")[2]
    name = training_study["train"].partition("@")[0]
    result = run_script(
        SCRIPT, "--store_root", training_study["store_root"], "--namespace", "study",
        "--pretrained_model_name_or_path", training_study["model"], "--dataset_name", name,
        "--dataset_revision", revision, "--resolution", "64", "--center_crop", "--max_train_steps", "1",
        "--output_dir", str(tmp_path / "pinned"), "--output_repo", "pinned", cwd=REPO_ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert (
        card_metadata(store.resolve("study/pinned", "model"))["lineage"]["inputs"]["dataset_name"]
        == training_study["train"]
    )


def test_a_corrupt_training_image_is_skipped_and_counted_or_stops(training_study: dict, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    store = LocalStore(training_study["store_root"])
    folder = tmp_path / "corrupt"
    shutil.copytree(store.resolve(training_study["train"], "dataset"), folder)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    shard = next((folder / "data" / "default").glob("*.parquet"))
    table = pq.read_table(shard).to_pylist()
    table[3]["image"] = {"bytes": b"not an image", "path": None}
    pq.write_table(pa.Table.from_pylist(table, schema=pq.read_schema(shard)), shard)
    dataset = f"study/corrupt-train@{store.push(folder, 'study/corrupt-train', 'dataset', 'corrupt')}"
    study = {**training_study, "train": dataset}
    train(study, training_study["model"], tmp_path / "skip", "--max_train_steps", "1", "--output_repo", "skipped")
    assert state(tmp_path / "skip")["skipped_corrupt_images"] == 1
    card = (tmp_path / "skip" / "README.md").read_text()
    assert "1 training row(s) skipped: their image could not be decoded." in card
    stopped = train(study, training_study["model"], tmp_path / "stop", "--max_train_steps", "1", "--output_repo",
                    "stopped", "--on_corrupt", "stop", check=False)  # fmt: skip
    assert stopped.returncode == 2
    assert stopped.stderr.strip().splitlines()[-1] == (
        "train_text_to_image: error: the image of training row 3 cannot be decoded "
        "(--on_corrupt skip counts it instead)"
    )
    assert not store.exists("study/stopped", "model")


@pytest.mark.parametrize(
    "kind,extra",
    [
        ("full", ["--use_ema", "--train_text_encoder", "--random_flip", "--gradient_accumulation_steps", "2",
                  "--proportion_empty_prompts", "0.3"]),
        ("lora", ["--use_lora", "--rank", "2", "--cache_latents", "--random_flip", "--snr_gamma", "5.0",
                  "--noise_offset", "0.1", "--proportion_empty_prompts", "0.3"]),
    ],
)  # fmt: skip
def test_a_resumed_training_is_byte_identical_to_an_uninterrupted_one(
    training_study: dict, tmp_path: Path, kind: str, extra: list[str]
) -> None:
    """Stopped at a checkpoint and resumed, a training gives the same losses and the same weights, to the
    bit, as the same training run straight through (at the same thread count): the data order of every
    epoch, the captions replaced by the empty prompt, the noise, the timesteps, the optimiser, the
    schedule and the EMA all continue."""
    import shutil

    from safetensors.torch import load_file

    options = ["--checkpointing_steps", "3", "--max_train_steps", "5", *extra]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    train(training_study, training_study["model"], whole, *options, "--output_repo", "straight")
    # What a run killed after its checkpoint at step 3 leaves: that checkpoint alone.
    parts.mkdir()
    shutil.copytree(whole / "checkpoint-3", parts / "checkpoint-3")
    train(training_study, training_study["model"], parts, *options, "--resume_from_checkpoint", "latest",
          "--output_repo", "resumed")  # fmt: skip
    assert state(parts)["log_history"] == state(whole)["log_history"]  # losses to the last bit
    assert (
        state(parts)["cpu_threads"]
        == state(whole)["cpu_threads"]
        == json.loads((whole / "checkpoint-3" / "trainer_state.json").read_text())["cpu_threads"]
    )
    weights = [LORA_WEIGHTS] if kind == "lora" else ["unet/diffusion_pytorch_model.safetensors",
                                                      "text_encoder/model.safetensors"]  # fmt: skip
    for name in weights:
        straight, resumed = load_file(whole / name), load_file(parts / name)
        assert all(torch.equal(straight[k], resumed[k]) for k in straight), name


def test_a_resume_trains_on_the_thread_count_of_its_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Float sums depend on the thread count, so a resume without --cpu_threads takes the checkpoint's
    (the latest complete one), not what the load of the machine suggests now; --cpu_threads wins."""
    from types import SimpleNamespace

    from training import models as script

    for step, threads, done in ((3, 1, True), (6, 2, True), (9, 2, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if done:
            marker = {"global_step": step, "cpu_threads": threads, "files": {}}
            (folder / "trainer_state.json").write_text(json.dumps(marker))
    accelerator = SimpleNamespace(
        device=torch.device("cpu"), num_processes=1, print=lambda *a: None, is_local_main_process=True
    )
    monkeypatch.setattr(script, "cpu_share", lambda processes: (7, 0.0))  # what a fresh run would take
    before = torch.get_num_threads()
    try:
        chosen = {
            (given, resume): script.set_cpu_threads(
                SimpleNamespace(cpu_threads=given, resume_from_checkpoint=resume), accelerator, tmp_path
            )
            for given, resume in [
                (None, "latest"),
                (None, str(tmp_path / "checkpoint-3")),
                (3, "latest"),
                (None, None),
                (None, str(tmp_path / "checkpoint-9")),
            ]  # fmt: skip
        }
    finally:
        torch.set_num_threads(before)
    assert list(chosen.values()) == [2, 1, 3, 7, 7]  # checkpoint-9 was cut short: resume() refuses it


@pytest.mark.parametrize(
    ("usable", "processes", "share", "warned"),
    [
        (2, 1, (1, 1.0), "takes 1 thread(s) per process instead of 2"),
        (4, 2, (1, 2.2), "takes 1 thread(s) per process instead of 2"),
        (8, 1, (5, 3.0), "takes 5 thread(s) per process instead of 8"),
        (2, 1, (2, 0.4), None),  # idle enough: the idle machine's count
        (2, 2, (1, 0.0), None),  # one thread each is what two processes on two CPUs take anyway
    ],
)
def test_training_says_aloud_when_other_work_cuts_its_threads(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path: Path,
    usable: int, processes: int, share: tuple[int, float], warned: str | None,
) -> None:  # fmt: skip
    """A run that starts beside other work trains on fewer threads than on an idle machine: other
    weights to the bit, and slower. It says so on stderr, with the flag that pins the idle count;
    a run on a machine as idle as the count needs says nothing."""
    from types import SimpleNamespace

    from training import models as script

    monkeypatch.setattr(script, "usable_cpus", lambda: usable)
    monkeypatch.setattr(script, "cpu_share", lambda count: share if count == processes else pytest.fail(count))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(processes))
    accelerator = SimpleNamespace(
        device=torch.device("cpu"), num_processes=processes, print=print, is_local_main_process=True
    )
    before = torch.get_num_threads()
    try:
        threads = script.set_cpu_threads(SimpleNamespace(cpu_threads=None, resume_from_checkpoint=None),
                                         accelerator, tmp_path)  # fmt: skip
    finally:
        torch.set_num_threads(before)
    assert threads == share[0]
    err = capsys.readouterr().err
    if warned is None:  # (a count above this process's own CPUs has its own warning, not this one)
        assert "warning: other work" not in err
    else:
        (line,) = [line for line in err.splitlines() if line.startswith("warning: other work")]
        assert warned in line and f"--cpu_threads {usable // processes} " in line
        assert f"{share[1]:.1f} CPU(s) busy" in line


def test_a_checkpoint_without_its_completion_marker_is_refused_by_name(tmp_path: Path) -> None:
    """The unit behind the killed-training tests: no trainer_state.json (written last) is cut short."""
    from training.checkpoints import CHECKPOINT_DONE, check_checkpoint

    folder = tmp_path / "checkpoint-3"
    folder.mkdir()
    with pytest.raises(ConfigError, match=r"checkpoint-3'?: cut short \(no trainer_state.json\)"):
        check_checkpoint(folder, 0, ema=False)
    (folder / CHECKPOINT_DONE).write_text(json.dumps({"files": {}}))
    with pytest.raises(ConfigError, match="has no EMA weights"):
        check_checkpoint(folder, 0, ema=True)
    with pytest.raises(ConfigError, match="random states .* cannot be restored"):
        check_checkpoint(folder, 0, ema=False)


def whole_checkpoint(folder: Path) -> Path:
    """Marks a checkpoint folder whole, as `save_checkpoint` does: its marker lists its files."""
    from training.checkpoints import CHECKPOINT_DONE, checkpoint_files

    (folder / CHECKPOINT_DONE).write_text(json.dumps({"global_step": 1, "files": checkpoint_files(folder)}))
    return folder


def test_a_checkpoint_whose_files_are_not_those_its_marker_lists_is_cut_short(tmp_path: Path) -> None:
    from training.checkpoints import CHECKPOINT_DONE, checkpoints, cut_short

    folder = tmp_path / "checkpoint-1"
    (folder / "unet").mkdir(parents=True)
    (folder / "optimizer.bin").write_bytes(b"optimizer")
    (folder / "unet" / "config.json").write_text("{}")
    whole_checkpoint(folder)
    assert cut_short(folder) is None and checkpoints(tmp_path) == [folder]
    (folder / "optimizer.bin").write_bytes(b"opt")
    assert cut_short(folder) == "cut short (optimizer.bin is 3 bytes, not 9)"
    (folder / "optimizer.bin").unlink()
    shutil.rmtree(folder / "unet")
    assert cut_short(folder) == "cut short (optimizer.bin missing, unet/config.json missing)"
    assert checkpoints(tmp_path) == [] and checkpoints(tmp_path, complete=False) == [folder]
    for marker in ('{"global_step": 1}', '{"files": ["optimizer.bin"]}', '{"files": {"optimizer.bin": "9"}}', "{"):
        (folder / CHECKPOINT_DONE).write_text(marker)
        assert cut_short(folder) == (
            "cut short (trainer_state.json unreadable or without the list of the checkpoint's files)"
        ), marker


def test_random_states_accelerate_would_not_restore_are_refused_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """accelerate restores the random states in one try block and only logs a failure, so every state
    it would read here (Python's, numpy's, torch's, each device's) must be there and apply."""
    import accelerate.utils
    from accelerate import PartialState
    from accelerate.checkpointing import save_accelerator_state

    from training.checkpoints import check_checkpoint, random_state_setters

    def checkpoint(name: str, without: str | None = None, **values: Any) -> Path:
        """A whole checkpoint of the random states accelerate saves here, less one or with some replaced."""
        folder = tmp_path / name
        folder.mkdir()
        save_accelerator_state(str(folder), [], [], [], [], process_index=0, step=0)
        states_file = folder / "random_states_0.pkl"
        states = torch.load(states_file, weights_only=False)
        states.pop(without, None)
        torch.save(states | values, states_file)
        return whole_checkpoint(folder)

    def refused(folder: Path) -> str:
        with pytest.raises(ConfigError) as error:
            check_checkpoint(folder, 0, ema=False)
        message = str(error.value)
        assert "\n" not in message and message.startswith(f"resume_from_checkpoint={str(folder)!r}: its random states")
        return message.partition("cannot be restored (")[2].partition(");")[0]

    PartialState()  # accelerate's saving logs through it
    saved = torch.load(checkpoint("checkpoint-1") / "random_states_0.pkl", weights_only=False)
    assert set(random_state_setters()) == set(saved) - {"step"}  # every state accelerate saves here is checked
    check_checkpoint(tmp_path / "checkpoint-1", 0, ema=False)  # as accelerate saved it: it restores
    for key in ("random_state", "numpy_random_seed", "torch_manual_seed"):
        assert refused(checkpoint(f"checkpoint-no-{key}", without=key)) == f"no {key}"
    for key, bad in (
        ("random_state", (3, (1, 2), None)),
        ("numpy_random_seed", "not a state"),
        ("torch_manual_seed", torch.zeros(10, dtype=torch.uint8)),
    ):
        said = refused(checkpoint(f"checkpoint-bad-{key}", **{key: bad}))
        assert said.startswith(f"{key} does not apply: "), said
    folder = checkpoint("checkpoint-garbled")
    (folder / "random_states_0.pkl").write_bytes(b"not a pickle of random states")
    assert refused(whole_checkpoint(folder)).startswith("unreadable: ")
    # Saved where accelerate saw no GPU, resumed where it sees one: it would read CUDA states it lacks;
    # and states of more CUDA devices than there are here do not apply.
    cpu_saved = checkpoint("checkpoint-cpu", without="torch_cuda_manual_seed")
    more = [torch.zeros(16, dtype=torch.uint8)] * (torch.cuda.device_count() + 1)
    more_devices = checkpoint("checkpoint-more", torch_cuda_manual_seed=more)
    monkeypatch.setattr(accelerate.utils, "is_cuda_available", lambda: True)
    assert refused(cpu_saved) == "no torch_cuda_manual_seed: saved without cuda, this machine has it"
    assert refused(more_devices).startswith("torch_cuda_manual_seed does not apply: ")


def test_a_checkpoint_of_a_run_with_other_settings_is_refused_and_one_that_runs_longer_resumes(
    training_study: dict, tmp_path: Path
) -> None:
    """A checkpoint records its run's pinned inputs and fingerprinted settings; resumed with others (a
    learning rate, a resolution) it would make a model whose card names settings only some steps had:
    refused in one line naming them, nothing published. Only the run's length may change."""
    from training.checkpoints import CHECKPOINT_DONE

    out = tmp_path / "out"
    options = ["--max_train_steps", "2", "--checkpointing_steps", "2", "--output_repo", "settings-first"]
    train(training_study, training_study["model"], out, *options)
    recorded = json.loads((out / "checkpoint-2" / CHECKPOINT_DONE).read_text())["run"]
    assert recorded["inputs"]["pretrained_model_name_or_path"] == training_study["model"]
    assert recorded["inputs"]["dataset_name"].startswith(training_study["train"].partition("@")[0] + "@")
    assert recorded["parameters"]["learning_rate"] == 1e-3 and "max_train_steps" not in recorded["parameters"]
    assert "output_dir" not in recorded["parameters"] and "cpu_threads" not in recorded["parameters"]
    resumed = ["--resume_from_checkpoint", "latest", "--max_train_steps", "3", "--checkpointing_steps", "2"]
    refused = train(training_study, training_study["model"], out, *resumed, "--learning_rate", "2e-3", "--resolution",
                    "32", "--output_repo", "settings-other", check=False)  # fmt: skip
    assert refused.returncode == 2
    (line,) = [line for line in refused.stderr.splitlines() if "error:" in line]
    assert line.endswith(
        f"resume_from_checkpoint={str(out / 'checkpoint-2')!r}: written by a run with other inputs or settings "
        "(learning_rate 0.001 there, 0.002 here; resolution 64 there, 32 here); resume with the same ones, or "
        "start a new run in another folder"
    ), line
    with pytest.raises(StoreError, match="unknown model repo"):
        LocalStore(training_study["store_root"]).resolve("study/settings-other", "model")
    # As a checkpoint of an older version records it: without the settings added since. One this run
    # leaves at its default matches; one it sets otherwise (the learning rate here) is refused.
    done = out / "checkpoint-2" / CHECKPOINT_DONE
    written = json.loads(done.read_text())
    older = {key: value for key, value in recorded["parameters"].items()
             if key not in ("snr_gamma", "noise_offset", "learning_rate")}  # fmt: skip
    assert recorded["parameters"]["snr_gamma"] is None and recorded["parameters"]["noise_offset"] == 0.0
    done.write_text(json.dumps({**written, "run": {**recorded, "parameters": older}}))
    refused = train(training_study, training_study["model"], out, *resumed, "--output_repo", "settings-older",
                    check=False)  # fmt: skip
    assert refused.returncode == 2
    (line,) = [line for line in refused.stderr.splitlines() if "error:" in line]
    assert "(learning_rate '(unset)' there, 0.001 here); resume with the same ones" in line, line
    older["learning_rate"] = recorded["parameters"]["learning_rate"]
    done.write_text(json.dumps({**written, "run": {**recorded, "parameters": older}}))
    longer = train(training_study, training_study["model"], out, *resumed, "--output_repo", "settings-longer")
    assert "resuming from" in longer.stdout + longer.stderr
    assert [entry["step"] for entry in state(out)["log_history"]] == [1, 2, 3]


def test_settings_a_checkpoint_did_not_record_are_not_checked_and_differences_are_counted() -> None:
    from training.checkpoints import settings_problem

    now = {"inputs": {"model": "ns/m@1"}, "parameters": {f"s{i}": i for i in range(5)}}
    assert settings_problem(None, now) is None  # written before checkpoints recorded their run
    assert settings_problem(json.loads(json.dumps(now)), now) is None
    was = {"inputs": {"model": "ns/m@2"}, "parameters": {"s0": 0, "s1": 9, "s2": 9, "s3": 9, "gone": True}}
    assert settings_problem(was, now) == (
        "written by a run with other inputs or settings (model 'ns/m@2' there, 'ns/m@1' here; gone True there, "
        "'(unset)' here; s1 9 there, 1 here; and 3 more)"
    )


def test_a_setting_added_since_a_checkpoint_was_written_matches_only_at_its_default() -> None:
    """An argument added to the script after a checkpoint was written is not in its record: that run
    had the default's behaviour, so a resume leaving it at the default matches, and one setting it
    otherwise is refused by name. A setting the checkpoint records is compared as before, default or not."""
    import types

    from training.checkpoints import argument_defaults, settings_problem
    from training.train_text_to_image import TrainArguments

    args = TrainArguments(pretrained_model_name_or_path="m", dataset_name="d", snr_gamma=5.0)
    fingerprinted = {"snr_gamma": 5.0, "noise_offset": 0.0, "validation_prompts": []}
    run = types.SimpleNamespace(args=args, parameters=fingerprinted)
    defaults = argument_defaults(run)
    assert defaults == {"snr_gamma": None, "noise_offset": 0.0, "validation_prompts": []}  # only fingerprinted ones
    old = {"inputs": {}, "parameters": {"learning_rate": 1e-3}}  # written before the three existed
    now = {"inputs": {}, "parameters": {"learning_rate": 1e-3, "noise_offset": 0.0, "validation_prompts": []}}
    assert settings_problem(old, now, defaults) is None
    assert settings_problem(old, now) == (  # without the defaults, the old refusal
        "written by a run with other inputs or settings (noise_offset '(unset)' there, 0.0 here; "
        "validation_prompts '(unset)' there, [] here)"
    )
    set_otherwise = {"inputs": {}, "parameters": {**now["parameters"], "snr_gamma": 5.0}}
    assert settings_problem(old, set_otherwise, defaults) == (
        "written by a run with other inputs or settings (snr_gamma '(unset)' there, 5.0 here)"
    )
    recorded = {"inputs": {}, "parameters": {**now["parameters"], "noise_offset": 0.1}}
    assert settings_problem(recorded, now, defaults) == (
        "written by a run with other inputs or settings (noise_offset 0.1 there, 0.0 here)"
    )


def test_a_checkpoint_of_another_number_of_processes_is_refused_by_name(tmp_path: Path) -> None:
    """Each process saves its own random states; resumed in another number of processes a step's batch
    and noise differ (one to two would also fail on a missing file): refused, both ways, in one line."""
    from accelerate import PartialState
    from accelerate.checkpointing import save_accelerator_state

    from training.checkpoints import check_checkpoint

    PartialState()  # accelerate's saving logs through it
    for processes in (1, 2, 3):
        folder = tmp_path / f"{processes}-processes" / "checkpoint-2"
        folder.mkdir(parents=True)
        for index in range(processes):  # as each process of such a run saves
            save_accelerator_state(str(folder), [], [], [], [], process_index=index, step=2)
        whole_checkpoint(folder)
        for resumed_in in (1, 2, 3):
            if resumed_in == processes:
                for index in range(resumed_in):
                    check_checkpoint(folder, index, ema=False, processes=resumed_in)
                continue
            with pytest.raises(ConfigError) as error:
                check_checkpoint(folder, 0, ema=False, processes=resumed_in)
            assert str(error.value) == (
                f"resume_from_checkpoint={str(folder)!r}: written by {processes} process(es), this run has "
                f"{resumed_in}; resume in {processes} (each process's share of a batch and its random states "
                "are part of the run)"
            )


def test_training_data_is_checked_by_the_decoder_every_stage_uses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows kept or skipped by `decode_image` (bytes, or an imagefolder's path); a skipped row is counted."""
    import io
    from types import SimpleNamespace

    from PIL import Image

    from pipelines.artifacts.dataset_files import decode_image
    from training import train_text_to_image as script

    def png(image: Image.Image) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()

    on_disk = tmp_path / "face.png"
    Image.new("RGB", (8, 8), "red").save(on_disk)
    cells = [
        {"bytes": png(Image.fromarray(np.full((8, 8), 200, np.uint16))), "path": None},
        {"bytes": b"not an image", "path": None},
        {"bytes": None, "path": str(on_disk)},
        {"bytes": png(Image.new("P", (8, 8))), "path": None},
    ]
    data = datasets.Dataset.from_dict({"image": cells}, features=datasets.Features({"image": datasets.Image()}))
    decoded = []
    monkeypatch.setattr(script, "decode_image", lambda cell: decoded.append(cell) or decode_image(cell))
    kept, skipped = script.decodable(data, SimpleNamespace(image_column="image", on_corrupt="skip"))
    assert (len(kept), skipped, len(decoded)) == (3, 1, 4)
    with pytest.raises(script.DataError, match=r"^the image of training row 1 cannot be decoded"):
        script.decodable(data, SimpleNamespace(image_column="image", on_corrupt="stop"))


def test_checkpoints_whole_or_being_written_are_never_published(tmp_path: Path) -> None:
    from pipelines.artifacts.store import content_revision
    from training.train_text_to_image import TrainTextToImage

    folder = tmp_path / "model"
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "config.json").write_text("{}")
    published = content_revision(folder, TrainTextToImage.ignore)
    for leftover in ("checkpoint-2/optimizer.bin", ".checkpoint-4.partial/unet/diffusion_pytorch_model.safetensors"):
        (folder / leftover).parent.mkdir(parents=True)
        (folder / leftover).write_bytes(b"resume state")
    assert content_revision(folder, TrainTextToImage.ignore) == published


@pytest.mark.slow
def test_a_checkpoint_cut_short_at_any_of_its_files_is_skipped_or_refused_by_name(
    training_study: dict, tmp_path: Path
) -> None:
    """A real checkpoint with each one of its files deleted, and each one truncated, in turn: `latest`
    skips it, saying which file, and resumes the checkpoint before; named, it is refused in one line
    that names it and the file. accelerate never gets to load it."""
    from types import SimpleNamespace

    from training.checkpoints import check_checkpoint, resume

    trained = tmp_path / "trained"
    train(training_study, training_study["model"], trained, "--max_train_steps", "2", "--checkpointing_steps", "1",
          "--use_ema", "--output_repo", "cut-at-each-file")  # fmt: skip
    source = trained / "checkpoint-2"
    files = sorted(p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file())
    assert {"trainer_state.json", "optimizer.bin", "random_states_0.pkl", EMA := "ema_unet.safetensors",
            "unet/diffusion_pytorch_model.safetensors"} <= set(files), files  # fmt: skip
    out = tmp_path / "out"
    shutil.copytree(trained / "checkpoint-1", out / "checkpoint-1")
    cut = out / "checkpoint-2"
    for name in files:
        for damage in ("deleted", "truncated"):
            shutil.rmtree(cut, ignore_errors=True)
            shutil.copytree(source, cut)
            if damage == "deleted":
                (cut / name).unlink()
            else:
                (cut / name).write_bytes((cut / name).read_bytes()[: (cut / name).stat().st_size // 2])
            said, loaded = [], []
            accelerator = SimpleNamespace(
                print=said.append, load_state=loaded.append, process_index=0, num_processes=1
            )
            step, _ = resume(out, "latest", accelerator, None)
            assert (step, loaded) == (1, [str(out / "checkpoint-1")]), (name, damage)
            assert said[0].startswith("skipping checkpoint-2: cut short (") and name in said[0], (name, damage, said)
            with pytest.raises(ConfigError) as refused:
                check_checkpoint(cut, 0, ema=name != EMA)
            message = str(refused.value)
            assert "\n" not in message and message.startswith(f"resume_from_checkpoint={str(cut)!r}: cut short ")
            assert name in message, (name, damage, message)


def test_adamw_over_all_tensors_at_once_updates_the_weights_as_the_per_tensor_loop() -> None:
    """The training scripts ask AdamW for its one-kernel (`foreach`) update, which PyTorch picks by
    itself on a GPU only, because on a CPU it is faster and gives the same weights to the bit: the
    world's calibration and every published revision stay what they were. Checked on the world
    model's UNet and text encoder, with the scripts' default AdamW settings and clipping."""
    from pipelines.modeling.world import SIZE, build_world_pipeline
    from training.models import make_adamw

    defaults = TrainArguments(pretrained_model_name_or_path="m", dataset_name="d", output_dir="o")
    pipeline = build_world_pipeline(["a photo of a nurse", "a photo of a CEO"])
    ids = pipeline.tokenizer(["a photo of a nurse"] * 4, padding="max_length", return_tensors="pt").input_ids
    trained = []
    for foreach in (False, True):
        unet, text_encoder = copy.deepcopy(pipeline.unet), copy.deepcopy(pipeline.text_encoder)
        parameters = [*unet.parameters(), *text_encoder.parameters()]
        if foreach:  # the scripts' own optimiser
            optimizer = make_adamw(parameters, 1e-3, defaults)
            assert optimizer.defaults["foreach"] is True
        else:
            optimizer = torch.optim.AdamW(parameters, lr=1e-3, betas=(defaults.adam_beta1, defaults.adam_beta2),
                                          weight_decay=defaults.adam_weight_decay, eps=defaults.adam_epsilon,
                                          foreach=False)  # fmt: skip
        generator = torch.Generator().manual_seed(0)
        torch.manual_seed(0)  # the text encoder's dropout
        for _ in range(3):
            x = torch.randn(4, 3, SIZE, SIZE, generator=generator)
            timesteps = torch.randint(0, 1000, (4,), generator=generator)
            out = unet(x, timesteps, text_encoder(ids)[0], return_dict=False)[0]
            torch.nn.functional.mse_loss(out, x).backward()
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            optimizer.zero_grad()
        trained.append([p.detach() for p in parameters])
    assert len(trained[0]) > 100
    assert all(torch.equal(a, b) for a, b in zip(*trained))
    assert not all(torch.equal(a, b) for a, b in zip(trained[0], pipeline.unet.parameters()))  # it trained


def test_empty_prompts_replace_that_share_of_captions_afresh_each_epoch_and_leave_other_draws() -> None:
    """--proportion_empty_prompts: each row's caption is the empty prompt with that probability, drawn
    anew each epoch from the seed, the epoch and the row (so a resumed run draws the same), from a
    stream of its own: the flips and crops each row draws are those of a run without it."""
    from training.train_text_to_image import EpochOrder

    rows = 20_000
    order, plain = EpochOrder(rows, seed=3, empty_prompts=0.1), EpochOrder(rows, seed=3)
    dropped = []
    for epoch in (0, 1):
        order.epoch = plain.epoch = epoch
        dropped.append(np.array([order.drops_caption(row) for row in range(rows)]))
        assert [order.draws(row).random() for row in range(50)] == [plain.draws(row).random() for row in range(50)]
        assert list(order) == list(plain)
    for epoch in dropped:
        assert epoch.mean() == pytest.approx(0.1, abs=0.01)  # 3 standard errors: 0.0064
    assert (dropped[0] & dropped[1]).mean() == pytest.approx(0.01, abs=0.003)  # independent between epochs
    again = EpochOrder(rows, seed=3, empty_prompts=0.1)
    assert np.array_equal([again.drops_caption(row) for row in range(rows)], dropped[0])
    assert not any(plain.drops_caption(row) for row in range(rows))


def test_cached_latents_give_a_dropped_row_the_empty_prompt_s_tokens_and_text_states(tmp_path: Path) -> None:
    """With cached latents a dropped row keeps its picture and gets the empty prompt's tokens (a trained
    text encoder) or its cached text states (a frozen one); every other row keeps its own caption."""
    from training.train_text_to_image import CachedLatents, EpochOrder

    rows = 400
    np.save(tmp_path / "latents.npy", np.arange(rows, dtype=np.float16).reshape(rows, 1, 1, 1))
    np.save(tmp_path / "hidden.npy", np.array([[[1.0]], [[2.0]], [[0.0]]], np.float16))  # two captions, then ""
    tokens = [{"input_ids": torch.tensor([row % 2 + 5])} for row in range(rows)]
    order = EpochOrder(rows, seed=0, empty_prompts=0.25)
    cached = CachedLatents(tmp_path, tokens, [row % 2 for row in range(rows)], order,
                           ({"input_ids": torch.tensor([0])}, 2))  # fmt: skip
    items = [cached[row] for row in range(rows)]
    dropped = [order.drops_caption(row) for row in range(rows)]
    assert 0.15 < np.mean(dropped) < 0.35
    for row, (item, drop) in enumerate(zip(items, dropped)):
        assert item["latents"].item() == row
        assert item["input_ids"].item() == (0 if drop else row % 2 + 5)
        assert item["hidden"].item() == (0.0 if drop else row % 2 + 1.0)


def test_each_distinct_caption_is_encoded_once_with_the_same_states_and_gradients() -> None:
    """A batch that repeats captions is encoded once per distinct caption: the states and the text
    encoder's gradients are those of encoding every row (to float rounding). An encoder that draws
    dropout masks encodes every row, each with its own mask."""
    from pipelines.modeling.world import build_world_pipeline
    from training.models import draws_dropout, encode_each_caption_once, encode_text

    texts = [f"a photo of a {job}" for job in ("nurse", "CEO", "teacher", "firefighter", "hairdresser")] + [""]
    pipeline = build_world_pipeline(texts)
    encoder = pipeline.text_encoder.train()
    assert not draws_dropout(encoder)  # the world's encoder has no dropout
    rows = [0, 1, 0, 5, 5, 0, 1] + torch.randint(0, 6, (57,), generator=torch.Generator().manual_seed(0)).tolist()
    tokens = pipeline.tokenizer([texts[i] for i in rows], padding="max_length", return_tensors="pt")
    weights = torch.linspace(-1, 1, 64, dtype=torch.float64)[:, None, None]
    results = []
    encoder.double()  # float64, so that the sums' other order is far below what the test asks
    for encode in (encode_text, encode_each_caption_once):
        encoder.zero_grad()
        states = encode(encoder, tokens.input_ids, tokens.attention_mask)
        (states * weights).sum().backward()
        results.append((states.detach(), [p.grad.clone() for p in encoder.parameters() if p.grad is not None]))
    (every, every_grads), (once, once_grads) = results
    assert every.shape == once.shape == (64, tokens.input_ids.shape[1], encoder.config.project_dim)
    assert torch.allclose(every, once, atol=1e-9) and not torch.equal(once[0], once[1])
    assert len(every_grads) == len(once_grads) > 10
    assert all(torch.allclose(a, b, atol=1e-9, rtol=1e-9) for a, b in zip(every_grads, once_grads))
    # In float32, as training runs, the same to the bit every time (a training's weights are
    # reproducible): the copies' gradients are summed in one order, whatever the threads do.
    encoder.float()
    weights = torch.randn(every.shape, generator=torch.Generator().manual_seed(1))
    encoder.zero_grad()
    (encode_each_caption_once(encoder, tokens.input_ids, tokens.attention_mask) * weights).sum().backward()
    once_grads = [p.grad.clone() for p in encoder.parameters() if p.grad is not None]
    for _ in range(5):
        encoder.zero_grad()
        (encode_each_caption_once(encoder, tokens.input_ids, tokens.attention_mask) * weights).sum().backward()
        assert all(torch.equal(p.grad, b) for p, b in zip([p for p in encoder.parameters() if p.grad is not None],
                                                           once_grads))  # fmt: skip
    # With dropout, in training mode only.
    dropping = copy.deepcopy(encoder)
    dropping.config.hidden_dropout_prob = 0.1
    for module in dropping.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.1
    assert draws_dropout(dropping) and not draws_dropout(dropping.eval())
    plain = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.1))  # no config: its modules say
    assert draws_dropout(plain) and not draws_dropout(torch.nn.Linear(2, 2))
    dropping.train()
    torch.manual_seed(0)
    masked = encode_each_caption_once(dropping, tokens.input_ids, tokens.attention_mask)
    assert not torch.allclose(masked[0], masked[2])  # the same caption, two masks


@pytest.mark.parametrize(("rank", "warned"), [(None, True), ("0", True), ("1", False)])
def test_bf16_autocast_on_a_cpu_without_bfloat16_warns_once_a_machine(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path: Path, rank: str | None, warned: bool
) -> None:
    """--mixed_precision bf16 on a CPU that emulates bfloat16 (7-8x slower steps measured on an AVX2
    EPYC) is said by the first local process only, not by each process of a launch."""
    from types import SimpleNamespace

    import accelerate

    from pipelines.modeling import diffusion
    from training import models as script

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(diffusion, "_WARNED", set())
    monkeypatch.setattr(accelerate, "Accelerator", lambda **kwargs: SimpleNamespace(is_main_process=False, **kwargs))
    if rank is None:
        monkeypatch.delenv("LOCAL_RANK", raising=False)
    else:
        monkeypatch.setenv("LOCAL_RANK", rank)
    for precision in ("no", "bf16"):
        args = SimpleNamespace(mixed_precision=precision, gradient_accumulation_steps=1, report_to="none",
                               train_text_encoder=False, allow_tf32=False)  # fmt: skip
        assert script.make_accelerator(args, tmp_path).mixed_precision == precision
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: mixed_precision=bf16")]
    assert len(lines) == warned
