"""The language-comparison Space on the offline study's outputs, the evaluate widgets, and publishing."""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import datasets
import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from pipelines.artifacts.store import LocalStore, parse_ref
from pipelines.modeling.tiny import build_tiny_open_clip

from .conftest import REPO_ROOT

if TYPE_CHECKING:
    import pandas as pd

CHROMIUM = "/usr/bin/chromium"
VERSIONS = "world-model=world-base-eval,world-debiased=world-debiased-eval"
SCREENSHOTS = REPO_ROOT / "tests" / "screenshots"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def load_app(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def launched_space(root: Path) -> Iterator[dict[str, Any]]:
    """The Space, launched on the store at `root` (configured by environment, as a Space is)."""
    previous = {k: os.environ.get(k) for k in ("T2I_BIAS_STORE_ROOT", "T2I_BIAS_SPACE_VERSIONS")}
    os.environ["T2I_BIAS_STORE_ROOT"] = str(root)
    os.environ["T2I_BIAS_SPACE_VERSIONS"] = VERSIONS
    try:
        app = load_app(REPO_ROOT / "spaces" / "compare_languages" / "app.py", "compare_languages_app")
    finally:
        for key, value in previous.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
    port = free_port()
    app.demo.launch(prevent_thread_lock=True, server_port=port, quiet=True, **app.LAUNCH)
    try:
        yield {"app": app, "url": f"http://127.0.0.1:{port}/", "store": LocalStore(root)}
    finally:
        app.demo.close()


@pytest.fixture(scope="module")
def space(offline_study: dict) -> Iterator[dict[str, Any]]:
    """The Space on the offline study's store, which its tests only read."""
    assert offline_study["result"].returncode == 0, offline_study["result"].stderr[-3000:]
    with launched_space(offline_study["root"]) as launched:
        yield launched


def published(store: LocalStore, repo: str, config: str) -> pd.DataFrame:
    return datasets.load_dataset(str(store.resolve(repo, "dataset")), config, split="train").to_pandas()


@pytest.mark.slow
def test_space_api_gives_the_study_s_own_figures(space: dict) -> None:
    client, store = Client(space["url"], verbose=False), space["store"]
    per = published(store, "t2i-bias/world-base-eval-bias", "per_occupation")
    summary = published(store, "t2i-bias/world-base-eval-bias", "summary")
    alignment = published(store, "t2i-bias/world-base-eval-alignment", "summary")
    attributes = published(store, "t2i-bias/world-base-eval-attributes", "de_neutral")
    metrics = client.predict("world-model", "de", "nurse", api_name="/metrics")
    nurse = attributes[attributes["profession"] == "nurse"]
    assert metrics["images"] == len(nurse) and metrics["rejection_rate"] == pytest.approx(
        (nurse["status"] != "ok").mean()
    )
    # The world's classifier perceives gender only: no race or age figures are made up.
    row = per[(per["language"] == "de") & (per["attribute"] == "gender") & (per["occupation"] == "nurse")].iloc[0]
    assert metrics["gender_l1"] == pytest.approx(row["l1"])
    assert set(per["attribute"]) == {"gender"} and metrics["race_l1"] is None
    app = space["app"]  # and no empty race or age axes or rows: one line says why
    figure = app.shares_figure(app.STUDY, ["world-model"], "de", "nurse")
    assert "perceived gender" in figure and "perceived race" not in figure and "perceived age" not in figure
    assert "race L1" not in app.metrics_markdown(app.STUDY, ["world-model"], "de", "nurse")
    assert "world-cue" in app.STUDY.missing_attributes_note()
    gender = per[(per["language"] == "de") & (per["attribute"] == "gender") & (per["occupation"] == "nurse")].iloc[0]
    female = list(gender["labels"]).index("female")
    assert metrics["female_share"] == pytest.approx(gender["distribution"][female])
    assert metrics["female_share_ci"] == pytest.approx(
        [gender["distribution_ci_low"][female], gender["distribution_ci_high"][female]]
    )
    clip = alignment[(alignment["language"] == "de") & (alignment["occupation"] == "nurse")].iloc[0]
    assert metrics["clip_en_occupation"] == pytest.approx(clip["clip_en_occupation"])
    assert metrics["mclip_own_prompt"] == pytest.approx(clip["mclip_own_prompt"])
    board = client.predict(api_name="/leaderboard")
    assert {(row["language"], row["version"]) for row in board} == {
        (language, version)
        for language in ("English", "German", "Chinese", "Japanese")
        for version in ("world-model", "world-debiased")
    }
    german = next(r for r in board if r["language"] == "German" and r["version"] == "world-model")
    assert "race L1" not in german and "age L1" not in german
    row = summary[(summary["language"] == "de") & (summary["attribute"] == "gender")].iloc[0]
    assert german["gender L1"] == pytest.approx(row["mean_l1"], abs=1e-4)
    assert german["exp. max L2"] == pytest.approx(row["exp_max_l2"], abs=1e-4)
    heat = client.predict("world-debiased", api_name="/heatmap")
    assert sorted(heat) == ["Chinese", "English", "German", "Japanese"] and len(heat["German"]) == 6
    shown = client.predict("world-model", "world-debiased", "teacher", ["en", "ja"], api_name="/show")
    assert sorted(shown) == ["en", "ja"]
    assert [len(urls) for urls in shown["ja"]["images"].values()] == [8, 8]  # the first eight of 100, each version
    assert shown["ja"]["prompt"] == space["app"].STUDY.prompt("world-model", "ja", "teacher")


@pytest.mark.slow
def test_space_refuses_bad_input_briefly(space: dict) -> None:
    client = Client(space["url"], verbose=False)
    with pytest.raises(Exception, match="unknown language"):
        client.predict("world-model", "../../etc", "nurse", api_name="/metrics")  # never reaches a path
    huge = "x" * (20 << 20)  # 20 MB
    with pytest.raises(Exception) as caught:
        client.predict("world-model", "de", huge, api_name="/metrics")
    assert len(str(caught.value)) < 500 and "xxxxxxxxxx" not in str(caught.value)  # not echoed back
    with pytest.raises(Exception, match="choose at least one language"):
        client.predict("world-model", "none", "nurse", None, api_name="/show")


@pytest.mark.slow
def test_space_soak_while_a_stage_republishes(offline_study: dict, tmp_path: Path) -> None:
    """16 clients for 30 seconds, fetching the app's answers and every image they name, while the
    images dataset is republished underneath: no request fails. On a copy of the study's store, so
    that the tests after it still see the study's own `main` revisions."""
    assert offline_study["result"].returncode == 0, offline_study["result"].stderr[-3000:]
    root = tmp_path / "hub"
    shutil.copytree(offline_study["root"], root, symlinks=True)
    with launched_space(root) as space:
        soak(space, root)


def soak(space: dict, root: Path) -> None:
    stop = time.monotonic() + 30
    failures, requests = [], [0]

    def republish() -> None:
        while time.monotonic() < stop:
            subprocess.run(
                [sys.executable, "-m", "pipelines.generate_images", "--store_root", str(root), "--input", "prompts",
                 "--model", "world-model", "--output_repo", "world-base-eval", "--languages", "en",
                 "--professions", "nurse", "--variants", "neutral", "--num_images", "2", "--num_inference_steps", "2",
                 "--force"],
                cwd=REPO_ROOT, capture_output=True, timeout=120,
            )  # fmt: skip

    def client_loop(number: int) -> None:
        client = Client(space["url"], verbose=False)
        occupations = space["app"].STUDY.occupations
        with httpx.Client(timeout=30) as http:
            while time.monotonic() < stop:
                try:
                    job = occupations[number % len(occupations)]
                    shown = client.predict("world-model", "world-debiased", job, ["en", "de"], api_name="/show")
                    for language in shown.values():
                        for url in (u for urls in language["images"].values() for u in urls):
                            response = http.get(space["url"] + url)
                            if response.status_code != 200 or not response.content.startswith(b"\x89PNG"):
                                failures.append(f"{url}: {response.status_code}")
                    requests[0] += 1
                except Exception as err:  # noqa: BLE001 - every failure is counted
                    failures.append(repr(err)[:200])

    threads = [threading.Thread(target=republish)] + [
        threading.Thread(target=client_loop, args=(i,)) for i in range(16)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert failures == [] and requests[0] >= 16


def test_the_published_space_is_self_contained_its_requirements_from_the_index_alone(tmp_path: Path) -> None:
    from pipelines import publish_space

    store_root = tmp_path / "hub"
    space_ref = publish_space.run(
        publish_space.Arguments(store_root=str(store_root), versions=VERSIONS, space_store="hub")
    )
    folder = LocalStore(store_root).resolve(str(space_ref), "space")
    front = (folder / "README.md").read_text().split("---")[1]
    for key in ("sdk: gradio", "app_file: app.py", "sdk_version: 6.31.0", "title:", "license:"):
        assert key in front
    # Every requirement is a package of the index, pinned: no local path, wheel or URL the Hub cannot reach.
    lines = [line for line in (folder / "requirements.txt").read_text().splitlines() if line and line[0] != "#"]
    assert lines and all(re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+(==|>=)[0-9][^ /:]*", line) for line in lines), lines
    assert not list(folder.rglob("*.whl"))
    assert not any(line.startswith(("torch", "transformers", "diffusers")) for line in lines)
    # Every third-party module the app reaches (its files and the toolkit modules they import) is required.
    from importlib import metadata

    distributions = metadata.packages_distributions()
    imported = imports_of([folder / "app.py", folder / "study_data.py"])
    required = {line.split("=")[0].split("<")[0].split(">")[0].strip().lower() for line in lines}
    missing = {
        distribution
        for module in imported
        for distribution in distributions.get(module, [])
        if distribution.lower() not in required and distribution != "t2i-bias"
    }
    assert missing == set()
    # The toolkit modules the app uses are inside the folder, copied as they are, data files included.
    assert (folder / "pipelines" / "harness" / "lineage.py").read_bytes() == (
        REPO_ROOT / "pipelines" / "harness" / "lineage.py"
    ).read_bytes()
    assert (folder / "pipelines" / "prompting" / "lexicons" / "de.yaml").is_file()
    assert not (folder / "pipelines" / "modeling").exists() and not (folder / "training").exists()
    # From its folder alone (the checkout out of reach), the app's modules import, without torch or transformers.
    probe = (
        "import sys; sys.path.insert(0, '.'); import study_data, pipelines; "
        "assert pipelines.__file__.startswith(sys.path[0]), pipelines.__file__; "
        "print(sorted(m for m in ('torch', 'transformers', 'diffusers') if m in sys.modules))"
    )
    copy = tmp_path / "elsewhere" / "space"
    shutil.copytree(folder, copy)
    env = {**os.environ, "PYTHONPATH": ""}
    result = subprocess.run([sys.executable, "-I", "-c", probe.replace("'.'", repr(str(copy)))], cwd=copy, env=env,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def test_a_space_that_does_not_start_is_refused_and_main_stays(tmp_path: Path, monkeypatch: Any) -> None:
    """The published folder's app is started before publishing, on the store it will read: a Space that
    dies on its first start is one line, exit 2, and the Space's main stays where it was. Here the
    versions' check is switched off, so only the start can catch that the store holds none of them."""
    from pipelines import publish_space
    from pipelines.errors import DataError

    store_root = tmp_path / "hub"
    first = publish_space.run(
        publish_space.Arguments(store_root=str(store_root), versions=VERSIONS, space_store="hub")
    )
    store = LocalStore(store_root)
    before = store.revision_of(parse_ref(str(first)), "space")
    monkeypatch.setattr(publish_space.PublishSpace, "pinned_inputs", lambda self, args, store: {})
    arguments = publish_space.Arguments(store_root=str(store_root), versions=VERSIONS, space_store="local", force=True)
    with pytest.raises(
        DataError, match=r"^the Space does not start on these versions, nothing published: .*world-base-eval"
    ):
        publish_space.run(arguments)
    assert store.revision_of(parse_ref(str(first)), "space") == before


@pytest.mark.slow
def test_a_space_that_reads_the_study_s_store_is_published_pinned(offline_study: dict, tmp_path: Path) -> None:
    """Every version the Space shows is checked and pinned before anything is written: its config
    names each version's images by revision, and its lineage every dataset the Space reads."""

    from pipelines import publish_space

    assert offline_study["result"].returncode == 0, offline_study["result"].stderr[-3000:]
    root = str(offline_study["root"])
    space_ref = publish_space.run(
        publish_space.Arguments(store_root=root, versions=VERSIONS, space_store="local", output_repo="pinned-space")
    )
    store = LocalStore(root)
    config = json.loads((store.resolve(str(space_ref), "space") / "space_config.json").read_text())
    pinned = dict(item.split("=", 1) for item in config["versions"].split(","))
    for label, name in (item.split("=", 1) for item in VERSIONS.split(",")):
        ref = f"t2i-bias/{name}@{store.revision_of(parse_ref(name, namespace='t2i-bias'), 'dataset')}"
        assert pinned[label] == ref == space_ref.lineage["inputs"][f"{label}.images"]
        assert {f"{label}.{kind}" for kind in ("attributes", "bias")} <= set(space_ref.lineage["inputs"])
    start_in_a_fresh_environment(store.resolve(str(space_ref), "space"), root, tmp_path)


def start_in_a_fresh_environment(published: Path, store_root: str, tmp_path: Path) -> None:
    """The published Space, copied elsewhere, started in a new virtual environment built from its own
    requirements.txt (the package index alone), as the Hub builds it: it serves its page and its API."""
    folder, venv = tmp_path / "space", tmp_path / "venv"
    shutil.copytree(published, folder)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    install = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "-r", "requirements.txt"], cwd=folder,
                             capture_output=True, text=True, timeout=900)  # fmt: skip
    assert install.returncode == 0, install.stderr[-3000:]
    port = free_port()
    start = (
        "import json, urllib.request, app, pipelines\n"
        f"app.demo.launch(server_port={port}, prevent_thread_lock=True, **app.LAUNCH)\n"
        f"page = urllib.request.urlopen('http://127.0.0.1:{port}/', timeout=60)\n"
        "print(json.dumps([page.status, sorted(app.STUDY.versions), pipelines.__file__]))\n"
        "app.demo.close()\n"
    )
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "T2I_BIAS_STORE_ROOT": store_root, "HF_HUB_OFFLINE": "1"}
    started = subprocess.run([str(venv / "bin" / "python"), "-c", start], cwd=folder, env=env, capture_output=True,
                             text=True, timeout=300)  # fmt: skip
    assert started.returncode == 0, started.stderr[-3000:]
    (line,) = [line for line in started.stdout.splitlines() if line.startswith("[")]
    status, versions, toolkit = json.loads(line)
    assert status == 200 and versions == sorted(dict(v.split("=") for v in VERSIONS.split(",")))
    assert toolkit.startswith(str(folder))  # the toolkit copied into the Space, not an installed one


def imports_of(files: list[Path]) -> set[str]:
    """Top-level modules imported by `files` and, through them, by the toolkit's own modules."""
    seen, queue, found = set(), list(files), set()
    while queue:
        path = queue.pop()
        if path in seen:
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top == "pipelines":
                    module = REPO_ROOT / (name.replace(".", "/") + ".py")
                    queue.append(module if module.is_file() else module.with_suffix("") / "__init__.py")
                elif top not in sys.stdlib_module_names and top != "study_data":
                    found.add(top)
    return found


def test_methods_as_fair_as_each_other_are_listed_by_name_whatever_the_table_order() -> None:
    """The Space ranks methods fairest first, by distance from the target; a tie must not leave the order
    to the sort."""
    import pandas as pd

    sys.path.insert(0, str(REPO_ROOT / "spaces" / "compare_languages"))
    try:
        from study_data import Study
    finally:
        sys.path.pop(0)
    distance = {"base": 0.35, "neutral-ft": 0.1, "mixed-ft": 0.1, "lora": 0.25, "g3": 0.46, "a-ft": 0.1}
    rows = pd.DataFrame(
        [
            # Raw L1 ranks otherwise (sample sizes differ): the distance decides.
            {
                "method": m,
                "language": "de",
                "variant": "neutral",
                "guidance_scale": 1.0,
                "distance": v,
                "mean_l1": 1 - v,
            }
            | dict.fromkeys(["mean_l1_ci_low", "mean_l1_ci_high", "difference_mean", "difference_ci_low"], 0.0)
            | dict.fromkeys(["distance_ci_low", "distance_ci_high", "p_holm"], 0.0)
            | dict.fromkeys(["difference_ci_high", "p_value", "clip_score", "seconds_per_image"], 0.0)
            | {"explicit_gender_control": 1.0}
            for m, v in distance.items()
        ]
    )
    study = Study.__new__(Study)
    study.variant = "neutral"
    for seed in range(5):
        study.methods = rows.sample(frac=1, random_state=seed).reset_index(drop=True)
        shown = list(study.methods_table("de")["method"])
        assert shown == ["a-ft", "mixed-ft", "neutral-ft", "lora", "base", "g3"]
    # A table made before `measurable` existed reads every row as measurable (above); a row that is not
    # measurable ranks last whatever its number, and says so instead of the number.
    rows["measurable"] = rows["method"] != "a-ft"
    study.methods = rows
    shown = study.methods_table("de")
    assert list(shown["method"]) == ["mixed-ft", "neutral-ft", "lora", "base", "g3", "a-ft"]
    assert shown.iloc[-1]["distance [95% CI]"] == "not measurable" and "seeds" in shown


def test_the_space_names_what_ran_and_hides_attributes_no_classifier_reported(
    tmp_path: Path, make_folder: Any
) -> None:
    """Which models made a version's numbers is read from its datasets' lineage: a random-weight CLIP
    is said to be random, a real one is not; attributes the classifier did not report get no empty
    axes, no table rows and one line saying why; a classifier that reports all three shows all three."""
    import pandas as pd

    from pipelines.artifacts.reader import DatasetArtifact

    sys.path.insert(0, str(REPO_ROOT / "spaces" / "compare_languages"))
    try:
        from study_data import Study, Version
    finally:
        sys.path.pop(0)
    store = LocalStore(tmp_path / "hub")
    random_clip = store.push(
        make_folder({"README.md": "---\ntags:\n- random-weights\n---\n"}), "ns/tiny-clip", "model", "m"
    )
    real_clip = store.push(make_folder({"README.md": "---\ntags:\n- clip\n---\n"}), "ns/clip", "model", "m")

    def card(lineage: str, extra: str = "") -> DatasetArtifact:
        return DatasetArtifact(make_folder({"README.md": f"---\nlineage:\n{lineage}{extra}---\n"}))

    images = card("  inputs:\n    model: ns/world-model@" + "a" * 40 + "\n")
    world = card("  parameters:\n    classifier: world-cue\n    detector: none\n",
                 "classifier_checkpoints:\n  classifier: world-cue\n  cue: disc colour\n")  # fmt: skip
    fairface = card("  inputs:\n    classifier_model: ns/fairface@" + "b" * 40 + "\n  parameters:\n    classifier: "
                    "fairface\n    detector: dlib\n")  # fmt: skip
    alignment = card(f"  inputs:\n    clip_model: ns/tiny-clip@{random_clip}\n    multilingual_clip_model: "
                     f"ns/clip@{real_clip}\n  parameters:\n    multilingual_clip_pretrained: laion\n")  # fmt: skip
    study = Study.__new__(Study)
    study.store = store
    made = study._made_by(images, world, alignment)
    assert made["images"] == "ns/world-model@aaaaaaa" and made["classifier"] == "world-cue: disc colour"
    assert made["clip"].startswith(f"ns/tiny-clip@{random_clip[:7]}") and "random weights" in made["clip"]
    assert made["mclip"] == f"ns/clip@{real_clip[:7]} / laion"  # a real model: no note
    assert (
        study._made_by(images, fairface, None)["classifier"] == "fairface (ns/fairface@bbbbbbb); faces found by dlib"
    )

    def version(attributes: list[str], made_by: dict) -> Version:
        per = pd.DataFrame({"attribute": attributes})
        return Version("v", None, {}, pd.DataFrame(), pd.DataFrame(), per, made_by=made_by)

    study.versions = {"base": version(["gender"], made), "tuned": version(["gender"], made)}
    assert study.reported_attributes == ["gender"]
    assert study.missing_attributes_note() == (
        "Perceived race and age are not shown: the classifier that ran (world-cue) reports gender only."
    )
    about = study.made_by_markdown()
    assert "**base**" in about and "random weights" in about and "FairFace" not in about
    assert about.endswith(study.missing_attributes_note())
    study.versions["tuned"] = version(["gender", "race", "age"], {"classifier_name": "fairface"})
    assert study.reported_attributes == ["gender", "race", "age"] and study.missing_attributes_note() == ""


def test_fairness_widget(tmp_path: Path) -> None:
    app = load_app(REPO_ROOT / "spaces" / "fairness_metrics" / "app.py", "fairness_widget")
    port = free_port()
    app.demo.launch(prevent_thread_lock=True, server_port=port, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        table = {
            "headers": ["prediction", "occupation"],
            "data": [["male", "CEO"], ["male", "CEO"], ["female", "nurse"]],
        }
        result = client.predict(table, "male, female", 2, 2, 20, 0, api_name="/compute")
        assert result["per_occupation"]["CEO"]["l1"] == 1.0 and result["occupations"] == ["CEO", "nurse"]
        with pytest.raises(Exception, match="num_occupations=3: larger than the 2 occupation"):
            client.predict(table, "male, female", 3, 2, 20, 0, api_name="/compute")
    finally:
        app.demo.close()


def test_clip_score_widget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = build_tiny_open_clip(tmp_path / "clip")
    monkeypatch.setenv("CLIP_SCORE_MODEL", str(folder))
    app = load_app(REPO_ROOT / "spaces" / "clip_score" / "app.py", "clip_widget")
    port = free_port()
    app.demo.launch(prevent_thread_lock=True, server_port=port, quiet=True)
    try:
        Image.fromarray(np.full((64, 64, 3), 120, dtype=np.uint8)).save(tmp_path / "grey.png")
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        result = client.predict(
            handle_file(str(tmp_path / "grey.png")), "a grey square", "cosine", api_name="/compute"
        )
        import evaluate

        direct = evaluate.load(str(REPO_ROOT / "spaces" / "clip_score")).compute(
            predictions=[Image.open(tmp_path / "grey.png")], references=["a grey square"], model=str(folder)
        )
        assert result["scores"] == pytest.approx(direct["scores"], abs=1e-5)
    finally:
        app.demo.close()


@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (README: ci:browser)")
def test_space_in_a_real_browser(space: dict) -> None:
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(exist_ok=True)
    study = space["app"].STUDY
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(space["url"])
        page.wait_for_selector("#gallery-en img", timeout=60_000)
        assert page.locator("#gallery-ja").is_visible()
        first_image = page.locator("#gallery-en img").first.get_attribute("src")
        first_metrics = page.locator("#metrics-en").inner_text()
        # The prompt in each language above its images; intervals in the numbers.
        assert page.locator("#prompt-de").inner_text().strip() == study.prompt(
            "world-model", "de", study.occupations[0]
        )
        assert "[" in first_metrics and "perceived-female share" in first_metrics
        # One series before comparing ...
        assert page.locator("#plot-en g[id^='bar-world-model-gender-']").count() == 2
        assert page.locator("#plot-en g[id^='bar-world-debiased-']").count() == 0
        page.screenshot(path=str(SCREENSHOTS / "compare.png"), full_page=True)

        # ... two after "Compare with -> the fine-tuned model": grouped bars, both visible.
        page.locator("#compare input").click()
        page.locator("#compare input").fill("world-debiased")
        page.keyboard.press("Enter")
        page.wait_for_selector("#plot-en g[id^='bar-world-debiased-gender-']", timeout=30_000)
        for version in ("world-model", "world-debiased"):
            assert page.locator(f"#plot-en g[id^='bar-{version}-gender-']").count() == 2
            assert page.locator(f"#plot-en text:has-text('{version}')").count() >= 1  # in the legend
        assert page.locator("#gallery-b-en").is_visible()
        page.screenshot(path=str(SCREENSHOTS / "compare-two-versions.png"), full_page=True)

        # Pick a language: hide Japanese. Pick an occupation: the images and the numbers change.
        page.locator("#languages label", has_text="Japanese").click()
        page.wait_for_selector("#gallery-ja", state="hidden", timeout=30_000)
        page.locator("#occupation input").click()
        page.locator("#occupation input").fill("nurse")
        page.keyboard.press("Enter")
        page.wait_for_function(
            "src => { const img = document.querySelector('#gallery-en img'); return img && img.src !== src; }",
            arg=first_image,
            timeout=30_000,
        )
        assert page.locator("#metrics-en").inner_text() != first_metrics

        # The heat map: every occupation x language, and a drill-down to one cell's images.
        page.get_by_role("tab", name="Heat map").click()
        page.wait_for_selector("#heatmap [role=gridcell]", timeout=30_000)
        cells = page.locator("#heatmap [role=gridcell]")
        assert cells.count() == len(study.occupations) * (len(study.languages) + 1)  # every occupation x language
        headers = page.locator("#heatmap [role=columnheader]").all_inner_texts()
        assert [h.strip() for h in headers][1:] == ["English", "German", "Chinese", "Japanese"]
        page.screenshot(path=str(SCREENSHOTS / "heatmap.png"), full_page=True)
        page.locator("#heatmap [data-testid='cell-1-2']").click()  # firefighter, German
        page.wait_for_selector("#heat-gallery img", timeout=30_000)
        detail = page.locator("#heat-detail").inner_text()
        assert study.occupations[1] in detail and "German" in detail

        # The leaderboard: intervals, a CSV download; and the explanations.
        page.get_by_role("tab", name="Leaderboard").click()
        page.wait_for_selector("#leaderboard [role=gridcell]", timeout=30_000)
        assert "[" in page.locator("#leaderboard").inner_text()
        one_line = page.evaluate(
            """() => [...document.querySelectorAll('#leaderboard [role=gridcell] span')].map(span => {
                const range = document.createRange(); range.selectNodeContents(span);
                return range.getClientRects().length <= 1; })"""
        )
        assert one_line and all(one_line)  # no number broken over two lines at 1280 px
        with page.expect_download() as download:
            page.locator("#leaderboard-csv").click()
        assert download.value.suggested_filename.endswith(".csv")
        page.screenshot(path=str(SCREENSHOTS / "leaderboard.png"), full_page=True)
        page.get_by_role("tab", name="About the metrics").click()
        text = page.locator("#explanations").inner_text()
        for term in ("Perceived", "Expected maximum unfairness", "Random reference", "CLIP score", "L1 / L2"):
            assert term in text
        assert "world-base-eval@" in page.locator("#links").inner_text()
        made_by = page.locator("#made-by").inner_text()  # the models that ran, not the reference study's
        assert "world-cue" in made_by and "random weights" in made_by and "FairFace" not in made_by
        page.screenshot(path=str(SCREENSHOTS / "about.png"), full_page=True)
        browser.close()
