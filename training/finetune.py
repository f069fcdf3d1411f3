"""What every fine-tune of the toolkit shares: its arguments and its stage.

A fine-tune (`train_text_to_image`: captions; `align_distribution`: a classifier's label distribution)
reads a base model, trains the UNet and/or the text encoder, fully or with LoRA, in accelerate
processes, checkpoints and resumes (`training/checkpoints.py`), and publishes a model repo with a card
(`training/models.py` saves it). Each script's own arguments extend `FineTuneArguments`, and its
stage extends `FineTuneStage`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.artifacts.inputs import hub_pipeline_files
from pipelines.artifacts.store import HubStore
from pipelines.errors import ConfigError
from pipelines.harness.config import StageArguments, input_field
from pipelines.harness.stage import DistributedStage, StageRun

LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")
MIXED_PRECISION = ("no", "fp16", "bf16")


@dataclass
class FineTuneArguments(StageArguments):
    INPUTS = {"pretrained_model_name_or_path": "model"}
    pretrained_model_name_or_path: str = input_field(
        "Base model: a store repo, a Hub id (BAAI/AltDiffusion-m9[@rev]) or a folder.", default="tiny-altdiffusion"
    )
    output_repo: str = field(default="finetuned", metadata={"help": "Model repo to publish to."})
    output_dir: str | None = field(
        default=None,
        metadata={
            "help": "The model, checkpoints, logs and validation images (default <store_root>/.work/<stage>/<hash>)."
        },
    )
    train_batch_size: int = field(default=16, metadata={"help": "Batch size per device."})
    max_train_steps: int | None = field(default=None, metadata={"help": "Total optimisation steps."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Steps to accumulate per update."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Trade compute for memory."})
    learning_rate: float = field(default=5e-6, metadata={"help": "Initial learning rate."})
    scale_lr: bool = field(default=False, metadata={"help": "Scale the LR by GPUs, accumulation and batch size."})
    lr_scheduler: str = field(default="polynomial", metadata={"help": f"One of {LR_SCHEDULERS}."})
    lr_warmup_steps: int = field(default=0, metadata={"help": "Warm-up steps."})
    use_ema: bool = field(default=False, metadata={"help": "Keep an EMA of the UNet and save it."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm."})
    adam_beta1: float = field(default=0.9, metadata={"help": "Adam beta1."})
    adam_beta2: float = field(default=0.999, metadata={"help": "Adam beta2."})
    adam_weight_decay: float = field(default=1e-2, metadata={"help": "Adam weight decay."})
    adam_epsilon: float = field(default=1e-8, metadata={"help": "Adam epsilon."})
    mixed_precision: str | None = field(
        default=None, metadata={"help": f"One of {MIXED_PRECISION}; default: the accelerate config's."}
    )
    allow_tf32: bool = field(default=False, metadata={"help": "Allow TF32 matmuls on Ampere+ GPUs."})
    seed: int = field(default=0, metadata={"help": "Seed of everything random."})
    train_text_encoder: bool = field(default=False, metadata={"help": "Train the text encoder too."})
    train_unet: bool = field(
        default=True, metadata={"help": "Train the UNet (false with --train_text_encoder: the text encoder alone)."}
    )
    use_lora: bool = field(
        default=False,
        metadata={
            "help": "Train peft LoRA adapters instead of all weights: the UNet's, and with "
            "--train_text_encoder the text encoder's too."
        },
    )
    rank: int = field(default=4, metadata={"help": "LoRA rank."})
    checkpointing_steps: int = field(default=500, metadata={"help": "Save a resumable state every N steps."})
    checkpoints_total_limit: int | None = field(default=None, metadata={"help": "Keep at most N checkpoints."})
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "A checkpoint folder or 'latest'."})
    validation_prompts: list[str] = field(default_factory=list, metadata={"help": "Prompts (any language)."})
    validation_steps: int | None = field(default=None, metadata={"help": "Validate every N steps (and at the end)."})
    validation_steps_per_image: int = field(default=25, metadata={"help": "Denoising steps of validation images."})
    report_to: str = field(default="none", metadata={"help": "none, tensorboard or wandb."})
    cpu_threads: int | None = field(
        default=None,
        metadata={"help": "Intra-op threads per process on CPU (default: on a resume, the checkpoint's; else the "
                  "CPUs this process may use, by affinity and cgroup quota, that other work leaves free at the "
                  "start, shared among the processes on this machine). Fix it for byte-identical reruns."},
    )  # fmt: skip
    push_to_hub: bool = field(default=False, metadata={"help": "Also push the model to the Hugging Face Hub."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Hub repo for --push_to_hub (token: HF_TOKEN)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_choice("lr_scheduler", LR_SCHEDULERS)
        self.check_choice("report_to", ("none", "tensorboard", "wandb"))
        if self.mixed_precision is not None:
            self.check_choice("mixed_precision", MIXED_PRECISION)
        if not (self.train_unet or self.train_text_encoder):
            raise ConfigError("train_unet=false without train_text_encoder: nothing to train")
        if self.resume_from_checkpoint not in (None, "latest") and not Path(self.resume_from_checkpoint).is_dir():
            raise ConfigError(f"resume_from_checkpoint={self.resume_from_checkpoint!r}: not a folder nor 'latest'")
        if self.use_ema and self.use_lora:
            raise ConfigError("use_ema with use_lora: an EMA of frozen weights is the weights; drop one")
        if self.use_ema and not self.train_unet:
            raise ConfigError("use_ema with train_unet=false: the EMA is the UNet's, which is not trained")
        if self.push_to_hub and not self.hub_model_id:
            raise ConfigError("push_to_hub needs hub_model_id")
        self.check_at_least(
            1,
            "train_batch_size",
            "gradient_accumulation_steps",
            "checkpointing_steps",
            "rank",
            "max_train_steps",
            "checkpoints_total_limit",
            "validation_steps",
            "validation_steps_per_image",
            "cpu_threads",
        )
        self.check_at_least(0, "lr_warmup_steps")
        self.check_at_most(4_096, "train_batch_size", why="images per step on each process")
        self.check_at_most(1_024, "rank", why="LoRA rank; the UNet's widest layer has 1,280 channels")
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate={self.learning_rate}: must be above 0")


# Fields that choose where things go or are kept, not what is trained.
NOT_FINGERPRINTED = (
    "output_dir",
    "resume_from_checkpoint",
    "report_to",
    "push_to_hub",
    "hub_model_id",
    "dataloader_num_workers",
    "checkpointing_steps",
    "checkpoints_total_limit",
    "dataset_revision",
    "cpu_threads",  # changes float sums in the last bits, not what is trained; recorded in trainer_state.json
)


class FineTuneStage(DistributedStage):
    """A fine-tune as a stage: one model repo, trained in accelerate's processes, in `--output_dir`."""

    Arguments = FineTuneArguments
    repo_type = "model"
    not_parameters = NOT_FINGERPRINTED
    # The published model: weights, card, validation images and the loss history; not the resume state,
    # whole or still being written aside.
    ignore = ("checkpoint-*", ".checkpoint-*", "logs", ".cache")

    def model_options(self, name: str, args: Any = None) -> dict[str, Any]:
        from pipelines.modeling.diffusion import pipeline_problem

        return {
            "what": name,
            "kinds": ("store", "hub", "folder"),
            "hub_files": hub_pipeline_files,
            "check": pipeline_problem,
        }

    def work_folder(self, run: StageRun) -> Path:
        folder = Path(run.args.output_dir) if run.args.output_dir else run.work_folder()
        run.args.output_dir = str(folder)
        return folder

    def sends_elsewhere(self, run: StageRun) -> bool:
        return bool(run.args.push_to_hub)

    def after_publish(self, run: StageRun, output: Path, message: str) -> None:
        if run.args.push_to_hub:
            HubStore().push(output, run.args.hub_model_id, "model", message, ignore=self.ignore)
