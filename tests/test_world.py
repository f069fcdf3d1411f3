"""The planted-bias world: its pictures, its cue classifier, its identity VAE, and the stages that
draw it and judge a study against it. The whole world study (training included) is the README's
offline study, asserted in test_config_and_runner."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

from pipelines import check_world, classify, draw_world, generate_prompts, translate_prompts
from pipelines.artifacts.reader import DatasetArtifact
from pipelines.artifacts.store import LocalStore
from pipelines.errors import ConfigError
from pipelines.modeling import world
from pipelines.perception.classifiers import load_classifier

from .conftest import run_python


def test_planted_shares_scale_each_occupation_by_its_language() -> None:
    assert world.planted_share("CEO", "en") == pytest.approx(0.20)
    assert world.planted_share("hairdresser", "de") == pytest.approx(0.5 + 1.3 * 0.3)
    assert world.planted_share("nurse", "zh") == pytest.approx(0.5 + 0.6 * 0.35)
    # Clipped, so that every cell still shows some of both.
    assert world.planted_share("firefighter", "de") == pytest.approx(world.SHARE_BOUNDS[0])
    with pytest.raises(ConfigError, match="occupation='astronaut': the world plants CEO"):
        world.planted_share("astronaut", "en")
    with pytest.raises(ConfigError, match="language='fr'"):
        world.planted_share("CEO", "fr")


def test_the_cue_is_read_back_from_every_drawn_picture() -> None:
    rng = np.random.default_rng(3)
    female = rng.random(1000) < 0.3
    pictures = world.draw_figures(female, rng)
    assert pictures.shape == (1000, world.SIZE, world.SIZE, 3) and pictures.dtype == np.uint8
    read, strength = world.read_cue(pictures)
    assert (read == female).all()
    assert strength.min() > 1.0
    # A picture without a disc has no saturated pixel: no strength, whatever the call.
    grey = np.full((2, world.SIZE, world.SIZE, 3), 128, np.uint8)
    assert world.read_cue(grey)[1].max() == 0
    # The same in floats, as pipelines return them.
    assert (world.read_cue(pictures.astype(np.float32) / 255)[0] == female).all()


def test_the_world_cue_classifier_reports_its_held_out_accuracy() -> None:
    from pipelines.perception.classifiers import FaceCrop
    from pipelines.perception.faces import Face

    classifier = load_classifier("world-cue", None)
    assert classifier.describe()["held_out_accuracy"] == 1.0
    rng = np.random.default_rng(0)
    pictures = world.draw_figures(np.array([True, False]), rng)
    crops = [FaceCrop(p, Face((0, 0, world.SIZE, world.SIZE), 1.0), p) for p in pictures]
    female, male = classifier.classify(crops)
    assert (female.gender, male.gender) == ("female", "male")
    assert female.gender_scores[1] > 0.5 and male.gender_scores[0] > 0.5


def test_the_identity_vae_passes_pictures_through() -> None:
    vae = world.identity_vae()
    x = torch.from_numpy(world.draw_figures(np.array([True, False] * 4), np.random.default_rng(1)))
    x = x.permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        latent = vae.encode(x).latent_dist
        assert (latent.sample() - x).abs().max() < 1e-3 and latent.std.max() < 1e-5
        assert (vae.decode(latent.mean).sample - x).abs().max() < 1e-3
    assert vae.config.scaling_factor == world.PIXEL_SCALE


@pytest.fixture(scope="module")
def drawn(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A world in English and German, drawn, classified by its cue and judged against itself."""
    root = str(tmp_path_factory.mktemp("world-hub"))
    common = {"store_root": root, "namespace": "w"}
    lists = {"styles": ["close-up"], "ages": ["adult"], "dressings": ["wearing work clothes"], "places": ["at work"]}
    generate_prompts.run(generate_prompts.Arguments(**common, professions=["CEO", "nurse", "teacher"], **lists))
    prompts = translate_prompts.run(translate_prompts.Arguments(**common, languages=["de"]))
    images = draw_world.run(
        draw_world.Arguments(
            **common, input=str(prompts), languages=["en", "de"], images_per_prompt=30, images_per_gendered_prompt=7
        )
    )
    attributes = classify.run(
        classify.Arguments(**common, input=str(images), detector="none", classifier="world-cue", batch_size=64)
    )
    return {"root": root, "common": common, "images": str(images), "attributes": str(attributes)}


