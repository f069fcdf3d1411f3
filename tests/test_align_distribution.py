"""Distributional-alignment fine-tuning (training/align_distribution.py): its sampler makes the
pipeline's images, its gradients reach what is trained, micro-batches add up to one batch, and its
arguments refuse what cannot run."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from pipelines.errors import ConfigError
from pipelines.modeling.world import build_world_pipeline
from training import align_distribution as align

from .conftest import REPO_ROOT, TINY_PROFESSIONS, launcher

PROMPTS = ["a photo of a nurse", "a photo of a CEO", "ein Foto einer Pflegekraft"]


@pytest.fixture(scope="module")
def world_pipe() -> Any:
    torch.manual_seed(0)
    pipe = build_world_pipeline(PROMPTS, seed=3)
    pipe.set_progress_bar_config(disable=True)
    pipe.unet.eval(), pipe.text_encoder.eval()  # as loaded: no dropout
    return pipe


def arguments(**values: Any) -> SimpleNamespace:
    defaults = {"num_inference_steps": 6, "guidance_scale": 1.0, "gradient_steps": None, "gradient_scaling": "paper"}
    return SimpleNamespace(**(defaults | values))


def parts_of(pipe: Any) -> SimpleNamespace:
    return SimpleNamespace(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder)


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_the_sampler_makes_the_pipeline_s_images_from_the_same_seeds(world_pipe: Any, guidance: float) -> None:
    seeds = [11, 12, 13]
    args = arguments(guidance_scale=guidance)
    with torch.no_grad():
        expected = world_pipe(
            [PROMPTS[0]] * 3,
            num_inference_steps=args.num_inference_steps,
            guidance_scale=guidance,
            generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
            output_type="np",
        ).images
        noise = align.initial_noise(seeds, (3, 16, 16), "cpu")
        states = align.text_states(parts_of(world_pipe), [PROMPTS[0]] * 3, guidance, "cpu")
        images = align.sample(world_pipe.unet, world_pipe.vae, world_pipe.scheduler, states, noise, args, grad=False)
    assert images.shape == (3, 3, 16, 16)
    assert np.abs(images.permute(0, 2, 3, 1).numpy() - expected).max() < 1e-4


def test_gradients_reach_the_text_encoder_and_the_unet_through_the_denoising_steps(world_pipe: Any) -> None:
    import copy

    unet, text_encoder = copy.deepcopy(world_pipe.unet), copy.deepcopy(world_pipe.text_encoder)
    parts = SimpleNamespace(tokenizer=world_pipe.tokenizer, text_encoder=text_encoder)
    noise = align.initial_noise([1, 2], (3, 16, 16), "cpu")
    grads = {}
    for steps in (None, 1):
        unet.zero_grad(), text_encoder.zero_grad()
        states = align.text_states(parts, [PROMPTS[1]] * 2, 1.0, "cpu")
        images = align.sample(
            unet, world_pipe.vae, world_pipe.scheduler, states, noise, arguments(gradient_steps=steps), grad=True
        )
        images[:, 0].mean().backward()  # more red
        grads[steps] = {
            "unet": torch.cat([p.grad.flatten() for p in unet.parameters() if p.grad is not None]),
            "text": torch.cat([p.grad.flatten() for p in text_encoder.parameters() if p.grad is not None]),
        }
        for name, values in grads[steps].items():
            assert torch.isfinite(values).all() and values.abs().sum() > 0, (steps, name)
    # Only the last step kept: another (smaller) gradient than through every step.
    assert not torch.allclose(grads[None]["unet"], grads[1]["unet"])


def test_each_step_s_gradient_is_scaled_by_its_coefficient_or_not_at_all(world_pipe: Any) -> None:
    """With gradients through the last step only, the paper's scaling multiplies the whole gradient by
    that step's coefficient; --gradient_scaling none leaves it as autograd makes it."""
    import copy

    text_encoder = copy.deepcopy(world_pipe.text_encoder)
    parts = SimpleNamespace(tokenizer=world_pipe.tokenizer, text_encoder=text_encoder)
    noise = align.initial_noise([3, 4], (3, 16, 16), "cpu")
    grads = {}
    for scaling in ("paper", "none"):
        text_encoder.zero_grad()
        states = align.text_states(parts, [PROMPTS[0]] * 2, 1.0, "cpu")
        args = arguments(gradient_steps=1, gradient_scaling=scaling)
        images = align.sample(world_pipe.unet, world_pipe.vae, world_pipe.scheduler, states, noise, args, grad=True)
        images[:, 2].mean().backward()  # more blue
        grads[scaling] = torch.cat([p.grad.flatten() for p in text_encoder.parameters() if p.grad is not None])
    last = align.gradient_coefficients(world_pipe.scheduler)[-1]  # the scheduler was set to 6 steps by sample
    assert last != pytest.approx(1.0, abs=0.05)  # else the test could not tell the two apart
    error = (grads["paper"] - last * grads["none"]).abs().max() / grads["paper"].abs().max()
    assert error < 1e-5, error
    assert grads["none"].abs().sum() > 0


