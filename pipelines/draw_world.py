"""The planted-bias world's pictures, as an images dataset: the offline study's ground truth.

    python -m pipelines.draw_world --input prompts --languages en de zh ja

For every prompt of the chosen variants, occupations and languages, draws pictures of the world
(`pipelines.modeling.world`): a disc whose colour is the figure's perceived gender. A prompt that
names a gender (`gendered`, `eval_female`, `eval_male`) always shows its own colour, in
`--images_per_gendered_prompt` pictures; any other prompt shows the planted share of its
(occupation, language), exactly (the female pictures are a shuffled `round(share x n)`), in
`--images_per_prompt` pictures. Drawing the evaluation templates too (`eval_direct`, the explicit
prompts, `eval_ethical`) gives the prompt interventions a known answer: the direct prompt's is the
planted share, the explicit prompts' their own gender, and the ethical suffix's the planted share
(the world plants no effect of it, so the row checks that none is measured). The dataset has the layout of
`generate_images`' (configs `<language>_<variant>`, the same columns; `model` is `world:drawn`), so
`collect_datasets` captions it for training and `classify` reads it like generated images. The card
holds the planted shares.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.artifacts import schemas
from pipelines.artifacts.cards import dataset_card
from pipelines.artifacts.dataset_files import DatasetWriter
from pipelines.errors import ConfigError, DataError
from pipelines.harness.config import StageArguments, input_field
from pipelines.harness.stage import Stage, StageRun
from pipelines.modeling import world
from pipelines.prompting import grid

DRAWN_VARIANTS = ("gendered", "neutral", "eval_direct", "eval_indirect", "eval_female", "eval_male", "eval_ethical")
DRAWN_MODEL = "world:drawn"
# The variants whose prompts name a gender (`names_gender` of their rows): the grid's own record.
GENDER_NAMING_VARIANTS = ("gendered", *(v for v, gender in grid.EVAL_GENDERS.items() if gender in ("female", "male")))


@dataclass
class Arguments(StageArguments):
    INPUTS = {"input": "prompts"}
    input: str = input_field("Prompts dataset (ns/name@rev) whose prompts caption the world.")
    output_repo: str = field(default="world-images", metadata={"help": "Images dataset repo to publish."})
    languages: list[str] = field(
        default_factory=lambda: list(world.LANGUAGE_FACTORS),
        metadata={"help": f"Languages to draw, any of {tuple(world.LANGUAGE_FACTORS)}."},
    )
    variants: list[str] = field(
        default_factory=lambda: ["gendered", "neutral"],
        metadata={"help": f"Prompt variants to draw, any of {DRAWN_VARIANTS}."},
    )
    professions: list[str] = field(
        default_factory=lambda: list(world.OCCUPATION_SHARES),
        metadata={"help": f"Occupations to draw, any of {tuple(world.OCCUPATION_SHARES)}."},
    )
    # Many pictures per neutral prompt: with 48, the Chinese firefighter came out 0.07-0.11 low in every
    # training tried (quirks of its pictures); 192 cost no training time (steps are what cost).
    images_per_prompt: int = field(
        default=192, metadata={"help": "Pictures drawn for every prompt that names no gender (the planted share)."}
    )
    # A third as many for gendered prompts: each has one answer, learnt from a few pictures, while a
    # neutral prompt's share must be learnt exactly; more gendered pictures pull the neutral shares off.
    images_per_gendered_prompt: int = field(
        default=64, metadata={"help": "Pictures drawn for every prompt that names a gender (each shows its own)."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the drawing."})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_choice("languages", tuple(world.LANGUAGE_FACTORS))
        self.check_choice("professions", tuple(world.OCCUPATION_SHARES))
        self.check_choice("variants", DRAWN_VARIANTS)
        self.check_at_least(1, "images_per_prompt")
        self.check_at_least(1, "images_per_gendered_prompt")
        # Every picture of a prompt is drawn in memory at once (16 x 16 x 3 bytes and more as floats).
        self.check_at_most(100_000, "images_per_prompt", "images_per_gendered_prompt", why="pictures per prompt")
        if not self.languages or not self.professions or not self.variants:
            raise ConfigError("languages, professions and variants: at least one each")


def picture_seed(seed: int, language: str, prompt_id: str) -> int:
    """The drawing seed of one prompt's pictures: the same pictures whatever else is drawn."""
    digest = hashlib.sha256(f"{seed}:{language}:{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def names_gender(row: dict[str, Any]) -> bool:
    """Whether a prompt row asks for a gender (its pictures show it), rather than carrying the planted share."""
    return row["gender"] in ("female", "male")


def draw_prompt(row: dict[str, Any], count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(female flags, pictures) for one prompt: its own gender, or the planted share exactly."""
    rng = np.random.default_rng(seed)
    if names_gender(row):
        female = np.full(count, row["gender"] == "female")
    else:
        share = world.planted_share(row["profession"], row["language"])
        female = rng.permutation(np.arange(count) < round(share * count))
    return female, world.draw_figures(female, rng)


def png(picture: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    return buffer.getvalue()


class DrawWorld(Stage):
    name = "draw_world"
    Arguments = Arguments

    def estimate(self, args: Arguments, estimates: Any, costs: Any) -> Any:
        from pipelines.harness.estimate import Estimate, prompt_count

        prompts = estimates.get(args.repo_id(args.input))
        configs = {}
        for language in args.languages:
            for variant in args.variants:
                named = variant in GENDER_NAMING_VARIANTS
                per_prompt = args.images_per_gendered_prompt if named else args.images_per_prompt
                configs[schemas.config_name(language, variant)] = (
                    prompt_count(prompts, variant, args.professions) * per_prompt
                )
        estimates.put(args.repo_id(args.output_repo), kind="images", configs=configs)
        return Estimate(
            reads=[args.input],
            makes=f"{sum(configs.values()):,} pictures of the planted-bias world in {len(configs)} configs "
            "(a moment's work: drawn, not generated)",
        )

    def build(self, run: StageRun, folder: Path) -> str:
        args: Arguments = run.args
        prompts = run.dataset("input")
        prompts.select(args.languages, "languages")  # each language a config of the prompts, else one line
        writer = DatasetWriter(folder, schemas.IMAGES, rows_per_shard=5000)
        configs: dict[str, dict[str, str]] = {}
        shares: dict[tuple[str, str], float] = {}  # (language, occupation) -> planted share, for the card
        for language in args.languages:
            prompts.require_columns(language, ["prompt_id", "prompt", "variant", *schemas.GRID_COLUMNS])
            for row in prompts.rows(language):
                if row["variant"] not in args.variants or row["profession"] not in args.professions:
                    continue
                config = schemas.config_name(language, row["variant"])
                configs[config] = {"language": language, "variant": row["variant"]}
                seed = picture_seed(args.seed, language, row["prompt_id"])
                count = args.images_per_gendered_prompt if names_gender(row) else args.images_per_prompt
                _, pictures = draw_prompt({**row, "language": language}, count, seed)
                writer.write(config, [self.image_row(row, language, i, p, seed) for i, p in enumerate(pictures)])
                if not names_gender(row):
                    shares[(language, row["profession"])] = world.planted_share(row["profession"], language)
        rows = writer.close()
        if not rows:
            raise DataError(
                f"{prompts.name} has no {' or '.join(args.variants)} prompt of {', '.join(args.professions)}: "
                "nothing to draw"
            )
        dataset_card(
            repo_id=run.output_repo_id,
            title="The planted-bias world",
            description=(
                f"{args.images_per_prompt} pictures per prompt that names no gender and "
                f"{args.images_per_gendered_prompt} per prompt that names one, of `{run.inputs['input']}` "
                f"({', '.join(args.variants)} prompts of {', '.join(args.professions)}), drawn, not generated: "
                f"a {world.SIZE} px disc whose colour is the figure's perceived gender (orange female, blue male). "
                "Prompts that name a gender show its colour; the others show the planted share of female figures "
                "of their occupation and language, exactly (the world plants no effect of the ethical suffix). "
                "A model trained on it has a known bias for the study to measure: it validates the study's "
                "machinery, not any real model."
            ),
            lineage=run.lineage,
            configs=list(rows),
            config_info=configs,
            folder=folder,
            languages=list(args.languages),
            tables=[
                {
                    "title": "Planted share of female figures (prompts that name no gender)",
                    "columns": ["language", "occupation", "planted share"],
                    "rows": [[lang, occ, f"{share:.2f}"] for (lang, occ), share in shares.items()],
                }
            ],
            tags=["images", "synthetic", "planted-bias"],
            planted_shares=[
                {"language": lang, "profession": occ, "share": round(share, 4)}
                for (lang, occ), share in shares.items()
            ],
        ).save(folder / "README.md")
        return f"{sum(rows.values())} pictures, {len(shares)} planted cells"

    @staticmethod
    def image_row(row: dict, language: str, index: int, picture: np.ndarray, seed: int) -> dict[str, Any]:
        return {
            "image": {"bytes": png(picture), "path": None},
            **{column: row[column] for column in ("prompt_id", "prompt", "variant")},
            "language": language,
            **{column: row[column] for column in schemas.GRID_COLUMNS},
            "sample_index": index,
            "seed": seed,
            "model": DRAWN_MODEL,
            "model_revision": None,
            "scheduler": None,
            "num_inference_steps": 0,
            "guidance_scale": 0.0,
            "height": world.SIZE,
            "width": world.SIZE,
            "rejected": 0,
            "face_check": None,
            "intervention": "none",
            "generation_prompt": row["prompt"],
            "negative_prompt": None,
            "editing_prompts": [],
            "seconds": 0.0,
        }


STAGE = DrawWorld()
run = STAGE.run

if __name__ == "__main__":
    STAGE.main()
