"""MAGBIG's prompt sets as a prompts dataset, from its published CSV files and from the Hub's layout."""

from __future__ import annotations

import csv
from pathlib import Path

import datasets
import pytest

from pipelines import import_magbig
from pipelines.artifacts.store import LocalStore
from pipelines.errors import DataError
from pipelines.prompting.grammar import LANGUAGES
from pipelines.prompting.grid import prompt_id
from pipelines.prompting.magbig import LANGUAGE_NAMES

from .conftest import REPO_ROOT, readme_block, run_python

MAGBIG = REPO_ROOT.parent / "shared" / "reference" / "magbig"  # read, never copied into the project
pytestmark = pytest.mark.skipif(not MAGBIG.is_dir(), reason="MAGBIG's published files are not beside the checkout")
CODES = {code: name for name, code in LANGUAGE_NAMES.items()}


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("magbig-hub")
    published = import_magbig.run(import_magbig.Arguments(store_root=str(root), namespace="study", source=str(MAGBIG)))
    folder = LocalStore(root).resolve(str(published), "dataset")
    return {"root": root, "folder": folder, "published": published}


def test_every_set_in_every_language_lined_up_by_prompt_id(imported: dict) -> None:
    folder = imported["folder"]
    by_language = {code: datasets.load_dataset(str(folder), code, split="train") for code in LANGUAGES}
    english = by_language["en"]
    for variant in ("magbig_direct", "magbig_indirect"):
        ids = [row["prompt_id"] for row in english if row["variant"] == variant]
        assert len(ids) == 151 == len(set(ids))
        for code, rows in by_language.items():
            assert [row["prompt_id"] for row in rows if row["variant"] == variant] == ids, (code, variant)
    assert sum(row["variant"] == "magbig_adjectives" for row in english) == 20
    # The German gender star exists in German only.
    assert sum(row["variant"] == "magbig_gender_star" for row in by_language["de"]) == 151
    assert not any(row["variant"] == "magbig_gender_star" for row in english)
    # Each row is MAGBIG's own prompt, its English name as the profession, the set's gender.
    with open(MAGBIG / "occ_german.csv", encoding="utf-8") as handle:
        german_csv = {row["name"]: row["prompt"] for row in csv.DictReader(handle)}
    accountant = next(
        r for r in by_language["de"] if r["variant"] == "magbig_direct" and r["profession"] == "accountant"
    )
    assert accountant["prompt"] == german_csv["accountant"] and accountant["language"] == "de"
    assert accountant["prompt_id"] == prompt_id("magbig_direct", "accountant") and accountant["gender"] is None
    indirect = next(r for r in by_language["ja"] if r["variant"] == "magbig_indirect")
    assert indirect["gender"] == "neutral"
    adjective = next(
        r for r in by_language["ru"] if r["variant"] == "magbig_adjectives" and r["profession"] == "assertive"
    )
    assert adjective["prompt"] == "фото лица напористого человека"  # MAGBIG's leading space stripped
    card = (folder / "README.md").read_text()
    assert "`magbig_direct` (151 entries)" in card and "Set(s) not in the source, skipped: feminine" in card


