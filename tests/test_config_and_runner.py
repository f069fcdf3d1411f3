"""Recipes, command-line overrides, one-line errors, and the study runner's pinning and skipping."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipelines import generate_prompts, translate_prompts
from pipelines.artifacts.store import LocalStore
from pipelines.errors import ConfigError
from pipelines.harness.config import parse_arguments
from pipelines.run import run_recipe

from .conftest import REPO_ROOT, machine_paths_in, run_python, run_study

SMALL = {"professions": ["doctor", "nurse"], "styles": ["close-up"], "ages": ["young"]}


def write_recipe(tmp_path: Path, stages: list[dict], **shared: Any) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(
        yaml.safe_dump({"store_root": str(tmp_path / "hub"), "namespace": "study", **shared, "stages": stages})
    )
    return path


def test_recipe_then_flags_override(tmp_path: Path) -> None:
    recipe = write_recipe(
        tmp_path,
        [{"stage": "generate_prompts", **SMALL}, {"stage": "translate_prompts", "languages": ["de", "ja"]}],
    )
    args = parse_arguments(translate_prompts.Arguments, "translate_prompts", ["--recipe", str(recipe)])
    assert args.languages == ["de", "ja"] and args.namespace == "study"
    assert args.store_root == str(tmp_path / "hub")
    args = parse_arguments(
        translate_prompts.Arguments,
        "translate_prompts",
        ["--recipe", str(recipe), "--languages", "fr", "--namespace", "other"],
    )
    assert args.languages == ["fr"] and args.namespace == "other"
    assert args.output_repo == "prompts"  # a translation is a new revision of its input
    args = parse_arguments(generate_prompts.Arguments, "generate_prompts", ["--recipe", str(recipe)])
    assert args.professions == ["doctor", "nurse"] and args.genders == ["male", "female"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--store", "s3"], "store='s3': allowed local, hub"),
        (["--languages", "xx"], "languages: unknown 'xx'; allowed de, zh, ja, es, fr, it, ko, ru, ar"),
        (["--backend", "google"], "backend='google': allowed lexicon, transformers"),
        (["--backend", "transformers"], "translation_model: required with backend=transformers"),
        (["--input", "bad repo"], "input='bad repo': malformed repo id"),
    ],
)
def test_bad_values_name_the_field(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_arguments(translate_prompts.Arguments, "translate_prompts", argv)
    assert message in str(caught.value)


def test_unknown_recipe_setting(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, [{"stage": "generate_prompts", "profesions": ["doctor"]}])
    with pytest.raises(ConfigError, match="unknown setting\\(s\\) profesions"):
        parse_arguments(generate_prompts.Arguments, "generate_prompts", ["--recipe", str(recipe)])
    with pytest.raises(ConfigError, match="unknown setting\\(s\\) profesions"):
        run_recipe(recipe)


def test_stage_cli_error_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = run_python("-m", "pipelines.translate_prompts", "--store_root", str(tmp_path), "--languages", "de", "xx")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "translate_prompts: error: languages: unknown 'xx'; allowed de, zh, ja, es, fr, it, ko, ru, ar"
    ]
    result = run_python("-m", "pipelines.translate_prompts", "--store_root", str(tmp_path), "--input", "study/none")
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("translate_prompts: error: unknown dataset repo 'study/none'")
    )
    assert not (tmp_path / "datasets--study--none").exists()


def test_runner_pins_inputs_and_skips_done_stages(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = write_recipe(
        tmp_path,
        [
            {"stage": "generate_prompts", "output_repo": "prompts", **SMALL},
            {"stage": "translate_prompts", "input": "prompts", "languages": ["de"]},
        ],
    )
    first = run_recipe(recipe)
    assert [r.reused for r in first] == [False, False]
    store = LocalStore(tmp_path / "hub")
    history = store.history("study/prompts", "dataset")
    assert [e.revision for e in history] == [first[1].revision, first[0].revision]
    assert history[0].lineage["inputs"] == {"input": f"study/prompts@{first[0].revision}"}
    assert history[0].lineage["stage"] == "translate_prompts"
    assert history[0].lineage["parameters"]["languages"] == ["de"]

    again = run_recipe(recipe)
    assert [r.reused for r in again] == [True, True]
    assert [r.revision for r in again] == [r.revision for r in first]
    assert len(store.history("study/prompts", "dataset")) == 2

    # A changed parameter reruns that stage only; the earlier one is reused.
    recipe = write_recipe(
        tmp_path,
        [
            {"stage": "generate_prompts", "output_repo": "prompts", **SMALL},
            {"stage": "translate_prompts", "input": "prompts", "languages": ["de", "fr"]},
        ],
    )
    third = run_recipe(recipe)
    assert [r.reused for r in third] == [True, False]
    assert store.history("study/prompts", "dataset")[0].lineage["inputs"] == {
        "input": f"study/prompts@{first[0].revision}"
    }


def test_runner_rejects_unknown_stage_before_running_anything(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, [{"stage": "generate_prompts", **SMALL}, {"stage": "paint_pictures"}])
    with pytest.raises(ConfigError, match="unknown stage 'paint_pictures': allowed"):
        run_recipe(recipe)
    assert not (tmp_path / "hub").exists()


@pytest.mark.slow
def test_readme_study_command_runs(offline_study: dict) -> None:
    """The README's study command, as written, on a fresh store: the planted-bias world is measured
    back, the debiasing fine-tune shrinks the bias, and every artifact pins what it was made from."""
    import datasets

    result = offline_study["result"]
    assert result.returncode == 0, result.stderr[-3000:]
    store = LocalStore(offline_study["root"])

    def rows(repo: str, config: str) -> datasets.Dataset:
        return datasets.load_dataset(str(store.resolve(f"t2i-bias/{repo}", "dataset")), config, split="train")

    # One style, age, dressing and place: 12 gendered, 6 neutral and 5 x 6 evaluation prompts per language.
    assert rows("world-prompts", "de").num_rows == 12 + 6 + 30
    # 100 images per neutral prompt of six occupations, in four languages, for both models.
    for repo in ("world-base-eval", "world-debiased-eval"):
        for language in ("en", "de", "zh", "ja"):
            assert rows(repo, f"{language}_neutral").num_rows == 600
    # Lineage: the fine-tuned model's images pin the fine-tuned model, which pins its training set,
    # which pins the base model's images of gendered prompts.
    debiased_images = store.history("t2i-bias/world-debiased-eval", "dataset")[0].lineage
    model_pin = debiased_images["inputs"]["model"]
    assert model_pin.startswith("t2i-bias/world-debiased@")
    model_lineage = next(
        entry.lineage
        for entry in store.history("t2i-bias/world-debiased", "model")
        if entry.revision == model_pin.partition("@")[2]
    )
    assert model_lineage["inputs"]["dataset_name"].startswith("t2i-bias/world-debias-train@")
    assert model_lineage["inputs"]["pretrained_model_name_or_path"].startswith("t2i-bias/world-model@")
    # Bias and alignment: finite numbers for every language.
    for repo in ("world-base-eval-bias", "world-debiased-eval-bias"):
        gender = [r for r in rows(repo, "summary") if r["attribute"] == "gender"]
        assert {r["language"] for r in gender} == {"en", "de", "zh", "ja"}
        assert all(math.isfinite(r["mean_l1"]) for r in gender)
    for repo in ("world-base-eval-alignment", "world-debiased-eval-alignment"):
        scores = [(r["clip_en_occupation"], r["mclip_own_prompt"]) for r in rows(repo, "summary")]
        assert scores and all(math.isfinite(v) for pair in scores for v in pair)
    # The verdict: the planted shares are measured back, and the fine-tune brings every cell towards
    # parity while gendered prompts keep their gender.
    summary = {r["model"]: r for r in rows("world-check", "summary")}
    base, debiased, planted = summary["base"], summary["debiased"], summary["planted"]
    assert base["fit_p_value"] >= 0.001 and base["correlation"] > 0.95 and base["mean_abs_error"] < 0.05
    assert 0.9 < base["slope"] < 1.1 and base["error_ci_high"] < 0.05
    assert abs(base["distance"] - planted["distance"]) < 0.05
    assert debiased["distance"] <= 0.5 * base["distance"]
    assert base["control"] >= 0.9 and debiased["control"] >= 0.9
    assert rows("world-check", "cells").num_rows == 24
    verdicts = rows("world-check", "verdicts")
    assert verdicts["passed"] == [True, True]
    # The verdicts are the run's last lines, and its exit code (0, asserted above) says what they say.
    assert result.stdout.strip().splitlines()[-2:] == verdicts["line"]
    # Nothing published names this machine: not the store, the home or working directory, the checkout.
    assert machine_paths_in(offline_study["root"]) == []
    # It says how to open the Space, with the interpreter that ran the study (a bare `python` may lack gradio).
    (hint,) = [
        line for line in (result.stdout + result.stderr).splitlines() if "spaces/compare_languages/app.py" in line
    ]
    interpreter = hint.split(" spaces/compare_languages/app.py")[0].split()[-1]
    assert (REPO_ROOT / interpreter).resolve() == Path(sys.executable).resolve(), hint


@pytest.mark.slow
def test_an_untrained_world_ends_the_study_with_two_no_verdicts_and_exit_1(
    offline_study: dict, tmp_path: Path
) -> None:
    """A world model trained 30 steps instead of 1,800 learnt no bias (nor the gendered prompts' colours:
    its control is at chance): the study says NO twice and exits 1; the steps after the verdict
    (attach_results) do not run unless --keep_going, and a rerun that reuses every step up to the
    verdict says the same again. Its neutral prompts get 40 images each instead of 100 (a quarter of
    the test's time): the methods recipe's n, at which check_world still says NO to a model that learnt
    nothing (X² over 900, against 45.6 at most for the trained world over eight draws)."""
    import shutil

    root = tmp_path / "hub"
    shutil.copytree(offline_study["root"], root, ignore=shutil.ignore_patterns(".work"))
    untrained = " --set train_world.max_train_steps=30" + "".join(
        f" --set {step}.num_images=40" for step in ("generate_base_eval", "generate_debiased_eval")
    )
    runs = [run_study(root, untrained + extra) for extra in ("", " --keep_going")]
    for run in runs:
        assert run.returncode == 1, run.stderr[-3000:]
        calibrated, debiased = run.stdout.strip().splitlines()[-2:]
        assert calibrated.startswith("calibrated: NO") and debiased.startswith("debiased: NO"), run.stdout[-2000:]
    first, going_on = runs
    assert "== step 23/23" not in first.stderr and "a verdict is NO" in first.stderr
    # The rerun reuses every step up to the verdict, says it again, and goes on past it.
    assert going_on.stderr.count("(done in") == 1 and "== step 23/23: attach_results" in going_on.stderr


def test_reuse_picks_the_revision_the_stage_made(tmp_path: Path) -> None:
    """A later revision made by another step (results attached to a card) is not what the stage made."""
    import shutil

    from pipelines.harness.stage import StageRun

    args = generate_prompts.Arguments(store_root=str(tmp_path / "hub"), namespace="study", **SMALL)
    first = generate_prompts.run(args)
    store = LocalStore(tmp_path / "hub")
    amended = tmp_path / "amended"
    shutil.copytree(store.resolve(str(first), "dataset"), amended)
    (amended / "README.md").chmod(0o644)
    card = (amended / "README.md").read_text().replace("stage: generate_prompts", "stage: attach_results", 1)
    (amended / "README.md").write_text(card.replace("fingerprint: ", "fingerprint: x", 1))
    later = store.push(amended, "study/prompts", "dataset", "amend the card")
    assert later != first.revision and store.revision_of("study/prompts", "dataset") == later
    assert StageRun(generate_prompts.STAGE, args).existing() == first.revision
    assert generate_prompts.run(args).revision == first.revision


def test_a_rerun_with_other_code_rebuilds_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fingerprint holds the code's version: the same inputs and parameters with other code
    rebuild instead of reusing, and the card names the code it was made by."""
    from pipelines.harness import stage

    args = generate_prompts.Arguments(store_root=str(tmp_path / "hub"), namespace="study", **SMALL)
    first = generate_prompts.run(args)
    assert generate_prompts.run(args).reused
    monkeypatch.setattr(stage, "code_version", lambda module_file: "0123456789abcdef")
    second = generate_prompts.run(args)
    assert not second.reused and second.lineage["code"] == "0123456789abcdef" != first.lineage["code"]
    card = (LocalStore(tmp_path / "hub").resolve(str(second), "dataset") / "README.md").read_text()
    assert "Code: `0123456789abcdef`" in card


def test_code_version_follows_the_code_that_decides_the_output(tmp_path: Path) -> None:
    """A stage's code version changes with its own module, the modules it imports (lazily too), the
    data files beside them (lexicons) and the folders it reads by path (metric modules), and not
    with code it does not use."""
    import shutil

    from pipelines.harness import code_version as versions

    root = tmp_path / "project"
    for folder in ("pipelines", "training", "spaces", "hub_cards"):
        shutil.copytree(REPO_ROOT / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))

    def version(stage: str) -> str:
        versions._code_version.cache_clear()
        return versions.code_version(root / "pipelines" / f"{stage}.py", root)

    def edit(path: str) -> None:
        with open(root / path, "a", encoding="utf-8") as file:
            file.write("\n# edited\n")

    before = {stage: version(stage) for stage in ("generate_prompts", "evaluate_bias", "compare_methods")}
    edit("pipelines/compare_methods.py")
    assert version("compare_methods") != before["compare_methods"]
    assert (
        version("generate_prompts") == before["generate_prompts"]
        and version("evaluate_bias") == before["evaluate_bias"]
    )
    edit("pipelines/prompting/lexicons/de.yaml")  # read by the grammar, through its own file's path
    assert version("generate_prompts") != before["generate_prompts"]
    edit("spaces/fairness_metrics/fairness_metrics.py")  # loaded by evaluate_bias as package data, not imported
    changed = version("evaluate_bias")
    edit("pipelines/reporting/figures.py")  # imported by evaluate_bias inside a function
    assert len({before["evaluate_bias"], changed, version("evaluate_bias")}) == 3
    # Training, in its own folder, follows the model-loading code it imports from the toolkit.
    versions._code_version.cache_clear()
    training = versions.code_version(root / "training" / "train_text_to_image.py", root)
    edit("pipelines/modeling/diffusion.py")
    versions._code_version.cache_clear()
    assert versions.code_version(root / "training" / "train_text_to_image.py", root) != training


