"""Fine-tune a text-to-image model so that a classifier's labels over its own images follow a target
distribution: distributional alignment (Shen et al., "Finetuning Text-to-Image Diffusion Models for
Fairness", ICLR 2024; their code: sail-sg/finetune-fair-diffusion).

    accelerate launch training/align_distribution.py --pretrained_model_name_or_path world-model \\
        --prompts world-prompts --languages en de --professions CEO nurse \\
        --classifier world-cue --target female=0.5,male=0.5 --use_lora --train_text_encoder

Each step takes one prompt (of the languages, variants and professions chosen; every prompt once per
epoch, each that names no gender `--neutral_visits` times, in an order drawn from the seed), or
`--prompts_per_step` of them, and for each prompt draws `--train_batch_size` noises from the seed and
the visit, and:

1. generates the images with the model being trained, with gradients (*adjusted direct fine-tuning*:
   the gradient flows through every denoising step's update, or the last `--gradient_steps`, but not
   through the UNet's input, whose Jacobian explodes or vanishes over many steps, and each step's share
   is rescaled by the paper's coefficient, normalised by their geometric mean; `--gradient_scaling
   none` leaves it unscaled: the coefficients are made for an epsilon-predicting model, and on a
   zero-terminal-SNR v-prediction schedule they all but silence the first steps, where the figure is
   decided), and with the frozen base model without; and classifies them (whether a face or figure is
   found, the class probabilities);
2. assigns each image a target class by optimal transport from the batch's probabilities to the target
   distribution (`training/target_assignment.py`); an image whose assignment is uncertain gets none (and
   with `--named_gender corrected`, an image of a gendered prompt that already shows that gender);
3. with `--images_per_backward` micro-batches, the images are first made without gradients for the
   assignment, then again with gradients, a micro-batch at a time (the same values);
4. minimises the cross-entropy of the differentiable classifier (`pipelines/perception/differentiable.py`)
   against the assigned targets, plus `--preservation_weight` times each image's distance to the frozen
   model's image from the same noise (semantic preservation: pixels, or an open_clip model's features),
   weighted by `--changed_weight` for images whose target differs from what the frozen model showed
   (those are meant to change).

With several prompts per step their gradients are averaged before the optimiser steps. One prompt per
step is the paper's; with several, one prompt's update no longer drags the others along through the
weights they share unopposed. Where the UNet is frozen, in one process and without micro-batches, a
step's prompts are denoised in one batch (`prompts_per_step` x `train_batch_size` images held with
gradients at once; `--images_per_backward` keeps one prompt's at a time): a small UNet costs a CPU
about half as much per image at 72 images a call as at 12, and each prompt's images, losses and
gradient are those it gets alone. On the world (README), with the paper's coefficients the shares drifted
instead of following the loss (a parity model and a 70/30 model both ended near 0.7); unscaled, with
six prompts a step, each neutral prompt visited twice an epoch and every image assigned, a 70/30 model
met its target on the trained cells of two stores while the parity model was rejected at 0.7.

It shares the models, LoRA, EMA, checkpoints, resume and card with the caption fine-tune
(`training/finetune.py`, `training/models.py`, `training/checkpoints.py`). The paper's face-realism
loss (a face-recognition network and a bank of real faces) is not implemented.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from pipelines.artifacts.cards import model_card
from pipelines.artifacts.inputs import published_name
from pipelines.artifacts.store import HubStore
from pipelines.errors import ConfigError
from pipelines.harness.config import input_field
from pipelines.harness.stage import StageRun
from pipelines.perception.classifiers import AGE_GROUPS, GENDER_LABELS, RACE_LABELS
from pipelines.prompting.selection import language_rows, variant_rows
from training.checkpoints import (
    argument_defaults,
    remove_partial_checkpoints,
    resume,
    run_settings,
    save_checkpoint,
)
from training.finetune import FineTuneArguments, FineTuneStage
from training.models import (
    Parts,
    card_fields,
    check_lora_base,
    clear_model_files,
    clear_stale_validation,
    encode_text,
    end_training,
    inference_pipeline,
    load_models,
    log_validation,
    make_accelerator,
    make_adamw,
    prepare_models,
    publish_lora_base,
    save_lora,
    save_trained,
    set_cpu_threads,
)
from training.target_assignment import assign_targets, parse_target

CLASSIFIERS = ("world-cue", "fairface")
ATTRIBUTES = {"world-cue": ("gender",), "fairface": ("gender", "race", "age")}
LABELS = {"gender": GENDER_LABELS, "race": RACE_LABELS, "age": AGE_GROUPS}  # the differentiable classifiers' labels
PRESERVATION = ("pixels", "clip")
NAMED_GENDER = ("aligned", "corrected")
PRESERVATION_SIZE = 64  # pixels: images are compared at up to this size (as compare_methods' fidelity)


# ---------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------


@dataclass
class AlignArguments(FineTuneArguments):
    INPUTS = {
        "pretrained_model_name_or_path": "model",
        "prompts": "prompts",
        "classifier_model": "model",
        "similarity_model": "model",
    }
    prompts: str = input_field(
        "Prompts dataset (ns/name@rev) whose prompts the model is aligned on.", default="prompts"
    )
    languages: list[str] = field(default_factory=lambda: ["en"], metadata={"help": "Prompt languages to train on."})
    variants: list[str] = field(default_factory=lambda: ["neutral"], metadata={"help": "Prompt variants to train on."})
    professions: list[str] = field(default_factory=list, metadata={"help": "Only these professions (all if empty)."})
    attribute: str = field(default="gender", metadata={"help": "The attribute aligned: gender, race or age."})
    target: str = field(
        default="",
        metadata={"help": "The target distribution, label=share for every label of the attribute (e.g. "
                  "female=0.5,male=0.5, or young=0.75,old=0.25 style shares); empty: uniform."},
    )  # fmt: skip
    classifier: str = field(
        default="world-cue", metadata={"help": f"Differentiable classifier, one of {CLASSIFIERS}."}
    )
    classifier_model: str | None = input_field("FairFace race-7 weights (fairface).", default=None)
    detector: str = field(
        default="dlib", metadata={"help": "fairface: the face detector (dlib, mtcnn, or none: the whole image)."}
    )
    num_inference_steps: int = field(default=20, metadata={"help": "Denoising steps of each training image."})
    guidance_scale: float = field(default=1.0, metadata={"help": "Classifier-free guidance of training images."})
    gradient_steps: int | None = field(
        default=None,
        metadata={"help": "Keep gradients through the last N denoising steps only (default all, the paper's)."},
    )
    gradient_scaling: str = field(
        default="paper",
        metadata={"help": "paper: each denoising step's gradient rescaled by the paper's coefficient (made for "
                  "epsilon-prediction; it all but silences the first steps of a zero-terminal-SNR schedule, where "
                  "a v-prediction model decides the figure); none: unscaled."},
    )  # fmt: skip
    images_per_backward: int | None = field(
        default=None,
        metadata={"help": "Images per backward pass (micro-batches of one prompt; default: the whole batch, and "
                  "the step's prompts together where the UNet is frozen and one process runs)."},
    )  # fmt: skip
    uncertainty_threshold: float = field(
        default=0.2, metadata={"help": "An image whose target assignment is more uncertain gets no target."}
    )
    neutral_visits: int = field(
        default=1,
        metadata={"help": "Visits per epoch of each prompt that names no gender (one of each that names one): more "
                  "of each step for the prompts being aligned, fewer for those that keep explicit-gender control."},
    )  # fmt: skip
    named_gender: str = field(
        default="aligned",
        metadata={"help": "How a prompt that names a gender is trained (it keeps explicit-gender control): "
                  "aligned, every image towards that gender; corrected, only its images of another gender (the "
                  "others are held by the preservation loss at full weight, not pushed further)."},
    )  # fmt: skip
    preservation: str = field(
        default="pixels", metadata={"help": f"Semantic preservation space, one of {PRESERVATION}."}
    )
    similarity_model: str | None = input_field("open_clip model for --preservation clip.", default=None)
    similarity_pretrained: str | None = field(default=None, metadata={"help": "Its open_clip pretrained tag."})
    preservation_weight: float = field(default=8.0, metadata={"help": "Weight of the preservation loss (paper: 8)."})
    changed_weight: float = field(
        default=0.2,
        metadata={
            "help": "Preservation weight of an image whose target differs from the frozen model's class (paper: 0.2)."
        },
    )
    resolution: int | None = field(default=None, metadata={"help": "Image size (default: the model's)."})
    # The paper's settings, where the shared defaults are the caption fine-tune's.
    train_batch_size: int = field(default=24, metadata={"help": "Images of each prompt per step on each process."})
    prompts_per_step: int = field(
        default=1,
        metadata={"help": "Prompts per optimisation step, each with its own images and target assignment, their "
                  "gradients averaged (1: the paper's)."},
    )  # fmt: skip
    learning_rate: float = field(default=5e-5, metadata={"help": "Initial learning rate."})
    lr_scheduler: str = field(default="constant", metadata={"help": "Learning-rate schedule."})
    rank: int = field(default=50, metadata={"help": "LoRA rank."})
    max_train_steps: int | None = field(default=1000, metadata={"help": "Total optimisation steps."})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_choice("classifier", CLASSIFIERS)
        self.check_choice("attribute", ATTRIBUTES[self.classifier])
        parse_target(self.target, LABELS[self.attribute])  # a target that is no distribution: refused now
        self.check_choice("preservation", PRESERVATION)
        self.check_choice("gradient_scaling", ("paper", "none"))
        self.check_choice("named_gender", NAMED_GENDER)
        self.check_choice("detector", ("dlib", "mtcnn", "none"))
        if self.classifier == "fairface" and not self.classifier_model:
            raise ConfigError("classifier='fairface' needs classifier_model (FairFace's race-7 weights)")
        if self.classifier != "fairface":
            self.classifier_model = None
        if self.preservation == "clip" and not self.similarity_model:
            raise ConfigError("preservation='clip' needs similarity_model (an open_clip model)")
        if self.preservation != "clip":
            self.similarity_model = self.similarity_pretrained = None
        if not self.languages or not self.variants:
            raise ConfigError("languages and variants: at least one each")
        if self.gradient_accumulation_steps != 1:
            raise ConfigError("gradient_accumulation_steps: use images_per_backward (micro-batches of each step)")
        self.check_at_least(1, "num_inference_steps", "gradient_steps", "images_per_backward", "max_train_steps")
        self.check_at_least(1, "prompts_per_step", "neutral_visits")
        self.check_at_least(0, "preservation_weight", "changed_weight")
        self.check_at_most(1_000, "num_inference_steps", why="denoising steps per training image")
        if self.resolution is not None and (self.resolution < 8 or self.resolution % 8):
            raise ConfigError(f"resolution={self.resolution}: a multiple of 8")
        if not 0 <= self.uncertainty_threshold <= 1:
            raise ConfigError(f"uncertainty_threshold={self.uncertainty_threshold}: between 0 and 1")
        if self.guidance_scale < 1:
            raise ConfigError(f"guidance_scale={self.guidance_scale}: at least 1 (1: no guidance)")


# ---------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------


class AlignDistribution(FineTuneStage):
    name = "align_distribution"
    command = "training/align_distribution.py"
    Arguments = AlignArguments

    def model_options(self, name: str, args: Any = None) -> dict[str, Any]:
        if name == "pretrained_model_name_or_path":
            return super().model_options(name, args)
        from pipelines.modeling.clip import is_open_clip_name

        return {
            "what": name,
            "kinds": ("store", "hub", "folder", "file", "name"),
            "is_library_name": is_open_clip_name,
        }

    def build(self, run: StageRun, folder: Path) -> str:
        return train(run, folder)

    def estimate(self, args: AlignArguments, estimates: Any, costs: Any) -> Any:
        from pipelines.harness import estimate as plan

        base = args.repo_id(args.pretrained_model_name_or_path)
        share, native = plan.diffusion_scale(estimates, base)
        size = args.resolution or native
        # Per image and step: the trained and the frozen model's images without gradients, then the
        # same again with them (a backward pass costs about two forwards); the unit is a guided image.
        passes = (2 + 3) * (1 if args.guidance_scale > 1 else 0.5)
        per_image = plan.image_seconds(costs, args.num_inference_steps * passes, size, size, native, share)
        per_step = per_image * args.train_batch_size
        if args.classifier != "world-cue":  # the world's cue is a sum over pixels; the unit is FairFace's
            per_step += costs.seconds_per_classified_image * args.train_batch_size * 3
        per_step *= args.prompts_per_step
        download = plan.download_of(args.pretrained_model_name_or_path, args, estimates, "base model")
        estimates.put(args.repo_id(args.output_repo), kind="model", **plan.architecture_facts(estimates, base))
        return plan.Estimate(
            reads=[args.prompts],
            downloads=[download] if download else [],
            makes=f"a {'LoRA' if args.use_lora else 'full'} distributional-alignment fine-tune of "
            f"{args.pretrained_model_name_or_path} ({args.attribute} towards {args.target or 'uniform'}, "
            f"{args.classifier}; trains the {trained_parts(args)})",
            train_steps=args.max_train_steps or 0,
            gpu_hours=plan.hours((args.max_train_steps or 0) * per_step),
            priced=plan.flop_note(share),
        )


# ---------------------------------------------------------------------------------------------
# Prompts, noise, classifiers
# ---------------------------------------------------------------------------------------------


def training_prompts(run: StageRun, args: AlignArguments) -> list[dict[str, Any]]:
    """The prompt rows aligned on: the languages, variants and professions asked, in the dataset's order."""
    chosen = []
    for language, rows in language_rows(run.dataset("prompts"), args.languages, args.professions).items():
        for variant in args.variants:
            picked = variant_rows(rows, language, variant, args.professions)
            chosen += [{**row, "language": language} for row in picked]
    return chosen


