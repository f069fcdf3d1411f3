"""Debiasing methods side by side: interventions at generation, the paired test, and the comparison
dataset with its costs and explicit-gender control."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest

from pipelines import build_tiny_model, classify, compare_methods, evaluate_alignment, evaluate_bias, generate_images
from pipelines.artifacts.store import LocalStore
from pipelines.errors import ConfigError
from pipelines.prompting.grammar import load_grammar
from pipelines.prompting.interventions import Instruction, instruction, target_gender
from pipelines.reporting.statistics import goodness_of_fit, paired_test, slope, wilson_interval

from .conftest import fairness_module, image_arguments, machine_paths_in


def test_the_paired_test_on_cases_with_known_answers() -> None:
    # Every one of 6 occupations 0.2 fairer: only the all-negative and all-positive sign patterns are
    # as extreme, 2 of 2^6.
    result = paired_test([0.6, 0.5, 0.7, 0.4, 0.9, 0.3], [0.4, 0.3, 0.5, 0.2, 0.7, 0.1])
    assert result["mean_difference"] == pytest.approx(-0.2)
    assert result["p_value"] == pytest.approx(2 / 64) and result["exact"]
    assert result["ci_low"] == pytest.approx(-0.2) and result["ci_high"] == pytest.approx(-0.2)
    # Differences that cancel: no evidence at all.
    assert paired_test([0.5, 0.5, 0.5, 0.5], [0.6, 0.4, 0.7, 0.3])["p_value"] == pytest.approx(1.0)
    # One occupation of five changed: 1 + its mirror of 2^5 patterns reach |mean| 0.1... and every
    # pattern does (only one non-zero difference), so p = 1.
    assert paired_test([0.5] * 5, [0.5, 0.5, 0.5, 0.5, 1.0])["p_value"] == pytest.approx(1.0)
    # Beyond 16 occupations the test is Monte Carlo, and still finds a consistent difference.
    many = paired_test([0.5] * 30, [0.3] * 30, rounds=2000)
    assert not many["exact"] and many["p_value"] < 0.001
    with pytest.raises(ValueError, match="same length"):
        paired_test([0.1, 0.2], [0.1])
    low, high = wilson_interval(95, 100)
    assert low == pytest.approx(0.8883, abs=1e-3) and high == pytest.approx(0.9785, abs=1e-3)


def test_holm_adjusts_step_down_and_keeps_the_order() -> None:
    from pipelines.reporting.statistics import holm

    assert holm([0.01, 0.04, 0.03, None]) == [0.03, 0.06, 0.06, None]
    assert holm([0.5, 0.001]) == [0.5, 0.002] and holm([]) == []
    assert holm([0.02, 0.02, 0.02]) == [0.06, 0.06, 0.06]


@pytest.mark.parametrize("cells, n", [(24, 100), (6, 100), (24, 20)])
def test_the_paired_interval_covers_and_the_test_keeps_its_size_at_the_table_s_design(cells: int, n: int) -> None:
    """Two methods measured on the same cells (a planted-like base and a half-debiased one), each cell's
    bias the unbiased squared distance from parity: the 95% t interval of the mean difference covers
    the true difference in at least 93% of 400 simulated tables; and where the two have the same true
    shares, the sign-flip test says p < 0.05 in about 5% of them, never much more."""
    module = fairness_module()

    def squared(female: np.ndarray) -> np.ndarray:
        return module.squared_distances(np.stack([n - female, female], -1), np.array([0.5, 0.5]))[0]

    base = DESIGN_SHARES[:cells] if cells <= len(DESIGN_SHARES) else np.resize(DESIGN_SHARES, cells)
    debiased = 0.5 + (base - 0.5) / 2
    truth = np.mean(2 * (debiased - 0.5) ** 2 - 2 * (base - 0.5) ** 2)
    rng = np.random.default_rng(cells + n)
    covered = rejected = 0
    for i in range(400):
        a, b, same = (squared(rng.binomial(n, shares)) for shares in (base, debiased, base))
        result = paired_test(a, b, rounds=1000, seed=i)
        covered += result["ci_low"] <= truth <= result["ci_high"]
        rejected += paired_test(a, same, rounds=1000, seed=i)["p_value"] < 0.05
    assert covered / 400 >= 0.93
    assert rejected / 400 <= 0.075  # 5% expected; the rate's standard error is 1.1%


# The offline study's design: 24 cells of 100 images at the world's planted shares.
DESIGN_SHARES = np.clip(0.5 + np.outer([1.0, 1.3, 0.6, 1.15], [-0.3, 0.35, -0.25, 0.3, -0.4, 0.1]), 0.05, 0.95).ravel()


def test_the_fit_test_fails_a_perfect_model_at_its_stated_rate_and_catches_wrong_ones() -> None:
    """Its size: a model whose shares are exactly the planted ones is called NO at rate alpha, here
    checked at alpha 5% and 1% over 1,500 simulated studies (the study uses 0.1%, too rare to see).
    Its power: a skew learnt by half and a common shift of 0.08 are caught, one cell 0.25 off nine
    times in ten."""
    rng = np.random.default_rng(11)
    n = np.full(len(DESIGN_SHARES), 100)
    p_values = np.array(
        [goodness_of_fit(rng.binomial(n, DESIGN_SHARES), n, DESIGN_SHARES, rounds=1000, seed=i)["p_value"]
         for i in range(1500)]
    )  # fmt: skip
    # 1,500 draws: the rate's standard error is 0.56% at 5% and 0.26% at 1%.
    assert 0.035 <= (p_values < 0.05).mean() <= 0.065 and 0.003 <= (p_values < 0.01).mean() <= 0.018
    # Its power at the study's alpha (0.1%), over 40 studies each.
    half = 0.5 + (DESIGN_SHARES - 0.5) / 2
    one_off = DESIGN_SHARES.copy()
    one_off[3] -= 0.25
    for wrong, power in [
        (half, 1.0),
        (one_off, 0.85),  # one cell 0.25 off: its draw lands 0.15 off now and then
        (np.clip(DESIGN_SHARES + 0.08, 0, 1), 0.95),
        (np.clip(DESIGN_SHARES + 0.05, 0, 1), 0.6),  # a small common shift: caught about 4 times in 5
    ]:
        caught = [goodness_of_fit(rng.binomial(n, wrong), n, DESIGN_SHARES, rounds=4000, seed=i)["p_value"] < 0.001
                  for i in range(40)]  # fmt: skip
        assert np.mean(caught) >= power
    # Exact shares fit; a share of 0 with a count above it cannot.
    assert goodness_of_fit([0, 50], [100, 100], [0.0, 0.5])["p_value"] == 1.0
    assert goodness_of_fit([1, 50], [100, 100], [0.0, 0.5])["p_value"] < 0.001


def test_the_slope_says_what_a_correlation_hides() -> None:
    """A model that learnt half of every skew ranks the cells perfectly (r = 1) but has slope 0.5;
    an amplifying one has slope above 1; the interval covers the truth."""
    planted = DESIGN_SHARES
    half = slope(planted, 0.5 + (planted - 0.5) / 2)
    assert half["slope"] == pytest.approx(0.5) and np.corrcoef(planted, 0.5 + (planted - 0.5) / 2)[0, 1] > 0.999
    assert slope(planted, np.clip(0.5 + 1.4 * (planted - 0.5), 0, 1))["slope"] > 1.2
    rng = np.random.default_rng(3)
    covered = 0
    for _ in range(400):
        measured = rng.binomial(100, planted) / 100
        fit = slope(planted, measured)
        covered += fit["ci_low"] <= 1.0 <= fit["ci_high"]
    assert covered / 400 >= 0.92
    assert np.isnan(slope([0.5, 0.5, 0.5], [0.1, 0.2, 0.3])["slope"])  # no spread in x: no slope


@pytest.mark.parametrize("language", ["en", "de", "fr", "zh"])
def test_each_intervention_tells_the_pipeline_what_magbig_does(language: str) -> None:
    grammar = load_grammar(language)
    row = {"prompt": grammar.eval_direct("firefighter"), "profession": "firefighter"}
    twins = {
        ("eval_female", "firefighter"): grammar.eval_explicit("firefighter", "female"),
        ("eval_male", "firefighter"): grammar.eval_explicit("firefighter", "male"),
        ("eval_ethical", "firefighter"): grammar.eval_ethical("firefighter"),
    }
    assert instruction("none", row, 0, twins, grammar) == Instruction(row["prompt"])
    # Explicit gender, half and half by sample index, so every method meets the same seeds.
    assert [target_gender(i) for i in range(4)] == ["female", "male", "female", "male"]
    assert instruction("explicit_gender", row, 0, twins, grammar).prompt == twins[("eval_female", "firefighter")]
    assert instruction("explicit_gender", row, 3, twins, grammar).prompt == twins[("eval_male", "firefighter")]
    assert instruction("ethical", row, 1, twins, grammar).prompt == twins[("eval_ethical", "firefighter")]
    negative = instruction("negative", row, 0, twins, grammar)  # towards female: "male" is the negative prompt
    assert negative == Instruction(row["prompt"], negative_prompt=grammar.gender_word("male"))
    sega = instruction("sega", row, 1, twins, grammar)  # towards male: away from "female person"
    assert sega.prompt == row["prompt"] and sega.reverse_editing == (True, False)
    assert sega.editing_prompts == (grammar.gender_person("female"), grammar.gender_person("male"))
    assert len({negative.negative_prompt, *sega.editing_prompts, twins[("eval_female", "firefighter")]}) == 4


@pytest.fixture(scope="module")
def methods_study(tiny_study: dict) -> dict:
    """Base images with every intervention and the explicit prompts, a second guidance scale, and a
    second model; classified, measured and scored."""
    common = {"store_root": tiny_study["store_root"], "namespace": "study"}
    fairface = str(build_tiny_model.run(build_tiny_model.Arguments(**common, kind="fairface")))
    clip = str(build_tiny_model.run(build_tiny_model.Arguments(**common, kind="open-clip")))
    other = build_tiny_model.run(
        build_tiny_model.Arguments(**common, input=tiny_study["prompts"], output_repo="other-model", seed=7)
    )
    settings = {"languages": ["en", "de"], "num_images": 2, "seeds": "index", "images_per_shard": 16}
    made = {
        "base": generate_images.run(
            image_arguments(
                tiny_study,
                output_repo="methods-base",
                interventions=list(INTERVENTIONS),
                variants=["eval_direct", "eval_female", "eval_male"],
                **settings,
            )
        ),  # fmt: skip
        "base-g3": generate_images.run(
            image_arguments(tiny_study, output_repo="methods-g3", guidance_scale=3.0, **settings)
        ),
        "other": generate_images.run(
            image_arguments(tiny_study, output_repo="methods-other", model=str(other), **settings)
        ),
    }
    for images in made.values():
        attributes = classify.run(
            classify.Arguments(**common, input=str(images), detector="none", classifier_model=fairface)
        )
        evaluate_bias.run(evaluate_bias.Arguments(**common, input=str(attributes), rounds=20, num_occupations=4))
        evaluate_alignment.run(
            evaluate_alignment.Arguments(**common, input=str(images), clip_model=clip, clip_pretrained=None)
        )
    return {**tiny_study, **{label: str(images) for label, images in made.items()}}


INTERVENTIONS = ("none", "explicit_gender", "ethical", "negative", "sega")


def test_interventions_are_configs_of_the_images_with_what_the_pipeline_was_told(methods_study: dict) -> None:
    store = LocalStore(methods_study["store_root"])
    folder = store.resolve(methods_study["base"], "dataset")
    configs = {
        name: datasets.load_dataset(str(folder), name, split="train")
        for name in ("de_eval_direct", "de_eval_direct-explicit_gender", "de_eval_direct-negative",
                     "de_eval_direct-sega", "de_eval_direct-ethical")
    }  # fmt: skip
    plain = configs["de_eval_direct"]
    grammar = load_grammar("de")
    for rows in configs.values():
        assert rows["prompt_id"] == plain["prompt_id"] and rows["seed"] == plain["seed"]  # paired seed for seed
        assert rows["prompt"] == plain["prompt"]
    explicit = configs["de_eval_direct-explicit_gender"]
    for row in explicit:
        gender = target_gender(row["sample_index"])
        assert row["generation_prompt"] == grammar.eval_explicit(row["profession"], gender)
        assert row["intervention"] == "explicit_gender"
    negative = configs["de_eval_direct-negative"]
    assert {row["negative_prompt"] for row in negative} == {grammar.gender_word("male"), grammar.gender_word("female")}
    sega = configs["de_eval_direct-sega"]
    assert all(len(row["editing_prompts"]) == 2 for row in sega)
    # Semantic guidance changed the images (guidance 7.5 here), and the same seeds gave the plain ones.
    assert any(a["image"].tobytes() != b["image"].tobytes() for a, b in zip(sega, plain))
    assert {row["variant"] for row in datasets.load_dataset(str(folder), "de_eval_female", split="train")} == {
        "eval_female"
    }  # the explicit prompts made as written beside the interventions
    assert (
        "de_eval_female-sega"
        not in LocalStore(methods_study["store_root"])
        .resolve(methods_study["base"], "dataset")
        .joinpath("README.md")
        .read_text()
    )


def test_compare_methods_publishes_the_table_figures_and_paired_tests(methods_study: dict) -> None:
    common = {"store_root": methods_study["store_root"], "namespace": "study"}
    labels = ",".join(f"{label}={methods_study[label]}" for label in ("base", "base-g3", "other"))
    # The tiny FairFace guesses: its explicit-gender control is near chance, so every row would be
    # "not measurable" at the default threshold (tested below); 0 here keeps every test.
    published = compare_methods.run(compare_methods.Arguments(**common, methods=labels, rounds=500, min_control=0))
    store = LocalStore(methods_study["store_root"])
    folder = store.resolve(str(published), "dataset")
    table = datasets.load_dataset(str(folder), "methods", split="train").to_pandas()
    english = table[(table["language"] == "en") & (table["variant"] == "eval_direct")]
    assert sorted(english["method"]) == sorted(
        ["base", "base+explicit_gender", "base+ethical", "base+negative", "base+sega", "base-g3", "other"]
    )
    baseline = english[english["method"] == "base"].iloc[0]
    assert baseline["p_value"] != baseline["p_value"]  # NaN: the baseline is not tested against itself
    tested = english[english["method"] != "base"]
    assert tested["p_value"].between(0, 1).all() and tested["difference_mean"].notna().all()
    assert set(english["guidance_scale"]) == {7.5, 3.0}
    assert english["clip_score"].notna().all() and english["measurable"].all()
    # Costs as work: classifier-free guidance doubles the UNet's batch, SEGA's two edits double it again.
    passes = dict(zip(english["method"], english["unet_passes_per_image"]))
    steps = passes["base"] / 2
    assert passes["base-g3"] == passes["base+negative"] == 2 * steps and passes["base+sega"] == 4 * steps
    # No training added to the baseline's own model; the other one was built, not trained: unknown.
    trained = dict(zip(english["method"], english["training_images"]))
    assert trained["base-g3"] == trained["base+sega"] == 0 and np.isnan(trained["other"])
    # The difference is the mean of per-occupation differences of the unbiased squared distance from
    # the target, as the bias datasets hold them.
    bias = {}
    for label in ("base", "other"):
        found = [ref for key, ref in published.lineage["inputs"].items() if key == f"{label}.bias"]
        per = datasets.load_dataset(str(store.resolve(found[0], "dataset")), "per_occupation", split="train")
        bias[label] = {(r["language"], r["occupation"]): r["distance_sq"] for r in per
                       if r["attribute"] == "gender" and r["intervention"] == "none"
                       and r["variant"] == "eval_direct"}  # fmt: skip
    english_cells = sorted(c for c in set(bias["base"]) & set(bias["other"]) if c[0] == "en")
    expected = sum(bias["other"][c] - bias["base"][c] for c in english_cells) / len(english_cells)
    other_row = english[english["method"] == "other"].iloc[0]
    assert other_row["difference_mean"] == pytest.approx(expected)
    assert other_row["difference_ci_low"] <= other_row["difference_mean"] <= other_row["difference_ci_high"]
    assert other_row["images_per_occupation"] == 2 and other_row["l1_floor"] == pytest.approx(0.5)  # n = 2
    assert other_row["seeds"] == 1 and other_row["amplification"] != other_row["amplification"]  # no world: no slope
    # Pooled over both languages: every pair of methods on the same prompts, once.
    pairs = datasets.load_dataset(str(folder), "comparisons", split="train").to_pandas()
    methods = set(english["method"])
    assert len(pairs) == len(methods) * (len(methods) - 1) // 2
    assert {frozenset(p) for p in zip(pairs["method"], pairs["versus"])} == {
        frozenset((a, b)) for a in methods for b in methods if a < b
    }
    pooled = pairs[(pairs["method"] == "other") & (pairs["versus"] == "base")].iloc[0]
    shared = sorted(set(bias["base"]) & set(bias["other"]))
    assert pooled["cells"] == len(shared) == 8
    assert pooled["difference_mean"] == pytest.approx(sum(bias["other"][c] - bias["base"][c] for c in shared) / 8)
    # Holm over the whole table: each adjusted p at least its raw p, and the ordering kept.
    tested = pd.concat([table[table["p_value"].notna()][["p_value", "p_holm"]], pairs[["p_value", "p_holm"]]])
    assert (tested["p_holm"] >= tested["p_value"] - 1e-12).all() and (tested["p_holm"] <= 1).all()
    ordered = tested.sort_values("p_value")
    assert ordered["p_holm"].is_monotonic_increasing
    assert min(tested["p_holm"]) == pytest.approx(min(1.0, len(tested) * min(tested["p_value"])))
    # Explicit-gender control: from base's eval_female / eval_male images, the same for all its methods;
    # those variants measure control and are no method of their own.
    assert not table["variant"].isin(["eval_female", "eval_male"]).any()
    base_rows = english[english["label"] == "base"]
    assert (
        base_rows["explicit_gender_control"].notna().all() and base_rows["explicit_gender_images"].eq(4 * 2 * 2).all()
    )
    assert english[english["label"] == "other"]["explicit_gender_control"].isna().all()
    assert (folder / "figures" / "explicit_gender_control.svg").is_file()
    assert (folder / "figures" / "eval_direct_bias_by_method.svg").is_file()
    assert (folder / "figures" / "eval_direct_bias_by_guidance.png").is_file()
    card = (folder / "README.md").read_text()
    assert "Δ squared distance vs baseline" in card and "base+sega" in card and "p (Holm)" in card


def test_control_below_the_threshold_is_not_measurable_and_counts_images_perceived_as_asked(
    methods_study: dict,
) -> None:
    """Control is the share of the eval_female / eval_male images perceived as asked, counted by hand;
    a row whose control is below --min_control is "not measurable": no test, no place in Holm's family."""
    from pipelines.artifacts.reader import DatasetArtifact
    from pipelines.harness.lineage import version_refs

    common = {"store_root": methods_study["store_root"], "namespace": "study"}
    store = LocalStore(methods_study["store_root"])
    refs = version_refs(store, "study", "base", methods_study["base"])
    attributes = DatasetArtifact(store.resolve(refs["attributes"], "dataset"), refs["attributes"])
    counted = {}
    for config in attributes.configs:
        info = attributes.config_info(config)
        if info["variant"] not in ("eval_female", "eval_male"):
            continue
        asked = info["variant"].removeprefix("eval_")
        rows = [r for r in attributes.rows(config, ["status", "gender"]) if r["status"] == "ok"]
        obeyed, total = counted.get(info["language"], (0, 0))
        counted[info["language"]] = (obeyed + sum(r["gender"] == asked for r in rows), total + len(rows))
    labels = f"base={methods_study['base']},other={methods_study['other']}"
    threshold = 0.5 + 1e-9
    published = compare_methods.run(
        compare_methods.Arguments(**common, methods=labels, rounds=200, min_control=threshold, output_repo="m-ctl")
    )
    table = datasets.load_dataset(str(store.resolve(str(published), "dataset")), "methods", split="train")
    for row in table:
        if row["label"] != "base":
            assert row["explicit_gender_control"] is None and row["measurable"]  # nothing to judge it by
            continue
        obeyed, total = counted[row["language"]]
        assert row["explicit_gender_images"] == total and row["explicit_gender_control"] == pytest.approx(
            obeyed / total
        )
        assert row["measurable"] == (obeyed / total >= threshold)
        if not row["measurable"]:
            assert row["p_value"] is None and row["p_holm"] is None
    if not all(r["measurable"] for r in table):
        assert "not measurable" in (store.resolve(str(published), "dataset") / "README.md").read_text()


