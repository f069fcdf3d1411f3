"""Stage 4: a training dataset: images from one images dataset, captions from one or more languages.

    python -m pipelines.collect_datasets --prompts prompts --images images-train \\
        --image_configs en_gendered --caption_languages en de zh ja

The reference study's debiasing signal is the default: each image made from a *gendered* prompt
("a male barber") is captioned with the *gender-neutral* twin of that prompt ("a barber"), so
fine-tuning teaches the model that the neutral prompt covers every gender. Images and captions are
joined on `prompt_id` (`pipelines.prompting.grid.neutral_twin`), so "English images, prompts in
the reference's four languages" is `--image_configs en_gendered --caption_languages en de zh ja`:
every English image appears once per caption language. `--caption_variant same` captions an image
with its own prompt, and `mixed` gives a share of the images their own gendered prompt back
(`--gendered_share`), which keeps a user's "female doctor" working after the fine-tune.

Columns `image` and `text`, as diffusers' training script expects, plus provenance. Images pass
through as stored bytes, shard by shard.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from pipelines.artifacts import schemas
from pipelines.artifacts.cards import dataset_card
from pipelines.artifacts.dataset_files import DatasetWriter, decode_image
from pipelines.errors import ConfigError, DataError
from pipelines.harness.config import StageArguments, input_field
from pipelines.harness.stage import Stage, StageRun
from pipelines.prompting.grammar import describe_neutral_forms
from pipelines.prompting.grid import neutral_twin

CAPTION_VARIANTS = ("neutral", "same", "mixed")
# The reference study's four languages, and its experiments (image source x captions x variant).
REFERENCE_LANGUAGES = ["en", "de", "zh", "ja"]


@dataclass
class Arguments(StageArguments):
    INPUTS = {"prompts": "prompts", "images": "images"}
    prompts: str = input_field("Prompts dataset the captions come from.", default="prompts")
    images: str = input_field("Images dataset the images come from.", default="images")
    output_repo: str = field(default="train", metadata={"help": "Training dataset repo to publish."})
    image_configs: list[str] = field(
        default_factory=list, metadata={"help": "Configs of the images dataset to take (all if empty)."}
    )
    professions: list[str] = field(
        default_factory=list,
        metadata={"help": "Occupations to take (all if empty): the others stay held out of training."},
    )
    caption_languages: list[str] = field(
        default_factory=lambda: ["same"],
        metadata={"help": "Caption languages; 'same' (each image's own prompt language) or 'all'."},
    )
    caption_variant: str = field(
        default="neutral",
        metadata={
            "help": f"One of {CAPTION_VARIANTS}. neutral (the reference study): each image's gender-neutral twin "
            "prompt; same: the image's own prompt; mixed: the twin, or for a share of images (gendered_share) "
            "their own prompt."
        },
    )
    gendered_share: float = field(
        default=0.5, metadata={"help": "mixed: the share of images captioned with their own (gendered) prompt."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_choice("caption_variant", CAPTION_VARIANTS)
        if not self.caption_languages:
            raise ConfigError("caption_languages: at least one language, 'same' or 'all'")
        if not 0 <= self.gendered_share <= 1:
            raise ConfigError(f"gendered_share={self.gendered_share}: between 0 and 1")


def keeps_own_caption(image: dict, share: float) -> bool:
    """Whether a `mixed` dataset captions this image with its own prompt: a fixed draw per image."""
    digest = hashlib.sha256(f"{image['prompt_id']}:{image['sample_index']}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def caption_id(image: dict, variant: str, share: float) -> str:
    """The prompt_id of an image's caption."""
    if variant == "same" or (variant == "mixed" and keeps_own_caption(image, share)):
        return image["prompt_id"]
    return neutral_twin(image)


