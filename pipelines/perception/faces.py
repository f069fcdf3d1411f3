"""Face detection behind one interface, and FairFace-style face chips.

Backends (`DETECTORS`):
- `mtcnn`: facenet-pytorch's MTCNN (its weights ship in the wheel), with 5 landmarks;
- `haar`: OpenCV's frontal-face Haar cascade (ships with OpenCV 4.x), boxes only;
- `dlib`: dlib's CNN detector with the 5-point shape predictor, the reference study's pipeline
  (optional: dlib builds from source; its models come from the `face_recognition_models` package);
- `none`: the whole image is the face (images that are already face crops; offline runs, whose
  random-weight models draw no faces).

`face_chip` aligns a face as FairFace expects (dlib's `get_face_chips`, 300 px, padding 0.25): a
similarity transform of the 5 landmarks onto a canonical template, or a padded square crop of the
box when a detector gives no landmarks.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from pipelines.errors import ConfigError


@dataclass
class Face:
    """A detected face: box (x1, y1, x2, y2), confidence, and 5 landmarks (eyes, nose, mouth corners)."""

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray | None = None

    @property
    def area(self) -> float:
        return max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1])


class FaceDetector(Protocol):
    name: str

    def detect(self, images: list[np.ndarray]) -> list[list[Face]]:
        """Faces in each RGB uint8 image (H, W, 3), batched."""
        ...


class MTCNNDetector:
    name = "mtcnn"

    def __init__(self, device: str = "cpu", min_face_size: int = 20, threshold: float = 0.9):
        from facenet_pytorch import MTCNN

        self.mtcnn = MTCNN(keep_all=True, device=device, min_face_size=min_face_size)
        self.threshold = threshold

    def detect(self, images: list[np.ndarray]) -> list[list[Face]]:
        from PIL import Image

        results: list[list[Face]] = [[] for _ in images]
        by_size: dict[tuple[int, int], list[int]] = {}
        for index, image in enumerate(images):
            by_size.setdefault(image.shape[:2], []).append(index)
        for indices in by_size.values():  # MTCNN batches images of one size
            batch = [Image.fromarray(images[i]) for i in indices]
            boxes, probs, points = self.mtcnn.detect(batch, landmarks=True)
            for i, b, p, lm in zip(indices, boxes, probs, points):
                if b is None:
                    continue
                # Under numpy 2 facenet-pytorch returns object arrays: cast before any arithmetic.
                b = np.asarray(b, dtype=np.float32).reshape(-1, 4)
                p = np.asarray(p, dtype=np.float32).reshape(-1)
                lm = np.asarray(lm, dtype=np.float32).reshape(-1, 5, 2)
                results[i] = [
                    Face(tuple(map(float, bb)), float(pp), ll) for bb, pp, ll in zip(b, p, lm) if pp >= self.threshold
                ]
        return results


class HaarDetector:
    name = "haar"

    def __init__(self, scale_factor: float = 1.1, min_neighbors: int = 5, min_size: int = 24):
        import cv2

        path = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"
        if not path.is_file():
            raise ConfigError(f"detector='haar': {path} is missing (OpenCV 5 dropped the cascades: pin opencv<5)")
        self.cascade = cv2.CascadeClassifier(str(path))
        self.scale_factor, self.min_neighbors, self.min_size = scale_factor, min_neighbors, min_size

    def detect(self, images: list[np.ndarray]) -> list[list[Face]]:
        import cv2

        results = []
        for image in images:
            gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
            boxes = self.cascade.detectMultiScale(
                gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors, minSize=(self.min_size,) * 2
            )
            results.append([Face((float(x), float(y), float(x + w), float(y + h)), 1.0) for x, y, w, h in boxes])
        return results


class DlibDetector:
    """dlib's CNN face detector and 5-point predictor, as the reference study (FairFace's predict.py)."""

    name = "dlib"

    def __init__(self, upsample: int = 1):
        if importlib.util.find_spec("dlib") is None:
            raise ConfigError("detector='dlib' needs the optional extra: pip install dlib face_recognition_models")
        import dlib

        # face_recognition_models needs pkg_resources to import; its files are found without importing it.
        spec = importlib.util.find_spec("face_recognition_models")
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError("detector='dlib' needs the face_recognition_models package for its model files")
        models = Path(next(iter(spec.submodule_search_locations))) / "models"
        self.detector = dlib.cnn_face_detection_model_v1(str(models / "mmod_human_face_detector.dat"))
        self.predictor = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
        self.upsample = upsample

    def detect(self, images: list[np.ndarray]) -> list[list[Face]]:
        results = []
        for image in images:
            faces = []
            for detection in self.detector(image, self.upsample):
                r = detection.rect
                shape = self.predictor(image, r)
                # dlib's 5 points: right eye corners (2), left eye corners (2), nose; make them the MTCNN order.
                p = np.array([[shape.part(i).x, shape.part(i).y] for i in range(5)], dtype=np.float32)
                landmarks = np.stack([p[2:4].mean(0), p[0:2].mean(0), p[4], p[4], p[4]])
                faces.append(Face((r.left(), r.top(), r.right(), r.bottom()), float(detection.confidence), landmarks))
            results.append(faces)
        return results


class WholeImageDetector:
    """No detection: every image is one face crop (for face-prompt images that are all face, and offline runs)."""

    name = "none"

    def detect(self, images: list[np.ndarray]) -> list[list[Face]]:
        return [[Face((0.0, 0.0, float(image.shape[1]), float(image.shape[0])), 1.0)] for image in images]


DETECTORS = {"mtcnn": MTCNNDetector, "haar": HaarDetector, "dlib": DlibDetector, "none": WholeImageDetector}


def load_detector(name: str, device: str = "cpu") -> FaceDetector:
    if name not in DETECTORS:
        raise ConfigError(f"detector={name!r}: allowed {', '.join(DETECTORS)}")
    return DETECTORS[name](device=device) if name == "mtcnn" else DETECTORS[name]()


# Canonical positions of (left eye, right eye, nose, left mouth, right mouth) in a unit face square,
# the 5-point template dlib's get_face_chips aligns to.
_TEMPLATE = np.array(
    [[0.3155, 0.3836], [0.6845, 0.3836], [0.5000, 0.5600], [0.3500, 0.7400], [0.6500, 0.7400]], dtype=np.float32
)


def face_chip(image: np.ndarray, face: Face, size: int = 300, padding: float = 0.25) -> np.ndarray:
    """An aligned face chip (size x size RGB) with `padding` of the face width on every side."""
    import cv2

    inner = size / (1 + 2 * padding)
    if face.landmarks is not None and np.all(np.isfinite(face.landmarks)):
        target = _TEMPLATE * inner + padding * inner
        matrix, _ = cv2.estimateAffinePartial2D(face.landmarks.astype(np.float32), target, method=cv2.LMEDS)
        if matrix is not None:
            return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    x1, y1, x2, y2 = face.box
    side = max(x2 - x1, y2 - y1) * (1 + 2 * padding)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    scale = size / max(side, 1.0)
    matrix = np.array([[scale, 0, size / 2 - scale * cx], [0, scale, size / 2 - scale * cy]], dtype=np.float32)
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
