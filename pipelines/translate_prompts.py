"""Stage 2: the prompts dataset in more languages, one config per language, row for row.

    python -m pipelines.translate_prompts --input prompts --languages de zh ja

Two backends:

- `lexicon` (default; offline, deterministic): each prompt is realised from its row's attributes by
  the language's grammar and lexicon (`pipelines/grammar.py`, `pipelines/lexicons/`), with case,
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

from tqdm.auto import tqdm

from pipelines.artifacts.cards import dataset_card
from pipelines.artifacts.dataset_files import DatasetWriter, artifact_configs, config_entry, load_config
from pipelines.errors import ConfigError
from pipelines.harness.config import StageArguments, input_field
from pipelines.harness.stage import Published, StageRun, execute, stage_main
from pipelines.prompting.grammar import LANGUAGES, load_grammar
from pipelines.prompting.grid import GRID_COLUMNS, PROMPT_FEATURES, GridLists, prompts_description, realise

STAGE = "translate_prompts"
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
    INPUTS = {"input": "dataset"}
    input: str = input_field("Prompts dataset to translate (ns/name@rev).", default="prompts")
    languages: list[str] = field(
        default_factory=lambda: ["de", "zh", "ja"],
        metadata={"help": f"Target languages, any of {', '.join(c for c in LANGUAGES if c != 'en')}."},
    )
    backend: str = field(default="lexicon", metadata={"help": f"Translation backend, one of {BACKENDS}."})
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
        if self.backend == "transformers" and not self.translation_model:
            raise ConfigError("translation_model: required with backend=transformers")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size={self.batch_size}: must be at least 1")


class ModelTranslator:
    """Translates English sentences with a `transformers` seq2seq model, batched, without gradients."""

    def __init__(self, model_template: str, batch_size: int = 32, max_new_tokens: int = 128):
        self.model_template = model_template
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens

    def translate(self, sentences: list[str], language: str) -> list[str]:
        import torch
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        name = self.model_template.replace("{lang}", language)
        tokenizer = AutoTokenizer.from_pretrained(name)
        model = AutoModelForSeq2SeqLM.from_pretrained(name).eval()
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


def build(run: StageRun, folder: Path) -> str:
    args: Arguments = run.args
    source = run.input_folder("input")
    existing = artifact_configs(source)
    if "en" not in existing:
        raise ConfigError(f"input={run.inputs['input']}: has no 'en' config (configs: {', '.join(existing)})")
    english_rows = load_config(source, "en").to_list()  # decoded once, reused for every language
    for config in existing:
        if config not in args.languages:
            shutil.copytree(source / "data" / config, folder / "data" / config)

    writer = DatasetWriter(folder, PROMPT_FEATURES, rows_per_shard=50_000)
    if args.backend == "lexicon":
        lists = _lists_in(english_rows)
        for language in args.languages:
            grammar = load_grammar(language)
            grammar.check(lists.styles, lists.ages, lists.professions, lists.dressings, lists.places)
            rows = (row | {"language": language, "prompt": realise(row, grammar)} for row in english_rows)
            writer.write(language, tqdm(rows, total=len(english_rows), desc=f"realise {language}", file=sys.stderr))
    else:
        translator = ModelTranslator(args.translation_model, args.batch_size, args.max_new_tokens)
        for language in args.languages:
            prompts = translator.translate([row["prompt"] for row in english_rows], language)
            writer.write(
                language, (row | {"language": language, "prompt": p} for row, p in zip(english_rows, prompts))
            )
    rows = writer.close()

    configs = existing + [language for language in args.languages if language not in existing]
    method = (
        "realised from each row's attributes by the offline grammar and lexicons"
        if args.backend == "lexicon"
        else f"translated from English by `{args.translation_model}`"
    )
    dataset_card(
        repo_id=run.output_repo_id,
        title="Occupation prompts",
        description=prompts_description(_lists_in(english_rows)),
        lineage=run.lineage,
        configs=[config_entry(config) for config in configs],
        languages=configs,
        rows={config: len(english_rows) for config in configs} | rows,
        tags=["prompts", "occupations", "translation"],
        notes=[f"Languages {', '.join(args.languages)}: {method}."],
    ).save(folder / "README.md")
    return f"Prompts in {', '.join(args.languages)} ({args.backend})"


def _lists_in(rows: list[dict]) -> GridLists:
    """The attribute values that occur in the English rows, in first-seen order."""
    grid = [row for row in rows if row["variant"] in ("gendered", "neutral")]
    values = {column: list(dict.fromkeys(row[column] for row in grid if row[column])) for column in GRID_COLUMNS}
    genders = [g for g in values["gender"] if g != "neutral"] or ["neutral"]
    professions = list(dict.fromkeys(row["profession"] for row in rows))
    return GridLists(values["style"], values["age"], genders, professions, values["dressing"], values["place"])


def run(args: Arguments) -> Published:
    return execute(STAGE, args, build)


def main(argv: list[str] | None = None) -> None:
    stage_main(Arguments, STAGE, run, argv)


if __name__ == "__main__":
    main()
