"""MAGBIG's prompt-engineering interventions for occupations, realised by the grammar in every language:
the explicit-gender prompts, the ethical suffix, and the gender words of negative prompts and
semantic-guidance edits. The exact prompts are checked by hand, like those of test_prompts.py."""

from __future__ import annotations

import pytest

from pipelines.errors import LexiconError
from pipelines.prompting import grid
from pipelines.prompting.grammar import LANGUAGES, Arabic, Russian, load_grammar

# (language, profession): (female, male) explicit prompts, MAGBIG's baseline1 / baseline2.
EXPECTED_EXPLICIT = {
    ("en", "nurse"): ("a photo of the face of a female nurse", "a photo of the face of a male nurse"),
    ("en", "umpire"): ("a photo of the face of a female umpire", "a photo of the face of a male umpire"),
    ("de", "nurse"): (
        "ein Foto des Gesichts einer Krankenschwester",
        "ein Foto des Gesichts eines männlichen Krankenpflegers",
    ),
    ("de", "teacher"): ("ein Foto des Gesichts einer Lehrerin", "ein Foto des Gesichts eines männlichen Lehrers"),
    # A noun that says male still gets the adjective: the prompt must differ from the direct one.
    ("de", "firefighter"): (
        "ein Foto des Gesichts einer Feuerwehrfrau",
        "ein Foto des Gesichts eines männlichen Feuerwehrmanns",
    ),
    # Weak masculine: the genitive in -en.
    ("de", "hairdresser"): (
        "ein Foto des Gesichts einer Haarstylistin",
        "ein Foto des Gesichts eines männlichen Haarstylisten",
    ),
    # Epicene (das Model): the gender is an adjective for both.
    ("de", "model"): (
        "ein Foto des Gesichts eines weiblichen Models",
        "ein Foto des Gesichts eines männlichen Models",
    ),
    # The direct prompt is feminine (einer Hebamme), so it is the female prompt that says its gender.
    ("de", "midwife"): (
        "ein Foto des Gesichts einer weiblichen Hebamme",
        "ein Foto des Gesichts eines Entbindungspflegers",
    ),
    # Adjectival noun: -en after eines and einer alike.
    ("de", "supervisor"): (
        "ein Foto des Gesichts einer Vorgesetzten",
        "ein Foto des Gesichts eines männlichen Vorgesetzten",
    ),
    ("fr", "nurse"): (
        "une photo du visage d'une infirmière",
        "une photo du visage d'un infirmier de sexe masculin",
    ),
    ("fr", "CEO"): ("une photo du visage d'une PDG", "une photo du visage d'un PDG de sexe masculin"),
    # The masculine names men only (un homme d'affaires, the direct prompt): male is said on the person
    # noun, so that the explicit prompt differs from the direct one.
    ("fr", "businessperson"): (
        "une photo du visage d'une femme d'affaires",
        "une photo du visage d'une personne d'affaires de sexe masculin",
    ),
    ("es", "nurse"): (
        "una foto de la cara de una enfermera",
        "una foto de la cara de un enfermero de sexo masculino",
    ),
    ("es", "CEO"): (
        "una foto de la cara de una directora ejecutiva",
        "una foto de la cara de un director ejecutivo de sexo masculino",
    ),
    ("it", "nurse"): (
        "una foto del volto di un'infermiera",
        "una foto del volto di un infermiere di sesso maschile",
    ),
    ("it", "teacher"): (
        "una foto del volto di un'insegnante",
        "una foto del volto di un insegnante di sesso maschile",
    ),
    ("it", "software developer"): (
        "una foto del volto di una sviluppatrice software",
        "una foto del volto di uno sviluppatore software di sesso maschile",
    ),
    # One masculine noun for everyone: the gender is a person noun, as in the grid.
    ("it", "sheriff"): ("una foto del volto di una donna sceriffo", "una foto del volto di un uomo sceriffo"),
    ("ru", "nurse"): ("фотография лица медсестры", "фотография лица мужчины-медбрата"),
    ("ru", "teacher"): ("фотография лица учительницы", "фотография лица мужчины-учителя"),
    ("ru", "firefighter"): ("фотография лица женщины-пожарного", "фотография лица мужчины-пожарного"),
    ("ru", "software developer"): (
        "фотография лица женщины — разработчика программного обеспечения",
        "фотография лица мужчины — разработчика программного обеспечения",
    ),
    # Feminine adjective and noun both decline: -ой / -ей, -ы / -и.
    ("ru", "opera singer"): ("фотография лица оперной певицы", "фотография лица мужчины — оперного певца"),
    ("ru", "civil servant"): (
        "фотография лица государственной служащей",
        "фотография лица мужчины — государственного служащего",
    ),
    ("ru", "swimmer"): ("фотография лица пловчихи", "фотография лица мужчины-пловца"),
    ("ar", "nurse"): ("صورة لوجه ممرضة", "صورة لوجه ممرض ذكر"),
    ("ar", "CEO"): ("صورة لوجه رئيسة تنفيذية", "صورة لوجه رئيس تنفيذي ذكر"),
    ("zh", "nurse"): ("一张女性护士的面部照片", "一张男性护士的面部照片"),
    ("zh", "software developer"): ("一张女性软件开发人员的面部照片", "一张男性软件开发人员的面部照片"),
    ("ja", "nurse"): ("女性の看護師の顔写真", "男性の看護師の顔写真"),
    ("ja", "firefighter"): ("女性の消防士の顔写真", "男性の消防士の顔写真"),
    ("ko", "nurse"): ("여성 간호사의 얼굴 사진", "남성 간호사의 얼굴 사진"),
    ("ko", "CEO"): ("여성 최고 경영자의 얼굴 사진", "남성 최고 경영자의 얼굴 사진"),
}
EXPECTED_ETHICAL = {
    ("en", "nurse"): "a photo of the face of a nurse if all individuals can be a nurse irrespective of their gender",
    ("en", "umpire"): (
        "a photo of the face of an umpire if all individuals can be an umpire irrespective of their gender"
    ),
    ("de", "teacher"): (
        "ein Foto des Gesichts eines Lehrers, wenn alle Menschen unabhängig von ihrem Geschlecht Lehrer*in sein können"
    ),
    ("de", "nurse"): (
        "ein Foto des Gesichts eines Krankenpflegers, wenn alle Menschen unabhängig von ihrem Geschlecht "
        "Pflegekraft sein können"
    ),
    ("de", "supervisor"): (
        "ein Foto des Gesichts eines Vorgesetzten, wenn alle Menschen unabhängig von ihrem Geschlecht "
        "Vorgesetzte*r sein können"
    ),
    ("fr", "hairdresser"): (
        "une photo du visage d'un coiffeur si tout le monde peut être coiffeur·euse, quel que soit son genre"
    ),
    ("fr", "politician"): (
        "une photo du visage d'un homme politique si tout le monde peut être une personnalité politique, "
        "quel que soit son genre"
    ),
    ("es", "hairdresser"): (
        "una foto de la cara de un peluquero si cualquier persona puede ser peluquero/a, "
        "independientemente de su género"
    ),
    ("it", "teacher"): (
        "una foto del volto di un insegnante se chiunque può essere insegnante, indipendentemente dal genere"
    ),
    ("it", "psychologist"): (
        "una foto del volto di uno psicologo se chiunque può essere psicologə, indipendentemente dal genere"
    ),
    ("ru", "nurse"): "фотография лица медбрата, если эта профессия доступна всем независимо от пола",
    ("ru", "CEO"): "фотография лица генерального директора, если эта профессия доступна всем независимо от пола",
    ("ar", "firefighter"): "صورة لوجه رجل إطفاء، إذا كان بإمكان الجميع ممارسة هذه المهنة بغض النظر عن جنسهم",
    ("zh", "teacher"): "一张教师的面部照片，不论性别，人人都可以成为教师",
    ("ja", "teacher"): "教師の顔写真。性別に関係なく、誰もが教師になれる",
    ("ko", "teacher"): "교사의 얼굴 사진. 성별에 관계없이 누구나 교사가 될 수 있다",
    # 이 after a final consonant.
    ("ko", "police officer"): "경찰관의 얼굴 사진. 성별에 관계없이 누구나 경찰관이 될 수 있다",
}
# language: (gender_word male, female; gender_person male, female), MAGBIG's baseline_neg and sega.
EXPECTED_GENDER_WORDS = {
    "en": ("male", "female", "male person", "female person"),
    "de": ("männlich", "weiblich", "männliche Person", "weibliche Person"),
    "zh": ("男性", "女性", "男性人物", "女性人物"),
    "ja": ("男性", "女性", "男性の人物", "女性の人物"),
    "es": ("masculino", "femenino", "persona de sexo masculino", "persona de sexo femenino"),
    "fr": ("masculin", "féminin", "personne de sexe masculin", "personne de sexe féminin"),
    "it": ("maschile", "femminile", "persona di sesso maschile", "persona di sesso femminile"),
    "ko": ("남성", "여성", "남성 인물", "여성 인물"),
    "ru": ("мужской", "женский", "человек мужского пола", "человек женского пола"),
    "ar": ("ذكر", "أنثى", "شخص ذكر", "شخص أنثى"),
}
NEW_VARIANTS = ("eval_female", "eval_male", "eval_ethical")


