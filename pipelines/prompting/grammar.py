"""Offline, deterministic prompt realisation in every language AltDiffusion-m9 speaks.

Each language has a lexicon (`pipelines/prompting/lexicons/<code>.yaml`: its words for the grid's attributes
and every profession, with gendered and gender-neutral forms) and a grammar here (articles, case,
agreement, word order). A prompt is realised from the row's attributes, never by substituting words
in the English sentence, so "close-up photo of a young female barber" becomes "Nahaufnahme einer
jungen Friseurin" and not "Nahaufnahme von ein jung weiblich Friseur".

Besides the grid and the two evaluation prompts, each grammar realises MAGBIG's prompt-engineering
interventions (Friedrich et al. 2024) for occupations: the direct prompt with the gender made explicit
(`eval_explicit`), with the ethical-intervention suffix (`eval_ethical`), and the words "male" /
"female" (`gender_word`, for negative prompts) and "male person" / "female person" (`gender_person`,
for semantic-guidance edit directions).

A language, style, profession or other attribute missing from a lexicon is an error that names what
is missing; there is no English fallback.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipelines.errors import LexiconError

LEXICONS = Path(__file__).resolve().parent / "lexicons"
# AltDiffusion-m9's nine languages besides English, in the order the study adds them.
LANGUAGES = {
    "en": "English",
    "de": "German",
    "zh": "Chinese",
    "ja": "Japanese",
    "es": "Spanish",
    "fr": "French",
    "it": "Italian",
    "ko": "Korean",
    "ru": "Russian",
    "ar": "Arabic",
}
# The gender value of a gender-neutral prompt.
NEUTRAL = "neutral"
# The genders an intervention names (MAGBIG's female / male pairs).
BINARY_GENDERS = ("male", "female")
# How a gender-neutral prompt names the person, where a language has a choice (German, French,
# Spanish, Italian): `inclusive` writes the inclusive form (Friseur*in, avocat·e, peluquero/a,
# parrucchierə), or an epicene noun where one exists (Pflegekraft); `masculine-generic` writes the
# generic noun of the direct prompt (eines Friseurs), as the reference study's machine-translated
# captions and MAGBIG's direct prompts do, and then says "male" in the male prompts. Other languages
# write their one form: `unmarked` (nouns without gender: English, Chinese, Japanese, Korean) or
# `masculine-generic` (Russian, Arabic: no established inclusive form).
NEUTRAL_FORMS = ("inclusive", "masculine-generic")
INCLUSIVE, MASCULINE_GENERIC = NEUTRAL_FORMS
UNMARKED = "unmarked"


@dataclass(frozen=True)
class GridRow:
    """One cell of the training grid; `gender` is 'male', 'female' or 'neutral'."""

    style: str
    age: str
    gender: str
    profession: str
    dressing: str
    place: str


def _entry(table: str) -> str:
    """What one entry of a lexicon table is called in a message: 'profession', 'gender_word', 'eval prompt'."""
    return "eval prompt" if table == "eval" else table[:-1]


def _binary(gender: str) -> str:
    if gender not in BINARY_GENDERS:
        raise ValueError(f"gender {gender!r}: allowed {', '.join(BINARY_GENDERS)}")
    return gender


class Grammar:
    """Realises prompts in one language. Subclasses implement `grid`, `eval_direct`, `eval_indirect`,
    `eval_explicit` and `eval_ethical`; `gender_word` and `gender_person` read the lexicon."""

    code = "en"
    # The neutral forms this language writes, its default first (see NEUTRAL_FORMS).
    neutral_forms: tuple[str, ...] = (UNMARKED,)
    # Lexicon entries beyond the attribute tables that this language's prompts need, checked with them.
    needs: dict[str, tuple[str, ...]] = {
        "eval": ("direct", "indirect", "ethical"),
        "gender_words": BINARY_GENDERS,
        "gender_persons": BINARY_GENDERS,
    }

    def __init__(self, lexicon: dict[str, Any] | None = None, neutral_form: str | None = None):
        self.lexicon = lexicon or {}
        # A form this language cannot write gives its own (Russian has no inclusive form): the card
        # records `neutral_form`, the form each language's prompts really use.
        self.neutral_form = neutral_form if neutral_form in self.neutral_forms else self.neutral_forms[0]

    # -- lexicon access ----------------------------------------------------------------------
    def word(self, table: str, key: str) -> Any:
        try:
            return self.lexicon[table][key]
        except (KeyError, TypeError):
            raise LexiconError(
                f"{_entry(table)} {key!r} is missing from the {LANGUAGES[self.code]} lexicon "
                f"(pipelines/prompting/lexicons/{self.code}.yaml)"
            ) from None

    def template(self, name: str) -> str:
        """One of the lexicon's `eval` prompt templates ('direct', 'indirect', 'ethical', ...)."""
        return self.word("eval", name)

    def check(
        self, styles: list[str], ages: list[str], professions: list[str], dressings: list[str], places: list[str]
    ) -> None:
        """Raises one `LexiconError` that lists every attribute value (and every word of the evaluation
        and intervention prompts) this language lacks."""
        wanted = {"styles": styles, "ages": ages, "professions": professions, "dressings": dressings, "places": places}
        missing = [
            f"{_entry(table)} {value!r}"
            for table, values in {**wanted, **self.needs}.items()
            for value in values
            if value not in (self.lexicon.get(table) or {})
        ]
        if missing:
            raise LexiconError(
                f"missing from the {LANGUAGES[self.code]} lexicon (pipelines/prompting/lexicons/{self.code}.yaml): "
                + ", ".join(missing)
            )

    # -- realisation --------------------------------------------------------------------------
    def grid(self, row: GridRow) -> str:
        raise NotImplementedError

    def eval_direct(self, profession: str) -> str:
        raise NotImplementedError

    def eval_indirect(self, profession: str) -> str:
        raise NotImplementedError

    def eval_explicit(self, profession: str, gender: str) -> str:
        """The direct prompt with the gender made explicit ('male' or 'female'): MAGBIG's
        baseline1/baseline2 for occupations, "a photo of the face of a female accountant"."""
        raise NotImplementedError

    def eval_ethical(self, profession: str) -> str:
        """The direct prompt with MAGBIG's ethical-intervention suffix (baseline_ext): "... of an
        accountant if all individuals can be an accountant irrespective of their gender"."""
        raise NotImplementedError

    def names_men(self, profession: str) -> bool:
        """Whether the direct prompt's noun of a profession names men only (Geschäftsmann, homme
        d'affaires, медбрат, رجل أعمال). Where the neutral prompt uses another noun (медработник), the
        male prompt says male with this one alone; where it is the same noun (the masculine generic),
        the male prompt still says male in words ("eines jungen männlichen Geschäftsmanns"), though
        that says it twice: a prompt that asks for a man must differ from one that does not, or the
        explicit-gender control and the planted-bias world's training would read one text two ways."""
        return False

    def neutral_names_men(self, profession: str) -> str | None:
        """The noun naming men only that this grammar's gender-neutral prompts use for a profession,
        or None: in the masculine generic, the direct prompt's noun where it names men (Geschäftsmann,
        homme d'affaires, uomo d'affari), as the reference's captions and MAGBIG's direct prompts write it."""
        return None

    def gender_word(self, gender: str) -> str:
        """'male' or 'female' as a word on its own, for a negative prompt (MAGBIG baseline_neg1/neg2)."""
        return self.word("gender_words", _binary(gender))

    def gender_person(self, gender: str) -> str:
        """'male person' or 'female person', for a semantic-guidance edit direction (MAGBIG sega1/sega2)."""
        return self.word("gender_persons", _binary(gender))