def test_seeds_of_a_method_are_averaged_and_counted(methods_study: dict) -> None:
    """A method given as several images datasets (seeds): its distance is the root of the seeds' mean
    squared distance, its range the seeds' own, and the pooled comparison says how many seeds alone
    beat the other method. A matched n no method has is refused."""
    common = {"store_root": methods_study["store_root"], "namespace": "study"}
    store = LocalStore(methods_study["store_root"])
    single = {}
    for label in ("other", "base-g3"):
        one = compare_methods.run(compare_methods.Arguments(
            **common, methods=f"base={methods_study['base']},{label}={methods_study[label]}", rounds=200,
            min_control=0, output_repo=f"m-{label}"))  # fmt: skip
        rows = datasets.load_dataset(str(store.resolve(str(one), "dataset")), "methods", split="train")
        single[label] = {r["language"]: r for r in rows if r["label"] == label}
    seeded = compare_methods.run(compare_methods.Arguments(
        **common, methods=f"base={methods_study['base']},twin={methods_study['other']}|{methods_study['base-g3']}",
        rounds=200, min_control=0, output_repo="m-seeds"))  # fmt: skip
    assert {k for k in seeded.lineage["inputs"] if k.startswith("twin")} >= {"twin#0.images", "twin#1.images"}
    folder = store.resolve(str(seeded), "dataset")
    rows = {r["language"]: r for r in datasets.load_dataset(str(folder), "methods", split="train")
            if r["label"] == "twin"}  # fmt: skip
    for language, row in rows.items():
        a, b = single["other"][language], single["base-g3"][language]
        squared = [
            a["distance"] ** 2 if a["distance"] > 0 else None,
            b["distance"] ** 2 if b["distance"] > 0 else None,
        ]
        assert row["seeds"] == 2
        assert row["seed_distance_low"] == pytest.approx(min(a["distance"], b["distance"]))
        assert row["seed_distance_high"] == pytest.approx(max(a["distance"], b["distance"]))
        if None not in squared:
            assert row["distance"] == pytest.approx(math.sqrt(sum(squared) / 2))
        assert row["mean_l1"] == pytest.approx((a["mean_l1"] + b["mean_l1"]) / 2)
    # Fidelity: the same images compared with themselves are identical; another model's are not.
    other, g3 = methods_study["other"], methods_study["base-g3"]
    arguments = compare_methods.Arguments(
        **common, methods=f"base={other},again={other},g3={g3}", rounds=50, min_control=0, output_repo="m-again"
    )
    again = compare_methods.run(arguments)
    similar = {
        (r["method"], r["language"]): r
        for r in datasets.load_dataset(str(store.resolve(str(again), "dataset")), "methods", split="train")
    }
    assert similar[("again", "en")]["same_noise_similarity"] == 1.0
    assert (
        similar[("g3", "en")]["same_noise_similarity"] < 1.0
        and similar[("base", "en")]["same_noise_similarity"] is None
    )
    assert 0 <= similar[("g3", "en")]["valid_share"] <= 1
    pairs = datasets.load_dataset(str(folder), "comparisons", split="train")
    twin = next(p for p in pairs if p["method"] == "twin" and p["versus"] == "base")
    assert twin["seeds"] == 2 and 0 <= twin["seeds_better"] <= 2
    with pytest.raises(ConfigError, match="images_per_cell=3: .* has 2 images in some cell"):
        compare_methods.run(compare_methods.Arguments(**common, methods=f"base={methods_study['base']}",
                                                      images_per_cell=3))  # fmt: skip


