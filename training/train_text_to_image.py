"""Fine-tune a text-to-image model (AltDiffusion or Stable Diffusion), fully or with LoRA.

    accelerate launch training/train_text_to_image.py --recipe training/recipes/reference_english_all_prompts.yaml
    python training/train_text_to_image.py --pretrained_model_name_or_path BAAI/AltDiffusion-m9 \\
        --dataset_name t2i-bias/train-en-images-neutral-captions --resolution 256 --output_dir outputs/ft

The debiasing step of the study, as diffusers' `examples/text_to_image/train_text_to_image.py`:
data from a store or Hub dataset (`--dataset_name`, `--dataset_revision`, `--dataset_config_name`)
or an imagefolder (`--train_data_dir`); checkpoints (`checkpoint-<step>/`: accelerate's state and
the UNet and text encoder in diffusers' format; written aside and renamed whole, so a run killed
while saving never leaves one cut short) with a total limit and `--resume_from_checkpoint latest`,
which refuses a checkpoint that cannot continue the run exactly; the model goes to `--output_dir`
itself, which diffusers opens as it is, and is published to the store as a model repo with a card:
a full pipeline, or LoRA weights in diffusers' format.
The script reads top to bottom: card writer, validation, arguments, the stage (models, data, loop,
save), `main()`.
"""

from __future__ import annotations

import functools
import json
import math
import random
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from pipelines.artifacts.cards import model_card
from pipelines.artifacts.dataset_files import SPLIT, decode_image, to_rgb
from pipelines.artifacts.inputs import published_name
from pipelines.artifacts.reader import caption_forms
from pipelines.artifacts.store import HubStore
from pipelines.errors import ConfigError, DataError
from pipelines.harness.config import input_field
from pipelines.harness.stage import StageRun
from pipelines.prompting.grammar import describe_neutral_forms
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
    encode_each_caption_once,
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

PREDICTION_TYPES = ("epsilon", "v_prediction")
TIMESTEP_BIAS_STRATEGIES = ("none", "earlier", "later", "range")
ROW = "__row"  # a training row's position, added to the data: its augmentation draws are its own
EMPTY_PROMPT_STREAM = 1  # the key of the draws that replace a row's caption by the empty prompt


# ---------------------------------------------------------------------------------------------
# Model card
# ---------------------------------------------------------------------------------------------


def timestep_bias_settings(args: TrainArguments) -> list[str]:
    """The --timestep_bias_* settings that shape the draw under the chosen strategy."""
    if args.timestep_bias_strategy == "none":
        return []
    if args.timestep_bias_strategy == "range":
        return ["timestep_bias_multiplier", "timestep_bias_begin", "timestep_bias_end"]
    return ["timestep_bias_multiplier", "timestep_bias_portion"]


def save_model_card(
    folder: Path,
    run: StageRun,
    args: TrainArguments,
    base: Any,
    languages: list[str],
    validation: list,
    threads: int | None = None,
    skipped: int = 0,
) -> None:
    kind = f"LoRA adapter (rank {args.rank})" if args.use_lora else "full fine-tune"
    hyper = {
        k: getattr(args, k)
        for k in (
            "resolution",
            "train_batch_size",
            "gradient_accumulation_steps",
            "learning_rate",
            "lr_scheduler",
            "lr_warmup_steps",
            "max_train_steps",
            "num_train_epochs",
            "mixed_precision",
            "use_ema",
            "snr_gamma",
            "timestep_bias_strategy",
            *timestep_bias_settings(args),
            "noise_offset",
            "proportion_empty_prompts",
            "prediction_type",
            "train_text_encoder",
            "seed",
        )
    }
    dataset = run.inputs.get("dataset_name", args.train_data_dir)
    shared = card_fields(run, args, base, folder)
    # The gender-neutral form its captions teach, per language: a model evaluated on prompts of
    # another form is tested on a form it was not taught (generate_images' card then says so).
    forms = caption_forms(run.store, run.inputs.get("dataset_name"))
    model_card(
        title=f"{shared['base_model'] or 'A local model'} fine-tuned on {dataset}",
        description=(
            f"A {kind} of `{base.pin}`, trained on `{dataset}` by the toolkit's training script (whether it "
            "debiases depends on that dataset's captions: see its card). Hyper-parameters: "
            + ", ".join(f"{k}={v}" for k, v in hyper.items())
            + "."
            + (
                f" Trained on CPU with {threads} thread(s) per process (the last bits of float sums, and so of "
                "the weights, depend on it)."
                if threads
                else ""
            )
            + (
                f" {skipped} training row(s) skipped: their image could not be decoded."
                if skipped
                else " Every training image decoded."
            )
            + (
                " Its captions' gender-neutral form (from the training dataset's card): "
                f"{describe_neutral_forms(forms)}."
                if forms
                else " Its captions' gender-neutral form is not recorded (a training dataset from outside the store)."
            )
        ),
        languages=languages,
        datasets=[run.inputs["dataset_name"].partition("@")[0]] if "dataset_name" in run.inputs else None,
        tags=["fine-tuned", "lora" if args.use_lora else "full"],
        notes=["Validation prompts (one image each, fixed seed):", *validation] if validation else [],
        **shared,
        **({"caption_forms": forms} if forms else {}),
    ).save(folder / "README.md")


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------


