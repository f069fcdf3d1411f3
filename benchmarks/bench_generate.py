"""Images per second of generate_images against the reference study's loop, same model and settings.

    python -m benchmarks.bench_generate [--images 48] [--batch_size 8] [--results_dir DIR]

Baseline: the reference study's loop: one prompt, one seed, one pipeline call, one PNG file, with
torch's default threads. Against it, in the same run, on the same prompts, steps and scheduler:

- the stage in one process, `--batch_size` images per call, as many CPU threads as cores
  (`--cpu_threads`: the thread count chosen for the machine, when exact bytes across thread counts
  are not asked for);
- the stage under `torchrun`, one process per core, one thread each (the exact-bytes setting).

Both stage runs include loading the model and publishing the dataset. Tiny AltDiffusion (random
weights, 64 px), CPU. Writes `generate.json`.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from benchmarks.common import machine, write_report  # noqa: E402
from pipelines import build_tiny_model, generate_images, generate_prompts  # noqa: E402
from pipelines.artifacts.inputs import resolve_model  # noqa: E402
from pipelines.artifacts.reader import DatasetArtifact  # noqa: E402
from pipelines.artifacts.store import LocalStore  # noqa: E402
from pipelines.modeling.diffusion import load_pipeline  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--results_dir", default=None)
    options = parser.parse_args(argv)
    cores = os.cpu_count() or 1
    root = tempfile.mkdtemp(prefix="bench-generate-")
    common = {"store_root": root, "namespace": "bench"}
    prompts = generate_prompts.run(generate_prompts.Arguments(**common, professions=["doctor", "nurse", "CEO"]))
    model = build_tiny_model.run(build_tiny_model.Arguments(**common, input=str(prompts)))
    store = LocalStore(root)
    settings = {
        "input": str(prompts),
        "model": str(model),
        "variants": ["gendered"],
        "max_prompts": options.images,
        "batch_size": options.batch_size,
        "num_inference_steps": options.steps,
        "guidance_scale": 7.5,
        "force": True,
    }

    # Baseline: the reference loop, one prompt and one seed per call, each image encoded and written.
    folder = store.resolve(str(prompts), "dataset")
    rows = [r for r in DatasetArtifact(folder, str(prompts)).rows("en") if r["variant"] == "gendered"]
    rows = rows[: options.images]
    pipe = load_pipeline(resolve_model(str(model), store, namespace="bench"), store, device="cpu")
    out = Path(tempfile.mkdtemp())
    started = time.perf_counter()
    for row in rows:
        generator = torch.Generator().manual_seed(generate_images.image_seed(0, row["prompt_id"], 0))
        image = pipe(row["prompt"], num_inference_steps=options.steps, guidance_scale=7.5, generator=generator)
        buffer = io.BytesIO()
        image.images[0].save(buffer, format="PNG")
        (out / f"{row['prompt_id']}.png").write_bytes(buffer.getvalue())
    baseline = time.perf_counter() - started
    del pipe

    started = time.perf_counter()
    generate_images.run(generate_images.Arguments(**common, **settings, cpu_threads=cores, output_repo="threads"))
    threaded = time.perf_counter() - started

    flags = [f"--{k}={v}" for k, v in {**common, **settings, "output_repo": "processes"}.items() if k != "variants"]
    flags = [f for f in flags if not f.startswith("--force")] + ["--variants", "gendered", "--force"]
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={cores}", "-m", "pipelines.generate_images",
         *flags, "--cpu_threads=1"],
        check=True, capture_output=True,
    )  # fmt: skip
    processes = time.perf_counter() - started

    count = len(rows)
    report = {
        "benchmark": "generate_images against one image per pipeline call",
        "machine": machine(),
        "model": "tiny AltDiffusion (random weights, 64 px)",
        "images": count,
        "steps": options.steps,
        "batch_size": options.batch_size,
        "baseline_images_per_second": round(count / baseline, 2),
        "threads_images_per_second": round(count / threaded, 2),
        "processes_images_per_second": round(count / processes, 2),
        "speedup_threads": round(baseline / threaded, 2),
        "speedup_processes": round(baseline / processes, 2),
        "goal": 2.0,
    }
    write_report("generate", report, options.results_dir)
    return report


if __name__ == "__main__":
    main()