def write_hub_layout(folder: Path) -> Path:
    """A small stand-in for the Hub dataset felfri/MAGBIG: CSVs under data/, a column per language."""
    data = folder / "data"
    data.mkdir(parents=True)
    names = ["accountant", "nurse", "pilot"]
    for stem in ("occupations_direct", "occupations_indirect", "occupations_direct_feminine"):
        with open(data / f"{stem}-00000-of-00001.csv", "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["name", *LANGUAGE_NAMES])
            for name in names:
                writer.writerow([name, *(f"{stem} {name} in {language}" for language in LANGUAGE_NAMES)])
    with open(data / "occupations_german_gender_star-00000-of-00001.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "prompt"])
        for name in names:
            writer.writerow([name, f"Ein Foto des Gesichts eine*r {name}*in"])
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n# MAGBIG (stand-in)\n")
    return folder


def test_the_hub_layout_with_its_feminine_set(tmp_path: Path) -> None:
    source = write_hub_layout(tmp_path / "MAGBIG")
    published = import_magbig.run(
        import_magbig.Arguments(store_root=str(tmp_path / "hub"), namespace="study", source=str(source))
    )
    folder = LocalStore(tmp_path / "hub").resolve(str(published), "dataset")
    french = datasets.load_dataset(str(folder), "fr", split="train").to_pandas()
    feminine = french[french["variant"] == "magbig_feminine"]
    assert list(feminine["profession"]) == ["accountant", "nurse", "pilot"]
    assert list(feminine["prompt"]) == [f"occupations_direct_feminine {n} in french" for n in feminine["profession"]]
    assert set(feminine["gender"]) == {"female"}
    star = datasets.load_dataset(str(folder), "de", split="train").to_pandas()
    assert (
        list(star[star["variant"] == "magbig_gender_star"]["prompt"])[0]
        == "Ein Foto des Gesichts eine*r accountant*in"
    )
    assert "Set(s) not in the source, skipped: adjectives." in (folder / "README.md").read_text()


def test_misaligned_or_missing_sets_are_one_line_errors(tmp_path: Path) -> None:
    source = write_hub_layout(tmp_path / "MAGBIG")
    path = source / "data" / "occupations_direct-00000-of-00001.csv"
    rows = list(csv.reader(path.open(encoding="utf-8")))
    rows[2][2] = ""  # nurse's Chinese prompt is missing
    with open(path, "w", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerows(rows)
    with pytest.raises(DataError, match="MAGBIG direct: the zh prompts do not line up .* .missing: nurse.$"):
        import_magbig.run(import_magbig.Arguments(store_root=str(tmp_path / "hub"), source=str(source)))
    rows[2][2], rows[3][3] = "zh", ""  # now English itself lacks pilot: reported against English
    with open(path, "w", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerows(rows)
    with pytest.raises(DataError, match="the en prompts do not line up .* .missing: pilot.$"):
        import_magbig.run(import_magbig.Arguments(store_root=str(tmp_path / "hub"), source=str(source)))
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_python("-m", "pipelines.import_magbig", "--store_root", str(tmp_path / "hub"), "--source", str(empty))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("import_magbig: error: source=")
    assert "none of MAGBIG's sets" in result.stderr
    assert not LocalStore(tmp_path / "hub").exists("t2i-bias/magbig-prompts", "dataset")


def _break(path: Path, how: str) -> None:
    text = path.read_text(encoding="utf-8")
    header, *rows = text.splitlines()
    if how == "empty":
        path.write_text("")
    elif how == "header only":
        path.write_text(header + "\n")
    elif how == "latin-1":
        path.write_bytes((text + "x,Ein Foto eines Bäckers\n").encode("latin-1", errors="replace"))
    elif how == "binary":
        path.write_bytes(b"PK\x03\x04\x00\x00" + bytes(range(256)))
    elif how == "no name column":
        path.write_text(text.replace("name,", "occupation,", 1), encoding="utf-8")
    elif how == "a 1 MB field":
        path.write_text(text + rows[0].split(",")[0] + "-long," + "x" * 1_000_000 + "\n", encoding="utf-8")
    elif how == "a 20 kB field":
        path.write_text(text + rows[0].split(",")[0] + "-long," + "x" * 20_000 + "\n", encoding="utf-8")
    elif how == "a name twice":
        path.write_text(text + rows[0].split(",")[0] + ",another prompt\n", encoding="utf-8")


@pytest.mark.parametrize(
    "layout, how, message",
    [
        ("repo", "empty", "no column 'name', 'prompt'"),
        ("repo", "header only", "no rows"),
        ("repo", "latin-1", "not UTF-8 text"),
        ("repo", "binary", "not UTF-8 text"),
        ("repo", "no name column", "no column 'name'"),
        ("repo", "a 1 MB field", "field larger than field limit"),
        ("repo", "a 20 kB field", "a field of 20,000 characters"),
        ("repo", "a name twice", "is given twice, with different prompts"),
        ("hub", "header only", "no rows"),
        ("hub", "binary", "not UTF-8 text"),
        ("hub", "a name twice", "is given twice, with different prompts"),
    ],
)
def test_a_broken_prompt_file_is_one_line_and_publishes_nothing(
    tmp_path: Path, layout: str, how: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A prompt file that is empty, not UTF-8, binary, without MAGBIG's columns, with a huge field or a
    name twice: one line naming the file, exit 2, and no dataset (an empty import once became the
    `main` of the repo that held the real one)."""
    import shutil

    if layout == "repo":
        source = tmp_path / "MAGBIG"
        shutil.copytree(MAGBIG, source)
        path = source / "occ_english.csv"
    else:
        source = write_hub_layout(tmp_path / "MAGBIG")
        path = source / "data" / "occupations_direct-00000-of-00001.csv"
    _break(path, how)
    with pytest.raises(SystemExit) as exited:
        import_magbig.STAGE.main(["--store_root", str(tmp_path / "hub"), "--source", str(source)])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert exited.value.code == 2 and len(lines) == 1, err[-2000:]
    assert lines[0].startswith("import_magbig: error: ") and message in lines[0] and path.name in lines[0], lines[0]
    assert not (tmp_path / "hub").exists() or not any((tmp_path / "hub").glob("datasets--*"))


@pytest.mark.slow
@pytest.mark.timeout(1500)  # the recipe's own limit below
def test_the_magbig_recipe_runs_offline_on_the_tiny_models(tmp_path: Path) -> None:
    """Every step of the recipe on all of MAGBIG (151 occupations, ten languages), with one image per
    prompt instead of two, 50 bootstrap rounds instead of 200 and the tiny model at 32 px instead of 64
    (its weights are random, so its images carry nothing a smaller size loses; generation took 144 s
    of the test's 276 at 64 px, 31 s at 32, one CPU): the same code paths."""
    recipe = REPO_ROOT / "pipelines" / "recipes" / "magbig_offline.yaml"
    command = readme_block("study").split("pipelines.run")[0]  # the README's own way to run a recipe
    assert command
    result = run_python(
        "-m", "pipelines.run", str(recipe), "--store_root", str(tmp_path / "hub"),
        "--set", f"import_magbig.source={MAGBIG}", "--set", "generate_images.num_images=1",
        "--set", "evaluate_bias.rounds=50", "--set", "build_tiny_model.resolution=32",
        env={"HF_HUB_OFFLINE": "1"}, timeout=1500,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    store = LocalStore(tmp_path / "hub")
    summary = datasets.load_dataset(
        str(store.resolve("t2i-bias/images-magbig-bias", "dataset")), "summary", split="train"
    ).to_pandas()
    gender = summary[summary["attribute"] == "gender"]
    assert sorted(gender["language"]) == sorted(LANGUAGES) and set(gender["variant"]) == {"magbig_direct"}
    assert set(gender["num_images"]) == {151} and set(gender["k"]) == {10}
    alignment = datasets.load_dataset(
        str(store.resolve("t2i-bias/images-magbig-alignment", "dataset")), "summary", split="train"
    ).to_pandas()
    assert alignment["clip_en_indirect"].notna().all()
