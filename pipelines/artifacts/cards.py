"""Cards for every artifact: Jinja templates in `hub_cards/` rendered with `huggingface_hub`.

Each card carries YAML metadata the Hub understands (license, languages, task categories, tags,
`configs:` for datasets, `base_model` for models) and a `lineage` block: the stage, its pinned
inputs, its parameters, library versions and the command. The same lineage is written both as
machine-readable YAML (the store and the study runner read it) and as a readable section.
"""

from __future__ import annotations

import functools
import os
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from huggingface_hub import DatasetCard, DatasetCardData, ModelCard, ModelCardData, RepoCard
from huggingface_hub.repocard_data import CardData

from pipelines import PROJECT_ROOT, __version__
from pipelines.artifacts.dataset_files import SPLIT
from pipelines.resources import card_template

PROJECT = "t2i-bias"
LICENSE = "apache-2.0"
TRACKED_LIBRARIES = (
    "torch",
    "diffusers",
    "transformers",
    "datasets",
    "huggingface_hub",
    "accelerate",
    "peft",
    "evaluate",
    "open_clip_torch",
)


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries an artifact may depend on (absent ones left out)."""
    versions = {}
    for name in TRACKED_LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


@functools.cache
def toolkit_version() -> dict[str, str]:
    """The toolkit's version, and the git commit of its checkout (`+dirty` with uncommitted changes)."""
    found = {"version": __version__}
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return found
    if commit:
        found["commit"] = commit + ("+dirty" if dirty else "")
    return found


def _portable(token: str) -> str:
    """A command-line token without absolute paths: relative to the working folder, else the name."""
    prefix, sep, value = token.partition("=") if token.startswith("--") and "=" in token else ("", "", token)
    if os.path.isabs(value):
        relative = os.path.relpath(value)
        value = relative if not relative.startswith("..") else f"<{Path(value).name}>"
    return prefix + sep + value


def current_command() -> str:
    """The command line that is running, as a user would retype it (no absolute paths)."""
    argv = [_portable(token) for token in sys.argv]
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:
        module = spec.name.removesuffix(".__main__")
        return shlex.join(["python", "-m", module, *argv[1:]])
    return shlex.join(["python", *argv])


def make_lineage(
    stage: str,
    inputs: dict[str, str],
    parameters: dict[str, Any],
    fingerprint: str,
    command: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    return {
        "stage": stage,
        "inputs": dict(inputs),
        "parameters": dict(parameters),
        "fingerprint": fingerprint,
        **({"code": code} if code else {}),
        "toolkit": toolkit_version(),
        "versions": library_versions(),
        "command": command or current_command(),
    }


def _template(name: str) -> str:
    return card_template(name) + "\n" + card_template("lineage.md")


def _render(card_cls: type[RepoCard], template: str, data: CardData, **context: Any) -> RepoCard:
    return card_cls.from_template(data, template_str=_template(template), **context)


def count_rows(config_folder: Path) -> int:
    """The rows of a config's parquet shards, from their footers (no data is read)."""
    import pyarrow.parquet as pq

    return sum(pq.read_metadata(path).num_rows for path in sorted(config_folder.glob("*.parquet")))


def dataset_card(
    *,
    repo_id: str,
    title: str,
    description: str,
    lineage: dict[str, Any],
    configs: list[str],
    languages: list[str],
    folder: Path,
    config_info: dict[str, dict[str, str]] | None = None,
    tables: list[dict[str, Any]] | None = None,
    task_categories: list[str] | None = None,
    tags: list[str] | None = None,
    notes: list[str] | None = None,
    revision: str = "main",
    **extra_metadata: Any,
) -> DatasetCard:
    """A dataset card whose `configs:` lets `load_dataset(repo, config)` find the parquet shards.

    The first config is the default. `config_info` records what each config holds (its language and
    prompt variant) for the readers; `tables` (`{"title", "columns", "rows"}`) are rendered by the
    template. The card's row counts are read from the shards already written under `folder`, so that
    they are every config's and cannot disagree with the data.
    """
    entries = [
        {"config_name": name, "data_files": [{"split": SPLIT, "path": f"data/{name}/*.parquet"}]}
        | ({"default": True} if index == 0 else {})
        for index, name in enumerate(configs)
    ]
    if config_info:
        extra_metadata["config_info"] = {name: dict(info) for name, info in config_info.items() if name in configs}
    data = DatasetCardData(
        license=LICENSE,
        language=languages,
        task_categories=task_categories or ["text-to-image"],
        tags=[PROJECT, "fairness", *(tags or [])],
        configs=entries,
        lineage=lineage,
        **extra_metadata,
    )
    return _render(
        DatasetCard,
        "dataset_card.md",
        data,
        repo_id=repo_id,
        title=title,
        description=description,
        configs_table=[(name, count_rows(folder / "data" / name)) for name in configs],
        tables=tables or [],
        notes=notes or [],
        lineage=lineage,
        revision=revision,
    )


def model_card(
    *,
    title: str,
    description: str,
    lineage: dict[str, Any],
    languages: list[str],
    base_model: str | None = None,
    datasets: list[str] | None = None,
    tags: list[str] | None = None,
    notes: list[str] | None = None,
    usage: str | None = None,
    license: str | None = None,
    **extra_metadata: Any,
) -> ModelCard:
    """A model card; `license` defaults to the toolkit's (a fine-tune passes its base model's)."""
    extra_metadata.setdefault("library_name", "diffusers")
    extra_metadata.setdefault("pipeline_tag", "text-to-image")
    data = ModelCardData(
        license=license or LICENSE,
        language=languages or None,
        base_model=base_model,
        datasets=datasets,
        tags=[PROJECT, *(tags or [])],
        lineage=lineage,
        **extra_metadata,
    )
    return _render(
        ModelCard,
        "model_card.md",
        data,
        title=title,
        description=description,
        notes=notes or [],
        usage=usage,
        lineage=lineage,
    )
