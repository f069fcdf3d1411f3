"""dlib's CNN face detector (MMOD) in PyTorch: the same model file, the same detections, fast.

FairFace's pipeline, and so the reference study's, finds faces with dlib's `mmod_human_face_detector`.
dlib's prebuilt wheel runs it on one CPU thread in its own convolution code: about 10 s for a 512-px
image at FairFace's settings (800 px, upsampled once), the bulk of a study's classification time.
This module reads dlib's own model file and computes the same thing with PyTorch's convolutions,
batched, on every core or on a GPU:

1. the image is upsampled as dlib's `pyramid_up` does (`dlib.resize_image`: dlib's own resampling);
2. an image pyramid (each level 5/6 of the one above) is tiled into one tensor, with dlib's layout
   (`compute_tiled_image_pyramid_details`) and its bilinear resampling (corners aligned);
3. dlib's network: three 5x5 stride-2 convolutions (16, 32, 32 filters), three 5x5 (45), one 9x9
   (1), each but the last followed by its batch normalisation (folded into the convolution, as
   dlib's `affine_` does at test time) and a ReLU;
4. every positive score is an 80x80 window, mapped back from the tiled pyramid to the image, then
   non-maximum suppression with the model's own overlap rule (dlib's `test_box_overlap`: the
   intersection over the box enclosing both, or one box covered entirely).

Boxes equal dlib's to the pixel and scores to float rounding (tests compare the two on real photos,
on the CPU; on a GPU it runs the same float32 arithmetic, not yet compared there).
The file format is dlib's serialization (integers: a size byte and little-endian bytes; tensors:
raw float32), read here for the layers this one network has.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PYRAMID_N = 6  # dlib's pyramid_down<6>: each level (N - 1) / N of the one above
PYRAMID_RATE = (PYRAMID_N - 1) / PYRAMID_N
PYRAMID_PADDING, PYRAMID_OUTER_PADDING = 10, 11  # dlib's defaults, where the file does not store them
MIN_LEVEL_HEIGHT = 5


class _Reader:
    """dlib's serialization, the parts this file uses."""

    def __init__(self, data: bytes):
        self.data, self.at = data, 0

    def take(self, count: int) -> bytes:
        chunk = self.data[self.at : self.at + count]
        if len(chunk) != count:
            raise ValueError("dlib model file ends early")
        self.at += count
        return chunk

    def integer(self) -> int:
        control = self.take(1)[0]
        value = int.from_bytes(self.take(control & 0x0F), "little")
        return -value if control & 0x80 else value

    def real(self) -> float:
        mantissa, exponent = self.integer(), self.integer()
        if exponent >= 32000:  # dlib's codes for inf, -inf, nan
            return (math.inf, -math.inf, math.nan)[exponent - 32000]
        return math.ldexp(mantissa, exponent)

    def tensor(self) -> np.ndarray:
        if self.integer() != 2:
            raise ValueError("unexpected dlib tensor version")
        shape = [self.integer() for _ in range(4)]
        return np.frombuffer(self.take(4 * math.prod(shape)), "<f4").reshape(shape)

    def alias_tensor(self) -> list[int]:
        if self.integer() != 1:
            raise ValueError("unexpected dlib alias_tensor version")
        return [self.integer() for _ in range(4)]

    def next_of(self, *tags: str) -> str | None:
        """Moves past whichever serialized string of `tags` (layers' versions) comes next, skipping
        the wrappers' bookkeeping (flags and empty gradient tensors) between layers; None at the end."""
        found = {tag: self.data.find(bytes([1, len(tag)]) + tag.encode(), self.at) for tag in tags}
        found = {tag: at for tag, at in found.items() if at >= 0}
        if not found:
            return None
        tag = min(found, key=found.get)
        self.at = found[tag] + 2 + len(tag)
        return tag

    def seek(self, tag: str) -> None:
        if self.next_of(tag) is None:
            raise ValueError(f"dlib model file: no {tag!r} after byte {self.at}")


@dataclass
class MMODModel:
    """dlib's face detector, as read from its file: convolutions (weight, bias, stride, padding),
    batch norms folded in; the detection window (width, height); the non-maximum suppression
    thresholds; the input's channel means and its pyramid's paddings (inner, outer)."""

    layers: list[tuple[np.ndarray, np.ndarray, int, int]]
    window: tuple[int, int]
    nms_iou: float
    nms_covered: float
    means: tuple[float, float, float] = (122.782, 117.001, 104.298)
    padding: tuple[int, int] = (PYRAMID_PADDING, PYRAMID_OUTER_PADDING)