@dataclass
class TrainArguments(FineTuneArguments):
    INPUTS = {"pretrained_model_name_or_path": "model", "dataset_name": "training"}
    dataset_name: str | None = input_field("Training dataset: a store or Hub repo (ns/name[@rev]).")
    dataset_revision: str | None = field(
        default=None, metadata={"help": "Revision of --dataset_name (the same as ns/name@rev)."}
    )
    dataset_config_name: list[str] = field(
        default_factory=list,
        metadata={"help": "Config(s) of the dataset, or 'all'; needed when it has more than one."},
    )
    train_data_dir: str | None = field(default=None, metadata={"help": "An imagefolder instead of --dataset_name."})
    image_column: str = field(default="image", metadata={"help": "Column with the images."})
    caption_column: str = field(default="text", metadata={"help": "Column with the captions."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only this many samples."})
    on_corrupt: str = field(default="skip", metadata={"help": "A corrupt training image: skip (counted) or stop."})
    resolution: int = field(default=512, metadata={"help": "Training image size."})
    center_crop: bool = field(default=False, metadata={"help": "Center crop (else random crop)."})
    random_flip: bool = field(default=False, metadata={"help": "Random horizontal flips."})
    num_train_epochs: int = field(default=5, metadata={"help": "Epochs (unless --max_train_steps)."})
    snr_gamma: float | None = field(default=None, metadata={"help": "Min-SNR loss weighting gamma (5.0 works)."})
    prediction_type: str | None = field(
        default=None,
        metadata={"help": f"One of {PREDICTION_TYPES}; default: the model's. v_prediction also trains the scheduler."},
    )
    timestep_bias_strategy: str = field(
        default="none",
        metadata={
            "help": f"One of {TIMESTEP_BIAS_STRATEGIES}: draw the training timesteps more often early (low "
            "noise), late (high noise) or in a range, as diffusers' SDXL script does."
        },
    )
    timestep_bias_multiplier: float = field(
        default=1.0, metadata={"help": "How much more often the biased timesteps are drawn (above 0)."}
    )
    timestep_bias_portion: float = field(
        default=0.25, metadata={"help": "The share of the timesteps biased by 'earlier' or 'later'."}
    )
    timestep_bias_begin: int = field(default=0, metadata={"help": "First biased timestep of 'range'."})
    timestep_bias_end: int = field(default=1000, metadata={"help": "End (excluded) of the biased range of 'range'."})
    noise_offset: float = field(default=0.0, metadata={"help": "Noise offset (0.1 helps very dark/bright images)."})
    proportion_empty_prompts: float = field(
        default=0.0,
        metadata={
            "help": "The share of training captions replaced by the empty prompt (a fresh draw per row and epoch), "
            "as diffusers' SDXL script does: the model learns the unconditional picture that classifier-free "
            "guidance steers away from (0.1 is Stable Diffusion's)."
        },
    )
    cache_latents: bool = field(
        default=False,
        metadata={
            "help": "Encode every image with the VAE once (and, with a frozen text encoder, every distinct caption), "
            "in fp16 files memory-mapped from the output folder. Compatible with --center_crop and --random_flip "
            "(both orientations are cached); not with random crops, which a cached latent cannot redo."
        },
    )
    dataloader_num_workers: int = field(default=0, metadata={"help": "Data loading workers."})

    def __post_init__(self) -> None:
        if self.dataset_name and self.dataset_revision:
            name, _, pinned = self.dataset_name.partition("@")
            if pinned and pinned != self.dataset_revision:
                raise ConfigError(
                    f"dataset_revision={self.dataset_revision!r} and dataset_name={self.dataset_name!r}: two revisions"
                )
            self.dataset_name = f"{name}@{self.dataset_revision}"
        super().__post_init__()
        if (self.dataset_name is None) == (self.train_data_dir is None):
            raise ConfigError("give one of dataset_name or train_data_dir")
        if not self.train_unet:
            raise ConfigError("train_unet=false: the caption fine-tune trains the UNet (align_distribution need not)")
        self.check_choice("on_corrupt", ("skip", "stop"))
        if self.prediction_type is not None:
            self.check_choice("prediction_type", PREDICTION_TYPES)
        self.check_choice("timestep_bias_strategy", TIMESTEP_BIAS_STRATEGIES)
        if self.timestep_bias_multiplier <= 0:
            raise ConfigError(f"timestep_bias_multiplier={self.timestep_bias_multiplier}: must be above 0")
        if not 0 < self.timestep_bias_portion <= 1:
            raise ConfigError(f"timestep_bias_portion={self.timestep_bias_portion}: above 0 and at most 1")
        if not 0 <= self.timestep_bias_begin < self.timestep_bias_end:
            raise ConfigError(
                f"timestep_bias_begin={self.timestep_bias_begin}, timestep_bias_end={self.timestep_bias_end}: "
                "0 <= begin < end"
            )
        if self.resolution < 8 or self.resolution % 8:
            raise ConfigError(f"resolution={self.resolution}: a multiple of 8")
        if self.cache_latents and not self.center_crop:
            raise ConfigError("cache_latents needs center_crop: a cached latent cannot be cropped at random")
        self.check_at_least(1, "num_train_epochs", "max_train_samples")
        self.check_at_least(0, "dataloader_num_workers", "noise_offset")
        if not 0 <= self.proportion_empty_prompts < 1:
            raise ConfigError(f"proportion_empty_prompts={self.proportion_empty_prompts}: at least 0 and below 1")
        # Counts that allocate memory: refused at once rather than killed for memory later.
        self.check_at_most(4_096, "resolution", why="pixels per side")
        self.check_pixels_per_batch("train_batch_size", "resolution", "resolution")


# ---------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------


class TrainTextToImage(FineTuneStage):
    name = "train_text_to_image"
    command = "training/train_text_to_image.py"
    Arguments = TrainArguments

    def build(self, run: StageRun, folder: Path) -> str:
        return train(run, folder)

    def estimate(self, args: TrainArguments, estimates: Any, costs: Any) -> Any:
        from pipelines.harness.estimate import (
            Estimate,
            architecture_facts,
            diffusion_scale,
            download_of,
            flop_note,
            hours,
            train_steps,
        )

        reads = [args.dataset_name or args.train_data_dir]
        rows = estimates.get(args.repo_id(args.dataset_name)).get("rows", 0) if args.dataset_name else 0
        if args.max_train_samples:
            rows = min(rows, args.max_train_samples) if rows else args.max_train_samples
        steps = train_steps(
            rows, args.train_batch_size, args.gradient_accumulation_steps, args.num_train_epochs, args.max_train_steps
        )
        base = args.repo_id(args.pretrained_model_name_or_path)
        share, native = diffusion_scale(estimates, base)
        per_step = costs.seconds_per_step * args.train_batch_size * args.gradient_accumulation_steps / 16
        per_step *= ((args.resolution or native) / 256) ** 2 * share
        download = download_of(args.pretrained_model_name_or_path, args, estimates, "base model")
        # The form of the captions it learns from, for the evaluation steps to compare with their prompts'.
        forms = estimates.get(args.repo_id(args.dataset_name)).get("caption_forms") if args.dataset_name else None
        facts = architecture_facts(estimates, base) | ({"caption_forms": forms} if forms else {})
        estimates.put(args.repo_id(args.output_repo), kind="model", **facts)
        return Estimate(
            reads=reads,
            downloads=[download] if download else [],
            makes=f"a {'LoRA' if args.use_lora else 'full'} fine-tune of {args.pretrained_model_name_or_path}"
            + (f" ({rows:,} training pairs)" if rows else ""),
            train_steps=steps,
            gpu_hours=hours(steps * per_step),
            priced=flop_note(share),
        )


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def load_training_data(run: StageRun, args: TrainArguments) -> tuple[Any, list[str]]:
    import datasets

    if args.train_data_dir:
        data = datasets.load_dataset("imagefolder", data_dir=args.train_data_dir, split=SPLIT)
        languages = []
    else:
        source = run.dataset("dataset_name")
        configs = source.configs
        if args.dataset_config_name == ["all"]:
            chosen = configs
        elif args.dataset_config_name:
            chosen = source.select(args.dataset_config_name, "dataset_config_name")
        elif len(configs) == 1:
            chosen = configs
        else:
            raise ConfigError(
                f"dataset_name={source.name} has configs {', '.join(configs)}: choose with --dataset_config_name "
                "(one, several, or all)"
            )
        parts = [source.load(config) for config in chosen]
        data = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
        languages = sorted(set(data["caption_language"])) if "caption_language" in data.column_names else []
    for column in (args.image_column, args.caption_column):
        if column not in data.column_names:
            raise DataError(f"column {column!r} not in the training data (it has {', '.join(data.column_names)})")
    if args.max_train_samples:
        data = data.shuffle(seed=args.seed).select(range(min(args.max_train_samples, len(data))))
    return data, languages


def decodable(data: Any, args: TrainArguments) -> tuple[Any, int]:
    """The rows whose image decodes, by the decoder every stage uses (`decode_image`); a corrupt one is
    skipped and counted (the count goes in the card), or stops the run (`--on_corrupt`)."""
    raw = data.cast_column(args.image_column, data.features[args.image_column].__class__(decode=False))
    bad = []
    for index, cell in enumerate(raw[args.image_column]):
        if decode_image(cell) is None:
            if args.on_corrupt == "stop":
                raise DataError(
                    f"the image of training row {index} cannot be decoded (--on_corrupt skip counts it instead)"
                )
            bad.append(index)
    if bad:
        keep = sorted(set(range(len(data))) - set(bad))
        data = data.select(keep)
    return data, len(bad)


class EpochOrder(torch.utils.data.Sampler):
    """Each epoch's order of the rows and each row's augmentation draws, from the seed, the epoch and
    the row alone, so a resumed run draws exactly what the uninterrupted run drew.

    With torch's shuffling (a generator the loader advances) a resume restarted the generator at the
    seed, so every epoch after it was shuffled differently; and accelerate reads one batch ahead, so
    a flip or crop drawn from the global random state while loading was drawn before a checkpoint
    saved that state, and drawn again after the resume. The training loop sets `epoch`.
    """

    def __init__(self, size: int, seed: int, empty_prompts: float = 0.0):
        self.size, self.seed, self.epoch, self.empty_prompts = size, seed, 0, empty_prompts

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Any:
        generator = torch.Generator().manual_seed(self._seed(self.epoch))
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def draws(self, row: int) -> random.Random:
        """The random numbers of one row's augmentation in this epoch."""
        return random.Random(self._seed(self.epoch, row))

    def drops_caption(self, row: int) -> bool:
        """Whether this row trains on the empty prompt in this epoch (--proportion_empty_prompts): a
        stream of its own, so that the augmentation draws stay what they are without it."""
        if not self.empty_prompts:
            return False
        return random.Random(self._seed(self.epoch, row, EMPTY_PROMPT_STREAM)).random() < self.empty_prompts

    def _seed(self, *keys: int) -> int:
        return int(np.random.SeedSequence([self.seed, *keys]).generate_state(1)[0])


class CachedLatents(torch.utils.data.Dataset):
    """VAE latents (per image and orientation) and, with a frozen text encoder, the text states of each
    distinct caption: fp16 arrays memory-mapped from disk, so memory stays flat in the dataset's size."""

    def __init__(
        self,
        folder: Path,
        tokens: list[dict[str, torch.Tensor]],
        caption_index: list[int] | None,
        order: EpochOrder,
        empty: tuple[dict[str, torch.Tensor], int | None] = ({}, None),
    ):
        self.order, (self.empty_tokens, self.empty_index) = order, empty
        self.latents = np.load(folder / "latents.npy", mmap_mode="r")
        flipped = folder / "latents_flipped.npy"
        self.flipped = np.load(flipped, mmap_mode="r") if flipped.is_file() else None
        hidden = folder / "hidden.npy"
        self.hidden = np.load(hidden, mmap_mode="r") if hidden.is_file() else None
        self.tokens, self.caption_index = tokens, caption_index

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        use_flipped = self.flipped is not None and self.order.draws(index).random() < 0.5
        latents = (self.flipped if use_flipped else self.latents)[index]
        empty = self.order.drops_caption(index)
        item = {"latents": torch.from_numpy(np.array(latents, dtype=np.float32)),
                **(self.empty_tokens if empty else self.tokens[index])}  # fmt: skip
        if self.hidden is not None:
            caption = self.empty_index if empty else self.caption_index[index]
            item["hidden"] = torch.from_numpy(np.array(self.hidden[caption], dtype=np.float32))
        return item


def cache_latents(
    train_data: Any,
    captions: list[str],
    tokenize: Any,
    models: tuple[Any, Any],
    args: TrainArguments,
    accelerator: Any,
    dtype: torch.dtype,
    folder: Path,
    order: EpochOrder,
) -> CachedLatents:
    """Encodes every image once (both orientations with --random_flip) and, with a frozen text
    encoder, every distinct caption once, into fp16 .npy files under `folder`."""
    vae, text_encoder = models
    device = accelerator.device
    folder.mkdir(parents=True, exist_ok=True)
    # The empty prompt is one more distinct caption where rows may train on it.
    distinct = list(dict.fromkeys(captions + [""] * (args.proportion_empty_prompts > 0)))
    position = {caption: number for number, caption in enumerate(distinct)}  # a scan per row would be quadratic
    caption_index = [position[c] for c in captions] if not args.train_text_encoder else None
    tokens, arrays = [], {}
    rows = len(train_data)
    for start in tqdm(range(0, rows, args.train_batch_size), desc="caching latents",
                      disable=not accelerator.is_local_main_process, file=sys.stderr):  # fmt: skip
        batch = train_data[start : start + args.train_batch_size]
        pixels = torch.stack(batch["pixel_values"]).to(device, dtype=dtype)
        with torch.no_grad():
            for name, images in (("latents", pixels), ("latents_flipped", torch.flip(pixels, dims=[3]))):
                if name == "latents_flipped" and not args.random_flip:
                    continue
                encoded = vae.encode(images).latent_dist.sample().to(torch.float16).cpu().numpy()
                if name not in arrays:
                    arrays[name] = np.lib.format.open_memmap(
                        folder / f"{name}.npy", "w+", np.float16, (rows, *encoded.shape[1:])
                    )
                arrays[name][start : start + len(encoded)] = encoded
        ids, mask = torch.stack(batch["input_ids"]), torch.stack(batch["attention_mask"])
        tokens += [{"input_ids": i, "attention_mask": m} for i, m in zip(ids, mask)]
    if caption_index is not None:
        for start in range(0, len(distinct), args.train_batch_size):
            chunk = tokenize(distinct[start : start + args.train_batch_size])
            with torch.no_grad():
                hidden = encode_text(text_encoder, chunk.input_ids.to(device), chunk.attention_mask.to(device))
            hidden = hidden.to(torch.float16).cpu().numpy()
            if "hidden" not in arrays:
                arrays["hidden"] = np.lib.format.open_memmap(
                    folder / "hidden.npy", "w+", np.float16, (len(distinct), *hidden.shape[1:])
                )
            arrays["hidden"][start : start + len(hidden)] = hidden
    for array in arrays.values():
        array.flush()
    del arrays
    if not args.proportion_empty_prompts:
        return CachedLatents(folder, tokens, caption_index, order)
    empty = tokenize([""])
    empty_tokens = {"input_ids": empty.input_ids[0], "attention_mask": empty.attention_mask[0]}
    return CachedLatents(folder, tokens, caption_index, order, (empty_tokens, position[""]))


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def train(run: StageRun, output_dir: Path) -> str:
    """The whole fine-tune: data first (a bad dataset is refused before a model loads), then the
    models, the loader, the optimiser, a resume, the loop, and the saved model."""
    from accelerate.utils import set_seed

    args: TrainArguments = run.args
    base = run.model("pretrained_model_name_or_path")
    check_lora_base(args, base)
    if args.push_to_hub:
        HubStore().check_can_push(args.hub_model_id, "model")  # before hours of training, not after
    accelerator = make_accelerator(args, output_dir)
    threads = set_cpu_threads(args, accelerator, output_dir)
    if accelerator.is_main_process:
        remove_partial_checkpoints(output_dir, accelerator)
    set_seed(args.seed)
    with accelerator.main_process_first():
        data, languages = load_training_data(run, args)
        data, skipped = decodable(data, args)
    if len(data) == 0:
        raise DataError("no training rows with a decodable image")
    if skipped:
        accelerator.print(f"skipped {skipped} training row(s) whose image cannot be decoded")
    parts = load_models(base.path, args, accelerator, args.prediction_type)
    parts.timestep_weights = timestep_weights(args, parts.noise_scheduler.config.num_train_timesteps)
    loader, order = make_loader(data, parts, args, accelerator, output_dir)
    loop = make_optimizer(loader, parts, args, accelerator, order)
    if accelerator.is_main_process and args.report_to != "none":
        accelerator.init_trackers(
            run.stage, config={k: v for k, v in run.parameters.items() if not isinstance(v, list)}
        )
    settings = run_settings(run)
    global_step, history = resume(
        output_dir, args.resume_from_checkpoint, accelerator, parts.ema_unet, settings, argument_defaults(run)
    )
    if accelerator.is_main_process:
        clear_stale_validation(output_dir, global_step)
    total_batch = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    accelerator.print(
        "***** Running training *****\n"
        f"  Num examples = {len(data)}" + (f" ({skipped} corrupt skipped)" if skipped else "") + "\n"
        f"  Num epochs = {loop.num_epochs}\n"
        f"  Instantaneous batch size per device = {args.train_batch_size}\n"
        f"  Total train batch size (w. parallel, distributed & accumulation) = {total_batch}\n"
        f"  Gradient accumulation steps = {args.gradient_accumulation_steps}\n"
        f"  Total optimization steps = {loop.max_train_steps}\n"
        f"  Trainable = {'LoRA' if args.use_lora else 'UNet'}{' + text encoder' if args.train_text_encoder else ''}, "
        f"mixed precision = {accelerator.mixed_precision}, "
        f"prediction type = {parts.noise_scheduler.config.prediction_type}"
    )
    global_step = training_loop(parts, loop, args, accelerator, output_dir, global_step, history, settings)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        trained = {
            "global_step": global_step,
            "max_train_steps": loop.max_train_steps,
            "skipped_corrupt_images": skipped,
            "cpu_threads": threads,
            "log_history": history,
        }
        save_outputs(run, output_dir, parts, accelerator, base, languages, trained)
    accelerator.wait_for_everyone()
    end_training(accelerator)
    return f"{'LoRA' if args.use_lora else 'Full'} fine-tune, {global_step} steps"


def timestep_weights(args: TrainArguments, num_timesteps: int) -> torch.Tensor | None:
    """How often each training timestep is drawn under --timestep_bias_strategy (diffusers' SDXL script's rule).

    The biased timesteps (the first or last `portion` of them, or `begin` to `end`) are drawn `multiplier`
    times as often as the others; None when nothing is biased.
    """
    strategy = args.timestep_bias_strategy
    if strategy == "none" or args.timestep_bias_multiplier == 1:
        return None
    if strategy == "range" and args.timestep_bias_end > num_timesteps:
        raise ConfigError(f"timestep_bias_end={args.timestep_bias_end}: the model has {num_timesteps} timesteps")
    count = max(1, int(args.timestep_bias_portion * num_timesteps))
    biased = {
        "earlier": slice(0, count),
        "later": slice(num_timesteps - count, None),
        "range": slice(args.timestep_bias_begin, args.timestep_bias_end),
    }[strategy]
    weights = torch.ones(num_timesteps)
    weights[biased] *= args.timestep_bias_multiplier
    return weights / weights.sum()


def make_loader(
    data: Any, parts: Parts, args: TrainArguments, accelerator: Any, output_dir: Path
) -> tuple[Any, EpochOrder]:
    """Batches of pixels and tokens, or of cached latents (and text states) with --cache_latents, in
    the order (and with the augmentations) that their `EpochOrder` draws for each epoch."""
    from torchvision import transforms
    from torchvision.transforms import functional

    order = EpochOrder(len(data), args.seed, args.proportion_empty_prompts)
    resize = transforms.Resize(args.resolution, interpolation=transforms.InterpolationMode.BILINEAR)
    to_tensor = transforms.Compose([transforms.ToTensor(), transforms.Normalize([0.5], [0.5])])
    flip = args.random_flip and not args.cache_latents  # cached latents hold both orientations instead

    def augment(image: Any, row: int) -> torch.Tensor:
        """Resize, crop (centre, or where this row's draws say) and flip (as its draws say)."""
        image, draws = resize(to_rgb(image)), order.draws(row)
        if args.center_crop:
            image = functional.center_crop(image, [args.resolution, args.resolution])
        else:
            top = draws.randint(0, max(image.height - args.resolution, 0))
            left = draws.randint(0, max(image.width - args.resolution, 0))
            image = functional.crop(image, top, left, args.resolution, args.resolution)
        if flip and draws.random() < 0.5:
            image = functional.hflip(image)
        return to_tensor(image)

    def preprocess(batch: dict[str, list]) -> dict[str, list]:
        batch["pixel_values"] = [augment(image, row) for image, row in zip(batch[args.image_column], batch[ROW])]
        # Cached latents keep each row's own caption: their dataset draws the empty prompt per item.
        dropped = [not args.cache_latents and order.drops_caption(row) for row in batch[ROW]]
        captions = ["" if drop else str(caption) for caption, drop in zip(batch[args.caption_column], dropped)]
        tokens = parts.tokenize(captions)
        batch["input_ids"], batch["attention_mask"] = list(tokens.input_ids), list(tokens.attention_mask)
        return batch

    with accelerator.main_process_first():
        train_data = data.add_column(ROW, list(range(len(data)))).with_transform(preprocess)
    dataset: Any = train_data
    if args.cache_latents:
        captions = [str(c) for c in data[args.caption_column]]
        cache = output_dir / ".cache" / f"process-{accelerator.process_index}"
        dataset = cache_latents(
            train_data, captions, parts.tokenize, (parts.vae, parts.text_encoder), args, accelerator,
            parts.weight_dtype, cache, order,
        )  # fmt: skip

    def collate(examples: list[dict]) -> dict[str, torch.Tensor]:
        return {
            "pixel_values": torch.stack([e["pixel_values"] for e in examples]).float(),
            "input_ids": torch.stack([e["input_ids"] for e in examples]),
            "attention_mask": torch.stack([e["attention_mask"] for e in examples]),
        }

    loader = torch.utils.data.DataLoader(
        dataset,
        sampler=order,
        collate_fn=collate if not args.cache_latents else None,
        batch_size=args.train_batch_size,
        num_workers=args.dataloader_num_workers,
        # Its own generator for the seed torch draws each time an epoch starts: from the global random
        # state, that draw would shift the noise of a resumed run (which starts its epoch after the
        # checkpoint's state is restored) against the uninterrupted one.
        generator=torch.Generator().manual_seed(args.seed),
    )
    return loader, order


@dataclass
class Loop:
    """The optimiser, schedule and loader, prepared by accelerate, and the run's length."""

    optimizer: Any
    lr_scheduler: Any
    loader: Any
    trainable: list
    max_train_steps: int
    num_epochs: int
    updates_per_epoch: int
    order: EpochOrder


def make_optimizer(loader: Any, parts: Parts, args: TrainArguments, accelerator: Any, order: EpochOrder) -> Loop:
    """AdamW over the trainable weights, the learning-rate schedule, all prepared by accelerate."""
    from diffusers.optimization import get_scheduler

    updates_per_epoch = math.ceil(len(loader) / args.gradient_accumulation_steps)
    max_train_steps = args.max_train_steps or args.num_train_epochs * updates_per_epoch
    learning_rate = args.learning_rate
    if args.scale_lr:
        learning_rate *= args.gradient_accumulation_steps * args.train_batch_size * accelerator.num_processes
    trainable = [p for m in (parts.unet, parts.text_encoder) for p in m.parameters() if p.requires_grad]
    optimizer = make_adamw(trainable, learning_rate, args)
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=max_train_steps * accelerator.num_processes,
    )
    if args.train_text_encoder:
        parts.unet, parts.text_encoder = prepare_models(accelerator, parts.unet, parts.text_encoder)
    else:
        (parts.unet,) = prepare_models(accelerator, parts.unet)
    optimizer, loader, lr_scheduler = accelerator.prepare(optimizer, loader, lr_scheduler)
    if parts.ema_unet is not None:
        parts.ema_unet.to(accelerator.device)
    return Loop(
        optimizer=optimizer,
        lr_scheduler=lr_scheduler,
        loader=loader,
        trainable=trainable,
        max_train_steps=max_train_steps,
        num_epochs=math.ceil(max_train_steps / updates_per_epoch),
        updates_per_epoch=updates_per_epoch,
        order=order,
    )


def training_loss(parts: Parts, batch: Any, args: TrainArguments, accelerator: Any) -> tuple[torch.Tensor, int]:
    """The denoising loss of one batch (epsilon or v-prediction, optionally min-SNR weighted)."""
    from diffusers.training_utils import compute_snr

    noise_scheduler = parts.noise_scheduler
    prediction_type = noise_scheduler.config.prediction_type
    latents, hidden = batch_inputs(batch, parts.vae, parts.text_encoder, args, parts.weight_dtype, accelerator.device)
    noise = torch.randn_like(latents)
    if args.noise_offset:
        noise += args.noise_offset * torch.randn((latents.shape[0], latents.shape[1], 1, 1), device=latents.device)
    if parts.timestep_weights is None:
        timesteps = torch.randint(
            0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), device=latents.device
        ).long()
    else:
        timesteps = torch.multinomial(parts.timestep_weights, latents.shape[0], replacement=True).to(latents.device)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    target = noise_scheduler.get_velocity(latents, noise, timesteps) if prediction_type == "v_prediction" else noise
    prediction = parts.unet(noisy, timesteps, hidden.to(noisy.dtype), return_dict=False)[0]
    if args.snr_gamma is None:
        return F.mse_loss(prediction.float(), target.float(), reduction="mean"), latents.shape[0]
    snr = compute_snr(noise_scheduler, timesteps)
    weights = torch.stack([snr, args.snr_gamma * torch.ones_like(timesteps)], dim=1).min(dim=1)[0]
    weights = weights / (snr + 1) if prediction_type == "v_prediction" else weights / snr
    loss = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=[1, 2, 3])
    return (loss * weights).mean(), latents.shape[0]