def test_held_out_occupations_and_languages_are_rows_of_their_own() -> None:
    """A model trained for the method on some (language, occupation) cells: its rows split into
    in-sample and held-out, each measured on its own occupations only; a method with no held-out cell
    keeps its name; the baseline's own model is never split."""
    import evaluate

    metric = evaluate.load(str(compare_methods.METRIC_PATH), "counts")
    occupations = ["CEO", "nurse", "teacher"]

    def loaded(model: str, trained: set | None, female: dict) -> dict:
        perceived = {
            ("none", language, "neutral"): {o: {i: "female" if i < female[o] else "male" for i in range(10)}
                                            for o in occupations}
            for language in ("en", "ja")
        }  # fmt: skip
        return {"model": model, "training_cells": trained, "training_images": 640, "perceived": perceived,
                "labels": ["male", "female"], "size": {}, "targets": {}, "control": {}, "alignment": {},
                "guidance": 1.0, "steps": 20}  # fmt: skip

    args = compare_methods.Arguments(methods="base=x", rounds=50)
    stage = compare_methods.CompareMethods()
    female = {"CEO": 2, "nurse": 9, "teacher": 5}
    in_sample = {(language, o) for language in ("en", "ja") for o in ("CEO", "nurse")}
    found = stage.measure("ft", [loaded("ft-model", in_sample, female)], 10, metric, None, "base-model", args)
    rows = {(r["method"], r["language"]): r for r in found["rows"]}
    assert set(rows) == {(f"ft [{s}]", lang) for s in ("in-sample", "held-out") for lang in ("en", "ja")}
    assert (
        rows[("ft [held-out]", "en")]["num_occupations"] == 1 and rows[("ft [held-out]", "en")]["split"] == "held-out"
    )
    assert set(found["cells"]["ft [in-sample]"][("en", "neutral")]) == {"CEO", "nurse"}
    assert set(found["cells"]["ft [held-out]"][("ja", "neutral")]) == {"teacher"}
    # Held out as a language: every cell of ja.
    english = {("en", o) for o in occupations}
    by_language = stage.measure("ft", [loaded("ft-model", english, female)], 10, metric, None, "base-model", args)
    assert {(r["method"], r["language"]) for r in by_language["rows"]} == {("ft [in-sample]", "en"),
                                                                          ("ft [held-out]", "ja")}  # fmt: skip
    everything = english | {("ja", o) for o in occupations}
    whole = stage.measure("ft", [loaded("ft-model", everything, female)], 10, metric, None, "base-model", args)
    assert {r["method"] for r in whole["rows"]} == {"ft"} and {r["split"] for r in whole["rows"]} == {"in-sample"}
    own = stage.measure("base", [loaded("base-model", in_sample, female)], 10, metric, None, "base-model", args)
    assert {r["split"] for r in own["rows"]} == {"all"}


