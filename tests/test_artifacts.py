"""Dataset artifacts read back with plain `datasets`, and cards with the metadata the Hub expects."""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import pytest
import yaml
from PIL import Image

from pipelines.artifacts.cards import dataset_card, make_lineage, model_card
from pipelines.artifacts.dataset_files import DatasetWriter, decode_image
from pipelines.artifacts.reader import DatasetArtifact, load_artifact, open_artifact
from pipelines.artifacts.store import LocalStore
from pipelines.errors import DataError

FEATURES = datasets.Features(
    {"text": datasets.Value("string"), "image": datasets.Image(), "n": datasets.Value("int32")}
)


def card_metadata(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def lineage() -> dict:
    return make_lineage("demo", {"input": "ns/prompts@" + "a" * 40}, {"languages": ["de", "ja"], "n": 3}, "f" * 16)


def test_dataset_pushed_and_read_back_with_load_dataset(tmp_path: Path, store: LocalStore) -> None:
    folder = tmp_path / "artifact"
    writer = DatasetWriter(folder, FEATURES, rows_per_shard=4)
    colours = [(i * 20, 255 - i * 20, 7) for i in range(10)]
    images = [Image.fromarray(np.full((8, 6, 3), c, dtype=np.uint8)) for c in colours]
    writer.write("de", ({"text": f"Bild {i}", "image": img, "n": i} for i, img in enumerate(images)))
    writer.write("ja", [{"text": "写真", "image": images[0], "n": 0}])
    assert writer.close() == {"de": 10, "ja": 1}
    assert sorted(p.name for p in (folder / "data" / "de").iterdir()) == [
        "train-00000.parquet",
        "train-00001.parquet",
        "train-00002.parquet",
    ]
    dataset_card(
        repo_id="ns/images",
        title="Images",
        description="Test.",
        lineage=lineage(),
        configs=["de", "ja"],
        config_info={"de": {"language": "de"}, "ja": {"language": "ja"}},
        languages=["de", "ja"],
        folder=folder,
    ).save(folder / "README.md")
    assert "| `de` | 10 |" in (folder / "README.md").read_text()  # counted from the three shards' footers

    revision = store.push(folder, "ns/images", "dataset", "images")
    resolved = store.resolve(f"ns/images@{revision}", "dataset")
    artifact = DatasetArtifact(resolved)
    assert artifact.configs == ["de", "ja"] and artifact.config_info("ja") == {"language": "ja"}
    assert artifact.num_rows("de") == 10 and artifact.columns("de") == ["text", "image", "n"]
    assert [row["n"] for row in artifact.rows("de", ["n"])] == list(range(10))
    german = datasets.load_dataset(str(resolved), "de", split="train")
    assert german.num_rows == 10
    assert german["text"][:3] == ["Bild 0", "Bild 1", "Bild 2"]
    assert isinstance(german.features["image"], datasets.Image)
    for row, colour in zip(german, colours):
        decoded = np.asarray(row["image"])
        assert decoded.shape == (8, 6, 3) and tuple(decoded[0, 0]) == colour
    assert datasets.load_dataset(str(resolved), "ja", split="train")["text"] == ["写真"]


def test_writer_flushes_early_on_bytes(tmp_path: Path) -> None:
    writer = DatasetWriter(tmp_path, FEATURES, rows_per_shard=1000, max_shard_bytes=1)
    image = Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8))
    writer.write("x", [{"text": "a", "image": image, "n": 1}, {"text": "b", "image": image, "n": 2}])
    assert len(list((tmp_path / "data" / "x").glob("*.parquet"))) == 2  # flushed per row, not held in memory
    with pytest.raises(ValueError, match="config name 'bad name'"):
        writer.write("bad name", [])


def test_dataset_card_metadata(tmp_path: Path) -> None:
    writer = DatasetWriter(tmp_path, datasets.Features({"prompt": datasets.Value("string")}), rows_per_shard=2)
    writer.write("en", [{"prompt": f"p{i}"} for i in range(5)])
    writer.close()
    dataset_card(
        repo_id="ns/prompts",
        title="Prompts",
        description="Demo.",
        lineage=lineage(),
        configs=["en", "de"],
        languages=["en"],
        folder=tmp_path,
        tags=["prompts"],
        notes=["a note"],
    ).save(tmp_path / "README.md")
    meta = card_metadata(tmp_path / "README.md")
    assert meta["license"] == "apache-2.0"
    assert meta["language"] == ["en"]
    assert meta["task_categories"] == ["text-to-image"]
    assert "prompts" in meta["tags"]
    assert meta["configs"] == [
        {"config_name": "en", "data_files": [{"split": "train", "path": "data/en/*.parquet"}], "default": True},
        {"config_name": "de", "data_files": [{"split": "train", "path": "data/de/*.parquet"}]},
    ]
    assert meta["lineage"]["inputs"] == {"input": "ns/prompts@" + "a" * 40}
    assert meta["lineage"]["parameters"] == {"languages": ["de", "ja"], "n": 3}
    assert meta["lineage"]["versions"]["datasets"] == datasets.__version__
    assert meta["lineage"]["command"] and meta["lineage"]["toolkit"]["version"] == "0.1.0"
    assert len(meta["lineage"]["toolkit"]["commit"].removesuffix("+dirty")) == 40  # the checkout's git commit
    body = (tmp_path / "README.md").read_text()
    assert "## Lineage" in body and "a note" in body and "`ns/prompts@" in body and "| `en` | 5 |" in body
    assert "| `de` | 0 |" in body  # a config without shards says so, rather than leaving the cell blank