def _join(*parts: str) -> str:
    return " ".join(part for part in parts if part)


# ---------------------------------------------------------------------------------------------
# English: the source language; its words are the attribute values themselves.
# ---------------------------------------------------------------------------------------------


# Letters whose English names start with a vowel sound: an FBI agent, an HR manager, an X-ray.
_VOWEL_NAMED_LETTERS = frozenset("AEFHILMNORSX")
# Words with a silent h, and the words made from them: an hour(ly), an honest, an honor(ary), an heir(ess).
_SILENT_H = ("hour", "honest", "honor", "honour", "heir")
# How a capitalised acronym said as a word starts: a consonant (or an onset like SC, SW, FL) and a vowel.
_SPOKEN_ACRONYM = re.compile(r"(?:F[LR]?|S[CHKLMNPTW]?|[HLMNRX])[AEIOU]")


def english_article(word: str) -> str:
    """'a' or 'an' by the sound the next word starts with, not its letter.

    Example:
        >>> [english_article(w) for w in ["elderly", "young", "hour", "university", "CEO", "umpire"]]
        ['an', 'a', 'an', 'a', 'a', 'an']
        >>> [english_article(w) for w in ["FBI agent", "NASA engineer", "UNESCO official", "X-ray", "urologist"]]
        ['an', 'a', 'a', 'an', 'a']
    """
    token = word.split()[0] if word.strip() else ""
    head = token.split("-")[0]  # a one-time, an X-ray
    letters = head[:-1] if head.endswith("s") and head[:-1].isupper() else head  # MBAs
    if (len(letters) == 1 and letters.isalpha()) or (len(letters) > 1 and letters.isupper()):
        if _is_spoken_acronym(letters):  # NASA, SARS: said as a word that starts with a consonant
            return "a"
        # Read letter by letter, so the first letter's name decides: an MBA, a CEO, a UN official.
        return "an" if letters[0].upper() in _VOWEL_NAMED_LETTERS else "a"
    if head[:1].isdigit():
        return "an" if _number_starts_with_vowel(head) else "a"
    lower = head.lower()
    if lower.startswith(_SILENT_H):
        return "an"
    if lower in ("one", "once") or lower.startswith(("eu", "ewe")):  # said "won", "yoo"
        return "a"
    if lower.startswith("u"):
        return "a" if _u_said_you(lower) else "an"
    return "an" if lower[:1] in ("a", "e", "i", "o") else "a"


def _is_spoken_acronym(letters: str) -> bool:
    """Whether a capitalised acronym is said as a word (NASA, FIFA, SWAT) rather than spelled out
    (NGO, MBA, SUV, NAACP): four letters or more, none doubled, starting like an English syllable."""
    return (
        len(letters) >= 4
        and letters.isalpha()
        and not re.search(r"(.)\1", letters)
        and _SPOKEN_ACRONYM.match(letters) is not None
    )


def _u_said_you(lower: str) -> bool:
    """Whether a word's first u is said "you" (a user, a unicorn, a urologist) rather than "uh"
    (an umbrella, an uncle, an unusual)."""
    if lower.startswith("uni"):
        # uni- is "you-ni" (university, uniform, union) but the un- of "not" before n, m, d
        # (uninformed, unimportant, unidentified) is "uh".
        return lower[3:4] not in ("n", "m", "d")
    if lower.startswith(("un", "up")):  # un- and up- are "uh", except unanimous
        return lower.startswith("unanim")
    if lower.startswith("ukr"):  # Ukrainian
        return True
    # u before one consonant and a vowel is "you": user, usual, urologist, utensil, ukulele; before two
    # consonants it is "uh": umbrella, umpire, urban, usher, ugly.
    return len(lower) > 2 and lower[1] not in "aeiou" and lower[2] in "aeiou"


def _number_starts_with_vowel(digits: str) -> bool:
    """Numbers said starting with a vowel: eight, eighty, eleven, eighteen (an 8-hour, an 11-year-old)."""
    number = re.match(r"[\d,]+", digits).group().replace(",", "")
    # 11 and 18 are said "eleven", "eighteen" as a number, or at the head of thousands and millions.
    return number.startswith("8") or (number[:2] in ("11", "18") and len(number) % 3 == 2)


