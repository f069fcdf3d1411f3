"""Fine-tune a text-to-image model (AltDiffusion or Stable Diffusion), fully or with LoRA.

    accelerate launch training/train_text_to_image.py --recipe training/recipes/english_images_all_captions.yaml
    python training/train_text_to_image.py --pretrained_model_name_or_path BAAI/AltDiffusion-m9 \\
        --dataset_name t2i-bias/train-en-images-all-captions --resolution 256 --output_dir outputs/ft

The debiasing step of the study. Reads a training dataset (`image`, `text`) from the store or the
Hub (`--dataset_name`, `--dataset_revision`) or an imagefolder (`--train_data_dir`), trains, saves
checkpoints, and publishes the result to the store as a model repo with a card: a full pipeline,
or LoRA weights in diffusers' format that `load_lora_weights` reads. The generation stage loads it
by repo id. The script reads top to bottom: card writer, validation, arguments, `main()`.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from torchvision import transforms
from tqdm.auto import tqdm

from pipelines.artifacts.cards import model_card
from pipelines.artifacts.dataset_files import SPLIT, artifact_configs
from pipelines.artifacts.store import HubStore
from pipelines.errors import ConfigError
from pipelines.harness.config import StageArguments, input_field
from pipelines.harness.stage import Published, StageRun, stage_main
from pipelines.modeling.diffusion import (
    LORA_WEIGHTS,
    add_text_encoder_lora,
    assemble_pipeline,
    model_folder,
    save_text_encoder_lora,
)

STAGE = "train_text_to_image"
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")
MIXED_PRECISION = ("no", "fp16", "bf16")
# LoRA targets: the UNet's attention projections.
UNET_LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]


# ---------------------------------------------------------------------------------------------
# Model card
# ---------------------------------------------------------------------------------------------


def save_model_card(
    folder: Path, run: StageRun, args: TrainArguments, base: dict[str, str], languages: list[str], validation: list
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
            "noise_offset",
            "train_text_encoder",
            "seed",
        )
    }
    grid = [f"![{prompt}](validation/{name})" for prompt, name in validation]
    usage = (
        "from pipelines.modeling.diffusion import load_pipeline\nfrom pipelines.artifacts.store import open_store\n"
        f'pipe, info = load_pipeline("{run.output_repo_id}", open_store())\n'
        'image = pipe("ein Foto des Gesichts einer Person, die als Ärzt*in arbeitet").images[0]'
    )
    model_card(
        title=f"{base['model']} fine-tuned on {run.inputs.get('dataset_name', args.train_data_dir)}",
        description=(
            f"A {kind} of `{base['model']}@{base['model_revision']}` trained to reduce social bias, on "
            f"`{run.inputs.get('dataset_name', args.train_data_dir)}`. Hyper-parameters: "
            + ", ".join(f"{k}={v}" for k, v in hyper.items())
            + "."
        ),
        lineage=run.lineage,
        languages=languages,
        base_model=base["model"],
        base_model_revision=base["model_revision"],
        datasets=[run.inputs["dataset_name"].partition("@")[0]] if "dataset_name" in run.inputs else None,
        tags=["fine-tuned", "debiasing", "lora" if args.use_lora else "full"],
        notes=["Validation prompts (one image each, fixed seed):", *grid] if grid else [],
        usage=usage,
    ).save(folder / "README.md")


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


def log_validation(pipe: Any, args: TrainArguments, accelerator: Any, step: int) -> list[tuple[str, str]]:
    """Generates one image per validation prompt (fixed seeds); saves them and logs them to trackers."""
    pipe.set_progress_bar_config(disable=True)
    folder = Path(args.output_dir) / "validation" / f"step-{step}"
    folder.mkdir(parents=True, exist_ok=True)
    saved = []
    for index, prompt in enumerate(args.validation_prompts):
        generator = torch.Generator(device="cpu").manual_seed(args.seed + index)
        with torch.inference_mode():
            image = pipe(prompt, num_inference_steps=args.validation_steps_per_image, generator=generator).images[0]
        name = f"{index:02d}.png"
        image.save(folder / name)
        saved.append((prompt, name))
        for tracker in accelerator.trackers:
            if tracker.name == "tensorboard":
                tracker.writer.add_images(f"validation/{index}", np.asarray(image)[None], step, dataformats="NHWC")
            elif tracker.name == "wandb":
                import wandb

                tracker.log({f"validation/{index}": wandb.Image(image, caption=prompt)}, step=step)
    return saved


# ---------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------


@dataclass
class TrainArguments(StageArguments):
    INPUTS = {"pretrained_model_name_or_path": "model", "dataset_name": "dataset"}
    pretrained_model_name_or_path: str = input_field(
        "Base model: a store repo, a Hub id (BAAI/AltDiffusion-m9) or a folder.", default="tiny-altdiffusion"
    )
    dataset_name: str | None = input_field("Training dataset (store or Hub repo, ns/name[@rev]).")
    dataset_revision: str | None = field(default=None, metadata={"help": "Revision of --dataset_name."})
    train_data_dir: str | None = field(default=None, metadata={"help": "An imagefolder instead of --dataset_name."})
    image_column: str = field(default="image", metadata={"help": "Column with the images."})
    caption_column: str = field(default="text", metadata={"help": "Column with the captions."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only this many samples."})
    output_repo: str = field(default="finetuned", metadata={"help": "Model repo to publish to."})
    output_dir: str | None = field(
        default=None,
        metadata={"help": "Checkpoints, logs and the final model (default <store_root>/.work/<stage>/<fingerprint>)."},
    )
    resolution: int = field(default=512, metadata={"help": "Training image size."})
    center_crop: bool = field(default=False, metadata={"help": "Center crop (else random crop)."})
    random_flip: bool = field(default=False, metadata={"help": "Random horizontal flips."})
    train_batch_size: int = field(default=16, metadata={"help": "Batch size per device."})
    num_train_epochs: int = field(default=5, metadata={"help": "Epochs (unless --max_train_steps)."})
    max_train_steps: int | None = field(default=None, metadata={"help": "Total optimisation steps."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Steps to accumulate per update."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Trade compute for memory."})
    learning_rate: float = field(default=5e-6, metadata={"help": "Initial learning rate."})
    scale_lr: bool = field(default=False, metadata={"help": "Scale the LR by GPUs, accumulation and batch size."})
    lr_scheduler: str = field(default="polynomial", metadata={"help": f"One of {LR_SCHEDULERS}."})
    lr_warmup_steps: int = field(default=0, metadata={"help": "Warm-up steps."})
    snr_gamma: float | None = field(default=None, metadata={"help": "Min-SNR loss weighting gamma (5.0 works)."})
    use_ema: bool = field(default=False, metadata={"help": "Keep an EMA of the UNet and save it."})
    noise_offset: float = field(default=0.0, metadata={"help": "Noise offset (0.1 helps very dark/bright images)."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm."})
    adam_beta1: float = field(default=0.9, metadata={"help": "Adam beta1."})
    adam_beta2: float = field(default=0.999, metadata={"help": "Adam beta2."})
    adam_weight_decay: float = field(default=1e-2, metadata={"help": "Adam weight decay."})
    adam_epsilon: float = field(default=1e-8, metadata={"help": "Adam epsilon."})
    mixed_precision: str = field(default="no", metadata={"help": f"One of {MIXED_PRECISION} (fp16 needs a GPU)."})
    allow_tf32: bool = field(default=False, metadata={"help": "Allow TF32 matmuls on Ampere+ GPUs."})
    seed: int = field(default=0, metadata={"help": "Seed of everything random."})
    train_text_encoder: bool = field(default=False, metadata={"help": "Train the text encoder too."})
    use_lora: bool = field(
        default=False,
        metadata={
            "help": "Train peft LoRA adapters instead of all weights: the UNet's, and with "
            "--train_text_encoder the text encoder's too."
        },
    )
    rank: int = field(default=4, metadata={"help": "LoRA rank."})
    cache_latents: bool = field(
        default=False,
        metadata={
            "help": "Encode every image with the VAE once (and, with a frozen text encoder, every caption). "
            "Compatible with --center_crop and --random_flip (both orientations are cached); not with random "
            "crops, which a cached latent cannot redo."
        },
    )
    dataloader_num_workers: int = field(default=0, metadata={"help": "Data loading workers."})
    checkpointing_steps: int = field(default=500, metadata={"help": "Save a resumable state every N steps."})
    checkpoints_total_limit: int | None = field(default=None, metadata={"help": "Keep at most N checkpoints."})
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "A checkpoint folder or 'latest'."})
    validation_prompts: list[str] = field(default_factory=list, metadata={"help": "Prompts (any language)."})
    validation_steps: int | None = field(default=None, metadata={"help": "Validate every N steps (and at the end)."})
    validation_steps_per_image: int = field(default=25, metadata={"help": "Denoising steps of validation images."})
    report_to: str = field(default="none", metadata={"help": "none, tensorboard or wandb."})
    push_to_hub: bool = field(default=False, metadata={"help": "Also push the model to the Hugging Face Hub."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Hub repo for --push_to_hub (token: HF_TOKEN)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.dataset_name is None) == (self.train_data_dir is None):
            raise ConfigError("give one of dataset_name or train_data_dir")
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise ConfigError(f"lr_scheduler={self.lr_scheduler!r}: allowed {', '.join(LR_SCHEDULERS)}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ConfigError(f"mixed_precision={self.mixed_precision!r}: allowed {', '.join(MIXED_PRECISION)}")
        if self.mixed_precision == "fp16" and not torch.cuda.is_available():
            raise ConfigError("mixed_precision='fp16' needs a GPU: use 'no' or 'bf16' on CPU")
        if self.resolution < 8 or self.resolution % 8:
            raise ConfigError(f"resolution={self.resolution}: a multiple of 8")
        if self.cache_latents and not self.center_crop:
            raise ConfigError("cache_latents needs center_crop: a cached latent cannot be cropped at random")
        if self.resume_from_checkpoint not in (None, "latest") and not Path(self.resume_from_checkpoint).is_dir():
            raise ConfigError(f"resume_from_checkpoint={self.resume_from_checkpoint!r}: not a folder nor 'latest'")
        if self.use_ema and self.use_lora:
            raise ConfigError("use_ema with use_lora: an EMA of frozen weights is the weights; drop one")
        if self.push_to_hub and not self.hub_model_id:
            raise ConfigError("push_to_hub needs hub_model_id")
        if self.report_to not in ("none", "tensorboard", "wandb"):
            raise ConfigError(f"report_to={self.report_to!r}: allowed none, tensorboard, wandb")
        for name in ("train_batch_size", "gradient_accumulation_steps", "checkpointing_steps", "rank"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)}: must be at least 1")


# The output folder and the checkpoint options choose where things go, not what is made.
NOT_FINGERPRINTED = ("output_dir", "resume_from_checkpoint", "report_to", "push_to_hub", "hub_model_id")


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def encode_text(text_encoder: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Hidden states the UNet attends to, for both families (RoBERTa-series uses its attention mask)."""
    if getattr(text_encoder.config, "use_attention_mask", False):
        return text_encoder(input_ids, attention_mask=attention_mask)[0]
    return text_encoder(input_ids)[0]


