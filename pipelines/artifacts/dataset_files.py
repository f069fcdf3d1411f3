"""Dataset artifacts that stock `datasets` reads: parquet shards under `data/<config>/`.

Rows are buffered and flushed to a new shard every `rows_per_shard` rows (or sooner when the
buffer's bytes grow past `max_shard_bytes`, for image rows), so memory stays flat however many
rows a stage makes. Each shard carries the `datasets.Features` in its schema metadata, so
`load_dataset(folder, config)` decodes `Image` columns as images.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

SPLIT = "train"
_CONFIG_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def to_rgb(image: Any) -> Any:
    """A PIL image as 8-bit RGB, whatever it was stored as: turned upright by its EXIF orientation;
    16-bit greyscale scaled from its full range to 8 bits (Pillow's own conversion clips it, so a
    16-bit photo turns white); palette and alpha images laid on white (their hidden colours are not
    the picture); CMYK and the rest by Pillow's conversion.

    The range is the mode's, never guessed from the pixels: a dark 16-bit image (every value under
    256) stays dark. Pillow gives 16-bit files as `I;16*`, or as `I` (older Pillow, `convert("I")`),
    so `I` is read as 16-bit too, values past it clipped. Only `F` (floats) has no range of its own:
    [0, 1] when every value is, else [0, 255].

    Example:
        >>> import numpy as np
        >>> from PIL import Image
        >>> dark = Image.fromarray(np.full((2, 2), 200, np.uint16))  # 200 of 65535
        >>> dark.mode, np.asarray(to_rgb(dark))[0, 0].tolist()
        ('I;16', [1, 1, 1])
    """
    import numpy as np
    from PIL import Image, ImageOps

    image = ImageOps.exif_transpose(image)
    if image.mode == "I" or image.mode.startswith("I;16") or image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0
        if image.mode == "F":
            top = 1.0 if values.max(initial=0) <= 1.0 else 255.0
        grey = np.clip(np.rint(values / top * 255), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def decode_image(value: dict[str, Any] | None) -> Any:
    """An `Image` column's stored value (`{"bytes", "path"}`, the file at `path` when it has no bytes,
    as an imagefolder's) as an RGB uint8 array (`to_rgb`); None when it cannot be decoded (a stage
    records that image as corrupt rather than stopping)."""
    import io

    import numpy as np
    from PIL import Image

    try:
        with Image.open(io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"]) as image:
            return np.asarray(to_rgb(image))
    except Exception:  # noqa: BLE001 - any undecodable image is recorded, not fatal
        return None


def shard_name(index: int) -> str:
    return f"{SPLIT}-{index:05d}.parquet"


class DatasetWriter:
    """Writes rows of one `datasets.Features` schema into per-config parquet shards.

    Args:
        folder (`str` or `Path`): the artifact folder; shards go to `folder/data/<config>/`.
        features (`datasets.Features`): the schema of every row.
        rows_per_shard (`int`): rows per parquet file.
        max_shard_bytes (`int`): flush early when buffered `bytes` values pass this size.

    Example:
        >>> import tempfile, datasets
        >>> folder = tempfile.mkdtemp()
        >>> writer = DatasetWriter(folder, datasets.Features({"text": datasets.Value("string")}))
        >>> writer.write("en", [{"text": "a photo"}, {"text": "another photo"}])
        >>> writer.close()
        {'en': 2}
    """

    def __init__(
        self,
        folder: str | Path,
        features: datasets.Features,
        rows_per_shard: int = 1000,
        max_shard_bytes: int = 256 << 20,
    ):
        self.folder = Path(folder)
        self.features = features
        self.schema = features.arrow_schema
        self.rows_per_shard = rows_per_shard
        self.max_shard_bytes = max_shard_bytes
        self._buffers: dict[str, list[dict[str, Any]]] = {}
        self._buffer_bytes: dict[str, int] = {}
        self._next_shard: dict[str, int] = {}
        self.counts: dict[str, int] = {}

    def write(self, config: str, rows: Iterable[dict[str, Any]]) -> None:
        if not _CONFIG_NAME.match(config):
            raise ValueError(f"config name {config!r}: use letters, digits, '_', '-', '.'")
        buffer = self._buffers.setdefault(config, [])
        for row in rows:
            encoded = self.features.encode_example(row)
            buffer.append(encoded)
            self._buffer_bytes[config] = self._buffer_bytes.get(config, 0) + _bytes_in(encoded)
            if len(buffer) >= self.rows_per_shard or self._buffer_bytes[config] >= self.max_shard_bytes:
                self.flush(config)

    def flush(self, config: str) -> None:
        buffer = self._buffers.get(config)
        if not buffer:
            return
        index = self._next_shard.get(config, 0)
        self._write_encoded(self.shard_path(config, index), buffer)
        self._next_shard[config] = index + 1
        self.counts[config] = self.counts.get(config, 0) + len(buffer)
        buffer.clear()  # in place: `write` holds this list while it iterates
        self._buffer_bytes[config] = 0

    def shard_path(self, config: str, index: int) -> Path:
        return self.folder / "data" / config / shard_name(index)

    def write_shard(self, config: str, index: int, rows: Iterable[dict[str, Any]]) -> Path:
        """Writes a whole shard at an explicit index, for stages that resume or split work by shard."""
        path = self.shard_path(config, index)
        self._write_encoded(path, [self.features.encode_example(row) for row in rows])
        return path

    def _write_encoded(self, path: Path, rows: list[dict[str, Any]]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        pq.write_table(pa.Table.from_pylist(rows, schema=self.schema), tmp)
        os.replace(tmp, path)  # a shard is either complete or absent, never half written

    def close(self) -> dict[str, int]:
        """Flushes every config; returns the row count per config."""
        for config in list(self._buffers):
            self.flush(config)
        return dict(self.counts)


def _bytes_in(value: Any) -> int:
    if isinstance(value, (bytes, bytearray)):
        return len(value)
    if isinstance(value, dict):
        return sum(_bytes_in(v) for v in value.values())
    if isinstance(value, list):
        return sum(_bytes_in(v) for v in value)
    return 0