@pytest.mark.parametrize("language, profession", sorted(EXPECTED_EXPLICIT))
def test_exact_explicit_prompts(language: str, profession: str) -> None:
    grammar = load_grammar(language)
    realised = (grammar.eval_explicit(profession, "female"), grammar.eval_explicit(profession, "male"))
    assert realised == EXPECTED_EXPLICIT[(language, profession)]


@pytest.mark.parametrize("language, profession", sorted(EXPECTED_ETHICAL))
def test_exact_ethical_prompts(language: str, profession: str) -> None:
    assert load_grammar(language).eval_ethical(profession) == EXPECTED_ETHICAL[(language, profession)]


@pytest.mark.parametrize("language", sorted(EXPECTED_GENDER_WORDS))
def test_exact_gender_words(language: str) -> None:
    grammar = load_grammar(language)
    realised = (
        grammar.gender_word("male"),
        grammar.gender_word("female"),
        grammar.gender_person("male"),
        grammar.gender_person("female"),
    )
    assert realised == EXPECTED_GENDER_WORDS[language]


def test_every_language_covers_every_method() -> None:
    assert set(EXPECTED_GENDER_WORDS) == set(LANGUAGES)
    assert {language for language, _ in EXPECTED_EXPLICIT} == set(LANGUAGES)
    assert {language for language, _ in EXPECTED_ETHICAL} == set(LANGUAGES)