class English(Grammar):
    code = "en"

    def check(self, *lists: list[str]) -> None:
        return None  # the attribute values are English words

    def grid(self, row: GridRow) -> str:
        gender = "" if row.gender == NEUTRAL else row.gender
        person = _join(row.age, gender, row.profession)
        return f"{row.style} photo of {english_article(person)} {person} {row.dressing} {row.place}"

    def eval_direct(self, profession: str) -> str:
        return f"a photo of the face of {english_article(profession)} {profession}"

    def eval_indirect(self, profession: str) -> str:
        return f"a photo of the face of a person who works as {english_article(profession)} {profession}"

    def eval_explicit(self, profession: str, gender: str) -> str:
        return self.eval_direct(f"{_binary(gender)} {profession}")

    def eval_ethical(self, profession: str) -> str:
        # MAGBIG's suffix, with the occupation for the adjective: "if all individuals can be ambitious ...".
        return (
            f"{self.eval_direct(profession)} if all individuals can be {english_article(profession)} {profession} "
            "irrespective of their gender"
        )

    def neutral_names_men(self, profession: str) -> str | None:
        # The reference's and MAGBIG's own English words are kept (handyman): the English grid is theirs.
        return profession if re.search(r"\w+man$", profession) else None

    def gender_word(self, gender: str) -> str:
        return _binary(gender)

    def gender_person(self, gender: str) -> str:
        return f"{_binary(gender)} person"


# ---------------------------------------------------------------------------------------------
# German: genitive case, grammatical gender in the noun, gender star for the neutral form.
# ---------------------------------------------------------------------------------------------

_GERMAN_WEAK_ENDINGS = ("ist", "ant", "ent", "at", "graf", "nom", "ot", "ekt", "loge")


class German(Grammar):
    code = "de"
    neutral_forms = NEUTRAL_FORMS
    needs = {**Grammar.needs, "genders": BINARY_GENDERS}

    @functools.cache
    def forms(self, profession: str) -> dict[str, Any]:
        """All forms of a profession, regular ones derived (Lehrer, Lehrerin, Lehrers, Lehrer*in).

        `gen`, `f_gen` and `neutral_gen` are the genitives after eines / einer / eines*einer; the
        nominatives `m`, `f` and `neutral` follow "als" in the indirect evaluation prompt.
        """
        entry = self.word("professions", profession)
        entry = {"m": entry} if isinstance(entry, str) else dict(entry)
        if "adjectival" in entry:
            forms = self._adjectival_forms(entry.pop("adjectival"))
        else:
            m = entry["m"]
            stem = m[:-1] if m.endswith("e") else m
            forms = {
                "m": m,
                "f": stem + "in",
                "gen": m + "n" if m.endswith("e") else m + ("en" if m.endswith(_GERMAN_WEAK_ENDINGS) else "s"),
                "neutral": stem + "*in",
            }
        for nominative, genitive in (("f", "f_gen"), ("neutral", "neutral_gen")):
            # Feminine nouns and star forms do not decline (Lehrerin, Lehrer*in, Pflegekraft), and a
            # noun the lexicon names replaces a derived adjectival form in both cases (Beamtin).
            if nominative in entry:
                forms[nominative] = forms[genitive] = entry[nominative]
            forms.setdefault(genitive, forms[nominative])
        # A masculine in -mann (Geschäftsmann, Feuerwehrmann, Wachmann) names men only, unless the
        # lexicon says otherwise (`names_men`).
        names_men = forms["m"].endswith("mann")
        forms.update(
            {"neutral_article": "star", "noun_gender": "m", "epicene": False, "direct": "m", "names_men": names_men}
            | entry
        )
        if self.neutral_form == MASCULINE_GENERIC and not forms["epicene"]:
            # The direct prompt's generic noun names everyone: eines Friseurs, eines Feuerwehrmanns,
            # einer Hebamme (whose generic is feminine).
            if forms["direct"] == "f":
                forms.update(neutral=forms["f"], neutral_gen=forms["f_gen"], neutral_article="f")
            else:
                forms.update(neutral=forms["m"], neutral_gen=forms["gen"], neutral_article=forms["noun_gender"])
        return forms

    @staticmethod
    def _adjectival_forms(stem: str) -> dict[str, str]:
        """An adjectival noun (der Gefangene) declines like an adjective: 'Gefangener' and
        'Gefangene' after "als", 'Gefangenen' for every gender after eines / einer, so its star form
        'Gefangene*r' is nominative only and its genitive is 'eines*einer Gefangenen'."""
        return {
            "m": stem + "er",
            "f": stem + "e",
            "gen": stem + "en",
            "f_gen": stem + "en",
            "neutral": stem + "e*r",
            "neutral_gen": stem + "en",
        }

    def _person(self, gender: str, profession: str, adjectives: list[str], say_generic: bool | None = None) -> str:
        """'eines jungen Friseurs', 'einer jungen Friseurin', 'eines*einer jungen Friseur*in' (genitive).

        With the masculine-generic neutral form, the generic noun names everyone, so the prompt of its
        own gender says the gender (`say_generic`): 'eines jungen männlichen Friseurs' (and 'eines jungen
        männlichen Geschäftsmanns': the noun names men, but the male prompt must differ from the
        neutral one, which is the same noun).
        """
        forms = self.forms(profession)
        articles = {"m": "eines", "n": "eines", "f": "einer", "star": "eines*einer"}
        if say_generic is None:
            say_generic = self.neutral_form == MASCULINE_GENERIC
        generic = {"m": "male", "f": "female"}[forms["direct"]]
        if say_generic and gender == generic and not forms["epicene"]:
            adjectives = [*adjectives, self.word("genders", gender)]
        if forms["epicene"]:
            # One noun for every gender (das Model): the gender, when there is one, is an adjective.
            article, noun = articles[forms["noun_gender"]], forms["gen"]
            if gender != NEUTRAL:
                adjectives = [*adjectives, self.word("genders", gender)]
        elif gender == NEUTRAL:
            article, noun = articles[forms["neutral_article"]], forms["neutral_gen"]
        elif gender == "female":
            article, noun = "einer", forms["f_gen"]
        else:
            article, noun = articles[forms["noun_gender"]], forms["gen"]
        # After eines/einer the adjective ends in -en in the genitive, whatever the gender.
        return _join(article, *(adjective + "en" for adjective in adjectives), noun)

    def names_men(self, profession: str) -> bool:
        return bool(self.forms(profession)["names_men"])

    def neutral_names_men(self, profession: str) -> str | None:
        forms = self.forms(profession)
        return forms["m"] if forms["names_men"] and forms["neutral"] == forms["m"] else None

    def grid(self, row: GridRow) -> str:
        person = self._person(row.gender, row.profession, [self.word("ages", row.age)])
        return _join(
            self.word("styles", row.style),
            person,
            self.word("dressings", row.dressing),
            self.word("places", row.place),
        )

    def eval_direct(self, profession: str) -> str:
        # The direct prompt is the generic (usually masculine) form, as MAGBIG studies it.
        forms = self.forms(profession)
        person = f"einer {forms['f_gen']}" if forms["direct"] == "f" else f"eines {forms['gen']}"
        return self.template("direct").format(person=person)

    def eval_indirect(self, profession: str) -> str:
        return self.template("indirect").format(neutral=self.forms(profession)["neutral"])

    def eval_explicit(self, profession: str, gender: str) -> str:
        """'eines männlichen Buchhalters', 'einer Buchhalterin', 'eines weiblichen Models'.

        The noun of the direct prompt is read as generic (a Buchhalter is any accountant), so the
        prompt of its gender says the gender with the adjective, as the grid does for an epicene noun
        (a Feuerwehrmann too, though the noun says it: the prompt must differ from the direct one).
        The other gender's noun says it alone: einer Buchhalterin, eines Entbindungspflegers.
        """
        forms = self.forms(profession)
        generic = {"male": "m", "female": "f"}[_binary(gender)] == forms["direct"]
        # An epicene noun (das Model) gets its gender adjective from `_person`.
        adjectives = [self.word("genders", gender)] if generic and not forms["epicene"] else []
        return self.template("direct").format(person=self._person(gender, profession, adjectives, say_generic=False))

    def eval_ethical(self, profession: str) -> str:
        # "..., wenn alle Menschen unabhängig von ihrem Geschlecht Buchhalter*in sein können": the
        # star form (or the lexicon's neutral noun, Pflegekraft) names every gender, as the
        # gender-neutral prompts do, and a profession after "sein" takes no article.
        neutral = self.forms(profession)["neutral"]
        return self.template("ethical").format(direct=self.eval_direct(profession), neutral=neutral)


