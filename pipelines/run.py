"""The study runner: `python -m pipelines.run pipelines/recipes/<name>.yaml`.

Runs the recipe's steps in order. An input that names a repo an earlier step of this run published,
without a revision, is pinned to the revision that step published, so every step reads exactly
what the one before it made. A step whose output for the same inputs and parameters already exists
is skipped (its revision is reused), so a rerun is cheap and a run that failed half way resumes at
the step that failed. `--dry_run` prints, offline, what each step would read, download and make,
and an estimate of its GPU time.

Both start with a preflight (`pipelines.harness.preflight`): an input no step makes that is not
there (FairFace's weights), and too little disk for the planned images, stop the run before its
first step, in one line that names what is missing and where to get it.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from pipelines.artifacts.store import STORE_ROOT_ENV, parse_ref
from pipelines.errors import ConfigError, UserError
from pipelines.harness.config import (
    OneLineError,
    apply_settings,
    build_arguments,
    input_fields,
    load_recipe,
    step_values,
    step_where,
)
from pipelines.harness.estimate import THROUGHPUT_FILE, Costs, Estimate, Estimates, measured_costs, print_plan
from pipelines.harness.preflight import disk_problems, preflight
from pipelines.harness.stage import Published, Stage

# Stage name -> module, in study order.
STAGES = {
    "generate_prompts": "pipelines.generate_prompts",
    "import_magbig": "pipelines.import_magbig",
    "translate_prompts": "pipelines.translate_prompts",
    "build_tiny_model": "pipelines.build_tiny_model",
    "draw_world": "pipelines.draw_world",
    "generate_images": "pipelines.generate_images",
    "collect_datasets": "pipelines.collect_datasets",
    "train_text_to_image": "training.train_text_to_image",
    "align_distribution": "training.align_distribution",
    "classify": "pipelines.classify",
    "evaluate_bias": "pipelines.evaluate_bias",
    "evaluate_alignment": "pipelines.evaluate_alignment",
    "attach_results": "pipelines.attach_results",
    "compare_methods": "pipelines.compare_methods",
    "check_world": "pipelines.check_world",
    "publish_space": "pipelines.publish_space",
}


def stage_of(name: str) -> Stage:
    if name not in STAGES:
        raise ConfigError(f"unknown stage {name!r}: allowed {', '.join(STAGES)}")
    return importlib.import_module(STAGES[name]).STAGE


def plan_recipe(
    path: str | Path, only: list[str] | None = None, overrides: dict[str, Any] | None = None, settings: list[str] = ()
) -> tuple[dict[str, Any], list[tuple[str, Stage, dict[str, Any]]]]:
    """The recipe's steps, each checked (stage, keys, value types) before any runs."""
    recipe = apply_settings(load_recipe(path), list(settings))
    recipe.update(overrides or {})
    entries = recipe.get("stages", [])
    if not entries:
        raise ConfigError(f"recipe {str(path)!r}: no stages to run")
    names = [entry.get("name", entry["stage"]) for entry in entries]
    for step in only or []:
        if step not in names:
            raise ConfigError(f"unknown step {step!r}: the recipe has {', '.join(names)}")
    plan = []
    for entry, name in zip(entries, names):
        stage = stage_of(entry["stage"])
        build_arguments(stage.Arguments, step_values(recipe, entry, stage.Arguments), step_where(recipe, entry))
        plan.append((name, stage, entry))
    return recipe, plan


