"""Classifiers whose outputs carry gradients back to the image pixels, for a training loss.

Distributional alignment (Shen et al., ICLR 2024) fine-tunes a generator through a classifier's
logits on its own images, so the classifier must be a differentiable function of the pixels.
Finding the face is not (a detector's box moves in jumps): it runs without gradient on uint8 copies,
as the study's classifiers see the images, and only the cut of the chip and the network carry
gradients. Two classifiers share one interface (`DifferentiableClassifier`):

- `SoftWorldCue`: the planted-bias world's cue (`pipelines.modeling.world.read_cue`), with the
  sign of its red-minus-blue balance made into logits by a temperature;
- `FairFaceChips`: FairFace's ResNet-34 on the chip `faces.fairface_chip` cuts (FairFace's predict.py:
  `dlib.get_face_chip` on the image resized to 800 px), re-expressed in PyTorch: dlib's resize
  (bilinear, corners aligned, in its own single-precision arithmetic), its chip transform (the
  similarity from dlib's 5-point template, extracted over dlib's rectangle, bilinear, black outside)
  and, for faces more than twice the chip's scale, dlib's 2:1 image pyramid (a [1 4 6 4 1] filter).
  dlib truncates to uint8 after each step; so does the forward pass here, with a straight-through
  gradient (the truncation's gradient taken as 1). The chips equal dlib's to the bit (tested on
  the astronaut photo, crops of it with and without the pyramid, and non-square ones), so the
  logits equal `FairFaceClassifier`'s to float rounding.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from pipelines.perception.classifiers import (
    AGE_GROUPS,
    GENDER_LABELS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    RACE_LABELS,
    _load_resnet,
    _sha256,
    fairface_files,
)
from pipelines.perception.faces import (
    CHIP_PADDING,
    CHIP_SIZE,
    DLIB5_TEMPLATE,
    Face,
    FaceDetector,
    chip_to_image,
    load_detector,
    similarity,
)


class DifferentiableClassifier(Protocol):
    name: str
    labels: dict[str, list[str]]  # attribute -> class names, in logit order

    def __call__(self, images: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Logits per attribute (n, K) and `valid` (n,) bools (a face or figure found), for images
        (n, 3, H, W) in [0, 1]. Rows that are not valid hold zeros that depend on no pixel."""
        ...

    def describe(self) -> dict[str, Any]:
        """What the model card records of the classifier: its name, what it reads, its weights."""
        ...


def _check_images(images: torch.Tensor) -> None:
    if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
        raise ValueError(f"images of shape {tuple(images.shape)}: need float (n, 3, H, W) in [0, 1]")


# --- the planted-bias world --------------------------------------------------------------------


class SoftWorldCue:
    """`world.read_cue` made differentiable: the saturated pixels' red-minus-blue balance, over a
    temperature, is the female logit (its negative the male one); argmax is read_cue's decision.

    Args:
        temperature (`float`): the balance per unit of logit; a disc's balance is about +-0.85, so the
            default puts a clear disc's logits near +-3.4, where a trained classifier's usually are
            (a lower one makes the alignment loss tens of times the preservation loss it is weighed
            against: a fine-tune then collapses every prompt to one colour).
        min_strength (`float`): the saturated mass (read_cue's `strength`, in pixels of saturation
            above 0.3) below which a picture has no disc and is not valid; a disc in the world's
            16 px pictures has about 20.
    """

    name = "world-cue"
    labels = {"gender": GENDER_LABELS}

    def __init__(self, temperature: float = 0.25, min_strength: float = 1.0) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature={temperature}: need > 0")
        self.temperature, self.min_strength = temperature, min_strength

    def __call__(self, images: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        _check_images(images)
        saturation = images.amax(1) - images.amin(1)
        weight = torch.relu(saturation - 0.3)  # grey pixels do not vote, as in read_cue
        strength = weight.sum((1, 2))
        balance = ((images[:, 0] - images[:, 2]) * weight).sum((1, 2)) / (strength + 1e-6)
        logits = torch.stack([-balance, balance], 1) / self.temperature  # GENDER_LABELS: male, female
        return {"gender": logits}, strength.detach() > self.min_strength

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "reads": "disc colour: red-minus-blue balance of the saturated pixels (world.read_cue) over a temperature",
            "temperature": self.temperature,
            "min_strength": self.min_strength,
        }


# --- dlib's chip, in PyTorch -------------------------------------------------------------------


def _truncated(values: torch.Tensor, epsilon: float = 1e-9) -> torch.Tensor:
    """dlib's cast to uint8 (truncation) in the forward pass, the identity's gradient backward. The
    epsilon (in double precision) lifts a value computed as 127.99999999999 where dlib's order of
    operations reaches 128 (tested: 1e-6 is too much, 0 too little)."""
    return values + (torch.floor(values + epsilon) - values).detach()


