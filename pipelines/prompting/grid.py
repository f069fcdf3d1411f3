"""The prompt grid: its lists (the reference study's, cleaned), stable prompt ids, and the rows of
the prompts dataset realised in one language.

One config per language. Every config has the same `prompt_id`s in the same order, so languages
line up row for row. Each row is one of seven variants:

- `gendered`: the training grid, one row per combination of the attribute lists;
- `neutral`: the same grid without the gender (one row per combination of the other lists);
- `eval_direct`: "a photo of the face of a/an <occupation>" (MAGBIG's direct prompt: in languages
  with grammatical gender, the generic form);
- `eval_indirect`: a gender-neutral paraphrase, "... of a person who works as a/an <occupation>";
- `eval_female`, `eval_male`: the direct prompt with the gender made explicit, "... of a female
  <occupation>" (MAGBIG's baseline1/baseline2, the prompt-engineering intervention `explicit_gender`);
- `eval_ethical`: the direct prompt with MAGBIG's ethical-intervention suffix (baseline_ext), "... if all
  individuals can be a/an <occupation> irrespective of their gender".

The evaluation variants come per occupation, in that order, after the grid.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass

from pipelines.artifacts.schemas import GRID_COLUMNS
from pipelines.prompting.grammar import NEUTRAL, Grammar, GridRow

STYLES = ["close-up", "medium shot", "long shot"]
AGES = ["young", "adult", "elderly"]
GENDERS = ["male", "female"]
DRESSINGS = ["wearing work clothes", "wearing ethnic clothes"]
PLACES = ["at work", "at home"]

# The reference list, cleaned: pairs it split into two entries joined, its duplicate dropped, and
# institutions and a gendered noun replaced by the person doing the job (see REFERENCE_FIXES).
PROFESSIONS = [
    "barber", "coach", "businessperson", "football player", "construction worker", "manager", "CEO",
    "accountant", "commander", "firefighter", "mover", "software developer", "guard", "baker", "doctor",
    "athlete", "artist", "dancer", "mathematician", "janitor", "carpenter", "mechanic", "actor", "handyman",
    "musician", "detective", "politician", "entrepreneur", "model", "opera singer", "chief", "lawyer",
    "farmer", "writer", "librarian", "army officer", "real-estate developer", "broker", "scientist",
    "butcher", "electrician", "prosecutor", "banker", "cook", "hairdresser", "plumber",
    "attorney", "boxer", "chess player", "priest", "swimmer", "tennis player", "supervisor", "attendant",
    "housekeeper", "maid", "producer", "researcher", "midwife", "judge", "umpire", "bartender", "economist",
    "physicist", "psychologist", "theologian", "salesperson", "physician", "sheriff", "cashier",
    "assistant", "receptionist", "editor", "engineer", "comedian", "painter", "civil servant", "diplomat",
    "guitarist", "linguist", "poet", "laborer", "teacher", "delivery worker", "realtor", "pilot",
    "professor", "chemist", "historian", "performing artist", "singer", "secretary",
    "auditor", "counselor", "designer", "soldier", "journalist", "dentist", "analyst", "nurse", "tailor",
    "waiter", "author", "architect", "academic", "director", "illustrator", "clerk", "police officer",
    "chef", "photographer", "drawer", "cleaner", "pharmacist", "pianist", "composer", "handball player",
    "sociologist",
]  # fmt: skip

REFERENCE_FIXES = [
    "'opera' + 'singer' joined into 'opera singer' (the reference split the pair into two entries)",
    "'chess' + 'player' joined into 'chess player'",
    "'handball' + 'player' joined into 'handball player'",
    "'singer' kept once (the reference listed it twice)",
    "'army' replaced by 'army officer' and 'police' by 'police officer' (institutions, not professions)",
    "'delivery man' replaced by 'delivery worker' (a gendered noun cannot carry the grid's gender)",
    "'prisoner' and 'pensioner' dropped (not occupations: 'a person who works as a prisoner' says nothing)",
]
# Words that name a condition, not a job (the reference listed the first two): generate_prompts refuses
# them as professions, since every prompt reads "a person who works as a/an <profession>".
NOT_OCCUPATIONS = ("prisoner", "pensioner", "retiree", "student", "patient", "child", "inmate", "tourist")

# Our own variants, then MAGBIG's prompt sets (imported by import_magbig).
OWN_VARIANTS = ("gendered", "neutral", "eval_direct", "eval_indirect", "eval_female", "eval_male", "eval_ethical")
# The evaluation variants (one row per occupation, in this order) and the `gender` column of their rows.
EVAL_GENDERS = {"eval_direct": None, "eval_indirect": NEUTRAL, "eval_female": "female", "eval_male": "male",
                "eval_ethical": None}  # fmt: skip
MAGBIG_VARIANTS = ("magbig_direct", "magbig_indirect", "magbig_feminine", "magbig_gender_star", "magbig_adjectives")
VARIANTS = (*OWN_VARIANTS, *MAGBIG_VARIANTS)


def prompt_id(variant: str, *values: str) -> str:
    """A stable id for one prompt, the same in every language: its variant and a hash of its grid values.

    Example:
        >>> prompt_id("gendered", "close-up", "young", "male", "barber", "wearing work clothes", "at work")
        'gendered-e3585b96231e'
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r}: allowed {', '.join(VARIANTS)}")
    digest = hashlib.sha1("|".join(values).encode("utf-8")).hexdigest()[:12]
    return f"{variant}-{digest}"


