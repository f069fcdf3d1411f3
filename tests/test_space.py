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
    # Two versions' images side by side are the same samples, drawn from the same seeds, each with the
    # attributes its version's published dataset gives it.
    seeds = {v: [(s["sample_index"], s["seed"]) for s in samples] for v, samples in shown["ja"]["samples"].items()}
    assert seeds["world-model"] == seeds["world-debiased"] and len(seeds["world-model"]) == 8
    for version, repo in (("world-model", "world-base-eval"), ("world-debiased", "world-debiased-eval")):
        rows = published(store, f"t2i-bias/{repo}-attributes", "ja_neutral")
        rows = rows[rows["profession"] == "teacher"].set_index("sample_index")
        for sample in shown["ja"]["samples"][version]:
            assert sample["status"] == rows.loc[sample["sample_index"], "status"]
            assert sample["gender"] == rows.loc[sample["sample_index"], "gender"]
    # The leaderboard: fairest first by the summary's own distance from the target.
    distances = [r["gender distance"] for r in board]
    assert distances == sorted(distances) and german["gender distance"] == pytest.approx(row["distance"])
    # A difference heat map is one version's share minus the other's, cell by cell.
    base = client.predict("world-model", "gender/female", "none", api_name="/heatmap")
    tuned = client.predict("world-debiased", "gender/female", "none", api_name="/heatmap")
    difference = client.predict("world-model", "gender/female", "world-debiased", api_name="/heatmap")
    assert base != tuned
    for language, cells in difference.items():
        for occupation, value in cells.items():
            assert value == pytest.approx(base[language][occupation] - tuned[language][occupation])
    # The reference chart's line is the summary's amplification, fitted to the points it draws.
    points, fit = app.STUDY.reference_points("world-model", "de")
    assert len(points) == 6 and fit["label"] == row["reference_label"]
    assert np.polyfit(points["reference"], points["measured"], 1)[0] == pytest.approx(row["amplification"])
    _, fits = app.reference_figure(app.STUDY, ["world-model", "world-debiased"], "de")
    assert f"{row['amplification']:.3f} [{row['amplification_ci_low']:.3f}" in fits


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
def test_a_sample_that_cannot_be_decoded_is_said_so_in_its_place_beside_the_other_version(space: dict) -> None:
    """In the side-by-side view a version's undecodable image is named as such (not "no image", which
    means the version has no such sample), and the other version's image of that seed still shows."""
    from types import SimpleNamespace

    shown = {"sample_index": 1, "seed": 11, "path": "/cache/a.rgb.png", "status": "ok", "gender": "female",
             "race": None, "age": None}  # fmt: skip
    broken = {**shown, "path": None, "status": "undecodable", "gender": None}
    pair = [{"sample_index": 1, "a": shown, "b": broken}]
    fake = SimpleNamespace(paired=lambda versions, language, occupation: pair)
    page = space["app"].pairs_html(fake, ["a", "b"], "en", "nurse")
    assert page.count("<img ") == 1 and "gradio_api/file=/cache/a.rgb.png" in page and "seed 11" in page
    assert "b: the stored image cannot be decoded (in no figure)" in page and "no image" not in page


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
    failures, requests, republished = [], [0], []

    def republish() -> None:
        while time.monotonic() < stop:
            done = subprocess.run(
                [sys.executable, "-m", "pipelines.generate_images", "--store_root", str(root),
                 "--input", "world-prompts", "--model", "world-model", "--output_repo", "world-base-eval",
                 "--languages", "en", "--professions", "nurse", "--variants", "neutral", "--num_images", "2",
                 "--num_inference_steps", "2", "--force"],
                cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            republished.append(0 if done.returncode == 0 else f"exit {done.returncode}: {done.stderr[-500:]}")

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
    assert republished and set(republished) == {0}, republished  # the store did change underneath


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
    # The fonts of every script a prompt is written in, installed by the Hub with apt.
    packages = (folder / "packages.txt").read_text().split()
    assert {"fonts-noto-cjk", "fonts-noto-core"} <= set(packages)
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


def test_version_colours_show_on_white_never_as_a_gender_cue_and_apart_from_each_other() -> None:
    """Each version's colour (bars, points, fit lines, swatches) has the 3:1 contrast against the
    white page that WCAG asks of marks, a coloured one is over 30 degrees of hue from the world's
    cues for a gender (orange: female, blue: male), and any two differ in hue or in lightness. The
    yellow the palette had (#F0E442) failed the first two: 1.3:1, and 24 degrees from the orange."""
    from colorsys import rgb_to_hsv

    from pipelines.modeling.world import FEMALE_COLOUR, MALE_COLOUR

    source = (REPO_ROOT / "spaces" / "compare_languages" / "app.py").read_text()
    (colours,) = [ast.literal_eval(node.value) for node in ast.parse(source).body if isinstance(node, ast.Assign)
                  and getattr(node.targets[0], "id", None) == "VERSION_COLOURS"]  # fmt: skip

    def rgb(colour: str) -> tuple[float, ...]:
        return tuple(int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5))

    def luminance(channels: tuple[float, ...]) -> float:
        linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]

    def contrast(a: tuple[float, ...], b: tuple[float, ...]) -> float:
        high, low = sorted((luminance(a), luminance(b)), reverse=True)
        return (high + 0.05) / (low + 0.05)

    def hue_gap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
        gap = abs(rgb_to_hsv(*a)[0] - rgb_to_hsv(*b)[0]) % 1
        return 360 * min(gap, 1 - gap)

    def coloured(channels: tuple[float, ...]) -> bool:
        return rgb_to_hsv(*channels)[1] > 0.2

    assert len(colours) == len(set(colours)) >= 4
    for colour in map(rgb, colours):
        assert contrast(colour, (1.0, 1.0, 1.0)) >= 3, colour
        if coloured(colour):
            assert min(hue_gap(colour, FEMALE_COLOUR), hue_gap(colour, MALE_COLOUR)) > 30, colour
    for index, first in enumerate(map(rgb, colours)):
        for second in map(rgb, colours[index + 1 :]):
            apart_in_hue = coloured(first) and coloured(second) and hue_gap(first, second) > 30
            apart_in_kind = coloured(first) != coloured(second)
            assert apart_in_hue or apart_in_kind or contrast(first, second) >= 3, (first, second)