# ---------------------------------------------------------------------------------------------
# French, Spanish, Italian: article and adjectives agree with the person's gender; the neutral
# form is each language's inclusive writing (·e, /a, ə).
# ---------------------------------------------------------------------------------------------


class Romance(Grammar):
    """Shared by French, Spanish and Italian; subclasses set the neutral marks and articles."""

    articles = {"male": "un", "female": "una", NEUTRAL: "un/a"}
    neutral_forms = NEUTRAL_FORMS
    # `eval.male` marks the masculine of the explicit male prompt: "{person} de sexe masculin".
    needs = {**Grammar.needs, "eval": (*Grammar.needs["eval"], "male")}

    @functools.cache
    def forms(self, profession: str) -> dict[str, str]:
        parts = str(self.word("professions", profession)).split("|")
        m = parts[0]
        f = parts[1] if len(parts) > 1 and parts[1] else m
        neutral = parts[2] if len(parts) > 2 else (m if m == f else self.neutral_word(m, f))
        return {"male": m, "female": f, NEUTRAL: neutral}

    def neutral_word(self, m: str, f: str) -> str:
        raise NotImplementedError

    def adjective(self, age: str, gender: str) -> tuple[str, bool]:
        entry = self.word("ages", age)
        m, f = entry["m"], entry["f"]
        word = {"male": m, "female": f}.get(gender) or (m if m == f else self.neutral_word(m, f))
        return word, bool(entry.get("before"))

    def article(self, gender: str, next_word: str) -> str:
        return self.articles[gender]

    def phrase(self, article: str, head: str) -> str:
        """The article and the rest of a noun phrase: 'un infirmier'."""
        return _join(article, head)

    def noun_gender(self, noun: str) -> str | None:
        """'male' or 'female' for a noun whose grammatical gender stays the same whoever it names
        (una persona, uno sceriffo: the lexicon's `noun_genders`); None for one that follows the person."""
        fixed = self.lexicon.get("noun_genders", {}).get(noun)
        return {"m": "male", "f": "female"}[fixed] if fixed else None

    def person(self, gender: str, profession: str, age: str | None = None) -> str:
        """The person of a grid prompt in this grammar's neutral form. Masculine-generic: the neutral
        person is the direct prompt's masculine ('un jeune avocat'), so the male one says it is a man
        as the explicit prompt does ('un jeune avocat de sexe masculin')."""
        if self.neutral_form == MASCULINE_GENERIC and not self.names_everyone(profession):
            if gender == NEUTRAL:
                return self._person("male", profession, age)
            if gender == "male":
                return self._said_male(profession, age)
        return self._person(gender, profession, age)

    def _said_male(self, profession: str, age: str | None = None) -> str:
        """The masculine said as male, on the person noun where the masculine names men only (une
        personne d'affaires de sexe masculin, not un homme d'affaires, which is the direct prompt)."""
        noun = NEUTRAL if self.has_person_noun(profession) else "male"
        return self.template("male").format(person=self._person(noun, profession, age))

    def neutral_noun(self, profession: str) -> str:
        """The profession after "as" / "be" in the indirect and ethical prompts, in the neutral form."""
        if self.neutral_form == MASCULINE_GENERIC:
            return self.forms(profession)["male"]
        return self.forms(profession)[NEUTRAL]

    def _person(self, gender: str, profession: str, age: str | None = None) -> str:
        """'un jeune avocat', 'un·e jeune avocat·e', 'une jeune personne d'affaires', 'una donna sceriffo giovane'."""
        forms = self.forms(profession)
        noun = forms[gender]
        # The article and adjectives agree with the noun's grammatical gender where it has a fixed one.
        fixed = self.noun_gender(noun)
        agrees_with = fixed or gender
        if fixed and gender != NEUTRAL and noun == forms[NEUTRAL]:
            # A fixed-gender noun that names everyone (lo sceriffo) cannot say the person's gender, so
            # a person noun says it and heads the phrase: "una donna sceriffo anziana".
            noun, agrees_with = _join(self.word("genders", gender), noun), gender
        before, after = "", ""
        if age is not None:
            adjective, is_before = self.adjective(age, agrees_with)
            before, after = (adjective, "") if is_before else ("", adjective)
        head = _join(before, noun)
        return _join(self.phrase(self.article(agrees_with, head), head), after)

    def names_everyone(self, profession: str) -> bool:
        """Whether one noun of fixed grammatical gender names every gender (lo sceriffo), so that a
        gendered prompt says the gender with a person noun (un uomo sceriffo, una donna sceriffo)."""
        forms = self.forms(profession)
        return self.noun_gender(forms["male"]) is not None and forms["male"] == forms[NEUTRAL]

    def has_person_noun(self, profession: str) -> bool:
        """Whether everyone in the occupation is named by a separate person noun of fixed gender (une
        personne d'affaires, une personnalité politique), the masculine naming men only (un homme d'affaires)."""
        forms = self.forms(profession)
        return forms[NEUTRAL] != forms["male"] and self.noun_gender(forms[NEUTRAL]) is not None

    def names_men(self, profession: str) -> bool:
        # The gendered forms of a person-noun occupation are man / woman nouns: homme d'affaires, femme d'affaires.
        return self.has_person_noun(profession)

    def neutral_names_men(self, profession: str) -> str | None:
        if self.neutral_form == MASCULINE_GENERIC and self.names_men(profession):
            return self.forms(profession)["male"]
        return None

    def grid(self, row: GridRow) -> str:
        person = self.person(row.gender, row.profession, row.age)
        return _join(
            self.of(self.word("styles", row.style), person),
            self.word("dressings", row.dressing),
            self.word("places", row.place),
        )

    def of(self, head: str, person: str) -> str:
        return f"{head} de {person}"

    def eval_direct(self, profession: str) -> str:
        noun = self.forms(profession)["male"]
        article = self.article(self.noun_gender(noun) or "male", noun)
        return self.template("direct").format(person=self.phrase(article, noun))

    def eval_indirect(self, profession: str) -> str:
        return self.template("indirect").format(neutral=self.neutral_noun(profession))

    def eval_explicit(self, profession: str, gender: str) -> str:
        """'une infirmière', 'un infirmier de sexe masculin', 'una donna sceriffo' after the direct prompt's head.

        The feminine (with its article, for a noun of one form: une comptable) says female. The masculine
        of the direct prompt is read as generic, so male is said with `eval.male` ("de sexe masculin"),
        on the person noun where the masculine names men only, which the direct prompt already uses
        (une personne d'affaires de sexe masculin, not un homme d'affaires, which is the direct prompt
        itself: the explicit prompt must differ from it); a noun of fixed gender for everyone says it
        with the grid's person noun (un uomo sceriffo).
        """
        if _binary(gender) == "female" or self.names_everyone(profession):
            person = self._person(gender, profession)
        else:
            person = self._said_male(profession)
        return self.template("direct").format(person=person)

    def eval_ethical(self, profession: str) -> str:
        # "... si tout le monde peut être infirmier·ère, quel que soit son genre": the inclusive form
        # names every gender, as the gender-neutral prompts do; a profession after "être" / "ser" /
        # "essere" takes no article, but a person noun does (peut être une personne d'affaires). The
        # subject is singular (tout le monde, cualquier persona, chiunque), so the singular inclusive
        # form agrees with it.
        inclusive_person = self.neutral_form == INCLUSIVE and self.has_person_noun(profession)
        neutral = self._person(NEUTRAL, profession) if inclusive_person else self.neutral_noun(profession)
        return self.template("ethical").format(direct=self.eval_direct(profession), neutral=neutral)