def test_the_gradient_coefficients_are_normalised_and_survive_a_zero_terminal_snr(world_pipe: Any) -> None:
    scheduler = world_pipe.scheduler
    scheduler.set_timesteps(20)
    assert float(scheduler.alphas_cumprod[int(scheduler.timesteps[0])]) < 1e-6  # the world's: zero terminal SNR
    coefficients = align.gradient_coefficients(scheduler)
    assert len(coefficients) == 20 and all(math.isfinite(c) and c > 0 for c in coefficients)
    assert math.exp(sum(math.log(c) for c in coefficients) / 20) == pytest.approx(1.0)


def test_every_prompt_once_per_epoch_and_the_noise_depends_on_the_step_alone() -> None:
    order = [align.prompt_of_visit(step, 5, seed=7) for step in range(15)]
    for epoch in range(3):
        assert sorted(order[5 * epoch : 5 * epoch + 5]) == list(range(5))
    assert order[:5] != order[5:10]  # a new order each epoch
    assert align.image_seeds(3, 4, 7) == align.image_seeds(3, 4, 7) != align.image_seeds(4, 4, 7)
    assert align.image_seeds(3, 4, 7)[:2] == align.image_seeds(3, 2, 7)  # a larger batch adds images


@pytest.mark.parametrize(("attribute", "visits"), [("gender", 3), ("gender", 1), ("age", 2)])
def test_an_epoch_visits_each_prompt_that_names_no_gender_neutral_visits_times(attribute: str, visits: int) -> None:
    rows = [{"gender": "female"}, {"gender": "neutral"}, {"gender": "male"}, {}, {"gender": "neutral"}]
    epoch = align.epoch_visits(rows, arguments(attribute=attribute, neutral_visits=visits), ["male", "female"])
    named = {0, 2} if attribute == "gender" else set()  # only gender is named by a prompt
    assert sorted(epoch) == sorted(i for i in range(5) for _ in range(1 if i in named else visits))
    order = [epoch[align.prompt_of_visit(v, len(epoch), seed=3)] for v in range(2 * len(epoch))]
    assert sorted(order[: len(epoch)]) == sorted(epoch) == sorted(order[len(epoch) :])  # every visit, each epoch


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"classifier": "world-cue", "attribute": "race"}, r"^attribute='race': allowed gender"),
        ({"classifier": "fairface"}, r"^classifier='fairface' needs classifier_model"),
        ({"preservation": "clip"}, r"^preservation='clip' needs similarity_model"),
        ({"gradient_accumulation_steps": 2}, r"^gradient_accumulation_steps: use images_per_backward"),
        ({"train_unet": False}, r"^train_unet=false without train_text_encoder: nothing to train"),
        ({"guidance_scale": 0.5}, r"^guidance_scale=0.5: at least 1"),
        ({"resolution": 20}, r"^resolution=20: a multiple of 8"),
        ({"neutral_visits": 0}, r"^neutral_visits=0: must be at least 1"),
    ],
)
def test_arguments_that_cannot_run_are_refused_in_one_line(tmp_path: Path, values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        align.AlignArguments(store_root=str(tmp_path), **values)


# --- the recipe on the planted-bias world ---------------------------------------------------------

TRAINED = ["CEO", "nurse", "software developer", "hairdresser"]  # in en and de (alignment_offline.yaml)


def female_counts(store: Any, images: str, first: int = 40) -> dict[tuple[str, str], tuple[int, int]]:
    """(female figures, figures) per (language, occupation) of an images dataset's neutral prompts, from
    its attributes, over its first `first` images of each prompt (the methods table's n)."""
    from pipelines.artifacts.reader import DatasetArtifact

    attributes = DatasetArtifact(store.resolve(f"t2i-bias/{images}-attributes", "dataset"), images)
    counts = {}
    for config in attributes.configs:
        info = attributes.config_info(config)
        if info["variant"] != "neutral":
            continue
        rows = attributes.rows(config, ["profession", "gender", "sample_index"])
        rows = [r for r in rows if r["sample_index"] < first]
        for occupation in {r["profession"] for r in rows}:
            mine = [r["gender"] == "female" for r in rows if r["profession"] == occupation]
            counts[(info["language"], occupation)] = (sum(mine), len(mine))
    return counts


def female_shares(store: Any, images: str, first: int = 40) -> dict[tuple[str, str], float]:
    """The share of female figures per (language, occupation) of an images dataset's neutral prompts."""
    return shares_of(female_counts(store, images, first))


def shares_of(counts: dict[tuple[str, str], tuple[int, int]]) -> dict[tuple[str, str], float]:
    return {cell: female / total for cell, (female, total) in counts.items()}


def rms_distance(shares: dict, cells: list, target: float) -> float:
    return math.sqrt(sum((shares[cell] - target) ** 2 for cell in cells) / len(cells))


@pytest.mark.slow
@pytest.mark.timeout(2700)  # the offline study (when this test is the first to need it), then ~15 minutes
def test_the_alignment_recipe_moves_the_world_towards_its_target_and_keeps_control(
    offline_study: dict, tmp_path: Path
) -> None:
    """alignment_offline.yaml on the offline study's store: the world model's text encoder aligned
    towards parity on four occupations in two languages, and towards 70% female; every cell is then
    measured (`check_alignment_recipe`)."""
    import os

    from .conftest import machine_paths_in, study_copy

    root = study_copy(offline_study, tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.run", "pipelines/recipes/alignment_offline.yaml", "--store_root", str(root)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=2400, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "train_world: t2i-bias/world-model@" in result.stdout + result.stderr  # the offline study's, reused
    assert machine_paths_in(root) == []
    check_alignment_recipe(root)


def fit_to(counts: dict[tuple[str, str], tuple[int, int]], cells: list[tuple[str, str]], share: float) -> float:
    """goodness_of_fit's p-value for the female counts of `cells` all being at `share` (a model at that
    share in every cell gets p < 0.05 one time in twenty)."""
    from pipelines.reporting.statistics import goodness_of_fit

    fit = goodness_of_fit([counts[c][0] for c in cells], [counts[c][1] for c in cells], [share] * len(cells))
    return fit["p_value"]


def mean_of(shares: dict, cells: list) -> float:
    return sum(shares[cell] for cell in cells) / len(cells)


def spread(shares: dict, cells: list) -> float:
    """The cells' standard deviation about their own mean: how unequal the occupations still are."""
    return rms_distance(shares, cells, mean_of(shares, cells))


def check_alignment_recipe(root: Path) -> None:
    """What alignment_offline.yaml must show on a store it ran on. Trained cells and cells it never saw
    (two occupations, two languages) come closer to parity; the 70/30 target is met over the trained
    cells together, with the occupations' skew shrunk, and the verdict can say no: the base model and
    the parity model are rejected at 0.7, the 70/30 model at 0.5; explicit-gender control stays in the
    trained languages; the methods table gives in-sample and held-out rows with the method's cost; the
    card names method, target, classifier and losses."""
    import datasets

    from pipelines.artifacts.store import LocalStore, card_metadata

    store = LocalStore(root)
    base_counts, aligned_counts, seventy_counts = (
        female_counts(store, name) for name in ("world-base-eval", "world-aligned-methods", "world-aligned-70-methods")
    )
    base, aligned, seventy = (shares_of(counts) for counts in (base_counts, aligned_counts, seventy_counts))
    trained = [(language, o) for language in ("en", "de") for o in TRAINED]
    held_out = sorted(set(base) - set(trained))
    assert len(trained) == 8 and len(held_out) == 16
    # Towards parity where it was trained, and where it was not (other occupations, other languages).
    assert rms_distance(aligned, trained, 0.5) < 0.85 * rms_distance(base, trained, 0.5)  # 0.094-0.133 vs 0.37
    assert rms_distance(aligned, held_out, 0.5) < rms_distance(base, held_out, 0.5)  # 0.266-0.298 vs 0.33
    # 70% female asked. Over the trained cells together the share ends within 0.1 of 0.7 (320 images: a
    # model at 0.7 misses that by sampling about once in 10,000; the base and parity models, near 0.5,
    # always), the occupations' skew at least a quarter smaller than the base's (the cells' spread about
    # their own mean: a uniform shift of the base to 0.7 on average fails here), and the cells nearer
    # 0.7 than the parity model's. Not each cell at 0.7: on five worlds the cells ended within RMS 0.073
    # to 0.136 of 0.7, but on an AMD EPYC's (the parallel suite, 2026-12-07) at 0.207, mean 0.688, the
    # occupations' order kept (CEO 0.4 and 0.625, nurse 0.8 and 1.0; spread 0.20 against the base's
    # 0.37): README, "Towards 70% female". The fit test below says no where it should: it rejects the
    # base model and the parity model at 0.7 (a method that ended every model near 0.7, as one with the
    # paper's gradient scaling did, fails here), and the 70/30 model at 0.5.
    cells = [round(seventy[c], 3) for c in trained]
    assert abs(mean_of(seventy, trained) - 0.7) < 0.1, cells
    assert spread(seventy, trained) < 0.75 * spread(base, trained), (cells, spread(base, trained))
    assert rms_distance(seventy, trained, 0.7) < rms_distance(aligned, trained, 0.7)
    assert fit_to(base_counts, trained, 0.7) < 0.05
    assert fit_to(aligned_counts, trained, 0.7) < 0.05, [round(aligned[c], 3) for c in trained]
    assert fit_to(seventy_counts, trained, 0.5) < 0.05
    # The methods table: in-sample and held-out rows, control kept, the cost in generated images.
    table = datasets.load_dataset(str(store.resolve("t2i-bias/world-alignment-methods", "dataset")), "methods",
                                  split="train")  # fmt: skip
    rows = {(r["method"], r["language"]): r for r in table}
    assert {r["method"] for r in table} == {"base", "mixed-ft", "aligned [in-sample]", "aligned [held-out]"}
    assert {r["language"] for r in table if r["method"] == "aligned [in-sample]"} == {"en", "de"}
    for language in ("en", "de", "zh", "ja"):
        held = rows[("aligned [held-out]", language)]
        assert held["num_occupations"] == (2 if language in ("en", "de") else 6)
        assert held["seeds"] == 2 and held["training_images"] == 60 * 6 * 12  # steps x prompts x images
        control = held["explicit_gender_control"]
        assert held["explicit_gender_control_ci_low"] <= control <= held["explicit_gender_control_ci_high"]
        # Control is asked in the trained languages only. In the two never trained on the method keeps
        # it on some worlds and loses it on others, so the test cannot ask it of every machine's world:
        # seed 0 kept 0.80 in Chinese on a world trained on two threads (the 70/30 model 0.46), and the
        # aligned models 0.90 in Chinese and 0.63 in Japanese on an AMD EPYC's (the parallel suite,
        # 2026-12-07; the caption fine-tune 0.98 to 1.0): README, "Not yet reliable: control in the
        # languages never trained on".
        if language in ("en", "de"):
            assert control >= 0.9, (language, control)
        assert 0.5 < held["same_noise_similarity"] < 1.0
    # The card names the method, its target, its classifier and its losses.
    card = card_metadata(store.resolve("t2i-bias/world-aligned-70", "model"))
    assert card["method"] == "distributional_alignment"
    alignment = card["alignment"]
    assert alignment["target"] == {"male": 0.3, "female": 0.7} and alignment["classifier"] == "world-cue"
    assert alignment["losses"]["preservation_weight"] == 8.0 and "cross-entropy" in alignment["losses"]["alignment"]
    assert alignment["losses"]["gradient_scaling"] == "none" and alignment["neutral_visits"] == 2
    assert sorted(map(tuple, alignment["training_cells"])) == sorted(trained)


def step_arguments(**values: Any) -> SimpleNamespace:
    defaults = {
        "num_inference_steps": 4, "guidance_scale": 1.0, "gradient_steps": None, "gradient_scaling": "paper",
        "resolution": 16, "train_batch_size": 6, "seed": 0, "uncertainty_threshold": 0.2, "changed_weight": 0.2,
        "preservation_weight": 8.0, "images_per_backward": None, "attribute": "gender", "preservation": "pixels",
        "prompts_per_step": 1, "named_gender": "aligned",
    }  # fmt: skip
    return SimpleNamespace(**(defaults | values))


def step_gradient(
    pipe: Any, visits: list[tuple[str, int]], target: tuple[float, float] = (0.5, 0.5), named: int | None = None,
    train_unet: bool = False, **values: Any,
) -> tuple[torch.Tensor, list[dict]]:  # fmt: skip
    """The text encoder's gradient after one `alignment_step` of the (prompt, visit) pairs, towards
    `target` (male, female), for prompts that name class `named` or none, on a fresh copy of the
    world's text encoder (and UNet, trained with `train_unet`; the world itself is the frozen model);
    what each visit measured."""
    import copy

    from pipelines.perception.differentiable import SoftWorldCue
    from training.models import Parts

    accelerator = SimpleNamespace(device=torch.device("cpu"), num_processes=1, process_index=0,
                                  gather=lambda tensor: tensor, backward=lambda loss: loss.backward())  # fmt: skip
    frozen = Parts(pipe=pipe, tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, vae=pipe.vae, unet=pipe.unet,
                   noise_scheduler=None, weight_dtype=torch.float32)  # fmt: skip
    parts = copy.copy(frozen)
    parts.text_encoder = copy.deepcopy(pipe.text_encoder).requires_grad_(True)
    parts.unet = copy.deepcopy(pipe.unet).requires_grad_(train_unet)
    args = step_arguments(**values)
    preservation = align.Preservation(args, None, "cpu")
    steps = [(visit, prompt, np.array(target), named) for prompt, visit in visits]
    measured = align.alignment_step(parts, frozen, SoftWorldCue(), preservation, steps, args, accelerator)
    gradients = [p.grad.flatten() for p in parts.text_encoder.parameters() if p.grad is not None]
    return (torch.cat(gradients) if gradients else torch.zeros(1)), measured


def test_micro_batches_add_up_to_the_one_batch_gradient(world_pipe: Any) -> None:
    """A step in micro-batches of 2 images gives the gradient of the whole batch of 6 (the loss is a sum
    over the batch's images, each micro-batch's part backpropagated alone), so memory can be traded
    for passes without changing what is learnt."""
    whole, measured_whole = step_gradient(world_pipe, [(PROMPTS[0], 3)])
    parts, measured_parts = step_gradient(world_pipe, [(PROMPTS[0], 3)], images_per_backward=2)
    assert whole.abs().sum() > 0
    # Equal up to float sums in another order (a batch of 2 runs other kernels than a batch of 6).
    assert (whole - parts).norm() < 1e-2 * whole.norm()
    assert measured_whole[0]["loss"] == pytest.approx(measured_parts[0]["loss"], rel=1e-5)
    assert measured_whole[0]["found"] == 6 and sum(measured_whole[0]["shares"]) == pytest.approx(1.0)


def test_several_prompts_per_step_add_up_to_the_mean_of_their_gradients(world_pipe: Any) -> None:
    """With --prompts_per_step 3, a step's gradient is the mean of each prompt's own (its images, its
    targets, its visit's noise): every prompt weighs the same, whatever the others do."""
    visits = [(PROMPTS[0], 6), (PROMPTS[1], 7), (PROMPTS[2], 8)]
    alone = [step_gradient(world_pipe, [visit])[0] for visit in visits]
    together, measured = step_gradient(world_pipe, visits, prompts_per_step=3)
    mean = sum(alone) / 3
    assert all(gradient.abs().sum() > 0 for gradient in alone)
    assert (together - mean).norm() < 1e-4 * mean.norm()
    # Not the sum, and not one prompt's: each prompt's share is there.
    assert (together - sum(alone)).norm() > 0.5 * mean.norm()
    assert all((together - gradient).norm() > 1e-2 * mean.norm() for gradient in alone)
    assert [m["found"] for m in measured] == [6, 6, 6]


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_a_step_s_prompts_share_the_sampler_and_learn_what_one_prompt_at_a_time_learns(
    world_pipe: Any, guidance: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the UNet frozen, in one process and without micro-batches, a step's prompts are denoised in
    one batch (two sampler runs a step instead of two a prompt): the same gradient and measurements as
    one prompt at a time (where the UNet trains), to float rounding (bitwise where the CPU library runs
    the same kernels at either batch size)."""
    runs = []
    original = align.sample
    monkeypatch.setattr(align, "sample", lambda *a, **k: runs.append(len(a[4])) or original(*a, **k))
    visits = [(PROMPTS[0], 6), (PROMPTS[1], 7), (PROMPTS[2], 8), (PROMPTS[0], 9)]
    values = {"prompts_per_step": 4, "guidance_scale": guidance, "uncertainty_threshold": 0.5}
    shared, measured_shared = step_gradient(world_pipe, visits, **values)
    assert runs == [24, 24]  # four prompts of six images, with gradients and by the frozen model
    runs.clear()
    apart, measured_apart = step_gradient(world_pipe, visits, train_unet=True, **values)
    assert runs == [6, 6] * 4
    assert shared.abs().sum() > 0 and (shared - apart).norm() < 1e-5 * apart.norm()
    for one, other in zip(measured_shared, measured_apart, strict=True):
        assert [one[k] for k in ("found", "assigned", "shares")] == [other[k] for k in ("found", "assigned", "shares")]
        for key in ("loss", "alignment", "preservation"):
            assert one[key] == pytest.approx(other[key], rel=1e-5, abs=1e-7)
        assert one["found"] == 6 and one["loss"] > 0
    # Each prompt's own images and noise: the first and last visit of the same prompt differ.
    assert measured_shared[0]["loss"] != measured_shared[3]["loss"]


def test_a_resumed_alignment_is_the_run_it_continues_and_its_card_names_the_method(
    tiny_study: dict, tmp_path: Path
) -> None:
    """Two steps, then a resume from their checkpoint to four, gives the weights and loss history of
    four steps in one go (two prompts a step: the prompts and noise of a step depend on the seed and the
    step alone); the published card names the method, its target, classifier, losses and the cells it
    trained on."""
    from safetensors.torch import load_file

    from pipelines import build_tiny_model
    from pipelines.artifacts.store import LocalStore, card_metadata

    common = {"store_root": tiny_study["store_root"], "namespace": "study"}
    world = build_tiny_model.run(
        build_tiny_model.Arguments(**common, input=tiny_study["prompts"], kind="world", output_repo="da-world")
    )
    settings = {
        **common, "pretrained_model_name_or_path": str(world), "prompts": tiny_study["prompts"],
        "languages": ["en", "de"], "variants": ["neutral", "gendered"], "target": "female=0.7,male=0.3",
        "train_text_encoder": True, "train_unet": False, "train_batch_size": 4, "num_inference_steps": 3,
        "learning_rate": 1e-3, "checkpointing_steps": 2, "cpu_threads": 1, "prompts_per_step": 2,
    }  # fmt: skip
    one_go = align.run(align.AlignArguments(**settings, max_train_steps=4, output_dir=str(tmp_path / "a"),
                                            output_repo="da-a"))  # fmt: skip
    align.run(align.AlignArguments(**settings, max_train_steps=2, output_dir=str(tmp_path / "b"), output_repo="da-b2"))
    resumed = align.run(align.AlignArguments(**settings, max_train_steps=4, output_dir=str(tmp_path / "b"),
                                             output_repo="da-b", resume_from_checkpoint="latest"))  # fmt: skip
    # Resumed towards another target, the model's card would name a target only some steps had.
    other = {**settings, "target": "female=0.5,male=0.5"}
    said = r"other inputs or settings \(target 'female=0.7,male=0.3' there, 'female=0.5,male=0.5' here\); resume"
    with pytest.raises(ConfigError, match=said):
        align.run(align.AlignArguments(**other, max_train_steps=4, output_dir=str(tmp_path / "b"), output_repo="da-c",
                                       resume_from_checkpoint=str(tmp_path / "b" / "checkpoint-2")))  # fmt: skip
    store = LocalStore(tiny_study["store_root"])
    folders = [store.resolve(str(published), "model") for published in (one_go, resumed)]
    weights = [load_file(folder / "text_encoder" / "model.safetensors") for folder in folders]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])
    histories = [json.loads((folder / "trainer_state.json").read_text())["log_history"] for folder in folders]
    assert histories[0] == histories[1] and [h["step"] for h in histories[0]] == [1, 1, 2, 2, 3, 3, 4, 4]
    # Two prompts a step, none twice within an epoch (of 4 professions x 2 languages x neutral, female, male).
    visited = [(h["prompt_id"], h["language"]) for h in histories[0]]
    assert len(set(visited)) == len(visited) == 8
    card = card_metadata(folders[0])
    assert card["method"] == "distributional_alignment" and card["base_model"] == "study/da-world"
    assert card["alignment"]["target"] == {"male": 0.3, "female": 0.7}
    assert card["alignment"]["classifier"] == "world-cue" and card["alignment"]["trained"] == "text encoder"
    assert card["alignment"]["images_generated"] == 32  # 4 steps x 2 prompts x 4 images
    assert card["alignment"]["losses"]["gradient_scaling"] == "paper" and card["alignment"]["neutral_visits"] == 1
    assert {tuple(cell) for cell in card["alignment"]["training_cells"]} == {
        (language, profession) for language in ("en", "de") for profession in TINY_PROFESSIONS
    }


@pytest.mark.slow
def test_two_processes_align_the_text_encoder_alone_and_publish_once(tiny_study: dict) -> None:
    """`torchrun` with two processes, the text encoder trained and the UNet frozen: DistributedDataParallel
    refuses a model with nothing to train, and failed this run before it started (and every
    multi-process run at its end: the process group was destroyed before the main process published)."""
    from pipelines import build_tiny_model
    from pipelines.artifacts.inputs import resolve_model
    from pipelines.artifacts.store import LocalStore, card_metadata
    from pipelines.modeling.diffusion import load_pipeline

    common = {"store_root": tiny_study["store_root"], "namespace": "study"}
    world = build_tiny_model.run(
        build_tiny_model.Arguments(**common, input=tiny_study["prompts"], kind="world", output_repo="da-world-2p")
    )
    arguments = [
        "--store_root", tiny_study["store_root"], "--namespace", "study", "--pretrained_model_name_or_path",
        str(world), "--prompts", tiny_study["prompts"], "--languages", "en", "de", "--variants", "neutral",
        "--target", "female=0.7,male=0.3", "--train_text_encoder", "--train_unet", "false",
        "--train_batch_size", "2", "--num_inference_steps", "3", "--learning_rate", "1e-2", "--cpu_threads", "1",
        "--prompts_per_step", "2", "--max_train_steps", "2", "--output_repo", "da-two-processes",
    ]  # fmt: skip
    result = subprocess.run([*launcher(2), "-m", "training.align_distribution", *arguments], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    # Each process reports the one revision the main process published (the two may print on one line).
    published = set(re.findall(r"study/da-two-processes@[0-9a-f]{40}", result.stdout))
    assert len(published) == 1, result.stdout[-2000:]
    store = LocalStore(tiny_study["store_root"])
    folder = store.resolve(next(iter(published)), "model")
    assert card_metadata(folder)["alignment"]["images_generated"] == 16  # 2 steps x 2 prompts x 2 images x 2
    base, tuned = (load_pipeline(resolve_model(spec, store, namespace="study"), store)
                   for spec in (str(world), next(iter(published))))  # fmt: skip
    assert all(torch.equal(a, b) for a, b in zip(base.unet.parameters(), tuned.unet.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(base.text_encoder.parameters(), tuned.text_encoder.parameters()))


def test_a_prompt_that_names_a_gender_is_aligned_to_it_and_any_other_to_the_target() -> None:
    labels, target = ["male", "female"], np.array([0.3, 0.7])
    assert align.prompt_target({"gender": "female"}, target, labels, "gender").tolist() == [0.0, 1.0]
    assert align.prompt_target({"gender": "male"}, target, labels, "gender").tolist() == [1.0, 0.0]
    for row in ({"gender": "neutral"}, {"gender": None}, {}):
        assert align.prompt_target(row, target, labels, "gender").tolist() == [0.3, 0.7]
    ages = ["0-2", "3-9"]
    assert align.prompt_target({"gender": "female"}, np.array([0.5, 0.5]), ages, "age").tolist() == [0.5, 0.5]


def test_a_corrected_named_prompt_targets_only_its_images_of_another_gender(world_pipe: Any) -> None:
    """--named_gender corrected: of a prompt that names a gender, only the images of the other gender
    get a target (aligned: all of them), and the alignment loss is the aligned one's restricted to them;
    so when every image is already of the named gender, no alignment gradient is left."""
    visits, corrections = [(PROMPTS[0], visit) for visit in range(3)], []
    for named in (0, 1):  # GENDER_LABELS: male, female
        one_hot = tuple(float(i == named) for i in range(2))
        _, aligned = step_gradient(world_pipe, visits, target=one_hot, named=named, named_gender="aligned")
        _, corrected = step_gradient(world_pipe, visits, target=one_hot, named=named, named_gender="corrected")
        for kept, fixed in zip(aligned, corrected):
            others = round(kept["found"] * (1 - kept["shares"][named]))
            assert kept["assigned"] == kept["found"] == 6 and fixed["assigned"] == others
            assert fixed["shares"] == kept["shares"]  # the same images: only their targets differ
            assert (fixed["alignment"] == 0) == (others == 0) and fixed["alignment"] <= kept["alignment"]
            corrections.append(others)
    assert sum(corrections) == 6 * len(visits)  # each image is of one gender: the other's prompt corrects it
    # A neutral prompt (named None) is the same in both modes.
    neutral = [step_gradient(world_pipe, visits[:1], named_gender=mode) for mode in ("aligned", "corrected")]
    assert torch.equal(neutral[0][0], neutral[1][0]) and neutral[0][1] == neutral[1][1]


def test_fairface_through_its_differentiable_chips_drives_an_alignment_run(tiny_study: dict, tmp_path: Path) -> None:
    """The real-model path end to end on tiny models: FairFace's network (random weights, published by
    build_tiny_model) on whole-image chips, the tiny AltDiffusion's text encoder as LoRA, CLIP-free
    pixel preservation; two steps run, and the card says which classifier and attribute."""
    from pipelines import build_tiny_model
    from pipelines.artifacts.store import LocalStore, card_metadata

    common = {"store_root": tiny_study["store_root"], "namespace": "study"}
    fairface = build_tiny_model.run(build_tiny_model.Arguments(**common, kind="fairface", output_repo="da-fairface"))
    published = align.run(
        align.AlignArguments(
            **common, pretrained_model_name_or_path=tiny_study["model"], prompts=tiny_study["prompts"],
            classifier="fairface", classifier_model=str(fairface), detector="none", attribute="age",
            use_lora=True, rank=4, train_text_encoder=True, train_unet=False, train_batch_size=3,
            num_inference_steps=2, max_train_steps=2, checkpointing_steps=2, cpu_threads=1,
            output_dir=str(tmp_path / "out"), output_repo="da-fairface-age",
        )
    )  # fmt: skip
    folder = LocalStore(tiny_study["store_root"]).resolve(str(published), "model")
    card = card_metadata(folder)
    assert card["alignment"]["classifier"] == "fairface" and card["alignment"]["attribute"] == "age"
    assert len(card["alignment"]["target"]) == 9 and abs(sum(card["alignment"]["target"].values()) - 1) < 1e-3
    history = json.loads((folder / "trainer_state.json").read_text())["log_history"]
    assert [h["found"] for h in history] == [3, 3] and all(math.isfinite(h["loss"]) for h in history)
