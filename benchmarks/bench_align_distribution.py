"""A distributional-alignment step with its prompts denoised together against one prompt at a time.

    python -m benchmarks.bench_align_distribution [--prompts 6] [--images 12] [--steps 10] [--repeats 3]

`training/align_distribution.py` makes, for each prompt of a step, `--images` images with gradients
and as many with the frozen model, over `--steps` denoising steps, and backpropagates to the text
encoder. Where the UNet is frozen and one process runs, the step's prompts share each UNet call
(`alignment_step` with all the step's visits); the baseline is the same function given one visit at
a time, which is what it did before. The alignment recipe's settings (six prompts of 12 images, 10
steps, the world model at 16 px, its colour-cue classifier, pixel preservation, the text encoder
trained), untrained random weights (a step costs the same), on every usable CPU and on one thread,
the two ways taking turns. Reports each way's seconds per step, the ratio, and whether the text
encoder's gradients are the same to the bit (and how far apart they are where not). Writes
benchmarks/results/align_distribution.json.
"""

from __future__ import annotations

import argparse
import copy
import time
from types import SimpleNamespace
from typing import Any

from benchmarks.common import machine, write_report
from pipelines.harness.stage import usable_cpus

JOBS = ("CEO", "nurse", "software developer", "hairdresser", "firefighter", "teacher")


def step_settings(images: int, steps: int, prompts: int) -> SimpleNamespace:
    """The alignment recipe's settings of a step (pipelines/recipes/alignment_offline.yaml)."""
    return SimpleNamespace(
        num_inference_steps=steps, guidance_scale=1.0, gradient_steps=None, gradient_scaling="none",
        resolution=16, train_batch_size=images, seed=0, uncertainty_threshold=0.5, changed_weight=0.2,
        preservation_weight=8.0, images_per_backward=None, attribute="gender", preservation="pixels",
        prompts_per_step=prompts, named_gender="aligned",
    )  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    import numpy as np
    import torch

    from pipelines.modeling.world import build_world_pipeline
    from pipelines.perception.differentiable import SoftWorldCue
    from training import align_distribution as align
    from training.models import Parts

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=6, help="prompts per step")
    parser.add_argument("--images", type=int, default=12, help="images per prompt")
    parser.add_argument("--steps", type=int, default=10, help="denoising steps")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps each way (the median is reported)")
    parser.add_argument("--results_dir", default=None)
    options = parser.parse_args(argv)
    prompts = [f"close-up photo of an adult {JOBS[i % len(JOBS)]} wearing work clothes at work"
               for i in range(options.prompts)]  # fmt: skip
    pipe = build_world_pipeline(prompts)
    pipe.unet.eval().requires_grad_(False), pipe.text_encoder.eval().requires_grad_(False)
    frozen = Parts(pipe=pipe, tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, vae=pipe.vae, unet=pipe.unet,
                   noise_scheduler=None, weight_dtype=torch.float32)  # fmt: skip
    args = step_settings(options.images, options.steps, options.prompts)
    accelerator = SimpleNamespace(device=torch.device("cpu"), num_processes=1, process_index=0,
                                  gather=lambda tensor: tensor, backward=lambda loss: loss.backward())  # fmt: skip
    visits = [(10 + i, prompt, np.array([0.5, 0.5]), None) for i, prompt in enumerate(prompts)]
    preservation = align.Preservation(args, None, "cpu")

    def step(together: bool) -> tuple[float, list[Any]]:
        """Seconds of one step on a fresh copy of the text encoder, and its gradients."""
        parts = copy.copy(frozen)
        parts.text_encoder = copy.deepcopy(pipe.text_encoder).requires_grad_(True)
        started = time.perf_counter()
        groups = [visits] if together else [[visit] for visit in visits]
        for group in groups:
            align.alignment_step(parts, frozen, SoftWorldCue(), preservation, group, args, accelerator)
        seconds = time.perf_counter() - started
        return seconds, [p.grad for p in parts.text_encoder.parameters() if p.grad is not None]

    previous = torch.get_num_threads()
    results = []
    for threads in sorted({usable_cpus(), 1}, reverse=True):
        torch.set_num_threads(threads)
        step(True), step(False)  # warm-up
        times: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(options.repeats):
            for together in (False, True):
                seconds, gradients = step(together)
                times[together].append(seconds)
                if together:
                    shared = gradients
                else:
                    apart = gradients
        apart_s, together_s = (float(np.median(times[way])) for way in (False, True))
        scale = max(float(g.abs().max()) for g in apart)
        results.append({
            "threads": threads,
            "one_prompt_at_a_time_s": round(apart_s, 4),
            "prompts_together_s": round(together_s, 4),
            "speedup": round(apart_s / together_s, 3),
            "same_bits": all(torch.equal(a, b) for a, b in zip(apart, shared, strict=True)),
            "max_gradient_difference_relative": float(
                max(float((a - b).abs().max()) for a, b in zip(apart, shared, strict=True)) / scale
            ),
        })  # fmt: skip
    torch.set_num_threads(previous)
    report = {
        "benchmark": "a distributional-alignment step: its prompts denoised together against one at a time",
        "machine": machine(),
        "model": "the planted-bias world's UNet (frozen) and text encoder (trained), 16 px, untrained weights",
        "prompts_per_step": options.prompts,
        "images_per_prompt": options.images,
        "denoising_steps": options.steps,
        "repeats": options.repeats,
        "by_threads": results,
    }
    write_report("align_distribution", report, options.results_dir)
    return report


if __name__ == "__main__":
    main()
