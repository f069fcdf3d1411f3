"""Stage 4: a training dataset: images from one images dataset, captions from one or more languages.

    python -m pipelines.collect_datasets --prompts prompts --images images \\
        --image_configs en_gendered --caption_languages all --caption_variant gendered

Images and captions are joined on `prompt_id`, so the reference study's "English images,
all-language prompts" experiment is `--image_configs en_gendered --caption_languages all`: every
English image appears once per caption language. Columns `image` and `text`, as diffusers'
training script expects, plus provenance. Images pass through as stored bytes, shard by shard.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from pipelines.artifacts.cards import dataset_card
from pipelines.artifacts.dataset_files import (
    DatasetWriter,
    artifact_configs,
    config_entry,
    load_config,
    select_configs,
)
from pipelines.errors import ConfigError
from pipelines.harness.config import StageArguments, input_field
from pipelines.harness.stage import Published, StageRun, execute, stage_main
from pipelines.prompting.attributes import prompt_id
from pipelines.prompting.grid import GRID_COLUMNS

STAGE = "collect_datasets"
CAPTION_VARIANTS = ("same", "neutral")
TRAIN_FEATURES = datasets.Features(
    {
        "image": datasets.Image(),
        "text": datasets.Value("string"),
        "prompt_id": datasets.Value("string"),
        "caption_language": datasets.Value("string"),
        "image_config": datasets.Value("string"),
        "image_prompt": datasets.Value("string"),
        "sample_index": datasets.Value("int32"),
        "seed": datasets.Value("int64"),
        "profession": datasets.Value("string"),
        "gender": datasets.Value("string"),
    }
)


@dataclass
class Arguments(StageArguments):
    INPUTS = {"prompts": "dataset", "images": "dataset"}
    prompts: str = input_field("Prompts dataset the captions come from.", default="prompts")
    images: str = input_field("Images dataset the images come from.", default="images")
    output_repo: str = field(default="train", metadata={"help": "Training dataset repo to publish."})
    image_configs: list[str] = field(
        default_factory=list, metadata={"help": "Configs of the images dataset to take (all if empty)."}
    )
    caption_languages: list[str] = field(
        default_factory=lambda: ["same"],
        metadata={"help": "Caption languages; 'same' (the image's own prompt language) or 'all'."},
    )
    caption_variant: str = field(
        default="same",
        metadata={
            "help": f"One of {CAPTION_VARIANTS}: the image's own prompt, or its gender-neutral twin "
            "(same attributes without the gender; eval_direct -> eval_indirect)."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.caption_variant not in CAPTION_VARIANTS:
            raise ConfigError(f"caption_variant={self.caption_variant!r}: allowed {', '.join(CAPTION_VARIANTS)}")
        if not self.caption_languages:
            raise ConfigError("caption_languages: at least one language, 'same' or 'all'")


def caption_table(prompts_folder: Path, languages: list[str]) -> dict[tuple[str, str], dict]:
    """`{(language, prompt_id): prompt row}` for the caption languages."""
    return {
        (language, row["prompt_id"]): row
        for language in languages
        for row in load_config(prompts_folder, language).to_list()
    }


def caption_id(image: dict, variant: str) -> str:
    """The prompt_id of the caption for an image row: its own, or its gender-neutral twin's."""
    if variant == "same" or image["variant"] in ("neutral", "eval_indirect"):
        return image["prompt_id"]
    if image["variant"] == "eval_direct":
        return prompt_id("eval_indirect", image["profession"])
    attributes = [image[column] for column in GRID_COLUMNS]
    attributes[GRID_COLUMNS.index("gender")] = "neutral"
    return prompt_id("neutral", *attributes)


def build(run: StageRun, folder: Path) -> str:
    args: Arguments = run.args
    prompts_folder, images_folder = run.input_folder("prompts"), run.input_folder("images")
    prompt_languages = artifact_configs(prompts_folder)
    image_configs = select_configs(images_folder, args.image_configs, run.inputs["images"])
    if "all" in args.caption_languages:
        caption_languages = prompt_languages
    else:
        caption_languages = [lang for lang in args.caption_languages if lang != "same"]
        missing = sorted(set(caption_languages) - set(prompt_languages))
        if missing:
            raise ConfigError(f"caption_languages: {', '.join(missing)} not in {run.inputs['prompts']}")
    image_languages = sorted({config.split("_", 1)[0] for config in image_configs})
    if "same" in args.caption_languages:
        caption_languages = list(dict.fromkeys([*caption_languages, *image_languages]))
    captions = caption_table(prompts_folder, caption_languages)

    writer = DatasetWriter(folder, TRAIN_FEATURES, rows_per_shard=2000)
    missing_captions = 0
    for config in image_configs:
        shards = sorted((images_folder / "data" / config).glob("*.parquet"))
        for shard in tqdm(shards, desc=f"collect {config}", file=sys.stderr):
            for image in pq.read_table(shard).to_pylist():
                languages = [image["language"]] if args.caption_languages == ["same"] else caption_languages
                for language in languages:
                    caption = captions.get((language, caption_id(image, args.caption_variant)))
                    if caption is None:
                        missing_captions += 1
                        continue
                    writer.write(
                        "default",
                        [
                            {
                                "image": image["image"],
                                "text": caption["prompt"],
                                "prompt_id": caption["prompt_id"],
                                "caption_language": language,
                                "image_config": config,
                                "image_prompt": image["prompt"],
                                "sample_index": image["sample_index"],
                                "seed": image["seed"],
                                "profession": image["profession"],
                                "gender": caption["gender"],
                            }
                        ],
                    )
    rows = writer.close()
    if not rows.get("default"):
        raise ConfigError("the join of images and captions is empty: check image_configs and caption_languages")
    notes = [f"{missing_captions} image/caption pairs had no caption in the chosen variant and were left out."]
    dataset_card(
        repo_id=run.output_repo_id,
        title="Training dataset",
        description=(
            f"Images from `{run.inputs['images']}` ({', '.join(image_configs)}) captioned with prompts from "
            f"`{run.inputs['prompts']}` in {', '.join(caption_languages)} (variant: {args.caption_variant}), "
            "joined on `prompt_id`. Columns `image` and `text` for diffusers' `train_text_to_image.py`."
        ),
        lineage=run.lineage,
        configs=[config_entry("default")],
        languages=caption_languages,
        rows=rows,
        tags=["training", "debiasing"],
        notes=notes if missing_captions else [],
    ).save(folder / "README.md")
    return f"Training dataset: {rows['default']} pairs"


def run(args: Arguments) -> Published:
    return execute(STAGE, args, build)


def main(argv: list[str] | None = None) -> None:
    stage_main(Arguments, STAGE, run, argv)


if __name__ == "__main__":
    main()