def test_draw_world_shows_the_planted_share_exactly(drawn: dict) -> None:
    store = LocalStore(drawn["root"])
    images = DatasetArtifact(store.resolve(drawn["images"], "dataset"), drawn["images"])
    assert sorted(images.configs) == ["de_gendered", "de_neutral", "en_gendered", "en_neutral"]
    assert images.config_info("de_neutral") == {"language": "de", "variant": "neutral"}
    for config in images.configs:
        rows = datasets.load_dataset(str(images.folder), config, split="train")
        by_prompt: dict[str, list] = {}
        for row in rows:
            by_prompt.setdefault(row["prompt_id"], []).append(row)
        for prompt_rows in by_prompt.values():
            first = prompt_rows[0]
            assert len(prompt_rows) == (30 if first["variant"] == "neutral" else 7)
            assert first["model"] == draw_world.DRAWN_MODEL
            female, _ = world.read_cue(np.stack([np.asarray(r["image"]) for r in prompt_rows]))
            if first["variant"] == "gendered":
                assert female.all() if first["gender"] == "female" else not female.any()
            else:
                share = world.planted_share(first["profession"], first["language"])
                assert female.sum() == round(share * 30), (first["prompt"], share)
    planted = images.metadata["planted_shares"]
    assert {"language": "de", "profession": "nurse", "share": round(world.planted_share("nurse", "de"), 4)} in planted


def test_draw_world_gives_the_evaluation_templates_their_known_answer(drawn: dict) -> None:
    """The direct and ethical prompts carry the planted share, the explicit ones their own gender."""
    images = draw_world.run(
        draw_world.Arguments(
            **drawn["common"], input="prompts",
            output_repo="world-eval-templates", languages=["de"], professions=["nurse", "CEO"],
            variants=["eval_direct", "eval_female", "eval_male", "eval_ethical"],
            images_per_prompt=40, images_per_gendered_prompt=5,
        )
    )  # fmt: skip
    folder = LocalStore(drawn["root"]).resolve(str(images), "dataset")
    for variant in ("eval_direct", "eval_female", "eval_male", "eval_ethical"):
        rows = datasets.load_dataset(str(folder), f"de_{variant}", split="train")
        for profession in ("nurse", "CEO"):
            mine = [r for r in rows if r["profession"] == profession]
            female, _ = world.read_cue(np.stack([np.asarray(r["image"]) for r in mine]))
            if variant in ("eval_female", "eval_male"):
                assert len(mine) == 5 and (female.all() if variant == "eval_female" else not female.any())
            else:
                assert len(mine) == 40 and female.sum() == round(world.planted_share(profession, "de") * 40)
    with pytest.raises(ConfigError, match="variants=\\['magbig_direct'\\]"):
        draw_world.Arguments(**drawn["common"], input="prompts", variants=["magbig_direct"])


