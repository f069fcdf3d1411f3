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


def test_two_workers_in_one_process_make_the_same_bytes_as_one(
    sharded: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--cpu_workers 2`: two copies of the pipeline in threads of this process, each shard made as one
    process makes it, so the same bytes; with semantic guidance too, which each copy builds lazily."""
    store = LocalStore(sharded["store_root"])
    extra = ["--interventions", "none", "sega", "--cpu_threads", "1"]
    for workers in ("1", "2"):
        argv = command_line("generate_images", sharded, f"workers-{workers}", *extra, "--cpu_workers", workers)
        generate_images.STAGE.main(argv)
        assert ("(2 workers)" in capsys.readouterr().err) == (workers == "2")  # really two threads
    one, two = (store.resolve(f"study/workers-{n}", "dataset") for n in ("1", "2"))
    assert data_digest(one) == data_digest(two) and len(data_digest(one)) == 8  # 2 languages x 2 methods x 2 shards


def test_a_failing_worker_stops_the_others_and_publishes_nothing(
    sharded: dict, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A shard that fails in one thread ends the run with its error; the other worker takes no new
    shard after it, nothing is published, and the shards already made stay for a rerun to resume."""
    make = generate_images.GenerateImages.make
    made: list[tuple[str, int]] = []

    def fail_on_the_third(self, run, shard) -> list:  # noqa: ANN001 - the stage's own signature
        if len(made) == 2:
            raise RuntimeError("out of memory in shard three")
        rows = make(self, run, shard)
        made.append((shard.config, shard.index))
        return rows

    monkeypatch.setattr(generate_images.GenerateImages, "make", fail_on_the_third)
    work = tmp_path / "work"
    argv = command_line("generate_images", sharded, "workers-failed", "--cpu_workers", "2", "--work_dir", str(work))
    with pytest.raises(RuntimeError, match="out of memory in shard three"):
        generate_images.STAGE.main(argv)
    assert not LocalStore(sharded["store_root"]).exists("study/workers-failed", "dataset")
    written = list(work.rglob("train-*.parquet"))
    assert 2 <= len(written) < 4  # the failure stopped the run before its last shard (4 in all)
    monkeypatch.setattr(generate_images.GenerateImages, "make", make)
    generate_images.STAGE.main(argv)  # resumes: the rows as a straight run makes them
    generate_images.STAGE.main(command_line("generate_images", sharded, "workers-straight"))
    store = LocalStore(sharded["store_root"])
    resumed, straight = (store.resolve(f"study/workers-{name}", "dataset") for name in ("failed", "straight"))
    assert data_digest(resumed) == data_digest(straight)


class NotShared(generate_images.GenerateImages):
    threads_share_nothing = False


@pytest.mark.parametrize(
    ("stage", "device", "asked", "threads", "usable", "busy", "shards", "expected"),
    [
        (generate_images.STAGE, "cuda", 2, 1, 8, 0.0, 10, 1),  # a GPU: one worker per process
        (NotShared(), "cpu", 2, 1, 8, 0.0, 10, 1),  # a stage whose copies would share state
        (generate_images.STAGE, "cpu", 4, 1, 2, 0.0, 3, 3),  # as asked, at most one per shard
        (generate_images.STAGE, "cpu", None, 1, 4, 1.2, 10, 3),  # the CPUs other work leaves free
        (generate_images.STAGE, "cpu", None, 2, 4, 0.0, 10, 2),  # at cpu_threads each
        (generate_images.STAGE, "cpu", None, 2, 4, 2.0, 10, 1),  # a busy machine: one
        (generate_images.STAGE, "cpu", None, 1, 4, 0.0, 1, 1),  # one shard left: one
    ],
)
def test_the_workers_of_a_sharded_stage(
    monkeypatch: pytest.MonkeyPatch,
    stage: object,
    device: str,
    asked: int | None,
    threads: int,
    usable: int,
    busy: float,
    shards: int,
    expected: int,
) -> None:
    from types import SimpleNamespace

    from pipelines.harness import stage as stage_module

    monkeypatch.setattr(stage_module, "usable_cpus", lambda: usable)
    monkeypatch.setattr(stage_module, "busy_cpus", lambda *a, **k: busy)
    args = SimpleNamespace(cpu_workers=asked, cpu_threads=threads)
    assert stage_module.cpu_workers(stage, args, device, 1, shards) == expected


def test_no_load_is_sampled_where_a_second_worker_cannot_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two processes on two CPUs (torchrun), or one CPU: one worker each, without the 0.3 s sample."""
    from types import SimpleNamespace

    from pipelines.harness import stage as stage_module

    def sampled(*args, **kwargs) -> float:  # noqa: ANN002, ANN003
        raise AssertionError("the load was sampled")

    monkeypatch.setattr(stage_module, "busy_cpus", sampled)
    args = SimpleNamespace(cpu_workers=None, cpu_threads=1)
    for usable, processes in ((2, 2), (1, 1), (3, 2)):
        monkeypatch.setattr(stage_module, "usable_cpus", lambda usable=usable: usable)
        assert stage_module.cpu_workers(generate_images.STAGE, args, "cpu", processes, 10) == 1


@pytest.mark.parametrize(
    ("meminfo", "cgroup", "per_copy_gib", "expected"),
    [
        ("MemTotal: 16777216 kB\nMemAvailable: 8388608 kB\n", None, 1, 5),  # 8 GiB free: 4 GiB for 4 more
        ("MemAvailable: 8388608 kB\n", ("3221225472", "1073741824"), 1, 2),  # the cgroup leaves 2 GiB
        ("MemAvailable: 8388608 kB\n", ("max", "1073741824"), 1, 5),  # no cgroup limit
        ("MemAvailable: 10485760 kB\n", None, 6, 1),  # a model of 6 GiB in 10 GiB: no second copy
        (None, None, 1, 1),  # nothing readable: one copy
    ],
)
def test_worker_copies_stay_within_half_the_free_memory(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    meminfo: str | None,
    cgroup: tuple[str, str] | None,
    per_copy_gib: int,
    expected: int,
) -> None:
    from pipelines.harness import stage as stage_module

    if meminfo is not None:
        (tmp_path / "meminfo").write_text(meminfo)
    if cgroup is not None:
        (tmp_path / "memory.max").write_text(cgroup[0] + "\n")
        (tmp_path / "memory.current").write_text(cgroup[1] + "\n")
    monkeypatch.setattr(stage_module, "PROC_MEMINFO", tmp_path / "meminfo")
    monkeypatch.setattr(stage_module, "CGROUP_MEMORY", tmp_path)
    assert stage_module.copies_that_fit(per_copy_gib << 30) == expected


@pytest.mark.parametrize(("copies", "workers"), [(1, False), (5, True)])
def test_by_default_a_free_core_gets_a_worker_where_the_memory_holds_a_copy(
    sharded: dict, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], copies: int, workers: bool
) -> None:
    from pipelines.harness import stage as stage_module

    monkeypatch.setattr(stage_module, "usable_cpus", lambda: 2)
    monkeypatch.setattr(stage_module, "busy_cpus", lambda *a, **k: 0.0)
    monkeypatch.setattr(stage_module, "copies_that_fit", lambda per_copy: copies)
    generate_images.STAGE.main(command_line("generate_images", sharded, f"auto-workers-{copies}"))
    assert ("(2 workers)" in capsys.readouterr().err) is workers