def run_recipe(
    path: str | Path,
    only: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
    settings: list[str] = (),
    keep_going: bool = False,
) -> list[Published]:
    """Runs a recipe's steps (or the named steps among them); returns what each published.

    A step whose verdict is NO (`check_world`) ends the run there, unless `keep_going`.
    """
    recipe, plan = plan_recipe(path, only, overrides, settings)
    check_inputs(planned_steps(recipe, plan, Costs()), only, hub_offline=hub_is_offline())
    published: dict[str, str] = {}
    results = []
    for index, (name, stage, entry) in enumerate(plan, 1):
        values = step_values(recipe, entry, stage.Arguments)
        args = build_arguments(stage.Arguments, values, step_where(recipe, entry))
        for field_name, kind in input_fields(args).items():
            spec = getattr(args, field_name)
            if spec is None or kind == "source":
                continue
            try:
                ref = parse_ref(spec, namespace=args.namespace)
            except UserError:
                continue  # a path or a library's model name: nothing to pin here
            if "@" not in spec and ref.repo_id in published:
                values[field_name] = f"{ref.repo_id}@{published[ref.repo_id]}"
        args = build_arguments(stage.Arguments, values, step_where(recipe, entry))
        if only and name not in only:
            continue
        print(f"== step {index}/{len(plan)}: {name} ==", file=sys.stderr)
        started = time.perf_counter()
        result = stage.run(args)
        published[result.repo_id] = result.revision
        results.append(result)
        state = "reused" if result.reused else f"done in {time.perf_counter() - started:.1f}s"
        print(f"== {name}: {result} ({state}) ==", file=sys.stderr)
        if result.verdict is not None and not result.verdict.passed and not keep_going:
            print(f"== {name}: a verdict is NO; the steps after it do not run (--keep_going runs them) ==",
                  file=sys.stderr)  # fmt: skip
            break
    return results


def dry_run(
    path: str | Path, overrides: dict[str, Any], settings: list[str], costs: Costs, only: list[str] | None = None
) -> None:
    """What each step (or each of `only`) would read, download and make, and its GPU time, without
    running anything; then the preflight. Every step is estimated, so a chosen step knows what the
    steps before it make. The Hub is not asked: a Hub input is a download the real run makes."""
    recipe, plan = plan_recipe(path, only, overrides, settings)
    steps = planned_steps(recipe, plan, costs)
    print_plan([step for step in steps if not only or step[0] in only], costs)
    check_inputs(steps, only, hub_offline=False, dry=True)


def planned_steps(
    recipe: dict[str, Any], plan: list[tuple[str, Stage, dict[str, Any]]], costs: Costs
) -> list[tuple[str, Stage, Any, Estimate | None]]:
    """Each step with its arguments and estimate, offline (nothing is loaded or downloaded)."""
    estimates = Estimates()
    steps = []
    for name, stage, entry in plan:
        args = build_arguments(stage.Arguments, step_values(recipe, entry, stage.Arguments), step_where(recipe, entry))
        steps.append((name, stage, args, stage.estimate(args, estimates, costs)))
    return steps


def check_inputs(
    steps: list[tuple[str, Stage, Any, Estimate | None]], only: list[str] | None, hub_offline: bool, dry: bool = False
) -> None:
    """The preflight of the steps that will run: a one-line error naming every problem. Too little
    disk stops a real run; a dry run, which plans and may be run elsewhere, says it and goes on."""
    made = {args.repo_id(args.output_repo) for _, _, args, _ in steps if getattr(args, "output_repo", None)}
    chosen = [(name, args, estimate) for name, _, args, estimate in steps if not only or name in only]
    problems = preflight(chosen, made, hub_offline)
    disk = disk_problems(chosen, made)
    if dry:
        for line in disk:
            print(f"Preflight: {line}: a run on this machine would stop before step 1.")
    if problems or (disk and not dry):
        raise ConfigError(f"preflight, before step 1: {'; '.join(problems + ([] if dry else disk))}")
    if dry and not disk:
        print("Preflight: every input that no step makes is there, and the disk holds the planned images.")