def training_loop(
    parts: Parts,
    loop: Loop,
    args: TrainArguments,
    accelerator: Any,
    output_dir: Path,
    global_step: int,
    history: list,
    settings: dict[str, Any],
) -> int:
    """Optimisation steps from `global_step` to the end, with checkpoints (recording the run's
    `settings`) and validation; the last step."""
    first_epoch = global_step // loop.updates_per_epoch
    resume_batches = (global_step % loop.updates_per_epoch) * args.gradient_accumulation_steps
    progress = tqdm(
        range(loop.max_train_steps), initial=global_step, desc="steps",
        disable=not accelerator.is_local_main_process, file=sys.stderr,
    )  # fmt: skip
    trained = (parts.unet, parts.text_encoder) if args.train_text_encoder else (parts.unet,)
    for epoch in range(first_epoch, loop.num_epochs):
        loop.order.epoch = epoch  # this epoch's order and draws, whether the run started here or resumed
        for model in trained:
            model.train()
        epoch_loader = (
            accelerator.skip_first_batches(loop.loader, resume_batches) if epoch == first_epoch else loop.loader
        )
        accumulated = 0.0
        for batch in epoch_loader:
            with accelerator.accumulate(*trained):
                loss, size = training_loss(parts, batch, args, accelerator)
                accumulated += accelerator.gather(loss.detach().repeat(size)).mean().item()
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(loop.trainable, args.max_grad_norm)
                loop.optimizer.step()
                loop.lr_scheduler.step()
                loop.optimizer.zero_grad()
            if not accelerator.sync_gradients:
                continue
            if parts.ema_unet is not None:
                parts.ema_unet.step(parts.unet.parameters())
            global_step += 1
            progress.update(1)
            step_loss, accumulated = accumulated / args.gradient_accumulation_steps, 0.0
            learning_rate = loop.lr_scheduler.get_last_lr()[0]
            history.append({"step": global_step, "loss": step_loss, "lr": learning_rate})
            accelerator.log({"train_loss": step_loss, "lr": learning_rate}, step=global_step)
            progress.set_postfix(loss=f"{step_loss:.4f}")
            if global_step % args.checkpointing_steps == 0:
                models = {} if args.use_lora else {"unet": parts.unet, "text_encoder": parts.text_encoder}
                if not args.train_text_encoder:
                    models.pop("text_encoder", None)
                lora = None
                if args.use_lora:  # the adapters as the published model holds them: a checkpoint loads as one
                    unwrapped = accelerator.unwrap_model(parts.unet), accelerator.unwrap_model(parts.text_encoder)
                    lora = functools.partial(save_lora, pipeline_class=type(parts.pipe), unet=unwrapped[0],
                                             text_encoder=unwrapped[1], text_lora=parts.text_lora)  # fmt: skip
                save_checkpoint(accelerator, output_dir, global_step, args.checkpoints_total_limit, models,
                                parts.ema_unet, history, lora, settings)  # fmt: skip
            if args.validation_prompts and args.validation_steps and global_step % args.validation_steps == 0:
                if accelerator.is_main_process:
                    log_validation(inference_pipeline(parts, accelerator), args, accelerator, global_step)
            if global_step >= loop.max_train_steps:
                break
        if global_step >= loop.max_train_steps:
            break
    progress.close()
    return global_step


