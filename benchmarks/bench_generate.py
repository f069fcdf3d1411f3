"""Images per second of generate_images against the reference study's loop, same model and settings.

    python -m benchmarks.bench_generate [--images 384] [--batch_size 8] [--results_dir DIR]

Baseline: the reference study's loop: one prompt, one seed, one pipeline call, one PNG file, with
torch's default threads and float32 weights. Against it, in the same run, on the same prompts, steps
and scheduler, the stage with `--batch_size` images per call:

- in one process, as many CPU threads as cores (`--cpu_threads`: the thread count chosen for the
  machine, when exact bytes across thread counts are not asked for);
- under `torchrun`, one process per core, one thread each (the exact-bytes setting);
- in one process on one thread, alone and with a worker thread per core (`--cpu_workers`, each with
  its own copy of the pipeline: the exact-bytes setting without launching processes), and whether
  the two wrote the same bytes;
- both again with bfloat16 weights (`--dtype bfloat16`), the CPU's counterpart of the fp16 a GPU
  runs: fast where the CPU computes in bfloat16 natively (AVX512-BF16 or AMX; `cpu_bf16_native`).
  What it costs is measured too: how far each bfloat16 image lies from its float32 twin (same
  prompt, same seed), in 8-bit pixel levels.
- the fastest setting's steady rate: its run on all the images less a run on one batch per
  process, which pays the same start-up.

Every stage run includes starting its processes, loading the model and publishing the dataset, so
the image count should be large enough for those to weigh as little as in a real study (thousands
of images). Tiny AltDiffusion (random weights, 64 px), CPU. Writes `generate.json`.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.common import machine, scratch, write_report  # noqa: E402
from pipelines import build_tiny_model, generate_images, generate_prompts  # noqa: E402
from pipelines.artifacts.inputs import resolve_model  # noqa: E402
from pipelines.artifacts.reader import DatasetArtifact  # noqa: E402
from pipelines.artifacts.store import LocalStore  # noqa: E402
from pipelines.modeling.diffusion import cpu_computes_bfloat16, load_pipeline  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=384)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--results_dir", default=None)
    options = parser.parse_args(argv)
    cores = os.cpu_count() or 1
    root = str(scratch("bench-generate-"))
    common = {"store_root": root, "namespace": "bench"}
    professions = ["doctor", "nurse", "CEO", "firefighter", "teacher", "pilot"]
    prompts = generate_prompts.run(generate_prompts.Arguments(**common, professions=professions))
    model = build_tiny_model.run(build_tiny_model.Arguments(**common, input=str(prompts)))
    store = LocalStore(root)
    settings = {
        "input": str(prompts),
        "model": str(model),
        "batch_size": options.batch_size,
        "num_inference_steps": options.steps,
        "guidance_scale": 7.5,
        "images_per_shard": 2 * options.batch_size,  # shards enough for a worker per core
    }

    # Baseline: the reference loop, one prompt and one seed per call, each image encoded and written.
    folder = store.resolve(str(prompts), "dataset")
    rows = [r for r in DatasetArtifact(folder, str(prompts)).rows("en") if r["variant"] == "gendered"]
    rows = rows[: options.images]
    if len(rows) < options.images:
        raise SystemExit(f"--images={options.images}: the benchmark's prompts give at most {len(rows)}")
    pipe = load_pipeline(resolve_model(str(model), store, namespace="bench"), store, device="cpu")
    out = scratch()

    def reference_loop(part: list[dict]) -> float:
        started = time.perf_counter()
        for row in part:
            generator = torch.Generator().manual_seed(generate_images.image_seed(0, row["prompt_id"], 0))
            image = pipe(row["prompt"], num_inference_steps=options.steps, guidance_scale=7.5, generator=generator)
            buffer = io.BytesIO()
            image.images[0].save(buffer, format="PNG")
            (out / f"{row['prompt_id']}.png").write_bytes(buffer.getvalue())
        return time.perf_counter() - started

    # Half the baseline before the stage runs and half after: a shared machine's speed drifts over
    # minutes, and this way the drift weighs on both sides alike.
    half = len(rows) // 2
    baseline = reference_loop(rows[:half])

    def stage(
        name: str, processes: int, dtype: str, images: int = options.images, workers: int | None = None
    ) -> float:
        """Seconds of one stage run: in this process (as the baseline, torch is already imported) on a
        thread per core, or on one thread with `workers` worker threads, or under torchrun, starting
        its processes included."""
        started = time.perf_counter()
        given = {**common, **settings, "max_prompts": images, "dtype": dtype}
        if processes == 1:
            threads = {"cpu_threads": cores} if workers is None else {"cpu_threads": 1, "cpu_workers": workers}
            arguments = {**given, "output_repo": name, **threads}
            generate_images.run(generate_images.Arguments(**arguments, variants=["gendered"], force=True))
        else:
            flags = [f"--{key}={value}" for key, value in given.items()]
            flags += ["--variants", "gendered", f"--output_repo={name}", "--cpu_threads=1", "--force"]
            # --standalone: a free port per launch (the default 29500 can still be held by the run before)
            launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
            command = [sys.executable, *launcher, "-m", "pipelines.generate_images", *flags]
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode:
                raise RuntimeError(f"bench_generate: the {name} run failed:\n{result.stderr[-3000:]}")
        return time.perf_counter() - started

    runs = {
        "threads": stage("threads", 1, "float32"),
        "processes": stage("processes", cores, "float32"),
        "bf16_threads": stage("bf16-threads", 1, "bfloat16"),
        "bf16_processes": stage("bf16-processes", cores, "bfloat16"),
        "one_thread": stage("one-thread", 1, "float32", workers=1),
        "workers": stage("workers", 1, "float32", workers=cores),
    }
    # The fastest setting once started: a run of one batch per process costs the same start-up
    # (processes, model, publishing), so the difference is the work on the other images.
    few = min(cores * options.batch_size, options.images - 1)
    startup = stage("bf16-processes-startup", cores, "bfloat16", images=few)
    baseline += reference_loop(rows[half:])
    work = runs["bf16_processes"] - startup
    steady = (options.images - few) / work if work > 0 else None  # None: too few images to tell
    count = len(rows)
    report = {
        "benchmark": "generate_images against one image per pipeline call",
        "machine": machine(),
        "cpu_bf16_native": cpu_computes_bfloat16(),
        "model": "tiny AltDiffusion (random weights, 64 px)",
        "images": count,
        "steps": options.steps,
        "batch_size": options.batch_size,
        "baseline_images_per_second": round(count / baseline, 2),
        **{f"{name}_images_per_second": round(count / seconds, 2) for name, seconds in runs.items()},
        **{f"speedup_{name}": round(baseline / seconds, 2) for name, seconds in runs.items()},
        "bf16_processes_steady_images_per_second": round(steady, 2) if steady else None,
        "speedup_bf16_processes_steady": round(steady * baseline / count, 2) if steady else None,
        "speedup_workers_vs_one_thread": round(runs["one_thread"] / runs["workers"], 2),
        "workers_same_bytes": data_files(store, "bench/one-thread") == data_files(store, "bench/workers"),
        "bf16_pixel_difference": pixel_difference(store, "bench/threads", "bench/bf16-threads"),
        "goal": 2.0,
    }
    write_report("generate", report, options.results_dir)
    return report


def data_files(store: LocalStore, spec: str) -> dict[str, bytes]:
    """Every data file of a published images dataset, by relative path."""
    folder = store.resolve(spec, "dataset")
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted((folder / "data").rglob("*.parquet"))}


def pixel_difference(store: LocalStore, reference: str, other: str) -> dict[str, float]:
    """How far the images of `other` lie from their twins (same prompt and seed) in `reference`, in
    8-bit levels: the mean absolute difference per pixel and channel, and its 99th percentile."""

    def images(spec: str) -> dict[tuple, np.ndarray]:
        artifact = DatasetArtifact(store.resolve(spec, "dataset"), spec)
        rows = artifact.rows("en_gendered", ["prompt_id", "sample_index", "image"])
        pixels = [np.asarray(Image.open(io.BytesIO(row["image"]["bytes"])), np.int16) for row in rows]
        return {(row["prompt_id"], row["sample_index"]): image for row, image in zip(rows, pixels)}

    first, second = images(reference), images(other)
    if sorted(first) != sorted(second):
        raise RuntimeError(f"{reference} and {other} hold different images")
    difference = np.concatenate([np.abs(first[key] - second[key]).ravel() for key in first])
    return {"mean": round(float(difference.mean()), 2), "p99": float(np.percentile(difference, 99))}


if __name__ == "__main__":
    main()