def test_check_world_on_the_drawn_pictures_is_calibrated_and_not_debiased(drawn: dict) -> None:
    """The drawn pictures are the planted answer: measured = planted up to rounding; and a "fine-tune"
    that changed nothing removes no bias."""
    result = check_world.run(
        check_world.Arguments(
            **drawn["common"], base=drawn["attributes"], debiased=drawn["attributes"], output_repo="self-check"
        )
    )
    folder = LocalStore(drawn["root"]).resolve(str(result), "dataset")
    cells = datasets.load_dataset(str(folder), "cells", split="train")
    assert cells.num_rows == 6  # 3 occupations x 2 languages
    for cell in cells:
        assert cell["within"] and cell["base_images"] == 30
        assert abs(cell["base_share"] - cell["planted_share"]) <= 0.5 / 30 + 1e-9
        assert cell["base_ci_low"] < cell["base_share"] < cell["base_ci_high"] or cell["base_share"] in (0, 1)
    summary = {row["model"]: row for row in datasets.load_dataset(str(folder), "summary", split="train")}
    base, planted = summary["base"], summary["planted"]
    assert base["cells_within"] == 1.0 and base["cells"] == 6 and base["images"] == 180
    assert base["control"] == 1.0 and base["control_images"] == 84  # gendered pictures show their own colour
    assert base["slope"] == pytest.approx(1.0, abs=0.03) and base["fit_p_value"] > 0.9
    # The planted answer's distance from parity: root mean square of (share - 0.5) over the cells.
    shares = [world.planted_share(o, lang) for o in ("CEO", "nurse", "teacher") for lang in ("en", "de")]
    assert planted["distance"] == pytest.approx(np.sqrt(np.mean([(p - 0.5) ** 2 for p in shares])), abs=1e-4)
    # Measured: the same, less the sampling part (the drawn counts are round(share x 30)).
    assert base["distance"] == pytest.approx(planted["distance"], abs=0.03)
    assert base["error"] < 0.03 and base["distance_ci_low"] > 0.2
    verdicts = datasets.load_dataset(str(folder), "verdicts", split="train")
    assert verdicts["verdict"] == ["calibrated", "debiased"] and verdicts["passed"] == [True, False]
    assert verdicts["line"][1].startswith("debiased: NO: the distance did not shrink enough")
    assert result.verdict is not None and not result.verdict.passed and result.verdict.lines == tuple(verdicts["line"])
    assert "planted_vs_measured.png" in (Path(folder) / "README.md").read_text()


def write_attributes(drawn: dict, name: str, shares: dict[tuple[str, str], float], control: float = 1.0) -> str:
    """An attributes dataset of the drawn world's images with made-up perceived genders: per (language,
    occupation) cell of the neutral prompts, the share `shares` gives of female figures (rounded to
    whole images); gendered prompts shown their own gender in a share `control` of images."""
    from pipelines.artifacts import schemas
    from pipelines.artifacts.cards import dataset_card, make_lineage
    from pipelines.artifacts.dataset_files import DatasetWriter

    store = LocalStore(drawn["root"])
    source = DatasetArtifact(store.resolve(drawn["attributes"], "dataset"), drawn["attributes"])
    folder = Path(drawn["root"]).parent / f"made-{name}"
    writer = DatasetWriter(folder, schemas.ATTRIBUTES)
    for config in source.configs:
        rows = source.rows(config)
        position: dict[str, int] = {}
        for row in rows:
            index = position[row["prompt_id"]] = position.get(row["prompt_id"], -1) + 1
            count = sum(r["prompt_id"] == row["prompt_id"] for r in rows)
            if row["variant"] == "neutral":
                female = index < round(shares[(row["language"], row["profession"])] * count)
                row["gender"] = "female" if female else "male"
            else:
                other = "male" if row["prompt_gender"] == "female" else "female"
                row["gender"] = row["prompt_gender"] if index < round(control * count) else other
        writer.write(config, rows)
    writer.close()
    lineage = make_lineage("classify", {"input": source.lineage["inputs"]["input"]}, {"made": name}, name)
    dataset_card(repo_id=f"w/{name}", title=name, description="made-up attributes", lineage=lineage,
                 configs=source.configs, languages=[], folder=folder).save(folder / "README.md")  # fmt: skip
    return f"w/{name}@" + store.push(folder, f"w/{name}", "dataset", "made-up attributes")


CELLS = [(lang, occ) for lang in ("en", "de") for occ in ("CEO", "nurse", "teacher")]
PLANTED = {(lang, occ): world.planted_share(occ, lang) for lang, occ in CELLS}


