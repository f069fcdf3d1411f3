"""The prompt grid and its translations: counts, ids lined up, and the exact prompts, reviewed by hand."""

from __future__ import annotations

import itertools
from pathlib import Path

import datasets
import pytest

from pipelines import generate_prompts, translate_prompts
from pipelines.artifacts.store import LocalStore
from pipelines.errors import ConfigError, LexiconError
from pipelines.prompting import grid as attributes
from pipelines.prompting.grammar import LANGUAGES, Grammar, GridRow, english_article, load_grammar

ALL = [code for code in LANGUAGES if code != "en"]
ATTRIBUTES = {
    "nurse": ("medium shot", "adult", "wearing ethnic clothes", "at home"),
    "teacher": ("long shot", "elderly", "wearing work clothes", "at home"),
    "engineer": ("close-up", "young", "wearing ethnic clothes", "at work"),
}
# (language, profession): (male, female, neutral), each checked by a reader of the language.
EXPECTED_GRID = {
    ("en", "nurse"): (
        "medium shot photo of an adult male nurse wearing ethnic clothes at home",
        "medium shot photo of an adult female nurse wearing ethnic clothes at home",
        "medium shot photo of an adult nurse wearing ethnic clothes at home",
    ),
    ("en", "teacher"): (
        "long shot photo of an elderly male teacher wearing work clothes at home",
        "long shot photo of an elderly female teacher wearing work clothes at home",
        "long shot photo of an elderly teacher wearing work clothes at home",
    ),
    ("en", "engineer"): (
        "close-up photo of a young male engineer wearing ethnic clothes at work",
        "close-up photo of a young female engineer wearing ethnic clothes at work",
        "close-up photo of a young engineer wearing ethnic clothes at work",
    ),
    ("de", "nurse"): (
        "Halbnahe Aufnahme eines erwachsenen Krankenpflegers in traditioneller Kleidung zu Hause",
        "Halbnahe Aufnahme einer erwachsenen Krankenschwester in traditioneller Kleidung zu Hause",
        "Halbnahe Aufnahme einer erwachsenen Pflegekraft in traditioneller Kleidung zu Hause",
    ),
    ("de", "teacher"): (
        "Totale eines älteren Lehrers in Arbeitskleidung zu Hause",
        "Totale einer älteren Lehrerin in Arbeitskleidung zu Hause",
        "Totale eines*einer älteren Lehrer*in in Arbeitskleidung zu Hause",
    ),
    ("de", "engineer"): (
        "Nahaufnahme eines jungen Ingenieurs in traditioneller Kleidung bei der Arbeit",
        "Nahaufnahme einer jungen Ingenieurin in traditioneller Kleidung bei der Arbeit",
        "Nahaufnahme eines*einer jungen Ingenieur*in in traditioneller Kleidung bei der Arbeit",
    ),
    ("zh", "nurse"): (
        "一位身穿民族服装的成年男性护士在家中的中景照片",
        "一位身穿民族服装的成年女性护士在家中的中景照片",
        "一位身穿民族服装的成年护士在家中的中景照片",
    ),
    ("zh", "teacher"): (
        "一位身穿工作服的年长男性教师在家中的远景照片",
        "一位身穿工作服的年长女性教师在家中的远景照片",
        "一位身穿工作服的年长教师在家中的远景照片",
    ),
    ("zh", "engineer"): (
        "一位身穿民族服装的年轻男性工程师在工作中的特写照片",
        "一位身穿民族服装的年轻女性工程师在工作中的特写照片",
        "一位身穿民族服装的年轻工程师在工作中的特写照片",
    ),
    ("ja", "nurse"): (
        "自宅にいる、民族衣装を着た大人の男性の看護師のミディアムショットの写真",
        "自宅にいる、民族衣装を着た大人の女性の看護師のミディアムショットの写真",
        "自宅にいる、民族衣装を着た大人の看護師のミディアムショットの写真",
    ),
    ("ja", "teacher"): (
        "自宅にいる、作業着を着た年配の男性の教師のロングショットの写真",
        "自宅にいる、作業着を着た年配の女性の教師のロングショットの写真",
        "自宅にいる、作業着を着た年配の教師のロングショットの写真",
    ),
    ("ja", "engineer"): (
        "仕事中の、民族衣装を着た若い男性のエンジニアのクローズアップ写真",
        "仕事中の、民族衣装を着た若い女性のエンジニアのクローズアップ写真",
        "仕事中の、民族衣装を着た若いエンジニアのクローズアップ写真",
    ),
    ("es", "nurse"): (
        "Foto en plano medio de un enfermero adulto con ropa tradicional en casa",
        "Foto en plano medio de una enfermera adulta con ropa tradicional en casa",
        "Foto en plano medio de un/a enfermero/a adulto/a con ropa tradicional en casa",
    ),
    ("es", "teacher"): (
        "Foto en plano general de un profesor mayor con ropa de trabajo en casa",
        "Foto en plano general de una profesora mayor con ropa de trabajo en casa",
        "Foto en plano general de un/a profesor/a mayor con ropa de trabajo en casa",
    ),
    ("es", "engineer"): (
        "Foto en primer plano de un ingeniero joven con ropa tradicional en el trabajo",
        "Foto en primer plano de una ingeniera joven con ropa tradicional en el trabajo",
        "Foto en primer plano de un/a ingeniero/a joven con ropa tradicional en el trabajo",
    ),
    ("fr", "nurse"): (
        "Photo en plan moyen d'un infirmier adulte portant des vêtements traditionnels à la maison",
        "Photo en plan moyen d'une infirmière adulte portant des vêtements traditionnels à la maison",
        "Photo en plan moyen d'un·e infirmier·ère adulte portant des vêtements traditionnels à la maison",
    ),
    ("fr", "teacher"): (
        "Photo en plan large d'un enseignant âgé portant des vêtements de travail à la maison",
        "Photo en plan large d'une enseignante âgée portant des vêtements de travail à la maison",
        "Photo en plan large d'un·e enseignant·e âgé·e portant des vêtements de travail à la maison",
    ),
    ("fr", "engineer"): (
        "Photo en gros plan d'un jeune ingénieur portant des vêtements traditionnels au travail",
        "Photo en gros plan d'une jeune ingénieure portant des vêtements traditionnels au travail",
        "Photo en gros plan d'un·e jeune ingénieur·e portant des vêtements traditionnels au travail",
    ),
    ("it", "nurse"): (
        "Foto in piano medio di un infermiere adulto con abiti tradizionali a casa",
        "Foto in piano medio di un'infermiera adulta con abiti tradizionali a casa",
        "Foto in piano medio di unə infermierə adultə con abiti tradizionali a casa",
    ),
    ("it", "teacher"): (
        "Foto in campo lungo di un insegnante anziano con abiti da lavoro a casa",
        "Foto in campo lungo di un'insegnante anziana con abiti da lavoro a casa",
        "Foto in campo lungo di unə insegnante anzianə con abiti da lavoro a casa",
    ),
    ("it", "engineer"): (
        "Foto in primo piano di un ingegnere giovane con abiti tradizionali al lavoro",
        "Foto in primo piano di un'ingegnera giovane con abiti tradizionali al lavoro",
        "Foto in primo piano di unə ingegnerə giovane con abiti tradizionali al lavoro",
    ),
    ("ko", "nurse"): (
        "전통 의상을 입고 집에 있는 성인 남성 간호사의 미디엄 샷 사진",
        "전통 의상을 입고 집에 있는 성인 여성 간호사의 미디엄 샷 사진",
        "전통 의상을 입고 집에 있는 성인 간호사의 미디엄 샷 사진",
    ),
    ("ko", "teacher"): (
        "작업복을 입고 집에 있는 나이 든 남성 교사의 롱 샷 사진",
        "작업복을 입고 집에 있는 나이 든 여성 교사의 롱 샷 사진",
        "작업복을 입고 집에 있는 나이 든 교사의 롱 샷 사진",
    ),
    ("ko", "engineer"): (
        "전통 의상을 입고 직장에 있는 젊은 남성 엔지니어의 클로즈업 사진",
        "전통 의상을 입고 직장에 있는 젊은 여성 엔지니어의 클로즈업 사진",
        "전통 의상을 입고 직장에 있는 젊은 엔지니어의 클로즈업 사진",
    ),
    # медбрат ("medical brother") names men only: it says male alone, and the neutral prompt takes
    # an unmarked noun (медработник), not the masculine.
    ("ru", "nurse"): (
        "Фото средним планом: взрослый медбрат в национальной одежде дома",
        "Фото средним планом: взрослая медсестра в национальной одежде дома",
        "Фото средним планом: взрослый медработник в национальной одежде дома",
    ),
    ("ru", "teacher"): (
        "Фото общим планом: пожилой мужчина-учитель в рабочей одежде дома",
        "Фото общим планом: пожилая учительница в рабочей одежде дома",
        "Фото общим планом: пожилой учитель в рабочей одежде дома",
    ),
    ("ru", "engineer"): (
        "Фото крупным планом: молодой мужчина-инженер в национальной одежде на работе",
        "Фото крупным планом: молодая женщина-инженер в национальной одежде на работе",
        "Фото крупным планом: молодой инженер в национальной одежде на работе",
    ),
    ("ar", "nurse"): (
        "صورة متوسطة لممرض ذكر بالغ يرتدي ملابس تقليدية في المنزل",
        "صورة متوسطة لممرضة بالغة ترتدي ملابس تقليدية في المنزل",
        "صورة متوسطة لممرض بالغ يرتدي ملابس تقليدية في المنزل",
    ),
    ("ar", "teacher"): (
        "صورة بعيدة لمعلم ذكر مسن يرتدي ملابس العمل في المنزل",
        "صورة بعيدة لمعلمة مسنة ترتدي ملابس العمل في المنزل",
        "صورة بعيدة لمعلم مسن يرتدي ملابس العمل في المنزل",
    ),
    ("ar", "engineer"): (
        "صورة مقربة لمهندس ذكر شاب يرتدي ملابس تقليدية في العمل",
        "صورة مقربة لمهندسة شابة ترتدي ملابس تقليدية في العمل",
        "صورة مقربة لمهندس شاب يرتدي ملابس تقليدية في العمل",
    ),
}
EXPECTED_EVAL = {
    "en": ("a photo of the face of an engineer", "a photo of the face of a person who works as an engineer"),
    "de": (
        "ein Foto des Gesichts eines Ingenieurs",
        "ein Foto des Gesichts einer Person, die als Ingenieur*in arbeitet",
    ),
    "zh": ("一张工程师的面部照片", "一张职业是工程师的人的面部照片"),
    "ja": ("エンジニアの顔写真", "エンジニアとして働く人の顔写真"),
    "es": ("una foto de la cara de un ingeniero", "una foto de la cara de una persona que trabaja como ingeniero/a"),
    "fr": ("une photo du visage d'un ingénieur", "une photo du visage d'une personne qui travaille comme ingénieur·e"),
    "it": ("una foto del volto di un ingegnere", "una foto del volto di una persona che lavora come ingegnerə"),
    "ko": ("엔지니어의 얼굴 사진", "엔지니어로 일하는 사람의 얼굴 사진"),
    "ru": ("фотография лица инженера", "фотография лица человека по профессии инженер"),
    "ar": ("صورة لوجه مهندس", "صورة لوجه شخص مهنته مهندس"),
}