def hub_is_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def main(argv: list[str] | None = None) -> None:
    parser = OneLineError(prog="python -m pipelines.run", description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("recipe", help="YAML recipe, e.g. pipelines/recipes/offline.yaml")
    parser.add_argument("--only", nargs="+", metavar="STEP", help="run only these steps (inputs from the store)")
    parser.add_argument("--store", choices=("local", "hub"), help="override the recipe's store backend")
    parser.add_argument("--store_root", help="override the recipe's local store root")
    parser.add_argument("--namespace", help="override the recipe's namespace")
    parser.add_argument(
        "--set", action="append", default=[], metavar="STEP.KEY=VALUE", help="override one setting (value as YAML)"
    )
    parser.add_argument("--dry_run", action="store_true", help="print the plan and a GPU-time estimate; run nothing")
    parser.add_argument(
        "--keep_going",
        action="store_true",
        help="run the steps after a NO verdict too (the exit code is still 1, the verdicts still last)",
    )
    parser.add_argument(
        "--device_kind",
        default="cuda",
        metavar="{cuda,cpu}",
        help="dry run: the device the times are for (default cuda)",
    )
    parser.add_argument(
        "--throughput",
        default=None,
        help=f"dry run: measured seconds per unit by device kind (default {THROUGHPUT_FILE}, where "
        "python -m benchmarks.gpu and python -m benchmarks.bench_peak write them)",
    )
    parser.add_argument(
        "--seconds_per_image",
        type=float,
        default=None,
        help="dry run: seconds per generated image at 50 steps, 512 px (scaled by steps and pixels)",
    )
    parser.add_argument(
        "--seconds_per_step",
        type=float,
        default=None,
        help="dry run: seconds per training step of 16 images at 256 px (scaled by images and pixels)",
    )
    try:
        options = parser.parse_args(argv)
        overrides = {k: v for k, v in vars(options).items() if k in ("store", "store_root", "namespace") and v}
        given = {name: getattr(options, name) for name in ("seconds_per_image", "seconds_per_step")}
        for name, value in given.items():
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ConfigError(f"--{name}={value}: a number of seconds above 0")
        if options.dry_run:
            path = Path(options.throughput) if options.throughput else THROUGHPUT_FILE
            costs = measured_costs(path, options.device_kind, given=options.throughput is not None)
            if any(value is not None for value in given.values()):
                costs = dataclasses.replace(costs, **{k: v for k, v in given.items() if v is not None},
                                            source=costs.source + "; per image or per step as given")  # fmt: skip
            dry_run(options.recipe, overrides, options.set, costs, options.only)
            return
        results = run_recipe(options.recipe, options.only, overrides, options.set, options.keep_going)
    except UserError as err:
        print(f"run: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    for result in results:
        print(f"{result.repo_type}\t{result}")
    hint = space_hint(results, overrides.get("store_root") or os.environ.get(STORE_ROOT_ENV))
    if hint:
        print(hint)
    # The verdicts last, whether their step ran now or was reused: the exit code says what they say.
    verdicts = [result.verdict for result in results if result.verdict is not None]
    if verdicts:
        print("\n" + "\n".join(line for verdict in verdicts for line in verdict.lines), flush=True)
    if not all(verdict.passed for verdict in verdicts):
        raise SystemExit(1)


def space_hint(results: list[Published], store_root: str | None) -> str | None:
    """How to open the language-comparison Space on the images datasets this run evaluated.

    A model version is an images dataset whose attributes (classify) were measured (evaluate_bias),
    found by the lineage of what this run published.
    """
    from pipelines.harness.lineage import evaluated_images

    evaluated = evaluated_images(results)
    if not evaluated:
        return None
    versions = ",".join(f"{label}={ref.partition('@')[0]}" for label, ref in evaluated.items())
    root = f"T2I_BIAS_STORE_ROOT={shlex.quote(store_root)} " if store_root else ""
    return (
        "\nCompare the languages and model versions in the Space:\n"
        f"  {root}T2I_BIAS_SPACE_VERSIONS={versions} {shlex.quote(this_python())} spaces/compare_languages/app.py\n"
        "then open http://127.0.0.1:7860"
    )


def this_python() -> str:
    """The interpreter running the study (it has gradio), as a path relative to the working directory
    when it lies below it (`.venv/bin/python`): a bare `python` may be another one."""
    executable = Path(sys.executable)
    try:
        return executable.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return str(executable)


if __name__ == "__main__":
    main()