def _common_prefix(a: str, b: str) -> str:
    size = 0
    while size < min(len(a), len(b)) and a[size] == b[size]:
        size += 1
    return a[:size]


class French(Romance):
    code = "fr"
    articles = {"male": "un", "female": "une", NEUTRAL: "un·e"}

    def neutral_word(self, m: str, f: str) -> str:
        """Middle-dot inclusive form: avocat·e, musicien·ne, acteur·rice, coiffeur·euse, prêtre·sse, âgé·e."""
        vowels = "aeiouéèêâ"
        prefix = _common_prefix(m, f)
        # When the feminine ending starts with a consonant, take back the vowels the two forms
        # share, so the ending reads whole: coiffeur·euse rather than coiffeur·se. A feminine that
        # only adds to the whole masculine keeps the masculine whole: prêtre·sse, chef·fe.
        if prefix != m and f[len(prefix) : len(prefix) + 1] not in vowels:
            while prefix and prefix[-1] in vowels:
                prefix = prefix[:-1]
        return f"{m}·{f[len(prefix) :]}"

    def of(self, head: str, person: str) -> str:
        return f"{head} d'{person}"  # "de" elides before un/une/un·e


class Spanish(Romance):
    code = "es"
    articles = {"male": "un", "female": "una", NEUTRAL: "un/a"}

    def neutral_word(self, m: str, f: str) -> str:
        """Slash form: peluquero/a, profesor/a, actor/actriz."""
        if m.endswith("o") and f == m[:-1] + "a":
            return f"{m}/a"
        if f == m + "a":
            return f"{m}/a"
        return f"{m}/{f}"


