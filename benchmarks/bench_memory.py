"""Peak memory of the image stages against dataset size: flat, or growing with the images.

    python -m benchmarks.bench_memory [--small 100] [--large 2000] [--results_dir DIR]

Each of generate_images, classify and evaluate_alignment runs as its own command, in a fresh
process, on `--small` and on `--large` images, with the same settings otherwise; the report gives
each run's peak resident set (`ru_maxrss` of that process alone) and the ratio large/small, against
the goal of less than 10% growth. The models are tiny and run on the CPU: what is measured is how a
stage holds its data (shards written as they are made, rows read in batches), which does not
depend on the model's size. Generation uses 2 denoising steps at 32 px; classification reads the
world's colour cue (no face detector); alignment uses a tiny open_clip. Writes `memory.json`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.common import machine, scratch, write_report  # noqa: E402
from pipelines import build_tiny_model, generate_prompts  # noqa: E402

PROMPTS = 10  # the images of a run are PROMPTS prompts x (images / PROMPTS) seeds


def peak_rss_mib(module: str, flags: list[str]) -> float:
    """Runs `python -m <module> <flags>` in a fresh process; its own peak resident set in MiB."""
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen([sys.executable, "-m", module, *flags], stdout=log, stderr=log)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            log.seek(0)
            raise RuntimeError(f"{module} failed:\n{log.read().decode()[-2000:]}")
    return usage.ru_maxrss / 1024  # KiB on Linux


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=100, help="images in the small run")
    parser.add_argument("--large", type=int, default=2000, help="images in the large run")
    parser.add_argument("--results_dir", default=None)
    options = parser.parse_args(argv)
    if options.small % PROMPTS or options.large % PROMPTS or options.small >= options.large:
        parser.error(f"--small and --large: multiples of {PROMPTS}, small below large")
    root = str(scratch("bench-memory-"))
    common = {"store_root": root, "namespace": "bench"}
    prompts = generate_prompts.run(generate_prompts.Arguments(**common, professions=["doctor", "nurse", "CEO"]))
    model = build_tiny_model.run(build_tiny_model.Arguments(**common, input=str(prompts)))
    clip = build_tiny_model.run(build_tiny_model.Arguments(**common, kind="open-clip"))
    store = [f"--store_root={root}", "--namespace=bench"]

    peaks: dict[str, dict[str, float]] = {"generate_images": {}, "classify": {}, "evaluate_alignment": {}}
    for size, images in (("small", options.small), ("large", options.large)):
        repo = f"images-{size}"
        peaks["generate_images"][size] = peak_rss_mib(
            "pipelines.generate_images",
            [*store, f"--input={prompts}", f"--model={model}", f"--output_repo={repo}", "--variants", "gendered",
             f"--max_prompts={PROMPTS}", f"--num_images={images // PROMPTS}", "--num_inference_steps=2",
             "--height=32", "--width=32", "--batch_size=50", "--images_per_shard=200", "--cpu_threads=2"],
        )  # fmt: skip
        peaks["classify"][size] = peak_rss_mib(
            "pipelines.classify",
            [*store, f"--input=bench/{repo}", "--detector=none", "--classifier=world-cue", "--batch_size=64"],
        )
        peaks["evaluate_alignment"][size] = peak_rss_mib(
            "pipelines.evaluate_alignment",
            [*store, f"--input=bench/{repo}", f"--clip_model={clip}", "--clip_pretrained=none",
             f"--multilingual_clip_model={clip}", "--batch_size=64"],
        )  # fmt: skip

    report = {
        "benchmark": "peak resident memory of the image stages, small against large datasets",
        "machine": machine(),
        "model": "tiny AltDiffusion (random weights, 32 px, 2 steps), world-cue classifier, tiny open_clip",
        "small_images": options.small,
        "large_images": options.large,
        "stages": {
            stage: {
                "peak_mib_small": round(sizes["small"], 1),
                "peak_mib_large": round(sizes["large"], 1),
                "growth": round(sizes["large"] / sizes["small"] - 1, 3) + 0.0,  # never -0.0
            }
            for stage, sizes in peaks.items()
        },
        "goal_growth_below": 0.10,
    }
    write_report("memory", report, options.results_dir)
    return report


if __name__ == "__main__":
    main()
