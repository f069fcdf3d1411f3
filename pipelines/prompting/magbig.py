"""MAGBIG's prompt sets (Friedrich et al., arXiv:2401.16092), read into the study's prompt rows.

Two layouts are read:

- MAGBIG's code repository (felifri/MAGBIG, `prompts/`): one CSV per language and set, `name,prompt`:
  `occ_<language>.csv` (direct), `indirect:gender_neutral/occ_<language>.csv` or `indirect/...`
  (indirect, and `occ_german_star.csv`, the German gender star), `adj_<language>.csv` (adjectives,
  with the prompt-engineering columns in English);
- the Hub dataset `felfri/MAGBIG`: CSV files under `data/` (`occupations_direct`,
  `occupations_indirect`, `occupations_direct_feminine`, `occupations_german_gender_star`,
  `adjectives`), one row per occupation (or adjective) with a column per language
  (`english`, `german`, ... or `en`, `de`, ...), or long, with a `language` column and a `prompt`.

Every set becomes a prompt variant (`magbig_direct`, `magbig_indirect`, `magbig_feminine`,
`magbig_gender_star`, `magbig_adjectives`), every row keeps MAGBIG's English `name` as its
`profession`, and one `prompt_id` per name and set is shared by the ten languages.
"""

from __future__ import annotations

import csv
from pathlib import Path

from pipelines.errors import ConfigError, DataError
from pipelines.prompting.grammar import NEUTRAL
from pipelines.prompting.grid import prompt_id

LANGUAGE_NAMES = {
    "arabic": "ar",
    "chinese": "zh",
    "english": "en",
    "french": "fr",
    "german": "de",
    "italian": "it",
    "japanese": "ja",
    "korean": "ko",
    "russian": "ru",
    "spanish": "es",
}
SETS = ("direct", "indirect", "feminine", "gender_star", "adjectives")
VARIANT = {name: f"magbig_{name}" for name in SETS}
# The gender a set's prompts ask for: MAGBIG's direct prompts use each language's generic (mostly
# masculine) noun, its indirect and gender-star prompts are neutral, its feminine ones feminine.
GENDER = {"direct": None, "indirect": NEUTRAL, "gender_star": NEUTRAL, "feminine": "female", "adjectives": None}
# Files of the code repository's layout, per set: the file name pattern and where it may live.
REPO_FILES = {
    "direct": ["occ_{language}.csv"],
    "indirect": ["indirect/occ_{language}.csv", "indirect:gender_neutral/occ_{language}.csv"],
    "gender_star": ["indirect/occ_german_star.csv", "indirect:gender_neutral/occ_german_star.csv"],
    "adjectives": ["adj_{language}.csv"],
}
HUB_FILES = {
    "direct": "occupations_direct",
    "indirect": "occupations_indirect",
    "feminine": "occupations_direct_feminine",
    "gender_star": "occupations_german_gender_star",
    "adjectives": "adjectives",
}


MAX_FIELD = 10_000  # characters: a prompt is a sentence; a longer field is not a prompt file


def _read_csv(path: Path, required: tuple[str, ...] = ()) -> list[dict[str, str]]:
    """The rows of a CSV file, each a `{column: value}`; a file that is not UTF-8 CSV text with the
    `required` columns, or that has no rows, is one line naming it."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text; MAGBIG's prompt files are UTF-8 CSV") from None
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err.strerror})") from None
    if "\x00" in text:
        raise DataError(f"{path}: a binary file, not CSV text")
    try:
        reader = csv.DictReader(text.splitlines(), strict=True)
        rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    except csv.Error as err:
        raise DataError(f"{path}: not a CSV file MAGBIG's way ({err})") from None
    columns = [c.strip() for c in reader.fieldnames or []]
    missing = [c for c in required if c not in columns]
    if missing:
        raise DataError(f"{path}: no column {', '.join(map(repr, missing))} (columns: {', '.join(columns) or 'none'})")
    if not rows:
        raise DataError(f"{path}: no rows; a prompt file has one row per occupation or adjective")
    longest = max((len(value) for row in rows for value in row.values() if isinstance(value, str)), default=0)
    if longest > MAX_FIELD:
        raise DataError(f"{path}: a field of {longest:,} characters; a prompt holds at most {MAX_FIELD:,}")
    return rows


def _by_name(rows: list[dict[str, str]], key: str, column: str, path: Path) -> dict[str, str]:
    """`{name: prompt}`; a name given twice is an error, never a silent replacement."""
    found: dict[str, str] = {}
    for row in rows:
        if row[key] in found and found[row[key]] != row[column]:
            raise DataError(f"{path}: {row[key]!r} is given twice, with different prompts")
        found[row[key]] = row[column]
    return found


def _language_code(column: str) -> str | None:
    name = column.strip().lower().replace("_prompt", "").replace("prompt_", "")
    if name in LANGUAGE_NAMES:
        return LANGUAGE_NAMES[name]
    return name if name in LANGUAGE_NAMES.values() else None


def read_repo_layout(folder: Path, name: str) -> dict[str, dict[str, str]] | None:
    """`{language: {name: prompt}}` of one set in the code repository's layout (None: not there)."""
    found: dict[str, dict[str, str]] = {}
    for pattern in REPO_FILES.get(name, []):
        if "{language}" not in pattern:
            path = folder / pattern
            if path.is_file():
                found["de"] = _by_name(_read_csv(path, ("name", "prompt")), "name", "prompt", path)
            continue
        for language_name, code in LANGUAGE_NAMES.items():
            path = folder / pattern.format(language=language_name)
            if path.is_file():
                found[code] = _by_name(_read_csv(path, ("name", "prompt")), "name", "prompt", path)
    return found or None


