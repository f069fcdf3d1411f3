"""Stage 1: the English occupation prompt grid and the evaluation prompts, as a prompts dataset.

    python -m pipelines.generate_prompts [--recipe R.yaml] [--professions doctor nurse ...]

Publishes config `en`: the training grid `<STYLE> photo of a <AGE> <GENDER> <PROFESSION> <DRESSING>
<PLACE>` (gendered and gender-neutral) and per occupation the evaluation prompts (direct and
indirect). `translate_prompts` adds the other languages, row for row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipelines.artifacts.cards import dataset_card
from pipelines.artifacts.dataset_files import DatasetWriter, config_entry
from pipelines.errors import ConfigError
from pipelines.harness.config import StageArguments
from pipelines.harness.stage import Published, StageRun, execute, stage_main
from pipelines.prompting import attributes
from pipelines.prompting.grammar import load_grammar
from pipelines.prompting.grid import PROMPT_FEATURES, GridLists, grid_rows, prompts_description

STAGE = "generate_prompts"


def _list(default: list[str], help: str) -> list[str]:
    return field(default_factory=lambda: list(default), metadata={"help": help})


@dataclass
class Arguments(StageArguments):
    output_repo: str = field(default="prompts", metadata={"help": "Prompts dataset repo to publish."})
    styles: list[str] = _list(attributes.STYLES, "<STYLE> values.")
    ages: list[str] = _list(attributes.AGES, "<AGE> values.")
    genders: list[str] = _list(attributes.GENDERS, "<GENDER> values of the gendered prompts.")
    professions: list[str] = _list(attributes.PROFESSIONS, "<PROFESSION> values (the reference list, cleaned).")
    dressings: list[str] = _list(attributes.DRESSINGS, "<DRESSING> values.")
    places: list[str] = _list(attributes.PLACES, "<PLACE> values.")

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("styles", "ages", "genders", "professions", "dressings", "places"):
            values = getattr(self, name)
            if not values:
                raise ConfigError(f"{name}: needs at least one value")
            duplicates = sorted({v for v in values if values.count(v) > 1})
            if duplicates:
                raise ConfigError(f"{name}: duplicate value(s) {', '.join(map(repr, duplicates))}")
            blank = [v for v in values if not v.strip()]
            if blank:
                raise ConfigError(f"{name}: empty value")
        unknown = sorted(set(self.genders) - set(attributes.GENDERS))
        if unknown:
            raise ConfigError(
                f"genders: unknown {', '.join(map(repr, unknown))}; allowed {', '.join(attributes.GENDERS)}"
            )

    @property
    def lists(self) -> GridLists:
        return GridLists(self.styles, self.ages, self.genders, self.professions, self.dressings, self.places)


def build(run: StageRun, folder: Path) -> str:
    args: Arguments = run.args
    writer = DatasetWriter(folder, PROMPT_FEATURES, rows_per_shard=50_000)
    writer.write("en", grid_rows(args.lists, load_grammar("en")))
    rows = writer.close()
    notes = []
    if args.professions == attributes.PROFESSIONS:
        notes = ["Professions: the reference study's list, cleaned:", *attributes.REFERENCE_FIXES]
    dataset_card(
        repo_id=run.output_repo_id,
        title="Occupation prompts",
        description=prompts_description(args.lists),
        lineage=run.lineage,
        configs=[config_entry("en")],
        languages=["en"],
        rows=rows,
        tags=["prompts", "occupations"],
        notes=notes,
    ).save(folder / "README.md")
    return f"English prompt grid: {args.lists.grid_size()} gendered rows, {len(args.professions)} occupations"


def run(args: Arguments) -> Published:
    return execute(STAGE, args, build)


def main(argv: list[str] | None = None) -> None:
    stage_main(Arguments, STAGE, run, argv)


if __name__ == "__main__":
    main()