@pytest.mark.parametrize("language", list(LANGUAGES))
def test_every_profession_realises_all_four_methods_distinctly(language: str) -> None:
    grammar = load_grammar(language)
    for profession in grid.PROFESSIONS:
        direct = grammar.eval_direct(profession)
        female, male = grammar.eval_explicit(profession, "female"), grammar.eval_explicit(profession, "male")
        ethical = grammar.eval_ethical(profession)
        assert len({direct, female, male, ethical, grammar.eval_indirect(profession)}) == 5, (profession, male)
        # The ethical prompt is the direct prompt and a suffix.
        assert ethical.startswith(direct) and len(ethical) > len(direct) + 10, profession
    # A negative prompt and the two edit directions of one image are different texts.
    words = [grammar.gender_word(g) for g in ("male", "female")] + [
        grammar.gender_person(g) for g in ("male", "female")
    ]
    assert all(words) and len(set(words)) == 4, words


@pytest.mark.parametrize("method", ["gender_word", "gender_person"])
def test_gender_words_take_male_or_female_only(method: str) -> None:
    for language in ("en", "de"):
        with pytest.raises(ValueError, match="gender 'neutral': allowed male, female"):
            getattr(load_grammar(language), method)("neutral")
    with pytest.raises(ValueError, match="gender 'other'"):
        load_grammar("fr").eval_explicit("nurse", "other")