def dlib_resized_shape(height: int, width: int, max_size: int) -> tuple[int, int]:
    """(rows, cols) of `faces.dlib_resized`: the longer side max_size."""
    if width > height:
        return int(max_size * height / width), max_size
    return max_size, int(max_size * width / height)


def _resize(image: torch.Tensor, rows: int, cols: int, window: tuple[int, int, int, int]) -> torch.Tensor:
    """The `window` (left, top, right, bottom, inclusive) of `dlib.resize_image` to rows x cols
    (bilinear, corners aligned: x_scale = (in - 1) / (out - 1)), truncated, to the bit: dlib's RGB
    resize computes four columns at a time in single precision, from an x that accumulates in single
    precision, and the columns left over in double precision. Only the window is computed: the chip
    needs no more, and the autograd graph of a whole 800 px image would be ten times larger."""
    x0, y0, x1, y1 = window
    top, bottom, down = (v[y0 : y1 + 1] for v in _resize_rows(image.shape[-2], rows))
    left, right, across, simd = _resize_columns(image.shape[-1], cols)
    up, low = image[:, top], image[:, bottom]
    parts = []
    for start, stop, dtype in (
        (x0, min(simd, x1 + 1), torch.float32),  # the SIMD loop's columns
        (max(simd, x0), x1 + 1, torch.float64),  # the scalar loop's
    ):
        if start < stop:
            corners = [
                pixels[:, :, columns[start:stop]].to(dtype) for pixels in (up, low) for columns in (left, right)
            ]
            parts.append(_mix(corners, down, across[start:stop], single=dtype == torch.float32).to(image.dtype))
    return torch.cat(parts, dim=-1)


def _mix(corners: list[torch.Tensor], down: np.ndarray, across: np.ndarray, single: bool) -> torch.Tensor:
    """Bilinear mixing of the four neighbours (top-left, top-right, bottom-left, bottom-right) in
    dlib's order of operations: its SIMD loop (single precision) or its scalar loop (double)."""
    tl, tr, bl, br = corners

    def column(values: np.ndarray, axis: int) -> torch.Tensor:
        shape = (1, -1, 1) if axis == 1 else (1, 1, -1)
        return torch.as_tensor(values, dtype=tl.dtype, device=tl.device).view(shape)

    # dlib computes 1 - tb in double, then rounds it to the SIMD loop's floats.
    tb, above, lr = column(down, 1), column(1 - down, 1), column(across, 2)
    if single:
        mixed = above * (1 - lr) * tl + above * lr * tr + tb * (1 - lr) * bl + tb * lr * br
    else:
        mixed = above * ((1 - lr) * tl + lr * tr) + tb * ((1 - lr) * bl + lr * br)
    return _truncated(mixed, 0.0)  # single precision: no double rounding to make up for


def _resize_rows(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top and bottom source rows and the fraction between them, y accumulated in double as dlib does."""
    step = (size_in - 1) / max(size_out - 1, 1)
    y = np.cumsum(np.r_[0.0, np.full(size_out - 1, step)])
    top = np.floor(y).astype(np.int64)
    return top, np.minimum(top + 1, size_in - 1), y - top


def _resize_columns(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Left and right source columns, the fractions, and how many columns the SIMD loop computes."""
    step = (size_in - 1) / max(size_out - 1, 1)
    x = np.float32([-4 * step, -3 * step, -2 * step, -step])
    left, fraction = [], []
    while len(left) + 4 <= size_out + 3:
        x = x + np.float32(4 * step)  # float32 + float32, as _x += _x_scale
        whole = x.astype(np.int32)  # truncation, as simd4i(simd4f)
        if whole[3] + 1 >= size_in:
            break
        left.extend(whole.tolist())
        fraction.extend((x - whole.astype(np.float32)).tolist())
    simd = min(len(left), size_out)
    left, fraction = left[:simd], fraction[:simd]
    x = -step + simd * step
    for _ in range(simd, size_out):
        x += step
        left.append(int(np.floor(x)))
        fraction.append(x - np.floor(x))
    left = np.array(left, dtype=np.int64)
    return left, np.minimum(left + 1, size_in - 1), np.array(fraction), simd


def _pyramid_down(image: torch.Tensor) -> torch.Tensor:
    """dlib's `pyramid_down<2>` on RGB: the [1 4 6 4 1] filter on both axes, every other pixel, floor(sum / 256)."""
    taps = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=image.dtype, device=image.device)
    kernel = (taps[:, None] * taps[None, :] / 256).expand(3, 1, 5, 5)
    return _truncated(F.conv2d(image[None], kernel, stride=2, groups=3)[0])