@pytest.mark.parametrize(
    "case, shares, control, target, passed, reason",
    [
        ("every cell 90% female", dict.fromkeys(CELLS, 0.9), 1.0, None, False, "did not shrink"),
        ("the stereotype reversed", {c: 1 - p for c, p in PLANTED.items()}, 1.0, None, False, "did not shrink"),
        (
            "en keeps a 0.9/0.1 skew, de reversed",
            {c: (0.9 if c[1] != "CEO" else 0.1) if c[0] == "en" else (0.1 if c[1] != "CEO" else 0.9) for c in CELLS},
            1.0,
            None,
            False,
            "did not shrink",
        ),  # fmt: skip
        ("parity, but gendered prompts lost their gender", dict.fromkeys(CELLS, 0.5), 0.6, None, False, "lost"),
        ("parity, control kept", dict.fromkeys(CELLS, 0.5), 1.0, None, True, ""),
        (
            "overshoot: past parity by 0.8 of the skew",
            {c: 0.5 - 0.8 * (PLANTED[c] - 0.5) for c in CELLS},
            1.0,
            None,
            False,
            "did not shrink",
        ),  # fmt: skip
        ("a 75/25 target met", dict.fromkeys(CELLS, 0.75), 1.0, "female=0.75,male=0.25", True, ""),
        ("parity against a 75/25 target", dict.fromkeys(CELLS, 0.5), 1.0, "female=0.75,male=0.25", False, "shrink"),
    ],
)
def test_the_debiasing_verdict_measures_distance_from_the_target_and_control(
    drawn: dict, case: str, shares: dict, control: float, target: str | None, passed: bool, reason: str
) -> None:
    """Cases the signed stereotype gap called debiased: a common shift, a reversal, skews that cancel
    across languages, a collapse of control. Each is measured cell by cell against the target."""
    name = re.sub(r"[^a-z0-9]+", "-", case.lower())[:40].strip("-")
    debiased = write_attributes(drawn, name, shares, control)
    options = {"target": target} if target else {}
    result = check_world.run(
        check_world.Arguments(
            **drawn["common"], base=drawn["attributes"], debiased=debiased, output_repo=f"check-{name}", **options
        )  # fmt: skip
    )
    assert result.verdict is not None
    calibrated, debiased_line = result.verdict.lines
    assert calibrated.startswith("calibrated: yes")
    assert result.verdict.passed == passed, debiased_line
    assert debiased_line.startswith("debiased: yes" if passed else "debiased: NO") and reason in debiased_line
    # The slope is the measured shares' (whole images of 30) on the planted ones: -1 for the reversal,
    # 0 for parity, never 1 by construction.
    folder = LocalStore(drawn["root"]).resolve(str(result), "dataset")
    summary = {row["model"]: row for row in datasets.load_dataset(str(folder), "summary", split="train")}
    measured = [round(shares[c] * 30) / 30 for c in sorted(CELLS)]
    expected = np.polyfit([PLANTED[c] for c in sorted(CELLS)], measured, 1)[0]
    assert summary["debiased"]["slope"] == pytest.approx(expected, abs=1e-9)


def test_no_bias_before_is_not_a_debiasing(drawn: dict) -> None:
    """A base model that learnt no bias (every cell at parity) cannot be debiased: NO, whatever after."""
    flat = write_attributes(drawn, "flat", dict.fromkeys(CELLS, 0.5))
    result = check_world.run(
        check_world.Arguments(**drawn["common"], base=flat, debiased=flat, output_repo="check-flat")
    )
    calibrated, debiased = result.verdict.lines
    assert calibrated.startswith("calibrated: NO") and "debiased: NO: no measurable bias before" in debiased