def test_tables_show_estimates_with_three_decimals_counts_whole_and_settings_as_set() -> None:
    import pandas as pd

    sys.path.insert(0, str(REPO_ROOT / "spaces" / "compare_languages"))
    try:
        from study_data import table_formats
    finally:
        sys.path.pop(0)
    table = pd.DataFrame(
        {
            "method": ["a", "b"],
            "guidance": [7.5, 3.0],
            "occupations": [10.0, 12.0],
            "images / occupation": [100.0, 37.5],  # not whole: an estimate's format, not a count's
            "p (paired)": [0.0002, 0.03125],
            "p (Holm)": [1.0, float("nan")],
            "CLIP": [0.12345, 0.2],
        }
    )
    shown = table.style.format(table_formats(table), na_rep="–").to_string(delimiter="|").splitlines()
    assert shown[1].split("|")[1:] == ["a", "7.5", "10", "100.000", "<0.001", "1.000", "0.123"]
    assert shown[2].split("|")[1:] == ["b", "3.0", "12", "37.500", "0.031", "–", "0.200"]


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

    tiny = store.push(
        make_folder({"README.md": "---\ntags:\n- random-weights\n---\n", "w": "1"}), "ns/tiny", "model", "m"
    )
    images = card("  inputs:\n    model: ns/world-model@" + "a" * 40 + "\n")
    random_images = card(f"  inputs:\n    model: ns/tiny@{tiny}\n")
    world = card("  parameters:\n    classifier: world-cue\n    detector: none\n",
                 "classifier_checkpoints:\n  classifier: world-cue\n  cue: disc colour\n")  # fmt: skip
    fairface = card("  inputs:\n    classifier_model: ns/fairface@" + "b" * 40 + "\n  parameters:\n    classifier: "
                    "fairface\n    detector: dlib\n")  # fmt: skip
    alignment = card(f"  inputs:\n    clip_model: ns/tiny-clip@{random_clip}\n    multilingual_clip_model: "
                     f"ns/clip@{real_clip}\n  parameters:\n    multilingual_clip_pretrained: laion\n")  # fmt: skip
    study = Study.__new__(Study)
    study.store = store
    made = study._made_by(images, world, alignment)
    assert made["images"] == "ns/world-model@aaaaaaa"  # a model the store cannot open: named, no note
    # The world's cue reader is said to be a stand-in, and a run without a detector says so.
    assert made["classifier"] == (
        "world-cue: disc colour (a stand-in for a face classifier); no face detector: the whole image"
    )
    assert "random weights" in study._made_by(random_images, world, None)["images"]
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