def draw(seed: int, *keys: int) -> np.random.Generator:
    """Random numbers that depend on the seed and `keys` alone (a step, an epoch): a resumed run draws
    what the uninterrupted one drew, whatever state the global generators are in."""
    return np.random.default_rng(np.random.SeedSequence([seed, *keys]))


def epoch_visits(prompts: list[dict[str, Any]], args: AlignArguments, labels: list[str]) -> list[int]:
    """The prompts one epoch visits (indices into `prompts`): each that names a class once, each other
    `--neutral_visits` times."""
    return [
        index
        for index, row in enumerate(prompts)
        for _ in range(1 if named_class(row, labels, args.attribute) is not None else args.neutral_visits)
    ]


def prompt_of_visit(visit: int, count: int, seed: int) -> int:
    """The prompt of visit `visit` (step x prompts per step + its place in the step): every prompt once per
    epoch, in an order drawn per epoch."""
    epoch, position = divmod(visit, count)
    return int(draw(seed, 1, epoch).permutation(count)[position])


def image_seeds(visit: int, count: int, seed: int) -> list[int]:
    """The noise seeds of visit `visit`'s images (a CPU generator each, as generate_images seeds images)."""
    return [int(s) for s in draw(seed, 2, visit).integers(0, 2**63 - 1, size=count)]