def save_outputs(
    run: StageRun, output_dir: Path, parts: Parts, accelerator: Any, base: Any, languages: list[str], trained: dict
) -> None:
    """The trained model in diffusers' format (EMA weights when kept), validation images, the card
    and the trainer state, in `output_dir` itself (main process only); `--push_to_hub` sends it once the
    store has published it (`after_publish`)."""
    args: TrainArguments = run.args
    global_step = trained["global_step"]
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
        validation = log_validation(inference_pipeline(parts, accelerator), args, accelerator, global_step)
        shutil.rmtree(output_dir / "validation" / "final", ignore_errors=True)
        shutil.copytree(output_dir / "validation" / f"step-{global_step}", output_dir / "validation" / "final")
        validation = [line.replace("validation/", "validation/final/") for line in validation]
    save_model_card(output_dir, run, args, base, languages, validation, trained.get("cpu_threads"),
                    trained["skipped_corrupt_images"])  # fmt: skip
    state = {**trained, "base_model": base.pin, "inputs": run.inputs}
    (output_dir / "trainer_state.json").write_text(json.dumps(state, indent=1))
    accelerator.print(f"saved the {'LoRA adapters' if args.use_lora else 'pipeline'} to {output_dir}")


def batch_inputs(
    batch: Any, vae: Any, text_encoder: Any, args: TrainArguments, dtype: torch.dtype, device: Any
) -> tuple:
    """Latents and text hidden states of a batch: from the cache, or encoded now."""

    def encoded() -> torch.Tensor:
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        return encode_each_caption_once(text_encoder, ids, mask)

    if "latents" in batch:
        hidden = batch["hidden"].to(device) if "hidden" in batch else encoded()
        return batch["latents"].to(device) * vae.config.scaling_factor, hidden
    with torch.no_grad():
        latents = vae.encode(batch["pixel_values"].to(device, dtype=dtype)).latent_dist.sample()
    latents = latents * vae.config.scaling_factor
    with torch.set_grad_enabled(args.train_text_encoder):
        return latents, encoded()


STAGE = TrainTextToImage()
Arguments = TrainArguments  # the name recipes and the runner use
run = STAGE.run


def main(argv: list[str] | None = None) -> None:
    STAGE.main(argv)


if __name__ == "__main__":
    main()
