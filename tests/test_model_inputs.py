"""Every model input as users give it, on every stage that takes a model: a store repo, a folder
(absolute or relative), a weights file, a Hub id with or without a revision, open_clip's `hf-hub:`
names; pinned in the lineage by commit or content hash, never by an absolute path; and the bad
ones refused in one line with exit code 2, nothing published."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import datasets
import pytest

from pipelines import build_tiny_model, classify, evaluate_alignment, generate_images
from pipelines.artifacts.inputs import content_hash, resolve_model
from pipelines.artifacts.store import LocalStore
from pipelines.errors import ConfigError
from pipelines.harness.stage import Published

from .conftest import REPO_ROOT, image_arguments, run_python

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def put_in_hf_cache(folder: Path, repo_id: str, commit: str = COMMIT) -> None:
    """Lays a folder out in the Hugging Face cache as `snapshot_download` leaves a Hub repo, so
    offline resolution finds it exactly as it finds a model downloaded before."""
    from huggingface_hub import constants

    repo = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / commit, dirs_exist_ok=True)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)


@pytest.fixture(scope="module")
def models(tiny_study: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The session's tiny models as a user would have them: store repos, folders, files, Hub caches."""
    store = LocalStore(tiny_study["store_root"])
    common = {"store_root": tiny_study["store_root"], "namespace": "study"}
    fairface = build_tiny_model.run(build_tiny_model.Arguments(**common, kind="fairface"))
    clip = build_tiny_model.run(build_tiny_model.Arguments(**common, kind="open-clip"))
    here = tmp_path_factory.mktemp("user-files")
    folders = {}
    for name, ref in {"altdiffusion": tiny_study["model"], "fairface": str(fairface), "clip": str(clip)}.items():
        folders[name] = here / name
        shutil.copytree(store.resolve(ref, "model"), folders[name], symlinks=False)
    weights = here / "res34_fair_align_multi_7_20190809.pt"
    shutil.copyfile(folders["fairface"] / "res34_fair_align_multi_7.pt", weights)
    put_in_hf_cache(folders["altdiffusion"], "someone/tiny-altdiffusion")
    put_in_hf_cache(folders["clip"], "someone/tiny-open-clip")
    paths = {f"{name}_folder": folder for name, folder in folders.items()} | {"here": here, "weights": weights}
    refs = {
        "model": tiny_study["model"],
        "fairface": str(fairface),
        "clip": str(clip),
        "prompts": tiny_study["prompts"],
    }
    return {**common, **paths, **refs}


def published_text(store: LocalStore, published: Published) -> str:
    """Everything a published artifact holds as text: card, lineage and every row."""
    folder = store.resolve(str(published), published.repo_type)
    parts = [(folder / "README.md").read_text()]
    for parquet in sorted(folder.rglob("*.parquet")):
        table = datasets.Dataset.from_parquet(str(parquet))
        columns = [c for c, f in table.features.items() if getattr(f, "dtype", None) == "string"]
        parts.append(json.dumps(table.select_columns(columns).to_list(), ensure_ascii=False))
    return "\n".join(parts)


def assert_no_local_paths(text: str, *folders: Path) -> None:
    for folder in folders:
        assert str(folder) not in text and str(folder.parent) not in text


GENERATE_FORMS = {
    "store name": lambda m: ("tiny-altdiffusion", "study/tiny-altdiffusion@"),
    "store name at its revision": lambda m: (m["model"], m["model"]),
    "absolute folder": lambda m: (str(m["altdiffusion_folder"]), "folder:altdiffusion@sha256:"),
    "relative folder": lambda m: (os.path.relpath(m["altdiffusion_folder"], REPO_ROOT), "folder:altdiffusion@sha256:"),
    "Hub id (cached)": lambda m: ("someone/tiny-altdiffusion", f"someone/tiny-altdiffusion@{COMMIT}"),
    "Hub id at a revision": lambda m: (f"someone/tiny-altdiffusion@{COMMIT}", f"someone/tiny-altdiffusion@{COMMIT}"),
}