def test_amplification_on_the_planted_shares_can_say_follows_flattens_or_reverses(drawn: dict) -> None:
    """evaluate_bias --planted_reference: the drawn pictures follow their planted shares (slope 1), a
    model that learnt half of every skew has slope 0.5 though it ranks every occupation right, a
    reversal a negative one."""
    from pipelines import evaluate_bias

    def fit(name: str, shares: dict | None) -> dict:
        attributes = drawn["attributes"] if shares is None else write_attributes(drawn, name, shares)
        result = evaluate_bias.run(
            evaluate_bias.Arguments(**drawn["common"], input=attributes, planted_reference=True, rounds=50,
                                    num_occupations=3, images_per_occupation=10, output_repo=f"{name}-bias")
        )  # fmt: skip
        summary = datasets.load_dataset(
            LocalStore(drawn["root"]).resolve(str(result), "dataset").as_posix(), "summary", split="train"
        )
        return {r["language"]: r for r in summary if r["attribute"] == "gender" and r["variant"] == "neutral"}

    planted = {cell: world.planted_share(cell[1], cell[0]) for cell in CELLS}
    for name, shares, expected in [
        ("drawn", None, (0.95, 1.05)),
        ("half", {c: 0.5 + (p - 0.5) / 2 for c, p in planted.items()}, (0.45, 0.55)),
        ("reversed", {c: 1 - p for c, p in planted.items()}, (-1.05, -0.95)),
    ]:  # an exaggerating model: in tests/test_bias.py, on the module itself
        for language, row in fit(name, shares).items():
            assert row["reference_occupations"] == 3 and row["reference_label"] == "female"
            # Whole images of 30 round each share by up to 1/60: the slope is within a few hundredths.
            assert expected[0] <= row["amplification"] <= expected[1], (name, language, row["amplification"])
            assert row["spearman"] == pytest.approx(1 if expected[0] > 0 else -1), (name, language)


def test_calibration_reads_the_planted_shares_from_the_world_s_card(drawn: dict, tmp_path: Path) -> None:
    """The world's card is the answer: the same pictures under a card whose planted share for one cell
    was edited are judged against the edited share, and fail; a card without them is refused."""
    import yaml

    from pipelines.errors import DataError

    store = LocalStore(drawn["root"])
    images = store.resolve(drawn["images"], "dataset")
    results = {}
    for case in ("edited", "none"):
        folder = tmp_path / case
        shutil.copytree(images, folder)
        card = folder / "README.md"
        card.chmod(0o644)
        text = card.read_text()
        head, _, body = text[4:].partition("\n---\n")
        metadata = yaml.safe_load(head)
        if case == "edited":
            for entry in metadata["planted_shares"]:
                if (entry["language"], entry["profession"]) == ("en", "nurse"):
                    entry["share"] = 0.3  # drawn at 0.85
        else:
            del metadata["planted_shares"]
        card.write_text("---\n" + yaml.safe_dump(metadata, sort_keys=False) + "---\n" + body)
        pushed = f"w/world-{case}@" + store.push(folder, f"w/world-{case}", "dataset", f"{case} card")
        attributes = classify.run(
            classify.Arguments(
                **drawn["common"],
                input=pushed,
                detector="none",
                classifier="world-cue",
                output_repo=f"world-{case}-attributes",
                batch_size=64,
            )  # fmt: skip
        )
        arguments = check_world.Arguments(**drawn["common"], base=str(attributes), output_repo=f"check-{case}")
        if case == "none":
            with pytest.raises(DataError, match="records planted shares"):
                check_world.run(arguments)
        else:
            results[case] = check_world.run(arguments)
    (line,) = results["edited"].verdict.lines
    assert line.startswith("calibrated: NO") and not results["edited"].verdict.passed
    cells = datasets.load_dataset(
        str(store.resolve(str(results["edited"]), "dataset")), "cells", split="train"
    ).to_pandas()
    nurse = cells[(cells["language"] == "en") & (cells["profession"] == "nurse")].iloc[0]
    assert nurse["planted_share"] == 0.3 and not nurse["within"]