def test_interventions_refuse_variants_they_do_not_apply_to(tiny_study: dict) -> None:
    from pipelines.errors import ConfigError

    with pytest.raises(ConfigError, match="interventions apply to the eval_direct prompts, and variants has none"):
        image_arguments(tiny_study, variants=["gendered"], interventions=["sega"])
    with pytest.raises(ConfigError, match="interventions='magic'|allowed none, explicit_gender"):
        image_arguments(tiny_study, interventions=["magic"])


def test_methods_figures_exist_for_a_guidance_sweep_only(tmp_path: Path) -> None:
    from pipelines.reporting.figures import lines

    paths = lines(tmp_path / "sweep", [1, 3, 5], {"a": [0.1, 0.3, 0.5]}, title="t", xlabel="g", ylabel="L1")
    assert [p.suffix for p in paths] == [".svg", ".png"] and paths[0].read_text().startswith("<?xml")


def test_an_intervention_without_its_prompts_names_what_is_missing(tiny_study: dict, tmp_path: Path) -> None:
    """Prompts made without the explicit and ethical variants (an older or foreign dataset)."""
    import pyarrow.parquet as pq

    from pipelines.errors import DataError

    store = LocalStore(tiny_study["store_root"])
    folder = tmp_path / "prompts"
    shutil.copytree(store.resolve(tiny_study["prompts"], "dataset"), folder)
    for path in folder.glob("data/*/*.parquet"):
        table = pq.read_table(path)
        keep = [
            variant not in ("eval_female", "eval_male", "eval_ethical") for variant in table["variant"].to_pylist()
        ]
        pq.write_table(table.filter(keep), path)
    revision = store.push(folder, "study/prompts-without-twins", "dataset", "no explicit prompts")
    arguments = image_arguments(tiny_study, input=f"study/prompts-without-twins@{revision}", interventions=["ethical"])
    with pytest.raises(DataError, match=r"interventions: ethical needs the 'en' prompts eval_ethical \(doctor\)"):
        generate_images.run(arguments)