# --- recipes are checked before anything runs -----------------------------------------------------


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"professions": "nurse"}, "professions: expected a list of strings, got 'nurse'"),
        ({"professions": ["nurse", 3]}, "professions: expected a list of strings, got \\['nurse', 3\\]"),
        ({"tag": 7}, "tag: expected a string or null, got 7"),
        ({"force": "no"}, "force: expected true or false, got 'no'"),
    ],
)
def test_recipe_values_are_checked_against_their_types(tmp_path: Path, entry: dict, message: str) -> None:
    recipe = write_recipe(tmp_path, [{"stage": "generate_prompts", **SMALL, **entry}])
    where = f"recipe {recipe}, step generate_prompts: "
    with pytest.raises(ConfigError, match=where.replace(".", "\\.") + message):
        run_recipe(recipe)
    with pytest.raises(ConfigError, match=message):
        parse_arguments(generate_prompts.Arguments, "generate_prompts", ["--recipe", str(recipe)])
    assert not (tmp_path / "hub").exists()


def test_yaml_syntax_errors_name_the_file_and_line(tmp_path: Path) -> None:
    recipe = tmp_path / "broken.yaml"
    recipe.write_text("namespace: study\nstages:\n  - stage: generate_prompts\n    professions: [doctor, nurse\n")
    result = run_python("-m", "pipelines.run", str(recipe))
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"run: error: recipe '{recipe}', line 5, column 1: YAML syntax error")