# Where each element lies. Fully visible: inside the page's width and inside the visible box of any
# container that scrolls sideways around it (nothing to scroll to). Reachable: fully visible, or inside
# a sideways-scrolling container that is itself inside the page. Returns the elements that are not,
# and how many visible elements were checked.
REACHABLE = """({selectors, scrolling}) => {
  const width = document.documentElement.clientWidth;
  const within = (r, b) => r.left >= b.left - 1 && r.right <= b.right + 1;
  const page = {left: 0, right: width};
  const scroller = el => {
    for (let a = el.parentElement; a; a = a.parentElement) {
      const style = getComputedStyle(a);
      if (/(auto|scroll)/.test(style.overflowX) && a.scrollWidth > a.clientWidth) return a;
    }
    return null;
  };
  const bad = [], counted = {};
  for (const selector of selectors) {
    counted[selector] = 0;
    for (const el of document.querySelectorAll(selector)) {
      const r = el.getBoundingClientRect();
      if (r.width === 0 && r.height === 0) continue;  // not shown (another tab, a hidden language)
      counted[selector] += 1;
      const box = scroller(el);
      const visible = within(r, page) && (!box || within(r, box.getBoundingClientRect()));
      if (visible || (scrolling && box && within(box.getBoundingClientRect(), page))) continue;
      bad.push(`${selector} at ${Math.round(r.left)}..${Math.round(r.right)} of ${width}`);
    }
  }
  return {bad, counted};
}"""
# Bars of a chart that a legend's box overlaps.
UNDER_LEGEND = """(plot) => {
  const legend = document.querySelector(`${plot} g[id^="legend-"]`).getBoundingClientRect();
  return [...document.querySelectorAll(`${plot} g[id^="bar-"] path`)].map(bar => bar.getBoundingClientRect())
    .filter(b => b.width > 0 && !(b.right <= legend.left || b.left >= legend.right
                                  || b.bottom <= legend.top || b.top >= legend.bottom)).length;
}"""


def assert_reachable(page: Any, selectors: list[str], scrolling: bool = False) -> None:
    """Every element `selectors` find is fully visible, or with `scrolling` reachable by scrolling a table."""
    found = page.evaluate(REACHABLE, {"selectors": selectors, "scrolling": scrolling})
    assert found["bad"] == [], found["bad"]
    assert all(found["counted"].values()), found["counted"]  # every kind of element was there to check


def choose(page: Any, dropdown: str, value: str) -> None:
    page.locator(f"{dropdown} input").click()
    page.locator(f"{dropdown} input").fill(value)
    page.keyboard.press("Enter")


def open_browser(playwright: Any) -> Any:
    return playwright.chromium.launch(
        executable_path=CHROMIUM,
        args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
    )