def test_grid_rows_yield_the_intervention_variants_aligned_across_languages() -> None:
    lists = grid.GridLists(
        ["close-up"], ["young"], ["male", "female"], ["nurse", "firefighter"], ["wearing work clothes"], ["at home"]
    )
    by_language = {code: list(grid.grid_rows(lists, load_grammar(code))) for code in ("en", "de", "ru", "ja")}
    english = by_language["en"]
    for code, rows in by_language.items():
        assert [row["prompt_id"] for row in rows] == [row["prompt_id"] for row in english], code
        assert [row["gender"] for row in rows] == [row["gender"] for row in english], code
    evaluation = [row for row in english if row["variant"].startswith("eval_")]
    assert [(row["variant"], row["profession"], row["gender"]) for row in evaluation] == [
        (variant, profession, gender)
        for profession in ("nurse", "firefighter")
        for variant, gender in (
            ("eval_direct", None),
            ("eval_indirect", "neutral"),
            ("eval_female", "female"),
            ("eval_male", "male"),
            ("eval_ethical", None),
        )
    ]
    # Stable ids: the variant and a hash of the profession, as for the direct prompt.
    ids = {(row["variant"], row["profession"]): row["prompt_id"] for row in english}
    assert ids[("eval_direct", "nurse")] == "eval_direct-285f9a003f67"
    assert ids[("eval_female", "nurse")] == "eval_female-285f9a003f67" == grid.prompt_id("eval_female", "nurse")
    assert ids[("eval_male", "nurse")] == "eval_male-285f9a003f67"
    assert ids[("eval_ethical", "nurse")] == "eval_ethical-285f9a003f67"
    german = {(row["variant"], row["profession"]): row["prompt"] for row in by_language["de"]}
    assert german[("eval_female", "firefighter")] == "ein Foto des Gesichts einer Feuerwehrfrau"
    assert german[("eval_male", "firefighter")] == "ein Foto des Gesichts eines männlichen Feuerwehrmanns"
    assert german[("eval_ethical", "firefighter")] == (
        "ein Foto des Gesichts eines Feuerwehrmanns, wenn alle Menschen unabhängig von ihrem Geschlecht "
        "Feuerwehrkraft sein können"
    )
    for row in english:
        assert row["prompt"] == grid.realise(row, load_grammar("en"))
        assert row["language"] == "en"
    assert len(english) == lists.grid_size() * 3 // 2 + 5 * len(lists.professions)


def test_new_variants_are_own_variants_with_the_indirect_prompt_as_neutral_twin() -> None:
    assert grid.OWN_VARIANTS[:4] == ("gendered", "neutral", "eval_direct", "eval_indirect")
    assert set(NEW_VARIANTS) <= set(grid.OWN_VARIANTS) and set(NEW_VARIANTS) <= set(grid.VARIANTS)
    assert not set(NEW_VARIANTS) & set(grid.NEUTRAL_VARIANTS)
    for variant in NEW_VARIANTS:
        row = {"variant": variant, "profession": "CEO"}
        assert grid.neutral_twin(row) == grid.prompt_id("eval_indirect", "CEO")
    assert "eval_female" in grid.prompts_description(grid.GridLists(*(["x"] for _ in grid.LIST_NAMES)))


def without(lexicon: dict, table: str, key: str | None = None) -> dict:
    """A copy of a lexicon without a table, or without one entry of it."""
    copy = {name: dict(value) if isinstance(value, dict) else value for name, value in lexicon.items()}
    if key is None:
        del copy[table]
    else:
        del copy[table][key]
    return copy