@pytest.mark.parametrize("language, profession", sorted(EXPECTED_GRID))
def test_exact_grid_prompts(language: str, profession: str) -> None:
    grammar = load_grammar(language)
    style, age, dressing, place = ATTRIBUTES[profession]
    realised = tuple(
        grammar.grid(GridRow(style, age, gender, profession, dressing, place))
        for gender in ("male", "female", "neutral")
    )
    assert realised == EXPECTED_GRID[(language, profession)]


@pytest.mark.parametrize("language", sorted(EXPECTED_EVAL))
def test_exact_eval_prompts(language: str) -> None:
    grammar = load_grammar(language)
    assert (grammar.eval_direct("engineer"), grammar.eval_indirect("engineer")) == EXPECTED_EVAL[language]


@pytest.mark.parametrize(
    "language, profession, gender, expected",
    [
        ("de", "barber", "male", "Nahaufnahme eines jungen Friseurs in Arbeitskleidung bei der Arbeit"),
        ("de", "barber", "female", "Nahaufnahme einer jungen Friseurin in Arbeitskleidung bei der Arbeit"),
        ("de", "barber", "neutral", "Nahaufnahme eines*einer jungen Friseur*in in Arbeitskleidung bei der Arbeit"),
        ("de", "journalist", "male", "Nahaufnahme eines jungen Journalisten in Arbeitskleidung bei der Arbeit"),
        ("de", "doctor", "female", "Nahaufnahme einer jungen Ärztin in Arbeitskleidung bei der Arbeit"),
        ("de", "model", "female", "Nahaufnahme eines jungen weiblichen Models in Arbeitskleidung bei der Arbeit"),
        ("de", "model", "neutral", "Nahaufnahme eines jungen Models in Arbeitskleidung bei der Arbeit"),
        (
            "fr",
            "actor",
            "neutral",
            "Photo en gros plan d'un·e jeune acteur·rice portant des vêtements de travail au travail",
        ),
        (
            "fr",
            "hairdresser",
            "neutral",
            "Photo en gros plan d'un·e jeune coiffeur·euse portant des vêtements de travail au travail",
        ),
        ("it", "psychologist", "male", "Foto in primo piano di uno psicologo giovane con abiti da lavoro al lavoro"),
        ("it", "actor", "female", "Foto in primo piano di un'attrice giovane con abiti da lavoro al lavoro"),
        (
            "es",
            "actor",
            "neutral",
            "Foto en primer plano de un/a actor/actriz joven con ropa de trabajo en el trabajo",
        ),
        ("en", "accountant", "male", "close-up photo of a young male accountant wearing work clothes at work"),
    ],
)
def test_exact_prompts_grammar_cases(language: str, profession: str, gender: str, expected: str) -> None:
    row = GridRow("close-up", "young", gender, profession, "wearing work clothes", "at work")
    assert load_grammar(language).grid(row) == expected