@pytest.mark.parametrize("form", list(GENERATE_FORMS))
def test_generate_images_takes_every_model_form(
    models: dict, form: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    spec, pin = GENERATE_FORMS[form](models)
    monkeypatch.chdir(REPO_ROOT)  # relative paths are relative to where the user runs the command
    study = {**models, "store_root": str(tmp_path / "hub")}
    shutil.copytree(models["store_root"], study["store_root"], symlinks=True)
    published = generate_images.run(
        image_arguments(study, model=spec, languages=["en"], professions=["nurse"], num_images=1)
    )
    assert published.lineage["inputs"]["model"].startswith(pin)
    if form.endswith("folder"):
        assert published.lineage["inputs"]["model"] == f"{pin}{content_hash(models['altdiffusion_folder'])}"
    store = LocalStore(study["store_root"])
    rows = store.resolve(str(published), "dataset")
    images = datasets.load_dataset(str(rows), "en_eval_direct", split="train")
    assert len(images) == 1 and {row["model"] for row in images} == {published.lineage["inputs"]["model"]}
    assert_no_local_paths(published_text(store, published), models["here"])


def test_changed_weights_in_a_folder_are_a_new_input(models: dict, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(models["altdiffusion_folder"], folder)
    study = {**models, "store_root": str(tmp_path / "hub")}
    shutil.copytree(models["store_root"], study["store_root"], symlinks=True)
    arguments = {"model": str(folder), "languages": ["en"], "professions": ["nurse"], "num_images": 1}
    first = generate_images.run(image_arguments(study, **arguments))
    assert generate_images.run(image_arguments(study, **arguments)).reused
    config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({**config, "beta_end": 0.02}))
    second = generate_images.run(image_arguments(study, **arguments))
    assert not second.reused and second.revision != first.revision
    assert second.lineage["inputs"]["model"] != first.lineage["inputs"]["model"]


CLASSIFIER_FORMS = {
    "store repo": lambda m: (m["fairface"], m["fairface"]),
    "folder": lambda m: (str(m["fairface_folder"]), "folder:fairface@sha256:"),
    "FairFace's file name": lambda m: (str(m["weights"]), "file:res34_fair_align_multi_7_20190809.pt@sha256:"),
}


@pytest.mark.parametrize("form", list(CLASSIFIER_FORMS))
def test_classify_takes_every_classifier_form(models: dict, form: str, tmp_path: Path) -> None:
    spec, pin = CLASSIFIER_FORMS[form](models)
    root = tmp_path / "hub"
    shutil.copytree(models["store_root"], root, symlinks=True)
    images = generate_images.run(
        image_arguments({**models, "store_root": str(root)}, languages=["en"], professions=["nurse"], num_images=1)
    )
    published = classify.run(
        classify.Arguments(
            store_root=str(root), namespace="study", input=str(images), detector="none", classifier_model=spec
        )
    )
    assert published.lineage["inputs"]["classifier_model"].startswith(pin)
    if form == "FairFace's file name":
        assert published.lineage["inputs"]["classifier_model"].endswith(content_hash(models["weights"]))
    store = LocalStore(root)
    rows = datasets.load_dataset(str(store.resolve(str(published), "dataset")), "en_eval_direct", split="train")
    assert len(rows) == 1 and set(rows["gender"]) <= {"male", "female"}
    assert_no_local_paths(published_text(store, published), models["here"])


CLIP_FORMS = {
    "store repo": lambda m: (m["clip"], m["clip"]),
    "folder": lambda m: (str(m["clip_folder"]), "folder:clip@sha256:"),
    "hf-hub name": lambda m: ("hf-hub:someone/tiny-open-clip", f"hf-hub:someone/tiny-open-clip@{COMMIT}"),
    "hf-hub name at a revision": lambda m: (
        f"hf-hub:someone/tiny-open-clip@{COMMIT}",
        f"hf-hub:someone/tiny-open-clip@{COMMIT}",
    ),
}


@pytest.mark.parametrize("form", list(CLIP_FORMS))
def test_evaluate_alignment_takes_every_clip_form(models: dict, form: str, tmp_path: Path) -> None:
    spec, pin = CLIP_FORMS[form](models)
    root = tmp_path / "hub"
    shutil.copytree(models["store_root"], root, symlinks=True)
    images = generate_images.run(
        image_arguments({**models, "store_root": str(root)}, languages=["en"], professions=["nurse"], num_images=1)
    )
    published = evaluate_alignment.run(
        evaluate_alignment.Arguments(
            store_root=str(root), namespace="study", input=str(images), clip_model=spec, clip_pretrained=None
        )
    )
    assert published.lineage["inputs"]["clip_model"] == pin or published.lineage["inputs"]["clip_model"].startswith(
        pin
    )
    store = LocalStore(root)
    scores = datasets.load_dataset(str(store.resolve(str(published), "dataset")), "en_eval_direct", split="train")
    assert len(scores) == 1 and all(-100 <= value <= 100 for value in scores["clip_en_occupation"])
    assert_no_local_paths(published_text(store, published), models["here"])


def test_library_names_stay_names_and_hub_ids_pin_their_commit(models: dict) -> None:
    store = LocalStore(models["store_root"])
    from pipelines.modeling.clip import is_open_clip_name

    named = resolve_model("ViT-L-14-quickgelu", store, kinds=("name",), is_library_name=is_open_clip_name)
    assert (named.kind, named.pin, named.path) == ("name", "ViT-L-14-quickgelu", None)
    hub = resolve_model("someone/tiny-altdiffusion", store, namespace="study")
    assert (hub.kind, hub.pin, hub.revision) == ("hub", f"someone/tiny-altdiffusion@{COMMIT}", COMMIT)
    assert (hub.path / "model_index.json").is_file()


def bad_inputs(models: dict, tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    """(command line, the message's fragment) for each bad model input, on each stage."""
    empty = tmp_path / "empty-folder"
    empty.mkdir(exist_ok=True)
    (empty / "notes.txt").write_text("no weights here")
    wrong = tmp_path / "res34_fair_align_multi_7_20190809.pt"
    import torch
    import torchvision

    torch.save(torchvision.models.resnet18(num_classes=18).state_dict(), wrong)
    images = ["--input", "images-x"]
    generate = ["-m", "pipelines.generate_images", "--input", models["prompts"], "--languages", "en"]
    return {
        "generate: missing folder": ([*generate, "--model", str(tmp_path / "nowhere")], "no such file or folder"),
        "generate: folder without a model": (
            [*generate, "--model", str(empty)],
            "neither model_index.json nor pytorch_lora_weights.safetensors",
        ),
        "generate: Hub id not cached offline": (
            [*generate, "--model", "BAAI/AltDiffusion-m9"],
            "not downloadable from the Hub: offline and not in the Hugging Face cache",
        ),
        "generate: model name typo": ([*generate, "--model", "tiny-altdifusion"], "no such model"),
        "classify: missing file": (
            ["-m", "pipelines.classify", *images, "--classifier_model", str(tmp_path / "missing.pt")],
            "no such file or folder",
        ),
        "classify: .pt of the wrong shape": (
            ["-m", "pipelines.classify", *images, "--classifier_model", str(wrong)],
            "not a FairFace ResNet-34 state dict",
        ),
        "classify: folder without a model": (
            ["-m", "pipelines.classify", *images, "--classifier_model", str(empty)],
            "expected one FairFace race-7 checkpoint",
        ),
        "alignment: unknown hf-hub name": (
            ["-m", "pipelines.evaluate_alignment", *images, "--clip_model", "hf-hub:nobody/no-such-clip"],
            "no such model",
        ),
        "alignment: unknown open_clip name": (
            ["-m", "pipelines.evaluate_alignment", *images, "--clip_model", "ViT-L-14-quikgelu"],
            "no such model",
        ),
        "training: folder without a model": (
            [
                "training/train_text_to_image.py",
                "--dataset_name",
                "images-x",
                "--pretrained_model_name_or_path",
                str(empty),
            ],
            "neither model_index.json nor pytorch_lora_weights.safetensors",
        ),  # fmt: skip
    }


BAD_CASES = [
    "generate: missing folder",
    "generate: folder without a model",
    "generate: Hub id not cached offline",
    "generate: model name typo",
    "classify: missing file",
    "classify: .pt of the wrong shape",
    "classify: folder without a model",
    "alignment: unknown hf-hub name",
    "alignment: unknown open_clip name",
    "training: folder without a model",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_model_inputs_are_one_line_exit_2_and_publish_nothing(models: dict, case: str, tmp_path: Path) -> None:
    root = tmp_path / "hub"
    shutil.copytree(models["store_root"], root, symlinks=True)
    images = generate_images.run(
        image_arguments({**models, "store_root": str(root)}, languages=["en"], professions=["nurse"], num_images=1)
    )
    store = LocalStore(root)

    def published() -> dict:
        return {
            (kind, repo): store.revisions(repo, kind)
            for kind in ("dataset", "model")
            for repo in store.repos("study", kind)
        }

    before = published()
    command, fragment = bad_inputs(models, tmp_path)[case]
    command = [part if part != "images-x" else str(images) for part in command]
    result = run_python(*command, "--store_root", str(root), "--namespace", "study", env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], result.stderr[-2000:]
    assert published() == before
    assert not list((root / ".staging").glob("*")) if (root / ".staging").exists() else True


def test_resolution_errors_are_config_errors_naming_the_input(models: dict, tmp_path: Path) -> None:
    store = LocalStore(models["store_root"])
    with pytest.raises(ConfigError, match=r"^model='nope/x/y': no such file or folder$"):
        resolve_model("nope/x/y", store, what="model")
    with pytest.raises(ConfigError, match=r"^clip_model='hf-hub:nobody/x': no such model"):
        resolve_model("hf-hub:nobody/x", store, what="clip_model")
    with pytest.raises(ConfigError, match=r"^model='.*\.pt' is a file; a model folder or repo is expected$"):
        resolve_model(str(models["weights"]), store, what="model", kinds=("store", "folder"))
