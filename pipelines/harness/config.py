"""Configuration: dataclasses with help text, set by a YAML recipe and overridden by flags.

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
takes the shared settings and its own entry from the recipe; flags on the command line override
both. Every recipe value is checked against its field's type before anything runs, and a mistake
is one line naming the recipe file, the step and the key. `transformers.HfArgumentParser` turns
the dataclasses into a command line; it is imported only where a command line is parsed.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import os
import re
import sys
import types
import typing
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
    validate_tag,
)
from pipelines.errors import ConfigError, StoreError

T = TypeVar("T")
NAMESPACE_ENV = "T2I_BIAS_NAMESPACE"
# Keys of a recipe entry that name the entry rather than set a dataclass field.
ENTRY_KEYS = ("stage", "name")
# The most pixels one batch of images may hold (generation, training, face chips): 256 images of
# 1024x1024, about 3 GiB as float32 RGB before any model runs. Each count has its own bound too.
MAX_BATCH_PIXELS = 1 << 28
# What an input field may name: a model, a data source given like a model (a folder, a file, a Hub
# repo: MAGBIG's files), or a dataset of the store of one kind (`any`: whatever its kind).
INPUT_KINDS = ("model", "source", "prompts", "images", "training", "attributes", "bias", "alignment", "any")


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
        for f in dataclasses.fields(self):
            # On a command line an optional setting is unset with `none` (a recipe writes null).
            value = getattr(self, f.name)
            if isinstance(value, str) and value.lower() in ("none", "null") and str(f.type).endswith("| None"):
                setattr(self, f.name, None)
        if self.store not in BACKENDS:
            raise ConfigError(f"store={self.store!r}: allowed {', '.join(BACKENDS)}")
        if isinstance(getattr(self, "device", None), str):
            check_device(self.device)
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

    `INPUTS` maps the fields that name input artifacts to what they must be (`model`, or a dataset
    kind such as `images`); the runner pins their revisions and the lineage records them.
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
        # nan passes every `<` check and inf most: no setting of any stage means either.
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            for number in value if isinstance(value, list) else [value]:
                if isinstance(number, float) and not math.isfinite(number):
                    raise ConfigError(f"{f.name}={value!r}: a finite number is expected")
        for name, kind in self.INPUTS.items():
            value = getattr(self, name)
            if value is not None and kind not in ("model", "source"):
                try:
                    parse_ref(value, namespace=self.namespace)
                except StoreError as err:
                    raise ConfigError(f"{name}={value!r}: {err}") from None
        if self.output_repo is not None:
            try:
                self.repo_id(self.output_repo)
            except StoreError as err:
                raise ConfigError(f"output_repo={self.output_repo!r}: {err}") from None
        if self.tag is not None:
            try:  # here, not at the push: a malformed tag is refused before any work is done
                validate_tag(self.tag)
            except StoreError as err:
                raise ConfigError(f"tag={self.tag!r}: {err}") from None

    def check_at_least(self, minimum: float, *names: str) -> None:
        """Raises for the first of `names` whose value is set and below `minimum`."""
        for name in names:
            value = getattr(self, name)
            if value is not None and value < minimum:
                raise ConfigError(f"{name}={value}: must be at least {minimum}")

    def check_at_most(self, maximum: float, *names: str, why: str = "") -> None:
        """Raises for the first of `names` whose value is above `maximum` (a count that allocates
        memory: refused in one line before anything runs, not after minutes of work)."""
        for name in names:
            value = getattr(self, name)
            if value is not None and value > maximum:
                raise ConfigError(f"{name}={value}: at most {maximum:,}" + (f" ({why})" if why else ""))

    def check_pixels_per_batch(self, batch: str, height: str, width: str, unset: int = 1024) -> None:
        """Raises when a batch holds more than MAX_BATCH_PIXELS pixels: each of the batch size, the
        height and the width may be in bounds and their product not (an unset side counts `unset`)."""
        count, high, wide = (getattr(self, name) for name in (batch, height, width))
        pixels = count * (high or unset) * (wide or unset)
        if pixels > MAX_BATCH_PIXELS:
            sides = ", ".join(
                f"{name}={value}" if value else f"{name} unset (counted as {unset})"
                for name, value in {height: high, width: wide}.items()  # one side when both are one field
            )
            raise ConfigError(
                f"{batch}={count} with {sides}: {pixels:,} pixels per batch; at most {MAX_BATCH_PIXELS:,} "
                f"(e.g. {MAX_BATCH_PIXELS // (1024 * 1024)} images of 1024x1024): a smaller {batch}"
            )

    def check_choice(self, name: str, allowed: typing.Iterable[str]) -> None:
        allowed = tuple(allowed)
        value = getattr(self, name)
        values = value if isinstance(value, list) else [value]
        unknown = [v for v in values if v not in allowed]
        if unknown:
            raise ConfigError(f"{name}={value!r}: allowed {', '.join(allowed)}")


def input_fields(args: Any) -> dict[str, str]:
    """`{field name: what it names}` of the fields of `args` that name input artifacts."""
    return dict(getattr(args, "INPUTS", {}))


# ---------------------------------------------------------------------------------------------
# Recipes
# ---------------------------------------------------------------------------------------------


def load_recipe(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A recipe file. One that `extends` another (a path relative to it) is that recipe with its own
    shared settings on top and its `set` list (`STEP.KEY=VALUE`, as `run --set`) applied, so a variant
    of a study (the reference's choices) states only what differs."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe {str(path)!r} not found")
    if path.resolve() in _seen or len(_seen) > 8:
        raise ConfigError(f"recipe {str(path)!r}: extends itself through {' -> '.join(p.name for p in _seen)}")
    try:
        recipe = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"recipe {str(path)!r}{where}: YAML syntax error: {problem}") from None
    if not isinstance(recipe, dict) or not isinstance(recipe.get("stages", []), list):
        raise ConfigError(f"recipe {str(path)!r}: expected a mapping with a 'stages' list")
    if "extends" in recipe:
        return _extended(path, recipe, (*_seen, path.resolve()))
    if "set" in recipe:
        raise ConfigError(f"recipe {str(path)!r}: 'set' changes the recipe it extends; this one extends none")
    for index, entry in enumerate(recipe.get("stages", [])):
        if not isinstance(entry, dict) or "stage" not in entry:
            raise ConfigError(f"recipe {str(path)!r}: stages[{index}] needs a 'stage' key")
    names = [entry.get("name", entry["stage"]) for entry in recipe.get("stages", [])]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(f"recipe {str(path)!r}: step name(s) {', '.join(repeated)} used twice; give each a 'name'")
    recipe["__file__"] = str(path)
    return recipe


def _extended(path: Path, recipe: dict[str, Any], seen: tuple[Path, ...]) -> dict[str, Any]:
    base_name, settings = recipe.pop("extends"), recipe.pop("set", [])
    if not isinstance(base_name, str):
        raise ConfigError(f"recipe {str(path)!r}: extends: expected the path of a recipe, got {base_name!r}")
    if "stages" in recipe:
        raise ConfigError(f"recipe {str(path)!r}: a recipe that extends another changes it with 'set', not 'stages'")
    if not isinstance(settings, list) or not all(isinstance(s, str) for s in settings):
        raise ConfigError(f"recipe {str(path)!r}: set: expected a list of STEP.KEY=VALUE strings")
    base = load_recipe(path.parent / base_name, seen)
    base.update(recipe)
    base["__file__"] = str(path)
    return apply_settings(base, settings)


def apply_settings(recipe: dict[str, Any], settings: list[str]) -> dict[str, Any]:
    """`STEP.KEY=VALUE` (or `KEY=VALUE` for a shared setting), the value read as YAML: `run --set`
    and a recipe's `set` list."""
    names = {entry.get("name", entry["stage"]): entry for entry in recipe.get("stages", [])}
    for setting in settings:
        target, sep, value = setting.partition("=")
        if not sep or not target:
            raise ConfigError(f"--set {setting!r}: expected STEP.KEY=VALUE or KEY=VALUE")
        try:
            parsed = yaml.safe_load(value) if value else None
        except yaml.YAMLError as err:
            where = getattr(err, "problem", None) or "not YAML"
            raise ConfigError(f"--set {setting!r}: the value is not YAML ({where})") from None
        step, dot, key = target.rpartition(".")
        if not dot:
            recipe[target] = parsed
        elif step in names:
            names[step][key] = parsed
        else:
            raise ConfigError(f"--set {setting!r}: the recipe has no step {step!r} (it has {', '.join(names)})")
    return recipe


