"""The real study's work at its real size on one GPU: generation, classification and CLIP scoring.

    python -m benchmarks.gpu                 # one GPU, under 5 minutes; writes benchmarks/results/gpu.json
    python -m benchmarks.gpu --smoke         # the same code paths at a tiny size on the CPU (the tests run it)

Models have the real architectures with random weights (`benchmarks.architectures`): speed and
memory do not depend on the weights. Measured in one run:

1. the device's fp16 matmul peak (a large matrix product), the denominator of "share of peak";
2. generation with AltDiffusion-m9's architecture at 512 px, fp16: a batch-size sweep (images per
   pipeline call, 1 to 32) against one image per call, with images/s, peak memory, FLOPs per image
   (PyTorch's flop counter on one full call) and the share of the matmul peak reached; then, at one
   batch size, each optimisation on and off: SDPA attention (against diffusers' plain attention),
   channels-last UNet, `torch.compile` of the UNet (compile time reported apart), and batched VAE
   decoding (against decoding one image at a time);
3. classification at the real size: MTCNN face detection (its packaged weights) and FairFace's
   ResNet-34 on 300-px chips, batched against one image at a time; and the reference's detector,
   dlib's CNN face detector run in PyTorch (`pipelines.perception.mmod`, dlib's own model file) at
   FairFace's settings (800 px, one upsampling), in batches;
4. CLIP ViT-L/14 scoring, batched against one image at a time.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from benchmarks.architectures import REAL_RESOLUTION, clip_vit_l14, fairface_resnet34, m9_pipeline
from benchmarks.common import count_flops, machine, matmul_peak, record_throughput, timed, write_report


@contextlib.contextmanager
def peak_memory(device: str) -> Iterator[dict[str, float]]:
    """Peak GPU memory (GiB) allocated inside the block (0 on CPU)."""
    out = {"peak_gib": 0.0}
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    yield out
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        out["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30


def generation(options: argparse.Namespace, device: str, dtype: torch.dtype, peak: float) -> dict[str, Any]:
    scale = "smoke" if options.smoke else "real"
    pipe = m9_pipeline(scale, dtype, device)
    size = 64 if options.smoke else REAL_RESOLUTION
    steps = options.steps
    prompt = "a photo of the face of a nurse"

    def call(batch: int) -> Any:
        return pipe([prompt] * batch, num_inference_steps=steps, guidance_scale=7.5, height=size, width=size,
                    generator=torch.Generator(device="cpu").manual_seed(0), output_type="pil")  # fmt: skip

    with torch.inference_mode():
        flops_per_image = count_flops(lambda: call(1))
        sweep = []
        for batch in options.batch_sizes:
            calls = max(1, options.images // batch)
            with peak_memory(device) as memory:
                seconds = timed(lambda b=batch: call(b), device, repeats=calls)
            images_per_second = batch / seconds
            sweep.append(
                {
                    "batch_size": batch,
                    "images_per_second": round(images_per_second, 3),
                    "peak_memory_gib": round(memory["peak_gib"], 2),
                    "share_of_peak": round(flops_per_image * images_per_second / (peak * 1e12), 4),
                }
            )
        one = sweep[0]["images_per_second"]
        for entry in sweep:
            entry["speedup_vs_one_per_call"] = round(entry["images_per_second"] / one, 2)
        toggles = optimisations(pipe, lambda: call(options.toggle_batch), device, options.toggle_batch, options)
    return {
        "resolution": size,
        "steps": steps,
        "prompt_tokens": pipe.tokenizer.model_max_length,
        "flops_per_image": flops_per_image,
        "batch_sweep": sweep,
        "optimisations": toggles,
    }


def optimisations(
    pipe: Any, call: Callable[[], Any], device: str, batch: int, options: argparse.Namespace
) -> list[dict[str, Any]]:
    """Images/s with each optimisation off and on, the others at their defaults."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    def rate() -> float:
        return batch / timed(call, device, repeats=options.toggle_repeats)

    results = []
    pipe.unet.set_attn_processor(AttnProcessor())
    plain = rate()
    pipe.unet.set_attn_processor(AttnProcessor2_0())
    results.append({"name": "SDPA attention", "off": plain, "on": rate()})
    off = rate()
    pipe.unet.to(memory_format=torch.channels_last)
    results.append({"name": "channels-last UNet", "off": off, "on": rate()})
    pipe.unet.to(memory_format=torch.contiguous_format)
    pipe.vae.enable_slicing()
    sliced = rate()
    pipe.vae.disable_slicing()
    results.append({"name": "batched VAE decoding", "off": sliced, "on": rate()})
    if options.compile:
        eager = rate()
        unet = pipe.unet
        pipe.unet = torch.compile(unet, mode="reduce-overhead", fullgraph=False)
        start = time.perf_counter()
        call()  # compiles
        compile_seconds = time.perf_counter() - start
        results.append({"name": "torch.compile UNet", "off": eager, "on": rate(), "compile_seconds": compile_seconds})
        pipe.unet = unet
    for entry in results:
        entry["off"], entry["on"] = round(entry["off"], 3), round(entry["on"], 3)
        entry["speedup"] = round(entry["on"] / entry["off"], 2)
    return results