def load_training_data(run: StageRun, args: TrainArguments) -> tuple[datasets.Dataset, list[str]]:
    if args.train_data_dir:
        data = datasets.load_dataset("imagefolder", data_dir=args.train_data_dir, split=SPLIT)
        languages = []
    else:
        folder = run.input_folder("dataset_name")
        data = datasets.load_dataset(str(folder), artifact_configs(folder)[0], split=SPLIT)
        languages = sorted(set(data["caption_language"])) if "caption_language" in data.column_names else []
    for column in (args.image_column, args.caption_column):
        if column not in data.column_names:
            raise ConfigError(f"column {column!r} not in the training data (has {', '.join(data.column_names)})")
    if args.max_train_samples:
        data = data.shuffle(seed=args.seed).select(range(min(args.max_train_samples, len(data))))
    return data, languages


def checkpoints(output_dir: Path) -> list[Path]:
    found = [p for p in output_dir.glob("checkpoint-*") if p.name.split("-")[1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def main(argv: list[str] | None = None) -> None:
    stage_main(TrainArguments, STAGE, run, argv)


def run(args: TrainArguments) -> Published:
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel, compute_snr

    stage_run = StageRun(STAGE, args, repo_type="model", not_parameters=NOT_FINGERPRINTED)
    reused = stage_run.reuse()
    if reused is not None:
        return reused
    output_dir = Path(args.output_dir or Path(args.store_root) / ".work" / STAGE / stage_run.fingerprint)
    args.output_dir = str(output_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        cpu=not torch.cuda.is_available(),
    )
    if args.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    set_seed(args.seed)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)

    # ===== Models ===========================================================================
    folder, model_id, model_revision = model_folder(stage_run.inputs["pretrained_model_name_or_path"], stage_run.store)
    base = {"model": model_id, "model_revision": model_revision}
    pipe = assemble_pipeline(folder, torch.float32)
    tokenizer, text_encoder, vae, unet = pipe.tokenizer, pipe.text_encoder, pipe.vae, pipe.unet
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    vae.requires_grad_(False)
    text_encoder.requires_grad_(args.train_text_encoder and not args.use_lora)
    unet.requires_grad_(not args.use_lora)
    if args.use_lora:
        from peft import LoraConfig

        unet.add_adapter(
            LoraConfig(
                r=args.rank, lora_alpha=args.rank, init_lora_weights="gaussian", target_modules=UNET_LORA_TARGETS
            )
        )
    text_lora = None
    if args.use_lora and args.train_text_encoder:
        text_lora = add_text_encoder_lora(text_encoder, args.rank)
    ema_unet = None
    if args.use_ema:
        ema_unet = EMAModel(unet.parameters(), model_cls=UNet2DConditionModel, model_config=unet.config)
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if args.train_text_encoder:
            text_encoder.gradient_checkpointing_enable()
    # Frozen weights in the compute dtype; trainable ones (LoRA included) stay fp32 under fp16.
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    vae.to(accelerator.device, dtype=weight_dtype)
    if not args.train_text_encoder:
        text_encoder.to(accelerator.device, dtype=weight_dtype)
    if args.use_lora:
        unet.to(accelerator.device, dtype=weight_dtype)
        for parameter in (*unet.parameters(), *text_encoder.parameters()):
            if parameter.requires_grad:
                parameter.data = parameter.data.float()

    # ===== Data ============================================================================
    with accelerator.main_process_first():
        data, languages = load_training_data(stage_run, args)
    steps = [
        transforms.Resize(args.resolution, interpolation=transforms.InterpolationMode.BILINEAR),
        transforms.CenterCrop(args.resolution) if args.center_crop else transforms.RandomCrop(args.resolution),
    ]
    if args.random_flip and not args.cache_latents:  # cached latents hold both orientations instead
        steps.append(transforms.RandomHorizontalFlip())
    train_transforms = transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize([0.5], [0.5])])

    def tokenize(captions: list[str]) -> dict[str, torch.Tensor]:
        return tokenizer(
            captions, max_length=tokenizer.model_max_length, padding="max_length", truncation=True, return_tensors="pt"
        )

    def preprocess(batch: dict[str, list]) -> dict[str, list]:
        batch["pixel_values"] = [train_transforms(image.convert("RGB")) for image in batch[args.image_column]]
        tokens = tokenize([str(caption) for caption in batch[args.caption_column]])
        batch["input_ids"], batch["attention_mask"] = list(tokens.input_ids), list(tokens.attention_mask)
        return batch

    with accelerator.main_process_first():
        train_data = data.with_transform(preprocess)
    cached = None
    if args.cache_latents:
        cached = cache_latents(train_data, vae, text_encoder, args, accelerator, weight_dtype)

    def collate(examples: list[dict]) -> dict[str, torch.Tensor]:
        return {
            "pixel_values": torch.stack([e["pixel_values"] for e in examples]).float(),
            "input_ids": torch.stack([e["input_ids"] for e in examples]),
            "attention_mask": torch.stack([e["attention_mask"] for e in examples]),
        }

    dataset = cached if cached is not None else train_data
    loader = torch.utils.data.DataLoader(
        dataset,
        shuffle=True,
        collate_fn=collate if cached is None else None,
        batch_size=args.train_batch_size,
        num_workers=args.dataloader_num_workers,
        generator=torch.Generator().manual_seed(args.seed),
    )

    # ===== Optimiser and schedule ============================================================
    updates_per_epoch = math.ceil(len(loader) / args.gradient_accumulation_steps)
    max_train_steps = args.max_train_steps or args.num_train_epochs * updates_per_epoch
    num_epochs = math.ceil(max_train_steps / updates_per_epoch)
    learning_rate = args.learning_rate
    if args.scale_lr:
        learning_rate *= args.gradient_accumulation_steps * args.train_batch_size * accelerator.num_processes
    trainable = [p for m in (unet, text_encoder) for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable,
        lr=learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
    )
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=max_train_steps * accelerator.num_processes,
    )
    if args.train_text_encoder:
        unet, text_encoder, optimizer, loader, lr_scheduler = accelerator.prepare(
            unet, text_encoder, optimizer, loader, lr_scheduler
        )
    else:
        unet, optimizer, loader, lr_scheduler = accelerator.prepare(unet, optimizer, loader, lr_scheduler)
    if ema_unet is not None:
        ema_unet.to(accelerator.device)
        accelerator.register_for_checkpointing(ema_unet)
    if accelerator.is_main_process and args.report_to != "none":
        accelerator.init_trackers(
            STAGE, config={k: v for k, v in stage_run.parameters.items() if not isinstance(v, list)}
        )

    # ===== Resume ==========================================================================
    global_step = 0
    if args.resume_from_checkpoint:
        path = (
            checkpoints(output_dir)[-1]
            if args.resume_from_checkpoint == "latest" and checkpoints(output_dir)
            else None
        )
        path = Path(args.resume_from_checkpoint) if args.resume_from_checkpoint != "latest" else path
        if path is None:
            accelerator.print("no checkpoint to resume from: starting a new run")
        else:
            accelerator.print(f"resuming from {path}")
            accelerator.load_state(str(path))
            global_step = int(path.name.split("-")[1])
    first_epoch = global_step // updates_per_epoch
    resume_batches = (global_step % updates_per_epoch) * args.gradient_accumulation_steps

    # ===== Train ===========================================================================
    losses: list[dict[str, float]] = []
    progress = tqdm(
        range(max_train_steps),
        initial=global_step,
        desc="steps",
        disable=not accelerator.is_local_main_process,
        file=sys.stderr,
    )
    for epoch in range(first_epoch, num_epochs):
        unet.train()
        if args.train_text_encoder:
            text_encoder.train()
        epoch_loader = accelerator.skip_first_batches(loader, resume_batches) if epoch == first_epoch else loader
        accumulated = 0.0
        for batch in epoch_loader:
            with (
                accelerator.accumulate(unet, text_encoder) if args.train_text_encoder else accelerator.accumulate(unet)
            ):
                latents, hidden = batch_inputs(batch, vae, text_encoder, args, weight_dtype, accelerator.device)
                noise = torch.randn_like(latents)
                if args.noise_offset:
                    noise += args.noise_offset * torch.randn(
                        (latents.shape[0], latents.shape[1], 1, 1), device=latents.device
                    )
                timesteps = torch.randint(
                    0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), device=latents.device
                ).long()
                noisy = noise_scheduler.add_noise(latents, noise, timesteps)
                if noise_scheduler.config.prediction_type == "v_prediction":
                    target = noise_scheduler.get_velocity(latents, noise, timesteps)
                else:
                    target = noise
                prediction = unet(noisy, timesteps, hidden.to(noisy.dtype), return_dict=False)[0]
                if args.snr_gamma is None:
                    loss = F.mse_loss(prediction.float(), target.float(), reduction="mean")
                else:
                    snr = compute_snr(noise_scheduler, timesteps)
                    weights = torch.stack([snr, args.snr_gamma * torch.ones_like(timesteps)], dim=1).min(dim=1)[0]
                    weights = (
                        weights / (snr + 1)
                        if noise_scheduler.config.prediction_type == "v_prediction"
                        else weights / snr
                    )
                    loss = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=[1, 2, 3])
                    loss = (loss * weights).mean()
                accumulated += accelerator.gather(loss.detach().repeat(latents.shape[0])).mean().item()
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(trainable, args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            if not accelerator.sync_gradients:
                continue
            if ema_unet is not None:
                ema_unet.step(unet.parameters())
            global_step += 1
            progress.update(1)
            step_loss = accumulated / args.gradient_accumulation_steps
            accumulated = 0.0
            losses.append({"step": global_step, "loss": step_loss, "lr": lr_scheduler.get_last_lr()[0]})
            accelerator.log({"train_loss": step_loss, "lr": lr_scheduler.get_last_lr()[0]}, step=global_step)
            progress.set_postfix(loss=f"{step_loss:.4f}")
            if global_step % args.checkpointing_steps == 0:
                save_checkpoint(accelerator, output_dir, global_step, args.checkpoints_total_limit)
            if args.validation_prompts and args.validation_steps and global_step % args.validation_steps == 0:
                if accelerator.is_main_process:
                    log_validation(
                        inference_pipeline(pipe, accelerator, unet, text_encoder), args, accelerator, global_step
                    )
            if global_step >= max_train_steps:
                break
        if global_step >= max_train_steps:
            break
    progress.close()

    # ===== Save and publish ===================================================================
    accelerator.wait_for_everyone()
    published = None
    if accelerator.is_main_process:
        final = output_dir / "final"
        shutil.rmtree(final, ignore_errors=True)
        final.mkdir(parents=True)
        unet_final = accelerator.unwrap_model(unet)
        if ema_unet is not None and not args.use_lora:
            ema_unet.copy_to(unet_final.parameters())
        save_trained(final, pipe, unet_final, accelerator.unwrap_model(text_encoder), args, text_lora)
        validation = []
        if args.validation_prompts:
            validation = log_validation(
                inference_pipeline(pipe, accelerator, unet, text_encoder), args, accelerator, global_step
            )
            shutil.copytree(output_dir / "validation" / f"step-{global_step}", final / "validation")
        save_model_card(final, stage_run, args, base, languages, validation)
        (output_dir / "trainer_state.json").write_text(
            json.dumps(
                {
                    "global_step": global_step,
                    "max_train_steps": max_train_steps,
                    "log_history": losses,
                    "base_model": base,
                    "inputs": stage_run.inputs,
                },
                indent=1,
            )
        )
        published = stage_run.publish(final, f"{'LoRA' if args.use_lora else 'Full'} fine-tune, {global_step} steps")
        if args.push_to_hub:
            HubStore().push(final, args.hub_model_id, "model", f"Fine-tune, {global_step} steps")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if published is None:
        revision = stage_run.store.revision_of(stage_run.output_repo_id, "model")
        published = Published(stage_run.output_repo_id, revision, "model")
    return published


def batch_inputs(batch: Any, vae: Any, text_encoder: Any, args: TrainArguments, dtype: torch.dtype, device: Any):
    """Latents and text hidden states of a batch: from the cache, or encoded now."""
    if "latents" in batch:
        latents = batch["latents"].to(device)
        hidden = (
            batch["hidden"].to(device)
            if "hidden" in batch
            else encode_text(text_encoder, batch["input_ids"].to(device), batch["attention_mask"].to(device))
        )
        return latents * vae.config.scaling_factor, hidden
    with torch.no_grad():
        latents = vae.encode(batch["pixel_values"].to(device, dtype=dtype)).latent_dist.sample()
    latents = latents * vae.config.scaling_factor
    with torch.set_grad_enabled(args.train_text_encoder):
        hidden = encode_text(text_encoder, batch["input_ids"].to(device), batch["attention_mask"].to(device))
    return latents, hidden


class CachedLatents(torch.utils.data.Dataset):
    """VAE latents (one sample per image and orientation) and, with a frozen text encoder, hidden states."""

    def __init__(self, latents: list[torch.Tensor], flipped: list[torch.Tensor] | None, tokens: list[dict], hidden):
        self.latents, self.flipped, self.tokens, self.hidden = latents, flipped, tokens, hidden

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        use_flipped = self.flipped is not None and random.random() < 0.5
        item = {"latents": (self.flipped if use_flipped else self.latents)[index], **self.tokens[index]}
        if self.hidden is not None:
            item["hidden"] = self.hidden[index]
        return item


def cache_latents(train_data: Any, vae: Any, text_encoder: Any, args: TrainArguments, accelerator: Any, dtype):
    latents, flipped, tokens, hidden = (
        [],
        [] if args.random_flip else None,
        [],
        [] if not args.train_text_encoder else None,
    )
    device = accelerator.device
    for start in tqdm(
        range(0, len(train_data), args.train_batch_size),
        desc="caching latents",
        disable=not accelerator.is_local_main_process,
        file=sys.stderr,
    ):
        rows = train_data[start : start + args.train_batch_size]
        pixels = torch.stack(rows["pixel_values"]).to(device, dtype=dtype)
        with torch.no_grad():
            latents += list(vae.encode(pixels).latent_dist.sample().float().cpu())
            if flipped is not None:
                flipped += list(vae.encode(torch.flip(pixels, dims=[3])).latent_dist.sample().float().cpu())
            ids, mask = torch.stack(rows["input_ids"]), torch.stack(rows["attention_mask"])
            tokens += [{"input_ids": i, "attention_mask": m} for i, m in zip(ids, mask)]
            if hidden is not None:
                hidden += list(encode_text(text_encoder, ids.to(device), mask.to(device)).float().cpu())
    return CachedLatents(latents, flipped, tokens, hidden)


def save_checkpoint(accelerator: Any, output_dir: Path, step: int, limit: int | None) -> None:
    """`save_state` into checkpoint-<step>, first pruning the oldest beyond the limit (main process only)."""
    if accelerator.is_main_process and limit is not None:
        existing = checkpoints(output_dir)
        for old in existing[: max(0, len(existing) - limit + 1)]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(output_dir / f"checkpoint-{step}"))


def inference_pipeline(pipe: Any, accelerator: Any, unet: Any, text_encoder: Any) -> Any:
    """The base pipeline with the weights being trained, for validation images."""
    pipe.unet = accelerator.unwrap_model(unet)
    pipe.text_encoder = accelerator.unwrap_model(text_encoder)
    pipe.to(accelerator.device)
    return pipe


def save_trained(
    folder: Path, pipe: Any, unet: Any, text_encoder: Any, args: TrainArguments, text_lora: dict | None = None
) -> None:
    if args.use_lora:
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        unet_layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet.float()))
        type(pipe).save_lora_weights(folder, unet_lora_layers=unet_layers, weight_name=LORA_WEIGHTS)
        if text_lora is not None:
            save_text_encoder_lora(text_encoder, text_lora, folder)
        return
    pipe.unet, pipe.text_encoder = unet.float(), text_encoder.float()
    pipe.vae.float()
    pipe.save_pretrained(folder)


Arguments = TrainArguments  # the name the study runner looks for

if __name__ == "__main__":
    main()