def grid_prompts(
    language: str, profession: str, age: str = "elderly", grammar: Grammar | None = None
) -> tuple[str, str, str]:
    """The male, female and neutral close-up prompts of a profession, at work in work clothes."""
    grammar = grammar or load_grammar(language)
    return tuple(
        grammar.grid(GridRow("close-up", age, gender, profession, "wearing work clothes", "at work"))
        for gender in ("male", "female", "neutral")
    )


def test_german_adjectival_nouns_decline_in_every_form() -> None:
    # Adjectival nouns (der Vorgesetzte) take -en after eines, einer and eines*einer alike; the star
    # form Vorgesetzte*r is a nominative and only follows "als". One noun from the lexicon, and one
    # that is not in it (Abgeordnete), to check the rule rather than a lexicon entry.
    german = load_grammar("de")
    lexicon = {**german.lexicon, "professions": {"member of parliament": {"adjectival": "Abgeordnet"}}}
    cases = {
        ("supervisor", german): ("Vorgesetzten", "Vorgesetzte*r"),
        ("member of parliament", type(german)(lexicon)): ("Abgeordneten", "Abgeordnete*r"),
    }
    for (profession, grammar), (genitive, star) in cases.items():
        assert grid_prompts("de", profession, grammar=grammar) == (
            f"Nahaufnahme eines älteren {genitive} in Arbeitskleidung bei der Arbeit",
            f"Nahaufnahme einer älteren {genitive} in Arbeitskleidung bei der Arbeit",
            f"Nahaufnahme eines*einer älteren {genitive} in Arbeitskleidung bei der Arbeit",
        )
        assert grammar.eval_direct(profession) == f"ein Foto des Gesichts eines {genitive}"
        assert grammar.eval_indirect(profession) == f"ein Foto des Gesichts einer Person, die als {star} arbeitet"
    # A feminine the lexicon names is an ordinary noun: die Beamtin, eines*einer Beamt*in.
    assert grid_prompts("de", "civil servant", "young") == (
        "Nahaufnahme eines jungen Beamten in Arbeitskleidung bei der Arbeit",
        "Nahaufnahme einer jungen Beamtin in Arbeitskleidung bei der Arbeit",
        "Nahaufnahme eines*einer jungen Beamt*in in Arbeitskleidung bei der Arbeit",
    )


