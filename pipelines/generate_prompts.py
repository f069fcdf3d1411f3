"""Stage 1: the English occupation prompt grid and the evaluation prompts, as a prompts dataset.

    python -m pipelines.generate_prompts [--recipe R.yaml] [--professions doctor nurse ...]

Publishes config `en`: the training grid `<STYLE> photo of a <AGE> <GENDER> <PROFESSION> <DRESSING>
<PLACE>` (gendered and gender-neutral) and per occupation the evaluation prompts: direct, indirect
(gender-neutral), explicitly female and male, and with the ethical-intervention suffix.
`translate_prompts` adds the other languages, row for row; it reads these lists from this stage's
lineage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.artifacts import schemas
from pipelines.artifacts.cards import dataset_card
from pipelines.artifacts.dataset_files import DatasetWriter
from pipelines.errors import ConfigError
from pipelines.harness.config import StageArguments
from pipelines.harness.stage import Stage, StageRun
from pipelines.prompting import grid
from pipelines.prompting.grammar import UNMARKED, load_grammar


def _list(default: list[str], help: str) -> list[str]:
    return field(default_factory=lambda: list(default), metadata={"help": help})


@dataclass
class Arguments(StageArguments):
    output_repo: str = field(default="prompts", metadata={"help": "Prompts dataset repo to publish."})
    styles: list[str] = _list(grid.STYLES, "<STYLE> values.")
    ages: list[str] = _list(grid.AGES, "<AGE> values.")
    genders: list[str] = _list(grid.GENDERS, "<GENDER> values of the gendered prompts.")
    professions: list[str] = _list(grid.PROFESSIONS, "<PROFESSION> values (the reference list, cleaned).")
    dressings: list[str] = _list(grid.DRESSINGS, "<DRESSING> values.")
    places: list[str] = _list(grid.PLACES, "<PLACE> values.")

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in grid.LIST_NAMES:
            values = getattr(self, name)
            if not values:
                raise ConfigError(f"{name}: needs at least one value")
            duplicates = sorted({v for v in values if values.count(v) > 1})
            if duplicates:
                raise ConfigError(f"{name}: duplicate value(s) {', '.join(map(repr, duplicates))}")
            if any(not v.strip() for v in values):
                raise ConfigError(f"{name}: empty value")
        conditions = [p for p in self.professions if p.strip().lower() in grid.NOT_OCCUPATIONS]
        if conditions:
            raise ConfigError(
                f"professions: {', '.join(map(repr, conditions))} name(s) a condition, not an occupation "
                "('a person who works as a prisoner'); give occupations"
            )
        unknown = sorted(set(self.genders) - set(grid.GENDERS))
        if unknown:
            raise ConfigError(f"genders: unknown {', '.join(map(repr, unknown))}; allowed {', '.join(grid.GENDERS)}")

    @property
    def lists(self) -> grid.GridLists:
        return grid.GridLists(*(getattr(self, name) for name in grid.LIST_NAMES))


class GeneratePrompts(Stage):
    name = "generate_prompts"
    Arguments = Arguments

    def estimate(self, args: Arguments, estimates: Any, costs: Any) -> Any:
        from pipelines.harness.estimate import Estimate

        lists = args.lists
        variants = {
            "gendered": lists.grid_size(),
            "neutral": lists.grid_size() // len(lists.genders),
            **{variant: len(lists.professions) for variant in grid.EVAL_GENDERS},
        }
        estimates.put(
            args.repo_id(args.output_repo),
            kind="prompts",
            languages=["en"],
            variants=variants,
            professions=list(lists.professions),
            neutral_forms={"en": UNMARKED},
        )
        return Estimate(makes=f"{sum(variants.values()):,} English prompts ({len(lists.professions)} occupations)")

    def build(self, run: StageRun, folder: Path) -> str:
        args: Arguments = run.args
        writer = DatasetWriter(folder, schemas.PROMPTS, rows_per_shard=50_000)
        writer.write("en", grid.grid_rows(args.lists, load_grammar("en")))
        writer.close()
        notes = []
        if args.professions == grid.PROFESSIONS:
            notes = ["Professions: the reference study's list, cleaned:", *grid.REFERENCE_FIXES]
        dataset_card(
            repo_id=run.output_repo_id,
            title="Occupation prompts",
            description=grid.prompts_description(args.lists),
            lineage=run.lineage,
            configs=["en"],
            config_info={"en": {"language": "en", "neutral_form": UNMARKED}},
            folder=folder,
            languages=["en"],
            tags=["prompts", "occupations"],
            notes=notes,
        ).save(folder / "README.md")
        return f"English prompt grid: {args.lists.grid_size()} gendered rows, {len(args.professions)} occupations"


STAGE = GeneratePrompts()
run = STAGE.run

if __name__ == "__main__":
    STAGE.main()
