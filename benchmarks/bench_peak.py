"""Each hot loop against the machine's own limit, in one run, on the CPU.

    python -m benchmarks.bench_peak [--dtypes float32 bfloat16] [--resolution 256] [--results_dir DIR]
    python -m benchmarks.bench_peak --smoke      # the same code paths with tiny models, in seconds (the tests)

1. The machine's dense matmul peak for each dtype: TFLOP/s of a large square matrix product, with
   every core; the denominator of every share below.
2. The study's hot loops at their real architectures (random weights: speed does not depend on
   them), timed, their FLOPs counted by PyTorch's flop counter, and the share of the peak reached:
   - generation: one denoising step of AltDiffusion-m9's UNet with classifier-free guidance (batch
     2, 512-token prompt states) at `--resolution` px, a reduced size a CPU can time;
   - training: the same UNet's forward and backward at `--resolution` px (the reference trains at
     256), `--train_batch` images;
   - classification: FairFace's ResNet-34 on 224-px chips, 32 at a time;
   - alignment: CLIP ViT-L/14 image encoding at 224 px, 8 at a time.
3. Where a loop stays under half the peak, the reason: one call profiled, its operator time split
   into dense arithmetic (matrix products, convolutions, attention; its three slowest kernels named),
   bookkeeping (allocating and viewing tensors: the framework's time) and the rest, named by
   operator with its share of the time: the layers bound by memory traffic (normalisation,
   activations, additions, copies). Mostly dense time under the goal means the kernels themselves
   (a convolution's backward, small matrices) run below the matmul's rate.
4. The real study's cost on this machine: each unit's FLOPs at the real size (generation: 50 steps
   at 512 px with guidance, the VAE decoder and the text encoder; a training step: 16 images at
   256 px, UNet and text encoder; counted on the meta device, the text encoder layer by layer)
   divided by the rate its loop reached in float32. Written to `throughput.json` under "cpu", which
   the dry run reads (`python -m pipelines.run RECIPE --dry_run --device_kind cpu`).

Writes `peak.json` and updates `throughput.json`.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import torch

from benchmarks.architectures import M9_PROMPT_TOKENS, M9_UNET, clip_vit_l14, fairface_resnet34, real_unit_flops
from benchmarks.common import count_flops, machine, matmul_peak, record_throughput, timed, write_report

GOAL = 0.5  # the share of the measured peak each loop should reach, or say why it cannot
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# Operators whose time is dense arithmetic; everything else moves memory more than it computes.
DENSE = ("mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "conv", "convolution", "scaled_dot_product", "attention")


# Operators that only describe or allocate tensors: their time is the framework's, not a layer's.
BOOKKEEPING = {"empty", "empty_strided", "view", "as_strided", "reshape", "_reshape_alias", "_unsafe_view",
               "transpose", "t", "permute", "expand", "slice", "select", "unsqueeze", "squeeze", "alias",
               "split", "chunk", "detach", "resolve_conj", "resolve_neg", "lift_fresh", "unbind"}  # fmt: skip


def is_dense(operator: str) -> bool:
    name = operator.removeprefix("aten::").lower()
    return any(part in name for part in DENSE)


def is_bookkeeping(operator: str) -> bool:
    return operator.removeprefix("aten::") in BOOKKEEPING


def time_split(function: Callable[[], Any], top: int = 6) -> dict[str, Any]:
    """One call profiled: the share of operator time in dense arithmetic, and the other operators
    that take the most of it (self time, so no time is counted twice)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        function()
    times: dict[str, float] = {}
    for event in profiler.key_averages():
        if event.key.startswith("aten::"):
            times[event.key] = times.get(event.key, 0.0) + event.self_cpu_time_total
    total = sum(times.values()) or 1.0
    dense = sum(t for name, t in times.items() if is_dense(name))
    bookkeeping = sum(t for name, t in times.items() if is_bookkeeping(name))
    others = sorted(((t, n) for n, t in times.items() if not is_dense(n) and not is_bookkeeping(n)), reverse=True)
    kernels = sorted(((t, n) for n, t in times.items() if is_dense(n)), reverse=True)
    return {
        "dense_share_of_time": round(dense / total, 3),
        # Most of the time in dense kernels and still under the goal: those kernels are the reason.
        "dense_operators": [{"operator": name, "share_of_time": round(t / total, 3)} for t, name in kernels[:3]],
        "bookkeeping_share_of_time": round(bookkeeping / total, 3),
        "memory_bound_operators": [
            {"operator": name, "share_of_time": round(t / total, 3)} for t, name in others[:top]
        ],
    }


def significant(value: float, digits: int = 4) -> float:
    """`value` to `digits` significant figures: a fixed number of decimals would turn a 1.5 ms call or
    a 0.004 TFLOP/s loop into a figure several percent off, and the ratios computed from it with it."""
    return float(f"{value:.{digits}g}")


def measure(name: str, function: Callable[[], Any], peak: float, repeats: int, note: str) -> dict[str, Any]:
    """Seconds per call, FLOPs per call, achieved TFLOP/s and its share of `peak`; below the goal,
    where the time goes."""
    flops = count_flops(function)
    seconds = timed(function, "cpu", repeats=repeats)
    achieved = flops / seconds / 1e12
    entry = {
        "loop": name,
        "what": note,
        "seconds_per_call": significant(seconds),
        "flops_per_call": flops,
        "tflops": significant(achieved),
        "share_of_peak": significant(achieved / peak),
    }
    entry["meets_goal"] = entry["share_of_peak"] >= GOAL
    if not entry["meets_goal"]:
        entry["why"] = time_split(function)
    return entry


