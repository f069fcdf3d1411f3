"""The models every fine-tune trains, and what it saves: accelerate, CPU threads, the pipeline's parts
(frozen ones in the compute dtype, LoRA adapters and an EMA as asked), validation images, and the
trained model in diffusers' format (a full pipeline, or LoRA weights whose base is named by repo id).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pipelines.artifacts.inputs import ModelInput, published_name
from pipelines.errors import ConfigError
from pipelines.harness.stage import StageRun, cpu_share, usable_cpus, warn_if_oversubscribed
from pipelines.modeling.diffusion import (
    LORA_WEIGHTS,
    add_text_encoder_lora,
    assemble_pipeline,
    save_pipeline,
    save_text_encoder_lora,
    warn_if_bfloat16_is_emulated,
)
from training.checkpoints import resumed_threads

if TYPE_CHECKING:
    from training.finetune import FineTuneArguments

# LoRA targets: the UNet's attention projections.
UNET_LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]


def encode_text(text_encoder: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Hidden states the UNet attends to, for both families (RoBERTa-series uses its attention mask).
    The config is read through any wrapper: a text encoder trained in several processes is wrapped in
    DistributedDataParallel, which has no `config`."""
    from accelerate.utils import extract_model_from_parallel

    if getattr(extract_model_from_parallel(text_encoder).config, "use_attention_mask", False):
        return text_encoder(input_ids, attention_mask=attention_mask)[0]
    return text_encoder(input_ids)[0]


def encode_each_caption_once(text_encoder: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """`encode_text` of a batch, each distinct caption encoded once and copied to its rows: the same
    states, and through the copy the same summed gradients, to rounding. A batch repeats captions
    (a dataset of a few hundred prompts, the empty prompt of --proportion_empty_prompts), so this is
    a share of the encoder's work saved; an encoder that draws dropout masks encodes every row, as
    each row's mask is its own draw."""
    if draws_dropout(text_encoder):
        return encode_text(text_encoder, input_ids, attention_mask)
    rows = torch.cat([input_ids, attention_mask.to(input_ids.dtype)], dim=1)
    distinct, copies = torch.unique(rows, dim=0, return_inverse=True)
    if len(distinct) == len(rows):
        return encode_text(text_encoder, input_ids, attention_mask)
    width = input_ids.shape[1]
    encoded = encode_text(text_encoder, distinct[:, :width], distinct[:, width:].to(attention_mask.dtype))
    # index_select, not encoded[copies]: the latter's backward adds the copies' gradients in whatever
    # order the threads reach them, so two runs of one training would differ in the last bits.
    return torch.index_select(encoded, 0, copies)


def draws_dropout(model: Any) -> bool:
    """Whether a forward pass of `model` draws random masks: in training mode, with a dropout module or
    a configured dropout rate above 0 (transformers applies attention dropout as a function)."""
    from accelerate.utils import extract_model_from_parallel

    if not model.training:
        return False
    settings = getattr(getattr(extract_model_from_parallel(model), "config", None), "__dict__", {})
    rates = [value for key, value in settings.items() if "dropout" in key and isinstance(value, (int, float))]
    rates += [module.p for module in model.modules() if isinstance(module, torch.nn.modules.dropout._DropoutNd)]
    return any(rate > 0 for rate in rates)


def make_accelerator(args: FineTuneArguments, output_dir: Path) -> Any:
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

    if args.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("mixed_precision='fp16' needs a GPU: use 'no' or 'bf16' on CPU")
    if args.mixed_precision == "bf16" and not torch.cuda.is_available() and os.environ.get("LOCAL_RANK", "0") == "0":
        warn_if_bfloat16_is_emulated(torch.bfloat16, "cpu", "mixed_precision=bf16")  # once a machine, not a process
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        cpu=not torch.cuda.is_available(),
        # In several processes each trained model is wrapped in DistributedDataParallel, which stops at
        # the second step where a trainable parameter got no gradient: a trained text encoder's pooler
        # (RoBERTa-series') gets none, as the UNet reads the hidden states only.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=args.train_text_encoder)],
    )
    if args.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    return accelerator


