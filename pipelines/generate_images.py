"""Stage 3: images for every prompt, deterministic, resumable, split over processes.

    python -m pipelines.generate_images --input prompts --model tiny-altdiffusion --languages en de
    torchrun --nproc_per_node 2 -m pipelines.generate_images ...      # or accelerate launch

- The seed of every image is a function of (seed, prompt_id, sample index): an image is the same
  whichever batch or process made it, and languages are paired seed for seed.
- Work is cut into shards of `images_per_shard` images, in a fixed order. A shard is generated in
  fixed batches (`batch_size` images per pipeline call) and written as one parquet file, atomically,
  into a work folder named by the run's fingerprint. A rerun after an interruption skips the shards
  that exist. Shard `i` belongs to process `i % num_processes`, so the same shards, made by the same
  batches, come out whatever the number of processes.
- When every shard is there, the main process writes the card and publishes the images dataset:
  one config per language and prompt variant (`<language>_<variant>`).
"""

from __future__ import annotations

import hashlib
import io
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
from tqdm.auto import tqdm

from pipelines.artifacts.cards import dataset_card
from pipelines.artifacts.dataset_files import DatasetWriter, artifact_configs, config_entry, load_config
from pipelines.errors import ConfigError
from pipelines.harness.config import StageArguments, input_field
from pipelines.harness.stage import Published, StageRun, stage_main
from pipelines.modeling.diffusion import DTYPES, SCHEDULERS, load_pipeline
from pipelines.prompting.attributes import VARIANTS
from pipelines.prompting.grid import GRID_COLUMNS

STAGE = "generate_images"
IMAGE_FEATURES = datasets.Features(
    {
        "image": datasets.Image(),
        "prompt_id": datasets.Value("string"),
        "prompt": datasets.Value("string"),
        "language": datasets.Value("string"),
        "variant": datasets.Value("string"),
        "sample_index": datasets.Value("int32"),
        "seed": datasets.Value("int64"),
        "model": datasets.Value("string"),
        "model_revision": datasets.Value("string"),
        "scheduler": datasets.Value("string"),
        "num_inference_steps": datasets.Value("int32"),
        "guidance_scale": datasets.Value("float32"),
        "height": datasets.Value("int32"),
        "width": datasets.Value("int32"),
        "rejected": datasets.Value("int32"),
        "face_check": datasets.Value("string"),
        **{column: datasets.Value("string") for column in GRID_COLUMNS},
    }
)


