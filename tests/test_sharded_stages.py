"""Every sharded stage (generation, classification, alignment) through the one executor: the same
bytes on one process or two (torchrun), resumed after a SIGKILL with nothing missing or doubled,
and two identical runs at once publishing one revision."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines import build_tiny_model, generate_images
from pipelines.artifacts.store import LocalStore

from .conftest import REPO_ROOT, data_digest, image_arguments, launcher

# Kills its own process (SIGKILL: no cleanup, no finally) right after the stage writes its second shard.
KILLED_AFTER_TWO_SHARDS = """
import os, signal, sys
from pipelines.artifacts import dataset_files
write_shard = dataset_files.DatasetWriter.write_shard
written = []
def write_then_die(self, *args, **kwargs):
    path = write_shard(self, *args, **kwargs)
    written.append(path)
    if len(written) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return path
dataset_files.DatasetWriter.write_shard = write_then_die
import importlib
importlib.import_module("pipelines." + sys.argv[1]).STAGE.main(sys.argv[2:])
"""


@pytest.fixture(scope="module")
def sharded(tiny_study: dict) -> dict:
    """An images dataset of 4 configs x 8 images in shards of 4, and the tiny classifier and CLIP."""
    common = {"store_root": tiny_study["store_root"], "namespace": "study"}
    images = generate_images.run(
        image_arguments(
            tiny_study, output_repo="sharded-images", languages=["en", "de"], variants=["eval_direct", "gendered"],
            max_prompts=4, num_images=2, images_per_shard=4,
        )
    )  # fmt: skip
    fairface = build_tiny_model.run(build_tiny_model.Arguments(**common, kind="fairface"))
    clip = build_tiny_model.run(build_tiny_model.Arguments(**common, kind="open-clip"))
    return {**tiny_study, "images": str(images), "fairface": str(fairface), "clip": str(clip)}


def command_line(stage: str, study: dict, output_repo: str, *extra: str) -> list[str]:
    common = ["--store_root", study["store_root"], "--namespace", "study", "--output_repo", output_repo, *extra]
    if stage == "generate_images":
        return [
            "--input", study["prompts"], "--model", study["model"], "--languages", "en", "de",
            "--variants", "eval_direct", "--num_images", "2", "--num_inference_steps", "2", "--batch_size", "3",
            "--images_per_shard", "4", *common,
        ]  # fmt: skip
    if stage == "classify":
        return ["--input", study["images"], "--detector", "none", "--classifier_model", study["fairface"],
                "--batch_size", "3", *common]  # fmt: skip
    return ["--input", study["images"], "--clip_model", study["clip"], "--clip_pretrained", "none",
            "--batch_size", "3", *common]  # fmt: skip


def run_stage(stage: str, argv: list[str], processes: int = 1) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [*launcher(processes), "-m", f"pipelines.{stage}", *argv], cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result


STAGES = ["generate_images", "classify", "evaluate_alignment"]


@pytest.mark.parametrize("stage", STAGES)
def test_two_processes_make_the_same_bytes_as_one(sharded: dict, stage: str) -> None:
    store = LocalStore(sharded["store_root"])
    # One process: this one (a fresh interpreter spent 4 s importing what this one has); two: torchrun.
    importlib.import_module(f"pipelines.{stage}").STAGE.main(command_line(stage, sharded, f"{stage}-one"))
    two = run_stage(stage, command_line(stage, sharded, f"{stage}-two"), processes=2)
    assert "[2/2]" in two.stderr or "[1/2]" in two.stderr  # really two ranks
    one_folder, two_folder = (store.resolve(f"study/{stage}-{n}", "dataset") for n in ("one", "two"))
    assert data_digest(one_folder) == data_digest(two_folder) and len(data_digest(one_folder)) >= 4


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_killed_run_resumes_without_gaps_or_duplicates(sharded: dict, stage: str, tmp_path: Path) -> None:
    store = LocalStore(sharded["store_root"])
    work = tmp_path / "work"
    argv = command_line(stage, sharded, f"{stage}-resumed", "--work_dir", str(work))
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_AFTER_TWO_SHARDS, stage, *argv],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert killed.returncode == -9, killed.stderr[-2000:]  # died by SIGKILL, mid-run
    assert len(list(work.rglob("train-*.parquet"))) == 2
    assert not store.exists(f"study/{stage}-resumed", "dataset")
    rerun = run_stage(stage, argv)
    assert "published" in rerun.stderr
    run_stage(stage, command_line(stage, sharded, f"{stage}-straight"))
    resumed = store.resolve(f"study/{stage}-resumed", "dataset")
    assert data_digest(resumed) == data_digest(store.resolve(f"study/{stage}-straight", "dataset"))
    for config in sorted(p.name for p in (resumed / "data").iterdir() if p.name != "summary"):
        rows = pq.read_table(sorted((resumed / "data" / config).glob("*.parquet"))).to_pylist()
        keys = [(row["prompt_id"], row["sample_index"]) for row in rows]
        assert len(keys) == len(set(keys)) == 8, config  # complete, no duplicates
    assert not any(work.rglob("*.parquet"))  # the work folder is cleaned after publishing


def test_two_identical_runs_at_once_publish_one_revision(sharded: dict) -> None:
    store = LocalStore(sharded["store_root"])
    argv = command_line("generate_images", sharded, "at-once")
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "pipelines.generate_images", *argv],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [child.communicate(timeout=900) for child in children]
    assert [child.returncode for child in children] == [0, 0], [err[-2000:] for _, err in outputs]
    printed = {out.strip().splitlines()[-1] for out, _ in outputs}
    assert len(printed) == 1  # both name the same revision
    assert len(store.revisions("study/at-once", "dataset")) == 1
    assert sum("waiting for another run of the same step" in err for _, err in outputs) == 1
    folder = store.resolve("study/at-once", "dataset")
    rows = pq.read_table(sorted((folder / "data" / "en_eval_direct").glob("*.parquet"))).to_pylist()
    keys = [(row["prompt_id"], row["sample_index"]) for row in rows]
    assert len(keys) == len(set(keys))
