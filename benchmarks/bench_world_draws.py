"""The offline study's verdicts over several draws of its world: how often each says yes, how far
the calibration moves between draws, and what each draw costs.

    python -m benchmarks.bench_world_draws [--seeds 1 2 3 4] [--processes 2] [--set STEP.KEY=VALUE ...]

The study's verdicts on the world (`check_world`) are the verdicts of one trained model, and that
model is one draw: the training seed, and on a CPU the thread count (float sums, and so the bytes,
depend on it), make another. A user whose machine has another number of cores gets another draw of
the same recipe, so the rate at which the recipe's own draws pass is what the README's main command
promises, and a cheaper world (issue #34's four minutes) is "as well calibrated" only against the
spread of the recipe's draws, never against one draw of each.

Each draw runs the whole recipe (`pipelines.run`, `--keep_going`) in a store of its own, with the
seed of the recipe's first training step (`--seed_step` to choose another) set to one of `--seeds`,
`--processes` draws at a time. Steps that would take every free core (training: `cpu_threads`
unset) get an equal share of them, so draws that run side by side do not oversubscribe the machine;
the sharded stages keep the recipe's one thread. Reports, per draw, the verdicts, the calibration's
figures (X², its p-value, error from the planted shares, slope on them, cells within their interval),
the distance after the debiasing fine-tune as a share of before, control, and the wall time of the
draw and of each step; over the draws, how many passed each verdict with a 95% Wilson interval, and
each figure's range. Writes benchmarks/results/world_draws.json (`--label` names another file, for
a variant of the recipe beside the recipe's own).

The stores are removed at the end unless `--stores DIR` keeps them (`DIR/store-<seed>`). A draw
whose store is already there reruns only what changed, as the runner reuses every step whose inputs
and settings it has published: a variant of the later steps (say, the debiasing fine-tune's
`--set train_debiased.max_train_steps=90`) is judged on the same trained worlds in minutes.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.common import machine, scratch, write_report  # noqa: E402
from pipelines.errors import StoreError, UserError  # noqa: E402
from pipelines.harness.config import build_arguments, step_values, step_where  # noqa: E402
from pipelines.harness.stage import usable_cpus  # noqa: E402
from pipelines.reporting.statistics import wilson_interval  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
RECIPE = REPO_ROOT / "pipelines" / "recipes" / "offline.yaml"
# The calibration's figures kept for each draw, from check_world's `summary` (the base model's row).
BASE_FIGURES = ("fit_statistic", "fit_p_value", "error", "slope", "slope_ci_low", "slope_ci_high", "cells_within")
STEP_TIME = re.compile(r"^== (\S+): .* \(done in ([0-9.]+)s\) ==$", re.MULTILINE)


def draw_plan(recipe: Path, settings: list[str], seed_step: str | None, processes: int) -> dict[str, Any]:
    """What every draw shares: the recipe's settings, the step whose seed each draw sets, the thread
    share of the steps that would take every core, and where check_world publishes its verdicts."""
    from pipelines.run import plan_recipe

    recipe_values, plan = plan_recipe(recipe, settings=settings)
    names = {name: (stage, entry) for name, stage, entry in plan}

    def field(stage: Any, name: str) -> Any:  # the stage's argument `name` (a dataclass field), or None
        return stage.Arguments.__dataclass_fields__.get(name)

    training = [name for name, stage, _ in plan if stage.name == "train_text_to_image"]
    if seed_step is None:
        if not training:
            raise UserError(f"recipe {str(recipe)!r}: no train_text_to_image step whose seed makes a draw")
        seed_step = training[0]
    elif seed_step not in names or field(names[seed_step][0], "seed") is None:
        seeded = [name for name, stage, _ in plan if field(stage, "seed") is not None]
        raise UserError(f"--seed_step {seed_step!r}: allowed {', '.join(seeded)}")
    checks = [(name, stage, entry) for name, stage, entry in plan if stage.name == "check_world"]
    if not checks:
        raise UserError(f"recipe {str(recipe)!r}: no check_world step, so no verdicts to count")
    _, stage, entry = checks[-1]
    check = build_arguments(stage.Arguments, step_values(recipe_values, entry, stage.Arguments),
                            step_where(recipe_values, entry))  # fmt: skip
    threads = max(1, usable_cpus() // processes)
    whole_core_steps = [name for name, stage, entry in plan
                        if field(stage, "cpu_threads") is not None and field(stage, "cpu_threads").default is None
                        and "cpu_threads" not in entry]  # fmt: skip
    extra = [f"{name}.cpu_threads={threads}" for name in whole_core_steps]
    return {
        "settings": list(settings) + extra,
        "seed_step": seed_step,
        "threads": threads,
        "check_repo": check.repo_id(check.output_repo),
    }


def draw_command(recipe: Path, root: Path, plan: dict[str, Any], seed: int) -> list[str]:
    settings = [*plan["settings"], f"{plan['seed_step']}.seed={seed}"]
    return [sys.executable, "-m", "pipelines.run", str(recipe), "--store_root", str(root), "--keep_going",
            *(part for setting in settings for part in ("--set", setting))]  # fmt: skip


def run_side_by_side(commands: dict[Any, list[str]], processes: int, folder: Path) -> dict[Any, dict[str, Any]]:
    """Runs each command (keyed by the caller), at most `processes` at once, each with its output in a
    log file of `folder`; returns each one's exit code, wall seconds, stdout and stderr."""
    waiting, running, done = list(commands.items()), {}, {}
    while waiting or running:
        while waiting and len(running) < processes:
            key, command = waiting.pop(0)
            out, err = (open(folder / f"{key}.{kind}.log", "w+") for kind in ("out", "err"))
            process = subprocess.Popen(command, stdout=out, stderr=err, cwd=REPO_ROOT)
            running[key] = (process, time.perf_counter(), out, err)
            print(f"draw {key}: started", file=sys.stderr, flush=True)
        time.sleep(0.2)
        for key, (process, started, out, err) in list(running.items()):
            if process.poll() is None:
                continue
            texts = []
            for log in (out, err):
                log.seek(0)
                texts.append(log.read())
                log.close()
            done[key] = {"returncode": process.returncode, "seconds": time.perf_counter() - started,
                         "stdout": texts[0], "stderr": texts[1]}  # fmt: skip
            print(f"draw {key}: ended in {done[key]['seconds']:.0f} s (exit code {process.returncode}); "
                  f"{len(done)} of {len(commands)} done", file=sys.stderr, flush=True)  # fmt: skip
            del running[key]
    return done