class CollectDatasets(Stage):
    name = "collect_datasets"
    Arguments = Arguments

    def estimate(self, args: Arguments, estimates: Any, costs: Any) -> Any:
        from pipelines.harness.estimate import Estimate

        images = estimates.get(args.repo_id(args.images)).get("configs", {})
        chosen = {
            config: count for config, count in images.items() if not args.image_configs or config in args.image_configs
        }
        prompts = estimates.get(args.repo_id(args.prompts))
        languages = [lang for lang in args.caption_languages if lang not in ("same", "all")]
        if "all" in args.caption_languages:
            languages = prompts.get("languages", [])
        per_image = max(len(languages), 1) if args.caption_languages != ["same"] else 1
        rows = sum(chosen.values()) * per_image
        forms = {lang: prompts.get("neutral_forms", {}).get(lang, "not recorded") for lang in languages}
        estimates.put(args.repo_id(args.output_repo), kind="training", rows=rows, caption_forms=forms)
        said = f"; captions' gender-neutral form: {describe_neutral_forms(forms)}" if forms else ""
        return Estimate(
            reads=[args.images, args.prompts],
            makes=f"{rows:,} image-caption pairs ({args.caption_variant} captions){said}",
        )

    def build(self, run: StageRun, folder: Path) -> str:
        args: Arguments = run.args
        prompts, images = run.dataset("prompts"), run.dataset("images")
        image_configs = images.select(args.image_configs, "image_configs")
        image_languages = {images.config_info(config).get("language") for config in image_configs} - {None}
        if "all" in args.caption_languages:
            caption_languages = list(prompts.configs)
        else:
            caption_languages = [language for language in args.caption_languages if language != "same"]
            missing = sorted(set(caption_languages) - set(prompts.configs))
            if missing:
                have = ", ".join(prompts.configs)
                raise DataError(f"caption_languages: {', '.join(missing)} not in {prompts.name} (it has {have})")
        if "same" in args.caption_languages:
            caption_languages = list(dict.fromkeys([*caption_languages, *sorted(image_languages)]))
        captions = {
            (language, row["prompt_id"]): row for language in caption_languages for row in prompts.rows(language)
        }
        have = {row["profession"] for row in captions.values()}
        unknown = [p for p in args.professions if p not in have]
        if unknown:
            raise ConfigError(f"professions: {', '.join(map(repr, unknown))} not in {prompts.name} "
                              f"(it has {', '.join(sorted(have))})")  # fmt: skip

        writer = DatasetWriter(folder, schemas.TRAINING, rows_per_shard=2000)
        missing_captions = undecodable = 0
        for config in image_configs:
            images.require_columns(config, ["image", "prompt_id", "variant", "language", *schemas.GRID_COLUMNS])
            for batch in tqdm(images.batches(config, batch_size=64), desc=f"collect {config}", file=sys.stderr):
                out = []
                for image in batch:
                    if args.professions and image["profession"] not in args.professions:
                        continue
                    if decode_image(image["image"]) is None:  # would stop or skip a training run later
                        undecodable += 1
                        continue
                    languages = [image["language"]] if args.caption_languages == ["same"] else caption_languages
                    for language in languages:
                        caption = captions.get(
                            (language, caption_id(image, args.caption_variant, args.gendered_share))
                        )
                        if caption is None:
                            missing_captions += 1
                            continue
                        out.append(
                            {
                                "image": image["image"],
                                "text": caption["prompt"],
                                "prompt_id": caption["prompt_id"],
                                "caption_language": language,
                                "caption_variant": caption["variant"],
                                "image_config": config,
                                "image_prompt": image["prompt"],
                                "sample_index": image["sample_index"],
                                "seed": image["seed"],
                                "profession": image["profession"],
                                "gender": caption["gender"],
                                "image_gender": image["gender"],
                            }
                        )
                writer.write("default", out)
        rows = writer.close()
        if not rows.get("default"):
            raise DataError("the join of images and captions is empty: check image_configs and caption_languages")
        forms = {
            language: prompts.config_info(language).get("neutral_form", "not recorded")
            for language in caption_languages
        }
        notes = [f"{missing_captions} image/caption pairs had no caption in the chosen variant and were left out."]
        if undecodable:
            notes.append(f"{undecodable} image(s) of the source could not be decoded and were left out.")
        variant = {
            "neutral": "each image's gender-neutral twin prompt (the reference study's debiasing signal)",
            "same": "each image's own prompt",
            "mixed": f"the gender-neutral twin, or for {args.gendered_share:.0%} of images their own prompt",
        }[args.caption_variant]
        dataset_card(
            repo_id=run.output_repo_id,
            title="Training dataset",
            description=(
                f"Images from `{run.inputs['images']}` ({', '.join(image_configs)}) captioned with {variant}, "
                f"from `{run.inputs['prompts']}` in {', '.join(caption_languages)}, joined on `prompt_id`"
                + (
                    f", occupations {', '.join(args.professions)} only (the others held out)"
                    if args.professions
                    else ""
                )
                + ". Columns `image` and `text` for diffusers' `train_text_to_image.py`."
            ),
            lineage=run.lineage,
            configs=["default"],
            folder=folder,
            languages=caption_languages,
            tags=["training", "debiasing"],
            notes=[
                *(notes if missing_captions else notes[1:]),
                f"The captions' gender-neutral form (from their prompts' card): {describe_neutral_forms(forms)}.",
            ],
            caption_forms=forms,
        ).save(folder / "README.md")
        return f"Training dataset: {rows['default']} pairs"


STAGE = CollectDatasets()
run = STAGE.run

if __name__ == "__main__":
    STAGE.main()
