"""Stage 2: the prompts dataset in more languages, one config per language, row for row.

    python -m pipelines.translate_prompts --input prompts --languages de zh ja

Two backends:

- `lexicon` (default; offline, deterministic): each prompt is realised from its row's attributes by
  the language's grammar and lexicon (`pipelines/grammar.py`, `pipelines/prompting/lexicons/`), with case,
  agreement, feminine forms and a gender-neutral form per language;
- `transformers`: a translation model translates the English prompts, e.g.
  `--translation_model "Helsinki-NLP/opus-mt-en-{lang}"` (one model per language) or an NLLB model
  (`facebook/nllb-200-distilled-600M`; target language set by its language code).

Publishes a new revision of the input dataset (or `--output_repo`) with the added configs.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from pipelines.artifacts import schemas
from pipelines.artifacts.cards import dataset_card
from pipelines.artifacts.dataset_files import DatasetWriter
from pipelines.artifacts.inputs import ModelInput, resolve_model
from pipelines.artifacts.reader import DatasetArtifact
from pipelines.errors import ConfigError, DataError
from pipelines.harness.config import StageArguments, input_field
from pipelines.harness.stage import Stage, StageRun
from pipelines.prompting.grammar import (
    INCLUSIVE,
    LANGUAGES,
    NEUTRAL,
    NEUTRAL_FORMS,
    UNMARKED,
    describe_neutral_forms,
    load_grammar,
    men_in_neutral_prompts,
    neutral_form_of,
)
from pipelines.prompting.grid import GridLists, prompts_description, realise

BACKENDS = ("lexicon", "transformers")
# NLLB-200 language codes, for a single many-to-many model.
NLLB_CODES = {
    "de": "deu_Latn",
    "zh": "zho_Hans",
    "ja": "jpn_Jpan",
    "es": "spa_Latn",
    "fr": "fra_Latn",
    "it": "ita_Latn",
    "ko": "kor_Hang",
    "ru": "rus_Cyrl",
    "ar": "arb_Arab",
}


@dataclass
class Arguments(StageArguments):
    INPUTS = {"input": "prompts"}
    input: str = input_field("Prompts dataset to translate (ns/name@rev).", default="prompts")
    languages: list[str] = field(
        default_factory=lambda: ["de", "zh", "ja"],
        metadata={"help": f"Target languages, any of {', '.join(c for c in LANGUAGES if c != 'en')}."},
    )
    backend: str = field(default="lexicon", metadata={"help": f"Translation backend, one of {BACKENDS}."})
    neutral_form: str = field(
        default=INCLUSIVE,
        metadata={
            "help": f"lexicon backend: how gender-neutral prompts name the person where a language has a choice "
            f"(German, French, Spanish, Italian), one of {NEUTRAL_FORMS}: inclusive (Friseur*in, avocat·e, "
            "peluquero/a, parrucchierə; an epicene noun where one exists) or masculine-generic (the direct "
            "prompt's noun, as the reference's captions and MAGBIG's direct prompts; male prompts then say male)."
        },
    )
    translation_model: str | None = field(
        default=None,
        metadata={"help": "transformers backend: model id or path; '{lang}' is replaced by the language code."},
    )
    batch_size: int = field(default=32, metadata={"help": "transformers backend: sentences per forward pass."})
    max_new_tokens: int = field(default=128, metadata={"help": "transformers backend: longest translation."})

    def __post_init__(self) -> None:
        if self.output_repo is None:
            self.output_repo = self.input.partition("@")[0]  # a new revision of the same dataset
        super().__post_init__()
        allowed = [code for code in LANGUAGES if code != "en"]
        unknown = [code for code in self.languages if code not in allowed]
        if unknown:
            raise ConfigError(f"languages: unknown {', '.join(map(repr, unknown))}; allowed {', '.join(allowed)}")
        if not self.languages or len(set(self.languages)) != len(self.languages):
            raise ConfigError("languages: give each language once, at least one")
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend={self.backend!r}: allowed {', '.join(BACKENDS)}")
        self.check_choice("neutral_form", NEUTRAL_FORMS)
        if self.backend == "transformers" and not self.translation_model:
            raise ConfigError("translation_model: required with backend=transformers")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size={self.batch_size}: must be at least 1")
        self.check_at_least(1, "max_new_tokens")
        self.check_at_most(4_096, "batch_size", why="sentences per forward pass")
        self.check_at_most(4_096, "max_new_tokens", why="tokens of one translation")

    def neutral_forms(self) -> dict[str, str]:
        """The form each translated language's neutral prompts use (a model translates as it will)."""
        if self.backend != "lexicon":
            return dict.fromkeys(self.languages, "as translated")
        return {language: neutral_form_of(language, self.neutral_form) for language in self.languages}