@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (README: ci:browser)")
def test_space_in_a_real_browser(space: dict) -> None:
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(exist_ok=True)
    study = space["app"].STUDY
    with sync_playwright() as playwright:
        browser = open_browser(playwright)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(space["url"])
        page.wait_for_selector("#pairs-en img", timeout=60_000)
        assert page.locator("#pairs-ja").is_visible()
        first_image = page.locator("#pairs-en img").first.get_attribute("src")
        first_metrics = page.locator("#metrics-en").inner_text()
        # The prompt in each language above its images, upright, in its language; intervals in the numbers.
        prompt = page.locator("#prompt-de .prompt-text")
        assert prompt.inner_text().strip() == study.prompt("world-model", "de", study.occupations[0])
        assert (
            prompt.get_attribute("lang") == "de" and prompt.evaluate("p => getComputedStyle(p).fontStyle") == "normal"
        )
        assert "[" in first_metrics and "perceived-female share" in first_metrics
        # One series before comparing: each image with its seed and what the classifier saw.
        assert page.locator("#plot-en g[id^='bar-world-model-gender-']").count() == 2
        assert page.locator("#plot-en g[id^='bar-world-debiased-']").count() == 0
        samples = study.samples("world-model", "en", study.occupations[0])
        captions = page.locator("#pairs-en figcaption").all_inner_texts()
        assert len(captions) == 8 == len(samples)
        for caption, sample in zip(captions, samples):
            assert f"seed {sample['seed']}" in caption and space["app"].perceived(sample) in caption
        page.screenshot(path=str(SCREENSHOTS / "compare.png"), full_page=True)

        # ... two after "Compare with -> the fine-tuned model": grouped bars, both named in a legend that
        # covers no bar, and the two versions' images of the same seed side by side.
        choose(page, "#compare", "world-debiased")
        page.wait_for_selector("#plot-en g[id^='bar-world-debiased-gender-']", timeout=30_000)
        for version in ("world-model", "world-debiased"):
            assert page.locator(f"#plot-en g[id^='bar-{version}-gender-']").count() == 2
            assert page.locator(f"#plot-en g[id^='legend-'] text:has-text('{version}')").count() == 1
        for code in ("en", "de", "zh", "ja"):
            assert page.evaluate(UNDER_LEGEND, f"#plot-{code}") == 0
        pairs = page.locator("#pairs-en figure.pair")
        assert pairs.count() == 8
        # The versions are named in the order their images stand, not told apart by colour alone.
        assert page.locator("#pairs-en .pairs-key").inner_text().strip() == (
            "world-model │ world-debiased (left to right)"
        )
        for index in range(8):
            figure = pairs.nth(index)
            assert figure.locator("img").count() == 2 and figure.get_attribute("data-seeds") == "1"
        # A click enlarges: each image links to itself at full size, which the server gives.
        link = page.locator("#pairs-en a").first
        assert link.get_attribute("target") == "_blank"
        assert link.get_attribute("href") == link.locator("img").get_attribute("src")
        full = httpx.get(space["url"] + link.get_attribute("href"), timeout=30)
        assert full.status_code == 200 and full.content.startswith(b"\x89PNG")
        # Every image, chart and table at a laptop's width: on screen, or in a container that scrolls.
        assert_reachable(page, ["#pairs-en img", "#pairs-ja img", "[id^=plot-] svg", "[id^=metrics-] th"])
        # The charts download as SVG and PNG.
        with page.expect_download() as download:
            page.locator("#plot-en .downloads a", has_text="PNG").click()
        assert download.value.suggested_filename.endswith(".png")
        assert Path(download.value.path()).read_bytes().startswith(b"\x89PNG")
        with page.expect_download() as download:  # and the numbers beneath it as CSV
            page.locator("#plot-en .downloads a", has_text="CSV").click()
        import pandas

        numbers = pandas.read_csv(download.value.path())
        female = numbers[(numbers["version"] == "world-debiased") & (numbers["label"] == "female")]
        expected = study.metrics("world-debiased", "en", study.occupations[0])["female_share"]
        assert female["share"].iloc[0] == pytest.approx(expected)
        page.screenshot(path=str(SCREENSHOTS / "compare-two-versions.png"), full_page=True)

        # Pick a language: hide Japanese. Pick an occupation: the images and the numbers change.
        page.locator("#languages label", has_text="Japanese").click()
        page.wait_for_selector("#pairs-ja", state="hidden", timeout=30_000)
        before = page.locator("#metrics-en").inner_text()
        choose(page, "#occupation", "nurse")
        # The nurse's view is drawn when its prompt is: a view's outputs arrive together.
        page.wait_for_function(
            "text => document.querySelector('#prompt-en').innerText.trim() === text",
            arg=study.prompt("world-model", "en", "nurse"),
            timeout=30_000,
        )
        assert page.locator("#pairs-en img").first.get_attribute("src") != first_image
        assert page.locator("#metrics-en").inner_text() not in (before, first_metrics)

        # The heat map: every occupation x language, the difference between the versions, a drill-down.
        page.get_by_role("tab", name="Heat map").click()
        page.wait_for_selector("#heatmap [role=gridcell]", timeout=30_000)
        cells = page.locator("#heatmap [role=gridcell]")
        assert cells.count() == len(study.occupations) * (len(study.languages) + 1)  # every occupation x language
        headers = page.locator("#heatmap [role=columnheader]").all_inner_texts()
        assert [h.strip() for h in headers][1:] == ["English", "German", "Chinese", "Japanese"]
        assert "perceived female" in page.locator("#heat-said").inner_text()
        choose(page, "#heat-compare", "world-debiased")
        page.wait_for_function(
            "() => document.querySelector('#heat-said').innerText.includes('Difference')", timeout=30_000
        )
        difference = study.heatmap("world-model", "gender", "female", "world-debiased")
        german = page.locator("#heatmap [data-testid='cell-1-2']").inner_text().strip()
        assert float(german) == pytest.approx(difference.iloc[1]["German"], abs=6e-4)
        page.screenshot(path=str(SCREENSHOTS / "heatmap.png"), full_page=True)
        # The heat map's own choices are part of the view: other versions than the compare tab's, a label.
        choose(page, "#heat-version", "world-debiased")
        choose(page, "#heat-compare", "world-model")
        choose(page, "#heat-label", "gender: male")
        page.wait_for_function(
            "() => { const q = new URL(location.href).searchParams; return q.get('label') === 'gender/male'"
            " && q.get('heat_version') === 'world-debiased' && q.get('heat_compare') === 'world-model'; }",
            timeout=30_000,
        )
        shared = page.url  # the view so far: the heat map tab and its choices, two versions, nurse, three languages
        page.locator("#heatmap [data-testid='cell-1-2']").click()  # the second occupation, German
        page.wait_for_selector("#heat-pairs img", timeout=30_000)
        assert_reachable(page, ["#heatmap [role=columnheader]", "#heatmap [role=gridcell]", "#heat-pairs img"])
        detail = page.locator("#heat-detail").inner_text()
        assert study.occupations[1] in detail and "German" in detail and "world-debiased" in detail
        # The drill-down says the map's own label (here male), each version's share as the map has it.
        for version in ("world-debiased", "world-model"):
            share, low, high = study.share_interval(version, "de", study.occupations[1], "gender", "male")
            assert f"{version}: share perceived male (gender) {share:.3f} [{low:.3f}, {high:.3f}]" in detail
        # Another label redraws the map, and the drill-down of the one before goes with it.
        choose(page, "#heat-label", "gender: female")
        page.wait_for_function(
            "() => !document.querySelector('#heat-detail').innerText.trim()"
            " && !document.querySelector('#heat-pairs img')",
            timeout=30_000,
        )

        # The leaderboard: fairest first, intervals with three decimals, every column reachable, a CSV.
        page.get_by_role("tab", name="Leaderboard").click()
        page.wait_for_selector("#leaderboard [role=gridcell]", timeout=30_000)
        text = page.locator("#leaderboard").inner_text()
        assert re.search(r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]", text)
        assert_reachable(page, ["#leaderboard [role=columnheader]", "#leaderboard [role=gridcell]"])
        with page.expect_download() as download:
            page.locator("#leaderboard-csv").click()
        assert download.value.suggested_filename.endswith(".csv")
        page.screenshot(path=str(SCREENSHOTS / "leaderboard.png"), full_page=True)
        page.get_by_role("tab", name="Against a reference").click()
        page.wait_for_selector("#reference-plot svg", timeout=30_000)
        for version in ("world-model", "world-debiased"):
            assert page.locator(f"#reference-plot g[id='points-{version}']").count() == 1
        assert "amplification" in page.locator("#reference-fits").inner_text()
        assert_reachable(page, ["#reference-plot svg", "#reference-fits th"])
        with page.expect_download() as download:  # its points, each with its version's fitted slope
            page.locator("#reference-plot .downloads a", has_text="CSV").click()
        fitted = pandas.read_csv(download.value.path())
        for version in ("world-model", "world-debiased"):
            expected = study.reference_points(version, "en", "gender")[1]["amplification"]
            slopes = fitted[fitted["version"] == version]["amplification"]
            assert len(slopes) > 0 and all(value == pytest.approx(expected) for value in slopes)
        page.screenshot(path=str(SCREENSHOTS / "reference.png"), full_page=True)
        if not study.methods.empty:  # the methods recipe ran on this store (tests/test_methods.py, in the suite)
            page.get_by_role("tab", name="Methods").click()
            page.wait_for_selector("#methods [role=gridcell]", timeout=30_000)
            headers = [h.strip() for h in page.locator("#methods [role=columnheader]").all_inner_texts()]
            for column in ("split", "occupations", "images / occupation", "p (Holm)", "explicit-gender control"):
                assert column in headers, headers
            assert re.search(r"\d\.\d{3} \[-?\d\.\d{3}, -?\d\.\d{3}\]", page.locator("#methods").inner_text())
            assert_reachable(page, ["#methods [role=columnheader]"], scrolling=True)
            page.screenshot(path=str(SCREENSHOTS / "methods.png"), full_page=True)
        page.get_by_role("tab", name="About the metrics").click()
        text = page.locator("#explanations").inner_text()
        for term in ("Perceived", "Expected maximum unfairness", "Random reference", "CLIP score", "L1 / L2"):
            assert term in text
        assert "world-base-eval@" in page.locator("#links").inner_text()
        made_by = page.locator("#made-by").inner_text()  # the models that ran, not the reference study's
        assert "world-cue" in made_by and "random weights" in made_by and "FairFace" not in made_by
        page.screenshot(path=str(SCREENSHOTS / "about.png"), full_page=True)

        # A shared link opens the same view, in another browser page.
        again = browser.new_page(viewport={"width": 1280, "height": 900})
        again.goto(shared)
        again.wait_for_selector("#heatmap [role=gridcell]", timeout=60_000)
        assert again.locator("#heatmap").is_visible() and not again.locator("#version").is_visible()
        again.wait_for_function(
            "() => document.querySelector('#heat-said').innerText.includes('Difference')", timeout=30_000
        )
        assert again.locator("#heat-version input").input_value() == "world-debiased"
        assert again.locator("#heat-compare input").input_value() == "world-model"
        assert again.locator("#heat-label input").input_value() == "gender: male"
        assert "perceived male" in again.locator("#heat-said").inner_text()
        again.get_by_role("tab", name="Compare languages").click()
        again.wait_for_selector("#plot-en g[id^='bar-world-debiased-gender-']", timeout=30_000)
        assert again.locator("#occupation input").input_value() == "nurse"
        assert again.locator("#version input").input_value() == "world-model"
        assert again.locator("#compare input").input_value() == "world-debiased"
        assert again.locator("#pairs-de").is_visible() and not again.locator("#pairs-ja").is_visible()
        assert again.locator("#pairs-en figure.pair").count() == 8
        browser.close()