def test_model_and_space_cards(tmp_path: Path) -> None:
    model_card(
        title="Tiny model",
        description="Demo.",
        lineage=lineage(),
        languages=["en", "de"],
        base_model="BAAI/AltDiffusion-m9",
        datasets=["ns/train"],
        usage="pipe = load(...)",
    ).save(tmp_path / "model.md")
    meta = card_metadata(tmp_path / "model.md")
    assert meta["base_model"] == "BAAI/AltDiffusion-m9"
    assert meta["datasets"] == ["ns/train"]
    assert meta["language"] == ["en", "de"] and meta["license"] == "apache-2.0"
    assert meta["pipeline_tag"] == "text-to-image" and meta["lineage"]["stage"] == "demo"


def test_reader_checks_kinds_columns_and_configs(
    tmp_path: Path, store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "images"
    writer = DatasetWriter(folder, datasets.Features({"language": datasets.Value("string")}))
    writer.write("en_eval_direct", [{"language": "en"}])
    writer.close()
    images_lineage = make_lineage("generate_images", {}, {}, "0" * 16)
    dataset_card(repo_id="ns/images", title="Images", description=".", lineage=images_lineage,
                 configs=["en_eval_direct"], languages=["en"], folder=folder).save(folder / "README.md")  # fmt: skip
    revision = store.push(folder, "ns/images", "dataset", "images")
    artifact = open_artifact(f"ns/images@{revision[:8]}", store)
    assert artifact.name == f"ns/images@{revision}" and artifact.kind == "images"
    assert artifact.config_info("en_eval_direct") == {"language": "en"}  # from its rows: no card record
    with pytest.raises(
        DataError,
        match="input=ns/images@.* is a dataset of images; a dataset of attributes .made by classify. is expected",
    ):
        artifact.expect("attributes", "input")
    with pytest.raises(DataError, match="column.s. image missing from config 'en_eval_direct'"):
        artifact.require_columns("en_eval_direct", ["image"])
    with pytest.raises(DataError, match=r"configs: fr_eval_direct not in ns/images@\w+ \(it has en_eval_direct\)"):
        artifact.select(["fr_eval_direct"])
    monkeypatch.setenv("T2I_BIAS_STORE_ROOT", str(store.root))
    assert load_artifact("ns/images@main")["language"] == ["en"]  # one call, the card's default config


def encoded(image: Image.Image, fmt: str = "PNG", **options: object) -> dict:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return {"bytes": buffer.getvalue(), "path": None}


def test_one_image_decoder_reads_what_pillow_alone_gets_wrong() -> None:
    """16-bit greyscale keeps its tones (Pillow's own conversion clips most pixels to white); palette
    and alpha images lie on white; CMYK becomes RGB; an EXIF orientation is applied; 8-bit RGB comes
    back unchanged; bytes that are no image give None."""
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    deep = decode_image(encoded(Image.fromarray(ramp)))
    assert deep.shape == (64, 64, 3) and deep.dtype == np.uint8
    assert abs(int(deep[32, 0, 0]) - round(ramp[32, 0] / 257)) <= 1 and (deep == 255).mean() < 0.01
    clear = np.zeros((8, 8, 4), np.uint8)
    clear[..., 0] = 200  # red under full transparency: not part of the picture
    clear[:4, :, 3] = 255  # the top half opaque red
    laid = decode_image(encoded(Image.fromarray(clear, "RGBA")))
    assert (laid[:4] == [200, 0, 0]).all() and (laid[4:] == 255).all()
    palette = Image.fromarray(clear, "RGBA").convert("P")
    palette.info["transparency"] = palette.getpixel((0, 7))
    assert (decode_image(encoded(palette))[7, 0] == 255).all()
    cmyk = decode_image(encoded(Image.new("CMYK", (4, 4), (0, 255, 255, 0)), "JPEG"))
    assert cmyk.shape == (4, 4, 3) and cmyk[0, 0, 0] > 200 and cmyk[0, 0, 1] < 60
    wide = Image.fromarray(np.zeros((10, 30, 3), np.uint8))
    exif = wide.getexif()
    exif[0x0112] = 6  # rotate 90 degrees to display
    assert decode_image(encoded(wide, "JPEG", exif=exif)).shape == (30, 10, 3)
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    assert (decode_image(encoded(Image.fromarray(rgb))) == rgb).all()
    assert decode_image({"bytes": b"not an image", "path": None}) is None


def test_a_16_bit_image_is_scaled_by_its_mode_s_range_however_dark_it_is() -> None:
    """A 16-bit image's range is its mode's, 65535, never guessed from its pixels: a dark one (every
    value under 256) stays dark rather than read as 8-bit; so in every byte order, and as mode `I`
    (as which older Pillow opens 16-bit files)."""
    from pipelines.artifacts.dataset_files import to_rgb

    dark = decode_image(encoded(Image.fromarray(np.full((4, 4), 200, np.uint16))))
    assert dark.dtype == np.uint8 and dark.max() <= 1  # 200 / 65535 of white
    bright = decode_image(encoded(Image.fromarray(np.full((4, 4), 60000, np.uint16))))
    assert (bright == round(60000 / 65535 * 255)).all()
    for value in (200, 60000):
        expected = round(value / 65535 * 255)
        big_endian = Image.frombytes("I;16B", (4, 4), np.full((4, 4), value, ">u2").tobytes())
        for image in (big_endian, Image.fromarray(np.full((4, 4), value, np.int32))):
            assert (np.asarray(to_rgb(image)) == expected).all(), (image.mode, value)