def initial_noise(seeds: list[int], shape: tuple[int, int, int], device: Any) -> torch.Tensor:
    """One latent per seed, drawn as diffusers' pipelines draw a batch with one generator per image."""
    noise = [torch.randn((1, *shape), generator=torch.Generator("cpu").manual_seed(s)) for s in seeds]
    return torch.cat(noise).to(device)


def load_classifier(run: StageRun, args: AlignArguments, device: Any) -> Any:
    from pipelines.perception import differentiable

    if args.classifier == "world-cue":
        return differentiable.SoftWorldCue()
    model = run.model("classifier_model")
    return differentiable.FairFaceChips(model.path or model.given, detector=args.detector, device=str(device))


# ---------------------------------------------------------------------------------------------
# Sampling with gradients (adjusted direct fine-tuning)
# ---------------------------------------------------------------------------------------------


def gradient_coefficients(scheduler: Any) -> list[float]:
    """The paper's rescaling of each denoising step's gradient: sqrt(ᾱ_t) sqrt(1 - ᾱ_t) / (1 - α_t),
    normalised by the coefficients' geometric mean, so that no step's share explodes or vanishes.

    A zero-terminal-SNR schedule's first step has ᾱ_t = 0, whose coefficient is zero: it takes the
    smallest positive one instead (the paper's schedules never reach zero). The coefficients are the
    paper's for an ε-predicting model; they rescale whatever the UNet predicts (v for the world)."""
    alphas_cumprod = scheduler.alphas_cumprod
    alphas = scheduler.alphas
    values = []
    for t in scheduler.timesteps.tolist():
        cumulative = float(alphas_cumprod[int(t)])
        values.append(math.sqrt(cumulative) * math.sqrt(1 - cumulative) / (1 - float(alphas[int(t)])))
    positive = [v for v in values if v > 0]
    floor = min(positive) if positive else 1.0
    values = [v if v > 0 else floor for v in values]
    geometric_mean = math.exp(sum(math.log(v) for v in values) / len(values))
    return [v / geometric_mean for v in values]