def read_draw(root: Path, check_repo: str, outcome: dict[str, Any]) -> dict[str, Any]:
    """One draw's verdicts and figures from what its check_world published; its `failure` (the last
    line it printed) where the run failed before the verdicts: an exit code other than 0 and 1 (the
    verdicts' own), or no verdicts published."""
    from pipelines.artifacts.reader import open_artifact
    from pipelines.artifacts.store import LocalStore

    draw: dict[str, Any] = {
        "seconds": round(outcome["seconds"], 1),
        "step_seconds": {name: float(seconds) for name, seconds in STEP_TIME.findall(outcome["stderr"])},
    }
    lines = outcome["stderr"].strip().splitlines()
    failure = {**draw, "failure": lines[-1] if lines else f"exit code {outcome['returncode']}"}
    if outcome["returncode"] not in (0, 1):
        return failure
    try:  # exit code 1 is also Python's for a crash, which may come before any verdict
        artifact = open_artifact(check_repo, store=LocalStore(root))
    except StoreError:
        return failure
    summary = {row["model"]: row for row in artifact.rows("summary")}
    verdicts = {row["verdict"]: row for row in artifact.rows("verdicts")}
    base, debiased = summary["base"], summary.get("debiased")
    draw.update({name: verdicts[name]["passed"] for name in verdicts})
    draw.update({name: round(float(base[name]), 4) for name in BASE_FIGURES})
    if debiased is not None:
        draw["debiased_share_of_before"] = round(float(debiased["distance"] / base["distance"]), 4)
        draw["control_after"] = round(float(debiased["control"]), 4)
    draw["lines"] = [verdicts[name]["line"] for name in verdicts]
    return draw


