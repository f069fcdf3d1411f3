"""Stage 3: images for every prompt, deterministic, resumable, split over processes.

    python -m pipelines.generate_images --input prompts --model BAAI/AltDiffusion-m9 --languages en de
    torchrun --nproc_per_node 2 -m pipelines.generate_images ...      # or accelerate launch

- The seed of every image depends on its prompt and sample index only (`--seeds per_prompt`: a hash
  of the base seed, `prompt_id` and index; `--seeds index`: base seed + index for every prompt, as
  the reference evaluation), so languages are paired seed for seed.
- What holds exactly: the same images per pipeline call (`--batch_size`) and the same CPU threads
  per process (`--cpu_threads`) give identical bytes, whatever the number of processes or of worker
  threads in each (`--cpu_workers`), and a resumed run gives the bytes of an uninterrupted one.
  Another batch size may change a few pixels by 1/255, since batched float sums round differently.
- Work is cut into shards of `--images_per_shard` images (the unit of resuming) in a fixed order;
  shard `i` belongs to process `i % num_processes` (see `pipelines.harness.stage`). On a CPU a
  process makes its shards with a worker thread per CPU that other work leaves free (while the
  copies fit in half the free memory), each with its own copy of the pipeline on `--cpu_threads`
  threads, so one thread per image keeps every core busy without launching processes.
- `--face_filter` makes an image with other than exactly one face again from its next seed, up to
  `--max_attempts`; `rejected` counts the retries. Like MAGBIG's and the reference evaluation's
  filter, it checks every image; unlike theirs, which keeps the first N passing seeds of one running
  count per prompt (so a rejection shifts every later image to other seeds), image i tries its own
  seeds, so languages stay paired seed for seed. An image that never shows one face is kept and
  marked `gave_up` (classify excludes it from the metrics).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.artifacts import schemas
from pipelines.artifacts.cards import dataset_card
from pipelines.artifacts.inputs import hub_pipeline_files
from pipelines.artifacts.reader import model_caption_forms
from pipelines.errors import ConfigError, DataError
from pipelines.harness.config import StageArguments, input_field
from pipelines.harness.stage import Shard, ShardedStage, StageRun, cpu_workers_field, shard_seconds
from pipelines.modeling.diffusion import DTYPES, SCHEDULERS, load_pipeline
from pipelines.prompting.grammar import describe_neutral_forms, form_mismatch
from pipelines.prompting.grid import VARIANTS
from pipelines.prompting.interventions import APPLIES_TO, INTERVENTIONS, TWIN_VARIANTS, Instruction, instruction
from pipelines.prompting.selection import language_rows, variant_rows

SEED_SCHEMES = ("per_prompt", "index")
FACE_FILTERS = ("mtcnn", "haar", "dlib")


@dataclass
class Arguments(StageArguments):
    INPUTS = {"input": "prompts", "model": "model"}
    input: str = input_field("Prompts dataset (ns/name@rev).", default="prompts")
    model: str = input_field(
        "Text-to-image model: a store repo, a Hub id (BAAI/AltDiffusion-m9[@rev]) or a folder.",
        default="tiny-altdiffusion",
    )
    output_repo: str = field(default="images", metadata={"help": "Images dataset repo to publish."})
    languages: list[str] = field(default_factory=lambda: ["en"], metadata={"help": "Prompt languages (configs)."})
    variants: list[str] = field(
        default_factory=lambda: ["eval_direct"], metadata={"help": f"Prompt variants, any of {VARIANTS}."}
    )
    professions: list[str] = field(default_factory=list, metadata={"help": "Only these professions (all if empty)."})
    interventions: list[str] = field(
        default_factory=lambda: ["none"],
        metadata={
            "help": f"Training-free debiasing methods, each a config of its own: any of {INTERVENTIONS} "
            "(see pipelines/prompting/interventions.py); they apply to the eval_direct prompts, other variants "
            "are made as written."
        },
    )
    max_prompts: int | None = field(
        default=None, metadata={"help": "At most this many prompts per language and variant, in dataset order."}
    )
    num_images: int = field(default=1, metadata={"help": "Images per prompt (the reference evaluation: 100)."})
    seed: int = field(default=0, metadata={"help": "Base seed."})
    seeds: str = field(
        default="per_prompt",
        metadata={
            "help": "per_prompt: each image's seed hashes the base seed, prompt_id and index; index: base seed + "
            "index, the same for every prompt (the reference evaluation's seeds 0..N-1)."
        },
    )
    generator_device: str = field(
        default="cpu",
        metadata={
            "help": "Where each image's seeded noise is drawn: cpu (the same noise on any machine) or cuda (as the "
            "reference study drew it: another noise for the same seed, so its images can be remade only there)."
        },
    )
    batch_size: int = field(default=8, metadata={"help": "Images per pipeline call."})
    images_per_shard: int = field(default=64, metadata={"help": "Images per parquet shard (the unit of resuming)."})
    num_inference_steps: int = field(default=50, metadata={"help": "Denoising steps (the pipeline's default: 50)."})
    guidance_scale: float = field(default=7.5, metadata={"help": "Classifier-free guidance scale."})
    height: int | None = field(default=None, metadata={"help": "Image height (default: the model's)."})
    width: int | None = field(default=None, metadata={"help": "Image width (default: the model's)."})
    scheduler: str = field(
        default="default", metadata={"help": f"One of {tuple(SCHEDULERS)}; default: the model's own scheduler."}
    )
    dtype: str = field(default="auto", metadata={"help": f"One of {tuple(DTYPES)}; auto: fp16 on GPU, fp32 on CPU."})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N (auto: accelerate's device)."})
    cpu_threads: int = field(
        default=1,
        metadata={
            "help": "Intra-op threads per process on CPU. Float sums depend on it, so images are bit-identical "
            "only for the same value: keep it fixed and scale out with processes (torchrun)."
        },
    )
    cpu_workers: int | None = cpu_workers_field()
    face_filter: str | None = field(
        default=None,
        metadata={
            "help": f"With a detector ({', '.join(FACE_FILTERS)}), an image with other than exactly one face is "
            "made again from its next seed, up to max_attempts."
        },
    )
    max_attempts: int = field(default=10, metadata={"help": "Face filter: tries per image before keeping the last."})
    safety_checker: bool = field(
        default=False,
        metadata={
            "help": "Run the model's own safety checker (a component of its repo, as m9's): an image it flags comes "
            "back black, as the reference's training images did; `safety_flagged` marks them and the card counts "
            "them. Off by default: the study measures the model's raw output."
        },
    )
    work_dir: str | None = field(
        default=None, metadata={"help": "Where unfinished shards wait (default <store_root>/.work)."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.variants:
            raise ConfigError(f"variants: at least one of {', '.join(VARIANTS)}")
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown:
            raise ConfigError(f"variants: unknown {', '.join(map(repr, unknown))}; allowed {', '.join(VARIANTS)}")
        self.check_choice("interventions", INTERVENTIONS)
        if not self.interventions or len(set(self.interventions)) != len(self.interventions):
            raise ConfigError(
                f"interventions={self.interventions}: one or more of {', '.join(INTERVENTIONS)}, once each"
            )
        if self.interventions != ["none"] and not set(self.variants) & set(APPLIES_TO):
            raise ConfigError(
                f"interventions apply to the {', '.join(APPLIES_TO)} prompts, and variants has none of them "
                f"({', '.join(self.variants)}); other variants are made as written"
            )
        if self.face_filter is not None:
            self.check_choice("face_filter", FACE_FILTERS)
        self.check_choice("seeds", SEED_SCHEMES)
        self.check_choice("generator_device", ("cpu", "cuda"))
        self.check_choice("scheduler", SCHEDULERS)
        self.check_choice("dtype", DTYPES)
        self.check_at_least(
            1, "num_images", "batch_size", "images_per_shard", "num_inference_steps", "cpu_threads", "max_attempts"
        )
        self.check_at_least(1, "max_prompts", "cpu_workers")
        # Counts that allocate memory up front: refused at once rather than killed for memory later.
        self.check_at_most(100_000, "num_images", why="images per prompt")
        self.check_at_most(1_000, "num_inference_steps", why="a scheduler trained on 1,000 timesteps")
        self.check_at_most(4_096, "batch_size", "height", "width")
        self.check_pixels_per_batch("batch_size", "height", "width")
        if self.guidance_scale < 0:
            raise ConfigError(f"guidance_scale={self.guidance_scale}: must be at least 0")
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and (value < 8 or value % 8):
                raise ConfigError(f"{name}={value}: a multiple of 8")


def image_seed(seed: int, prompt_id: str, sample_index: int, attempt: int = 0, scheme: str = "per_prompt") -> int:
    """The seed of one image (and of its retries): the same in every batch, process and language.

    Example:
        >>> image_seed(0, "eval_direct-0123", 0) == image_seed(0, "eval_direct-0123", 0)
        True
        >>> image_seed(0, "eval_direct-0123", 0) != image_seed(0, "eval_direct-0123", 1)
        True
        >>> [image_seed(0, p, 2, scheme="index") for p in ("eval_direct-a", "eval_direct-b")]
        [2, 2]
    """
    if scheme == "index":
        # Retries continue past every first try: seed + index + attempt * 1e6 never meets another image's seed.
        return seed + sample_index + attempt * 1_000_000
    key = f"{seed}:{prompt_id}:{sample_index}" + (f":{attempt}" if attempt else "")
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


class GenerateImages(ShardedStage):
    name = "generate_images"
    Arguments = Arguments
    features = schemas.IMAGES
    not_parameters = ("work_dir", "device", "cpu_workers")
    threads_share_nothing = True  # each copy its own pipeline; each image its own seeded generator

    def model_options(self, name: str, args: Any = None) -> dict[str, Any]:
        from pipelines.modeling.diffusion import pipeline_problem

        with_checker = bool(args is not None and args.safety_checker)
        return {
            "what": name,
            "kinds": ("store", "hub", "folder"),
            "hub_files": lambda repo_id, revision: hub_pipeline_files(repo_id, revision, with_checker),
            "check": pipeline_problem,
        }

    def estimate(self, args: Arguments, estimates: Any, costs: Any) -> Any:
        from pipelines.harness.estimate import (
            Estimate,
            diffusion_scale,
            download_of,
            flop_note,
            hours,
            image_seconds,
            prompt_count,
        )

        prompts = estimates.get(args.repo_id(args.input))
        configs = {}
        for language in args.languages:
            for variant in args.variants:
                count = prompt_count(prompts, variant, args.professions)
                if args.max_prompts:
                    count = min(count, args.max_prompts)
                for intervention in args.interventions if variant in APPLIES_TO else ["none"]:
                    configs[schemas.config_name(language, variant, intervention)] = count * args.num_images
        images = sum(configs.values())
        estimates.put(args.repo_id(args.output_repo), kind="images", configs=configs)
        forms = {language: prompts.get("neutral_forms", {}).get(language) for language in args.languages}
        forms = {language: form for language, form in forms.items() if form}
        other = form_mismatch(estimates.get(args.repo_id(args.model)).get("caption_forms"), forms)
        download = download_of(args.model, args, estimates, "model")
        share, native = diffusion_scale(estimates, args.repo_id(args.model))
        per_image = image_seconds(costs, args.num_inference_steps, args.height, args.width, native, share)
        seconds = images * per_image * (1 if args.guidance_scale > 1 else 0.5)  # the unit is a guided image
        makes = f"{len(configs)} config(s): {', '.join(configs)}; noise on a {args.generator_device} generator"
        makes += f", weights in {args.dtype}" + (", safety checker on" if args.safety_checker else "")
        if args.face_filter:
            makes += f"; face filter {args.face_filter} makes more tries where no single face shows"
        if forms:
            makes += f"; prompts' gender-neutral form: {describe_neutral_forms(forms)}"
        if other:  # a fine-tune taught one form, evaluated on another: said, not hidden
            makes += f"; NOTE the model learnt from captions in another form: {other}"
        return Estimate(
            reads=[args.input, args.model],
            downloads=[download] if download else [],
            makes=makes,
            images=images,
            native_side=estimates.get(args.repo_id(args.model)).get("resolution", 0),
            gpu_hours=hours(seconds),
            priced=flop_note(share),
        )

    def plan(self, run: StageRun) -> list[Shard]:
        args: Arguments = run.args
        shards = []
        self.configs: dict[str, dict[str, str]] = {}
        self.twins: dict[str, dict[tuple[str, str], str]] = {}
        needed = sorted({v for i in args.interventions for v in TWIN_VARIANTS.get(i, ())})
        for language, rows in language_rows(run.dataset("input"), args.languages, args.professions).items():
            self.twins[language] = {
                (r["variant"], r["profession"]): r["prompt"] for r in rows if r["variant"] in needed
            }
            for variant in args.variants:
                chosen = variant_rows(rows, language, variant, args.professions, args.max_prompts)
                for intervention in args.interventions if variant in APPLIES_TO else ["none"]:
                    lacking = [
                        f"{twin} ({row['profession']})"
                        for row in chosen
                        for twin in TWIN_VARIANTS.get(intervention, ())
                        if (twin, row["profession"]) not in self.twins[language]
                    ]
                    if lacking:
                        raise DataError(
                            f"interventions: {intervention} needs the {language!r} prompts {', '.join(lacking[:3])}, "
                            "which the prompts dataset lacks (made by generate_prompts)"
                        )
                    config = schemas.config_name(language, variant, intervention)
                    self.configs[config] = {"language": language, "variant": variant, "intervention": intervention}
                    items = [(row, index) for row in chosen for index in range(args.num_images)]
                    for number, start in enumerate(range(0, len(items), args.images_per_shard)):
                        shards.append(Shard(config, number, items[start : start + args.images_per_shard]))
        return shards

    def open(self, run: StageRun, device: str) -> None:
        args: Arguments = run.args
        if args.generator_device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise ConfigError(
                    "generator_device='cuda': this machine has no CUDA device (cpu draws the noise here)"
                )
        model = run.model("model")
        self.pipe = load_pipeline(
            model,
            run.store,
            namespace=args.namespace,
            scheduler=args.scheduler,
            device=device,
            dtype=args.dtype,
            safety_checker=args.safety_checker,
        )
        self.info = {"model": model.pin, "model_revision": model.revision or model.pin.rpartition("@")[2]}
        self.detector = None
        if args.face_filter:
            from pipelines.perception.faces import load_detector

            self.detector = load_detector(args.face_filter, device)

    def make(self, run: StageRun, shard: Shard) -> list[dict[str, Any]]:
        """The rows of one shard, in item order. With a face filter, an image with other than one face is
        made again from its next seed; retries join later batches of the same shard, so a shard's result
        depends on nothing outside it."""
        import numpy as np

        from pipelines.prompting.grammar import load_grammar

        args: Arguments = run.args
        info = self.configs[shard.config]
        grammar = load_grammar(info["language"]) if info["intervention"] in ("negative", "sega") else None
        twins = self.twins[info["language"]]

        def told(row: dict, index: int) -> Instruction:
            return instruction(info["intervention"], row, index, twins, grammar)

        pending = [(position, row, index, 0) for position, (row, index) in enumerate(shard.items)]
        done: dict[int, dict] = {}
        while pending:
            batch, pending = pending[: args.batch_size], pending[args.batch_size :]
            calls = [(row, index, attempt, told(row, index)) for _, row, index, attempt in batch]
            made = self.generate_batch(calls, args)
            faces = self.detector.detect([np.asarray(m[0]) for m in made]) if self.detector else [None] * len(made)
            for (position, row, index, attempt), (image, seed, flagged), found, (*_, said) in zip(
                batch, made, faces, calls
            ):
                if found is not None and len(found) != 1 and attempt + 1 < args.max_attempts:
                    pending.append((position, row, index, attempt + 1))
                    continue
                check = "off" if found is None else "one_face" if len(found) == 1 else "gave_up"
                done[position] = self.image_row(row, index, image, seed, attempt, check, args) | {
                    "safety_flagged": flagged,
                    "intervention": info["intervention"],
                    "generation_prompt": said.prompt,
                    "negative_prompt": said.negative_prompt,
                    "editing_prompts": list(said.editing_prompts),
                }
        return [done[position] for position in range(len(shard.items))]

    def generate_batch(
        self, batch: list[tuple[dict[str, Any], int, int, Instruction]], args: Arguments
    ) -> list[tuple[Any, int, bool | None]]:
        """The images of a batch of (row, sample index, attempt, instruction), as (image, seed, flagged)
        triples (flagged: by the model's safety checker, None when it is off): one pipeline call per
        kind of call (semantic guidance edits one way or the other)."""
        import torch

        from pipelines.modeling.diffusion import sega_arguments

        seeds = [
            image_seed(args.seed, row["prompt_id"], index, attempt, args.seeds) for row, index, attempt, _ in batch
        ]
        groups: dict[tuple, list[int]] = {}
        for position, (*_, said) in enumerate(batch):
            groups.setdefault((said.editing_prompts, said.reverse_editing), []).append(position)
        images: list[Any] = [None] * len(batch)
        flags: list[bool | None] = [None] * len(batch)
        for (editing, reverse), positions in groups.items():
            said = [batch[p][3] for p in positions]
            negatives = [s.negative_prompt or "" for s in said]
            extra = sega_arguments(editing, reverse, args.num_inference_steps) if editing else {}
            with torch.inference_mode():
                output = (self.semantic_pipe() if editing else self.pipe)(
                    [s.prompt for s in said],
                    negative_prompt=negatives if any(negatives) else None,
                    num_inference_steps=args.num_inference_steps,
                    guidance_scale=args.guidance_scale,
                    height=args.height,
                    width=args.width,
                    generator=[torch.Generator(device=args.generator_device).manual_seed(seeds[p]) for p in positions],
                    output_type="pil",
                    **extra,
                )
            flagged = getattr(output, "nsfw_content_detected", None) if args.safety_checker else None
            for number, (p, image) in enumerate(zip(positions, output.images)):
                images[p] = image
                flags[p] = bool(flagged[number]) if flagged is not None else None
        return list(zip(images, seeds, flags))

    def semantic_pipe(self) -> Any:
        if getattr(self, "_semantic", None) is None:
            from pipelines.modeling.diffusion import semantic_guidance_pipeline

            self._semantic = semantic_guidance_pipeline(self.pipe)
        return self._semantic

    def image_row(
        self, row: dict, index: int, image: Any, seed: int, attempt: int, check: str, args: Arguments
    ) -> dict[str, Any]:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return {
            "image": {"bytes": buffer.getvalue(), "path": None},
            **{column: row[column] for column in ("prompt_id", "prompt", "language", "variant")},
            **{column: row[column] for column in schemas.GRID_COLUMNS},
            "sample_index": index,
            "seed": seed,
            "scheduler": type(self.pipe.scheduler).__name__,
            "num_inference_steps": args.num_inference_steps,
            "guidance_scale": args.guidance_scale,
            "height": image.height,
            "width": image.width,
            "rejected": attempt,
            "face_check": check,
            "intervention": "none",
            "generation_prompt": row["prompt"],
            "negative_prompt": None,
            "editing_prompts": [],
            **self.info,
        }

    def finish(self, run: StageRun, folder: Path) -> str:
        args: Arguments = run.args
        shards = self.plan(run)
        rows = {}
        for shard in shards:
            rows[shard.config] = rows.get(shard.config, 0) + len(shard.items)
        timing = shard_seconds(folder)
        dataset_card(
            repo_id=run.output_repo_id,
            title="Generated images",
            description=(
                f"Images from `{run.inputs['model']}` for the prompts of `{run.inputs['input']}`: {args.num_images} "
                f"per prompt, {args.num_inference_steps} steps of the {args.scheduler} scheduler, guidance "
                f"{args.guidance_scale}, seeds {args.seeds.replace('_', ' ')} drawn on a {args.generator_device} "
                f"generator, weights in {args.dtype}"
                + (" (fp16 on a GPU, fp32 on a CPU)" if args.dtype == "auto" else "")
                + ". One config per language, prompt "
                "variant and intervention (`none`: the prompt as written), paired seed for seed across languages "
                "and interventions; any image can be made again alone from its `seed`, `generation_prompt`, "
                "`negative_prompt` and `editing_prompts`."
            ),
            lineage=run.lineage,
            configs=list(rows),
            config_info=self.configs,
            folder=folder,
            languages=sorted(set(args.languages)),
            tags=["images", "generated"],
            notes=[*self.face_filter_note(args), *self.form_note(run)],
            tables=[
                *([face_filter_table(folder, self.configs)] if args.face_filter else []),
                *([safety_table(folder, self.configs)] if args.safety_checker else []),
            ],
            seconds_per_image={config: round(s / n, 4) for config, (n, s) in timing.items() if n},
        ).save(folder / "README.md")
        return f"{sum(rows.values())} images, {', '.join(rows)}"

    @staticmethod
    def form_note(run: StageRun) -> list[str]:
        """A note where the model learnt from captions in another gender-neutral form than these
        prompts use (the dry run's NOTE, from the same comparison), else none."""
        args: Arguments = run.args
        prompts = run.dataset("input")
        forms = {lang: prompts.config_info(lang).get("neutral_form") for lang in args.languages}
        model = run.models.get("model")
        other = form_mismatch(model_caption_forms(model.path if model else None, run.store), forms)
        if not other:
            return []
        return [
            f"The model learnt from captions in another gender-neutral form than these prompts use ({other}): "
            "in those languages it is evaluated on a form it was not taught."
        ]

    @staticmethod
    def face_filter_note(args: Arguments) -> list[str]:
        if not args.face_filter:
            return ["No face filter: every image is kept as generated; classify marks those without one face."]
        return [
            f"Face filter `{args.face_filter}`: an image with other than exactly one face was made again from its "
            f"next seed, up to {args.max_attempts} tries (`rejected` counts them; `face_check` is `gave_up` where "
            "no try showed one face). Every image is checked, as in MAGBIG and the reference evaluation; unlike "
            "theirs, which keep the first N passing seeds of one running count per prompt, image i tries its own "
            "seeds, so languages stay paired seed for seed."
        ]


def safety_table(folder: Path, configs: dict[str, dict[str, str]]) -> dict[str, Any]:
    """Per config, the images the model's safety checker flagged (and the pipeline blacked out)."""
    import pyarrow.parquet as pq

    rows = []
    for config in configs:
        flags = [
            flag
            for path in sorted((folder / "data" / config).glob("*.parquet"))
            for flag in pq.read_table(path, columns=["safety_flagged"]).column("safety_flagged").to_pylist()
        ]
        flagged = sum(bool(flag) for flag in flags)
        rows.append([f"`{config}`", len(flags), flagged, f"{flagged / max(len(flags), 1):.1%}"])
    return {
        "title": "Safety checker",
        "note": "The model's own safety checker ran (`--safety_checker`): an image it flagged is black and its row "
        "has `safety_flagged` true. A classifier finds no face in it.",
        "columns": ["Config", "Images", "Flagged (black)", "Share"],
        "rows": rows,
    }


def face_filter_table(folder: Path, configs: dict[str, dict[str, str]]) -> dict[str, Any]:
    """Per config, how often the face filter rejected a try, and how many images still share their
    final seed with the same image of the first language (same variant and intervention): the filter
    rejects different images in different languages, and only those images lose their pairing.

    Every image tries the same seeds in every language (`image_seed(..., attempt)`); a row records
    the one it kept (`seed`) and the tries before it (`rejected`)."""
    import pyarrow.parquet as pq

    columns = ["prompt_id", "sample_index", "seed", "rejected", "face_check"]
    tables = {
        config: [
            row
            for path in sorted((folder / "data" / config).glob("*.parquet"))
            for row in pq.read_table(path, columns=columns).to_pylist()
        ]
        for config in configs
    }
    first: dict[tuple[str, str], str] = {}
    for config, info in configs.items():
        first.setdefault((info["variant"], info["intervention"]), config)
    rows = []
    for config, info in configs.items():
        images = tables[config]
        tries = sum(row["rejected"] + 1 for row in images)
        reference = {
            (r["prompt_id"], r["sample_index"]): r["seed"]
            for r in tables[first[(info["variant"], info["intervention"])]]
        }
        paired = sum(reference.get((r["prompt_id"], r["sample_index"])) == r["seed"] for r in images)
        rows.append(
            [
                f"`{config}`",
                info["language"],
                len(images),
                tries,
                f"{(tries - len(images)) / max(tries, 1):.1%}",
                sum(row["face_check"] == "gave_up" for row in images),
                f"{paired / max(len(images), 1):.1%}",
            ]
        )
    return {
        "title": "Face filter",
        "note": "Rejection rate: the share of tries that did not show exactly one face. Same seed: the share of "
        "images made from the same final seed as in the first language's config of the same prompts.",
        "columns": ["Config", "Language", "Images", "Tries", "Rejection rate", "Gave up", "Same seed"],
        "rows": rows,
    }


STAGE = GenerateImages()
run = STAGE.run

if __name__ == "__main__":
    STAGE.main()
