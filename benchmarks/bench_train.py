"""Training samples per second with cached latents on and off, same model, data and steps, one run.

    python -m benchmarks.bench_train [--steps 20] [--batch_size 8] [--resolution 64]

Both runs fine-tune the tiny AltDiffusion on the same training dataset (built here by the real
stages) with --center_crop; the cached run encodes every image with the VAE and every caption with
the frozen text encoder once, up front, and that time is counted. Writes
benchmarks/results/train.json.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.common import machine, write_report  # noqa: E402
from pipelines import build_tiny_model, collect_datasets, generate_images, generate_prompts  # noqa: E402
from training.train_text_to_image import TrainArguments, run  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--results_dir", default=None)
    options = parser.parse_args(argv)
    root = tempfile.mkdtemp(prefix="bench-train-")
    common = {"store_root": root, "namespace": "bench"}
    prompts = generate_prompts.run(generate_prompts.Arguments(**common, professions=["doctor", "nurse", "CEO"]))
    model = build_tiny_model.run(build_tiny_model.Arguments(**common, input=str(prompts)))
    images = generate_images.run(
        generate_images.Arguments(
            **common,
            input=str(prompts),
            model=str(model),
            variants=["gendered"],
            max_prompts=32,
            num_inference_steps=2,
        )
    )
    train = collect_datasets.run(collect_datasets.Arguments(**common, prompts=str(prompts), images=str(images)))
    timings = {}
    for cached in (False, True):
        args = TrainArguments(
            **common,
            pretrained_model_name_or_path=str(model),
            dataset_name=str(train),
            resolution=options.resolution,
            center_crop=True,
            train_batch_size=options.batch_size,
            max_train_steps=options.steps,
            checkpointing_steps=10**6,
            cache_latents=cached,
            output_repo=f"ft-cached-{cached}",
            force=True,
        )
        started = time.perf_counter()
        run(args)
        timings[cached] = time.perf_counter() - started
    samples = options.steps * options.batch_size
    report = {
        "benchmark": "train_text_to_image, cached latents off vs on",
        "machine": machine(),
        "model": f"tiny AltDiffusion (random weights), {options.resolution} px",
        "steps": options.steps,
        "batch_size": options.batch_size,
        "samples_per_second_uncached": round(samples / timings[False], 2),
        "samples_per_second_cached": round(samples / timings[True], 2),
        "speedup": round(timings[False] / timings[True], 2),
    }
    write_report("train", report, options.results_dir)
    return report


if __name__ == "__main__":
    main()