@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (README: ci:browser)")
def test_space_on_a_phone(space: dict) -> None:
    """At 390 x 844 the languages stack: every image and chart inside the screen's width, the tables in
    containers that scroll; a link opens a tab directly."""
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = open_browser(playwright)
        page = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
        page.goto(space["url"] + "?compare=world-debiased&occupation=nurse&languages=en,zh")
        page.wait_for_selector("#plot-zh g[id^='bar-world-debiased-gender-']", timeout=60_000)
        assert not page.locator("#pairs-de").is_visible()
        boxes = [page.locator(f"#pairs-{code}").bounding_box() for code in ("en", "zh")]
        assert boxes[1]["y"] >= boxes[0]["y"] + boxes[0]["height"]  # stacked, not side by side
        assert_reachable(page, ["#pairs-en img", "#pairs-zh img", "[id^=plot-] svg", "[id^=metrics-] th"])
        for code in ("en", "zh"):
            assert page.evaluate(UNDER_LEGEND, f"#plot-{code}") == 0
        page.screenshot(path=str(SCREENSHOTS / "phone-compare.png"), full_page=True)
        # The check can say no: an element wider than the screen, in no scrolling container, is reported.
        page.evaluate("() => { const d = document.createElement('div'); d.id = 'too-wide'; "
                      "d.style.cssText = 'width: 2000px; height: 4px'; document.body.append(d); }")  # fmt: skip
        assert page.evaluate(REACHABLE, {"selectors": ["#too-wide"], "scrolling": True})["bad"]
        page.goto(space["url"] + "?tab=leaderboard")
        page.wait_for_selector("#leaderboard [role=gridcell]", timeout=60_000)
        assert_reachable(page, ["#leaderboard [role=columnheader]"], scrolling=True)
        # The strict check says no here: a phone cannot show every column at once, only scroll to it.
        assert page.evaluate(REACHABLE, {"selectors": ["#leaderboard [role=columnheader]"], "scrolling": False})["bad"]
        page.screenshot(path=str(SCREENSHOTS / "phone-leaderboard.png"), full_page=True)
        # The other views open directly too, and fit: the heat map's table scrolls, its chart does not.
        page.goto(space["url"] + "?tab=heat")
        page.wait_for_selector("#heatmap [role=gridcell]", timeout=60_000)
        assert_reachable(page, ["#heatmap [role=columnheader]"], scrolling=True)
        page.goto(space["url"] + "?tab=reference")
        page.wait_for_selector("#reference-plot svg", timeout=60_000)
        assert_reachable(page, ["#reference-plot svg"])
        page.screenshot(path=str(SCREENSHOTS / "phone-reference.png"), full_page=True)
        browser.close()