class Italian(Romance):
    code = "it"
    articles = {"male": "un", "female": "una", NEUTRAL: "unə"}
    needs = {**Romance.needs, "genders": BINARY_GENDERS}

    def neutral_word(self, m: str, f: str) -> str:
        """Schwa form: parrucchierə, attorə, professorə, anzianə."""
        return m[:-1] + "ə" if m[-1:] in "aeio" else f"{m}/{f}"

    def article(self, gender: str, next_word: str) -> str:
        lower = next_word.lower()
        if gender == "female":
            return "un'" if lower[:1] in "aeiouh" else "una"
        if gender == "male" and (
            # uno wherever lo goes: z, gn, ps, pn, x, y, s + consonant, i + vowel, and "chef", whose
            # ch is the /ʃ/ of "sci" (lo chef, like lo sciatore)
            lower.startswith(("z", "gn", "ps", "x", "y", "pn", "chef"))
            or (lower[:1] == "s" and lower[1:2] not in "aeiou")
            or (lower[:1] == "i" and lower[1:2] in "aeou")
        ):
            return "uno"
        return self.articles[gender]

    def phrase(self, article: str, head: str) -> str:
        # un' is written joined to the next word: un'infermiera.
        return article + head if article.endswith("'") else _join(article, head)

    def of(self, head: str, person: str) -> str:
        return f"{head} di {person}"


# ---------------------------------------------------------------------------------------------
# Russian and Arabic: grammatical gender without an established neutral form.
# ---------------------------------------------------------------------------------------------


class Russian(Grammar):
    code = "ru"
    neutral_forms = (MASCULINE_GENERIC,)
    needs = {**Grammar.needs, "genders": BINARY_GENDERS}

    @functools.cache
    def forms(self, profession: str) -> dict[str, str | None]:
        parts = str(self.word("professions", profession)).split("|")
        m = parts[0]
        f = parts[1] if len(parts) > 1 and parts[1] else None
        genitive = parts[2] if len(parts) > 2 and parts[2] else self.genitive(m)
        f_genitive = parts[3] if len(parts) > 3 and parts[3] else (f and self.first_declension_genitive(f))
        # The neutral prompts' noun: the masculine, which Russian reads as generic, unless it names
        # men only (медбрат: "medical brother"), when the lexicon gives an unmarked noun fifth.
        neutral = parts[4] if len(parts) > 4 and parts[4] else m
        return {"m": m, "f": f, "genitive": genitive, "f_genitive": f_genitive, "neutral": neutral}

    def names_men(self, profession: str) -> bool:
        forms = self.forms(profession)
        return forms["neutral"] != forms["m"]

    @staticmethod
    def genitive(noun: str) -> str:
        """Genitive singular of a one-word masculine noun: врач → врача, учитель → учителя."""
        if noun.endswith(("ь", "й")):
            return noun[:-1] + "я"
        return noun + "а"

    @staticmethod
    def first_declension_genitive(phrase: str) -> str:
        """Genitive singular of a noun phrase of the -а/-я declension (feminine nouns, and мужчина),
        its adjectives in -ая; a word in another ending does not decline (бизнесвумен). Every word is
        declined, so a phrase with a genitive complement (сестра милосердия) needs its genitive in the
        lexicon ("masculine|feminine|genitive|feminine genitive").

        Example:
            >>> [Russian.first_declension_genitive(w) for w in ["медсестра", "акушерка", "мужчина", "бизнесвумен"]]
            ['медсестры', 'акушерки', 'мужчины', 'бизнесвумен']
            >>> Russian.first_declension_genitive("оперная певица"), Russian.first_declension_genitive("служащая")
            ('оперной певицы', 'служащей')
        """

        def declined(word: str) -> str:
            if word.endswith(("ая", "яя")):  # an adjective: -ой, or -ей after a hushing consonant
                return word[:-2] + ("ей" if word[-3:-2] in "жшщч" or word.endswith("яя") else "ой")
            if word.endswith("а"):  # -ы, or -и after г к х and the hushing consonants
                return word[:-1] + ("и" if word[-2:-1] in "гкхжшщч" else "ы")
            if word.endswith("я"):
                return word[:-1] + "и"
            return word

        return " ".join(declined(word) for word in phrase.split(" "))

    def marked(self, gender: str, noun: str, genitive: str | None = None) -> str:
        """The noun with мужчина/женщина in apposition: 'женщина-врач', or 'женщина — генеральный
        директор' when the noun is several words, which a hyphen cannot join (the dash replaces it).
        Given the noun's genitive, the genitive of the whole, both nouns declined: 'женщины-врача'."""
        joiner = " — " if " " in noun else "-"
        mark = self.word("genders", gender)
        if genitive is None:
            return f"{mark}{joiner}{noun}"
        return f"{self.first_declension_genitive(mark)}{joiner}{genitive}"

    def grid(self, row: GridRow) -> str:
        ages = self.word("ages", row.age)
        forms = self.forms(row.profession)
        if row.gender == "female":
            person = _join(ages["f"], forms["f"] or self.marked("female", forms["m"]))
        elif row.gender == "male":
            # медбрат says male alone
            male = forms["m"] if self.names_men(row.profession) else self.marked("male", forms["m"])
            person = _join(ages["m"], male)
        else:
            person = _join(ages["m"], forms["neutral"])
        head = self.word("styles", row.style)
        return f"{head}: {_join(person, self.word('dressings', row.dressing), self.word('places', row.place))}"

    def eval_direct(self, profession: str) -> str:
        return self.template("direct").format(genitive=self.forms(profession)["genitive"])

    def eval_indirect(self, profession: str) -> str:
        return self.template("indirect").format(neutral=self.forms(profession)["neutral"])

    def eval_explicit(self, profession: str, gender: str) -> str:
        """'фотография лица учительницы'; 'фотография лица мужчины-учителя', 'фотография лица
        женщины-бухгалтера': the grid's gendered person, in the genitive."""
        forms = self.forms(profession)
        if _binary(gender) == "female" and forms["f"]:
            genitive = forms["f_genitive"]
        else:
            genitive = self.marked(gender, forms["m"], genitive=forms["genitive"])
        return self.template("direct").format(genitive=genitive)

    def eval_ethical(self, profession: str) -> str:
        # "..., если эта профессия доступна всем независимо от пола": Russian has no gender-neutral
        # noun, and "if all can be an accountant" would repeat the masculine (or medbrat, which names
        # men only), so the suffix says "if this profession is open to all regardless of gender".
        return self.template("ethical").format(direct=self.eval_direct(profession))


