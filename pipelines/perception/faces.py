"""Face detection behind one interface, and face chips cut as FairFace was trained.

Backends (`DETECTORS`):
- `dlib`: dlib's CNN face detector and 5-point shape predictor, FairFace's own pipeline (the
  reference study's): the image is first resized with `dlib.resize_image` so its longer side is
  800 px, as FairFace's `predict.py` does (`--dlib_max_size`). The models are those of the
  `face_recognition_models` package; the detector's network runs in PyTorch (`mmod.py`: the same
  detections as the prebuilt `dlib-bin` wheel on a CPU, 16x faster per core; it runs on a GPU too), the
  landmarks in dlib;
- `mtcnn`: facenet-pytorch's MTCNN (its weights ship in the wheel), with 5 landmarks;
- `haar`: OpenCV's frontal-face Haar cascade (ships with OpenCV 4.x); dlib's 5-point predictor
  then finds the landmarks inside each box;
- `none`: the whole image is the face (images that are already face crops; offline runs, whose
  random-weight models draw no faces).

`face_chip` cuts every detector's faces with dlib's geometry (`dlib.get_face_chip`, 300 px,
padding 0.25), which FairFace was trained on: dlib's 5-point shape predictor finds the landmarks
inside each detector's box, and a least-squares similarity transform takes dlib's 5-point template
onto them. (MTCNN's own five points fitted to the same template put a real face's chip up to 10 px
away from dlib's, its mouth corners pulling the fit; dlib's points in MTCNN's box stay within 2 px.)
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from pipelines.errors import ConfigError

# Landmark templates in dlib's unit face square (dlib, Boost Software License 1.0): a chip of
# `size` and `padding` puts a template point u at (padding + u) / (1 + 2 * padding) * size.
# dlib's 5-point shape predictor: outer and inner corner of the eye on the image's right, outer and
# inner corner of the other eye, the point under the nose.
DLIB5_TEMPLATE = np.array(
    [
        [0.8595674595992, 0.2134981538014],
        [0.6460604764104, 0.2289674387677],
        [0.1205750620789, 0.2137274526848],
        [0.3340850613712, 0.2290642403242],
        [0.4901123135679, 0.6277975316475],
    ]
)
CHIP_SIZE, CHIP_PADDING = 300, 0.25  # FairFace's


@dataclass
class Face:
    """A detected face: box (x1, y1, x2, y2), confidence, and dlib's 5 landmarks (None: box only),
    in the image's pixels. `scale`: the factor of the resized image the detector found it in (dlib's
    800 px), where its box and landmarks were whole pixels."""

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray | None = None
    scale: float = 1.0

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
            boxes, probs = self.mtcnn.detect(batch)
            for i, b, p in zip(indices, boxes, probs):
                if b is None:
                    continue
                # Under numpy 2 facenet-pytorch returns object arrays: cast before any arithmetic.
                b = np.asarray(b, dtype=np.float32).reshape(-1, 4)
                p = np.asarray(p, dtype=np.float32).reshape(-1)
                results[i] = [
                    Face(box, float(pp), dlib_landmarks(images[i], box))
                    for box, pp in ((tuple(map(float, bb)), pp) for bb, pp in zip(b, p))
                    if pp >= self.threshold
                ]
        return results


def dlib_model_file(name: str) -> Path:
    """A model file of the `face_recognition_models` package, found without importing it (its
    import needs `pkg_resources`)."""
    if importlib.util.find_spec("dlib") is None:
        raise ConfigError("dlib is not installed: pip install dlib-bin face_recognition_models (see README)")
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("dlib's models are missing: pip install face_recognition_models")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / name
    if not path.is_file():
        raise ConfigError(f"dlib model {name} is missing from the face_recognition_models package")
    return path


@functools.cache
def dlib_landmarker() -> object:
    """dlib's 5-point predictor, process-wide by design (like `load_grammar`): the same file in every
    run, with no setting and no state, so a later run cannot see another run's choices in it."""
    import dlib

    return dlib.shape_predictor(str(dlib_model_file("shape_predictor_5_face_landmarks.dat")))


