"""Do the tests bite? Each mutation below breaks one behaviour that matters; the tests it names must fail.

    python -m benchmarks.mutations [--only ID ...] [--results_dir DIR]

A mutation is one exact replacement in one file (the text must occur exactly once, so a mutation
that no longer applies is an error, not a pass). For each: the named tests run on the unmutated
code first (they must pass, or the kill means nothing), then on the mutated code; the mutation is
killed when they fail. The file itself is never changed: the mutated text reaches only the test run's
processes (and the processes they start), through an import hook on their PYTHONPATH, so other work on
this checkout (a parallel test worker, an editor) never sees a mutant.
Writes benchmarks/results/mutations.json: the kill rate and each mutation's outcome (with `--only`,
the outcomes rerun replace those of the last run).

The list is standing: a behaviour worth a test is worth a mutation here. It spans the bias metric,
the statistics, the store, the verdicts, the prompts, CLIP scoring and training.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import RESULTS, machine, write_report

ROOT = Path(__file__).resolve().parents[1]
METRIC = "spaces/fairness_metrics/fairness_metrics.py"
CLIP = "spaces/clip_score/clip_score.py"
STATS = "pipelines/reporting/statistics.py"
STORE = "pipelines/artifacts/store.py"
WORLD = "pipelines/check_world.py"
TRAIN = "training/train_text_to_image.py"


@dataclass(frozen=True)
class Mutation:
    id: str
    area: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]
    breaks: str


MUTATIONS = [
    # --- the bias metric (spaces/fairness_metrics) ---------------------------------------------------
    Mutation("l1-mean-not-sum", "metrics", METRIC,
             "return np.abs(deviation).sum(-1), np.sqrt", "return np.abs(deviation).mean(-1), np.sqrt",
             (METRIC,), "L1 from uniform is a sum over labels, as MAGBIG's"),
    Mutation("l1-floor-squared", "metrics", METRIC,
             "np.abs(x - target[:, None])).sum())", "np.abs(x - target[:, None]) ** 2).sum())",
             ("tests/test_bias.py",), "the sampling floor is E|share - target|"),
    Mutation("unbiased-distance-divides-by-n", "metrics", METRIC,
             "raw - (shares * (1 - shares)).sum(-1) / (n - 1)", "raw - (shares * (1 - shares)).sum(-1) / n",
             ("tests/test_bias.py",), "the squared distance's bias correction is exact only with n - 1"),
    Mutation("bootstrap-quantiles-swapped", "metrics", METRIC,
             "np.quantile(boot - centre, [1 - alpha, alpha])", "np.quantile(boot - centre, [alpha, 1 - alpha])",
             ("tests/test_bias.py",), "the basic bootstrap reflects the quantiles"),
    Mutation("pmf-at-share-one", "metrics", METRIC,
             "np.where(p == 1, (x == n).astype(float), pmf)", "np.where(p == 1, (x == 0).astype(float), pmf)",
             (METRIC, "tests/test_bias.py"), "a share of 1 puts all the mass on n"),
    Mutation("target-need-not-sum-to-one", "metrics", METRIC,
             "if abs(shares.sum() - 1) > 1e-6:", "if abs(shares.sum() - 1) > 0.5:",
             ("tests/test_bias.py",), "a target that is not a distribution is refused"),
    Mutation("reference-fit-reversed", "metrics", METRIC,
             "    y = hits / totals\n", "    y = 1 - hits / totals\n",
             (METRIC, "tests/test_bias.py"), "the slope is of the measured share of the reference label"),
    Mutation("asymmetric-noise-reads-the-last-label", "metrics", METRIC,
             "        matrix[:, 0] += rate\n", "        matrix[:, -1] += rate\n",
             (METRIC, "tests/test_bias.py"), "the asymmetric classifier misreads every label as the first"),
    # --- CLIP scoring (spaces/clip_score) ---------------------------------------------------------
    Mutation("clip-aggregate-clamped-per-pair", "metrics", CLIP,
             "mean = max(100 * float(cosine.mean()), 0.0)", "mean = float(scores.mean())",
             (CLIP, "tests/test_alignment.py"), "torchmetrics clamps the mean, not each pair, in its aggregate"),
    Mutation("clip-scores-not-clamped", "metrics", CLIP,
             "scores = 100 * np.maximum(cosine, 0)", "scores = 100 * cosine",
             (CLIP, "tests/test_alignment.py"), "a torchmetrics score is 100 * max(cos, 0)"),
    Mutation("clip-texts-paired-by-position", "metrics", CLIP,
             "rows[name] = torch.tensor([position[text] for text in chosen], dtype=torch.long)",
             "rows[name] = torch.arange(len(chosen)) % max(len(texts), 1)",
             ("tests/test_alignment.py",), "each image is scored against its own text"),
    # --- statistics (pipelines/reporting/statistics.py) -------------------------------------------
    Mutation("paired-test-one-sided", "statistics", STATS,
             "observed = abs(differences.mean())", "observed = differences.mean()",
             (STATS, "tests/test_methods.py::test_the_paired_test_on_cases_with_known_answers"),
             "the permutation test is two-sided"),
    Mutation("holm-is-bonferroni", "statistics", STATS,
             "(len(present) - rank) * p", "len(present) * p",
             (STATS, "tests/test_methods.py::test_holm_adjusts_step_down_and_keeps_the_order"),
             "Holm steps down"),
    Mutation("holm-not-monotone", "statistics", STATS,
             "running = max(running, min(1.0, (len(present) - rank) * p))",
             "running = min(1.0, (len(present) - rank) * p)",
             ("tests/test_methods.py::test_holm_adjusts_step_down_and_keeps_the_order",),
             "adjusted p-values keep the order of the raw ones"),
    Mutation("wilson-centre", "statistics", STATS,
             "centre = (share + z * z / (2 * total))", "centre = (share + z * z / total)",
             (STATS,), "the Wilson interval's centre"),
    Mutation("mean-interval-population-sd", "statistics", STATS,
             "values.std(ddof=1) / math.sqrt(len(values))", "values.std(ddof=0) / math.sqrt(len(values))",
             (STATS,), "the t interval uses the sample standard deviation"),
    Mutation("fit-test-ignores-the-smallest-cell", "statistics", STATS,
             "smallest = min(float(p_sum(observed_sum, 1)[0]), float(p_cell(observed_cell, 1)[0]))",
             "smallest = float(p_sum(observed_sum, 1)[0])",
             ("tests/test_methods.py::test_the_fit_test_fails_a_perfect_model_at_its_stated_rate_and_catches_wrong_ones",),
             "one cell far off is caught, though X² dilutes it"),
    Mutation("slope-intercept", "statistics", STATS,
             "intercept = float(y.mean() - b * x.mean())", "intercept = float(y.mean())",
             (STATS, "tests/test_methods.py::test_the_slope_says_what_a_correlation_hides"),
             "the fitted line passes through the means"),
    # --- the store --------------------------------------------------------------------------------
    Mutation("revision-ignores-paths", "store", STORE,
             "digest.update(path.relative_to(folder).as_posix().encode() + b\"\\0\")", "pass",
             ("tests/test_store.py",), "a renamed file is another revision"),
    Mutation("tag-conflict-ignored", "store", STORE,
             "if current is not None and current != revision:", "if False:",
             ("tests/test_store.py",), "a tag never silently moves"),
    Mutation("tag-command-moves-tags", "store", STORE,
             "current = self._ref(repo_dir, tag)\n            if current not in (None, resolved):",
             "current = self._ref(repo_dir, tag)\n            if current is None and resolved is None:",
             ("tests/test_store.py",), "tagging refuses a tag that names another revision"),
    Mutation("reserved-tags-accepted", "store", STORE,
             "reserved = tag == \"main\" or tag.startswith(PINNED_REFS + \"/\")", "reserved = False",
             ("tests/test_store.py",), "'main' and pins cannot be tags"),
    Mutation("token-not-redacted", "store", STORE,
             "return text.replace(token, \"***\") if token else text", "return text",
             ("tests/test_store.py",), "a server that echoes the token never gets it printed"),
    Mutation("tag-checked-after-pins", "store", STORE,
             "            self._check_tag(repo_dir, repo_id, tag, revision)\n            # Inputs are pinned next",
             "            # Inputs are pinned next",
             ("tests/test_stage_lifecycle.py::test_a_refused_push_writes_no_pin",),
             "a push refused for its tag writes nothing, pins included"),
    Mutation("tag-checked-after-the-work", "store", "pipelines/harness/stage.py",
             "    run.check_tag()\n    folder = workspace.build_folder", "    folder = workspace.build_folder",
             ("tests/test_stage_lifecycle.py::test_a_tag_that_names_another_revision_is_refused_before_any_work",),
             "a taken tag is refused before any work"),
    # --- verdicts (pipelines/check_world.py) ------------------------------------------------------
    Mutation("calibrated-always", "verdicts", WORLD,
             "calibrated = base[\"fit_p_value\"] >= args.alpha", "calibrated = True",
             ("tests/test_world.py",), "a badly calibrated study is called NO"),
    Mutation("debiased-without-bias-before", "verdicts", WORLD,
             "if not base[\"distance_ci_low\"] > 0:", "if False:",
             ("tests/test_world.py",), "no measurable bias before is not a debiasing"),
    Mutation("debiased-without-control", "verdicts", WORLD,
             "elif after[\"control\"] < args.min_control:", "elif False:",
             ("tests/test_world.py",), "gendered prompts must keep their gender"),
    Mutation("slope-of-planted-on-planted", "verdicts", WORLD,
             "line = slope(truth, shares, args.confidence)", "line = slope(truth, truth, args.confidence)",
             ("tests/test_world.py::test_the_debiasing_verdict_measures_distance_from_the_target_and_control",),
             "the amplification slope is the measured shares' on the planted ones"),
    Mutation("cell-within-one-sided", "verdicts", WORLD,
             "row[\"base_ci_low\"] <= row[\"planted_share\"] <= row[\"base_ci_high\"]",
             "row[\"base_ci_low\"] <= row[\"planted_share\"]",
             ("tests/test_world.py",), "a cell is within its interval on both sides"),
    # --- prompts --------------------------------------------------------------------------------
    Mutation("intervention-targets-one-gender", "prompts", "pipelines/prompting/interventions.py",
             "return \"female\" if sample_index % 2 == 0 else \"male\"", "return \"female\"",
             ("pipelines/prompting/interventions.py",
              "tests/test_methods.py::test_each_intervention_tells_the_pipeline_what_magbig_does"),
             "explicit prompts alternate the genders"),
    Mutation("neutral-twin-keeps-gender", "prompts", "pipelines/prompting/grid.py",
             "(NEUTRAL if c == \"gender\" else row[c] for c in GRID_COLUMNS)", "(row[c] for c in GRID_COLUMNS)",
             ("pipelines/prompting/grid.py", "tests/test_prompts.py"),
             "a gendered prompt's twin is its neutral prompt"),
    # --- training ---------------------------------------------------------------------------------
    Mutation("timestep-bias-ignored", "training", TRAIN,
             "timesteps = torch.multinomial(parts.timestep_weights, latents.shape[0], replacement=True)",
             "timesteps = torch.randint(0, len(parts.timestep_weights), (latents.shape[0],))",
             ("tests/test_training.py::test_timestep_bias_draws_the_biased_timesteps_that_much_more_often",),
             "--timestep_bias_strategy changes which timesteps are trained"),
    Mutation("resume-threads-ignored", "training", "training/models.py",
             "threads, why = resumed_threads(output_dir, args.resume_from_checkpoint), \"as the checkpoint resumed\"",
             "why = \"as the checkpoint resumed\"",
             ("tests/test_training.py::test_a_resume_trains_on_the_thread_count_of_its_checkpoint",),
             "a resume trains at its checkpoint's thread count (the bytes depend on it)"),
    Mutation("cut-short-checkpoint-resumes", "training", "training/checkpoints.py",
             "    problem = cut_short(path)\n    if problem:\n",
             "    problem = None\n    if problem:\n",
             ("tests/test_training.py::test_a_checkpoint_without_its_completion_marker_is_refused_by_name",),
             "a checkpoint cut short never resumes"),
    # --- distributional alignment -----------------------------------------------------------------
    Mutation("alignment-no-gradient-through-steps", "training", "training/align_distribution.py",
             "        with torch.set_grad_enabled(with_grad):\n",
             "        with torch.set_grad_enabled(False):\n",
             ("tests/test_align_distribution.py::test_gradients_reach_the_text_encoder_and_the_unet_through_the_denoising_steps",),
             "the adjusted direct fine-tuning back-propagates through the denoising steps"),
    Mutation("alignment-micro-batch-mean", "training", "training/align_distribution.py",
             "loss = (fairness + args.preservation_weight * kept_close) / count",
             "loss = (fairness + args.preservation_weight * kept_close) / len(images)",
             ("tests/test_align_distribution.py::test_micro_batches_add_up_to_the_one_batch_gradient",),
             "micro-batches add up to the one-batch gradient"),
    Mutation("alignment-shared-batch-guidance-halves-mixed", "training", "training/align_distribution.py",
             "    return torch.cat([half[0] for half in halves] + [half[1] for half in halves])",
             "    return torch.cat(states)",
             ("tests/test_align_distribution.py::test_a_step_s_prompts_share_the_sampler_and_learn_what_one_prompt_at_a_time_learns",),
             "a step's prompts denoised together learn what one prompt at a time learns"),
    Mutation("alignment-gendered-prompts-unanchored", "training", "training/align_distribution.py",
             "    return labels.index(named) if attribute == \"gender\" and named in labels else None",
             "    return None",
             ("tests/test_align_distribution.py::test_a_prompt_that_names_a_gender_is_aligned_to_it_and_any_other_to_the_target",),
             "a gendered prompt is aligned to its own gender (explicit-gender control)"),
    Mutation("alignment-prompts-per-step-summed", "training", "training/align_distribution.py",
             "share = loss / args.prompts_per_step",
             "share = loss",
             ("tests/test_align_distribution.py::test_several_prompts_per_step_add_up_to_the_mean_of_their_gradients",),
             "the prompts of a step weigh the same: their gradients' mean"),
    Mutation("alignment-corrected-named-prompts-aligned", "training", "training/align_distribution.py",
             "    if named is not None and args.named_gender == \"corrected\":",
             "    if False:",
             ("tests/test_align_distribution.py::test_a_corrected_named_prompt_targets_only_its_images_of_another_gender",),
             "--named_gender corrected leaves the images already of the named gender without a target"),
    Mutation("alignment-gradient-scaling-ignored", "training", "training/align_distribution.py",
             "    if args.gradient_scaling == \"none\":",
             "    if True:",
             ("tests/test_align_distribution.py::test_each_step_s_gradient_is_scaled_by_its_coefficient_or_not_at_all",),
             "the paper's scaling multiplies each step's gradient by its coefficient (none: unscaled)"),
    Mutation("alignment-neutral-visits-ignored", "training", "training/align_distribution.py",
             "is not None else args.neutral_visits)",
             "is not None else 1)",
             ("tests/test_align_distribution.py::test_an_epoch_visits_each_prompt_that_names_no_gender_neutral_visits_times",),
             "an epoch visits each prompt that names no gender --neutral_visits times"),
]  # fmt: skip


def apply(mutation: Mutation) -> str:
    """The mutated text of the file; an error when the original text is not there exactly once."""
    text = (ROOT / mutation.file).read_text(encoding="utf-8")
    found = text.count(mutation.old)
    if found != 1:
        raise SystemExit(f"mutation {mutation.id}: its text occurs {found} times in {mutation.file}, not once")
    return text.replace(mutation.old, mutation.new, 1)


# Python imports `sitecustomize` at start-up from its path: this one makes every module whose source is
# the original file's text (the file itself, or a copy such as `evaluate.load` imports) run the mutant.
SITECUSTOMIZE = """import importlib.machinery

