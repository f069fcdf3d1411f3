"""Stage 8: image-text alignment (CLIP score) per occupation and language, via the `evaluate` module.

    python -m pipelines.evaluate_alignment --input images-eval \\
        [--multilingual_clip_model xlm-roberta-large-ViT-H-14 --multilingual_clip_pretrained frozen_laion5b_s13b_b90k]

As the reference study, every image, whatever its prompt's language, is scored by one English CLIP
(OpenAI's ViT-L/14, `ViT-L-14-quickgelu` in open_clip) against three English texts: the occupation's
indirect, gender-neutral English prompt (MAGBIG's, or the toolkit's `eval_indirect`; read from the
prompts dataset the images were made from), "a photo of the face of a/an <occupation>", and "a
photo of the face of a person". With a multilingual CLIP, each image is also scored against its own
prompt in its own language: a separate figure (`mclip_own_prompt`) on that model's own scale, never
in a column with the English CLIP's cosines.

Publishes per-image scores (one config per images config) and means per occupation and overall
(config `summary`). Sharded like classification: resumable, the same bytes on any number of
processes. A corrupt image is skipped and counted (`status`), or stops the stage (`--on_corrupt stop`).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from pipelines.artifacts import schemas
from pipelines.artifacts.cards import dataset_card
from pipelines.artifacts.dataset_files import DatasetWriter, to_rgb
from pipelines.artifacts.reader import DatasetArtifact
from pipelines.errors import DataError
from pipelines.harness.config import StageArguments, input_field
from pipelines.harness.stage import Shard, ShardedStage, StageRun
from pipelines.modeling.clip import REFERENCE_CLIP
from pipelines.prompting.grammar import load_grammar
from pipelines.resources import space_folder

METRIC_PATH = space_folder("clip_score")
PERSON = "a photo of the face of a person"
OCCUPATION_TEXTS = {
    "corrected": '"a photo of the face of a/an <occupation>" (`--clip_texts corrected`)',
    "reference": '"a photo of the face of a <occupation>" for every occupation, as the reference study wrote it '
    "(`--clip_texts reference`)",
}
AVERAGES = {
    "images": "the mean over every image (`--average images`)",
    "occupations": "the mean of the occupations' means, the reference study's avg (`--average occupations`)",
}
INDIRECT_VARIANTS = ("magbig_indirect", "eval_indirect")  # the English indirect prompt, in this order
CORRUPT = ("skip", "stop")


@dataclass
class Arguments(StageArguments):
    INPUTS = {"input": "images", "clip_model": "model", "multilingual_clip_model": "model"}
    input: str = input_field("Images dataset (ns/name@rev).", default="images")
    output_repo: str | None = field(default=None, metadata={"help": "Results repo (default <input>-alignment)."})
    configs: list[str] = field(default_factory=list, metadata={"help": "Images configs (all if empty)."})
    clip_model: str = input_field(
        "The English CLIP: an open_clip name, an hf-hub: name, a folder or a store repo "
        f"(the reference study's: {REFERENCE_CLIP[0]} with pretrained {REFERENCE_CLIP[1]}).",
        default=REFERENCE_CLIP[0],
    )
    clip_pretrained: str | None = field(default=REFERENCE_CLIP[1], metadata={"help": "Its open_clip pretrained tag."})
    multilingual_clip_model: str | None = input_field(
        "A multilingual CLIP (e.g. xlm-roberta-large-ViT-H-14) to score each image against its own prompt; "
        "off when not given.",
        default=None,
    )
    multilingual_clip_pretrained: str | None = field(default=None, metadata={"help": "Its pretrained tag."})
    convention: str = field(default="cosine", metadata={"help": "cosine (the reference study) or torchmetrics."})
    clip_texts: str = field(
        default="corrected",
        metadata={
            "help": 'corrected: "a photo of the face of a/an <occupation>" with the right article; reference: '
            '"a photo of the face of a <occupation>" for every occupation, as the reference study wrote it.'
        },
    )
    clip_precision: str = field(
        default="fp32",
        metadata={"help": "fp32, or fp16 as the reference study ran its CLIP (scores move by rounding)."},
    )
    average: str = field(
        default="images",
        metadata={
            "help": "The summary's all-occupations row: images (the mean over every image) or occupations (the mean "
            "of the occupations' means, the reference study's 'avg')."
        },
    )
    on_corrupt: str = field(default="skip", metadata={"help": f"A corrupt image: {CORRUPT[0]} (counted) or stop."})
    batch_size: int = field(default=64, metadata={"help": "Images per forward pass."})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda."})
    cpu_threads: int = field(
        default=1, metadata={"help": "Intra-op threads per process on CPU (see generate_images)."}
    )
    work_dir: str | None = field(default=None, metadata={"help": "Where unfinished shards wait."})

    def __post_init__(self) -> None:
        if self.output_repo is None:
            self.output_repo = f"{self.input.partition('@')[0].split('/')[-1]}-alignment"
        if self.multilingual_clip_model is None:
            self.multilingual_clip_pretrained = None
        super().__post_init__()
        self.check_choice("convention", ("cosine", "torchmetrics"))
        self.check_choice("clip_texts", ("corrected", "reference"))
        self.check_choice("clip_precision", ("fp32", "fp16"))
        self.check_choice("average", ("images", "occupations"))
        self.check_choice("on_corrupt", CORRUPT)
        self.check_at_least(1, "batch_size", "cpu_threads")
        self.check_at_most(4_096, "batch_size", why="images per forward pass")
        from pipelines.modeling.clip import check_activation

        check_activation(self.clip_model, self.clip_pretrained)
        if self.multilingual_clip_model:
            check_activation(self.multilingual_clip_model, self.multilingual_clip_pretrained)


def english_indirect_prompts(images: DatasetArtifact, run: StageRun) -> dict[str, str]:
    """The English indirect prompt of each occupation, from the prompts dataset the images came from."""
    source = images.lineage.get("inputs", {}).get("input")
    if not source:
        return {}
    prompts = DatasetArtifact(run.store.resolve(source, "dataset"), source)
    if "en" not in prompts.configs:
        return {}
    found: dict[str, str] = {}
    for variant in reversed(INDIRECT_VARIANTS):  # MAGBIG's wins where both exist
        found |= {row["profession"]: row["prompt"] for row in prompts.rows("en") if row["variant"] == variant}
    return found


class EvaluateAlignment(ShardedStage):
    name = "evaluate_alignment"
    Arguments = Arguments
    features = schemas.ALIGNMENT
    not_parameters = ("work_dir", "device", "batch_size")

    def model_options(self, name: str, args: Any = None) -> dict[str, Any]:
        from pipelines.modeling.clip import is_open_clip_name

        return {"what": name, "kinds": ("store", "hub", "folder", "name"), "is_library_name": is_open_clip_name}

    def estimate(self, args: Arguments, estimates: Any, costs: Any) -> Any:
        from pipelines.harness.estimate import Estimate, download_of, flop_note, hours

        configs = estimates.get(args.repo_id(args.input)).get("configs", {})
        images = sum(count for config, count in configs.items() if not args.configs or config in args.configs)
        estimates.put(args.repo_id(args.output_repo), kind="alignment")
        models = {"clip_model": args.clip_model, "multilingual_clip_model": args.multilingual_clip_model}
        downloads = [download_of(spec, args, estimates, name) for name, spec in models.items() if spec]
        # The unit is an image encoded by ViT-L/14; a CLIP an earlier step builds records its own share.
        shares = [estimates.get(args.repo_id(spec)).get("clip_share", 1.0) for spec in models.values() if spec]
        return Estimate(
            reads=[args.input],
            downloads=[d for d in downloads if d],
            makes=f"CLIP scores of {images:,} images (texts {args.clip_texts}, CLIP in {args.clip_precision}, "
            f"average over {args.average})",
            gpu_hours=hours(images * sum(shares) * costs.seconds_per_scored_image),
            priced=flop_note(sum(shares) / len(shares), of="ViT-L/14 per image") if shares else "",
        )

    def plan(self, run: StageRun) -> list[Shard]:
        images = run.dataset("input")
        configs = images.select(run.args.configs)
        self.config_info = {config: images.config_info(config) for config in configs}
        shards = []
        for config in configs:
            images.require_columns(config, ["image", "prompt", "profession", "language"])
            for index, path in enumerate(images.files(config)):
                shards.append(Shard(config, index, list(range(pq.ParquetFile(path).metadata.num_rows))))
        return shards

    def open(self, run: StageRun, device: str) -> None:
        import evaluate

        args: Arguments = run.args
        self.images = run.dataset("input")
        self.metric = evaluate.load(str(METRIC_PATH))
        self.indirect = english_indirect_prompts(self.images, run)
        self.grammar = load_grammar("en")
        english = run.model("clip_model")
        self.english = {"model": str(english.path or english.given), "pretrained": args.clip_pretrained}
        self.multilingual = None
        if args.multilingual_clip_model:
            model = run.model("multilingual_clip_model")
            self.multilingual = {
                "model": str(model.path or model.given),
                "pretrained": args.multilingual_clip_pretrained,
            }
        self.common = {
            "convention": args.convention,
            "batch_size": args.batch_size,
            "device": device,
            "precision": args.clip_precision,
        }
        self.reference_texts = args.clip_texts == "reference"

    def texts(self, profession: str) -> dict[str, str]:
        occupation = (
            f"a photo of the face of a {profession}"  # "a accountant", as the reference study's texts read
            if self.reference_texts
            else self.grammar.eval_direct(profession)
        )
        return {
            "clip_en_indirect": self.indirect.get(profession) or self.grammar.eval_indirect(profession),
            "clip_en_occupation": occupation,
            "clip_en_person": PERSON,
        }

    def make(self, run: StageRun, shard: Shard) -> list[dict[str, Any]]:
        from PIL import Image

        args: Arguments = run.args
        rows = self.images.shard_rows(shard.config, shard.index)
        out = []
        for start in range(0, len(rows), args.batch_size):
            batch = rows[start : start + args.batch_size]
            images = []
            for number, row in enumerate(batch):
                try:
                    with Image.open(io.BytesIO(row["image"]["bytes"])) as image:
                        images.append(to_rgb(image))
                except Exception:  # noqa: BLE001 - any undecodable image is recorded, not fatal
                    if args.on_corrupt == "stop":
                        raise DataError(
                            f"input={run.inputs['input']}: the image of row {start + number} of shard {shard.index} "
                            f"of config {shard.config!r} cannot be decoded (--on_corrupt skip counts it instead)"
                        ) from None
                    images.append(None)
            good = [i for i, image in enumerate(images) if image is not None]
            # The three English texts against one encoding of each image.
            first, *others = schemas.ALIGNMENT_SCORES[:3]
            texts = {name: [self.texts(batch[i]["profession"])[name] for i in good] for name in (first, *others)}
            scores = self.score([images[i] for i in good], texts[first], self.english,
                                {name: texts[name] for name in others})  # fmt: skip
            if self.multilingual is not None:
                texts = [batch[i]["prompt"] for i in good]
                scores |= self.score([images[i] for i in good], texts, self.multilingual, name="mclip_own_prompt")
            by_row = {i: {name: values[j] for name, values in scores.items()} for j, i in enumerate(good)}
            for i, row in enumerate(batch):
                out.append(
                    {
                        **{key: row.get(key) for key in ("prompt_id", "language", "variant", "profession", "model")},
                        "intervention": row.get("intervention") or "none",
                        "prompt": row["prompt"],
                        "sample_index": row.get("sample_index"),
                        **{name: by_row.get(i, {}).get(name) for name in schemas.ALIGNMENT_SCORES},
                        "status": "ok" if i in by_row else "corrupt",
                    }
                )
        return out

    def score(
        self,
        images: list,
        texts: list[str],
        model: dict[str, Any],
        others: dict[str, list[str]] | None = None,
        name: str = schemas.ALIGNMENT_SCORES[0],
    ) -> dict[str, list[float]]:
        """The scores of `texts` (as `name`) and of each of `others`, by name, each image encoded once."""
        if not images:
            return {name: [], **dict.fromkeys(others or {}, [])}
        extra = {"other_references": others} if others else {}
        result = self.metric.compute(predictions=images, references=texts, **model, **self.common, **extra)
        return {name: result["scores"], **{other: result["other"][other]["scores"] for other in others or {}}}

    def finish(self, run: StageRun, folder: Path) -> str:
        args: Arguments = run.args
        configs = list(self.config_info)
        summary, counts, corrupt = [], {}, 0
        for config in configs:
            table = [
                row
                for path in sorted((folder / "data" / config).glob("*.parquet"))
                for row in pq.read_table(path).to_pylist()
            ]
            counts[config] = len(table)
            corrupt += sum(row["status"] != "ok" for row in table)
            ok = [row for row in table if row["status"] == "ok"]
            for occupation in [*dict.fromkeys(row["profession"] for row in ok), schemas.ALL_OCCUPATIONS]:
                chosen = [row for row in ok if occupation in (row["profession"], schemas.ALL_OCCUPATIONS)]
                if chosen:
                    by_occupation = occupation == schemas.ALL_OCCUPATIONS and args.average == "occupations"
                    summary.append(summary_row(chosen, occupation, by_occupation))
        if not summary:
            raise DataError(f"input={run.inputs['input']}: no images to score")
        writer = DatasetWriter(folder, schemas.ALIGNMENT_SUMMARY)
        writer.write("summary", summary)
        writer.close()

        def number(value: float | None) -> str:
            return "–" if value is None or math.isnan(value) else f"{value:.4f}"

        overall = [row for row in summary if row["occupation"] == schemas.ALL_OCCUPATIONS]
        multilingual = run.inputs.get("multilingual_clip_model")
        dataset_card(
            repo_id=run.output_repo_id,
            title="Image-text alignment (CLIP score)",
            description=(
                f"CLIP scores ({args.convention}) of the images in `{run.inputs['input']}`, as the reference study "
                f"computes them: every language's images against English texts with one English CLIP "
                f"(`{run.inputs['clip_model']}`, pretrained `{args.clip_pretrained}`): the occupation's indirect "
                f'English prompt, {OCCUPATION_TEXTS[args.clip_texts]} and "{PERSON}"; CLIP in {args.clip_precision}. '
                + (
                    f"Separately, each image against its own prompt with the multilingual CLIP `{multilingual}` "
                    "(`mclip_own_prompt`): another model's cosines, on another scale, not comparable with the "
                    "English CLIP's columns."
                    if multilingual
                    else "No multilingual CLIP was given, so there is no own-prompt score."
                )
                + f" Config `summary`: means and standard deviations per occupation and over all occupations "
                f"(`{schemas.ALL_OCCUPATIONS}`: {AVERAGES[args.average]})."
            ),
            lineage=run.lineage,
            configs=["summary", *configs],
            config_info=self.config_info,
            folder=folder,
            languages=sorted({r["language"] for r in summary if r["language"]}),
            tables=[
                {
                    "title": "English CLIP, English texts (all languages' images)",
                    "columns": ["language", "variant", "images", "indirect prompt", "occupation", "person"],
                    "rows": [
                        [
                            r["language"],
                            r["variant"],
                            r["num_images"],
                            number(r["clip_en_indirect"]),
                            number(r["clip_en_occupation"]),
                            number(r["clip_en_person"]),
                        ]  # fmt: skip
                        for r in overall
                    ],
                },
                *(
                    [
                        {
                            "title": "Multilingual CLIP, own prompt (its own scale)",
                            "columns": ["language", "variant", "images", "own prompt"],
                            "rows": [
                                [r["language"], r["variant"], r["num_images"], number(r["mclip_own_prompt"])]
                                for r in overall
                            ],
                        }
                    ]
                    if multilingual
                    else []
                ),
            ],
            notes=[f"{corrupt} corrupt image(s) skipped (`status == 'corrupt'`)."] if corrupt else [],
            tags=["alignment", "clip-score", "evaluation", "results"],
        ).save(folder / "README.md")
        return f"CLIP scores of {sum(counts.values())} images"


def summary_row(rows: list[dict[str, Any]], occupation: str, by_occupation: bool = False) -> dict[str, Any]:
    """Means and standard deviations of the scores of `rows`; `by_occupation`: of the occupations'
    means instead of the images' scores (the reference study's "avg", which weighs every occupation
    alike however many of its images were scored).

    Example:
        >>> rows = [{"language": "en", "variant": "v", "intervention": "none", "model": "m", "profession": p,
        ...          "clip_en_indirect": s, "clip_en_occupation": s, "clip_en_person": s, "mclip_own_prompt": None}
        ...         for p, s in (("a", 0.1), ("a", 0.3), ("a", 0.2), ("b", 0.6))]
        >>> pooled, means = summary_row(rows, "__all__"), summary_row(rows, "__all__", by_occupation=True)
        >>> round(pooled["clip_en_person"], 4), round(means["clip_en_person"], 4)
        (0.3, 0.4)
    """
    import numpy as np

    first = rows[0]
    out = {key: first[key] for key in ("language", "variant", "intervention", "model")}
    out |= {"occupation": occupation, "num_images": len(rows)}
    for name in schemas.ALIGNMENT_SCORES:
        if by_occupation:
            groups: dict[str, list[float]] = {}
            for row in rows:
                if row[name] is not None:
                    groups.setdefault(row["profession"], []).append(row[name])
            values = np.array([np.mean(group) for group in groups.values()], dtype=float)
        else:
            values = np.array([row[name] for row in rows if row[name] is not None], dtype=float)
        out[name] = float(values.mean()) if len(values) else None
        out[f"{name}_std"] = float(values.std()) if len(values) else None
    return out


STAGE = EvaluateAlignment()
run = STAGE.run

if __name__ == "__main__":
    STAGE.main()