def fonts_with(text: str) -> dict[str, bool]:
    """Each installed font family: whether its character map holds every letter of `text`."""
    from fontTools.ttLib import TTCollection, TTFont

    listed = subprocess.run(["fc-list", "--format", "%{file}\n"], capture_output=True, text=True).stdout.split()
    letters = {ord(c) for c in text if not c.isspace()}
    out: dict[str, bool] = {}
    for path in listed:
        fonts = TTCollection(path).fonts if path.endswith(".ttc") else [TTFont(path, lazy=True)]
        for font in fonts:
            family = font["name"].getBestFamilyName()
            out[family] = out.get(family, False) or letters <= set(font.getBestCmap() or {})
    return out


@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (README: ci:browser)")
@pytest.mark.skipif(
    shutil.which("fc-list") is None
    or "Noto Sans CJK" not in subprocess.run(["fc-list"], capture_output=True, text=True).stdout,
    reason="Noto's CJK and Arabic fonts are not installed (README: ci:browser)",
)
def test_arabic_chinese_and_japanese_prompts_render_upright_with_fonts_that_have_their_glyphs(space: dict) -> None:
    """The font Chromium draws each prompt with (asked of the browser itself) holds every glyph of it, and
    the prompt is upright; with DejaVu alone (no CJK or Arabic glyphs) the same check fails."""
    from playwright.sync_api import sync_playwright

    from pipelines.prompting.grammar import load_grammar

    app = space["app"]
    prompts = {code: load_grammar(code).eval_direct("nurse") for code in ("ar", "zh", "ja")}
    page_html = "<style>" + app.CSS + "</style>" + "".join(app.prompt_html(t, c) for c, t in prompts.items())
    with sync_playwright() as playwright:
        browser = open_browser(playwright)
        page = browser.new_page()
        page.set_content(page_html)
        cdp = page.context.new_cdp_session(page)
        cdp.send("DOM.enable")
        cdp.send("CSS.enable")
        root = cdp.send("DOM.getDocument")["root"]["nodeId"]
        for code, text in prompts.items():
            node = cdp.send("DOM.querySelector", {"nodeId": root, "selector": f"p[lang={code}]"})["nodeId"]
            used = cdp.send("CSS.getPlatformFontsForNode", {"nodeId": node})["fonts"]
            covering = fonts_with(text)
            main = max(used, key=lambda font: font["glyphCount"])["familyName"]
            assert covering.get(main), f"{code}: {text!r} drawn with {main}, which lacks its glyphs ({used})"
            assert page.locator(f"p[lang={code}]").evaluate("p => getComputedStyle(p).fontStyle") == "normal"
        assert not fonts_with(prompts["zh"]).get("DejaVu Sans")  # the check can say no
        assert page.locator("p[lang=ar]").evaluate("p => getComputedStyle(p).direction") == "rtl"
        browser.close()