def dlib_landmarks(image: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """dlib's 5 points of the face in `box`."""
    import dlib

    rect = dlib.rectangle(*(int(round(v)) for v in box))
    shape = dlib_landmarker()(image, rect)
    return np.array([[shape.part(i).x, shape.part(i).y] for i in range(5)], dtype=np.float32)


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
            faces = []
            for x, y, w, h in boxes:
                box = (float(x), float(y), float(x + w), float(y + h))
                faces.append(Face(box, 1.0, dlib_landmarks(image, box)))
            results.append(faces)
        return results


class DlibDetector:
    """dlib's CNN face detector and 5-point predictor, as FairFace's predict.py runs them.

    `engine="torch"` (the default) runs dlib's own model file in PyTorch (`pipelines.perception.mmod`):
    the same boxes and scores as dlib's wheel (tested on the CPU), on every core or a GPU.
    `engine="dlib"` calls dlib's wheel itself (one thread, about 10 s per image at FairFace's
    settings): the reference the port is tested and benchmarked against."""

    name = "dlib"
    ENGINES = ("torch", "dlib")

    def __init__(self, upsample: int = 1, max_size: int | None = 800, engine: str = "torch", device: str = "cpu"):
        path = str(dlib_model_file("mmod_human_face_detector.dat"))
        if engine == "torch":
            from pipelines.perception.mmod import MMODDetector

            port = MMODDetector(path, device=device)
            self.find = lambda images: port(images, self.upsample)
        elif engine == "dlib":
            import dlib

            native = dlib.cnn_face_detection_model_v1(path)
            box = lambda d: (d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom(), d.confidence)  # noqa: E731
            self.find = lambda images: [[box(d) for d in native(image, self.upsample)] for image in images]
        else:
            raise ConfigError(f"engine={engine!r}: allowed {', '.join(self.ENGINES)}")
        self.upsample, self.max_size = upsample, max_size

    def detect(self, images: list[np.ndarray]) -> list[list[Face]]:

        resized, scales = zip(*(dlib_resized(image, self.max_size) for image in images)) if images else ((), ())
        results = []
        for image, scale, detections in zip(resized, scales, self.find(list(resized))):
            faces = []
            for *corners, confidence in detections:
                landmarks = dlib_landmarks(image, tuple(corners)) / scale
                faces.append(Face(tuple(float(v) / scale for v in corners), float(confidence), landmarks, scale))
            results.append(faces)
        return results


def dlib_resized(image: np.ndarray, max_size: int | None) -> tuple[np.ndarray, float]:
    """The image as FairFace's predict.py resizes it (`dlib.resize_image`, the longer side max_size),
    and the factor; unchanged with max_size None."""
    import dlib

    image = np.ascontiguousarray(image)
    if not max_size:
        return image, 1.0
    height, width = image.shape[:2]
    rows, cols = (
        (int(max_size * height / width), max_size) if width > height else (max_size, int(max_size * width / height))
    )
    return np.ascontiguousarray(dlib.resize_image(image, rows=rows, cols=cols)), max_size / max(height, width)


class WholeImageDetector:
    """No detection: every image is one face crop (for face-prompt images that are all face, and offline runs)."""

    name = "none"

    def detect(self, images: list[np.ndarray]) -> list[list[Face]]:
        return [[Face((0.0, 0.0, float(image.shape[1]), float(image.shape[0])), 1.0)] for image in images]


DETECTORS = ("dlib", "mtcnn", "haar", "none")


def load_detector(name: str, device: str = "cpu", dlib_max_size: int | None = 800) -> FaceDetector:
    if name == "dlib":
        return DlibDetector(max_size=dlib_max_size, device=device)
    if name == "mtcnn":
        return MTCNNDetector(device=device)
    if name == "haar":
        return HaarDetector()
    if name == "none":
        return WholeImageDetector()
    raise ConfigError(f"detector={name!r}: allowed {', '.join(DETECTORS)}")


def similarity(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The least-squares similarity (rotation, uniform scale, translation; no reflection) taking
    `source` points onto `target` points, as a 2x3 matrix (Umeyama's closed form)."""
    src_mean, dst_mean = source.mean(0), target.mean(0)
    src, dst = source - src_mean, target - dst_mean
    covariance = dst.T @ src / len(source)
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1
    rotation = u @ sign @ vt
    scale = np.trace(np.diag(singular) @ sign) / (src**2).sum(1).mean()
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - matrix[:, :2] @ src_mean
    return matrix


def chip_to_image(face: Face, size: int = CHIP_SIZE, padding: float = CHIP_PADDING) -> np.ndarray:
    """The 2x3 matrix taking chip pixels to image pixels: dlib's geometry when the face has
    landmarks, else a padded square around its box."""
    if face.landmarks is not None and np.all(np.isfinite(face.landmarks)):
        template = (padding + DLIB5_TEMPLATE) / (1 + 2 * padding) * size
        return similarity(template, np.asarray(face.landmarks, dtype=np.float64))
    x1, y1, x2, y2 = face.box
    side = max(x2 - x1, y2 - y1) * (1 + 2 * padding)
    scale = max(side, 1.0) / size
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    return np.array([[scale, 0, cx - scale * size / 2], [0, scale, cy - scale * size / 2]])


def fairface_chip(image: np.ndarray, face: Face, size: int = CHIP_SIZE, padding: float = CHIP_PADDING) -> np.ndarray:
    """The chip exactly as FairFace's predict.py cuts it: `dlib.get_face_chip` on the image resized
    as the dlib detector saw it (`face.scale`), from the detection's box and 5 points there, with
    dlib's own resampling and black outside the image. `face_chip` cuts the same geometry from the
    image as given (no resampling before the cut; outside the image, its reflection): about 2 grey
    levels apart on average at 512 px.
    """
    import dlib

    if face.landmarks is None:
        raise ValueError("a FairFace chip needs dlib's landmarks (the dlib detector)")
    height, width = image.shape[:2]
    max_size = round(face.scale * max(height, width))
    resized, scale = dlib_resized(image, max_size if face.scale != 1.0 else None)

    def pixel(value: float) -> int:  # whole pixels in the resized image, where dlib found them
        return int(round(value * scale))

    rect = dlib.rectangle(*(pixel(v) for v in face.box))
    points = dlib.points([dlib.point(pixel(x), pixel(y)) for x, y in face.landmarks])
    shape = dlib.full_object_detection(rect, points)
    return np.asarray(dlib.get_face_chip(resized, shape, size=size, padding=padding))


def face_chip(image: np.ndarray, face: Face, size: int = CHIP_SIZE, padding: float = CHIP_PADDING) -> np.ndarray:
    """An aligned face chip (size x size RGB), cut with dlib's geometry."""
    import cv2

    if face.landmarks is None and face.box == (0.0, 0.0, float(image.shape[1]), float(image.shape[0])):
        return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)  # the whole image is the face
    matrix = chip_to_image(face, size, padding)
    return cv2.warpAffine(
        image,
        matrix,
        (size, size),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REFLECT,
    )