def prepare_models(accelerator: Any, *models: torch.nn.Module) -> list[Any]:
    """`accelerator.prepare` for each model, one with nothing to train in evaluation mode: in several
    processes a trained model is wrapped in DistributedDataParallel, which refuses a model without a
    trainable parameter (the UNet when only the text encoder trains: `align_distribution --train_unet
    false`); evaluation mode keeps the rest (the device, the mixed-precision forward). One process
    trains to the same bits either way. `train_text_to_image` always trains the UNet, so there it is
    `prepare`."""
    return [
        accelerator.prepare_model(model, evaluation_mode=not any(p.requires_grad for p in model.parameters()))
        for model in models
    ]


def end_training(accelerator: Any) -> None:
    """The trackers closed, the process group kept: accelerate's `end_training` destroys the group, and
    the stage harness still needs it (every process learns what the main one published) and closes it
    at exit."""
    for tracker in accelerator.trackers:
        tracker.finish()


def make_adamw(parameters: list[torch.nn.Parameter], learning_rate: float, args: FineTuneArguments) -> Any:
    """AdamW with the run's settings, updating every tensor in one kernel (`foreach`). PyTorch picks
    that by itself on a GPU only; on a CPU the per-tensor loop took 1.7 times as long (about 11 ms
    against 6.5 ms a step of the world model) and gives the same weights to the bit (a test checks)."""
    betas = (args.adam_beta1, args.adam_beta2)
    return torch.optim.AdamW(parameters, lr=learning_rate, betas=betas, weight_decay=args.adam_weight_decay,
                             eps=args.adam_epsilon, foreach=True)  # fmt: skip


def set_cpu_threads(args: FineTuneArguments, accelerator: Any, output_dir: Path) -> int | None:
    """On CPU, torch's intra-op threads: `--cpu_threads`; on a resume, the count the checkpoint was
    trained with (float sums, and so the bytes, depend on it); otherwise this process's share of the
    CPUs it may use (affinity, cgroup quota) that other work leaves free when it starts. torch's
    default (every core of the host) oversubscribes a container or a busy machine: a step waits on
    threads that have no CPU to run on (issue #30: tens of times slower)."""
    if accelerator.device.type != "cpu":
        return None
    threads, why = args.cpu_threads, "--cpu_threads"
    if threads is None and args.resume_from_checkpoint:
        threads, why = resumed_threads(output_dir, args.resume_from_checkpoint), "as the checkpoint resumed"
    if threads is None:
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
        threads, others = cpu_share(local_processes)
        usable = usable_cpus()
        why = f"{usable} usable CPU(s), {others:.1f} busy with other work, {local_processes} process(es)"
        idle = max(1, usable // local_processes)
        if threads < idle and accelerator.is_local_main_process:
            # The same run started on an idle machine trains on `idle` threads: other weights (the
            # float sums' order), and faster. Said aloud: a study run beside other work publishes other
            # bytes than the same study run alone.
            print(
                f"warning: other work keeps {others:.1f} CPU(s) busy, so training takes {threads} thread(s) per "
                f"process instead of {idle}: other weights to the bit than on an idle machine, and slower; "
                f"--cpu_threads {idle} gives the idle machine's weights",
                file=sys.stderr,
            )
    if accelerator.is_local_main_process:  # the threads of every process on this machine together
        warn_if_oversubscribed(threads * int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes)), why)
    torch.set_num_threads(threads)
    accelerator.print(f"{threads} CPU thread(s) per process ({why})")
    return threads


@dataclass
class Parts:
    """The pipeline's parts as training uses them."""

    pipe: Any
    tokenizer: Any
    text_encoder: Any
    vae: Any
    unet: Any
    noise_scheduler: Any
    weight_dtype: torch.dtype
    ema_unet: Any = None
    text_lora: dict | None = None
    timestep_weights: torch.Tensor | None = None  # None: every training timestep equally often

    def tokenize(self, captions: list[str]) -> Any:
        return self.tokenizer(
            captions,
            max_length=self.tokenizer.model_max_length,
            padding="max_length",
            truncation=True,
            return_tensors="pt",
        )


