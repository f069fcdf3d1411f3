"""What the stages' harness costs: each stage against a bare loop of its own models, in one run.

    python -m benchmarks.bench_overhead [--images 192] [--batch_size 8] [--steps 10] [--results_dir DIR]

The harness is everything a stage adds to its models' work: reading the input dataset, seeds,
sharding and locks, encoding and writing the output, the card, publishing. For each stage, in one
process, with the same models, images, batch size, dtype, scheduler, steps and threads:

- generation: `generate_images` (tiny AltDiffusion, 64 px, float32) against a bare diffusers loop:
  one pipeline call per batch of prompts, a seeded generator per image, PIL images out;
- classification: `classify` (FairFace-shaped ResNet-34, tiny random weights, on the whole image)
  against a bare loop: decode each PNG, cut the chip, classify a batch;
- alignment: `evaluate_alignment` (open_clip at ViT-B/32's size, random weights, 224 px: the tiny
  one's work per image is too small to time against a stage's start-up) against a bare loop:
  decode, preprocess, encode each image and each of the stage's texts once (its occupation's three
  English texts), cosine similarities.

A stage's steady rate is its run on all `--images` less a run on one batch, which pays the same
start-up (loading models, publishing): the difference is the work on the other images. Both come
after an untimed run, and the bare loops after a few untimed images: a process's first call of a
model pays for reading its files and building its kernels. The bare
loops are timed in two halves, one before the stage runs and one after, so that a shared machine's
drift weighs on both alike. Goal: every stage at least 95% of its bare loop. Writes overhead.json.
"""

from __future__ import annotations

import argparse
import io
import os
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.common import machine, scratch, write_report  # noqa: E402
from pipelines import build_tiny_model, classify, evaluate_alignment, generate_images, generate_prompts  # noqa: E402
from pipelines.artifacts.inputs import resolve_model  # noqa: E402
from pipelines.artifacts.reader import DatasetArtifact  # noqa: E402
from pipelines.artifacts.store import LocalStore  # noqa: E402
from pipelines.evaluate_alignment import PERSON  # noqa: E402
from pipelines.modeling.clip import load_open_clip  # noqa: E402
from pipelines.modeling.diffusion import load_pipeline  # noqa: E402
from pipelines.modeling.tiny import build_tiny_open_clip  # noqa: E402
from pipelines.perception.classifiers import FaceCrop, load_classifier  # noqa: E402
from pipelines.perception.faces import face_chip, load_detector  # noqa: E402
from pipelines.prompting.grammar import load_grammar  # noqa: E402

GOAL = 0.95
# open_clip's ViT-B-32 architecture.
VIT_B32 = {
    "embed_dim": 512,
    "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12},
}


def halves(loop: Callable[[list], None], items: list, middle: Callable[[], dict[str, float]]) -> tuple[float, dict]:
    """Seconds of the bare `loop` over `items` (its first half before `middle` runs, the second after)
    and what `middle` returned. A few items go through first, untimed: the first call of a model
    pays for building its kernels, which the stage's runs pay outside the difference they time."""
    half = len(items) // 2
    loop(items[:4])
    started = time.perf_counter()
    loop(items[:half])
    first = time.perf_counter() - started
    between = middle()
    started = time.perf_counter()
    loop(items[half:])
    return first + time.perf_counter() - started, between


def steady(run: Callable[[int], float], images: int, few: int) -> float | None:
    """Images per second of a stage once started: its run on `images` less its run on `few` (None
    when the difference is lost in the noise: too few images to tell). A first, untimed run on `few`
    pays what only a process's first run pays (reading the model files, building kernels)."""
    run(few)
    small = run(few)
    large = run(images)
    return (images - few) / (large - small) if large > small else None


