"""Classification throughput of the classify stage's approach against the reference study's.

    python -m benchmarks.bench_classify [--images 96] [--occupations 6] [--dlib_images 8]

Same detector: both find faces with MTCNN on the same images and classify them with the same
ResNet-34 (FairFace-shaped, random weights) on the CPU, measured in one run.
- Reference (FairFace's predict.py as the study ran it): per occupation the classifier is loaded
  again, every face chip is written to disk as a JPEG and read back, one image per forward.
- Stage: models loaded once, chips kept in memory, batches of `--batch_size` per forward.

The reference's own detector: the same reference loop with dlib's CNN detector at FairFace's
settings (longer side 800 px, one upsampling; single-threaded, the toolkit's `--detector dlib`), on
`--dlib_images` of the images, against the stage's fast path (MTCNN); and what the fast path costs
in fidelity: how often the perceived gender (dlib-models' network) of the face dlib found and of the
face MTCNN found agree. Writes benchmarks/results/classify.json.
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
from pipelines.perception.faces import Face, FaceDetector, face_chip, load_detector


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--occupations", type=int, default=6)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--dlib_images", type=int, default=8, help="images for the dlib runs (about 10 s each)")
    parser.add_argument("--results_dir", default=None)
    options = parser.parse_args(argv)
    torch.manual_seed(0)
    import torchvision

    model = torchvision.models.resnet34(weights=None)
    model.fc = torch.nn.Linear(model.fc.in_features, 18)
    weights = Path(tempfile.mkdtemp()) / "fairface.pt"
    torch.save(model.state_dict(), weights)
    # A real face (512 px), shifted and mirrored so that every image differs.
    base = skimage.data.astronaut()
    images = [np.roll(base if i % 2 else base[:, ::-1], i, axis=1).copy() for i in range(options.images)]
    detector = load_detector("mtcnn")

    reference, _ = reference_way(images, detector, weights, options.occupations)

    started = time.perf_counter()
    classifier = FairFaceClassifier(weights)
    parts = {"detection": 0.0, "classification": 0.0}  # where the stage's time goes
    for start in range(0, options.images, options.batch_size):
        batch = images[start : start + options.batch_size]
        began = time.perf_counter()
        found = detector.detect(batch)
        crops = [FaceCrop(image, faces[0], face_chip(image, faces[0])) for image, faces in zip(batch, found)]
        detected = time.perf_counter()
        classifier.classify(crops)
        parts["detection"] += detected - began
        parts["classification"] += time.perf_counter() - detected
    stage = time.perf_counter() - started

    few = images[: options.dlib_images]
    by_dlib_seconds, by_dlib = reference_way(few, load_detector("dlib"), weights, options.occupations)
    report = {
        "benchmark": "face detection + FairFace classification: stage vs reference approach",
        "machine": machine(),
        "images": options.images,
        "resolution": int(base.shape[0]),
        "occupations": options.occupations,
        "batch_size": options.batch_size,
        "reference_images_per_second": round(options.images / reference, 2),
        "stage_images_per_second": round(options.images / stage, 2),
        "speedup": round(reference / stage, 2),
        "goal": 5.0,
        **{f"stage_{part}_ms_per_image": round(1000 * seconds / options.images, 1) for part, seconds in parts.items()},
        "reference_dlib_images_per_second": round(len(few) / by_dlib_seconds, 3),
        "speedup_vs_reference_detector": round((options.images / stage) / (len(few) / by_dlib_seconds), 1),
        "dlib": dlib_agreement(few, by_dlib, detector),
    }
    write_report("classify", report, options.results_dir)
    return report


def reference_way(
    images: list[np.ndarray], detector: FaceDetector, weights: Path, occupations: int
) -> tuple[float, list[list[Face]]]:
    """Seconds of the reference's loop over `images` (split into `occupations`), and the faces found:
    per occupation the classifier loaded again, each face chip through a JPEG file, one per forward."""
    chips_dir = Path(tempfile.mkdtemp())
    found: list[list[Face]] = []
    started = time.perf_counter()
    for occupation, indices in enumerate(np.array_split(np.arange(len(images)), occupations)):
        classifier = FairFaceClassifier(weights)  # reloaded per occupation
        for i in indices:
            (faces,) = detector.detect([images[i]])
            found.append(faces)
            if not faces:
                continue
            path = chips_dir / f"{occupation}_{i}.jpg"
            Image.fromarray(face_chip(images[i], faces[0])).save(path)
            chip = np.asarray(Image.open(path).convert("RGB"))
            classifier.classify([FaceCrop(images[i], faces[0], chip)])  # one image per forward
    return time.perf_counter() - started, found


def dlib_agreement(images: list[np.ndarray], by_dlib: list[list[Face]], mtcnn: FaceDetector) -> dict:
    """How often the perceived gender of the face dlib found and of the face MTCNN found agree
    (dlib-models' age-and-gender network, which aligns from the box)."""
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
        "faces_found_by_both": len(pairs),
        "gender_agreement_dlib_vs_mtcnn": round(sum(agree) / len(agree), 3) if agree else None,
    }


if __name__ == "__main__":
    main()