def load_models(base: Path, args: FineTuneArguments, accelerator: Any, prediction_type: str | None = None) -> Parts:
    """The base pipeline's parts: frozen ones in the compute dtype, adapters and EMA added as asked;
    with `prediction_type`, a scheduler that predicts it (the UNet is trained to)."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from diffusers.training_utils import EMAModel

    pipe = assemble_pipeline(base, torch.float32)
    if prediction_type is not None and prediction_type != pipe.scheduler.config.get("prediction_type"):
        # Train and sample with the same objective: the saved scheduler predicts what the UNet learnt.
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, prediction_type=prediction_type)
    text_encoder, vae, unet = pipe.text_encoder, pipe.vae, pipe.unet
    vae.requires_grad_(False)
    text_encoder.requires_grad_(args.train_text_encoder and not args.use_lora)
    unet.requires_grad_(args.train_unet and not args.use_lora)
    if args.use_lora:
        from peft import LoraConfig

        unet.add_adapter(
            LoraConfig(
                r=args.rank, lora_alpha=args.rank, init_lora_weights="gaussian", target_modules=UNET_LORA_TARGETS
            )
        )
        # A text-encoder-only LoRA keeps a UNet adapter at its initial value (the identity: peft starts
        # lora_B at zero), frozen: the published adapter then loads like any other.
        if not args.train_unet:
            unet.requires_grad_(False)
    text_lora = add_text_encoder_lora(text_encoder, args.rank) if args.use_lora and args.train_text_encoder else None
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
    return Parts(
        pipe=pipe,
        tokenizer=pipe.tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        unet=unet,
        noise_scheduler=DDPMScheduler.from_config(pipe.scheduler.config),
        weight_dtype=weight_dtype,
        ema_unet=ema_unet,
        text_lora=text_lora,
    )


def inference_pipeline(parts: Parts, accelerator: Any) -> Any:
    """The base pipeline with the weights being trained, for validation images."""
    pipe = parts.pipe
    pipe.unet = accelerator.unwrap_model(parts.unet)
    pipe.text_encoder = accelerator.unwrap_model(parts.text_encoder)
    pipe.to(accelerator.device)
    return pipe


MODEL_FILES = ("model_index.json", "unet", "vae", "text_encoder", "tokenizer", "scheduler", LORA_WEIGHTS,
               "text_encoder_lora.safetensors", "text_encoder_lora_config.json", "README.md")  # fmt: skip


def clear_model_files(output_dir: Path) -> None:
    """Removes an earlier run's model from the output folder (a rerun with --force), never its checkpoints."""
    for name in MODEL_FILES:
        path = output_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def clear_stale_validation(output_dir: Path, step: int) -> None:
    """Removes validation images that this run did not make: a reused output folder's from an earlier
    run (everything when training starts afresh, later steps and `final` after a resume), so they are
    never published as this model's."""
    for folder in (output_dir / "validation").glob("*"):
        made_here = folder.name.startswith("step-") and folder.name[5:].isdigit() and 0 < int(folder.name[5:]) <= step
        if not made_here:
            shutil.rmtree(folder) if folder.is_dir() else folder.unlink()