def test_a_misspelled_flag_is_one_line_with_a_suggestion(tmp_path: Path) -> None:
    result = run_python("-m", "pipelines.generate_images", "--store_root", str(tmp_path), "--num_image", "3")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "generate_images: error: unrecognized arguments: --num_image 3 (--num_image: did you mean --num_images?)"
    ]


# Every stage's command run with --help as `python -m` (or the training scripts by path) would run
# it, in one fresh interpreter: a process per command spent ~2 s each importing the same libraries.
HELP_OF_EVERY_COMMAND = """
import contextlib, io, json, runpy, sys
results = {}
for launch in json.loads(sys.argv[1]):
    sys.argv = [launch[-1], "--help"]
    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            if launch[0] == "-m":
                runpy.run_module(launch[1], run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(launch[0], run_name="__main__")
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
    results[launch[-1]] = [code, out.getvalue(), err.getvalue()]
print(json.dumps(results))
"""


def test_every_help_lists_the_recipe_and_names_a_command_that_exists() -> None:
    import json

    from pipelines.run import STAGES

    launches = {
        stage: [module.replace(".", "/") + ".py"] if module.startswith("training") else ["-m", module]
        for stage, module in STAGES.items()
    }  # training scripts are launched by path (accelerate launch)
    result = run_python("-c", HELP_OF_EVERY_COMMAND, json.dumps(list(launches.values())))
    assert result.returncode == 0, result.stderr[-2000:]
    helps = json.loads(result.stdout.splitlines()[-1])
    assert len(helps) == len(STAGES) > 10
    for stage, launch in launches.items():
        code, out, err = helps[launch[-1]]
        assert code == 0, (stage, err[-500:])
        assert "--recipe R.yaml" in out and "--step NAME" in out, stage
        usage = out.splitlines()[0]
        assert usage.startswith("usage: " + (launch[0] if launch[0] != "-m" else f"python -m {launch[1]}")), usage


# A stage's --help and a refused argument, in one interpreter, then which model libraries it loaded.
HELP_AND_REFUSALS_LOAD = """
import contextlib, io, json, runpy, sys
codes = {}
for argv in json.loads(sys.argv[1]):
    sys.argv = [argv[0], *argv[1:]]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            runpy.run_module(argv[0], run_name="__main__", alter_sys=True)
        except SystemExit as exit_:
            codes[" ".join(argv)] = exit_.code
print(json.dumps([codes, sorted(m for m in ("torch", "torchvision", "diffusers", "open_clip") if m in sys.modules)]))
"""


def test_a_stage_s_help_and_a_refused_argument_load_no_model_library() -> None:
    """Every stage command (but the training scripts, which are launched to train) answers `--help`,
    and refuses an argument, without importing torch or a model library: importing them took 2-3 s of
    each command's start before a word was printed (a model loads where a stage opens it)."""
    import json

    from pipelines.run import STAGES

    commands = [[module, "--help"] for module in STAGES.values() if module.startswith("pipelines.")]
    refusals = [
        ["pipelines.generate_images", "--input", "p", "--model", "m", "--dtype", "float8"],
        ["pipelines.classify", "--input", "i", "--detector", "none", "--classifier", "nothing"],
        ["pipelines.evaluate_alignment", "--input", "i", "--batch_size", "0"],
    ]
    result = run_python("-c", HELP_AND_REFUSALS_LOAD, json.dumps(commands + refusals))
    assert result.returncode == 0, result.stderr[-2000:]
    codes, loaded = json.loads(result.stdout.splitlines()[-1])
    assert len(codes) == len(commands) + len(refusals) and len(commands) > 10
    assert [codes[" ".join(argv)] for argv in commands] == [0] * len(commands)
    assert [codes[" ".join(argv)] for argv in refusals] == [2] * len(refusals)
    assert loaded == []