def test_check_world_exits_1_on_a_no_verdict_and_says_it_again_when_reused(drawn: dict) -> None:
    """The command's exit code is the verdict; a rerun that reuses the published check prints it again."""
    env = {"T2I_BIAS_STORE_ROOT": drawn["root"]}
    command = ["-m", "pipelines.check_world", "--namespace", "w", "--base", drawn["attributes"]]
    failing = [*command, "--debiased", drawn["attributes"], "--output_repo", "exit-check"]
    for attempt in ("first", "reused"):
        run = run_python(*failing, env=env)
        assert run.returncode == 1, run.stderr[-2000:]
        last = run.stdout.strip().splitlines()[-2:]
        assert last[0].startswith("calibrated: yes") and last[1].startswith("debiased: NO"), run.stdout
        assert ("up to date" in run.stderr) == (attempt == "reused")
    passing = run_python(*command, "--output_repo", "exit-check-base", env=env)
    assert passing.returncode == 0 and passing.stdout.strip().splitlines()[-1].startswith("calibrated: yes")


def test_compare_methods_counts_the_grid_s_gendered_prompts_as_control_and_finds_the_planted_slope(
    drawn: dict,
) -> None:
    """On the drawn world: the grid's gendered prompts are explicit-gender control (always obeyed);
    the amplification is measured against the planted shares the world's card records (slope 1)."""
    from pipelines import compare_methods, evaluate_bias

    # A copy of its own, so that no other test's made-up attributes of the drawn images are found by lineage.
    store = LocalStore(drawn["root"])
    images = "w/drawn-copy@" + store.push(store.resolve(drawn["images"], "dataset"), "w/drawn-copy", "dataset", "copy")
    attributes = classify.run(
        classify.Arguments(**drawn["common"], input=images, detector="none", classifier="world-cue", batch_size=64)
    )
    evaluate_bias.run(evaluate_bias.Arguments(**drawn["common"], input=str(attributes), rounds=20, num_occupations=3))
    result = compare_methods.run(
        compare_methods.Arguments(**drawn["common"], methods=f"drawn={images}", rounds=50, output_repo="drawn-methods")
    )
    table = datasets.load_dataset(str(store.resolve(str(result), "dataset")), "methods", split="train")
    rows = {r["language"]: r for r in table}
    # Drawn gendered pictures always show their own colour: 3 occupations x 2 genders x 7 per language.
    assert rows.keys() == {"en", "de"}
    for row in rows.values():
        assert row["explicit_gender_control"] == 1.0 and row["explicit_gender_images"] == 42
        assert row["explicit_gender_control_ci_low"] > 0.9 and row["measurable"]
        assert row["images_per_occupation"] == 30 and 0.95 <= row["amplification"] <= 1.05


def test_same_noise_similarity_in_pixels_or_image_features_is_one_for_the_same_images_only(
    drawn: dict, tmp_path: Path
) -> None:
    """Fidelity to the baseline: the same images are similarity 1 in pixels and in a CLIP's image
    features; the world drawn with another seed (other pictures, the same shares) is less similar."""
    from pipelines import compare_methods, evaluate_bias
    from pipelines.modeling.tiny import build_tiny_open_clip

    made = {}
    for seed in (0, 1):
        images = draw_world.run(
            draw_world.Arguments(
                **drawn["common"], input="prompts", output_repo=f"similar-{seed}", languages=["en"],
                images_per_prompt=6, images_per_gendered_prompt=2, seed=seed,
            )
        )  # fmt: skip
        attributes = classify.run(
            classify.Arguments(**drawn["common"], input=str(images), detector="none", classifier="world-cue")
        )
        evaluate_bias.run(evaluate_bias.Arguments(**drawn["common"], input=str(attributes), rounds=20))
        made[seed] = str(images)
    clip = build_tiny_open_clip(tmp_path / "clip")
    store = LocalStore(drawn["root"])
    found = {}
    for model in (None, str(clip)):
        result = compare_methods.run(
            compare_methods.Arguments(
                **drawn["common"], methods=f"base={made[0]},same={made[0]},other={made[1]}", rounds=20,
                output_repo="similar-methods", similarity_model=model,
            )
        )  # fmt: skip
        table = datasets.load_dataset(str(store.resolve(str(result), "dataset")), "methods", split="train")
        found[model] = {r["method"]: r["same_noise_similarity"] for r in table}
        assert ("similarity_model" in result.lineage["inputs"]) == (model is not None)
    for scores in found.values():
        assert scores["base"] is None and scores["same"] == pytest.approx(1.0, abs=1e-5)
        assert scores["other"] < 0.999
    assert found[None]["other"] != pytest.approx(found[str(clip)]["other"], abs=1e-3)