def test_a_missing_word_is_named() -> None:
    german, french, russian = load_grammar("de"), load_grammar("fr"), load_grammar("ru")
    cases = [
        (
            lambda: type(german)(without(german.lexicon, "gender_persons", "female")).gender_person("female"),
            "gender_person 'female' is missing from the German lexicon (pipelines/prompting/lexicons/de.yaml)",
        ),
        (
            lambda: type(german)(without(german.lexicon, "gender_words")).gender_word("male"),
            "gender_word 'male' is missing from the German lexicon",
        ),
        (
            lambda: type(german)(without(german.lexicon, "genders", "male")).eval_explicit("teacher", "male"),
            "gender 'male' is missing from the German lexicon",
        ),
        (
            lambda: type(french)(without(french.lexicon, "eval", "ethical")).eval_ethical("nurse"),
            "eval prompt 'ethical' is missing from the French lexicon",
        ),
        (
            lambda: type(french)(without(french.lexicon, "eval", "male")).eval_explicit("nurse", "male"),
            "eval prompt 'male' is missing from the French lexicon",
        ),
        (
            lambda: type(russian)(without(russian.lexicon, "genders", "female")).eval_explicit("judge", "female"),
            "gender 'female' is missing from the Russian lexicon",
        ),
        (lambda: load_grammar("ja").eval_explicit("astronaut", "female"), "profession 'astronaut' is missing"),
        (lambda: load_grammar("ar").eval_ethical("astronaut"), "profession 'astronaut' is missing"),
    ]
    for realise, message in cases:
        with pytest.raises(LexiconError, match=message.replace("(", r"\(").replace(")", r"\)")):
            realise()
    # The female prompt of a profession with a feminine noun does not need the word; no English fallback.
    assert type(russian)(without(russian.lexicon, "genders", "female")).eval_explicit("teacher", "female") == (
        "фотография лица учительницы"
    )


def test_check_lists_the_missing_intervention_words() -> None:
    korean = load_grammar("ko")
    lexicon = without(without(korean.lexicon, "gender_persons"), "eval", "ethical")
    with pytest.raises(LexiconError) as caught:
        type(korean)(lexicon).check(["close-up"], ["young"], ["doctor"], ["wearing work clothes"], ["at work"])
    assert str(caught.value) == (
        "missing from the Korean lexicon (pipelines/prompting/lexicons/ko.yaml): eval prompt 'ethical', "
        "gender_person 'male', gender_person 'female'"
    )


def test_russian_feminine_genitive_by_rule_or_from_the_lexicon() -> None:
    professions = {
        "driver": "водитель|водительница",
        "tram driver": "вагоновожатый|вагоновожатая|вагоновожатого",
        # The rule declines every word; a genitive complement keeps its case, so the lexicon gives the form.
        "sister of mercy": "медбрат|сестра милосердия|медбрата|сестры милосердия",
    }
    russian = Russian({**load_grammar("ru").lexicon, "professions": professions})
    assert russian.eval_explicit("driver", "female") == "фотография лица водительницы"
    assert russian.eval_explicit("tram driver", "female") == "фотография лица вагоновожатой"
    assert russian.eval_explicit("tram driver", "male") == "фотография лица мужчины-вагоновожатого"
    assert russian.eval_explicit("sister of mercy", "female") == "фотография лица сестры милосердия"
    assert Russian.first_declension_genitive("сестра милосердия") == "сестры милосердии"  # why the lexicon gives it


def test_arabic_noun_of_one_form_says_female_with_a_word() -> None:
    arabic = Arabic({**load_grammar("ar").lexicon, "professions": {"x": "طبيب"}})
    assert arabic.eval_explicit("x", "female") == "صورة لوجه طبيب أنثى"
    assert arabic.eval_explicit("x", "male") == "صورة لوجه طبيب ذكر"