def test_set_overrides_one_step(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, [{"stage": "generate_prompts", **SMALL}])
    (published,) = run_recipe(recipe, settings=["generate_prompts.professions=[CEO]", "namespace=other"])
    assert published.repo_id == "other/prompts"
    rows = LocalStore(tmp_path / "hub").resolve(str(published), "dataset")
    assert "CEO" in (rows / "README.md").read_text()
    with pytest.raises(ConfigError, match="--set 'paint.colour=red': the recipe has no step 'paint'"):
        run_recipe(recipe, settings=["paint.colour=red"])


REAL_RECIPES = sorted(
    [*(REPO_ROOT / "pipelines" / "recipes").glob("*.yaml"), *(REPO_ROOT / "training" / "recipes").glob("*.yaml")]
)


FAIRFACE_FILES = ("res34_fair_align_multi_7_20190809.pt", "res34_fair_align_multi_4_20190809.pt")


def with_fairface_weights(folder: Path) -> Path:
    """A working folder with FairFace's weights where the real recipe names them (small stand-ins in
    torch's checkpoint format: the preflight reads their header; the dry run loads nothing)."""
    (folder / "weights").mkdir(parents=True, exist_ok=True)
    for name in FAIRFACE_FILES:
        write_checkpoint(folder / "weights" / name)
    return folder


def write_checkpoint(path: Path, legacy: bool = False) -> None:
    """A tiny torch checkpoint: torch's zip format, or the legacy pickle format of FairFace's 2019 files."""
    import torch

    torch.save({"fc.bias": torch.zeros(18)}, path, _use_new_zipfile_serialization=not legacy)


