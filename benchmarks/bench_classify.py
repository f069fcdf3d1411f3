"""Classification throughput of the classify stage's approach against the reference study's.

    python -m benchmarks.bench_classify [--images 96] [--occupations 6]

Both find faces with MTCNN on the same images and classify them with the same ResNet-34
(FairFace-shaped, random weights) on the CPU, measured in one run.
- Reference (FairFace's predict.py as the study ran it): per occupation the classifier is loaded
  again, every face chip is written to disk as a JPEG and read back, one image per forward.
- Stage: models loaded once, chips kept in memory, batches of `--batch_size` per forward.
Writes benchmarks/results/classify.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import skimage.data
import torch
from PIL import Image

from benchmarks.common import machine, write_report  # noqa: E402
from pipelines.perception.classifiers import FairFaceClassifier
from pipelines.perception.faces import face_chip, load_detector


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--occupations", type=int, default=6)
    parser.add_argument("--batch_size", type=int, default=32)
    options = parser.parse_args()
    torch.manual_seed(0)
    import torchvision

    model = torchvision.models.resnet34(weights=None)
    model.fc = torch.nn.Linear(model.fc.in_features, 18)
    weights = Path(tempfile.mkdtemp()) / "fairface.pt"
    torch.save(model.state_dict(), weights)
    # A real face, shifted and mirrored so that every image differs.
    base = skimage.data.astronaut()
    images = [np.roll(base if i % 2 else base[:, ::-1], i, axis=1).copy() for i in range(options.images)]
    per_occupation = np.array_split(np.arange(options.images), options.occupations)
    detector = load_detector("mtcnn")

    started = time.perf_counter()
    chips_dir = Path(tempfile.mkdtemp())
    for occupation, indices in enumerate(per_occupation):
        classifier = FairFaceClassifier(weights)  # reloaded per occupation
        for i in indices:
            (faces,) = detector.detect([images[i]])
            path = chips_dir / f"{occupation}_{i}.jpg"
            Image.fromarray(face_chip(images[i], faces[0])).save(path)
            classifier.classify([np.asarray(Image.open(path).convert("RGB"))])  # one image per forward
    reference = time.perf_counter() - started

    started = time.perf_counter()
    classifier = FairFaceClassifier(weights)
    for start in range(0, options.images, options.batch_size):
        batch = images[start : start + options.batch_size]
        found = detector.detect(batch)
        classifier.classify([face_chip(image, faces[0]) for image, faces in zip(batch, found)])
    stage = time.perf_counter() - started

    report = {
        "benchmark": "face detection + FairFace classification: stage vs reference approach",
        "machine": machine(),
        "images": options.images,
        "occupations": options.occupations,
        "batch_size": options.batch_size,
        "reference_images_per_second": round(options.images / reference, 2),
        "stage_images_per_second": round(options.images / stage, 2),
        "speedup": round(reference / stage, 2),
    }
    write_report("classify", report)


if __name__ == "__main__":
    main()