def text_states(parts: Any, prompts: list[str], guidance: float, device: Any) -> torch.Tensor:
    """The UNet's text conditioning (the unconditional prompt first under guidance, as the pipeline)."""
    texts = ([""] * len(prompts) + prompts) if guidance > 1 else prompts
    tokens = parts.tokenizer(
        texts, max_length=parts.tokenizer.model_max_length, padding="max_length", truncation=True, return_tensors="pt"
    )
    return encode_text(parts.text_encoder, tokens.input_ids.to(device), tokens.attention_mask.to(device))


def sample(
    unet: Any, vae: Any, scheduler: Any, states: torch.Tensor, noise: torch.Tensor, args: AlignArguments, grad: bool
) -> torch.Tensor:
    """Images in [0, 1], (n, 3, H, W), from `noise`, as the pipeline makes them (same scheduler, steps,
    guidance and decoding); with `grad`, differentiable through the last `--gradient_steps` updates
    (all by default) but not through the UNet's input, each step's gradient rescaled."""
    scheduler.set_timesteps(args.num_inference_steps, device=noise.device)
    coefficients = gradient_coefficients(scheduler)
    if args.gradient_scaling == "none":
        coefficients = [1.0] * len(coefficients)
    first_with_grad = len(scheduler.timesteps) - (args.gradient_steps or len(scheduler.timesteps))
    guided = args.guidance_scale > 1
    latents = noise * scheduler.init_noise_sigma
    for index, t in enumerate(scheduler.timesteps):
        with_grad = grad and index >= max(first_with_grad, 0)
        with torch.set_grad_enabled(with_grad):
            model_input = latents.detach()  # the adjustment: no gradient through the UNet's input
            model_input = torch.cat([model_input] * 2) if guided else model_input
            model_input = scheduler.scale_model_input(model_input, t)
            prediction = unet(model_input, t, encoder_hidden_states=states.to(model_input.dtype), return_dict=False)[0]
            if guided:
                unconditional, conditional = prediction.chunk(2)
                prediction = unconditional + args.guidance_scale * (conditional - unconditional)
            if with_grad:
                prediction.register_hook(lambda gradient, c=coefficients[index]: gradient * c)
            latents = scheduler.step(prediction, t, latents, return_dict=False)[0]
    with torch.set_grad_enabled(grad):
        images = vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]
    return (images.float() / 2 + 0.5).clamp(0, 1)


# ---------------------------------------------------------------------------------------------
# The loss
# ---------------------------------------------------------------------------------------------


