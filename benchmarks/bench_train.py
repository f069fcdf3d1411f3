"""Training samples per second with cached latents on and off, same model, data and steps, one run.

    python -m benchmarks.bench_train [--steps 100] [--batch_size 8] [--resolution 64]

Both runs fine-tune the tiny AltDiffusion on the same training dataset (built here by the real
stages) with --center_crop; the cached run encodes every image with the VAE and every caption with
the frozen text encoder once, up front, and that time is counted.

What caching can save depends on the models' relative sizes, which the tiny ones do not share with
the real one, so the report adds the ceiling at AltDiffusion-m9's size, counted rather than timed:
FLOPs per training sample of what caching removes (the VAE encoder at 512 px, the text encoder at
m9's 512 tokens) and of what remains (the UNet's forward and backward), by PyTorch's flop counter
on the meta device (no weights, seconds on any machine). Writes benchmarks/results/train.json.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.architectures import M9_TEXT_ENCODER  # noqa: E402
from benchmarks.common import count_flops, machine, scratch, write_report  # noqa: E402
from pipelines import build_tiny_model, collect_datasets, generate_images, generate_prompts  # noqa: E402
from training.train_text_to_image import TrainArguments, run  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--memory_captions", type=int, default=1000, help="captions for the text-state memory line")
    parser.add_argument("--results_dir", default=None)
    options = parser.parse_args(argv)
    root = str(scratch("bench-train-"))
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
        "goal": 2.0,
        "text_state_memory": text_state_memory(options.memory_captions),
        "real_size_ceiling": caching_ceiling(),
    }
    write_report("train", report, options.results_dir)
    return report


def caching_ceiling() -> dict:
    """TFLOPs per training sample at m9's size and the speed-up caching can reach at most: full
    fine-tuning computes gradients for every UNet weight; LoRA (its adapters add little) for the
    activations only."""
    import torch

    from benchmarks.architectures import M9_PROMPT_TOKENS, REAL_RESOLUTION, m9_pipeline

    pipe = m9_pipeline("real", torch.float32, "meta")
    side = REAL_RESOLUTION // pipe.vae_scale_factor
    pixels = torch.empty(1, 3, REAL_RESOLUTION, REAL_RESOLUTION, device="meta")
    tokens = torch.zeros(1, M9_PROMPT_TOKENS, dtype=torch.long, device="meta")
    with torch.no_grad():
        removed = {
            "vae_encoder": count_flops(lambda: pipe.vae.encode(pixels).latent_dist.sample()),
            "text_encoder": count_flops(lambda: pipe.text_encoder(tokens)),
        }

    def unet_step(weights: bool) -> int:
        pipe.unet.requires_grad_(weights)
        latents = torch.empty(1, 4, side, side, device="meta", requires_grad=not weights)
        hidden = torch.empty(1, M9_PROMPT_TOKENS, pipe.unet.config.cross_attention_dim, device="meta")
        timestep = torch.tensor([500], device="meta")
        return count_flops(lambda: pipe.unet(latents, timestep, hidden).sample.square().mean().backward())

    remaining = {"full": unet_step(True), "lora": unet_step(False)}
    cached = sum(removed.values())
    return {
        "resolution": REAL_RESOLUTION,
        "tokens": M9_PROMPT_TOKENS,
        **{f"{name}_tflops": round(flops / 1e12, 3) for name, flops in removed.items()},
        **{f"unet_{name}_tflops": round(flops / 1e12, 3) for name, flops in remaining.items()},
        **{f"speedup_ceiling_{name}": round((flops + cached) / flops, 2) for name, flops in remaining.items()},
    }


def rss() -> dict[str, int]:
    """This process's resident memory in bytes: private (anonymous) and file-backed pages."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {name: int(fields[name].split()[0]) * 1024 for name in ("RssAnon", "RssFile")}


def text_state_memory(captions: int, tokens: int = 512, width: int = M9_TEXT_ENCODER["project_dim"]) -> dict:
    """`measure_text_state_memory` in a fresh process: memory the training run freed would otherwise
    be reused by the allocator and hide what a cache costs."""
    import json
    import subprocess
    import sys

    code = (
        "import json; from benchmarks.bench_train import measure_text_state_memory as m; "
        f"print(json.dumps(m({captions}, {tokens}, {width})))"
    )
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_text_state_memory(captions: int, tokens: int, width: int) -> dict:
    """Memory of cached text states with AltDiffusion-m9's encoder (512 tokens; width 768, its
    projection's, which the UNet attends to: XLM-R's own 1,024 is projected before it is cached), per
    10,000 captions: held in memory as fp32 tensors (before), and as the training script caches
    them (fp16, on disk, memory-mapped, read through its `CachedLatents`). Measured on `captions`
    captions and scaled; private memory is what the process cannot give back, file-backed pages are
    the page cache's to reclaim."""
    import gc

    import numpy as np
    import torch

    from training.train_text_to_image import CachedLatents, EpochOrder

    scale = 10_000 / captions
    start = rss()
    held = [torch.randn(tokens, width) for _ in range(captions)]  # the naive cache: every state in RAM
    before = rss()["RssAnon"] - start["RssAnon"]
    del held
    gc.collect()
    folder = scratch("bench-text-states-")
    np.save(folder / "latents.npy", np.zeros((captions, 4, 8, 8), np.float16))
    hidden = np.lib.format.open_memmap(
        folder / "hidden.npy", mode="w+", dtype=np.float16, shape=(captions, tokens, width)
    )
    for index in range(captions):
        hidden[index] = np.random.default_rng(index).standard_normal((tokens, width), dtype=np.float32)
    hidden.flush()
    del hidden
    start = rss()
    cached = CachedLatents(folder, [{} for _ in range(captions)], list(range(captions)), EpochOrder(captions, 0))
    for index in range(captions):  # one epoch, as the training loop reads it
        cached[index]
    after = rss()
    return {
        "tokens": tokens,
        "width": width,
        "measured_captions": captions,
        "before_private_gib_per_10k": round(before * scale / 2**30, 2),
        "after_private_gib_per_10k": round((after["RssAnon"] - start["RssAnon"]) * scale / 2**30, 2),
        "after_file_backed_gib_per_10k": round((after["RssFile"] - start["RssFile"]) * scale / 2**30, 2),
        "after_disk_gib_per_10k": round((folder / "hidden.npy").stat().st_size * scale / 2**30, 2),
    }


if __name__ == "__main__":
    main()
