"""Recipes, command-line overrides, one-line errors, and the study runner's pinning and skipping."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipelines import generate_prompts, translate_prompts
from pipelines.artifacts.store import LocalStore
from pipelines.errors import ConfigError
from pipelines.harness.config import parse_arguments
from pipelines.run import run_recipe

from .conftest import run_python

SMALL = {"professions": ["doctor", "nurse"], "styles": ["close-up"], "ages": ["young"]}


def write_recipe(tmp_path: Path, stages: list[dict], **shared) -> Path:
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
    assert not (tmp_path / "datasets" / "study" / "none").exists() or not any(
        (tmp_path / "datasets" / "study" / "none").glob("revisions/*")
    )


def test_runner_pins_inputs_and_skips_done_stages(tmp_path: Path, capsys) -> None:
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
    """The README's study command, as written, on a fresh store: every stage publishes."""
    import datasets

    result = offline_study["result"]
    assert result.returncode == 0, result.stderr[-3000:]
    store = LocalStore(offline_study["root"])
    german = datasets.load_dataset(str(store.resolve("t2i-bias/prompts", "dataset")), "de", split="train")
    assert german.num_rows == 8640 + 4320 + 240
    for repo, repo_type in [
        ("t2i-bias/tiny-altdiffusion-debiased", "model"),
        ("t2i-bias/images-finetuned-eval-bias", "dataset"),
        ("t2i-bias/images-finetuned-eval-alignment", "dataset"),
        ("t2i-bias/train-en-images-all-captions", "dataset"),
    ]:
        assert store.exists(repo, repo_type), repo
    assert "spaces/compare_languages/app.py" in result.stdout + result.stderr  # it says how to open the Space


def test_reuse_picks_the_revision_the_stage_made(tmp_path: Path) -> None:
    """A later revision with the same lineage (a card amended with model-index) is not what the stage made."""
    import shutil

    from pipelines.harness.stage import StageRun

    args = generate_prompts.Arguments(store_root=str(tmp_path / "hub"), namespace="study", **SMALL)
    first = generate_prompts.run(args)
    store = LocalStore(tmp_path / "hub")
    amended = tmp_path / "amended"
    shutil.copytree(store.resolve(str(first), "dataset"), amended)
    (amended / "README.md").chmod(0o644)
    with open(amended / "README.md", "a") as card:
        card.write("\nAmended.\n")
    later = store.push(amended, "study/prompts", "dataset", "amend the card")
    assert later != first.revision and store.revision_of("study/prompts", "dataset") == later
    assert StageRun("generate_prompts", args).existing() == first.revision
    assert generate_prompts.run(args).revision == first.revision
