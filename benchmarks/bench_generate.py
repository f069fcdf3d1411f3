"""Images per second of generate_images against the reference study's loop, same model and settings.

    python -m benchmarks.bench_generate [--images 48] [--batch_size 8]

Baseline: one image per pipeline call, as the reference study's loop (a prompt, a seed, a call,
a file). Stage: generate_images with `--batch_size` images per call, written as parquet shards.
Both use the tiny AltDiffusion on the CPU, the same prompts, steps, scheduler and seeds, measured
in the same run. Writes benchmarks/results/generate.json.
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from benchmarks.common import machine, write_report  # noqa: E402
from pipelines import build_tiny_model, generate_images, generate_prompts  # noqa: E402
from pipelines.artifacts.dataset_files import load_config  # noqa: E402
from pipelines.artifacts.store import LocalStore  # noqa: E402
from pipelines.modeling.diffusion import load_pipeline  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    options = parser.parse_args()
    root = tempfile.mkdtemp(prefix="bench-generate-")
    common = {"store_root": root, "namespace": "bench"}
    prompts = generate_prompts.run(generate_prompts.Arguments(**common))
    model = build_tiny_model.run(build_tiny_model.Arguments(**common, input=str(prompts)))
    store = LocalStore(root)
    settings = {"num_inference_steps": options.steps, "guidance_scale": 7.5, "cpu_threads": 1}
    args = generate_images.Arguments(
        **common,
        input=str(prompts),
        model=str(model),
        variants=["gendered"],
        max_prompts=options.images,
        batch_size=options.batch_size,
        images_per_shard=options.images,
        **settings,
        force=True,
    )

    # Baseline: the reference loop, one prompt and one seed per call, each image encoded and written.
    torch.set_num_threads(1)
    rows = generate_images.select_rows(
        load_config(store.resolve(str(prompts), "dataset"), "en").to_list(), args, "gendered"
    )
    pipe, _ = load_pipeline(str(model), store)
    out = Path(tempfile.mkdtemp())
    started = time.perf_counter()
    for row in rows:
        generator = torch.Generator().manual_seed(generate_images.image_seed(0, row["prompt_id"], 0))
        image = pipe(row["prompt"], num_inference_steps=options.steps, guidance_scale=7.5, generator=generator).images[
            0
        ]
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        (out / f"{row['prompt_id']}.png").write_bytes(buffer.getvalue())
    baseline = time.perf_counter() - started

    started = time.perf_counter()
    generate_images.run(args)
    stage = time.perf_counter() - started  # includes loading the model and publishing the dataset

    report = {
        "benchmark": "generate_images vs one image per pipeline call",
        "machine": machine(),
        "model": "tiny AltDiffusion (random weights, 64 px)",
        "images": len(rows),
        "steps": options.steps,
        "baseline_images_per_second": round(len(rows) / baseline, 2),
        "stage_images_per_second": round(len(rows) / stage, 2),
        "batch_size": options.batch_size,
        "speedup": round(baseline / stage, 2),
    }
    write_report("generate", report)


if __name__ == "__main__":
    main()