def read_mmod(path: str | Path) -> MMODModel:
    """The network, window and thresholds of a dlib MMOD model file (as `mmod_human_face_detector.dat`
    stores them: the loss's options, the input layer, then the layers from the input up)."""
    reader = _Reader(Path(path).read_bytes())
    reader.seek("loss_mmod_")
    version = reader.integer()
    if version != 1:  # mmod_human_face_detector.dat holds version 1: one window, no box regression
        raise ValueError(f"dlib mmod_options version {version}: only version 1 is read")
    window = (reader.integer(), reader.integer())
    _false_alarm, _miss, _truth_iou = reader.real(), reader.real(), reader.real()
    nms_iou, nms_covered = reader.real(), reader.real()
    input_layer = reader.next_of("input_rgb_image_pyramid2", "input_rgb_image_pyramid")
    if input_layer is None:
        raise ValueError("dlib model file: no RGB image pyramid input (not a face detector like dlib's)")
    stored = input_layer == "input_rgb_image_pyramid2"
    means = (reader.real(), reader.real(), reader.real())
    padding = (reader.integer(), reader.integer()) if stored else (PYRAMID_PADDING, PYRAMID_OUTER_PADDING)
    layers: list[list] = []
    while (tag := reader.next_of("con_4", "con_5", "con_6", "bn_con2")) is not None:
        if tag == "bn_con2":
            _fold_batch_norm(reader, layers[-1])
        else:
            layers.append(_convolution(reader))
    if not layers:
        raise ValueError("dlib model file: no convolutions found")
    return MMODModel([tuple(layer) for layer in layers], window, nms_iou, nms_covered, means, padding)


def _convolution(reader: _Reader) -> list:
    """dlib's con_: [weight (out, in, rows, cols), bias, stride, padding]."""
    params = reader.tensor().ravel()
    filters, rows, cols = reader.integer(), reader.integer(), reader.integer()
    stride_y, stride_x, padding_y, padding_x = (reader.integer() for _ in range(4))
    shape = reader.alias_tensor()
    square = (stride_y, padding_y) == (stride_x, padding_x)
    if not square or shape[0] != filters or (shape[2], shape[3]) != (rows, cols):
        raise ValueError("dlib model file: a convolution this reader does not know")
    size = math.prod(shape)
    bias = params[size : size + filters] if len(params) > size else np.zeros(filters)  # con_5+: bias optional
    return [params[:size].reshape(shape).astype(np.float32), bias.astype(np.float32), stride_y, padding_y]


def _fold_batch_norm(reader: _Reader, convolution: list) -> None:
    """dlib's bn_con at test time, as its affine_ computes it (y = g x + b with g = gamma /
    sqrt(running variance + eps), b = beta - g running mean), folded into the convolution before it."""
    params = reader.tensor().ravel()
    reader.alias_tensor(), reader.alias_tensor()  # gamma, beta: the two halves of params
    reader.tensor(), reader.tensor()  # means, invstds: training state
    running_means, running_variances = reader.tensor().ravel(), reader.tensor().ravel()
    reader.integer(), reader.integer()  # num_updates, running_stats_window_size
    for _ in range(4):  # learning-rate and weight-decay multipliers
        reader.real()
    eps = reader.real()
    half = len(params) // 2
    g = (params[:half] / np.sqrt(running_variances + np.float32(eps))).astype(np.float32)
    b = (params[half:] - g * running_means).astype(np.float32)
    convolution[0] = convolution[0] * g[:, None, None, None]
    convolution[1] = convolution[1] * g + b


def _round(values: np.ndarray) -> np.ndarray:
    """C's lround (halves away from zero), as dlib turns real coordinates into pixels."""
    return (np.sign(values) * np.floor(np.abs(values) + 0.5)).astype(np.int64)