def _point_down(point: np.ndarray) -> np.ndarray:
    return point / 2.0 - np.array([1.25, 0.75])  # dlib's pyramid_down<2>::point_down, its offsets included


def _rect_area(left: float, top: float, right: float, bottom: float) -> float:
    return (right - left + 1) * (bottom - top + 1)  # dlib's drectangle counts both end pixels


class ChipGeometry:
    """Where dlib's `get_face_chip` samples: the chip's rectangle in the image (dlib's
    `chip_details`: centre, side, angle) and the pyramid level it samples from (-1: the image)."""

    def __init__(self, chip_to_image: np.ndarray, size: int) -> None:
        scale_x, scale_y = chip_to_image[:, 0]  # the image of (1, 0): scale and rotation
        self.angle, scale = math.atan2(scale_y, scale_x), math.hypot(scale_x, scale_y)
        centre = chip_to_image @ np.array([size / 2, size / 2, 1.0])
        half = (size * scale - 1) / 2  # centered_drect: width - 1 between the end pixels
        self.rect = np.array([centre[0] - half, centre[1] - half, centre[0] + half, centre[1] + half])
        self.size, self.depth = size, 0
        down = self._down(self.rect)
        while _rect_area(*down) > size * size:
            self.depth, down = self.depth + 1, self._down(down)

    @staticmethod
    def _down(rect: np.ndarray) -> np.ndarray:
        return np.concatenate([_point_down(rect[:2]), _point_down(rect[2:])])

    def bounding_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """dlib's crop of the image the pyramid is built from: the rotated rectangle, grown by the
        border each level needs, within the image, rounded to whole pixels."""
        grow = 2.0
        for _ in range(self.depth):
            grow = grow * 2 + 2
        corners = self._corners(self.rect)
        left, top = np.maximum(corners.min(0) - grow, 0)
        right, bottom = np.minimum(corners.max(0) + grow, [width - 1, height - 1])
        return tuple(int(np.floor(v + 0.5)) for v in (left, top, right, bottom))  # lround, on values >= 0

    def _corners(self, rect: np.ndarray) -> np.ndarray:
        """The rectangle's top-left, top-right, bottom-left and bottom-right corners, rotated about its centre."""
        left, top, right, bottom = rect
        centre = np.array([(left + right) / 2, (top + bottom) / 2])
        points = np.array([[left, top], [right, top], [left, bottom], [right, bottom]]) - centre
        cos, sin = math.cos(self.angle), math.sin(self.angle)
        return points @ np.array([[cos, sin], [-sin, cos]]) + centre

    def sampling_matrix(self, offset: tuple[int, int], level: int) -> np.ndarray:
        """The 2x3 matrix taking chip pixels to pixels of the pyramid level (-1: the crop at `offset`)."""
        rect = self.rect - np.array([offset[0], offset[1], offset[0], offset[1]])
        for _ in range(level + 1):
            rect = self._down(rect)
        tl, tr, bl, _ = self._corners(rect)
        last = self.size - 1
        return np.stack([(tr - tl) / last, (bl - tl) / last, tl], axis=1)