def hot_loops(options: argparse.Namespace, dtype: torch.dtype, peak: float) -> list[dict[str, Any]]:
    """The four loops in `dtype`, each against the peak of that dtype."""
    import diffusers

    smoke = options.smoke
    unet_config = {**M9_UNET, **SMOKE_UNET} if smoke else M9_UNET
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(**unet_config).to(dtype)
    latent = options.resolution // 8
    tokens = 8 if smoke else M9_PROMPT_TOKENS
    width = unet_config["cross_attention_dim"]
    loops = []

    def step_inputs(batch: int) -> tuple[torch.Tensor, ...]:
        return (torch.randn(batch, 4, latent, latent, dtype=dtype), torch.full((batch,), 500),
                torch.randn(batch, tokens, width, dtype=dtype))  # fmt: skip

    sample, timestep, states = step_inputs(2)
    unet.eval()
    with torch.inference_mode():
        loops.append(measure("generation", lambda: unet(sample, timestep, states), peak, options.repeats,
                             f"m9 UNet, one denoising step, batch 2 (guidance), {options.resolution} px"))  # fmt: skip
    unet.train()
    sample, timestep, states = step_inputs(options.train_batch)

    def forward_backward() -> None:
        unet(sample, timestep, states).sample.float().square().mean().backward()
        unet.zero_grad(set_to_none=True)

    what = f"m9 UNet forward and backward, batch {options.train_batch}, {options.resolution} px"
    loops.append(measure("training", forward_backward, peak, options.repeats, what))
    resnet = fairface_resnet34("cpu", dtype)
    chips = torch.randn(32 if not smoke else 2, 3, 224 if not smoke else 64, 224 if not smoke else 64, dtype=dtype)
    with torch.inference_mode():
        loops.append(measure("classification", lambda: resnet(chips), peak, options.repeats,
                             f"FairFace's ResNet-34, {len(chips)} chips of {chips.shape[-1]} px"))  # fmt: skip
    clip, _ = clip_vit_l14("smoke" if smoke else "real", "cpu", dtype)
    size = clip.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    pixels = torch.randn(8 if not smoke else 2, 3, size, size, dtype=dtype)
    with torch.inference_mode():
        loops.append(measure("alignment", lambda: clip.encode_image(pixels), peak, options.repeats,
                             f"CLIP ViT-L/14 image encoding, {len(pixels)} images of {size} px"))  # fmt: skip
    return loops


SMOKE_UNET = {
    "block_out_channels": (32, 64, 64, 64),
    "layers_per_block": 1,
    "cross_attention_dim": 32,
    "attention_head_dim": 4,
    "norm_num_groups": 8,
}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny models: the code paths in seconds")
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES))
    parser.add_argument("--resolution", type=int, default=None, help="pixels of the UNet loops (default 256)")
    parser.add_argument("--train_batch", type=int, default=None, help="images per training step (default 2)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per loop, after a warm-up (default 2)")
    parser.add_argument("--results_dir", default=None, help="where the reports go (default benchmarks/results)")
    options = parser.parse_args(argv)
    defaults = {"resolution": 64 if options.smoke else 256, "train_batch": 2, "repeats": 1 if options.smoke else 2}
    for name, value in defaults.items():
        if getattr(options, name) is None:
            setattr(options, name, value)
    started = time.perf_counter()
    report: dict[str, Any] = {"device": machine(), "threads": torch.get_num_threads(), "smoke": options.smoke,
                              "goal_share_of_peak": GOAL, "dtypes": {}}  # fmt: skip
    for name in options.dtypes:
        peak = matmul_peak("cpu", DTYPES[name], 256 if options.smoke else 4096, repeats=3 if options.smoke else 10)
        report["dtypes"][name] = {"matmul_peak_tflops": significant(peak),
                                  "loops": hot_loops(options, DTYPES[name], peak)}  # fmt: skip
    if "float32" in report["dtypes"]:  # (smoke: the tiny models' rates, the same code path)
        rates = {loop["loop"]: loop["tflops"] * 1e12 for loop in report["dtypes"]["float32"]["loops"]}
        units = real_unit_flops()
        seconds = {
            "seconds_per_image": units["image"] / rates["generation"],
            "seconds_per_step": units["training_step"] / rates["training"],
            "seconds_per_classified_image": units["classified_image"] / rates["classification"],
            "seconds_per_scored_image": units["scored_image"] / rates["alignment"],
        }
        report["real_study_on_this_cpu"] = {"flops_per_unit": units, **{k: significant(v) for k, v in seconds.items()}}
        record_throughput(
            "cpu",
            {
                **{k: significant(v) for k, v in seconds.items()},
                "device": machine(),
                "measured_by": "benchmarks/bench_peak.py: float32 rates at a reduced size, scaled by FLOPs counted "
                "at the real size (the detector of classification not included)",
            },
            options.results_dir,
        )
    report["seconds"] = round(time.perf_counter() - started, 1)
    write_report("peak", report, options.results_dir)
    return report


if __name__ == "__main__":
    main()
