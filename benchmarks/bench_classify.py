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
from pipelines.perception.classifiers import AgeAndGenderClassifier, FaceCrop, FairFaceClassifier
from pipelines.perception.faces import face_chip, load_detector


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--occupations", type=int, default=6)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--dlib_images", type=int, default=8, help="images for dlib's cost (512 px)")
    parser.add_argument("--results_dir", default=None)
    options = parser.parse_args(argv)
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
            chip = np.asarray(Image.open(path).convert("RGB"))
            classifier.classify([FaceCrop(images[i], faces[0], chip)])  # one image per forward
    reference = time.perf_counter() - started

    started = time.perf_counter()
    classifier = FairFaceClassifier(weights)
    for start in range(0, options.images, options.batch_size):
        batch = images[start : start + options.batch_size]
        found = detector.detect(batch)
        classifier.classify(
            [FaceCrop(image, faces[0], face_chip(image, faces[0])) for image, faces in zip(batch, found)]
        )
    stage = time.perf_counter() - started
    dlib = dlib_cost(images[: options.dlib_images])

    report = {
        "benchmark": "face detection + FairFace classification: stage vs reference approach",
        "machine": machine(),
        "images": options.images,
        "occupations": options.occupations,
        "batch_size": options.batch_size,
        "reference_images_per_second": round(options.images / reference, 2),
        "stage_images_per_second": round(options.images / stage, 2),
        "speedup": round(reference / stage, 2),
        "goal": 5.0,
        "dlib": dlib,
    }
    write_report("classify", report, options.results_dir)
    return report


def dlib_cost(images: list[np.ndarray]) -> dict:
    """dlib's CNN detector at 512 px on the CPU, and how often the perceived gender of a face found by
    dlib and by MTCNN agree (dlib-models' age-and-gender network, which aligns from the box)."""
    from pipelines.perception.faces import load_detector

    images = [np.asarray(Image.fromarray(image).resize((512, 512))) for image in images]
    dlib, mtcnn = load_detector("dlib", dlib_max_size=512), load_detector("mtcnn")
    started = time.perf_counter()
    by_dlib = dlib.detect(images)
    seconds = time.perf_counter() - started
    by_mtcnn = mtcnn.detect(images)
    classifier = AgeAndGenderClassifier()
    pairs = [(image, a[0], b[0]) for image, a, b in zip(images, by_dlib, by_mtcnn) if a and b]
    labels = [
        [result.gender for result in classifier.classify([FaceCrop(image, face, image)])]
        for image, *faces in pairs
        for face in faces
    ]
    agree = [labels[2 * i] == labels[2 * i + 1] for i in range(len(pairs))]
    return {
        "images": len(images),
        "resolution": 512,
        "dlib_images_per_second": round(len(images) / seconds, 3),
        "faces_found_by_both": len(pairs),
        "gender_agreement_dlib_vs_mtcnn": round(sum(agree) / len(agree), 3) if agree else None,
    }


if __name__ == "__main__":
    main()
