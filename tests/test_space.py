"""The language-comparison Space and the evaluate widgets, on the offline study's outputs."""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from pipelines.modeling.clip import build_tiny_open_clip

from .conftest import REPO_ROOT

CHROMIUM = "/usr/bin/chromium"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def load_app(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def space(offline_study: dict):
    """The Space, launched on the offline study's store (configured by environment, as a Space is)."""
    assert offline_study["result"].returncode == 0, offline_study["result"].stderr[-3000:]
    previous = {k: os.environ.get(k) for k in ("T2I_BIAS_STORE_ROOT", "T2I_BIAS_SPACE_VERSIONS")}
    os.environ["T2I_BIAS_STORE_ROOT"] = str(offline_study["root"])
    os.environ["T2I_BIAS_SPACE_VERSIONS"] = "base=images-base-eval,finetuned=images-finetuned-eval"
    try:
        app = load_app(REPO_ROOT / "spaces" / "compare_languages" / "app.py", "compare_languages_app")
    finally:
        for key, value in previous.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
    port = free_port()
    app.demo.launch(prevent_thread_lock=True, server_port=port, quiet=True)
    yield {"app": app, "url": f"http://127.0.0.1:{port}/"}
    app.demo.close()


@pytest.mark.slow
def test_space_api(space: dict) -> None:
    client = Client(space["url"], verbose=False)
    metrics = client.predict("base", "de", "nurse", api_name="/metrics")
    assert metrics["images"] == 4 and metrics["rejection_rate"] == 0.0
    for key in ("gender_l1", "race_l1", "age_l1", "clip_own_prompt", "clip_occupation", "clip_person"):
        assert isinstance(metrics[key], float)
    assert 0 <= metrics["gender_l1"] <= 1
    board = client.predict(api_name="/leaderboard")
    assert {(row["language"], row["version"]) for row in board} == {
        (language, version)
        for language in ("English", "German", "Chinese", "Japanese")
        for version in ("base", "finetuned")
    }
    shown = client.predict("base", "finetuned", "teacher", ["en", "ja"], api_name="/show")
    galleries = [item for item in shown if isinstance(item, list)]
    assert any(len(gallery) == 4 for gallery in galleries)  # the four teacher images of a shown language
    with pytest.raises(Exception, match="unknown"):
        client.predict("base", "../../etc", "nurse", api_name="/metrics")  # a typed value never reaches a path


def test_space_study_data_matches_the_published_results(offline_study: dict) -> None:
    import datasets

    from pipelines.artifacts.store import LocalStore

    data = load_app(REPO_ROOT / "spaces" / "compare_languages" / "study_data.py", "study_data_check")
    store = LocalStore(offline_study["root"])
    study = data.Study(store, {"base": "t2i-bias/images-base-eval"})
    assert study.languages == ["en", "de", "zh", "ja"]
    assert "nurse" in study.occupations and len(study.occupations) == 6
    bias = store.resolve("t2i-bias/images-base-eval-bias", "dataset")
    per = datasets.load_dataset(str(bias), "per_occupation", split="train").to_pandas()
    row = per[(per["language"] == "de") & (per["attribute"] == "race") & (per["occupation"] == "nurse")].iloc[0]
    metrics = study.metrics("base", "de", "nurse")
    assert metrics["race_l1"] == pytest.approx(row["l1"])
    alignment = store.resolve("t2i-bias/images-base-eval-alignment", "dataset")
    summary = datasets.load_dataset(str(alignment), "summary", split="train").to_pandas()
    clip = summary[(summary["language"] == "de") & (summary["occupation"] == "nurse")].iloc[0]
    assert metrics["clip_own_prompt"] == pytest.approx(clip["clip_own_prompt"])
    assert len(study.images("base", "de", "nurse")) == 4
    shares = study.distribution("base", "de", "nurse", "gender")
    assert shares["share"].sum() == pytest.approx(1.0)
    assert data.parse_versions("a=ns/x, b=ns/y@v1") == {"a": "ns/x", "b": "ns/y@v1"}
    with pytest.raises(ValueError, match="is not name=repo"):
        data.parse_versions("oops")


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
    finally:
        app.demo.close()


def test_clip_score_widget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIP_SCORE_MODEL", str(build_tiny_open_clip(tmp_path / "clip")))
    app = load_app(REPO_ROOT / "spaces" / "clip_score" / "app.py", "clip_widget")
    port = free_port()
    app.demo.launch(prevent_thread_lock=True, server_port=port, quiet=True)
    try:
        Image.fromarray(np.full((64, 64, 3), 120, dtype=np.uint8)).save(tmp_path / "grey.png")
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        result = client.predict(
            handle_file(str(tmp_path / "grey.png")), "a grey square", "cosine", api_name="/compute"
        )
        assert len(result["scores"]) == 1 and -1 <= result["mean"] <= 1
    finally:
        app.demo.close()


@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (README: ci:browser)")
def test_space_in_a_real_browser(space: dict, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(space["url"])
        page.wait_for_selector("#gallery-en img", timeout=60_000)
        assert page.locator("#gallery-ja").is_visible()
        first_image = page.locator("#gallery-en img").first.get_attribute("src")
        first_metrics = page.locator("#metrics-en").inner_text()

        # Pick a language: hide Japanese.
        page.locator("#languages label", has_text="Japanese").click()
        page.wait_for_selector("#gallery-ja", state="hidden", timeout=30_000)

        # Pick an occupation: the images and the numbers change.
        page.locator("#occupation input").click()
        page.locator("#occupation input").fill("nurse")
        page.keyboard.press("Enter")
        page.wait_for_function(
            "src => { const img = document.querySelector('#gallery-en img'); return img && img.src !== src; }",
            arg=first_image,
            timeout=30_000,
        )
        assert page.locator("#metrics-en").inner_text() != first_metrics
        assert page.locator("#plot-gender-en").is_visible()
        screenshot = tmp_path / "space.png"
        page.screenshot(path=str(screenshot), full_page=True)
        browser.close()
    assert screenshot.stat().st_size > 10_000