def translation_files(repo_id: str, revision: str) -> list[str] | None:
    """The files of a Hub translation model that transformers loads in PyTorch: no TensorFlow, Flax,
    Rust or ONNX weights, and no `.bin` beside safetensors (None: all, e.g. offline)."""
    from huggingface_hub import HfApi

    try:
        files = HfApi().list_repo_files(repo_id, revision=revision)
    except Exception:  # noqa: BLE001 - offline: the cache decides
        return None
    kept = [f for f in files if "/" not in f and not f.endswith((".h5", ".msgpack", ".ot", ".onnx"))]
    if any(f.endswith(".safetensors") for f in kept):
        kept = [f for f in kept if not f.endswith(".bin")]
    return kept


def resolve_translation_models(args: Arguments, store: Any) -> dict[str, ModelInput]:
    """Each language's translation model found before any work (a store repo, a folder, or a Hub id
    downloaded and pinned): offline or a mistyped id is one line naming it."""
    found = {}
    for language in args.languages:
        name = args.translation_model.replace("{lang}", language)
        found[language] = resolve_model(
            name,
            store,
            namespace=args.namespace,
            what="translation_model",
            kinds=("store", "hub", "folder"),
            hub_files=translation_files,
        )
    return found


class ModelTranslator:
    """Translates English sentences with a `transformers` seq2seq model, batched, without gradients."""

    def __init__(
        self,
        model_template: str,
        batch_size: int = 32,
        max_new_tokens: int = 128,
        models: dict[str, Path] | None = None,
    ):
        self.model_template = model_template
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.models = models or {}  # language -> the model's resolved folder (`resolve_translation_models`)

    def translate(self, sentences: list[str], language: str) -> list[str]:
        import torch
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        name = self.model_template.replace("{lang}", language)
        source = str(self.models.get(language, name))
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
            model = AutoModelForSeq2SeqLM.from_pretrained(source).eval()
        except (OSError, ValueError) as err:  # offline, a mistyped id, a folder that holds no seq2seq model
            reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
            raise ConfigError(f"translation_model={name!r}: cannot load a translation model ({reason})") from None
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model.to(device)
        generate_kwargs = {"max_new_tokens": self.max_new_tokens, "num_beams": 1, "do_sample": False}
        code = NLLB_CODES.get(language)
        if "{lang}" not in self.model_template and code in getattr(tokenizer, "additional_special_tokens", []):
            tokenizer.src_lang = "eng_Latn"
            generate_kwargs["forced_bos_token_id"] = tokenizer.convert_tokens_to_ids(code)
        unique = sorted(set(sentences))
        translated: dict[str, str] = {}
        for start in tqdm(range(0, len(unique), self.batch_size), desc=f"translate {language}", file=sys.stderr):
            batch = unique[start : start + self.batch_size]
            inputs = tokenizer(batch, return_tensors="pt", padding=True, truncation=True).to(device)
            with torch.inference_mode():
                output = model.generate(**inputs, **generate_kwargs)
            translated.update(zip(batch, tokenizer.batch_decode(output, skip_special_tokens=True)))
        return [translated[sentence] for sentence in sentences]


def grid_lists(artifact: DatasetArtifact, run: StageRun) -> GridLists:
    """The grid lists the prompts were made from, read from the lineage (through earlier translations)."""
    seen = artifact
    for _ in range(32):
        lineage = seen.lineage
        if lineage.get("stage") == "generate_prompts":
            return GridLists.from_parameters(lineage["parameters"])
        source = (lineage.get("inputs") or {}).get("input")
        if lineage.get("stage") != "translate_prompts" or not source:
            break
        seen = DatasetArtifact(run.store.resolve(source, "dataset"), source)
    raise DataError(
        f"input={artifact.name}: its prompts were not made by generate_prompts (lineage: "
        f"{lineage.get('stage', 'none')}), so the lexicon backend has no grid to realise; use backend=transformers"
    )


def neutral_form_table(folder: Path, configs: list[str], config_info: dict[str, dict[str, str]]) -> dict[str, Any]:
    """Per language, the form its gender-neutral prompts use and the first of them, as an example."""
    import pyarrow.parquet as pq

    rows = []
    for config in configs:
        example, professions = None, set()
        for path in sorted((folder / "data" / config).glob("*.parquet")):
            table = pq.read_table(path, columns=["prompt", "gender", "profession"]).to_pylist()
            professions |= {row["profession"] for row in table if row["gender"] == NEUTRAL and row["profession"]}
            if example is None:
                example = next((row["prompt"] for row in table if row["gender"] == NEUTRAL), None)
        form = config_info[config].get("neutral_form", "not recorded")
        rows.append([config, form, example or "–", _men_named(config, form, sorted(professions))])
    return {
        "title": "Gender-neutral form",
        "note": "How each language's gender-neutral prompts name the person (pipelines/prompting/grammar.py, "
        "NEUTRAL_FORMS): a model fine-tuned on one form and evaluated on another is tested on a form it was "
        "not taught. The last column lists the occupations whose neutral prompts keep a noun that names men: "
        "the masculine generic's own (Geschäftsmann, homme d'affaires), as the reference's captions and "
        "MAGBIG's direct prompts write them.",
        "columns": ["Language", "Neutral form", "Example", "Neutral noun names men"],
        "rows": rows,
    }