def summarise(draws: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Over the draws that reached their verdicts: each verdict's pass count and 95% Wilson interval
    of its pass rate, and each figure's smallest, median and largest value."""
    import numpy as np

    judged = [draw for draw in draws.values() if "failure" not in draw]
    summary: dict[str, Any] = {"draws": len(draws), "failed_runs": len(draws) - len(judged)}
    for verdict in ("calibrated", "debiased"):
        passed = [draw[verdict] for draw in judged if verdict in draw]
        if passed:
            low, high = wilson_interval(sum(passed), len(passed))
            summary[verdict] = {"passed": sum(passed), "of": len(passed), "rate_ci95": [round(low, 3), round(high, 3)]}
    for figure in (*BASE_FIGURES, "debiased_share_of_before", "control_after", "seconds"):
        values = [draw[figure] for draw in judged if figure in draw]
        if values:
            summary[figure] = {"min": min(values), "median": round(float(np.median(values)), 4), "max": max(values)}
    return summary


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=str(RECIPE), help="a recipe with a check_world step")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4], help="one draw per seed")
    parser.add_argument("--seed_step", default=None, help="the step whose seed a draw sets (the first training)")
    parser.add_argument("--processes", type=int, default=2, help="draws run side by side")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="STEP.KEY=VALUE",
                        help="a recipe setting for every draw, as pipelines.run takes it")  # fmt: skip
    parser.add_argument("--label", default=None, help="names the variant; its report is world_draws_<label>.json")
    parser.add_argument("--results_dir", default=None)
    parser.add_argument("--stores", default=None, help="keep each draw's store here (store-<seed>), reusing it")
    options = parser.parse_args(argv)
    if len(set(options.seeds)) != len(options.seeds):
        parser.error(f"--seeds {' '.join(map(str, options.seeds))}: each seed once (a repeat is the same draw)")
    if options.processes < 1:
        parser.error(f"--processes {options.processes}: at least 1")
    if options.label is not None and not re.fullmatch(r"[A-Za-z0-9_-]+", options.label):
        parser.error(f"--label {options.label!r}: letters, digits, '-' and '_' only (it names a file)")
    if options.stores is not None and Path(options.stores).is_file():
        parser.error(f"--stores {options.stores!r}: a folder (it is a file)")
    recipe = Path(options.recipe).resolve()
    try:
        plan = draw_plan(recipe, options.settings, options.seed_step, options.processes)
    except UserError as error:
        parser.error(str(error))
    folder = scratch("bench-world-draws-")  # the logs, and the stores unless --stores keeps them
    stores = Path(options.stores).resolve() if options.stores else folder
    stores.mkdir(parents=True, exist_ok=True)
    commands = {seed: draw_command(recipe, stores / f"store-{seed}", plan, seed) for seed in options.seeds}
    started = time.perf_counter()
    outcomes = run_side_by_side(commands, options.processes, folder)
    draws = {}
    for seed in options.seeds:
        draws[seed] = read_draw(stores / f"store-{seed}", plan["check_repo"], outcomes[seed])
        verdicts = draws[seed].get("lines") or [draws[seed].get("failure", "")]
        print(f"draw {seed} ({draws[seed]['seconds']} s): " + "; ".join(line.split(" (")[0] for line in verdicts),
              file=sys.stderr)  # fmt: skip
    report = {
        "benchmark": "the offline study's verdicts over draws of its world (training seeds)",
        "machine": machine(),
        "recipe": recipe.name,
        "settings": options.settings,
        "seed_step": plan["seed_step"],
        "processes": options.processes,
        "training_threads": plan["threads"],
        "stores_kept": options.stores is not None,  # a kept store reuses the steps a run before made
        "wall_seconds": round(time.perf_counter() - started, 1),
        "summary": summarise(draws),
        "draws": {str(seed): draw for seed, draw in draws.items()},
    }
    write_report(f"world_draws_{options.label}" if options.label else "world_draws", report, options.results_dir)
    return report


if __name__ == "__main__":
    main()
