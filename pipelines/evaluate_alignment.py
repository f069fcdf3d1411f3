"""Stage 8: image-text alignment (CLIP score) per occupation and language, via the `evaluate` module.

    python -m pipelines.evaluate_alignment --input images-base-eval \\
        --clip_model ViT-L-14 --clip_pretrained openai \\
        --multilingual_clip_model xlm-roberta-large-ViT-H-14 --multilingual_clip_pretrained frozen_laion5b_s13b_b90k

Each image is scored against the reference study's three texts: (a) its own prompt, in its own
language (the multilingual CLIP for other languages than English); (b) the English "a photo of the
face of a/an <occupation>"; (c) "a photo of the face of a person". Publishes per-image scores
(config per images config) and means per occupation and overall (config `summary`).
"""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import pyarrow.parquet as pq
from PIL import Image
from tqdm.auto import tqdm

from pipelines import PROJECT_ROOT
from pipelines.artifacts.cards import dataset_card
from pipelines.artifacts.dataset_files import DatasetWriter, config_entry, select_configs
from pipelines.errors import ConfigError
from pipelines.harness.config import StageArguments, input_field
from pipelines.harness.stage import Published, StageRun, execute, stage_main
from pipelines.modeling.diffusion import pick_device
from pipelines.prompting.grammar import load_grammar

STAGE = "evaluate_alignment"
METRIC_PATH = PROJECT_ROOT / "spaces" / "clip_score"
PERSON = "a photo of the face of a person"
TEXTS = ("own_prompt", "occupation", "person")
SCORE_FEATURES = datasets.Features(
    {
        "prompt_id": datasets.Value("string"),
        "language": datasets.Value("string"),
        "variant": datasets.Value("string"),
        "profession": datasets.Value("string"),
        "sample_index": datasets.Value("int32"),
        "model": datasets.Value("string"),
        "prompt": datasets.Value("string"),
        **{f"clip_{name}": datasets.Value("float64") for name in TEXTS},
    }
)
SUMMARY_FEATURES = datasets.Features(
    {
        "language": datasets.Value("string"),
        "variant": datasets.Value("string"),
        "model": datasets.Value("string"),
        "occupation": datasets.Value("string"),
        "num_images": datasets.Value("int32"),
        **{f"clip_{name}": datasets.Value("float64") for name in TEXTS},
    }
)
ALL = "__all__"


@dataclass
class Arguments(StageArguments):
    INPUTS = {"input": "dataset", "clip_model": "model", "multilingual_clip_model": "model"}
    input: str = input_field("Images dataset (ns/name@rev).", default="images")
    output_repo: str | None = field(default=None, metadata={"help": "Results repo (default <input>-alignment)."})
    configs: list[str] = field(default_factory=list, metadata={"help": "Images configs (all if empty)."})
    clip_model: str = input_field("English open_clip model: name, folder or store repo.", default="tiny-open-clip")
    clip_pretrained: str | None = field(default=None, metadata={"help": "Its open_clip pretrained tag."})
    multilingual_clip_model: str = input_field(
        "Multilingual open_clip model (XLM-R CLIP), for prompts not in English.", default="tiny-open-clip"
    )
    multilingual_clip_pretrained: str | None = field(default=None, metadata={"help": "Its pretrained tag."})
    convention: str = field(default="cosine", metadata={"help": "cosine (the reference study) or torchmetrics."})
    batch_size: int = field(default=64, metadata={"help": "Images per forward pass."})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda."})

    def __post_init__(self) -> None:
        if self.output_repo is None:
            self.output_repo = f"{self.input.partition('@')[0].split('/')[-1]}-alignment"
        super().__post_init__()
        if self.convention not in ("cosine", "torchmetrics"):
            raise ConfigError(f"convention={self.convention!r}: allowed cosine, torchmetrics")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size={self.batch_size}: must be at least 1")


