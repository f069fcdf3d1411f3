"""The study runner: `python -m pipelines.run pipelines/recipes/<name>.yaml`.

Runs the recipe's stages in order. An input that names a repo an earlier stage of this run
published, without a revision, is pinned to the revision that stage published, so every stage
reads exactly what the one before it made. A stage whose output for the same inputs and
parameters already exists is skipped (its revision is reused), so a rerun is cheap and a run that
failed half way resumes at the stage that failed.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from pipelines.artifacts.store import STORE_ROOT_ENV, parse_ref
from pipelines.errors import ConfigError, StoreError
from pipelines.harness.config import build_arguments, input_fields, load_recipe, shared_settings
from pipelines.harness.stage import Published

# Stage name -> module, in study order.
STAGES = {
    "generate_prompts": "pipelines.generate_prompts",
    "translate_prompts": "pipelines.translate_prompts",
    "build_tiny_model": "pipelines.build_tiny_model",
    "generate_images": "pipelines.generate_images",
    "collect_datasets": "pipelines.collect_datasets",
    "train_text_to_image": "training.train_text_to_image",
    "classify": "pipelines.classify",
    "evaluate_bias": "pipelines.evaluate_bias",
    "evaluate_alignment": "pipelines.evaluate_alignment",
}


def stage_module(stage: str) -> Any:
    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}: allowed {', '.join(STAGES)}")
    return importlib.import_module(STAGES[stage])


def run_recipe(
    path: str | Path, only: list[str] | None = None, overrides: dict[str, Any] | None = None
) -> list[Published]:
    """Runs a recipe's stages (or the named steps among them); returns what each published."""
    recipe = load_recipe(path)
    shared = shared_settings(recipe) | (overrides or {})
    entries = recipe.get("stages", [])
    names = [entry.get("name", entry["stage"]) for entry in entries]
    for step in only or []:
        if step not in names:
            raise ConfigError(f"unknown step {step!r}: the recipe has {', '.join(names)}")
    # Validate every entry before running any, so a typo in the last stage fails in seconds.
    plan = []
    for entry, name in zip(entries, names):
        module = stage_module(entry["stage"])
        build_arguments(module.Arguments, shared | entry)
        plan.append((name, module, entry))
    published: dict[str, str] = {}
    results = []
    for index, (name, module, entry) in enumerate(plan, 1):
        values = shared | entry
        args = build_arguments(module.Arguments, values)
        for field_name in input_fields(args):
            spec = getattr(args, field_name)
            if spec is None:
                continue
            ref = parse_ref(spec, namespace=args.namespace)
            if "@" not in spec and ref.repo_id in published:
                values[field_name] = f"{ref.repo_id}@{published[ref.repo_id]}"
        args = build_arguments(module.Arguments, values)
        if only and name not in only:
            continue
        print(f"== step {index}/{len(plan)}: {name} ==", file=sys.stderr)
        started = time.perf_counter()
        result = module.run(args)
        published[result.repo_id] = result.revision
        results.append(result)
        state = "reused" if result.reused else f"done in {time.perf_counter() - started:.1f}s"
        print(f"== {name}: {result} ({state}) ==", file=sys.stderr)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipelines.run", description=__doc__.splitlines()[0])
    parser.add_argument("recipe", help="YAML recipe, e.g. pipelines/recipes/offline.yaml")
    parser.add_argument("--only", nargs="+", metavar="STEP", help="run only these steps (inputs from the store)")
    parser.add_argument("--store", choices=("local", "hub"), help="override the recipe's store backend")
    parser.add_argument("--store_root", help="override the recipe's local store root")
    parser.add_argument("--namespace", help="override the recipe's namespace")
    options = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(options).items() if k in ("store", "store_root", "namespace") and v}
    try:
        results = run_recipe(options.recipe, options.only, overrides)
    except (ConfigError, StoreError) as err:
        print(f"run: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    for result in results:
        print(f"{result.repo_type}\t{result}")
    hint = space_hint(results, overrides.get("store_root") or os.environ.get(STORE_ROOT_ENV))
    if hint:
        print(hint)


def space_hint(results: list[Published], store_root: str | None) -> str | None:
    """How to open the language-comparison Space on the model versions this run evaluated."""
    bias = {r.repo_id.removesuffix("-bias") for r in results if r.repo_id.endswith("-bias")}
    alignment = {r.repo_id.removesuffix("-alignment") for r in results if r.repo_id.endswith("-alignment")}
    evaluated = sorted(bias & alignment)
    if not evaluated:
        return None
    versions = ",".join(
        f"{name.split('/')[-1].removeprefix('images-').removesuffix('-eval')}={name}" for name in evaluated
    )
    root = f"T2I_BIAS_STORE_ROOT={shlex.quote(store_root)} " if store_root else ""
    return (
        "\nCompare the languages and model versions in the Space:\n"
        f"  {root}T2I_BIAS_SPACE_VERSIONS={versions} python spaces/compare_languages/app.py\n"
        "then open http://127.0.0.1:7860"
    )


if __name__ == "__main__":
    main()