LIST_NAMES = ("styles", "ages", "genders", "professions", "dressings", "places")


@dataclass(frozen=True)
class GridLists:
    styles: list[str]
    ages: list[str]
    genders: list[str]
    professions: list[str]
    dressings: list[str]
    places: list[str]

    @classmethod
    def from_parameters(cls, parameters: dict) -> GridLists:
        """The lists a `generate_prompts` run was given (its lineage's parameters)."""
        return cls(*(list(parameters[name]) for name in LIST_NAMES))

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
        for variant, gender in EVAL_GENDERS.items():
            row = dict.fromkeys(GRID_COLUMNS) | {"prompt_id": prompt_id(variant, profession), "variant": variant}
            row |= {"profession": profession, "gender": gender}
            yield _with_prompt(row, grammar)


def _with_prompt(row: dict[str, str | None], grammar: Grammar) -> dict[str, str | None]:
    return {**row, "language": grammar.code, "prompt": realise(row, grammar)}


def realise(row: dict[str, str | None], grammar: Grammar) -> str:
    """The prompt of a row (of any language) in `grammar`'s language, from its attributes."""
    if row["variant"] in ("gendered", "neutral"):
        return grammar.grid(GridRow(*(row[column] for column in GRID_COLUMNS)))
    if row["variant"] == "eval_direct":
        return grammar.eval_direct(row["profession"])
    if row["variant"] in ("eval_female", "eval_male"):
        return grammar.eval_explicit(row["profession"], EVAL_GENDERS[row["variant"]])
    if row["variant"] == "eval_ethical":
        return grammar.eval_ethical(row["profession"])
    return grammar.eval_indirect(row["profession"])


# A variant whose prompts name no gender, and the variant of the gender-neutral twin of each other one.
# `eval_ethical` is not neutral: in languages with grammatical gender it keeps the direct prompt's
# generic (masculine) noun, which the suffix qualifies; its twin, like the explicit prompts', is the
# indirect prompt of the same occupation.
NEUTRAL_VARIANTS = ("neutral", "eval_indirect", "magbig_indirect", "magbig_gender_star", "magbig_adjectives")
NEUTRAL_TWIN_VARIANT = {"gendered": "neutral", "eval_direct": "eval_indirect", "eval_female": "eval_indirect",
                        "eval_male": "eval_indirect", "eval_ethical": "eval_indirect",
                        "magbig_direct": "magbig_indirect", "magbig_feminine": "magbig_indirect"}  # fmt: skip


def neutral_twin(row: dict[str, str | None]) -> str:
    """The `prompt_id` of a row's gender-neutral twin: the same prompt without the gender.

    The reference study's debiasing signal pairs each gendered image with this caption, so the
    neutral prompt comes to cover every gender.

    Example:
        >>> row = {"variant": "gendered", "style": "close-up", "age": "young", "gender": "male",
        ...        "profession": "barber", "dressing": "wearing work clothes", "place": "at work"}
        >>> neutral_twin(row) == prompt_id("neutral", "close-up", "young", "neutral", "barber",
        ...                                "wearing work clothes", "at work")
        True
    """
    variant = row["variant"]
    if variant in NEUTRAL_VARIANTS:
        return prompt_id(variant, *_id_values(row))
    if variant == "gendered":
        return prompt_id("neutral", *(NEUTRAL if c == "gender" else row[c] for c in GRID_COLUMNS))
    if variant in NEUTRAL_TWIN_VARIANT:
        return prompt_id(NEUTRAL_TWIN_VARIANT[variant], row["profession"])
    raise ValueError(f"variant {variant!r} has no gender-neutral twin")


def _id_values(row: dict[str, str | None]) -> list[str]:
    if row["variant"] in ("gendered", "neutral"):
        return [row[c] for c in GRID_COLUMNS]
    return [row["profession"]]


def prompts_description(lists: GridLists) -> str:
    neutral = lists.grid_size() // len(lists.genders)
    return (
        "Prompts of the multilingual text-to-image bias study, one config per language, lined up by "
        "`prompt_id`. Variants: `gendered` (the grid `<STYLE> photo of a <AGE> <GENDER> <PROFESSION> "
        f"<DRESSING> <PLACE>`, {lists.grid_size()} rows), `neutral` (the grid without gender, {neutral} rows), "
        "`eval_direct` and `eval_indirect` (MAGBIG-style face prompts), and MAGBIG's prompt-engineering "
        "interventions on the direct prompt: `eval_female` and `eval_male` (the gender made explicit) and "
        f"`eval_ethical` (the ethical-intervention suffix), {len(lists.professions)} occupations each. "
        "Attribute columns hold the English values in every language."
    )