def build(run: StageRun, folder: Path) -> str:
    import evaluate

    args: Arguments = run.args
    source = run.input_folder("input")
    configs = select_configs(source, args.configs, run.inputs["input"])
    metric = evaluate.load(str(METRIC_PATH))
    device = pick_device(args.device)
    english = {"model": run.model_path("clip_model"), "pretrained": args.clip_pretrained}
    multilingual = {
        "model": run.model_path("multilingual_clip_model"),
        "pretrained": args.multilingual_clip_pretrained,
    }
    common = {"convention": args.convention, "batch_size": args.batch_size, "device": device}
    grammar = load_grammar("en")
    scores = DatasetWriter(folder, SCORE_FEATURES, rows_per_shard=20_000)
    summary_rows = []
    for config in configs:
        sums: dict[str, dict[str, Any]] = {}
        shards = sorted((source / "data" / config).glob("*.parquet"))
        for shard in tqdm(shards, desc=f"clip score {config}", file=sys.stderr):
            for batch in pq.ParquetFile(shard).iter_batches(batch_size=args.batch_size):
                rows = batch.to_pylist()
                images = [Image.open(io.BytesIO(row["image"]["bytes"])).convert("RGB") for row in rows]
                own_model = english if rows[0]["language"] == "en" else multilingual
                texts = {
                    "own_prompt": ([row["prompt"] for row in rows], own_model),
                    "occupation": ([grammar.eval_direct(row["profession"]) for row in rows], english),
                    "person": ([PERSON] * len(rows), english),
                }
                result = {
                    name: metric.compute(predictions=images, references=references, **model, **common)["scores"]
                    for name, (references, model) in texts.items()
                }
                out = [
                    {
                        key: row[key]
                        for key in (
                            "prompt_id",
                            "language",
                            "variant",
                            "profession",
                            "sample_index",
                            "model",
                            "prompt",
                        )
                    }
                    | {f"clip_{name}": result[name][i] for name in TEXTS}
                    for i, row in enumerate(rows)
                ]
                scores.write(config, out)
                for row in out:
                    for occupation in (row["profession"], ALL):
                        entry = sums.setdefault(occupation, {"n": 0, **dict.fromkeys(TEXTS, 0.0), "row": row})
                        entry["n"] += 1
                        for name in TEXTS:
                            entry[name] += row[f"clip_{name}"]
        for occupation, entry in sums.items():
            first = entry["row"]
            summary_rows.append(
                {
                    "language": first["language"],
                    "variant": first["variant"],
                    "model": first["model"],
                    "occupation": occupation,
                    "num_images": entry["n"],
                    **{f"clip_{name}": entry[name] / entry["n"] for name in TEXTS},
                }
            )
    if not summary_rows:
        raise ConfigError(f"input={run.inputs['input']}: no images to score")
    summary = DatasetWriter(folder, SUMMARY_FEATURES)
    summary.write("summary", summary_rows)
    summary.close()
    counts = scores.close()
    overall = [row for row in summary_rows if row["occupation"] == ALL]
    table = [
        "| language | variant | model | images | own prompt | occupation | person |",
        "|---|---|---|---|---|---|---|",
    ]
    table += [
        f"| {r['language']} | {r['variant']} | `{r['model']}` | {r['num_images']} | {r['clip_own_prompt']:.4f} | "
        f"{r['clip_occupation']:.4f} | {r['clip_person']:.4f} |"
        for r in overall
    ]
    dataset_card(
        repo_id=run.output_repo_id,
        title="Image-text alignment (CLIP score)",
        description=(
            f"CLIP scores ({args.convention}) of the images in `{run.inputs['input']}` against (a) their own prompt "
            f"(English CLIP `{run.inputs['clip_model']}` for English, multilingual "
            f'`{run.inputs["multilingual_clip_model"]}` otherwise), (b) "a photo of the face of a/an <occupation>" '
            f'and (c) "{PERSON}", with the CLIP-score evaluate module. Config `summary`: means per occupation, and '
            f"over all occupations (`{ALL}`).\n\n" + "\n".join(table)
        ),
        lineage=run.lineage,
        configs=[config_entry("summary"), *(config_entry(config) for config in configs)],
        languages=sorted({r["language"] for r in summary_rows}),
        rows={"summary": len(summary_rows), **counts},
        tags=["alignment", "clip-score", "evaluation", "results"],
    ).save(folder / "README.md")
    return f"CLIP scores of {sum(counts.values())} images"


def run(args: Arguments) -> Published:
    return execute(STAGE, args, build)


def main(argv: list[str] | None = None) -> None:
    stage_main(Arguments, STAGE, run, argv)


if __name__ == "__main__":
    main()