def _sample(image: torch.Tensor, matrix: np.ndarray, size: int) -> torch.Tensor:
    """dlib's `transform_image` with `interpolate_bilinear`: each chip pixel from the 2x3 `matrix`'s
    point, bilinear, black where any of its 4 neighbours lies outside the image; truncated."""
    height, width = image.shape[-2:]
    # affine_grid works in [-1, 1], where (align_corners=True) -1 and 1 are the end pixels' centres.
    half = (size - 1) / 2
    from_chip = np.array([[half, 0, half], [0, half, half], [0, 0, 1]])
    to_image = np.array([[2 / max(width - 1, 1), 0, -1], [0, 2 / max(height - 1, 1), -1], [0, 0, 1]])
    theta = to_image @ np.vstack([matrix, [0, 0, 1]]) @ from_chip
    theta = torch.as_tensor(theta[:2], dtype=image.dtype, device=image.device)[None]
    grid = F.affine_grid(theta, [1, 3, size, size], align_corners=True)
    chip = F.grid_sample(image[None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0]
    x, y = (grid[0, ..., 0] + 1) / 2 * (width - 1), (grid[0, ..., 1] + 1) / 2 * (height - 1)
    inside = (x >= 0) & (y >= 0) & (torch.floor(x) + 1 < width) & (torch.floor(y) + 1 < height)
    return _truncated(chip * inside)


def fairface_chip(
    image: torch.Tensor, face: Face, size: int = CHIP_SIZE, padding: float = CHIP_PADDING
) -> torch.Tensor:
    """`faces.fairface_chip` as a differentiable function of the image: (3, H, W) in [0, 1] to a
    (3, size, size) chip in [0, 255], whole grey levels in the forward pass as dlib's uint8 chip.

    A face without landmarks (a detector that gives boxes only) is cut as `faces.face_chip` cuts it:
    the whole image resized when the box is the image, else a padded square around the box."""
    pixels = image.to(torch.float64) * 255  # float64: dlib's doubles, and truncation stays exact
    if face.landmarks is None:
        return _box_chip(pixels, face, size, padding)
    height, width = image.shape[-2:]
    max_size = round(face.scale * max(height, width))  # the size the detector saw, as faces.fairface_chip
    rows, cols = dlib_resized_shape(height, width, max_size) if face.scale != 1.0 else (height, width)
    scale = max_size / max(height, width) if face.scale != 1.0 else 1.0
    points = np.array([[int(round(x * scale)), int(round(y * scale))] for x, y in face.landmarks], dtype=np.float64)
    template = (padding + DLIB5_TEMPLATE) / (1 + 2 * padding) * size
    geometry = ChipGeometry(similarity(template, points), size)
    window = geometry.bounding_box(rows, cols)
    left, top, right, bottom = window
    crop = _resize(pixels, rows, cols, window) if face.scale != 1.0 else pixels[:, top : bottom + 1, left : right + 1]
    for _ in range(geometry.depth):
        crop = _pyramid_down(crop)
    return _sample(crop, geometry.sampling_matrix((left, top), geometry.depth - 1), size)


def _box_chip(pixels: torch.Tensor, face: Face, size: int, padding: float) -> torch.Tensor:
    height, width = pixels.shape[-2:]
    if face.box == (0.0, 0.0, float(width), float(height)):
        return F.interpolate(pixels[None], size=(size, size), mode="bilinear", antialias=True)[0]
    return _sample(pixels, chip_to_image(face, size, padding), size)


# --- FairFace ----------------------------------------------------------------------------------


def fairface_input(chips: torch.Tensor, size: int = 224) -> torch.Tensor:
    """`classifiers._tensor` on (n, 3, S, S) chips in [0, 255]: to [0, 1], resized as it resizes,
    normalised with ImageNet's mean and std, in float32 as the uint8 path computes it."""
    batch = chips.float().div(255)
    batch = F.interpolate(batch, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(IMAGENET_MEAN, device=batch.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=batch.device).view(1, 3, 1, 1)
    return (batch - mean) / std


FAIRFACE_LOGITS = {"race": slice(0, 7), "gender": slice(7, 9), "age": slice(9, 18)}


class FairFaceChips:
    """FairFace's race-7 ResNet-34 on differentiably cut chips: race (7), gender (2: FairFace's order
    Male, Female is GENDER_LABELS'), age (9). The largest face of each image is classified; an image
    without one is not valid and its logits are zeros that depend on no pixel.

    Args:
        weights (`str` or `Path`): FairFace's race-7 checkpoint, or a folder holding it
            (`classifiers.fairface_files`).
        detector (`str` or `FaceDetector`): a name of `faces.DETECTORS` (FairFace's own: dlib) or a
            detector; it runs without gradient on uint8 copies of the images.
    """

    name = "fairface"
    labels = {"race": RACE_LABELS, "gender": GENDER_LABELS, "age": AGE_GROUPS}

    def __init__(self, weights: str | Path, detector: str | FaceDetector = "dlib", device: str = "cpu") -> None:
        self.weights, _ = fairface_files(weights)
        self.model = _load_resnet(self.weights, device, "classifier_model").requires_grad_(False)
        self.detector = load_detector(detector, device) if isinstance(detector, str) else detector

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "reads": "FairFace race-7 ResNet-34 logits (race, gender, age) on dlib-aligned 300 px chips, "
            "cut differentiably",
            "detector": self.detector.name,
            "race7_checkpoint": self.weights.name,
            "race7_sha256": _sha256(self.weights),
        }

    @torch.no_grad()
    def faces(self, images: torch.Tensor) -> list[Face | None]:
        """The largest face of each image, found on its uint8 copy (None: no face)."""
        pixels = (images.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        found = self.detector.detect([np.ascontiguousarray(image) for image in pixels])
        return [max(image_faces, key=lambda face: face.area) if image_faces else None for image_faces in found]

    def __call__(self, images: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        _check_images(images)
        faces = self.faces(images)
        valid = torch.tensor([face is not None for face in faces], device=images.device)
        dtype = next(self.model.parameters()).dtype
        logits = torch.zeros((len(images), 18), dtype=dtype, device=images.device)
        if valid.any():
            chips = torch.stack([fairface_chip(image, face) for image, face in zip(images, faces) if face is not None])
            found = self.model(fairface_input(chips).to(dtype))
            logits = logits.index_copy(0, valid.nonzero()[:, 0], found)  # gradients reach the found rows only
        return {name: logits[:, columns] for name, columns in FAIRFACE_LOGITS.items()}, valid