@pytest.mark.parametrize(
    "profession, age, neutral",
    [
        ("handyman", "young", "Photo en gros plan d'une jeune personne à tout faire"),
        ("handyman", "elderly", "Photo en gros plan d'une personne à tout faire âgée"),
        ("politician", "elderly", "Photo en gros plan d'une personnalité politique âgée"),
        ("politician", "adult", "Photo en gros plan d'une personnalité politique adulte"),
    ],
)
def test_french_article_and_adjective_follow_a_feminine_noun_for_everyone(
    profession: str, age: str, neutral: str
) -> None:
    male, female, realised = grid_prompts("fr", profession, age)
    assert realised == f"{neutral} portant des vêtements de travail au travail"
    assert male.startswith("Photo en gros plan d'un ") and female.startswith("Photo en gros plan d'une ")


def test_italian_article_and_adjective_follow_a_noun_of_fixed_gender() -> None:
    # "sceriffo" is masculine whoever it names: uno sceriffo for everyone, and the gendered prompts
    # say the gender with a person noun, which the article and adjective then agree with.
    assert grid_prompts("it", "sheriff") == (
        "Foto in primo piano di un uomo sceriffo anziano con abiti da lavoro al lavoro",
        "Foto in primo piano di una donna sceriffo anziana con abiti da lavoro al lavoro",
        "Foto in primo piano di uno sceriffo anziano con abiti da lavoro al lavoro",
    )
    assert load_grammar("it").eval_direct("sheriff") == "una foto del volto di uno sceriffo"


@pytest.mark.parametrize(
    "profession, male, female",
    [
        (
            "software developer",
            "молодой мужчина — разработчик программного обеспечения",
            "молодая женщина — разработчик программного обеспечения",
        ),
        ("handyman", "молодой мужчина — мастер на все руки", "молодая женщина — мастер на все руки"),
        ("army officer", "молодой мужчина — армейский офицер", "молодая женщина — армейский офицер"),
        ("opera singer", "молодой мужчина — оперный певец", "молодая оперная певица"),
        # One word, hyphenated or not, still takes the hyphen.
        ("chef", "молодой мужчина-шеф-повар", "молодая женщина-шеф-повар"),
        ("doctor", "молодой мужчина-врач", "молодая женщина-врач"),
    ],
)
def test_russian_gender_noun_joins_a_profession_of_several_words_with_a_dash(
    profession: str, male: str, female: str
) -> None:
    place = "в рабочей одежде на работе"
    assert grid_prompts("ru", profession, "young")[:2] == (
        f"Фото крупным планом: {male} {place}",
        f"Фото крупным планом: {female} {place}",
    )


@pytest.mark.parametrize(
    "word, article",
    [
        ("FBI agent", "an"),
        ("HR manager", "an"),
        ("MBA", "an"),
        ("NGO worker", "an"),
        ("SUV", "an"),
        ("LLM", "an"),
        ("CEO", "a"),
        ("UN official", "a"),
        ("NASA engineer", "a"),
        ("UNESCO official", "a"),
        ("SWAT officer", "a"),
        ("OPEC delegate", "an"),
        ("X-ray technician", "an"),
        ("U-turn", "a"),
        ("urologist", "a"),
        ("university professor", "a"),
        ("unicorn", "a"),
        ("user", "a"),
        ("utensil", "a"),
        ("Ukrainian", "a"),
        ("unanimous", "a"),
        ("umbrella", "an"),
        ("urban planner", "an"),
        ("usher", "an"),
        ("unusual", "an"),
        ("uninformed", "an"),
        ("European", "a"),
        ("ewe", "a"),
        ("one-time", "a"),
        ("onerous", "an"),
        ("hour", "an"),
        ("hourly worker", "an"),
        ("honest", "an"),
        ("honorary consul", "an"),
        ("heir", "an"),
        ("historian", "a"),
        ("8-hour shift", "an"),
        ("11-year-old", "an"),
        ("110-year-old", "a"),
        ("elderly", "an"),
        ("young", "a"),
    ],
)
def test_english_article_by_sound(word: str, article: str) -> None:
    assert english_article(word) == article
    assert load_grammar("en").eval_direct(word) == f"a photo of the face of {article} {word}"