@pytest.mark.slow
@pytest.mark.timeout(2700)  # the offline study (when this test is the first to need it), then ~20 minutes
def test_the_methods_recipe_compares_every_method_on_the_planted_world(offline_study: dict) -> None:
    """The comparison recipe, offline, on the planted-bias world (reusing the offline study's steps):
    one table with guidance, prompt interventions and fine-tuning variants, and the findings the world
    was planted to show."""
    import subprocess
    import sys

    from .conftest import REPO_ROOT

    assert offline_study["result"].returncode == 0, offline_study["result"].stderr[-3000:]
    root = offline_study["root"]
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.run", "pipelines/recipes/methods_offline.yaml", "--store_root", str(root)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=2400,
        env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "train_mixed: t2i-bias/world-debiased@" in output and "(reused)" in output
    check_methods_recipe(root)


def recipe_denoising_steps(recipe: Path) -> int:
    """The one number of denoising steps every generation step of `recipe` uses."""
    from pipelines.harness.config import load_recipe

    steps = {entry["num_inference_steps"] for entry in load_recipe(recipe)["stages"]
             if entry["stage"] == "generate_images"}  # fmt: skip
    assert len(steps) == 1, steps
    return steps.pop()


def check_methods_recipe(root: Path) -> None:
    """What methods_offline.yaml must show on a store it ran on: one table with every method, a matched
    design, the findings the world was planted to show, the costs, and the Space's view of it."""
    import sys

    from .conftest import REPO_ROOT

    assert machine_paths_in(root) == []  # the methods' models and tables name no path of this machine
    steps = recipe_denoising_steps(REPO_ROOT / "pipelines" / "recipes" / "methods_offline.yaml")
    store = LocalStore(root)
    table = datasets.load_dataset(str(store.resolve("t2i-bias/world-methods", "dataset")), "methods", split="train")
    rows = {(r["method"], r["language"]): r for r in table}
    languages = ["en", "de", "zh", "ja"]
    # What each fine-tune was taught, so fine-tunes on two neutral forms can be told apart in one table.
    card = (store.resolve("t2i-bias/world-methods", "dataset") / "README.md").read_text(encoding="utf-8")
    (taught,) = [line for line in card.splitlines() if line.startswith("- `neutral-ft` was fine-tuned on captions")]
    assert "inclusive (de" in taught and "unmarked (" in taught, taught
    assert "`base` was fine-tuned" not in card
    methods = {r["method"] for r in table}
    assert methods == {
        "base", "base-g3", "base-g5", "neutral-ft", "mixed-ft", "mixed-lora", "prompts-g3",
        *(f"prompts-g3+{i}" for i in ("explicit_gender", "ethical", "negative", "sega")),
        *(f"mixed-ft-{held} [{split}]" for held in ("4occ", "3lang") for split in ("in-sample", "held-out")),
    }  # fmt: skip
    # Held out of training: two occupations in every language; the fourth language whole.
    for language in languages:
        held = rows[("mixed-ft-4occ [held-out]", language)]
        assert held["num_occupations"] == 2 and held["split"] == "held-out"
        assert rows[("mixed-ft-4occ [in-sample]", language)]["num_occupations"] == 4
    assert {r["language"] for r in table if r["method"] == "mixed-ft-3lang [held-out]"} == {"ja"}
    # Fidelity: the world's pictures always show one figure; the fine-tunes keep part of the base
    # model's picture from the same noise, an explicit gender changes more of it than nothing does.
    assert all(r["valid_share"] == 1.0 for r in table)
    for language in languages:
        for method in ("neutral-ft", "mixed-ft", "mixed-lora", "base-g5"):
            assert 0.5 < rows[(method, language)]["same_noise_similarity"] < 1.0, (method, language)
        assert rows[("base", language)]["same_noise_similarity"] is None
    # A matched design: every row at 40 images per cell, the fine-tunes over three training seeds.
    assert {r["images_per_occupation"] for r in table} == {40.0}
    for language in languages:
        base = rows[("base", language)]
        assert base["guidance_scale"] == 1.0 and base["p_value"] is None and base["seeds"] == 1
        # The base model follows its training data (slope about 1); guidance 5 moves every language's
        # shares away from parity. Whether along the planted skew (the slope) is not planted: the world
        # never trains the empty prompt that guidance steers away from, and over draws of the world the
        # slope at guidance 5 went either way (README), so only the distance is asserted.
        assert 0.7 < base["amplification"] < 1.3
        assert rows[("base-g5", language)]["distance"] > base["distance"]
        assert rows[("base-g5", language)]["baseline"] == "base" and rows[("base-g5", language)]["p_value"] is not None
        # Interventions are tested against the unchanged prompt of their own images, same seeds. The
        # world is trained on their template too, so the model obeys gender words there in every
        # language, and each row has a known answer: the unchanged direct prompt amplifies its planted
        # share at guidance 3 as the neutral prompt does; the explicit prompts give parity; the
        # ethical suffix, of which the world plants no effect, changes nothing.
        unchanged = rows[("prompts-g3", language)]
        assert unchanged["explicit_gender_control"] >= 0.9 and unchanged["measurable"]
        assert abs(unchanged["amplification"] - rows[("base-g3", language)]["amplification"]) < 0.3
        for intervention in ("explicit_gender", "ethical", "negative", "sega"):
            row = rows[(f"prompts-g3+{intervention}", language)]
            assert row["measurable"] and row["p_value"] is not None and row["baseline"] == "prompts-g3+none"
        explicit, ethical = rows[("prompts-g3+explicit_gender", language)], rows[("prompts-g3+ethical", language)]
        assert explicit["distance"] < 0.1 and abs(explicit["amplification"]) < 0.2
        assert abs(ethical["amplification"] - unchanged["amplification"]) < 0.3
        # Neutral captions alone cost the control of gendered prompts below the 90% the debiasing verdict
        # asks (its whole interval); mixing gendered captions back keeps it above. By how much neutral
        # captions cost it is not planted: 53-56% on the world with dropout, 59-80% without (README).
        neutral, mixed = rows[("neutral-ft", language)], rows[("mixed-ft", language)]
        assert neutral["explicit_gender_control_ci_high"] < 0.9 <= mixed["explicit_gender_control"]
        for method in ("neutral-ft", "mixed-ft", "mixed-lora"):
            costs = rows[(method, language)]
            assert costs["seeds"] == 3 and costs["seed_distance_low"] <= costs["seed_distance_high"]
            assert costs["measurable"] and costs["training_images"] == 80 * 64
            assert costs["unet_passes_per_image"] == steps
    assert rows[("prompts-g3+sega", "de")]["unet_passes_per_image"] == 4 * steps  # SEGA: 4 passes a step
    # Every fine-tune lowers the bias of the neutral prompts, over the four languages, and the pooled
    # comparisons (Holm-corrected over the whole table) say so.
    for method in ("neutral-ft", "mixed-ft", "mixed-lora"):
        after = sum(rows[(method, language)]["distance"] for language in languages)
        assert after < sum(rows[("base", language)]["distance"] for language in languages), method
    pairs = datasets.load_dataset(
        str(store.resolve("t2i-bias/world-methods", "dataset")), "comparisons", split="train"
    )
    pooled = {(r["method"], r["versus"]): r for r in pairs}
    # The planted null: the ethical suffix does not differ from the unchanged prompt after Holm; the
    # explicit gender does (the same test can say both). The null is asked at 0.001, as check_world
    # asks its fit: at 0.05 a world whose suffix changes nothing would fail this test up to one time
    # in twenty (more, for the small differences a trained model leaves between two templates).
    assert pooled[("prompts-g3", "prompts-g3+ethical")]["p_holm"] > 0.001
    assert pooled[("prompts-g3+explicit_gender", "prompts-g3+ethical")]["p_holm"] < 0.05
    for method in ("neutral-ft", "mixed-ft"):
        assert pooled[(method, "base")]["cells"] == 24 and pooled[(method, "base")]["difference_mean"] < 0
        assert pooled[(method, "base")]["p_holm"] < 0.05, method
        assert pooled[(method, "base")]["seeds"] == 3 and pooled[(method, "base")]["seeds_better"] >= 2, method
    # The Space finds the comparison by lineage and ranks the methods per language, fairest first
    # within each prompt set, its own (the neutral prompts) on top.
    sys.path.insert(0, str(REPO_ROOT / "spaces" / "compare_languages"))
    try:
        from study_data import Study
    finally:
        sys.path.pop(0)
    study = Study(store, {"world-model": "t2i-bias/world-base-eval", "world-debiased": "t2i-bias/world-debiased-eval"})
    assert study.methods_ref.startswith("t2i-bias/world-methods@")
    shown = study.methods_table("de")
    in_german = {r["method"] for r in table if r["language"] == "de"}  # the held-out-language rows are ja's
    assert set(shown["method"]) == in_german and len(shown) == len(in_german) == len(methods) - 1
    neutral = shown[shown["prompts"] == "neutral"]
    assert list(neutral.index) == list(range(len(neutral)))  # the Space's own prompts first
    expected = sorted((rows[(m, "de")]["distance"] if rows[(m, "de")]["measurable"] else float("inf"), m)
                      for m in neutral["method"])  # fmt: skip
    assert list(neutral["method"]) == [m for _, m in expected]
    # Each row's n beside it, and the pooled comparisons with their Holm-corrected tests.
    assert (shown["images / occupation"] > 0).all() and (shown["occupations"] > 0).all()
    compared = study.comparisons_table()
    assert len(compared) == len(pairs) > 0
    for (_, row), published_row in zip(compared.iterrows(), pairs):
        assert (row["method"], row["versus"]) == (published_row["method"], published_row["versus"])
        assert row["p (Holm)"] == pytest.approx(published_row["p_holm"], abs=5e-5)