class Preservation:
    """The distance of an image to the frozen model's image from the same noise: the mean absolute
    pixel difference at up to 64 px, or 1 - the cosine of an open_clip model's image features."""

    def __init__(self, args: AlignArguments, run: StageRun, device: Any):
        self.model = None
        if args.preservation == "clip":
            from pipelines.modeling.clip import load_open_clip

            spec = run.model("similarity_model")
            self.model, preprocess, _ = load_open_clip(
                str(spec.path or spec.given), args.similarity_pretrained, str(device)
            )
            self.model.requires_grad_(False).eval()
            self.size = self.model.visual.image_size
            self.size = self.size[0] if isinstance(self.size, tuple | list) else self.size
            normalise = next(t for t in preprocess.transforms if hasattr(t, "mean"))
            self.mean = torch.tensor(normalise.mean, device=device).view(1, 3, 1, 1)
            self.std = torch.tensor(normalise.std, device=device).view(1, 3, 1, 1)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        if self.model is None:
            if max(images.shape[-2:]) > PRESERVATION_SIZE:
                images = F.adaptive_avg_pool2d(images, PRESERVATION_SIZE)
            return images.flatten(1)
        resized = F.interpolate(images, size=(self.size, self.size), mode="bicubic", align_corners=False)
        return F.normalize(self.model.encode_image((resized - self.mean) / self.std).float(), dim=-1)

    def distance(self, images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """Per image."""
        if self.model is None:
            return (images - reference).abs().mean(1)
        return 1 - (images * reference).sum(-1)


def classify(classifier: Any, images: torch.Tensor, attribute: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits of the attribute, valid) of a batch of images."""
    logits, valid = classifier(images)
    return logits[attribute], valid.to(images.device)


def named_class(row: dict[str, Any], labels: list[str], attribute: str) -> int | None:
    """The class a prompt names (the grid's gendered prompts, eval_female, eval_male), or None."""
    named = row.get("gender")
    return labels.index(named) if attribute == "gender" and named in labels else None


def prompt_target(row: dict[str, Any], target: np.ndarray, labels: list[str], attribute: str) -> np.ndarray:
    """The distribution a prompt's images are aligned to: a prompt that names a gender all of that
    gender, which keeps explicit-gender control (aligning the neutral prompts alone moved the world's
    gendered prompts too, even inverted them); any other prompt the target."""
    named = named_class(row, labels, attribute)
    return target if named is None else np.eye(len(labels))[named]


def plan_targets(
    probabilities: torch.Tensor, valid: torch.Tensor, target: np.ndarray, args: AlignArguments, visit: int
) -> np.ndarray:
    """Each image's target class (-1: none, no face or an uncertain assignment), from the whole batch's
    probabilities (every process's, gathered: each computes the same assignment)."""
    probs = probabilities.detach().float().cpu().numpy()
    found = valid.cpu().numpy().astype(bool)
    targets = np.full(len(probs), -1, dtype=np.int64)
    if found.any():
        assigned, _ = assign_targets(
            probs[found], target, threshold=args.uncertainty_threshold, rng=draw(args.seed, 3, visit)
        )
        targets[found] = assigned
    return targets


def alignment_step(
    parts: Parts, reference: Parts, classifier: Any, preservation: Preservation,
    visits: list[tuple[int, str, np.ndarray, int | None]], args: AlignArguments, accelerator: Any,
) -> list[dict[str, float]]:  # fmt: skip
    """The forward and backward passes of an optimisation step (the optimiser steps outside), for each
    of its visits: (visit, prompt, target, the class the prompt names or None). What each measured.

    Where nothing mixes the visits' images, their images share each UNet call: one process, no
    micro-batches, the UNet frozen (its weights' gradient would sum over the shared batch in another
    order). A UNet call of the world costs two CPU threads half as much per image at 72 images as at
    12, and no operation of the sampler, the classifier or the losses mixes a batch's images, so each
    image, each gradient that reaches the text encoder and so the weights are those of one visit at a
    time: to the bit where the CPU library runs the same kernels at both batch sizes (on one thread
    it picks another for a 1x1 convolution, 3e-7 apart; `benchmarks/bench_align_distribution.py`).
    `--images_per_backward` keeps one visit's images at a time."""
    unet_trained = any(p.requires_grad for p in parts.unet.parameters())
    micro = (args.images_per_backward or args.train_batch_size) < args.train_batch_size
    if accelerator.num_processes == 1 and not micro and not unet_trained:
        return visits_step(parts, reference, classifier, preservation, visits, args, accelerator)
    return [m for visit in visits for m in visits_step(parts, reference, classifier, preservation, [visit], args,
                                                       accelerator)]  # fmt: skip


def visits_step(
    parts: Parts, reference: Parts, classifier: Any, preservation: Preservation,
    visits: list[tuple[int, str, np.ndarray, int | None]], args: AlignArguments, accelerator: Any,
) -> list[dict[str, float]]:  # fmt: skip
    """`alignment_step` for visits whose images are made together (micro-batches: one visit only)."""
    device = accelerator.device
    unet, vae, scheduler = parts.unet, parts.vae, parts.pipe.scheduler
    scale = vae_scale(vae)
    shape = (unet.config.in_channels, args.resolution // scale, args.resolution // scale)
    mine = slice(
        accelerator.process_index * args.train_batch_size, (accelerator.process_index + 1) * args.train_batch_size
    )
    noises = [
        initial_noise(image_seeds(visit, args.train_batch_size * accelerator.num_processes, args.seed)[mine], shape,
                      device)
        for visit, *_ in visits
    ]  # fmt: skip
    count = len(noises[0])
    per_backward = args.images_per_backward or count
    assert per_backward >= count or len(visits) == 1, "micro-batches are made one visit at a time"

    def made(
        model: Parts, pieces: list[tuple[str, torch.Tensor]], grad: bool
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
        """The text states each prompt was encoded to, the images of every (prompt, noise) in one sampler
        run (differentiable with `grad`), and the classifier's logits and valid."""
        states = [text_states(model, [prompt] * len(noise), args.guidance_scale, device) for prompt, noise in pieces]
        images = sample(model.unet, model.vae, scheduler, joined(states, args.guidance_scale),
                        torch.cat([noise for _, noise in pieces]), args, grad=grad)  # fmt: skip
        return states, images, *classify(classifier, images, args.attribute)

    # In one pass (no micro-batches), the targets are assigned to the very images backpropagated
    # through: one denoising of the noise fewer a prompt, with the same values.
    pieces = [(prompt, noise) for (_, prompt, *_), noise in zip(visits, noises)]
    whole = made(parts, pieces, grad=True) if per_backward >= count else None
    with torch.no_grad():
        _, _, logits, valid = made(parts, pieces, grad=False) if whole is None else whole
        logits = logits.detach()
        _, original, original_logits, original_valid = made(reference, pieces, grad=False)
        original_features = preservation.features(original)
    losses, measured = [], []
    for number, (visit, prompt, target, named) in enumerate(visits):
        rows = slice(number * count, (number + 1) * count)
        probabilities = accelerator.gather(logits[rows].softmax(-1).float().contiguous())
        everyone_valid = accelerator.gather(valid[rows].to(torch.int64).contiguous()).bool()
        everyone_targets = plan_targets(probabilities, everyone_valid, target, args, visit)
        # --named_gender corrected: an image already of the gender its prompt names gets no target (it is
        # not pushed further) and is held where it is by preservation.
        satisfied = np.zeros(len(everyone_targets), dtype=bool)
        if named is not None and args.named_gender == "corrected":
            satisfied = everyone_valid.cpu().numpy() & (probabilities.argmax(-1).cpu().numpy() == named)
            everyone_targets[satisfied] = -1
        targets = torch.as_tensor(everyone_targets[mine], device=device)
        # Preservation is weighted down where the image is meant to change: a target other than the
        # frozen model's class (or no target, the paper's rule); 1 where there is no face to change.
        kept = (targets == original_logits[rows].argmax(-1)) & (targets >= 0) | torch.as_tensor(
            satisfied[mine], device=device
        )
        weights = torch.where(kept | ~original_valid[rows], 1.0, args.changed_weight).to(device)
        total = {"loss": 0.0, "alignment": 0.0, "preservation": 0.0}
        for start in range(0, count, per_backward):
            part = slice(start, start + per_backward)
            if whole is None:
                _, images, logits_grad, valid_grad = made(parts, [(prompt, noises[number][part])], grad=True)
            else:  # this visit's rows of the shared run (its images, logits and valid)
                images, logits_grad, valid_grad = (made_together[rows][part] for made_together in whole[1:])
            chosen = (targets[part] >= 0) & valid_grad
            fairness = (
                F.cross_entropy(logits_grad[chosen].float(), targets[part][chosen], reduction="sum")
                if chosen.any()
                else images.sum() * 0
            )
            distance = preservation.distance(preservation.features(images), original_features[rows][part])
            kept_close = (weights[part] * distance).sum()
            # Sums over the whole batch's images: micro-batches add up to the one-batch gradient; the
            # step's prompts weigh the same.
            loss = (fairness + args.preservation_weight * kept_close) / count
            share = loss / args.prompts_per_step
            if whole is None or len(visits) == 1:
                accelerator.backward(share)
            else:
                losses.append(share)
            total["loss"] += loss.item()
            total["alignment"] += fairness.item() / count
            total["preservation"] += kept_close.item() / count
        found = everyone_valid.cpu().numpy()
        classes = np.bincount(probabilities.argmax(-1).cpu().numpy()[found], minlength=len(target))
        measured.append({
            **{k: float(accelerator.gather(torch.tensor([v], device=device)).mean()) for k, v in total.items()},
            "found": int(found.sum()),
            "shares": [round(c / int(found.sum()), 4) if found.any() else None for c in classes.tolist()],
            "assigned": int((everyone_targets >= 0).sum()),
        })  # fmt: skip
    if losses:
        # The shared sampler run is backpropagated once, to each visit's text states; then the text
        # encoder, one visit after another, as a visit at a time accumulates its gradient.
        states = whole[0]
        for state, gradient in zip(states, torch.autograd.grad(sum(losses), states)):
            state.backward(gradient)
    return measured


def joined(states: list[torch.Tensor], guidance: float) -> torch.Tensor:
    """Several prompts' text states as one batch; under guidance, every unconditional half first, as
    `sample` splits them."""
    if guidance <= 1:
        return torch.cat(states)
    halves = [state.chunk(2) for state in states]
    return torch.cat([half[0] for half in halves] + [half[1] for half in halves])


def trained_parts(args: AlignArguments) -> str:
    """What is trained, in words: "UNet", "text encoder" or "UNet and text encoder"."""
    return " and ".join(
        name for name, on in (("UNet", args.train_unet), ("text encoder", args.train_text_encoder)) if on
    )


def vae_scale(vae: Any) -> int:
    """Pixels per latent along a side."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def train(run: StageRun, output_dir: Path) -> str:
    """The whole fine-tune: prompts and target first (refused before a model loads), then the models
    (trained and frozen), the classifier, the optimiser, a resume, the loop, and the saved model."""
    from accelerate.utils import set_seed
    from diffusers.optimization import get_scheduler

    from pipelines.modeling.diffusion import assemble_pipeline

    args: AlignArguments = run.args
    prompts = training_prompts(run, args)
    base = run.model("pretrained_model_name_or_path")
    check_lora_base(args, base)
    if args.push_to_hub:
        HubStore().check_can_push(args.hub_model_id, "model")  # before hours of training, not after
    accelerator = make_accelerator(args, output_dir)
    threads = set_cpu_threads(args, accelerator, output_dir)
    if accelerator.is_main_process:
        remove_partial_checkpoints(output_dir, accelerator)
    set_seed(args.seed)
    classifier = load_classifier(run, args, accelerator.device)
    target = parse_target(args.target, classifier.labels[args.attribute])
    parts = load_models(base.path, args, accelerator)
    reference_pipe = assemble_pipeline(base.path, parts.weight_dtype)
    reference_pipe.to(accelerator.device)
    for model in (reference_pipe.unet, reference_pipe.text_encoder, reference_pipe.vae):
        model.requires_grad_(False).eval()
    reference = Parts(pipe=reference_pipe, tokenizer=reference_pipe.tokenizer,
                      text_encoder=reference_pipe.text_encoder, vae=reference_pipe.vae, unet=reference_pipe.unet,
                      noise_scheduler=None, weight_dtype=parts.weight_dtype)  # fmt: skip
    parts.unet.to(accelerator.device)
    parts.text_encoder.to(accelerator.device)
    if args.resolution is None:
        args.resolution = parts.unet.config.sample_size * vae_scale(parts.vae)
    preservation = Preservation(args, run, accelerator.device)
    trainable = [p for m in (parts.unet, parts.text_encoder) for p in m.parameters() if p.requires_grad]
    learning_rate = args.learning_rate * (args.train_batch_size * accelerator.num_processes if args.scale_lr else 1)
    optimizer = make_adamw(trainable, learning_rate, args)
    lr_scheduler = get_scheduler(args.lr_scheduler, optimizer=optimizer,
                                 num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
                                 num_training_steps=args.max_train_steps * accelerator.num_processes)  # fmt: skip
    parts.unet, parts.text_encoder = prepare_models(accelerator, parts.unet, parts.text_encoder)
    optimizer, lr_scheduler = accelerator.prepare(optimizer, lr_scheduler)
    if parts.ema_unet is not None:
        parts.ema_unet.to(accelerator.device)
    settings = run_settings(run)
    global_step, history = resume(
        output_dir, args.resume_from_checkpoint, accelerator, parts.ema_unet, settings, argument_defaults(run)
    )
    if accelerator.is_main_process:
        clear_stale_validation(output_dir, global_step)
    accelerator.print(
        "***** Running distributional alignment *****\n"
        f"  Prompts = {len(prompts)} ({', '.join(args.languages)}; {', '.join(args.variants)})\n"
        f"  Target = {dict(zip(classifier.labels[args.attribute], target.round(4).tolist()))} ({args.classifier})\n"
        f"  Images per step = {args.prompts_per_step} prompt(s) x {args.train_batch_size} x "
        f"{accelerator.num_processes} process(es), "
        f"{args.num_inference_steps} denoising steps, gradients through "
        f"{args.gradient_steps or 'all'}\n"
        f"  Total optimization steps = {args.max_train_steps}\n"
        f"  Trainable = {'LoRA on ' if args.use_lora else ''}{trained_parts(args)}, "
        f"mixed precision = {accelerator.mixed_precision}"
    )
    progress = tqdm(range(args.max_train_steps), initial=global_step, desc="steps",
                    disable=not accelerator.is_local_main_process, file=sys.stderr)  # fmt: skip
    # Evaluation mode throughout: with the text encoder's dropout on, the images made with gradients
    # would not be the images the targets were assigned to (the UNet has no dropout; diffusers'
    # gradient checkpointing works in either mode, transformers' only in training mode).
    parts.unet.eval(), parts.text_encoder.eval()
    labels = classifier.labels[args.attribute]
    epoch = epoch_visits(prompts, args, labels)
    while global_step < args.max_train_steps:
        numbers = range(global_step * args.prompts_per_step, (global_step + 1) * args.prompts_per_step)
        rows = [prompts[epoch[prompt_of_visit(visit, len(epoch), args.seed)]] for visit in numbers]
        visits = [(visit, row["prompt"], prompt_target(row, target, labels, args.attribute),
                   named_class(row, labels, args.attribute)) for visit, row in zip(numbers, rows)]  # fmt: skip
        measured = alignment_step(parts, reference, classifier, preservation, visits, args, accelerator)
        visited = [{"step": global_step + 1, "prompt_id": row["prompt_id"], "language": row["language"], **m}
                   for row, m in zip(rows, measured)]  # fmt: skip
        accelerator.clip_grad_norm_(trainable, args.max_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad()
        if parts.ema_unet is not None:
            parts.ema_unet.step(parts.unet.parameters())
        global_step += 1
        progress.update(1)
        history += [{**entry, "lr": lr_scheduler.get_last_lr()[0]} for entry in visited]
        logged = {k: float(np.mean([e[k] for e in visited])) for k in ("loss", "alignment", "preservation")}
        accelerator.log({**logged, "lr": lr_scheduler.get_last_lr()[0]}, step=global_step)
        progress.set_postfix(loss=f"{logged['loss']:.4f}", shares=visited[-1]["shares"])
        if global_step % args.checkpointing_steps == 0:
            checkpoint(parts, args, accelerator, output_dir, global_step, history, settings)
        if args.validation_prompts and args.validation_steps and global_step % args.validation_steps == 0:
            if accelerator.is_main_process:
                log_validation(inference_pipeline(parts, accelerator), args, accelerator, global_step)
    progress.close()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        cells = sorted({(p["language"], p["profession"]) for p in prompts})
        state = {"global_step": global_step, "max_train_steps": args.max_train_steps, "cpu_threads": threads,
                 "log_history": history, "training_cells": cells,
                 "images_generated": global_step * args.prompts_per_step * args.train_batch_size
                                     * accelerator.num_processes}  # fmt: skip
        save_outputs(run, output_dir, parts, accelerator, base, state, classifier, target)
    accelerator.wait_for_everyone()
    end_training(accelerator)
    return f"{'LoRA' if args.use_lora else 'Full'} distributional alignment, {global_step} steps"


def checkpoint(
    parts: Parts, args: AlignArguments, accelerator: Any, output_dir: Path, step: int, history: list, settings: dict
) -> None:
    """A resumable state, as the caption fine-tune saves one (the models, or the LoRA adapters, and the
    run's `settings`)."""
    import functools

    models = {}
    if not args.use_lora:
        models = {"unet": parts.unet if args.train_unet else None,
                  "text_encoder": parts.text_encoder if args.train_text_encoder else None}  # fmt: skip
    lora = None
    if args.use_lora:  # the adapters as the published model holds them: a checkpoint loads as one
        unet, text_encoder = accelerator.unwrap_model(parts.unet), accelerator.unwrap_model(parts.text_encoder)
        lora = functools.partial(save_lora, pipeline_class=type(parts.pipe), unet=unet, text_encoder=text_encoder,
                                 text_lora=parts.text_lora)  # fmt: skip
    save_checkpoint(accelerator, output_dir, step, args.checkpoints_total_limit, models, parts.ema_unet, history,
                    lora, settings)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The saved model and its card
# ---------------------------------------------------------------------------------------------


def save_outputs(
    run: StageRun, output_dir: Path, parts: Parts, accelerator: Any, base: Any, state: dict, classifier: Any,
    target: np.ndarray,
) -> None:  # fmt: skip
    """The trained model in diffusers' format (EMA weights when kept), the card and the trainer state,
    in `output_dir` itself (main process only)."""
    args: AlignArguments = run.args
    unet = accelerator.unwrap_model(parts.unet)
    if parts.ema_unet is not None:
        parts.ema_unet.copy_to(unet.parameters())
    clear_model_files(output_dir)
    save_trained(output_dir, parts.pipe, unet, accelerator.unwrap_model(parts.text_encoder), args, parts.text_lora,
                 base.path)  # fmt: skip
    if args.use_lora and published_name(base) is None:
        base = publish_lora_base(run, base)
    validation = []
    if args.validation_prompts:
        validation = log_validation(inference_pipeline(parts, accelerator), args, accelerator, state["global_step"])
    save_card(output_dir, run, base, state, classifier, target, validation)
    (output_dir / "trainer_state.json").write_text(
        json.dumps({**state, "base_model": base.pin, "inputs": run.inputs}, indent=1)
    )
    accelerator.print(f"saved the {'LoRA adapters' if args.use_lora else 'pipeline'} to {output_dir}")


def save_card(
    folder: Path, run: StageRun, base: Any, state: dict, classifier: Any, target: np.ndarray, validation: list[str]
) -> None:
    args: AlignArguments = run.args
    labels = classifier.labels[args.attribute]
    wanted = {label: round(float(share), 4) for label, share in zip(labels, target)}
    trained = trained_parts(args)
    kind = (
        f"LoRA adapters (rank {args.rank}) on the {trained}" if args.use_lora else f"full fine-tune of the {trained}"
    )
    similarity = (
        "mean absolute pixel difference at up to 64 px"
        if args.preservation == "pixels"
        else (f"1 - cosine of `{run.inputs.get('similarity_model')}`'s image features")
    )
    cells = state["training_cells"]
    history = state["log_history"]
    last = history[-max(1, len(history) // 10) :] if history else []
    late_shares = [h["shares"] for h in last if h.get("shares") and None not in h["shares"]]
    late = np.mean(late_shares, axis=0).round(3).tolist() if late_shares else None
    description = (
        f"A {kind} of `{base.pin}` by distributional alignment (Shen et al., ICLR 2024): the {args.attribute} "
        f"that `{args.classifier}` perceives in the model's own images of {len(cells)} (language, profession) "
        f"prompt cells is pulled towards the target {wanted}. Each step generates {args.train_batch_size} images "
        f"of {'one prompt' if args.prompts_per_step == 1 else f'each of {args.prompts_per_step} prompts'} "
        f"({args.num_inference_steps} denoising steps, guidance {args.guidance_scale:g}), assigns "
        f"each a target class by optimal transport over the batch (uncertain assignments above "
        f"{args.uncertainty_threshold:g} get none), and minimises the classifier's cross-entropy against them, "
        f"back-propagated through {'every' if not args.gradient_steps else f'the last {args.gradient_steps}'} "
        "denoising step(s) without the UNet's input Jacobian (the paper's adjusted direct fine-tuning, "
        + (
            "each step's gradient rescaled by the paper's coefficient"
            if args.gradient_scaling == "paper"
            else "each step's gradient unscaled"
        )
        + "), plus "
        f"{args.preservation_weight:g} x the distance to the frozen model's image from the same noise "
        f"({similarity}; weight {args.changed_weight:g} where the target differs from the frozen model's class). "
        + (
            "A prompt that names a gender is aligned to it: "
            + ("every image. " if args.named_gender == "aligned" else "only its images of another gender. ")
        )
        + (f"Each other prompt is visited {args.neutral_visits} times an epoch. " if args.neutral_visits > 1 else "")
        + f"{state['global_step']} steps, learning rate {args.learning_rate:g} ({args.lr_scheduler}), "
        f"seed {args.seed}."
        + (f" Shares the classifier saw in the last tenth of training: {dict(zip(labels, late))}." if late else "")
        + (f" Trained on CPU with {state['cpu_threads']} thread(s) per process." if state.get("cpu_threads") else "")
        + " Not implemented from the paper: its face-realism loss (a face-recognition network, a bank of real faces)."
    )
    model_card(
        title=f"{published_name(base) or 'A local model'} aligned to a {args.attribute} distribution",
        description=description,
        languages=sorted(set(args.languages)),
        datasets=[run.inputs["prompts"].partition("@")[0]],
        tags=["fine-tuned", "distributional-alignment", "lora" if args.use_lora else "full"],
        notes=["Validation prompts (one image each, fixed seed):", *validation] if validation else [],
        method="distributional_alignment",
        alignment={
            "attribute": args.attribute,
            "target": wanted,
            "classifier": args.classifier,
            "losses": {
                "alignment": "cross-entropy against optimal-transport targets",
                "preservation": similarity,
                "preservation_weight": args.preservation_weight,
                "changed_weight": args.changed_weight,
                "named_gender": args.named_gender,
                "gradient_scaling": args.gradient_scaling,
            },  # fmt: skip
            "neutral_visits": args.neutral_visits,
            "trained": trained,
            "training_cells": [list(cell) for cell in cells],
            "images_generated": state["images_generated"],
        },
        **card_fields(run, args, base, folder),
    ).save(folder / "README.md")


STAGE = AlignDistribution()
Arguments = AlignArguments  # the name recipes and the runner use
run = STAGE.run


def main(argv: list[str] | None = None) -> None:
    STAGE.main(argv)


if __name__ == "__main__":
    main()