_ORIGINAL = open({original!r}, "rb").read()
_MUTATED = open({mutated!r}, "rb").read()
_get_code = importlib.machinery.SourceFileLoader.get_code


def _get_mutated_code(self, fullname):
    path = self.get_filename(fullname)
    try:
        with open(path, "rb") as file:
            source = file.read()
    except OSError:
        source = None
    if source == _ORIGINAL:
        return compile(_MUTATED, path, "exec", dont_inherit=True)
    return _get_code(self, fullname)


importlib.machinery.SourceFileLoader.get_code = _get_mutated_code
"""


def run_tests(tests: tuple[str, ...], timeout: int, mutation: Mutation | None = None) -> tuple[bool, float]:
    """Whether the tests pass (on the code with `mutation` applied, where given), and their seconds (a
    timeout counts as a failure: the mutation hung them). Slow tests (`-m slow`, minutes each) are left
    out: a mutation names fast tests that kill it."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="t2i-bias-mutation-") as hook:
        env = dict(os.environ)
        if mutation is not None:
            original, mutated = Path(hook) / "original", Path(hook) / "mutated"
            original.write_bytes((ROOT / mutation.file).read_bytes())
            mutated.write_text(apply(mutation), encoding="utf-8")
            code = SITECUSTOMIZE.format(original=str(original), mutated=str(mutated))
            (Path(hook) / "sitecustomize.py").write_text(code, encoding="utf-8")
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [hook, env.get("PYTHONPATH")]))
        try:
            done = subprocess.run(
                # --assert=plain: pytest's assertion rewriting would load the files named here itself,
                # past the import hook (it changes the messages of failing asserts, not what fails).
                [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--no-header", "--assert=plain",
                 "-m", "not slow", "-o", "addopts=--doctest-modules", "--ignore-glob=*/app.py", *tests],
                cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return False, time.perf_counter() - started
    if done.returncode == 5:
        raise SystemExit(f"no test collected by {' '.join(tests)} (slow tests do not run here)")
    return done.returncode == 0, time.perf_counter() - started


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, help="mutation ids (default: all)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per test run")
    parser.add_argument("--results_dir", default=None)
    options = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if options.only is None or m.id in options.only]
    unknown = sorted(set(options.only or ()) - {m.id for m in MUTATIONS})
    if unknown:
        raise SystemExit(f"--only: unknown mutation(s) {', '.join(unknown)}")
    for mutation in chosen:  # every mutation applies (its text is there once) before any test runs
        apply(mutation)
    for tests in dict.fromkeys(m.tests for m in chosen):
        passed, seconds = run_tests(tests, options.timeout)
        print(f"baseline {' '.join(tests)}: {'pass' if passed else 'FAIL'} ({seconds:.0f} s)", flush=True)
        if not passed:
            raise SystemExit(f"the tests {' '.join(tests)} fail on the unmutated code: fix them first")
    outcomes = []
    for mutation in chosen:
        passed, seconds = run_tests(mutation.tests, options.timeout, mutation)
        outcomes.append({
            "id": mutation.id, "area": mutation.area, "file": mutation.file, "breaks": mutation.breaks,
            "tests": list(mutation.tests), "killed": not passed, "seconds": round(seconds, 1),
        })  # fmt: skip
        print(f"{'killed' if not passed else 'SURVIVED'}  {mutation.id} ({seconds:.0f} s)", flush=True)
    print(f"{sum(o['killed'] for o in outcomes)} of {len(outcomes)} mutations killed")
    # `--only` reruns some mutations: their outcomes replace those of the last full run in the report.
    path = Path(options.results_dir or RESULTS) / "mutations.json"
    earlier = json.loads(path.read_text())["outcomes"] if options.only is not None and path.is_file() else []
    by_id = {o["id"]: o for o in [*earlier, *outcomes]}
    merged = [by_id[m.id] for m in MUTATIONS if m.id in by_id]
    killed = sum(o["killed"] for o in merged)
    report = {
        "benchmark": "mutations of behaviour that matters, and whether the tests named for each kill it",
        "machine": machine(),
        "mutations": len(merged),
        "killed": killed,
        "kill_rate": round(killed / len(merged), 3) if merged else None,
        "survived": [o["id"] for o in merged if not o["killed"]],
        "outcomes": merged,
    }
    write_report("mutations", report, options.results_dir)
    return report


if __name__ == "__main__":
    main()
