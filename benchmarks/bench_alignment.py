"""CLIP-score throughput of the evaluate module against the reference study's loop, same model and images.

    python -m benchmarks.bench_alignment [--images 256] [--occupations 8]

Reference loop: per occupation the text is encoded again, then one image per forward pass, with
gradients on (no `no_grad`). Module: batches of `--batch_size` images without gradients, each
distinct text encoded once. Same open_clip model (a small ViT CLIP, random weights, 64 px input)
and images, on the CPU, in one run. Writes benchmarks/results/alignment.json.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import evaluate  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.common import machine, scratch, write_report  # noqa: E402
from pipelines.modeling.clip import load_open_clip  # noqa: E402
from pipelines.modeling.tiny import build_tiny_open_clip  # noqa: E402
from pipelines.resources import space_folder  # noqa: E402

MODULE = str(space_folder("clip_score"))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--occupations", type=int, default=8)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--results_dir", default=None)
    options = parser.parse_args(argv)
    folder = str(build_tiny_open_clip(scratch()))
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in range(options.images)]
    texts = [f"a photo of the face of a worker {i % options.occupations}" for i in range(options.images)]

    model, preprocess, tokenizer = load_open_clip(folder)
    started = time.perf_counter()
    for occupation in range(options.occupations):
        text = f"a photo of the face of a worker {occupation}"
        text_features = model.encode_text(tokenizer([text]))  # gradients on, as the reference loop
        for image, image_text in zip(images, texts):
            if image_text == text:
                image_features = model.encode_image(preprocess(image)[None])
                torch.nn.functional.cosine_similarity(image_features, text_features).item()
    reference = time.perf_counter() - started

    module = evaluate.load(MODULE)
    module.compute(predictions=images[:1], references=texts[:1], model=folder)  # load the model, as the loop did
    started = time.perf_counter()
    module.compute(predictions=images, references=texts, model=folder, batch_size=options.batch_size)
    batched = time.perf_counter() - started

    report = {
        "benchmark": "CLIP score: evaluate module vs reference loop",
        "machine": machine(),
        "images": options.images,
        "batch_size": options.batch_size,
        "reference_images_per_second": round(options.images / reference, 1),
        "module_images_per_second": round(options.images / batched, 1),
        "speedup": round(reference / batched, 2),
    }
    write_report("alignment", report, options.results_dir)
    return report


if __name__ == "__main__":
    main()