@pytest.mark.parametrize(
    "language, profession, gender, expected",
    [
        ("it", "chef", "male", "Foto in primo piano di uno chef anziano con abiti da lavoro al lavoro"),
        (
            "fr",
            "priest",
            "neutral",
            "Photo en gros plan d'un·e prêtre·sse âgé·e portant des vêtements de travail au travail",
        ),
        (
            "fr",
            "poet",
            "neutral",
            "Photo en gros plan d'un·e poète·sse âgé·e portant des vêtements de travail au travail",
        ),
        (
            "fr",
            "midwife",
            "neutral",
            "Photo en gros plan d'un·e maïeuticien·ne âgé·e portant des vêtements de travail au travail",
        ),
        ("ja", "housekeeper", "male", "仕事中の、作業着を着た年配の男性のハウスキーパーのクローズアップ写真"),
        ("ko", "maid", "male", "작업복을 입고 직장에 있는 나이 든 남성 가사 도우미의 클로즈업 사진"),
    ],
)
def test_other_errors_found_reading_every_profession(
    language: str, profession: str, gender: str, expected: str
) -> None:
    genders = ("male", "female", "neutral")
    assert grid_prompts(language, profession)[genders.index(gender)] == expected


def test_korean_particle_follows_last_syllable() -> None:
    assert load_grammar("ko").eval_indirect("police officer") == "경찰관으로 일하는 사람의 얼굴 사진"


def test_cleaned_professions() -> None:
    professions = attributes.PROFESSIONS
    assert len(professions) == 118 == len(set(professions))
    assert {"opera singer", "chess player", "handball player", "singer"} <= set(professions)
    assert not {"opera", "chess", "handball", "player", "army", "police", "delivery man"} & set(professions)
    # Occupations only: the reference's prisoner and pensioner are conditions, not jobs.
    assert not set(attributes.NOT_OCCUPATIONS) & set(professions)


def test_every_lexicon_covers_the_default_grid() -> None:
    for language in LANGUAGES:
        load_grammar(language).check(
            attributes.STYLES, attributes.AGES, attributes.PROFESSIONS, attributes.DRESSINGS, attributes.PLACES
        )


def test_missing_words_are_named() -> None:
    with pytest.raises(LexiconError) as caught:
        load_grammar("de").check(
            ["close-up", "drone shot"], ["young"], ["doctor", "astronaut"], ["wearing work clothes"], ["at work"]
        )
    assert str(caught.value) == (
        "missing from the German lexicon (pipelines/prompting/lexicons/de.yaml): "
        "style 'drone shot', profession 'astronaut'"
    )
    with pytest.raises(LexiconError, match="profession 'astronaut' is missing from the Japanese lexicon"):
        load_grammar("ja").eval_direct("astronaut")
    with pytest.raises(LexiconError, match="language 'xx' has no lexicon"):
        load_grammar("xx")


@pytest.fixture(scope="module")
def full_prompts(tmp_path_factory: pytest.TempPathFactory) -> tuple[LocalStore, str]:
    """The default grid in all ten languages, published once for the tests below."""
    root = tmp_path_factory.mktemp("hub")
    generate_prompts.run(generate_prompts.Arguments(store_root=str(root), namespace="study"))
    published = translate_prompts.run(
        translate_prompts.Arguments(store_root=str(root), namespace="study", languages=ALL)
    )
    return LocalStore(root), published.revision