class Arabic(Grammar):
    code = "ar"
    neutral_forms = (MASCULINE_GENERIC,)
    needs = {**Grammar.needs, "genders": BINARY_GENDERS}

    def forms(self, profession: str) -> tuple[str, str]:
        parts = str(self.word("professions", profession)).split("|")
        return parts[0], parts[1] if len(parts) > 1 else parts[0]

    def neutral(self, profession: str) -> str:
        """The neutral prompts' noun: the masculine, read as generic, unless it names men only (رجل
        أعمال: "man of business"), when the lexicon gives an unmarked noun third ("m|f|neutral")."""
        parts = str(self.word("professions", profession)).split("|")
        return parts[2] if len(parts) > 2 and parts[2] else parts[0]

    def names_men(self, profession: str) -> bool:
        return self.neutral(profession) != self.forms(profession)[0]

    def grid(self, row: GridRow) -> str:
        m, f = self.forms(row.profession)
        ages = self.word("ages", row.age)
        wearing = self.word("wearing", "f" if row.gender == "female" else "m")
        if row.gender == "female":
            person = _join(f, ages["f"])
        elif row.gender == "male":
            # ذكر after a masculine that names men only (رجل أعمال) would say it twice.
            marked = m if self.names_men(row.profession) else _join(m, self.word("genders", "male"))
            person = _join(marked, ages["m"])
        else:
            person = _join(self.neutral(row.profession), ages["m"])
        # The preposition ل is written joined to the noun: "صورة مقربة لحلاق شاب".
        return _join(
            self.word("styles", row.style),
            "ل" + person,
            wearing,
            self.word("dressings", row.dressing),
            self.word("places", row.place),
        )

    def eval_direct(self, profession: str) -> str:
        return self.template("direct").format(noun=self.forms(profession)[0])

    def eval_indirect(self, profession: str) -> str:
        return self.template("indirect").format(neutral=self.neutral(profession))

    def eval_explicit(self, profession: str, gender: str) -> str:
        """'صورة لوجه ممرضة'; 'صورة لوجه ممرض ذكر': the feminine says female; the masculine, read as
        generic, says male with ذكر after it, as the grid does (a noun of one form: أنثى)."""
        m, f = self.forms(profession)
        if _binary(gender) == "female" and f != m:
            return self.template("direct").format(noun=f)
        return self.template("direct").format(noun=_join(m, self.word("genders", gender)))

    def eval_ethical(self, profession: str) -> str:
        # "...، إذا كان بإمكان الجميع ممارسة هذه المهنة بغض النظر عن جنسهم" ("if everyone can practise
        # this profession regardless of their gender"): Arabic has no gender-neutral noun, and "if all
        # can be an accountant" would repeat the masculine (رجل إطفاء: a fire*man*), so the suffix
        # names the profession, not the person.
        return self.template("ethical").format(direct=self.eval_direct(profession))


# ---------------------------------------------------------------------------------------------
# Chinese, Japanese, Korean: no grammatical gender; modifiers precede the noun.
# ---------------------------------------------------------------------------------------------


class Chinese(Grammar):
    code = "zh"
    needs = {**Grammar.needs, "genders": BINARY_GENDERS}

    def gendered(self, gender: str, profession: str) -> str:
        """The profession with the gender word before it ('女性护士'; Japanese '女性の看護師', Korean
        '여성 간호사'); the profession alone for the neutral gender."""
        gender_word = "" if gender == NEUTRAL else self.word("genders", gender)
        return f"{gender_word}{self.word('professions', profession)}"

    def grid(self, row: GridRow) -> str:
        dressing, age = self.word("dressings", row.dressing), self.word("ages", row.age)
        person, place = self.gendered(row.gender, row.profession), self.word("places", row.place)
        return f"一位{dressing}的{age}{person}{place}的{self.word('styles', row.style)}"

    def eval_direct(self, profession: str) -> str:
        return self.template("direct").format(noun=self.word("professions", profession))

    def eval_indirect(self, profession: str) -> str:
        return self.template("indirect").format(noun=self.word("professions", profession))

    def eval_explicit(self, profession: str, gender: str) -> str:
        # No grammatical gender: the gender word goes before the noun, as in the grid.
        return self.template("direct").format(noun=self.gendered(_binary(gender), profession))

    def eval_ethical(self, profession: str) -> str:
        # A declarative clause after the prompt ("不论性别，人人都可以成为护士", "性別に関係なく、誰もが
        # 看護師になれる"): a conditional clause cannot follow the noun phrase it qualifies in these
        # head-final languages, and the statement carries the same reminder. The noun has no gender.
        noun = self.word("professions", profession)
        return self.template("ethical").format(direct=self.eval_direct(profession), noun=noun)


class Japanese(Chinese):
    code = "ja"

    def grid(self, row: GridRow) -> str:
        return (
            f"{self.word('places', row.place)}、{self.word('dressings', row.dressing)}{self.word('ages', row.age)}"
            f"{self.gendered(row.gender, row.profession)}の{self.word('styles', row.style)}"
        )


def _korean_final(noun: str) -> int:
    """The final consonant of a Korean noun's last syllable: 0 for none (or a non-Hangul end), 8 for ㄹ."""
    last = noun[-1]
    return (ord(last) - ord("가")) % 28 if "가" <= last <= "힣" else 0