def _men_named(language: str, form: str, professions: list[str]) -> str:
    """'businessperson (Geschäftsmann), firefighter (Feuerwehrmann)': the occupations whose neutral
    prompts, realised by the lexicon in `form`, use a noun naming men; '–' for none, '?' for prompts a
    model translated (or a form not recorded)."""
    if language not in LANGUAGES or form not in (*NEUTRAL_FORMS, UNMARKED):
        return "?"
    men = men_in_neutral_prompts(language, form, professions)
    return ", ".join(f"{profession} ({noun})" for profession, noun in men.items()) or "–"


class TranslatePrompts(Stage):
    name = "translate_prompts"
    Arguments = Arguments

    def estimate(self, args: Arguments, estimates: Any, costs: Any) -> Any:
        from pipelines.harness.estimate import Estimate, download_of

        source = estimates.get(args.repo_id(args.input))
        languages = list(dict.fromkeys([*source.get("languages", ["en"]), *args.languages]))
        forms = source.get("neutral_forms", {}) | args.neutral_forms()
        estimates.put(args.repo_id(args.output_repo), **(source | {"languages": languages, "neutral_forms": forms}))
        model = args.translation_model if args.backend == "transformers" else None
        downloads = (
            [
                download_of(model.replace("{lang}", code), args, estimates, "translation model")
                for code in args.languages
            ]
            if model
            else []
        )
        rows = sum(source.get("variants", {}).values())
        return Estimate(
            reads=[args.input],
            downloads=[d for d in downloads if d],
            makes=f"{rows:,} prompts in each of {', '.join(args.languages)}; gender-neutral prompts: "
            + describe_neutral_forms(args.neutral_forms()),
        )

    def build(self, run: StageRun, folder: Path) -> str:
        args: Arguments = run.args
        source = run.dataset("input")
        models = resolve_translation_models(args, run.store) if args.backend == "transformers" else {}
        if "en" not in source.configs:
            raise DataError(f"input={source.name}: has no 'en' config (configs: {', '.join(source.configs)})")
        english_rows = source.rows("en")  # decoded once, reused for every language
        for config in source.configs:
            if config not in args.languages:
                shutil.copytree(source.folder / "data" / config, folder / "data" / config)
        try:
            lists = grid_lists(source, run)
        except DataError:
            if args.backend == "lexicon":
                raise
            lists = None  # a model translates any prompts
        writer = DatasetWriter(folder, schemas.PROMPTS, rows_per_shard=50_000)
        for language in args.languages:
            if args.backend == "lexicon":
                grammar = load_grammar(language, args.neutral_form)
                grammar.check(lists.styles, lists.ages, lists.professions, lists.dressings, lists.places)
                rows = (row | {"language": language, "prompt": realise(row, grammar)} for row in english_rows)
            else:
                translator = ModelTranslator(
                    args.translation_model,
                    args.batch_size,
                    args.max_new_tokens,
                    models={code: model.path for code, model in models.items() if model.path is not None},
                )
                prompts = translator.translate([row["prompt"] for row in english_rows], language)
                rows = (row | {"language": language, "prompt": p} for row, p in zip(english_rows, prompts))
            writer.write(language, tqdm(rows, total=len(english_rows), desc=f"prompts {language}", file=sys.stderr))
        writer.close()

        configs = source.configs + [language for language in args.languages if language not in source.configs]
        method = (
            "realised from each row's grid values by the offline grammar and lexicons"
            if args.backend == "lexicon"
            else f"translated from English by {', '.join(f'`{model.pin}`' for model in models.values())}"
        )
        description = (
            prompts_description(lists) if lists is not None else "Prompts of the study, one config per language."
        )
        forms = args.neutral_forms()
        config_info = {config: source.config_info(config) for config in source.configs} | {
            language: {"language": language, "neutral_form": forms[language]} for language in args.languages
        }
        dataset_card(
            repo_id=run.output_repo_id,
            title="Occupation prompts",
            description=description,
            lineage=run.lineage,
            configs=configs,
            config_info=config_info,
            tables=[neutral_form_table(folder, configs, config_info)],
            folder=folder,
            languages=configs,
            tags=["prompts", "occupations", "translation"],
            notes=[f"Languages {', '.join(args.languages)}: {method}."],
        ).save(folder / "README.md")
        return f"Prompts in {', '.join(args.languages)} ({args.backend})"


STAGE = TranslatePrompts()
run = STAGE.run

if __name__ == "__main__":
    STAGE.main()