def save_lora(folder: Path, pipeline_class: Any, unet: Any, text_encoder: Any, text_lora: dict | None) -> None:
    """The LoRA adapters as the published model holds them (the UNet's in diffusers' format, the text
    encoder's with its peft config), in float32; the models being trained are left as they are."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    state = {k: v.detach().float().contiguous() for k, v in get_peft_model_state_dict(unet).items()}
    pipeline_class.save_lora_weights(
        folder, unet_lora_layers=convert_state_dict_to_diffusers(state), weight_name=LORA_WEIGHTS
    )
    if text_lora is not None:
        save_text_encoder_lora(text_encoder, text_lora, folder)


def save_trained(
    folder: Path,
    pipe: Any,
    unet: Any,
    text_encoder: Any,
    args: FineTuneArguments,
    text_lora: dict | None,
    source: Path,
) -> None:
    if args.use_lora:
        save_lora(folder, type(pipe), unet, text_encoder, text_lora)
        return
    pipe.unet, pipe.text_encoder = unet.float(), text_encoder.float()
    pipe.vae.float()
    save_pipeline(pipe, folder, source=source)


def publish_lora_base(run: StageRun, base: ModelInput) -> ModelInput:
    """A LoRA opens through its base, and a local folder's path means nothing on another machine: the
    folder is published into the store beside the LoRA, as `<namespace>/<folder name>` (content-
    addressed: the same folder is the same revision), and the card names it by that repo id."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(base.given.rstrip("/")).name).strip("-.") or "base-model"
    repo_id = run.args.repo_id(name)
    revision = run.store.push(base.path, repo_id, "model", f"The base model of {run.output_repo_id} (a local folder)")
    print(f"[{run.stage}] published the LoRA's base, a local folder, as model {repo_id}@{revision}", file=sys.stderr)
    return dataclasses.replace(base, kind="store", repo_id=repo_id, revision=revision)


def check_lora_base(args: FineTuneArguments, base: ModelInput) -> None:
    """Before training: a LoRA of a local folder publishes that folder into a local store; to the Hub it
    would upload a whole model nobody asked to publish, so there it is refused."""
    if args.use_lora and published_name(base) is None and (args.store == "hub" or args.push_to_hub):
        raise ConfigError(
            f"pretrained_model_name_or_path={base.given!r}: a LoRA published to the Hub needs a base on the Hub "
            "(give its repo id), not a local folder"
        )


def log_validation(pipe: Any, args: FineTuneArguments, accelerator: Any, step: int) -> list[str]:
    """Generates one image per validation prompt (fixed seeds); saves them and logs them to trackers."""
    pipe.set_progress_bar_config(disable=True)
    folder = Path(args.output_dir) / "validation" / f"step-{step}"
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    accelerator.print(f"validation at step {step}: {len(args.validation_prompts)} prompt(s) -> {folder}")
    for index, prompt in enumerate(args.validation_prompts):
        generator = torch.Generator(device="cpu").manual_seed(args.seed + index)
        with torch.inference_mode():
            image = pipe(prompt, num_inference_steps=args.validation_steps_per_image, generator=generator).images[0]
        name = f"{index:02d}.png"
        image.save(folder / name)
        lines.append(f"![{prompt}](validation/{name})")
        for tracker in accelerator.trackers:
            if tracker.name == "tensorboard":
                tracker.writer.add_images(f"validation/{index}", np.asarray(image)[None], step, dataformats="NHWC")
            elif tracker.name == "wandb":
                import wandb

                tracker.log({f"validation/{index}": wandb.Image(image, caption=prompt)}, step=step)
    return lines


def card_fields(run: StageRun, args: FineTuneArguments, base: ModelInput, folder: Path) -> dict[str, Any]:
    """What every fine-tune's card says the same way: its lineage, its base by repo id (never a path of
    this machine; a folder that is no repo stays unnamed, and a LoRA's base never is one:
    `publish_lora_base` published it), the base's license (AltDiffusion-m9: creativeml-openrail-m),
    and stock diffusers code that opens it."""
    from pipelines.artifacts.store import card_metadata
    from pipelines.modeling.diffusion import usage_snippet

    base_name = published_name(base)
    return {
        "lineage": run.lineage,
        "base_model": base_name,
        "base_model_revision": base.revision if base_name else None,
        "license": (card_metadata(base.path) if base.path else {}).get("license"),
        "usage": usage_snippet(
            run.output_repo_id,
            base.path if args.use_lora else folder,
            lora_base=base_name if args.use_lora else None,
            base_in_store=base.kind == "store",
            text_encoder_lora=args.use_lora and args.train_text_encoder,
        ),
    }
