"""Configuration: dataclasses with help text, parsed by `transformers.HfArgumentParser`.

A recipe is a YAML file with shared settings at the top and a list of `stages`:

```yaml
store: local
store_root: ./hub
namespace: study
stages:
  - stage: generate_prompts
    output_repo: prompts
  - stage: translate_prompts
    input: prompts
    languages: [de, zh, ja]
```

A stage run alone (`python -m pipelines.translate_prompts --recipe R.yaml [--step NAME] --flag ...`)
takes the shared settings and its own entry from the recipe; flags on the command line override both.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml

from pipelines.artifacts.store import (
    BACKENDS,
    DEFAULT_STORE_ROOT,
    STORE_ENV,
    STORE_ROOT_ENV,
    Store,
    open_store,
    parse_ref,
)
from pipelines.errors import ConfigError, StoreError

T = TypeVar("T")
NAMESPACE_ENV = "T2I_BIAS_NAMESPACE"
# Keys of a recipe entry that name the entry rather than set a dataclass field.
ENTRY_KEYS = ("stage", "name")


def input_field(help: str = "", default: Any = None) -> Any:
    """A field that names an input artifact (`ns/name@rev`); list it in the class's `INPUTS`."""
    return field(default=default, metadata={"help": help})


@dataclass
class StoreArguments:
    """Where artifacts are read and published: shared by every stage."""

    store: str = field(
        default_factory=lambda: os.environ.get(STORE_ENV, "local"),
        metadata={"help": f"Artifact store backend, one of {BACKENDS} (env {STORE_ENV})."},
    )
    store_root: str = field(
        default_factory=lambda: os.environ.get(STORE_ROOT_ENV, DEFAULT_STORE_ROOT),
        metadata={"help": f"Root folder of the local store (env {STORE_ROOT_ENV})."},
    )
    namespace: str = field(
        default_factory=lambda: os.environ.get(NAMESPACE_ENV, "t2i-bias"),
        metadata={"help": f"Namespace (user or organisation) for repo ids without one (env {NAMESPACE_ENV})."},
    )

    def __post_init__(self) -> None:
        if self.store not in BACKENDS:
            raise ConfigError(f"store={self.store!r}: allowed {', '.join(BACKENDS)}")
        try:
            parse_ref(f"{self.namespace}/x")
        except StoreError:
            raise ConfigError(f"namespace={self.namespace!r}: letters, digits, '-', '_', '.'") from None

    def open_store(self) -> Store:
        return open_store(self.store, self.store_root)

    def repo_id(self, name: str) -> str:
        """`name` qualified with the namespace when it has none."""
        return parse_ref(name, namespace=self.namespace).repo_id


@dataclass
class StageArguments(StoreArguments):
    """Shared by every stage that publishes an artifact.

    `INPUTS` maps the fields that name input artifacts to their repo type; the runner pins their
    revisions and the lineage records them.
    """

    INPUTS: ClassVar[dict[str, str]] = {}

    output_repo: str | None = field(
        default=None, metadata={"help": "Repo to publish to ('name' or 'namespace/name'); each stage has a default."}
    )
    tag: str | None = field(default=None, metadata={"help": "Tag to give the published revision."})
    force: bool = field(
        default=False, metadata={"help": "Build and publish even when the same inputs and parameters were published."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in self.INPUTS:
            value = getattr(self, name)
            if value is not None:
                try:
                    parse_ref(value, namespace=self.namespace)
                except StoreError as err:
                    raise ConfigError(f"{name}={value!r}: {err}") from None
        if self.output_repo is not None:
            try:
                self.repo_id(self.output_repo)
            except StoreError as err:
                raise ConfigError(f"output_repo={self.output_repo!r}: {err}") from None


def input_fields(args: Any) -> dict[str, str]:
    """`{field name: repo type}` of the fields of `args` that name input artifacts."""
    return dict(getattr(args, "INPUTS", {}))


def load_recipe(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe {str(path)!r} not found")
    recipe = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(recipe, dict) or not isinstance(recipe.get("stages", []), list):
        raise ConfigError(f"recipe {str(path)!r}: expected a mapping with a 'stages' list")
    for index, entry in enumerate(recipe.get("stages", [])):
        if not isinstance(entry, dict) or "stage" not in entry:
            raise ConfigError(f"recipe {str(path)!r}: stages[{index}] needs a 'stage' key")
    return recipe


def shared_settings(recipe: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in recipe.items() if key != "stages"}


def recipe_entry(recipe: dict[str, Any], stage: str, step: str | None = None) -> dict[str, Any]:
    """The entry for `stage` (named `step` when the recipe runs the stage more than once)."""
    entries = [e for e in recipe.get("stages", []) if e["stage"] == stage]
    if step is not None:
        entries = [e for e in entries if e.get("name", e["stage"]) == step]
    if not entries:
        return {}
    if len(entries) > 1:
        names = ", ".join(e.get("name", e["stage"]) for e in entries)
        raise ConfigError(f"the recipe runs {stage} more than once; choose one with --step ({names})")
    return entries[0]


def build_arguments(cls: type[T], values: dict[str, Any]) -> T:
    """Builds `cls` from a dict of settings; unknown keys are an error that names them."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names - set(ENTRY_KEYS))
    if unknown:
        raise ConfigError(
            f"unknown setting(s) {', '.join(unknown)} for {cls.__name__}; allowed: {', '.join(sorted(names))}"
        )
    return cls(**{k: v for k, v in values.items() if k in names})


def parse_arguments(cls: type[T], stage: str, argv: list[str] | None = None) -> T:
    """Command line of a stage: `[--recipe R.yaml [--step NAME]] [--field value ...]`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    recipe_path, argv = _pop_option(argv, "--recipe")
    step, argv = _pop_option(argv, "--step")
    defaults: dict[str, Any] = {}
    if recipe_path:
        recipe = load_recipe(recipe_path)
        defaults = shared_settings(recipe) | recipe_entry(recipe, stage, step)
        defaults = {k: v for k, v in defaults.items() if k not in ENTRY_KEYS}
    from transformers import HfArgumentParser  # only where a command line is parsed

    parser = HfArgumentParser(cls)
    parser.prog = f"python -m pipelines.{stage}"
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(defaults) - names)
    if unknown:
        raise ConfigError(
            f"unknown setting(s) {', '.join(unknown)} in recipe for {stage}; allowed: {', '.join(sorted(names))}"
        )
    parser.set_defaults(**defaults)
    # Recipe values become defaults, so a field required by the dataclass is satisfied by the recipe.
    for action in parser._actions:
        if action.dest in defaults:
            action.required = False
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    return args


def _pop_option(argv: list[str], option: str) -> tuple[str | None, list[str]]:
    for index, token in enumerate(argv):
        if token == option:
            if index + 1 >= len(argv):
                raise ConfigError(f"{option} needs a value")
            return argv[index + 1], argv[:index] + argv[index + 2 :]
        if token.startswith(option + "="):
            return token.split("=", 1)[1], argv[:index] + argv[index + 1 :]
    return None, argv