def read_hub_layout(folder: Path, name: str) -> dict[str, dict[str, str]] | None:
    """`{language: {name: prompt}}` of one set in the Hub dataset's layout (None: not there)."""
    files = sorted((folder / "data").glob(f"{HUB_FILES[name]}-*.csv")) + sorted(
        (folder / "data").glob(f"{HUB_FILES[name]}.csv")
    )
    if not files:
        return None
    rows = [row for path in files for row in _read_csv(path)]
    columns = list(rows[0])
    key = "name" if "name" in columns else columns[0]
    found: dict[str, dict[str, str]] = {}
    if "language" in columns and "prompt" in columns:  # long: a row per language
        for row in rows:
            code = _language_code(row["language"])
            if code is None:
                raise DataError(f"MAGBIG {name}: unknown language {row['language']!r} in {files[0].name}")
            found.setdefault(code, {})
            if found[code].get(row[key], row["prompt"]) != row["prompt"]:
                raise DataError(f"MAGBIG {name}: {row[key]!r} in {code} is given twice, with different prompts")
            found[code][row[key]] = row["prompt"]
        return found
    for column in columns:
        code = _language_code(column)
        if code is not None and column != key:
            found[code] = _by_name([row for row in rows if row[column]], key, column, files[0])
    if name == "gender_star" and not found and "prompt" in columns:
        found["de"] = _by_name(rows, key, "prompt", files[0])
    if not found:
        raise DataError(f"MAGBIG {name}: no language columns in {files[0].name} (columns: {', '.join(columns)})")
    return found


def read_set(folder: Path, name: str) -> dict[str, dict[str, str]] | None:
    """One of MAGBIG's sets from a folder in either layout; a folder (or a file in it) that cannot be
    read is one line naming it."""
    try:
        return read_hub_layout(folder, name) if (folder / "data").is_dir() else read_repo_layout(folder, name)
    except OSError as err:
        raise ConfigError(
            f"{folder}: cannot read {err.filename or folder} ({err.strerror or err}); MAGBIG's source must be a "
            "readable folder"
        ) from None


def check_aligned(name: str, prompts: dict[str, dict[str, str]]) -> list[str]:
    """The set's names (English's order first); every language must have a prompt for every name.

    The reference is the union over languages, so a prompt missing from English itself is
    reported against English rather than as an "extra" name in every other language.
    """
    first = prompts.get("en") or next(iter(prompts.values()))
    names = list(dict.fromkeys([*first, *(entry for by_name in prompts.values() for entry in by_name)]))
    for language, by_name in sorted(prompts.items(), key=lambda item: item[0] != "en"):
        missing = [entry for entry in names if entry not in by_name]
        if missing:
            raise DataError(
                f"MAGBIG {name}: the {language} prompts do not line up with the other languages' names "
                f"(missing: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''})"
            )
    return names


def magbig_rows(prompts: dict[str, dict[str, str]], name: str, language: str, names: list[str]) -> list[dict]:
    """The prompt rows of one set in one language, in the set's name order."""
    variant = VARIANT[name]
    return [
        {
            "prompt_id": prompt_id(variant, entry),
            "variant": variant,
            "language": language,
            "prompt": prompts[language][entry],
            "style": None,
            "age": None,
            "gender": GENDER[name],
            "profession": entry,
            "dressing": None,
            "place": None,
        }
        for entry in names
    ]