def test_the_space_serves_each_image_as_every_stage_decodes_it(tmp_path: Path) -> None:
    """CMYK (Pillow cannot write it as PNG), EXIF-rotated, 16-bit, palette and alpha images are served
    as the 8-bit RGB pictures the study's stages saw; bytes that are no image are left out and counted,
    not an error for the visitor."""
    from pipelines.artifacts.dataset_files import decode_image

    from .awkward_images import awkward_images

    sys.path.insert(0, str(REPO_ROOT / "spaces" / "compare_languages"))
    try:
        from study_data import Study
    finally:
        sys.path.pop(0)
    study = Study.__new__(Study)
    study.cache, study.undecodable = tmp_path, set()
    for name, data in awkward_images().items():
        served = study._immutable(data)
        assert served == study._immutable(data)  # the same file: written once
        with Image.open(served) as image:
            assert image.format == "PNG" and image.mode == "RGB", name
            assert (np.asarray(image) == decode_image({"bytes": data, "path": None})).all(), name
    assert study._immutable(b"not an image") is None and len(study.undecodable) == 1


def test_an_image_that_cannot_be_decoded_keeps_its_place_among_the_samples(tmp_path: Path) -> None:
    """A stored image no stage can decode (every stage skips it: it is in no figure) keeps its sample's
    place in the Space, without a file and said to be undecodable, instead of vanishing from the
    grid while the next sample takes its place; the others are served as before."""
    import io
    from types import SimpleNamespace

    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    sys.path.insert(0, str(REPO_ROOT / "spaces" / "compare_languages"))
    try:
        from study_data import Study
    finally:
        sys.path.pop(0)
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(buffer, format="PNG")
    stored = [buffer.getvalue(), b"\x89PNG cut short", buffer.getvalue(), buffer.getvalue()]
    shard = tmp_path / "images.parquet"
    pq.write_table(pa.table({
        "profession": ["nurse"] * 4, "sample_index": [0, 1, 2, 3], "seed": [10, 11, 12, 13],
        "image": [{"bytes": data, "path": None} for data in stored],
    }), shard)  # fmt: skip
    attributes = pd.DataFrame({
        "language": ["en"] * 4, "profession": ["nurse"] * 4, "variant": ["neutral"] * 4, "sample_index": [0, 1, 2, 3],
        "status": ["ok", "ok", "no_face", "ok"], "gender": ["female", "male", None, "male"],
        "race": [None] * 4, "age": [None] * 4,
    })  # fmt: skip
    study = Study.__new__(Study)
    study.cache, study.undecodable, study.variant = tmp_path / "cache", set(), "neutral"
    study.cache.mkdir()
    study.config = lambda version, language: "en-neutral"
    study.versions = {"v": SimpleNamespace(attributes=attributes, images=SimpleNamespace(files=lambda config: [shard]),
                                           bias_per_occupation=pd.DataFrame({"attribute": ["gender"]}))}  # fmt: skip
    samples = study.samples("v", "en", "nurse", 3)
    assert [(s["sample_index"], s["seed"], s["status"], s["gender"]) for s in samples] == [
        (0, 10, "ok", "female"),
        (1, 11, "undecodable", None),
        (2, 12, "no_face", None),
    ]  # the broken image keeps sample 1's place, with no classifier's labels (no stage read it)
    assert samples[1]["path"] is None and len(study.undecodable) == 1
    assert study.images("v", "en", "nurse", 3) == (samples[0]["path"], samples[2]["path"])
    assert all(Path(path).is_file() for path in study.images("v", "en", "nurse", 3))