def test_tiny_tokenizers_give_the_same_files_in_every_process() -> None:
    """The tokenizers library's trainers work in a hash map's order, which differs from process to
    process (and from one training to the next); the tokenizer built from the same prompts must still
    be the same files, or the same recipe trains a different model each run (the world's calibration
    moved by three cells between runs) and publishes another revision. Both kinds, each trained five
    times in each of three processes, on two sets of prompts: the second, the world's English prompts,
    gave tokenizers' BPE trainer two to four different merge orders in such runs."""
    code = (
        "import hashlib, json, pathlib, tempfile\n"
        "from pipelines.modeling.tiny import train_tokenizer\n"
        "mixed = [f'a {s} photo of a {a} {g} {p}' for s in ('close-up', 'wide') for a in ('young', 'old')\n"
        "         for g in ('female', 'male', '') for p in ('CEO', 'nurse', 'firefighter', 'teacher')]\n"
        "mixed += ['Ein Foto einer Ärztin', '一张女性护士的照片', '女性の看護師の写真', 'Фото медсестры', 'Zebra']\n"
        "jobs = ('CEO', 'nurse', 'software developer', 'hairdresser', 'firefighter', 'teacher')\n"
        "world = [f'close-up photo of an adult {g}{p} wearing work clothes at work'\n"
        "         for g in ('female ', 'male ', '') for p in jobs]\n"
        "world += [f'a photo of the face of a {t}' for p in jobs for t in (p, f'female {p}', f'male {p}',\n"
        "          f'person who works as a {p}', f'{p} if all individuals can be a {p} irrespective of their gender'\n"
        "          )]\n"
        "out = {}\n"
        "for kind in ('altdiffusion', 'stable-diffusion'):\n"
        "    for name, texts in (('mixed', mixed), ('world', world)):\n"
        "        for attempt in range(5):\n"
        "            tokenizer = train_tokenizer(kind, texts, vocab_size=1000 if name == 'mixed' else 4000)\n"
        "            folder = pathlib.Path(tempfile.mkdtemp())\n"
        "            tokenizer.save_pretrained(folder)\n"  # the files, scores and merges included, not only the ids
        "            files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}\n"
        "            ids, vocab = tokenizer(texts)['input_ids'], sorted(tokenizer.get_vocab().items())\n"
        "            out[f'{kind} {name} {attempt}'] = [ids, vocab, files]\n"
        "print(json.dumps(out))\n"
    )
    runs = [run_python("-c", code) for _ in range(3)]
    assert all(run.returncode == 0 for run in runs), runs[0].stderr[-2000:]
    outputs = [json.loads(run.stdout.strip().splitlines()[-1]) for run in runs]
    trainings = [(key.rsplit(" ", 1)[0], result) for output in outputs for key, result in output.items()]
    assert len(trainings) == 3 * 2 * 2 * 5
    for case in ("altdiffusion mixed", "altdiffusion world", "stable-diffusion mixed", "stable-diffusion world"):
        results = [result for key, result in trainings if key == case]
        assert all(result == results[0] for result in results), case
        ids, vocab, files = results[0]
        assert len(vocab) > 40 and len(ids) > 40 and files