def classification(options: argparse.Namespace, device: str, dtype: torch.dtype) -> dict[str, Any]:
    """MTCNN on 512-px images and FairFace on 300-px chips, batched against one at a time."""
    from facenet_pytorch import MTCNN

    size = 64 if options.smoke else REAL_RESOLUTION
    count = options.classify_images
    images = torch.randint(0, 255, (count, size, size, 3), dtype=torch.uint8).numpy()
    detector = MTCNN(keep_all=True, device=device)
    classifier = fairface_resnet34(device, dtype)
    chips = (
        torch.randn(count, 3, 300, 300, device=device, dtype=dtype)
        if not options.smoke
        else torch.randn(count, 3, 64, 64, device=device, dtype=dtype)
    )

    def batched() -> None:
        detector.detect(list(images))
        for start in range(0, count, 32):
            classifier(chips[start : start + 32])

    def one_by_one() -> None:
        for index in range(count):
            detector.detect(images[index])
            classifier(chips[index : index + 1])

    with torch.inference_mode():
        fast, slow = timed(batched, device), timed(one_by_one, device)
    return {
        "images": count,
        "batched_images_per_second": round(count / fast, 2),
        "one_at_a_time_images_per_second": round(count / slow, 2),
        "speedup": round(slow / fast, 2),
        "dlib_detector": dlib_detector(options, device, images[: options.dlib_images]),
    }


def dlib_detector(options: argparse.Namespace, device: str, images: Any) -> dict[str, Any]:
    """dlib's CNN face detector in PyTorch, float32 as dlib computes it, at FairFace's settings: each
    image resized (dlib's resampling) so its longer side is 800 px, then upsampled once (1,600 px)."""
    import dlib

    from pipelines.perception.faces import dlib_model_file
    from pipelines.perception.mmod import MMODDetector

    side = 96 if options.smoke else 800
    resized = [dlib.resize_image(image, rows=side, cols=side) for image in images]
    detector = MMODDetector(dlib_model_file("mmod_human_face_detector.dat"), device=device, batch_size=8)
    seconds = timed(lambda: detector(resized, 1), device)
    return {"images": len(resized), "side": side, "upsample": 1, "images_per_second": round(len(resized) / seconds, 2)}