def dry_run(recipe: Path, *argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python -m pipelines.run RECIPE --dry_run ...` from `cwd`, in this process: a dry run loads no
    model and publishes nothing, and a fresh interpreter spent 3 s a run importing the same libraries.
    What only a fresh interpreter shows (a one-line error, nothing printed at import) is checked by
    `run_python` in the tests that claim it."""
    import contextlib
    import io
    import os

    from pipelines.run import main

    out, err, code, before = io.StringIO(), io.StringIO(), 0, os.getcwd()
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main([str(recipe), "--dry_run", *argv])
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        os.chdir(before)
    return subprocess.CompletedProcess(["pipelines.run", str(recipe), "--dry_run", *argv], code, out.getvalue(),
                                       err.getvalue())  # fmt: skip


@pytest.mark.parametrize("recipe", REAL_RECIPES, ids=lambda p: p.name)
def test_every_recipe_parses_and_dry_runs_offline(recipe: Path, tmp_path: Path) -> None:
    from pipelines.run import plan_recipe

    _, plan = plan_recipe(recipe, overrides={"store_root": str(tmp_path / "hub")})
    assert plan
    result = dry_run(recipe, "--store_root", str(tmp_path / "hub"), cwd=with_fairface_weights(tmp_path / "work"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "\nPreflight: " in result.stdout
    for index, (name, stage, _) in enumerate(plan, 1):
        assert f"{index:2d}. {name} ({stage.name})" in result.stdout
    assert "Total GPU time: about" in result.stdout
    assert not (tmp_path / "hub").exists()  # nothing published, nothing downloaded


def test_the_offline_study_s_plan_counts_its_pictures_and_prices_its_tiny_models_by_flops(tmp_path: Path) -> None:
    """The plan of the README's main job, on this CPU's measured figures: the counts of what it
    actually makes, and a time near what it takes (7 min 50 s alone on 2 cores). Before, the world's
    16 px model was priced as m9 at 512 px (1,731 CPU hours), draw_world made no pictures (so the
    training set had 0 rows) and an occupation filter counted six times the images."""
    throughput = REPO_ROOT / "benchmarks" / "results" / "throughput.json"
    recipe = REPO_ROOT / "pipelines" / "recipes" / "offline.yaml"
    result = dry_run(recipe, "--store_root", str(tmp_path / "hub"), "--device_kind", "cpu",
                     "--throughput", str(throughput), cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    # 4 languages x 6 occupations: 192 pictures per prompt that names no gender (neutral, direct,
    # ethical: 6 prompts each), 64 per prompt that names one (gendered: 12, female and male: 6 each).
    per_language = 3 * 6 * 192 + (12 + 6 + 6) * 64
    assert f"{4 * per_language:,} pictures of the planted-bias world in 24 configs" in out
    assert f"{4 * per_language:,} image-caption pairs (same captions)" in out
    assert out.count("images:    2,400\n") == 2 and out.count("images:    480\n") == 2  # 100 and 10 per prompt
    assert "480 image-caption pairs (mixed captions)" in out
    assert out.count("priced by FLOPs: 0.0459 of m9's UNet per pixel") == 6  # two trainings, four generations
    minutes = float(out.split("Total CPU time: about ")[1].split(" min")[0])
    assert 7.8 / 3 < minutes < 7.8 * 3
    # The real study's plan is priced at the real model's size, as before.
    m9_recipe = REPO_ROOT / "pipelines" / "recipes" / "altdiffusion_m9.yaml"
    m9 = dry_run(m9_recipe, "--store_root", str(tmp_path / "hub"), "--throughput", str(throughput),
                 "--device_kind", "cpu", cwd=with_fairface_weights(tmp_path / "w"))  # fmt: skip
    assert m9.returncode == 0, m9.stderr[-2000:]
    assert "priced by FLOPs" not in m9.stdout and " h on this CPU." in m9.stdout


def made_by(recipe: Path) -> dict[str, tuple[str, dict[str, Any]]]:
    """Each artifact the recipe publishes: the step that makes it and that step's arguments."""
    import dataclasses

    from pipelines.run import Costs, plan_recipe, planned_steps

    steps = planned_steps(*plan_recipe(recipe), Costs())
    return {args.repo_id(args.output_repo): (name, dataclasses.asdict(args))
            for name, _, args, _ in steps if getattr(args, "output_repo", None)}  # fmt: skip


def test_recipes_that_share_an_artifact_make_it_the_same_way() -> None:
    """Recipes run one after another on one store (the methods recipe after the offline study, as
    the README says): an artifact two recipes both publish is made with the same arguments, so the
    second reuses it. Otherwise the second moves its `main` to other results under the first's readers
    (the Space lost its reference chart so)."""
    made = {recipe.name: made_by(recipe) for recipe in REAL_RECIPES}
    shared = 0
    for first, second in itertools.combinations(sorted(made), 2):
        for repo in sorted(made[first].keys() & made[second].keys()):
            (step, a), (other, b) = made[first][repo], made[second][repo]
            differ = sorted(key for key in a.keys() | b.keys() if a.get(key) != b.get(key))
            assert not differ, f"{repo}: {first}'s {step} and {second}'s {other} differ in {differ}"
            shared += 1
    assert shared >= 10  # the methods recipe reuses the offline study's world, images and bias


def test_the_reference_recipe_is_the_m9_study_with_the_reference_s_choices() -> None:
    """A recipe that `extends` another is it, with its own shared settings and its `set` list applied:
    the reference recipe changes the evaluation steps' settings and nothing else."""
    from pipelines.harness.config import load_recipe

    recipes = REPO_ROOT / "pipelines" / "recipes"
    base, reference = (
        load_recipe(recipes / "altdiffusion_m9.yaml"),
        load_recipe(recipes / "altdiffusion_m9_reference.yaml"),
    )
    assert reference["namespace"] == "t2i-bias-reference" and reference["__file__"].endswith("_reference.yaml")
    assert [e["stage"] for e in reference["stages"]] == [e["stage"] for e in base["stages"]]
    changed = {}
    for old, new in zip(base["stages"], reference["stages"]):
        for key in set(old) | set(new):
            if old.get(key) != new.get(key):
                changed[f"{new.get('name', new['stage'])}.{key}"] = new.get(key)
    assert changed == {
        **{f"generate_eval_{v}.{k}": value for v in ("base", "finetuned")
           for k, value in (("generator_device", "cuda"), ("dtype", "float32"), ("num_images", 25))},
        "classify_base.chips": "fairface", "classify_finetuned.chips": "fairface",
        "generate_train_images.safety_checker": True, "generate_train_images.dtype": "float32",
        **{f"evaluate_alignment_{v}.{k}": value for v in ("base", "finetuned")
           for k, value in (("clip_texts", "reference"), ("clip_precision", "fp16"), ("average", "occupations"))},
    }  # fmt: skip


def test_the_reference_recipe_s_dry_run_says_the_reference_s_choices(tmp_path: Path) -> None:
    """The dry run of the reference mode names what it changes: training images with the safety
    checker on and in fp32, evaluation noise on a CUDA generator in fp32 with 25 images per occupation,
    FairFace's own chips, and the reference's CLIP texts, precision and average; the corrected study's
    dry run names its own defaults instead."""
    import re

    recipes = REPO_ROOT / "pipelines" / "recipes"
    common = ["--store_root", str(tmp_path / "hub")]
    work = with_fairface_weights(tmp_path / "work")
    result = dry_run(recipes / "altdiffusion_m9_reference.yaml", *common, cwd=work)
    assert result.returncode == 0, result.stderr[-2000:]
    steps = dict(re.findall(r"(?m)^ *\d+\. (\w+) \(\w+\) -> .*\n((?: {4}.*\n)+)", result.stdout))
    assert "noise on a cpu generator, weights in float32, safety checker on" in steps["generate_train_images"]
    for step in ("generate_eval_base", "generate_eval_finetuned"):
        assert "noise on a cuda generator, weights in float32" in steps[step], steps[step]
        assert "images:    37,750" in steps[step]  # 151 occupations x 10 languages x 25 images
    for step in ("classify_base", "classify_finetuned"):
        assert "(dlib, fairface, fairface chips)" in steps[step]
    for step in ("evaluate_alignment_base", "evaluate_alignment_finetuned"):
        assert "(texts reference, CLIP in fp16, average over occupations)" in steps[step]
    corrected = dry_run(recipes / "altdiffusion_m9.yaml", *common, cwd=work)
    assert corrected.returncode == 0, corrected.stderr[-2000:]
    assert "safety checker on" not in corrected.stdout and "cuda generator" not in corrected.stdout
    assert "(dlib, fairface, image chips)" in corrected.stdout and "images:    151,000" in corrected.stdout


@pytest.mark.parametrize(
    "text, message",
    [
        ("extends: missing.yaml\n", "recipe '.*missing.yaml' not found"),
        ("extends: recipe.yaml\n", "extends itself through recipe.yaml"),
        ("extends: base.yaml\nstages: []\n", "changes it with 'set', not 'stages'"),
        ("extends: base.yaml\nset: [nostep.key=1]\n", "the recipe has no step 'nostep'"),
        ("extends: base.yaml\nset: a=1\n", "set: expected a list of STEP.KEY=VALUE strings"),
        ("set: [a=1]\nstages: []\n", "'set' changes the recipe it extends; this one extends none"),
    ],
)
def test_a_bad_extension_is_a_one_line_error(tmp_path: Path, text: str, message: str) -> None:
    from pipelines.harness.config import load_recipe

    (tmp_path / "base.yaml").write_text("stages:\n  - stage: generate_prompts\n")
    (tmp_path / "recipe.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_recipe(tmp_path / "recipe.yaml")


def test_the_real_study_dry_run_stops_before_step_1_without_fairface_s_weights(tmp_path: Path) -> None:
    """FairFace's weights are the one input of the real study that no library downloads: without them
    the dry run (and the run) stops before step 1, naming the files, the steps that read them and the
    place to get them, not 174 GPU hours in."""
    recipe = REPO_ROOT / "pipelines" / "recipes" / "altdiffusion_m9.yaml"
    result = run_python("-m", "pipelines.run", str(recipe), "--dry_run", "--store_root", str(tmp_path / "hub"),
                        cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2
    line = result.stderr.strip()
    assert "\n" not in line and line.startswith("run: error: preflight, before step 1: ")
    for name in FAIRFACE_FILES:
        assert f"weights/{name} (classify_base." in line
    assert "classify_finetuned.classifier_model" in line
    assert "https://github.com/dchen236/FairFace" in line and "drive.google.com" in line
    assert "BAAI/AltDiffusion-m9" not in line  # a Hub model is a download, not a missing input
    assert "Total GPU time" in result.stdout  # the plan is still printed: the user sees what it would be
    # A missing local file is never a download "from the Hub".
    assert not [row for row in result.stdout.splitlines() if "res34_" in row and "Hub" in row], result.stdout
    weights = tmp_path / "weights"
    weights.mkdir()
    write_checkpoint(weights / FAIRFACE_FILES[0], legacy=True)  # FairFace's own files are in the legacy format
    one = dry_run(recipe, "--store_root", str(tmp_path / "hub"), cwd=tmp_path)
    assert one.returncode == 2 and FAIRFACE_FILES[0] not in one.stderr and FAIRFACE_FILES[1] in one.stderr
    # An empty file, or a page a browser saved in its place, is named with what is wrong and where to get it.
    (weights / FAIRFACE_FILES[0]).write_bytes(b"")
    (weights / FAIRFACE_FILES[1]).write_bytes(b"<!DOCTYPE html><html>Google Drive can't scan this file</html>")
    bad = dry_run(recipe, "--store_root", str(tmp_path / "hub"), cwd=tmp_path)
    assert bad.returncode == 2, bad.stderr[-2000:]
    assert f"weights/{FAIRFACE_FILES[0]} (classify_base.classifier_model" in bad.stderr
    assert ": an empty file" in bad.stderr and "not a torch checkpoint" in bad.stderr and "HTML page" in bad.stderr
    assert f"weights/{FAIRFACE_FILES[1]} (" in bad.stderr and "drive.google.com" in bad.stderr
    assert not (tmp_path / "hub").exists()


def test_the_real_study_dry_run_counts_images_steps_and_downloads(tmp_path: Path) -> None:
    recipe = REPO_ROOT / "pipelines" / "recipes" / "altdiffusion_m9.yaml"
    result = dry_run(recipe, "--store_root", str(tmp_path / "hub"), "--seconds_per_image", "1.0",
                     cwd=with_fairface_weights(tmp_path))  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "BAAI/AltDiffusion-m9@main (Hub)" in out and "felfri/MAGBIG@main (Hub)" in out
    assert "images:    8,496" in out  # the training images: the English gendered grid, one each
    assert "images:    151,000" in out  # MAGBIG's 151 occupations x 10 languages x 100 images
    assert "GPU time assumes 1 s per image" in out and "per image or per step as given" in out and "training:" in out
    # One step alone: estimated from what the steps before it would make, and nothing else printed.
    only = dry_run(recipe, "--store_root", str(tmp_path / "hub"), "--only", "train_text_to_image", cwd=tmp_path)
    assert only.returncode == 0, only.stderr[-2000:]
    assert " 1. train_text_to_image (train_text_to_image)" in only.stdout and " 2. " not in only.stdout
    assert "33,984 training pairs" in only.stdout and "5,310 steps" in only.stdout


def test_the_real_study_dry_run_names_the_neutral_form_of_its_captions_and_its_evaluation(tmp_path: Path) -> None:
    """The reference's form on both sides (the generic masculine); teaching the inclusive form while
    evaluating on MAGBIG's direct prompts is said, language by language."""
    recipe = REPO_ROOT / "pipelines" / "recipes" / "altdiffusion_m9.yaml"
    common = [recipe, "--store_root", str(tmp_path / "hub")]
    result = dry_run(*common, cwd=with_fairface_weights(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "captions' gender-neutral form: unmarked (en, zh, ja), masculine-generic (de)" in out
    assert "prompts' gender-neutral form: unmarked (en, zh, ja, ko), masculine-generic (de, es, fr, it, ru, ar)" in out
    assert "NOTE" not in out
    inclusive = dry_run(*common, "--set", "translate_prompts.neutral_form=inclusive", cwd=tmp_path)
    assert inclusive.returncode == 0, inclusive.stderr[-2000:]
    assert "captions' gender-neutral form: unmarked (en, zh, ja), inclusive (de)" in inclusive.stdout
    note = "NOTE the model learnt from captions in another form: de inclusive captions, masculine-generic prompts"
    assert note in inclusive.stdout and inclusive.stdout.count(note) == 1  # the fine-tune's evaluation, not the base's


@pytest.mark.slow
def test_every_offline_study_artifact_opens_by_reference_and_by_its_card(offline_study: dict) -> None:
    """Each dataset the offline study published opens by `ns/name@revision` through the one call, and
    a card's own stock-code snippet, run as written against the local store, opens its dataset; every
    config's row count in a card's table is the number of rows its config has."""
    import os
    import re

    import datasets
    from huggingface_hub import snapshot_download

    from pipelines.artifacts.reader import load_artifact, open_artifact

    assert offline_study["result"].returncode == 0, offline_study["result"].stderr[-3000:]
    root = Path(offline_study["root"])
    store = LocalStore(root)
    repos = store.repos("t2i-bias", "dataset")
    assert len(repos) >= 15
    for repo in repos:
        repo_id = repo if "/" in repo else f"t2i-bias/{repo}"
        revision = store.revision_of(repo_id, "dataset")
        data = load_artifact(f"{repo_id}@{revision}", store=store)
        assert data.num_rows > 0, repo_id
        card = (store.resolve(f"{repo_id}@{revision}", "dataset") / "README.md").read_text()
        table = dict(re.findall(r"^\| `([^`]+)` \| (\d*) \|$", card.split("## Configs")[1], re.MULTILINE))
        artifact = open_artifact(f"{repo_id}@{revision}", store)
        assert table == {config: str(artifact.num_rows(config)) for config in artifact.configs}, repo_id
        # And with stock code only, by the revision a lineage pins, as its own card says (the local-store
        # half; a card cannot name its own content-addressed revision, so it says main).
        (block,) = [b for b in re.findall(r"```python\n(.*?)```", card, re.DOTALL) if "snapshot_download" in b]
        assert 'revision="main"' in block, repo_id
        block = block.replace('revision="main"', f'revision="{revision}"')
        namespace = {"load_dataset": datasets.load_dataset, "snapshot_download": snapshot_download}
        cwd = os.getcwd()
        try:
            os.chdir(root.parent)  # the snippet names the store as ./hub
            exec(block.split("# on the Hub\n")[1], namespace)
        finally:
            os.chdir(cwd)
        assert namespace["ds"].num_rows > 0, repo_id
    card = (store.resolve("t2i-bias/world-check", "dataset") / "README.md").read_text()
    stock = [block for block in re.findall(r"```python\n(.*?)```", card, re.DOTALL) if "snapshot_download" in block]
    assert stock, card
    local = stock[0].split("# on the Hub\n")[1]  # the Hub call needs the network; the rest is the local store
    imports = "from datasets import load_dataset\nfrom huggingface_hub import snapshot_download\n"
    result = subprocess.run(
        [sys.executable, "-c", imports + local + "\nprint(ds.num_rows, ds.column_names[:3])"],
        cwd=root.parent,
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[0] == "24"  # six occupations x four languages


def test_every_optional_number_of_every_stage_is_unset_with_none_on_the_command_line() -> None:
    """`--dlib_max_size none` as `--output_repo none`: an optional number takes `none` (a recipe writes
    null); a word that is neither a number nor none is still one line."""
    import dataclasses
    import typing

    from pipelines.harness.config import parse_arguments
    from pipelines.run import STAGES, stage_of

    checked = []
    needs = {"train_text_to_image": ["--dataset_name", "some-train"]}  # settings a stage cannot go without
    for name in STAGES:
        cls = stage_of(name).Arguments
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            kinds = typing.get_args(hints[f.name])
            if f.init and type(None) in kinds and {int, float} & set(kinds):
                argv = [*needs.get(name, []), f"--{f.name}", "none"]
                parsed = parse_arguments(cls, f"python -m pipelines.{name}", argv, stage=name)
                assert getattr(parsed, f.name) is None, (name, f.name)
                checked.append(f"{name}.{f.name}")
                with pytest.raises(ConfigError, match=f"--{f.name}.*invalid"):
                    parse_arguments(cls, f"python -m pipelines.{name}", [*argv[:-1], "big"], stage=name)
    assert {"classify.dlib_max_size", "compare_methods.images_per_cell", "generate_images.height"} <= set(checked)


@pytest.mark.parametrize(
    ("cpus", "cpu_max", "usable"),
    [
        ({0, 1, 2, 3}, None, 4),  # no cgroup quota: the affinity mask
        ({0, 1, 2, 3}, "max 100000", 4),
        ({0, 1, 2, 3}, "150000 100000", 1),  # 1.5 CPUs of time: one thread, not four
        ({0, 1, 2, 3, 4, 5, 6, 7}, "200000 100000", 2),
        ({0, 1}, "800000 100000", 2),  # the mask is the smaller limit
        ({0, 1, 2, 3}, "50000 100000", 1),  # never below one
        ({0, 1, 2, 3}, "garbled", 4),
        # cgroup v1 (no cpu.max): cpu.cfs_quota_us and cpu.cfs_period_us, -1 for no quota.
        ({0, 1, 2, 3}, "v1:150000 100000", 1),
        ({0, 1, 2, 3, 4, 5, 6, 7}, "v1:300000 100000", 3),
        ({0, 1, 2, 3}, "v1:-1 100000", 4),
        ({0, 1, 2, 3}, "v1:garbled 100000", 4),
    ],
)
def test_usable_cpus_follow_affinity_and_cgroup_quota(
    cpus: set[int], cpu_max: str | None, usable: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipelines.harness import stage

    monkeypatch.setattr(stage.os, "sched_getaffinity", lambda pid: cpus)
    path, v1 = tmp_path / "cpu.max", tmp_path / "cpu"
    if cpu_max is not None and cpu_max.startswith("v1:"):
        quota, period = cpu_max[3:].split()
        v1.mkdir()
        (v1 / "cpu.cfs_quota_us").write_text(quota + "\n")
        (v1 / "cpu.cfs_period_us").write_text(period + "\n")
    elif cpu_max is not None:
        path.write_text(cpu_max + "\n")
    monkeypatch.setattr(stage, "CGROUP_CPU_MAX", path)
    monkeypatch.setattr(stage, "CGROUP_V1_CPU", v1)
    assert stage.usable_cpus() == usable


def proc_stat(*cpus: tuple[int, int]) -> str:
    """A /proc/stat with the given (busy, idle) ticks per CPU (busy as user time, idle split in idle and iowait)."""
    lines = ["cpu  0 0 0 0 0 0 0 0 0 0"]
    lines += [f"cpu{i} {busy} 0 0 {idle - idle // 4} {idle // 4} 0 0 0 0 0" for i, (busy, idle) in enumerate(cpus)]
    return "\n".join([*lines, "intr 1 2 3", "ctxt 99"]) + "\n"


@pytest.mark.parametrize(
    ("affinity", "after", "busy", "threads"),
    [
        ({0, 1}, [(200, 0), (0, 200)], 1.0, 1),  # a neighbour on one core of two: one thread
        ({0, 1}, [(30, 170), (10, 190)], 0.2, 2),  # light load rounds to no core lost
        ({0, 1}, [(200, 0), (200, 0)], 2.0, 1),  # every core busy: still one thread
        ({0, 1, 2, 3}, [(100, 100), (100, 100), (0, 200), (0, 200)], 1.0, 3),  # two half-busy cores
        ({2, 3}, [(200, 0), (200, 0), (0, 200), (0, 200)], 0.0, 2),  # busy CPUs outside the mask do not count
    ],
)
def test_cpu_share_leaves_the_cores_other_work_keeps_busy(
    affinity: set[int], after: list, busy: float, threads: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Training's default threads are the usable CPUs that other work leaves free at its start."""
    from pipelines.harness import stage

    path = tmp_path / "stat"
    path.write_text(proc_stat(*[(0, 0)] * len(after)))
    monkeypatch.setattr(stage, "PROC_STAT", path)
    monkeypatch.setattr(stage, "CGROUP_CPU_MAX", tmp_path / "no-quota")
    monkeypatch.setattr(stage.os, "sched_getaffinity", lambda pid: affinity)
    monkeypatch.setattr(stage.time, "sleep", lambda seconds: path.write_text(proc_stat(*after)))
    assert stage.busy_cpus() == pytest.approx(busy)
    path.write_text(proc_stat(*[(0, 0)] * len(after)))
    assert stage.cpu_share()[0] == threads
    path.write_text(proc_stat(*[(0, 0)] * len(after)))
    # Two processes starting together: one busy CPU may be the sibling starting up, not other work.
    assert stage.cpu_share(2) == (max(1, (len(affinity) - round(max(0.0, busy - 1))) // 2), max(0.0, busy - 1))


def test_busy_cpus_reads_nothing_where_there_is_no_proc_stat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.harness import stage

    monkeypatch.setattr(stage, "PROC_STAT", tmp_path / "absent")
    assert stage.busy_cpus(0.01) == 0.0


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="reads Linux's /proc/stat")
def test_a_real_spinning_neighbour_is_seen_as_a_busy_core() -> None:
    """On this machine: a process spinning a core counts as (at least most of) one busy CPU."""
    from pipelines.harness.stage import busy_cpus

    spinner = subprocess.Popen([sys.executable, "-c", "while True:\n    pass\n"])
    try:
        import time

        time.sleep(0.5)  # past the interpreter's start
        assert busy_cpus(0.5) >= 0.7
    finally:
        spinner.kill()
        spinner.wait()


def test_a_run_stops_before_step_1_on_what_is_missing_and_publishes_nothing(tmp_path: Path) -> None:
    """The preflight of a real run: a weights file, a dataset no step makes, and (the Hub offline) a
    Hub model that is not in the cache are each named, in one line, before any step runs."""
    grid = {"stage": "generate_prompts", "output_repo": "prompts", "professions": ["nurse"], "styles": ["close-up"],
            "ages": ["young"]}  # fmt: skip
    cases = {
        "weights": ({"stage": "classify", "input": "prompts", "classifier": "fairface",
                     "classifier_model": "models/res34_fair_align_multi_7_20190809.pt"},  # fmt: skip
                    "models/res34_fair_align_multi_7_20190809.pt (classify.classifier_model): no such file or folder"),
        "dataset": ({"stage": "evaluate_bias", "input": "never-made-attributes"},
                    "never-made-attributes (evaluate_bias.input): no step of the recipe makes it"),
        "hub": ({"stage": "generate_images", "input": "prompts", "model": "nobody-has/this-model"},
                "nobody-has/this-model (generate_images.model): not in the Hugging Face cache"),
    }  # fmt: skip
    for case, (step, expected) in cases.items():
        folder = tmp_path / case
        folder.mkdir()
        recipe = write_recipe(folder, [grid, step])
        result = run_python("-m", "pipelines.run", str(recipe), cwd=folder, env={"HF_HUB_OFFLINE": "1"})
        assert result.returncode == 2, (case, result.stderr[-2000:])
        assert expected in result.stderr and "== step 1" not in result.stderr, (case, result.stderr[-2000:])
        assert not (folder / "hub").exists(), case  # nothing published, not even step 1


def test_the_disk_check_counts_the_planned_images_at_their_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Images of a Hub model at its native 512 px take about 1.5 bytes a pixel; a model the recipe makes
    is counted at the size its building step recorded in the plan, and not at all where none did; free
    space at the store decides."""
    from types import SimpleNamespace

    from pipelines.artifacts.store import LocalStore
    from pipelines.harness import preflight
    from pipelines.harness.estimate import Estimate

    def args(model: str, height: int | None = None) -> SimpleNamespace:
        store = LocalStore(tmp_path / "hub" / "not-yet")
        return SimpleNamespace(model=model, height=height, width=height, namespace="study", open_store=lambda: store)

    steps = [
        ("base", args("BAAI/AltDiffusion-m9"), Estimate(images=1000)),
        ("tuned", args("tuned-model"), Estimate(images=10**9)),  # made by the recipe: size unknown
        ("small", args("tuned-model", 64), Estimate(images=1000)),
        ("world", args("tuned-model"), Estimate(images=10**5, native_side=16)),  # its size in the plan
    ]
    need = 1000 * 512 * 512 * 1.5 + 1000 * 64 * 64 * 1.5 + 10**5 * 16 * 16 * 1.5
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda root: SimpleNamespace(free=int(need) + 1))
    assert preflight.disk_problems(steps, {"study/tuned-model"}) == []
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda root: SimpleNamespace(free=int(need) - 10**6))
    (problem,) = preflight.disk_problems(steps, {"study/tuned-model"})
    assert problem.startswith("disk: the planned images need about 0.4 GB") and "0.4 GB are free" in problem
    # The offline study's plan knows its generating steps' size: the world model's 16 px.
    from pipelines.run import Costs, plan_recipe, planned_steps

    planned = planned_steps(*plan_recipe(REPO_ROOT / "pipelines" / "recipes" / "offline.yaml"), Costs())
    assert {estimate.native_side for *_, estimate in planned if estimate and estimate.images} == {16}


def test_with_the_hub_online_a_repo_or_revision_it_lacks_is_named_before_step_1() -> None:
    """A misspelt Hub id or revision would fail at the step that downloads it, hours in: the preflight
    asks the Hub first (here a stand-in API), and says nothing where the Hub cannot be asked."""
    from types import SimpleNamespace

    import httpx
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    from pipelines.harness.preflight import hub_problem

    def refusal(kind: type, status: int) -> Exception:
        request = httpx.Request("GET", "https://huggingface.co/api/models/x")
        return kind("refused", response=httpx.Response(status, request=request))

    class Hub:
        asked: list = []

        def repo_info(self, repo_id: str, repo_type: str, revision: str | None, timeout: float) -> SimpleNamespace:
            self.asked.append((repo_id, repo_type, revision))
            if repo_id == "BAAI/AltDiffusion-m9":
                if revision not in (None, "v1"):
                    raise refusal(RevisionNotFoundError, 404)
                return SimpleNamespace(gated=False)
            if repo_id in ("gated/model", "granted/model"):  # as the Hub: a gated repo's card is public
                return SimpleNamespace(gated="manual")
            if repo_id == "no/network":
                raise httpx.ConnectError("no route to host")
            raise refusal(RepositoryNotFoundError, 404)

        def auth_check(self, repo_id: str, repo_type: str) -> None:
            if repo_id == "gated/model":
                raise refusal(GatedRepoError, 403)

    hub = Hub()
    assert hub_problem("BAAI/AltDiffusion-m9", "main", "model", hub) is None
    assert hub_problem("BAAI/AltDiffusion-m9", "v1", "model", hub) is None
    assert hub_problem("BAAI/AltDiffusion-m9", "v9", "model", hub) == "the Hub has no revision or tag 'v9' of it"
    assert hub_problem("BAAI/AltDifusion-m9", "main", "model", hub) == (
        "the Hub has no such model repo (or this token cannot see it)"
    )
    assert hub_problem("felifri/MAGBIG", "main", "source", hub) == (
        "the Hub has no such model or dataset repo (or this token cannot see it)"
    )
    assert hub_problem("gated/model", "main", "model", hub).startswith("gated on the Hub")
    assert hub_problem("granted/model", "main", "model", hub) is None
    assert hub_problem("no/network", "main", "model", hub) is None
    assert ("felifri/MAGBIG", "dataset", None) in hub.asked and ("BAAI/AltDiffusion-m9", "model", "v9") in hub.asked
    # Offline (as every test runs), nothing is asked of the Hub.
    assert hub_problem("BAAI/AltDifusion-m9", "main", "model") is None
