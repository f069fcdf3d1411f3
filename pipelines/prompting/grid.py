"""The prompts dataset: its schema, and the rows of one language realised from attributes.

One config per language. Every config has the same `prompt_id`s in the same order, so languages
line up row for row. Each row is one of four variants:

- `gendered`: the training grid, one row per combination of the attribute lists;
- `neutral`: the same grid without the gender (one row per combination of the other lists);
- `eval_direct`: "a photo of the face of a/an <occupation>" (MAGBIG's direct prompt: in languages
  with grammatical gender, the generic form);
- `eval_indirect`: a gender-neutral paraphrase, "... of a person who works as a/an <occupation>".
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import datasets

from pipelines.prompting.attributes import NEUTRAL, prompt_id
from pipelines.prompting.grammar import Grammar, GridRow

GRID_COLUMNS = ("style", "age", "gender", "profession", "dressing", "place")
PROMPT_FEATURES = datasets.Features(
    {
        "prompt_id": datasets.Value("string"),
        "variant": datasets.Value("string"),
        "language": datasets.Value("string"),
        "prompt": datasets.Value("string"),
        **{column: datasets.Value("string") for column in GRID_COLUMNS},
    }
)


@dataclass(frozen=True)
class GridLists:
    styles: list[str]
    ages: list[str]
    genders: list[str]
    professions: list[str]
    dressings: list[str]
    places: list[str]

    def grid_size(self) -> int:
        return (
            len(self.styles)
            * len(self.ages)
            * len(self.genders)
            * len(self.professions)
            * len(self.dressings)
            * len(self.places)
        )


def grid_rows(lists: GridLists, grammar: Grammar) -> Iterator[dict[str, str | None]]:
    """Every row of the prompts dataset, realised by `grammar` (English, or any language)."""
    for variant, genders in (("gendered", lists.genders), ("neutral", [NEUTRAL])):
        for values in itertools.product(
            lists.styles, lists.ages, genders, lists.professions, lists.dressings, lists.places
        ):
            yield _with_prompt(
                {"prompt_id": prompt_id(variant, *values), "variant": variant, **dict(zip(GRID_COLUMNS, values))},
                grammar,
            )
    for profession in lists.professions:
        for variant in ("eval_direct", "eval_indirect"):
            row = dict.fromkeys(GRID_COLUMNS) | {"prompt_id": prompt_id(variant, profession), "variant": variant}
            row |= {"profession": profession, "gender": NEUTRAL if variant == "eval_indirect" else None}
            yield _with_prompt(row, grammar)


def _with_prompt(row: dict[str, str | None], grammar: Grammar) -> dict[str, str | None]:
    return {**row, "language": grammar.code, "prompt": realise(row, grammar)}


def realise(row: dict[str, str | None], grammar: Grammar) -> str:
    """The prompt of a row (of any language) in `grammar`'s language, from its attributes."""
    if row["variant"] in ("gendered", "neutral"):
        return grammar.grid(GridRow(*(row[column] for column in GRID_COLUMNS)))
    if row["variant"] == "eval_direct":
        return grammar.eval_direct(row["profession"])
    return grammar.eval_indirect(row["profession"])


def prompts_description(lists: GridLists) -> str:
    neutral = lists.grid_size() // len(lists.genders)
    return (
        "Prompts of the multilingual text-to-image bias study, one config per language, lined up by "
        "`prompt_id`. Variants: `gendered` (the grid `<STYLE> photo of a <AGE> <GENDER> <PROFESSION> "
        f"<DRESSING> <PLACE>`, {lists.grid_size()} rows), `neutral` (the grid without gender, {neutral} rows), "
        f"`eval_direct` and `eval_indirect` (MAGBIG-style face prompts, {len(lists.professions)} occupations each). "
        "Attribute columns hold the English values in every language."
    )