def clip_scoring(options: argparse.Namespace, device: str, dtype: torch.dtype) -> dict[str, Any]:
    """CLIP ViT-L/14 image and text embeddings, batches of 64 against one image at a time."""
    model, tokenizer = clip_vit_l14("smoke" if options.smoke else "real", device, dtype)
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    count = options.clip_images
    pixels = torch.randn(count, 3, size, size, device=device, dtype=dtype)
    text = tokenizer(["a photo of the face of a nurse"]).to(device)

    def batched() -> None:
        model.encode_text(text)
        for start in range(0, count, 64):
            model.encode_image(pixels[start : start + 64])

    def one_by_one() -> None:
        for index in range(count):
            model.encode_text(text)
            model.encode_image(pixels[index : index + 1])

    with torch.inference_mode():
        fast, slow = timed(batched, device), timed(one_by_one, device)
    return {
        "images": count,
        "resolution": size,
        "batched_images_per_second": round(count / fast, 2),
        "one_at_a_time_images_per_second": round(count / slow, 2),
        "speedup": round(slow / fast, 2),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU: the code paths, in seconds")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default 20; smoke 2)")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=None, help="default 1 2 4 8 16 32")
    parser.add_argument("--images", type=int, default=None, help="images per batch size (default 32)")
    parser.add_argument("--toggle_batch", type=int, default=None, help="batch size of the on/off runs (default 8)")
    parser.add_argument("--toggle_repeats", type=int, default=None, help="calls per on/off measurement (default 2)")
    parser.add_argument("--no_compile", dest="compile", action="store_false", help="skip torch.compile")
    parser.add_argument("--classify_images", type=int, default=None, help="default 256; smoke 4")
    parser.add_argument("--clip_images", type=int, default=None, help="default 256; smoke 4")
    parser.add_argument("--dlib_images", type=int, default=None, help="default 64; smoke 2")
    parser.add_argument("--output", default="gpu", help="report name")
    parser.add_argument("--results_dir", default=None, help="where the report goes (default benchmarks/results)")
    options = parser.parse_args(argv)
    smoke = options.smoke
    defaults = {"steps": 2 if smoke else 20, "batch_sizes": [1, 2] if smoke else [1, 2, 4, 8, 16, 32],
                "images": 2 if smoke else 32, "toggle_batch": 2 if smoke else 8, "toggle_repeats": 1 if smoke else 2,
                "classify_images": 4 if smoke else 256, "clip_images": 4 if smoke else 256,
                "dlib_images": 2 if smoke else 64}  # fmt: skip
    for name, value in defaults.items():
        if getattr(options, name) is None:
            setattr(options, name, value)
    if smoke:
        options.compile = False  # compiling takes minutes on a CPU; the GPU run measures it
    device = "cpu" if smoke or not torch.cuda.is_available() else "cuda"
    if device == "cpu" and not smoke:
        raise SystemExit("benchmarks.gpu: error: no GPU here; run with --smoke for the code paths on the CPU")
    dtype = torch.float32 if device == "cpu" else torch.float16
    name = torch.cuda.get_device_name() if device == "cuda" else machine()
    peak = matmul_peak(device, dtype, 256 if smoke else 8192)
    report = {
        "device": name,
        "dtype": str(dtype).removeprefix("torch."),
        "smoke": smoke,
        "matmul_peak_tflops": round(peak, 2),
        "generation": generation(options, device, dtype, peak),
        "classification": classification(options, device, dtype),
        "clip_scoring": clip_scoring(options, device, dtype),
    }
    report["throughput"] = throughput(report, device, options.results_dir)
    write_report(options.output, report, options.results_dir)
    return report


def throughput(report: dict[str, Any], device: str, results_dir: str | None) -> dict[str, Any]:
    """The device's seconds per unit of the real study's work, kept in throughput.json for the dry run:
    generation at the FLOP rate its fastest batch size reached, applied to the FLOPs of an image at 50
    steps; a training step at that same rate (this benchmark does not train); classification and CLIP
    scoring as measured, batched. A smoke run keeps its figures under "smoke", never as a GPU's."""
    from benchmarks.architectures import real_unit_flops

    generation = report["generation"]
    best = max(entry["images_per_second"] for entry in generation["batch_sweep"])
    rate = generation["flops_per_image"] * best  # FLOP/s
    units = real_unit_flops()
    entry = {
        "seconds_per_image": round(units["image"] / rate, 4),
        "seconds_per_step": round(units["training_step"] / rate, 4),
        "seconds_per_classified_image": round(1 / report["classification"]["batched_images_per_second"], 4),
        "seconds_per_scored_image": round(1 / report["clip_scoring"]["batched_images_per_second"], 4),
        "device": report["device"],
        "measured_by": "benchmarks/gpu.py: generation, classification (MTCNN and ResNet-34) and CLIP scoring as "
        "measured; a training step at generation's FLOP rate, scaled by its counted FLOPs",
    }
    record_throughput("cuda" if device == "cuda" else "smoke", entry, results_dir)
    return entry


if __name__ == "__main__":
    main()