def shared_settings(recipe: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in recipe.items() if key not in ("stages", "__file__")}


def recipe_entry(recipe: dict[str, Any], stage: str, step: str | None = None) -> dict[str, Any]:
    """The entry for `stage` (named `step` when the recipe runs the stage more than once)."""
    entries = [e for e in recipe.get("stages", []) if e["stage"] == stage]
    if step is not None:
        entries = [e for e in entries if e.get("name", e["stage"]) == step]
        if not entries:
            raise ConfigError(f"--step {step!r}: the recipe has no {stage} step of that name")
    if not entries:
        return {}
    if len(entries) > 1:
        names = ", ".join(e.get("name", e["stage"]) for e in entries)
        raise ConfigError(f"the recipe runs {stage} more than once; choose one with --step ({names})")
    return entries[0]


def _none_or(kind: type) -> Any:
    """argparse's `type` for an optional number: `none` or `null` is None, anything else `kind`."""

    def convert(text: str) -> Any:
        return None if text.strip().lower() in ("none", "null") else kind(text)

    convert.__name__ = kind.__name__  # argparse names the type in its error: "invalid int value"
    return convert


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        parts = [_describe(a) for a in typing.get_args(hint) if a is not type(None)]
        return " or ".join(parts) + (" or null" if type(None) in typing.get_args(hint) else "")
    if origin is list:
        (inner,) = typing.get_args(hint) or (Any,)
        return f"a list of {_describe(inner).removeprefix('a ').removeprefix('an ')}s"
    if origin is dict:
        return "a mapping"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(hint, str(hint))