def test_the_clip_score_module_scores_each_image_as_the_toolkit_decodes_it(tmp_path: Path) -> None:
    """The metric module stands alone, so it converts images itself: to the same pixels as the
    toolkit's decoder for every kind of image, where Pillow's `convert("RGB")` is wrong for some; and
    `compute` scores an image as the RGB picture it shows."""
    import io

    import evaluate

    from pipelines.artifacts.dataset_files import to_rgb
    from spaces.clip_score.clip_score import as_rgb

    from .awkward_images import awkward_images

    images = {name: Image.open(io.BytesIO(data)) for name, data in awkward_images().items()}
    differs = []
    for name, image in images.items():
        converted = np.asarray(as_rgb(image))
        assert converted.dtype == np.uint8 and (converted == np.asarray(to_rgb(image))).all(), name
        plain = np.asarray(image.convert("RGB"))
        if plain.shape != converted.shape or (plain != converted).any():
            differs.append(name)
    assert set(images) - set(differs) == {"CMYK"}  # which Pillow's conversion gets right
    model = str(build_tiny_open_clip(tmp_path / "clip"))
    metric = evaluate.load(str(REPO_ROOT / "spaces" / "clip_score"))
    chosen = [images["dark 16-bit"], images["alpha"]]
    given = metric.compute(predictions=chosen, references=["a photo"] * 2, model=model)
    seen = metric.compute(predictions=[to_rgb(i) for i in chosen], references=["a photo"] * 2, model=model)
    assert given["scores"] == pytest.approx(seen["scores"], abs=1e-6)
