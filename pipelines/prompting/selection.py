"""Choosing prompts from a prompts dataset, as every stage that reads one does (generate_images,
align_distribution): the languages, professions and variants asked are checked against what the
dataset holds, and refused with the option named, before any model loads."""

from __future__ import annotations

from typing import Any

from pipelines.errors import ConfigError, DataError


def language_rows(prompts: Any, languages: list[str], professions: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Each asked language's rows of the prompts dataset `prompts` (a DatasetArtifact), in its order;
    refused when a language is not among its configs or a profession not among a language's rows."""
    missing = [language for language in languages if language not in prompts.configs]
    if missing:
        raise ConfigError(
            f"languages: {', '.join(missing)} not in the prompts dataset (it has {', '.join(prompts.configs)})"
        )
    chosen = {}
    for language in languages:
        rows = prompts.rows(language)
        known = {row["profession"] for row in rows}
        unknown = [profession for profession in professions if profession not in known]
        if unknown:
            raise ConfigError(f"professions: {', '.join(map(repr, unknown))} not in the prompts dataset")
        chosen[language] = rows
    return chosen


def variant_rows(
    rows: list[dict[str, Any]], language: str, variant: str, professions: list[str], max_prompts: int | None = None
) -> list[dict[str, Any]]:
    """One language's rows of one variant, of the professions asked (all when none are), the first
    `max_prompts` of them when given; refused when there are none."""
    chosen = [row for row in rows if row["variant"] == variant]
    if professions:
        chosen = [row for row in chosen if row["profession"] in professions]
    chosen = chosen[:max_prompts] if max_prompts else chosen
    if not chosen:
        raise DataError(f"variants: the prompts dataset has no {variant!r} prompts in {language!r}")
    return chosen
