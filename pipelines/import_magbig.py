"""Stage 1 (alternative): MAGBIG's prompt sets as a prompts dataset, so results sit next to the paper's.

    python -m pipelines.import_magbig --source felfri/MAGBIG                # the Hub dataset
    python -m pipelines.import_magbig --source path/to/MAGBIG/prompts       # the code repo's CSV files

One config per language, as `generate_prompts` and `translate_prompts` make: each of MAGBIG's sets
is a prompt variant (`magbig_direct`, `magbig_indirect`, `magbig_feminine`, `magbig_gender_star`,
`magbig_adjectives`), one `prompt_id` per occupation (or adjective) and set is shared by all ten
languages, and `profession` holds MAGBIG's English name. `generate_images --variants magbig_direct`
then makes the images of MAGBIG's direct occupation prompts (151 occupations in its files).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.artifacts import schemas
from pipelines.artifacts.cards import dataset_card
from pipelines.artifacts.dataset_files import DatasetWriter
from pipelines.errors import DataError
from pipelines.harness.config import StageArguments, input_field
from pipelines.harness.stage import Stage, StageRun
from pipelines.prompting import magbig
from pipelines.prompting.grammar import LANGUAGES, MASCULINE_GENERIC, describe_neutral_forms, neutral_form_of


def magbig_forms(languages: list[str]) -> dict[str, str]:
    """MAGBIG's direct prompts name the person with the generic (mostly masculine) noun, in every
    language whose nouns carry a gender (eines Buchhalters, d'un comptable)."""
    return {language: neutral_form_of(language, MASCULINE_GENERIC) for language in languages}


@dataclass
class Arguments(StageArguments):
    INPUTS = {"source": "source"}
    source: str = input_field(
        "MAGBIG's prompts: the Hub dataset (felfri/MAGBIG[@rev]) or a folder of its CSV files.",
        default="felfri/MAGBIG",
    )
    output_repo: str = field(default="magbig-prompts", metadata={"help": "Prompts dataset repo to publish."})
    sets: list[str] = field(
        default_factory=lambda: ["direct", "indirect", "gender_star", "feminine", "adjectives"],
        metadata={"help": f"MAGBIG's sets, any of {magbig.SETS}; a set the source lacks is skipped and noted."},
    )
    languages: list[str] = field(
        default_factory=lambda: list(LANGUAGES), metadata={"help": f"Languages, any of {tuple(LANGUAGES)}."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_choice("sets", magbig.SETS)
        self.check_choice("languages", LANGUAGES)


class ImportMagbig(Stage):
    name = "import_magbig"
    Arguments = Arguments

    def model_options(self, name: str, args: Any = None) -> dict[str, Any]:
        return {"what": name, "kinds": ("store", "hub", "folder"), "repo_type": "dataset"}

    def estimate(self, args: Arguments, estimates: Any, costs: Any) -> Any:
        from pipelines.harness.estimate import MAGBIG_SIZES, Estimate, download_of

        variants = {magbig.VARIANT[name]: MAGBIG_SIZES[name] for name in args.sets}
        source = Path(args.source).expanduser()
        if source.is_dir():  # count the files themselves
            variants = {}
            for name in args.sets:
                prompts = magbig.read_set(source, name)
                if prompts:
                    variants[magbig.VARIANT[name]] = len(next(iter(prompts.values())))
        forms = magbig_forms(list(args.languages))
        estimates.put(
            args.repo_id(args.output_repo),
            kind="prompts",
            languages=list(args.languages),
            variants=variants,
            neutral_forms=forms,
        )
        download = download_of(args.source, args, estimates, "MAGBIG prompts")
        return Estimate(
            downloads=[download] if download else [],
            makes=", ".join(f"{variant} ({count})" for variant, count in variants.items())
            + f" in {len(args.languages)} languages; the direct prompts' form: {describe_neutral_forms(forms)}",
        )

    def build(self, run: StageRun, folder: Path) -> str:
        args: Arguments = run.args
        source = run.model("source").path
        rows: dict[str, list[dict]] = {language: [] for language in args.languages}
        counts, skipped = {}, []
        for name in args.sets:
            prompts = magbig.read_set(source, name)
            if prompts is None:
                skipped.append(name)
                continue
            names = magbig.check_aligned(name, prompts)
            counts[name] = len(names)
            for language in args.languages:
                if language in prompts:
                    rows[language] += magbig.magbig_rows(prompts, name, language, names)
        if not counts:
            raise DataError(f"source={args.source!r}: none of MAGBIG's sets ({', '.join(args.sets)}) is there")
        writer = DatasetWriter(folder, schemas.PROMPTS, rows_per_shard=50_000)
        for language, language_rows in rows.items():
            writer.write(language, language_rows)
        written = writer.close()
        configs = [language for language in args.languages if written.get(language)]
        notes = [f"Set(s) not in the source, skipped: {', '.join(skipped)}."] if skipped else []
        notes.append(
            "The direct prompts name the person with the generic noun (`neutral_form` in each config's info): "
            f"{describe_neutral_forms(magbig_forms(configs))}."
        )
        dataset_card(
            repo_id=run.output_repo_id,
            title="MAGBIG prompts",
            description=(
                "The prompt sets of MAGBIG (Friedrich et al., arXiv:2401.16092), imported from "
                f"`{run.inputs['source']}` (license: Apache-2.0), one config per language, lined up by "
                "`prompt_id`. Variants: "
                + ", ".join(f"`{magbig.VARIANT[name]}` ({count} entries)" for name, count in counts.items())
                + ". `profession` holds MAGBIG's English name in every language."
            ),
            lineage=run.lineage,
            configs=configs,
            config_info={
                language: {"language": language, "neutral_form": form}
                for language, form in magbig_forms(configs).items()
            },
            folder=folder,
            languages=configs,
            tags=["prompts", "occupations", "magbig"],
            notes=notes,
        ).save(folder / "README.md")
        return f"MAGBIG prompts: {', '.join(f'{n} {c}' for n, c in counts.items())}"


STAGE = ImportMagbig()
run = STAGE.run

if __name__ == "__main__":
    STAGE.main()