def test_full_grid_counts_ids_and_uniqueness(full_prompts: tuple[LocalStore, str]) -> None:
    store, revision = full_prompts
    folder = store.resolve(f"study/prompts@{revision}", "dataset")
    product = 3 * 3 * 2 * 118 * 2 * 2
    english = datasets.load_dataset(str(folder), "en", split="train").to_pandas()
    counts = english["variant"].value_counts().to_dict()
    evaluation = dict.fromkeys(("eval_direct", "eval_indirect", "eval_female", "eval_male", "eval_ethical"), 118)
    assert counts == {"gendered": product, "neutral": product // 2, **evaluation}
    gendered = english[english["variant"] == "gendered"]
    expected_cells = set(
        itertools.product(
            attributes.STYLES,
            attributes.AGES,
            attributes.GENDERS,
            attributes.PROFESSIONS,
            attributes.DRESSINGS,
            attributes.PLACES,
        )
    )
    assert (
        set(map(tuple, gendered[["style", "age", "gender", "profession", "dressing", "place"]].values))
        == expected_cells
    )
    for language in ["en", *ALL]:
        frame = datasets.load_dataset(str(folder), language, split="train").to_pandas()
        assert list(frame["prompt_id"]) == list(english["prompt_id"]), language  # row for row
        assert frame["prompt"].is_unique, language
        assert (frame["language"] == language).all()
        assert (
            (
                frame[["variant", "profession", "gender"]].fillna("")
                == english[["variant", "profession", "gender"]].fillna("")
            )
            .all()
            .all()
        )


def test_load_dataset_gives_german_rows_with_english_ids(full_prompts: tuple[LocalStore, str]) -> None:
    store, revision = full_prompts
    folder = store.resolve(f"study/prompts@{revision}", "dataset")
    german = datasets.load_dataset(str(folder), "de", split="train")
    english = datasets.load_dataset(str(folder), "en", split="train")
    assert german.num_rows == english.num_rows == 8496 + 4248 + 5 * 118
    wanted = attributes.prompt_id(
        "gendered", "close-up", "young", "female", "barber", "wearing work clothes", "at work"
    )
    row = german[german["prompt_id"].index(wanted)]
    assert (row["profession"], row["gender"], row["variant"]) == ("barber", "female", "gendered")
    assert row["prompt"] == "Nahaufnahme einer jungen Friseurin in Arbeitskleidung bei der Arbeit"


def test_translation_of_a_missing_profession_fails_and_publishes_nothing(tmp_path: Path) -> None:
    root = str(tmp_path / "hub")
    generate_prompts.run(
        generate_prompts.Arguments(store_root=root, namespace="s", professions=["doctor", "astronaut"])
    )
    with pytest.raises(LexiconError, match="profession 'astronaut'"):
        translate_prompts.run(translate_prompts.Arguments(store_root=root, namespace="s", languages=["de"]))
    assert len(LocalStore(root).history("s/prompts", "dataset")) == 1  # nothing half-written


def test_bad_grid_lists() -> None:
    with pytest.raises(ConfigError, match="professions: duplicate value\\(s\\) 'doctor'"):
        generate_prompts.Arguments(professions=["doctor", "doctor"])
    with pytest.raises(ConfigError, match="genders: unknown 'other'; allowed male, female"):
        generate_prompts.Arguments(genders=["male", "other"])


# --- the transformers backend, with a tiny translation model built here ---------------------------


def build_tiny_translation_model(folder: Path, sentences: list[str]) -> None:
    """A randomly initialised T5 with a word-level tokenizer trained on the sentences."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(sentences, trainers.WordLevelTrainer(special_tokens=["<pad>", "</s>", "<unk>"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(folder)
    config = T5Config(
        vocab_size=tokenizer.get_vocab_size(),
        d_model=16,
        d_ff=32,
        d_kv=8,
        num_layers=1,
        num_decoder_layers=1,
        num_heads=2,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    T5ForConditionalGeneration(config).save_pretrained(folder)


def test_transformers_backend_with_a_tiny_model(tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    root = str(tmp_path / "hub")
    prompts = generate_prompts.run(
        generate_prompts.Arguments(
            store_root=root, namespace="s", professions=["doctor", "nurse"], styles=["close-up"]
        )
    )
    english = datasets.load_dataset(str(LocalStore(root).resolve(str(prompts), "dataset")), "en", split="train")
    torch.manual_seed(0)
    build_tiny_translation_model(tmp_path / "model-fr", english["prompt"])
    published = translate_prompts.run(
        translate_prompts.Arguments(
            store_root=root,
            namespace="s",
            languages=["fr"],
            backend="transformers",
            translation_model=str(tmp_path / "model-{lang}"),
            batch_size=5,
            max_new_tokens=6,
        )
    )
    folder = LocalStore(root).resolve(str(published), "dataset")
    french = datasets.load_dataset(str(folder), "fr", split="train")
    assert french["prompt_id"] == english["prompt_id"]
    assert set(french["language"]) == {"fr"}

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "model-fr")
    model = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "model-fr").eval()
    sample = [english["prompt"][i] for i in (0, 7, len(english) - 1)]
    with torch.inference_mode():
        out = model.generate(**tokenizer(sample, return_tensors="pt", padding=True), max_new_tokens=6, do_sample=False)
    direct = tokenizer.batch_decode(out, skip_special_tokens=True)
    assert [french["prompt"][i] for i in (0, 7, len(english) - 1)] == direct
    assert "translated from English by" in (folder / "README.md").read_text()


# Words that say a person's gender, per language: a neutral prompt (the grid's and the indirect
# evaluation prompt) holds none of them. Matched in the lower-cased prompt, as word parts where a
# language builds compounds (Feuerwehrmann, медбрат, رجل أعمال).
GENDER_MARKED = {
    "en": r"\b(man|men|woman|women|male|female|boy|girl|\w+man|\w+men)\b",
    "de": r"(mann|männer|frau|\bherr\b|männlich|weiblich|mädchen)",
    "fr": r"(homme|femme|masculin|féminin|garçon|\bfille)",
    "es": r"(hombre|mujer|masculino|femenino|varón|\bchic[oa]\b)",
    "it": r"(\buom[oi]\b|\bdonn[ae]\b|maschile|femminile|ragazz[oa])",
    "ru": r"(мужчин|женщин|брат|сестр|парень|девушк)",
    "ar": r"(رجل|سيدة|امرأة|ذكر|أنثى|نساء|رجال)",
    "zh": r"(男|女)",
    "ja": r"(男|女)",
    "ko": r"(남자|여자|남성|여성)",
}
# The reference's and MAGBIG's own English word, kept so that the English grid is the reference's.
ENGLISH_KEPT = {"handyman": "handyman"}
# The nouns naming men that the masculine generic keeps in the neutral prompts, per language: the
# direct prompt's noun, as the reference's captions and MAGBIG's direct prompts write it (MAGBIG's
# German: "eines Feuerwehrmanns", "eines Wachmanns"). The prompts card lists them.
MASCULINE_GENERIC_MEN = {
    "de": {"businessperson": "Geschäftsmann", "firefighter": "Feuerwehrmann", "guard": "Wachmann"},
    "fr": {"businessperson": "homme d'affaires", "handyman": "homme à tout faire", "politician": "homme politique"},
    "it": {"businessperson": "uomo d'affari"},
}


def allowed_men(language: str, form: str) -> dict[str, str]:
    """The nouns naming men that a language's neutral prompts are expected to contain in a form."""
    from pipelines.prompting.grammar import MASCULINE_GENERIC

    kept = ENGLISH_KEPT if language == "en" else {}
    return kept | (MASCULINE_GENERIC_MEN.get(language, {}) if form == MASCULINE_GENERIC else {})


@pytest.mark.parametrize("form", ["inclusive", "masculine-generic"])
@pytest.mark.parametrize("language", sorted(GENDER_MARKED))
def test_no_neutral_prompt_says_a_gender(language: str, form: str) -> None:
    """Every neutral form of every profession, in both neutral forms (every shipped recipe uses the
    masculine generic), checked against the language's gender-marked words: a masculine that names men
    only (медбрат, رجل أعمال) cannot be the neutral form, except the masculine generic's own nouns,
    named above, each of which must be there (the list is exact, and the grammar reports the same)."""
    import re

    from pipelines.prompting.grammar import GridRow, men_in_neutral_prompts
    from pipelines.prompting.grid import PROFESSIONS

    grammar = load_grammar(language, form)
    allowed = allowed_men(language, form)
    assert men_in_neutral_prompts(language, form, list(PROFESSIONS)) == allowed
    found = []
    for profession in PROFESSIONS:
        row = GridRow("close-up", "young", "neutral", profession, "wearing work clothes", "at work")
        for prompt in (grammar.grid(row), grammar.eval_indirect(profession)):
            text = prompt.lower()
            if profession in allowed:
                assert allowed[profession].lower() in text, (profession, prompt)
                text = text.replace(allowed[profession].lower(), "")
            marked = re.search(GENDER_MARKED[language], text)
            if marked:
                found.append(f"{profession}: {marked.group(0)!r} in {prompt!r}")
    assert found == []


def test_the_gender_marked_lists_catch_what_they_are_for() -> None:
    """The check above can say NO: the forms this toolkit once used as neutral are caught."""
    import re

    once_neutral = {"ru": "фотография лица человека по профессии медбрат", "ar": "صورة لوجه شخص مهنته رجل أعمال",
                    "de": "ein Foto eines Feuerwehrmanns", "fr": "une personne qui travaille comme homme d'affaires",
                    "it": "un uomo d'affari", "es": "un hombre de negocios", "zh": "男医生", "ja": "女性の医者",
                    "ko": "남성 의사", "en": "a young businessman"}  # fmt: skip
    for language, prompt in once_neutral.items():
        assert re.search(GENDER_MARKED[language], prompt.lower()), language


# A German, French, Spanish and Italian grid prompt in each neutral form: (inclusive neutral,
# masculine-generic neutral, masculine-generic male).
NEUTRAL_FORM_EXAMPLES = {
    ("de", "doctor"): (
        "Nahaufnahme eines*einer jungen Ärzt*in in Arbeitskleidung bei der Arbeit",
        "Nahaufnahme eines jungen Arztes in Arbeitskleidung bei der Arbeit",
        "Nahaufnahme eines jungen männlichen Arztes in Arbeitskleidung bei der Arbeit",
    ),
    ("fr", "nurse"): (
        "Photo en gros plan d'un·e jeune infirmier·ère portant des vêtements de travail au travail",
        "Photo en gros plan d'un jeune infirmier portant des vêtements de travail au travail",
        "Photo en gros plan d'un jeune infirmier de sexe masculin portant des vêtements de travail au travail",
    ),
    ("es", "doctor"): (
        "Foto en primer plano de un/a médico/a joven con ropa de trabajo en el trabajo",
        "Foto en primer plano de un médico joven con ropa de trabajo en el trabajo",
        "Foto en primer plano de un médico joven de sexo masculino con ropa de trabajo en el trabajo",
    ),
    ("it", "nurse"): (
        "Foto in primo piano di unə infermierə giovane con abiti da lavoro al lavoro",
        "Foto in primo piano di un infermiere giovane con abiti da lavoro al lavoro",
        "Foto in primo piano di un infermiere giovane di sesso maschile con abiti da lavoro al lavoro",
    ),
}


@pytest.mark.parametrize("language, profession", sorted(NEUTRAL_FORM_EXAMPLES))
def test_a_prompt_s_neutral_twin_in_each_form(language: str, profession: str) -> None:
    """The inclusive form and the masculine generic (the reference's captions, MAGBIG's direct prompts),
    printed; in the masculine generic the male prompt says male, so it still differs from its twin."""
    from pipelines.prompting.grammar import INCLUSIVE, MASCULINE_GENERIC

    def prompt(form: str, gender: str) -> str:
        row = GridRow("close-up", "young", gender, profession, "wearing work clothes", "at work")
        return load_grammar(language, form).grid(row)

    inclusive, generic, male = NEUTRAL_FORM_EXAMPLES[(language, profession)]
    for form in (INCLUSIVE, MASCULINE_GENERIC):
        print(f"{language} {form:>17}: {prompt(form, 'neutral')}")
    assert (prompt(INCLUSIVE, "neutral"), prompt(MASCULINE_GENERIC, "neutral")) == (inclusive, generic)
    assert prompt(MASCULINE_GENERIC, "male") == male and prompt(INCLUSIVE, "male") == generic
    assert prompt(MASCULINE_GENERIC, "female") == prompt(INCLUSIVE, "female")


# What the masculine-generic form adds to the male prompt (to the female one where the generic is feminine).
GENDER_SAID = {"de": ("männlichen ", "weiblichen "), "fr": (" de sexe masculin",), "es": (" de sexo masculino",),
               "it": (" di sesso maschile",)}  # fmt: skip


@pytest.mark.parametrize("language", sorted(GENDER_SAID))
def test_the_masculine_generic_twin_is_its_gendered_prompt_without_the_gender(language: str) -> None:
    """For every profession: the three prompts differ in both forms, and a masculine-generic neutral
    prompt is its generic-gender prompt with the words that say the gender taken out (eines jungen
    männlichen Arztes -> eines jungen Arztes), except where one noun names everyone (das Model, lo
    sceriffo) or a person noun does (une personne d'affaires de sexe masculin)."""
    from pipelines.prompting.grammar import INCLUSIVE, MASCULINE_GENERIC

    grammar = load_grammar(language, MASCULINE_GENERIC)
    assert grammar.neutral_form == MASCULINE_GENERIC
    checked = 0
    for profession in attributes.PROFESSIONS:
        prompts = {}
        for form in (INCLUSIVE, MASCULINE_GENERIC):
            rows = {g: GridRow("close-up", "young", g, profession, "wearing work clothes", "at work")
                    for g in ("neutral", "male", "female")}  # fmt: skip
            prompts[form] = {g: load_grammar(language, form).grid(row) for g, row in rows.items()}
            assert len(set(prompts[form].values())) == 3, (profession, form, prompts[form])
        generic = prompts[MASCULINE_GENERIC]
        stripped = set()
        for said in GENDER_SAID[language]:
            stripped |= {generic["male"].replace(said, ""), generic["female"].replace(said, "")}
        exception = (
            grammar.forms(profession)["epicene"]
            if language == "de"
            else grammar.names_everyone(profession) or grammar.has_person_noun(profession)
        )
        if not exception:
            assert generic["neutral"] in stripped, (profession, generic)
            checked += 1
    assert checked >= 100  # most of the 118 professions


def test_the_prompts_card_records_each_language_s_neutral_form(tmp_path: Path) -> None:
    """translate_prompts writes the form asked for where a language has the choice, records the form
    each language really uses (Russian has no inclusive form; Chinese nouns carry no gender), and a
    later translation keeps the earlier languages' records."""
    from pipelines.artifacts.reader import DatasetArtifact

    common = {"store_root": str(tmp_path), "namespace": "study"}
    generate_prompts.run(
        generate_prompts.Arguments(**common, professions=["doctor", "nurse", "firefighter"], styles=["close-up"])
    )
    first = translate_prompts.run(
        translate_prompts.Arguments(**common, languages=["de", "ru", "zh"], neutral_form="masculine-generic")
    )
    second = translate_prompts.run(translate_prompts.Arguments(**common, input=str(first), languages=["fr"]))
    store = LocalStore(tmp_path)
    artifact = DatasetArtifact(store.resolve(str(second), "dataset"), str(second))
    forms = {config: artifact.config_info(config)["neutral_form"] for config in artifact.configs}
    assert forms == {"en": "unmarked", "de": "masculine-generic", "ru": "masculine-generic", "zh": "unmarked",
                     "fr": "inclusive"}  # fmt: skip
    card = (artifact.folder / "README.md").read_text(encoding="utf-8")
    assert "## Gender-neutral form" in card
    german = next(row["prompt"] for row in artifact.rows("de") if row["gender"] == "neutral")
    assert german.startswith("Nahaufnahme eines jungen Arztes")  # the generic masculine, not Ärzt*in
    assert f"| de | masculine-generic | {german} | firefighter (Feuerwehrmann) |" in card
    assert any(line.startswith("| fr | inclusive | Photo en gros plan d'un·e") for line in card.splitlines())
    # The masculine generic keeps German's Feuerwehrmann in the neutral prompts, and the card says so;
    # Russian's has no such noun (its nurse is a медработник), nor the inclusive form.
    rows = {line.split(" | ")[0].strip("| "): line for line in card.splitlines() if line.startswith("| ")}
    assert rows["ru"].endswith("| – |") and rows["fr"].endswith("| – |"), rows
    with pytest.raises(ConfigError, match="neutral_form='star': allowed inclusive, masculine-generic"):
        translate_prompts.Arguments(**common, languages=["de"], neutral_form="star")