@dataclass
class Arguments(StageArguments):
    INPUTS = {"input": "dataset", "model": "model"}
    input: str = input_field("Prompts dataset (ns/name@rev).", default="prompts")
    model: str = input_field(
        "Text-to-image model: a store repo, a Hub id (BAAI/AltDiffusion-m9) or a folder.", default="tiny-altdiffusion"
    )
    output_repo: str = field(default="images", metadata={"help": "Images dataset repo to publish."})
    languages: list[str] = field(default_factory=lambda: ["en"], metadata={"help": "Prompt languages (configs)."})
    variants: list[str] = field(
        default_factory=lambda: ["eval_direct"], metadata={"help": f"Prompt variants, any of {VARIANTS}."}
    )
    professions: list[str] = field(default_factory=list, metadata={"help": "Only these professions (all if empty)."})
    max_prompts: int | None = field(
        default=None, metadata={"help": "At most this many prompts per language and variant, in dataset order."}
    )
    num_images: int = field(default=1, metadata={"help": "Images per prompt (the reference evaluation: 25)."})
    seed: int = field(default=0, metadata={"help": "Base seed; each image's seed derives from it, prompt_id, index."})
    batch_size: int = field(default=8, metadata={"help": "Images per pipeline call."})
    images_per_shard: int = field(default=64, metadata={"help": "Images per parquet shard (the unit of resuming)."})
    num_inference_steps: int = field(default=25, metadata={"help": "Denoising steps."})
    guidance_scale: float = field(default=7.5, metadata={"help": "Classifier-free guidance scale."})
    height: int | None = field(default=None, metadata={"help": "Image height (default: the model's)."})
    width: int | None = field(default=None, metadata={"help": "Image width (default: the model's)."})
    scheduler: str = field(default="dpm++", metadata={"help": f"Scheduler, one of {tuple(SCHEDULERS)}."})
    dtype: str = field(default="auto", metadata={"help": f"One of {tuple(DTYPES)}; auto: fp16 on GPU, fp32 on CPU."})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N (auto: accelerate's device)."})
    cpu_threads: int = field(
        default=1,
        metadata={
            "help": "Intra-op threads per process on CPU. Float sums depend on it, so images are bit-identical "
            "only for the same value: keep it fixed and scale out with processes (torchrun)."
        },
    )
    face_filter: str | None = field(
        default=None,
        metadata={
            "help": "The reference evaluation's filter: with a detector (mtcnn, haar, dlib), an image with other "
            "than exactly one face is made again from the next seed, up to max_attempts."
        },
    )
    max_attempts: int = field(default=10, metadata={"help": "Face filter: tries per image before keeping the last."})
    work_dir: str | None = field(
        default=None, metadata={"help": "Where unfinished shards wait (default <store_root>/.work)."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown or not self.variants:
            raise ConfigError(f"variants: unknown {', '.join(map(repr, unknown))}; allowed {', '.join(VARIANTS)}")
        if self.face_filter is not None and self.face_filter not in ("mtcnn", "haar", "dlib"):
            raise ConfigError(f"face_filter={self.face_filter!r}: allowed mtcnn, haar, dlib")
        for name in (
            "num_images",
            "batch_size",
            "images_per_shard",
            "num_inference_steps",
            "cpu_threads",
            "max_attempts",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)}: must be at least 1")
        if self.max_prompts is not None and self.max_prompts < 1:
            raise ConfigError(f"max_prompts={self.max_prompts}: must be at least 1")
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"scheduler={self.scheduler!r}: allowed {', '.join(SCHEDULERS)}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype={self.dtype!r}: allowed {', '.join(DTYPES)}")
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and (value < 8 or value % 8):
                raise ConfigError(f"{name}={value}: a multiple of 8")


def image_seed(seed: int, prompt_id: str, sample_index: int, attempt: int = 0) -> int:
    """The seed of one image (and of its retries): the same in every batch, process and language.

    Example:
        >>> image_seed(0, "eval_direct-0123", 0) == image_seed(0, "eval_direct-0123", 0)
        True
        >>> image_seed(0, "eval_direct-0123", 0) != image_seed(0, "eval_direct-0123", 1)
        True
    """
    key = f"{seed}:{prompt_id}:{sample_index}" + (f":{attempt}" if attempt else "")
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def select_rows(rows: list[dict[str, Any]], args: Arguments, variant: str) -> list[dict[str, Any]]:
    chosen = [row for row in rows if row["variant"] == variant]
    if args.professions:
        chosen = [row for row in chosen if row["profession"] in args.professions]
    return chosen[: args.max_prompts] if args.max_prompts else chosen


def work_items(prompts_folder: Path, args: Arguments) -> dict[str, list[tuple[dict[str, Any], int]]]:
    """Per output config, the (prompt row, sample index) pairs to make, in their fixed order."""
    available = artifact_configs(prompts_folder)
    missing = [language for language in args.languages if language not in available]
    if missing:
        raise ConfigError(f"languages: {', '.join(missing)} not in the prompts dataset (has {', '.join(available)})")
    items = {}
    for language in args.languages:
        rows = load_config(prompts_folder, language).to_list()
        known = {row["profession"] for row in rows}
        unknown = [p for p in args.professions if p not in known]
        if unknown:
            raise ConfigError(f"professions: {', '.join(map(repr, unknown))} not in the prompts dataset")
        for variant in args.variants:
            chosen = select_rows(rows, args, variant)
            items[f"{language}_{variant}"] = [(row, index) for row in chosen for index in range(args.num_images)]
    return items


def generate_batch(pipe: Any, batch: list[tuple[dict[str, Any], int, int]], args: Arguments) -> list[tuple[Any, int]]:
    """One pipeline call for a batch of (row, sample index, attempt); returns (image, seed) pairs."""
    import torch

    seeds = [image_seed(args.seed, row["prompt_id"], index, attempt) for row, index, attempt in batch]
    generators = [torch.Generator(device="cpu").manual_seed(seed) for seed in seeds]
    with torch.inference_mode():
        images = pipe(
            [row["prompt"] for row, _, _ in batch],
            num_inference_steps=args.num_inference_steps,
            guidance_scale=args.guidance_scale,
            height=args.height,
            width=args.width,
            generator=generators,
            output_type="pil",
        ).images
    return list(zip(images, seeds))


def generate_shard(pipe: Any, items: list[tuple[dict, int]], args: Arguments, info: dict, detector: Any) -> list[dict]:
    """The rows of one shard, in item order. With a face filter, an image with other than one face is
    made again from its next seed; retries join later batches of the same shard, so a shard's result
    depends on nothing outside it."""
    import numpy as np

    pending = [(position, row, index, 0) for position, (row, index) in enumerate(items)]
    done: dict[int, dict] = {}
    while pending:
        batch, pending = pending[: args.batch_size], pending[args.batch_size :]
        made = generate_batch(pipe, [(row, index, attempt) for _, row, index, attempt in batch], args)
        faces = detector.detect([np.asarray(image) for image, _ in made]) if detector else [None] * len(made)
        for (position, row, index, attempt), (image, seed), found in zip(batch, made, faces):
            if found is not None and len(found) != 1 and attempt + 1 < args.max_attempts:
                pending.append((position, row, index, attempt + 1))
                continue
            check = "off" if found is None else "one_face" if len(found) == 1 else "gave_up"
            done[position] = image_row(row, index, image, seed, attempt, check, args, pipe, info)
    return [done[position] for position in range(len(items))]


def image_row(
    row: dict, index: int, image: Any, seed: int, attempt: int, check: str, args: Arguments, pipe: Any, info: dict
) -> dict:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return {
        "image": {"bytes": buffer.getvalue(), "path": None},
        **{column: row[column] for column in ("prompt_id", "prompt", "language", "variant", *GRID_COLUMNS)},
        "sample_index": index,
        "seed": seed,
        "scheduler": type(pipe.scheduler).__name__,
        "num_inference_steps": args.num_inference_steps,
        "guidance_scale": args.guidance_scale,
        "height": image.height,
        "width": image.width,
        "rejected": attempt,
        "face_check": check,
        **info,
    }


def run(args: Arguments) -> Published:
    from accelerate import PartialState

    state = PartialState(cpu=args.device == "cpu" or not _cuda_available())
    stage_run = StageRun(STAGE, args)
    reused = stage_run.reuse()
    if reused is not None:
        return reused
    items = work_items(stage_run.input_folder("input"), args)
    work = Path(args.work_dir or Path(args.store_root) / ".work") / STAGE / stage_run.fingerprint
    writer = DatasetWriter(work, IMAGE_FEATURES)
    shards = [
        (config, index, config_items[start : start + args.images_per_shard])
        for config, config_items in items.items()
        for index, start in enumerate(range(0, len(config_items), args.images_per_shard))
    ]
    mine = [shard for number, shard in enumerate(shards) if number % state.num_processes == state.process_index]
    todo = [shard for shard in mine if not writer.shard_path(shard[0], shard[1]).is_file()]
    if todo:
        device = str(state.device) if args.device == "auto" else args.device
        if device == "cpu":
            import torch

            torch.set_num_threads(args.cpu_threads)
        pipe, info = load_pipeline(
            stage_run.inputs["model"], stage_run.store, scheduler=args.scheduler, device=device, dtype=args.dtype
        )
        progress = tqdm(
            total=sum(len(shard[2]) for shard in todo),
            desc=f"{STAGE} [{state.process_index + 1}/{state.num_processes}]",
            unit="img",
            disable=not state.is_local_main_process,
            file=sys.stderr,
        )
        detector = None
        if args.face_filter:
            from pipelines.perception.faces import load_detector

            detector = load_detector(args.face_filter, device)
        for config, index, shard_items in todo:
            writer.write_shard(config, index, generate_shard(pipe, shard_items, args, info, detector))
            progress.update(len(shard_items))
        progress.close()
    state.wait_for_everyone()
    if state.is_main_process:
        missing = [f"{c}/{i}" for c, i, _ in shards if not writer.shard_path(c, i).is_file()]
        if missing:
            raise RuntimeError(f"shards missing after generation: {', '.join(missing[:5])}")
        for leftover in work.rglob(".*.tmp"):
            leftover.unlink()  # a killed writer's partial file; its shard was redone
        _write_card(stage_run, work, items)
        published = stage_run.publish(work, f"{sum(len(v) for v in items.values())} images, {', '.join(items)}")
        shutil.rmtree(work, ignore_errors=True)
    state.wait_for_everyone()
    if not state.is_main_process:
        revision = stage_run.store.revision_of(stage_run.output_repo_id, "dataset")
        published = Published(stage_run.output_repo_id, revision, "dataset")
    return published


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _write_card(stage_run: StageRun, folder: Path, items: dict[str, list]) -> None:
    args: Arguments = stage_run.args
    configs = [config for config, config_items in items.items() if config_items]
    dataset_card(
        repo_id=stage_run.output_repo_id,
        title="Generated images",
        description=(
            f"Images from `{stage_run.inputs['model']}` for the prompts of `{stage_run.inputs['input']}`: "
            f"{args.num_images} per prompt, {args.num_inference_steps} steps of {args.scheduler}, guidance "
            f"{args.guidance_scale}. One config per language and prompt variant. The seed of each image is "
            "derived from the base seed, its `prompt_id` and its sample index, so languages are paired seed "
            "for seed and any image can be regenerated alone."
        ),
        lineage=stage_run.lineage,
        configs=[config_entry(config) for config in configs],
        languages=sorted(set(args.languages)),
        rows={config: len(items[config]) for config in configs},
        tags=["images", "generated"],
        task_categories=["text-to-image"],
    ).save(folder / "README.md")


def main(argv: list[str] | None = None) -> None:
    stage_main(Arguments, STAGE, run, argv)


if __name__ == "__main__":
    main()