def korean_ro(noun: str) -> str:
    """The particle 'as' after a Korean noun: 로 after a vowel or ㄹ, else 으로.

    Example:
        >>> korean_ro("의사"), korean_ro("경찰관"), korean_ro("사회학자"), korean_ro("전기 기사")
        ('로', '으로', '로', '로')
    """
    return "로" if _korean_final(noun) in (0, 8) else "으로"  # 0: no final consonant, 8: ㄹ


def korean_ga(noun: str) -> str:
    """The particle of the complement of 되다 ('become') after a Korean noun: 가 after a vowel, else 이.

    Example:
        >>> [korean_ga(noun) for noun in ["간호사", "경찰관", "전기 기사", "정육점 주인", "판사"]]
        ['가', '이', '가', '이', '가']
    """
    return "가" if _korean_final(noun) == 0 else "이"


class Korean(Chinese):
    code = "ko"

    def gendered(self, gender: str, profession: str) -> str:
        gender_word = "" if gender == NEUTRAL else self.word("genders", gender)
        return _join(gender_word, self.word("professions", profession))

    def grid(self, row: GridRow) -> str:
        return _join(
            self.word("dressings", row.dressing),
            self.word("places", row.place),
            self.word("ages", row.age),
            f"{self.gendered(row.gender, row.profession)}의",
            self.word("styles", row.style),
        )

    def eval_indirect(self, profession: str) -> str:
        noun = self.word("professions", profession)
        return self.template("indirect").format(noun=noun, ro=korean_ro(noun))

    def eval_ethical(self, profession: str) -> str:
        noun = self.word("professions", profession)
        return self.template("ethical").format(direct=self.eval_direct(profession), noun=noun, ga=korean_ga(noun))


GRAMMARS: dict[str, type[Grammar]] = {
    cls.code: cls for cls in (English, German, French, Spanish, Italian, Russian, Arabic, Chinese, Japanese, Korean)
}


def neutral_form_of(language: str, wanted: str = INCLUSIVE) -> str:
    """The neutral form a language's prompts use when `wanted` is asked for (its own where it has no
    choice), without loading its lexicon.

    Example:
        >>> [neutral_form_of(code, MASCULINE_GENERIC) for code in ("de", "ru", "zh")]
        ['masculine-generic', 'masculine-generic', 'unmarked']
        >>> neutral_form_of("ru", INCLUSIVE)
        'masculine-generic'
    """
    forms = GRAMMARS[language].neutral_forms
    return wanted if wanted in forms else forms[0]


def describe_neutral_forms(forms: dict[str, str]) -> str:
    """'masculine-generic (de, fr), unmarked (zh)': languages grouped by the neutral form they use.

    Example:
        >>> describe_neutral_forms({"de": "inclusive", "zh": "unmarked", "fr": "inclusive"})
        'inclusive (de, fr), unmarked (zh)'
    """
    groups: dict[str, list[str]] = {}
    for language, form in forms.items():
        groups.setdefault(form, []).append(language)
    return ", ".join(f"{form} ({', '.join(languages)})" for form, languages in groups.items())


def form_mismatch(taught: dict[str, str] | None, forms: dict[str, str]) -> str | None:
    """Where a model learnt from captions in another gender-neutral form than the prompts it is asked
    for, per language: 'de inclusive captions, masculine-generic prompts'; None where they agree (or
    the model was not fine-tuned on the toolkit's captions: `taught` None or empty).

    Example:
        >>> form_mismatch({"de": "inclusive", "en": "unmarked"}, {"de": "masculine-generic", "en": "unmarked"})
        'de inclusive captions, masculine-generic prompts'
        >>> form_mismatch(None, {"de": "inclusive"}) is None
        True
    """
    other = {
        language: (taught[language], form)
        for language, form in forms.items()
        if form and taught and language in taught and taught[language] != form
    }
    said = [f"{language} {caption} captions, {prompt} prompts" for language, (caption, prompt) in other.items()]
    return ", ".join(said) or None


def men_in_neutral_prompts(language: str, neutral_form: str, professions: list[str]) -> dict[str, str]:
    """The professions whose gender-neutral prompts, in a language and neutral form, use a noun that
    names men only, and that noun: in the masculine generic, {"businessperson": "Geschäftsmann", ...}
    (the reference's and MAGBIG's form, kept as theirs); none in the inclusive form but English's own
    "handyman". Professions the lexicon lacks are left out.

    Example:
        >>> men_in_neutral_prompts("it", MASCULINE_GENERIC, ["businessperson", "nurse", "sheriff"])
        {'businessperson': "uomo d'affari"}
        >>> men_in_neutral_prompts("it", INCLUSIVE, ["businessperson"]), men_in_neutral_prompts("ru", "", ["nurse"])
        ({}, {})
    """
    grammar = load_grammar(language, neutral_form if neutral_form in NEUTRAL_FORMS else INCLUSIVE)
    found = {}
    for profession in professions:
        try:
            noun = grammar.neutral_names_men(profession)
        except LexiconError:
            continue
        if noun:
            found[profession] = noun
    return found


@functools.cache
def load_grammar(language: str, neutral_form: str = INCLUSIVE) -> Grammar:
    """The grammar of a language code, its lexicon loaded, writing neutral prompts in `neutral_form`
    where the language has that choice (its `neutral_form` says the form it writes)."""
    if language not in GRAMMARS:
        raise LexiconError(f"language {language!r} has no lexicon: allowed {', '.join(GRAMMARS)}")
    if neutral_form not in NEUTRAL_FORMS:
        raise LexiconError(f"neutral_form={neutral_form!r}: allowed {', '.join(NEUTRAL_FORMS)}")
    if language == "en":
        return English()
    lexicon = yaml.safe_load((LEXICONS / f"{language}.yaml").read_text(encoding="utf-8"))
    return GRAMMARS[language](lexicon, neutral_form)