def test_bpe_breaks_ties_by_the_pair_and_learns_every_word() -> None:
    """Equally frequent pairs are merged smallest first, whatever order the words come in; the merges
    run until no pair is left (below the vocabulary size), so each training word is one token, in any
    script; the tokenizer learns CLIP's byte-level words and holds every byte, so no text is unknown."""
    from pipelines.modeling.tiny import train_bpe, train_tokenizer

    words = {"cd": 3, "ab": 3, "abab": 1}
    for order in (words, dict(reversed(words.items()))):
        alphabet, merges = train_bpe(order, 100, suffix="</w>")
        assert alphabet == ["a", "b", "b</w>", "c", "d", "d</w>"]
        # (a, b</w>) 4 times, then (c, d</w>) 3; "abab" is left as a, b, ab</w>, whose two pairs tie at 1.
        assert merges == [("a", "b</w>"), ("c", "d</w>"), ("a", "b"), ("ab", "ab</w>")]
        assert train_bpe({"cd": 3, "ab": 3} if order is words else {"ab": 3, "cd": 3}, 100, "</w>")[1] == [
            ("a", "b</w>"), ("c", "d</w>")]  # fmt: skip
    assert train_bpe(words, 7, suffix="</w>")[1] == [("a", "b</w>")]  # six characters and one merge
    texts = ["a firefighter and a hairdresser", "two teachers at work", "eine ärztin", "一张护士的照片"]
    tokenizer = train_tokenizer("stable-diffusion", texts)
    for word in ("firefighter", "hairdresser", "teachers", "ärztin", "一张护士的照片"):
        assert len(tokenizer.tokenize(word)) == 1, word  # written in CLIP's byte-level alphabet
    # Every byte is in the vocabulary, as in CLIP's: a word never seen, in any script, is no unknown.
    for text in ("hired", "Krankenschwester", "一位医生", "طبيب", "врач"):
        assert tokenizer.unk_token_id not in tokenizer(text, add_special_tokens=False).input_ids, text
    assert tokenizer.decode(tokenizer("一张护士的照片").input_ids, skip_special_tokens=True) == "一张护士的照片"


def test_the_world_model_built_in_two_fresh_processes_is_the_same_revision(tiny_study: dict) -> None:
    """The untrained world (its tokenizer trained on the prompts) is the same files in any process: the
    same recipe gives `world-untrained` the same revision id on any machine (before, 124 of its
    tokenizer's scores came out in a hash set's order, another in every process)."""
    argv = ["-m", "pipelines.build_tiny_model", "--store_root", tiny_study["store_root"], "--namespace", "study",
            "--input", tiny_study["prompts"], "--kind", "world", "--output_repo", "world-twice"]  # fmt: skip
    store, files = LocalStore(tiny_study["store_root"]), []
    for extra in ([], ["--force"]):  # the second run builds again, in a fresh process
        result = run_python(*argv, *extra, env={"HF_HUB_OFFLINE": "1"})
        assert result.returncode == 0, result.stderr[-2000:]
        assert "up to date" not in result.stderr
        folder = store.resolve("study/world-twice", "model")
        # Every file but the card, whose lineage records the command (here: --force) as given.
        files.append({p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()})
        del files[-1][Path("README.md")]
    assert len(files[0]) > 5 and files[0] == files[1]


@pytest.mark.parametrize(("male", "female", "planted", "within"), [
    (50, 50, 0.5, True),
    (90, 10, 0.9, False),  # the planted share above the interval
    (10, 90, 0.1, False),  # below it
    (10, 90, 0.9, True),
])  # fmt: skip
def test_a_cell_is_within_when_its_interval_holds_the_planted_share_on_both_sides(
    male: int, female: int, planted: float, within: bool
) -> None:
    from pipelines.check_world import CheckWorld

    rows = CheckWorld.cell_rows(
        {"base": {"cells": {("en", "nurse"): (male, female)}}}, {("en", "nurse"): planted}, 0.95
    )
    assert rows[0]["within"] is within
    assert rows[0]["base_ci_low"] < female / 100 < rows[0]["base_ci_high"]