def tiled_pyramid_rects(rows: int, cols: int, padding: int, outer: int) -> tuple[list[list[int]], int, int]:
    """Where each pyramid level lies in the tiled image, as [left, top, right, bottom] (inclusive),
    and the tiled image's rows and columns: dlib's `compute_tiled_image_pyramid_details`. The
    levels run down a first column, then back up a second one beside the smaller levels."""
    sizes = [(cols, rows)]
    while True:
        rows, cols = math.floor(PYRAMID_RATE * rows), math.floor(PYRAMID_RATE * cols)
        if rows * cols == 0 or rows < MIN_LEVEL_HEIGHT:
            break
        sizes.append((cols, rows))
    first_width, first_height = sizes[0]
    total_height = sum(h + padding for _, h in sizes) - 2 * padding
    height = previous_width = 0
    for w, h in sizes:
        if w <= first_width - previous_width - padding and (height - first_height) * 2 >= total_height - first_height:
            break
        height += h + padding
        previous_width = w
    height -= padding
    rects: list[list[int]] = []
    y = outer
    while y < height + outer and len(rects) < len(sizes):
        w, h = sizes[len(rects)]
        rects.append([outer, y, outer + w - 1, y + h - 1])
        y += h + padding
    y -= padding
    first = rects[0]
    while len(rects) < len(sizes):
        w, h = sizes[len(rects)]
        right, bottom = outer + first_width - 1, y - 1
        rect = [right - w + 1, bottom - h + 1, right, bottom]
        if rect[0] <= first[2] and first[0] <= rect[2] and rect[1] <= first[3] and first[1] <= rect[3]:
            break  # it would overlap the full-size image
        rects.append(rect)
        y -= h + padding
    return rects, height + 2 * outer, first_width + 2 * outer


def _nearest_level(rects: np.ndarray, points: np.ndarray) -> np.ndarray:
    """dlib's `nearest_rect` for many points: the first level holding the point, else the closest."""
    left, top, right, bottom = (rects[:, i][None] for i in range(4))
    x, y = points[:, :1], points[:, 1:]
    inside = (left <= x) & (x <= right) & (top <= y) & (y <= bottom)
    distance = np.hypot(np.clip(x, left, right) - x, np.clip(y, top, bottom) - y)
    return np.where(inside.any(1), inside.argmax(1), distance.argmin(1))


def _overlaps(kept: list[np.ndarray], box: np.ndarray, iou: float, covered: float) -> bool:
    """dlib's `test_box_overlap` on integer boxes: the intersection over the box enclosing both
    (not over the union), or either box covered beyond `covered`."""
    area = lambda b: (b[2] - b[0] + 1) * (b[3] - b[1] + 1)  # noqa: E731 (dlib: inclusive corners)
    for other in kept:
        width = min(box[2], other[2]) - max(box[0], other[0]) + 1
        height = min(box[3], other[3]) - max(box[1], other[1]) + 1
        if width <= 0 or height <= 0:
            continue
        inner = width * height
        enclosing = np.concatenate([np.minimum(box[:2], other[:2]), np.maximum(box[2:], other[2:])])
        if inner / area(enclosing) > iou or inner / area(box) > covered or inner / area(other) > covered:
            return True
    return False