def _conforms(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is list:
        (inner,) = typing.get_args(hint) or (Any,)
        return isinstance(value, list) and all(_conforms(item, inner) for item in value)
    if origin is dict:
        return isinstance(value, dict)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def check_device(device: str) -> None:
    """`auto`, `cpu`, `cuda` or `cuda:N` of a GPU torch sees here: refused in one line before anything
    loads, not with torch's traceback minutes later."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise ConfigError(f"device={device!r}: allowed auto, cpu, cuda, cuda:N")
    if device.startswith("cuda"):
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device.partition(":")[2] or 0)
        if index >= count:
            raise ConfigError(
                f"device={device!r}: torch sees {count or 'no'} CUDA GPU(s) on this machine; use auto or cpu"
            )


def check_types(cls: type, values: dict[str, Any], where: str) -> dict[str, Any]:
    """Checks each value against its field's type; `where` names the recipe and step in errors.

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass
        ... class A:
        ...     professions: list[str]
        >>> check_types(A, {"professions": "nurse"}, "recipe r.yaml, step s")
        Traceback (most recent call last):
        ...
        pipelines.errors.ConfigError: recipe r.yaml, step s: professions: expected a list of strings, got 'nurse'
    """
    hints = typing.get_type_hints(cls)
    out = dict(values)
    for name, value in values.items():
        hint = hints.get(name)
        if hint is None:
            continue
        if not _conforms(value, hint):
            raise ConfigError(f"{where}: {name}: expected {_describe(hint)}, got {value!r}")
        if hint in (float, float | None) and isinstance(value, int) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def build_arguments(cls: type[T], values: dict[str, Any], where: str | None = None) -> T:
    """Builds `cls` from a dict of settings: unknown keys and values of the wrong type are errors."""
    where = where or cls.__name__
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names - set(ENTRY_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(unknown)}; allowed: {', '.join(sorted(names))}")
    values = check_types(cls, {k: v for k, v in values.items() if k in names}, where)
    return cls(**values)


def step_values(recipe: dict[str, Any], entry: dict[str, Any], cls: type) -> dict[str, Any]:
    """A step's settings: the recipe's shared settings that its stage has, then its own entry."""
    names = {f.name for f in dataclasses.fields(cls)}
    shared = {k: v for k, v in shared_settings(recipe).items() if k in names}
    return shared | {k: v for k, v in entry.items() if k not in ENTRY_KEYS}


def step_where(recipe: dict[str, Any], entry: dict[str, Any]) -> str:
    return f"recipe {recipe.get('__file__', '?')}, step {entry.get('name', entry['stage'])}"


# ---------------------------------------------------------------------------------------------
# Command lines
# ---------------------------------------------------------------------------------------------


class OneLineError(argparse.ArgumentParser):
    """Argument errors as one `ConfigError` line (with a close match for a misspelled flag)."""

    def error(self, message: str) -> typing.NoReturn:
        if message.startswith("unrecognized arguments:"):
            options = [s for action in self._actions for s in action.option_strings]
            hints = []
            for token in message.split(":", 1)[1].split():
                if token.startswith("--"):
                    close = difflib.get_close_matches(token.split("=")[0], options, n=1)
                    if close:
                        hints.append(f"{token.split('=')[0]}: did you mean {close[0]}?")
            message += f" ({'; '.join(hints)})" if hints else ""
        raise ConfigError(message)


def parse_arguments(cls: type[T], prog: str, argv: list[str] | None = None, stage: str | None = None) -> T:
    """Command line of a stage: `[--recipe R.yaml [--step NAME]] [--field value ...]`.

    `prog` is the command as a user types it; `stage` names the stage's entries in a recipe.
    """
    stage = stage or prog.rsplit(".", 1)[-1]
    from transformers import HfArgumentParser  # only where a command line is parsed

    argv = list(sys.argv[1:] if argv is None else argv)
    pre = OneLineError(add_help=False, allow_abbrev=False)
    pre.add_argument("--recipe")
    pre.add_argument("--step")
    known, rest = pre.parse_known_args(argv)
    defaults: dict[str, Any] = {}
    if known.recipe:
        recipe = load_recipe(known.recipe)
        entry = recipe_entry(recipe, stage, known.step)
        where = step_where(recipe, entry) if entry else f"recipe {known.recipe}"
        values = step_values(recipe, entry or {"stage": stage}, cls)
        unknown = sorted(set(entry) - {f.name for f in dataclasses.fields(cls)} - set(ENTRY_KEYS))
        if unknown:
            raise ConfigError(f"{where}: unknown setting(s) {', '.join(unknown)}")
        defaults = check_types(cls, values, where)
    elif known.step:
        raise ConfigError("--step needs --recipe")

    class Parser(OneLineError, HfArgumentParser):
        pass

    parser = Parser(cls, allow_abbrev=False)  # a misspelled flag is an error, never a guess
    parser.prog = prog
    group = parser.add_argument_group("recipe")
    group.add_argument("--recipe", metavar="R.yaml", help="Take settings from this recipe; flags override them.")
    group.add_argument("--step", metavar="NAME", help="The recipe's step, when it runs this stage more than once.")
    # An optional number is unset with `none`, as every other optional setting is.
    hints = typing.get_type_hints(cls)
    for action in parser._actions:
        hint = hints.get(action.dest)
        if action.type in (int, float) and hint is not None and type(None) in typing.get_args(hint):
            action.type = _none_or(action.type)
    parser.set_defaults(**defaults)
    # Recipe values become defaults, so a field required by the dataclass is satisfied by the recipe.
    for action in parser._actions:
        if action.dest in defaults:
            action.required = False
    namespace = parser.parse_args(rest)  # strict: an unknown flag is an error, not ignored
    return cls(**{f.name: getattr(namespace, f.name) for f in dataclasses.fields(cls) if f.init})