def comparison(bare_seconds: float, images: int, stage_rate: float | None) -> dict[str, Any]:
    bare_rate = images / bare_seconds
    ratio = stage_rate / bare_rate if stage_rate else None
    return {"bare_images_per_second": round(bare_rate, 2),
            "stage_images_per_second": round(stage_rate, 2) if stage_rate else None,
            "stage_share_of_bare": round(ratio, 3) if ratio else None,
            "meets_goal": ratio >= GOAL if ratio else None}  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=192)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--results_dir", default=None)
    options = parser.parse_args(argv)
    images, batch = options.images, options.batch_size
    if images < 4 * batch:
        raise SystemExit(f"--images={images}: at least 4 batches ({4 * batch}) to tell start-up from work")
    threads = torch.get_num_threads()
    root = str(scratch("bench-overhead-"))
    common = {"store_root": root, "namespace": "bench"}
    store = LocalStore(root)
    professions = ["doctor", "nurse", "CEO", "firefighter", "teacher", "pilot"]
    prompts = str(generate_prompts.run(generate_prompts.Arguments(**common, professions=professions)))
    model = str(build_tiny_model.run(build_tiny_model.Arguments(**common, input=prompts)))
    fairface = str(build_tiny_model.run(build_tiny_model.Arguments(**common, kind="fairface")))
    clip = str(build_tiny_open_clip(scratch() / "clip", config=VIT_B32))
    report: dict[str, Any] = {"benchmark": "each stage against a bare loop of its models", "machine": machine(),
                              "threads": threads, "images": images, "batch_size": batch, "goal": GOAL}  # fmt: skip

    # Generation.
    settings = {"input": prompts, "model": model, "batch_size": batch, "num_inference_steps": options.steps,
                "guidance_scale": 7.5, "cpu_threads": threads, "variants": ["gendered"], "languages": ["en"],
                "force": True}  # fmt: skip
    rows = [
        r for r in DatasetArtifact(store.resolve(prompts, "dataset"), prompts).rows("en") if r["variant"] == "gendered"
    ]
    rows = rows[:images]
    pipe = load_pipeline(resolve_model(model, store, namespace="bench"), store, device="cpu")

    def bare_generation(part: list[dict]) -> None:
        for start in range(0, len(part), batch):
            chunk = part[start : start + batch]
            seeds = [generate_images.image_seed(0, row["prompt_id"], 0) for row in chunk]
            with torch.inference_mode():
                pipe([row["prompt"] for row in chunk], num_inference_steps=options.steps, guidance_scale=7.5,
                     generator=[torch.Generator().manual_seed(seed) for seed in seeds], output_type="pil")  # fmt: skip

    def generate(count: int) -> float:
        started = time.perf_counter()
        arguments = generate_images.Arguments(**common, **settings, max_prompts=count, output_repo=f"images-{count}")
        generate_images.run(arguments)
        return time.perf_counter() - started

    bare, rate = halves(bare_generation, rows, lambda: {"rate": steady(generate, images, batch)})
    report["generation"] = comparison(bare, images, rate["rate"])

    # Classification, of the images generation made.
    made = f"bench/images-{images}"
    artifact = DatasetArtifact(store.resolve(made, "dataset"), made)
    pictures = [row["image"]["bytes"] for row in artifact.rows("en_gendered", ["image"])]
    detector = load_detector("none")
    classifier = load_classifier("fairface", store.resolve(fairface, "model"))

    def bare_classification(part: list[bytes]) -> None:
        for start in range(0, len(part), 32):
            decoded = [_decode(data) for data in part[start : start + 32]]
            faces = [found[0] for found in detector.detect(decoded)]
            classifier.classify([FaceCrop(image, face, face_chip(image, face)) for image, face in zip(decoded, faces)])

    def classify_images(count: int) -> float:
        started = time.perf_counter()
        arguments = classify.Arguments(**common, input=f"bench/images-{count}", detector="none",
                                       classifier="fairface", classifier_model=fairface, cpu_threads=threads,
                                       force=True)  # fmt: skip
        classify.run(arguments)
        return time.perf_counter() - started

    bare, rate = halves(bare_classification, pictures, lambda: {"rate": steady(classify_images, images, batch)})
    report["classification"] = comparison(bare, images, rate["rate"])

    # Alignment, of the same images against the stage's three English texts of their occupation.
    grammar = load_grammar("en")
    professions_of = [row["profession"] for row in artifact.rows("en_gendered", ["profession"])]
    texts = {profession: [grammar.eval_indirect(profession), grammar.eval_direct(profession), PERSON]
             for profession in set(professions_of)}  # fmt: skip
    clip_model, preprocess, tokenizer = load_open_clip(clip)

    def bare_alignment(part: list[bytes]) -> None:
        with torch.inference_mode():
            distinct = list(dict.fromkeys(text for three in texts.values() for text in three))
            encoded = torch.nn.functional.normalize(clip_model.encode_text(tokenizer(distinct)), dim=-1)
            index = {text: i for i, text in enumerate(distinct)}
            for start in range(0, len(part), 64):
                chunk = part[start : start + 64]
                pixels = torch.stack([preprocess(Image.open(io.BytesIO(data)).convert("RGB")) for data in chunk])
                features = torch.nn.functional.normalize(clip_model.encode_image(pixels), dim=-1)
                for number in range(3):
                    chosen = [index[texts[p][number]] for p in professions_of[start : start + len(chunk)]]
                    (features * encoded[chosen]).sum(-1).tolist()

    def align(count: int) -> float:
        started = time.perf_counter()
        evaluate_alignment.run(evaluate_alignment.Arguments(**common, input=f"bench/images-{count}", clip_model=clip,
                                                            cpu_threads=threads, force=True))  # fmt: skip
        return time.perf_counter() - started

    bare, rate = halves(bare_alignment, pictures, lambda: {"rate": steady(align, images, batch)})
    report["alignment"] = comparison(bare, images, rate["rate"])
    write_report("overhead", report, options.results_dir)
    return report


def _decode(data: bytes) -> Any:
    import numpy as np

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


if __name__ == "__main__":
    main()