class MMODDetector:
    """dlib's `cnn_face_detection_model_v1` in PyTorch. Called like dlib's: `detector(images,
    upsample)` gives per image a list of (left, top, right, bottom, confidence), in the image's pixels."""

    def __init__(self, path: str | Path, device: str = "cpu", batch_size: int | None = None):
        import torch

        self.model = read_mmod(path)
        # One image per forward on a CPU: at 1,600 px it already fills the cores, and each more image
        # holds another ~300 MiB of tiled pyramid and activations (measured: 1 is the fastest).
        self.device, self.batch_size = device, batch_size or (1 if device == "cpu" else 8)
        # channels-last: oneDNN's fast layout for these narrow convolutions (1.6x on a CPU)
        self.convolutions = [
            (
                torch.from_numpy(weight.copy()).to(device).contiguous(memory_format=torch.channels_last),
                torch.from_numpy(bias.astype(np.float32)).to(device),
                stride,
                padding,
            )
            for weight, bias, stride, padding in self.model.layers
        ]

    def __call__(self, images: list[np.ndarray], upsample: int = 0) -> list[list[tuple[float, ...]]]:
        import dlib

        prepared = []
        for image in images:
            image = np.ascontiguousarray(image[..., :3] if image.ndim == 3 else np.repeat(image[..., None], 3, 2))
            for _ in range(upsample):  # dlib's pyramid_up: bilinear onto the size pyramid_down<2> maps up to
                rows, cols = image.shape[:2]
                up = dlib.pyramid_down(2).rect_up(dlib.rectangle(0, 0, cols - 1, rows - 1))
                image = dlib.resize_image(image, rows=up.bottom() + 1, cols=up.right() + 1)
            prepared.append(image)
        found: list[list[tuple[float, ...]]] = [[] for _ in images]
        by_size: dict[tuple, list[int]] = {}
        for index, image in enumerate(prepared):
            by_size.setdefault(image.shape[:2], []).append(index)
        for (rows, cols), indices in by_size.items():
            rects, tiled_rows, tiled_cols = tiled_pyramid_rects(rows, cols, *self.model.padding)
            if not self.fits(tiled_rows, tiled_cols):
                continue  # smaller than the network's field of view: no window fits (dlib fails here)
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                scores = self.scores(np.stack([prepared[i] for i in chunk]), rects, tiled_rows, tiled_cols)
                for index, score in zip(chunk, scores):
                    found[index] = self.detections(score, rects, upsample)
        return found

    def fits(self, rows: int, cols: int) -> bool:
        """Whether the network gives at least one score on a tiled image of this size."""
        for weight, _, stride, padding in self.model.layers:
            kernel = weight.shape[-1]
            rows, cols = (rows + 2 * padding - kernel) // stride + 1, (cols + 2 * padding - kernel) // stride + 1
        return rows > 0 and cols > 0

    def scores(self, images: np.ndarray, rects: list[list[int]], rows: int, cols: int) -> np.ndarray:
        """The network's score map for a batch of same-sized images (N, H, W, 3 uint8)."""
        import torch

        # Full float32 convolutions on a GPU too, as dlib computes them: cuDNN's default TF32 keeps
        # 10 bits of mantissa, enough to move a score near the threshold across it.
        tf32 = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False
        try:
            return self._scores(images, rects, rows, cols)
        finally:
            torch.backends.cudnn.allow_tf32 = tf32

    def _scores(self, images: np.ndarray, rects: list[list[int]], rows: int, cols: int) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        with torch.inference_mode():
            pixels = torch.from_numpy(images).to(self.device).permute(0, 3, 1, 2).float()
            means = torch.tensor(self.model.means, device=self.device).view(1, 3, 1, 1)
            tiled = torch.zeros(len(images), rows, cols, 3, device=self.device).permute(0, 3, 1, 2)  # channels-last
            left, top, right, bottom = rects[0]
            tiled[:, :, top : bottom + 1, left : right + 1] = (pixels - means) / 256.0
            for above, (left, top, right, bottom) in zip(rects, rects[1:]):
                # each level from the one above it, as dlib builds the pyramid (corners aligned)
                source = tiled[:, :, above[1] : above[3] + 1, above[0] : above[2] + 1]
                size = (bottom - top + 1, right - left + 1)
                level = F.interpolate(source, size=size, mode="bilinear", align_corners=True)
                tiled[:, :, top : bottom + 1, left : right + 1] = level
            x = tiled.contiguous(memory_format=torch.channels_last)
            last = len(self.convolutions) - 1
            for index, (weight, bias, stride, padding) in enumerate(self.convolutions):
                x = F.conv2d(x, weight, bias, stride=stride, padding=padding)
                if index < last:
                    x = F.relu_(x)
            return x[:, 0].float().cpu().numpy()

    def detections(self, score: np.ndarray, rects: list[list[int]], upsample: int) -> list[tuple[float, ...]]:
        """Positive scores to boxes in the image: the window centred on each score's place in the
        tiled pyramid, mapped to its level's pixels, strongest first, overlaps suppressed."""
        rows, cols = np.nonzero(score > 0)
        if not len(rows):
            return []
        values = score[rows, cols].astype(np.float64)
        points = np.stack([cols, rows], 1).astype(np.float64)
        for weight, _, stride, padding in reversed(self.model.layers):  # dlib's map_output_to_input
            points = points * stride - padding + weight.shape[-1] // 2
        half = np.array(self.model.window, np.float64) - 1
        boxes = np.concatenate([points - half / 2, points + half / 2], 1)  # centered_drect
        table = np.array(rects, np.int64)
        level = _nearest_level(table, _round(points))
        boxes = boxes - np.tile(table[level, :2], 2)
        for step in range(int(level.max()) + 1):  # pyramid_down<6>.point_up, once per level
            lift = level > step
            boxes[lift] = boxes[lift] * (PYRAMID_N / (PYRAMID_N - 1.0)) + 0.3
        boxes = _round(boxes)
        kept: list[np.ndarray] = []
        confidences: list[float] = []
        for position in np.argsort(-values, kind="stable"):
            if not _overlaps(kept, boxes[position], self.model.nms_iou, self.model.nms_covered):
                kept.append(boxes[position])
                confidences.append(float(values[position]))
        results = []
        for box, confidence in zip(kept, confidences):
            box = box.astype(np.float64)
            for _ in range(upsample):  # pyramid_down<2>.point_down, back to the image given
                box = box / 2 - np.array([1.25, 0.75, 1.25, 0.75])
            results.append((*(float(v) for v in _round(box)), confidence))
        return results
