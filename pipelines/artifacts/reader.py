"""Reading dataset artifacts: configs, rows and lineage, never folder names.

    >>> from pipelines.artifacts.reader import load_artifact
    >>> german = load_artifact("t2i-bias/prompts@v1", "de")          # doctest: +SKIP

A stage asks for "the rows of config X" of an artifact at a pinned revision; the reader knows that
rows live in parquet shards under `data/<config>/`, what kind of dataset the artifact is (from the
stage in its lineage) and which language and variant each config holds (from its card).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.artifacts.dataset_files import SPLIT
from pipelines.artifacts.schemas import KIND_OF_STAGE, MAKER_OF_KIND
from pipelines.artifacts.store import LocalStore, Store, card_metadata, open_store, parse_ref
from pipelines.errors import DataError, UserError


class DatasetArtifact:
    """A dataset artifact: a folder laid out as a Hub dataset repo, at one revision."""

    def __init__(self, folder: str | Path, name: str | None = None):
        self.folder = Path(folder)
        self.name = name or self.folder.name

    def __repr__(self) -> str:
        return f"DatasetArtifact({self.name!r})"

    @functools.cached_property
    def metadata(self) -> dict[str, Any]:
        return card_metadata(self.folder)

    @property
    def lineage(self) -> dict[str, Any]:
        lineage = self.metadata.get("lineage") or {}
        return lineage if isinstance(lineage, dict) else {}

    @property
    def kind(self) -> str | None:
        """prompts, images, training, attributes, bias or alignment; None for a foreign dataset."""
        return KIND_OF_STAGE.get(self.lineage.get("stage", ""))

    def expect(self, kind: str, what: str) -> DatasetArtifact:
        """Raises a one-line error when this artifact is of another kind than `kind`."""
        if self.kind is not None and self.kind != kind:
            raise DataError(
                f"{what}={self.name} is a dataset of {self.kind}; a dataset of {kind} (made by "
                f"{MAKER_OF_KIND[kind]}) is expected"
            )
        return self

    @functools.cached_property
    def configs(self) -> list[str]:
        entries = self.metadata.get("configs") or []
        names = [entry["config_name"] for entry in entries if isinstance(entry, dict) and "config_name" in entry]
        if not names and (self.folder / "data").is_dir():  # a dataset without a configs card: its data folders
            names = sorted(p.name for p in (self.folder / "data").iterdir() if p.is_dir())
        return names

    def config_info(self, config: str) -> dict[str, str]:
        """What a config holds (`language`, `variant`), as its card records, else as its first row says."""
        self.require(config)
        info = dict((self.metadata.get("config_info") or {}).get(config) or {})
        if not info and self.files(config):
            names = [c for c in ("language", "variant") if c in self.columns(config)]
            first = self.parquet(self.files(config)[0]).read_row_group(0, columns=names).slice(0, 1).to_pylist()
            info = {k: v for k, v in (first[0] if first else {}).items() if v is not None}
        return info

    def require(self, *configs: str) -> None:
        unknown = [config for config in configs if config not in self.configs]
        if unknown:
            raise DataError(
                f"config(s) {', '.join(unknown)} not in {self.name} (it has {', '.join(self.configs) or 'none'})"
            )

    def select(self, wanted: list[str], what: str = "configs") -> list[str]:
        """`wanted` configs (all when empty); an unknown one is an error naming it and the others."""
        unknown = [config for config in wanted if config not in self.configs]
        if unknown:
            raise DataError(
                f"{what}: {', '.join(unknown)} not in {self.name} (it has {', '.join(self.configs) or 'none'})"
            )
        return list(wanted) or list(self.configs)

    def parquet(self, path: Path) -> pq.ParquetFile:
        """One shard, opened; a file that is not parquet (damaged, cut short) is one line naming it."""
        with self.reading(path):
            return pq.ParquetFile(path)

    @contextlib.contextmanager
    def reading(self, path: Path) -> Iterator[None]:
        try:
            yield
        except (pa.ArrowException, OSError) as err:
            raise DataError(
                f"{self.name}: {path.relative_to(self.folder).as_posix()} cannot be read as parquet (damaged or "
                f"cut short?): {str(err).splitlines()[0][:160]}"
            ) from None

    def files(self, config: str) -> list[Path]:
        self.require(config)
        return sorted((self.folder / "data" / config).glob("*.parquet"))

    def num_rows(self, config: str) -> int:
        return sum(self.parquet(path).metadata.num_rows for path in self.files(config))

    def columns(self, config: str) -> list[str]:
        files = self.files(config)
        return list(self.parquet(files[0]).schema_arrow.names) if files else []

    def require_columns(self, config: str, columns: list[str] | tuple[str, ...]) -> None:
        have = self.columns(config)
        missing = [column for column in columns if column not in have]
        if missing:
            raise DataError(
                f"column(s) {', '.join(missing)} missing from config {config!r} of {self.name} "
                f"(it has {', '.join(have)})"
            )

    def batches(
        self, config: str, columns: list[str] | None = None, batch_size: int = 256
    ) -> Iterator[list[dict[str, Any]]]:
        """The rows of a config in order, a batch at a time (memory flat in the dataset's size)."""
        if columns:
            self.require_columns(config, columns)
        for path in self.files(config):
            with self.reading(path):
                for batch in self.parquet(path).iter_batches(batch_size=batch_size, columns=columns):
                    yield batch.to_pylist()

    def rows(self, config: str, columns: list[str] | None = None) -> list[dict[str, Any]]:
        """Every row of a config (for small tables: prompts, summaries)."""
        return [row for batch in self.batches(config, columns, batch_size=65_536) for row in batch]

    def shard_rows(self, config: str, shard: int, columns: list[str] | None = None) -> list[dict[str, Any]]:
        """The rows of one parquet shard of a config."""
        path = self.files(config)[shard]
        with self.reading(path):
            return self.parquet(path).read(columns=columns).to_pylist()

    def load(self, config: str) -> Any:
        """The config as a `datasets.Dataset`, with the stock loader (`Image` columns decoded)."""
        import datasets

        self.require(config)
        try:
            return datasets.load_dataset(str(self.folder), config, split=SPLIT)
        except Exception as err:  # datasets wraps a damaged shard's error in its own
            if not isinstance(err.__cause__ or err.__context__ or err, pa.ArrowException):
                raise
            for path in self.files(config):
                self.parquet(path).read()  # says which shard, in one line
            raise DataError(f"{self.name}: config {config!r} cannot be read as parquet: {err}") from None


def caption_forms(store: Store, dataset: str | None) -> dict[str, str] | None:
    """The gender-neutral form of a training dataset's captions per language, as its card records it
    (`collect_datasets`' `caption_forms`); None for a dataset from outside the store or without it."""
    if not dataset:
        return None
    try:
        forms = card_metadata(store.resolve(dataset, "dataset")).get("caption_forms")
    except (UserError, ValueError):
        return None
    return dict(forms) if isinstance(forms, dict) and forms else None


def model_caption_forms(folder: Path | None, store: Store | None = None) -> dict[str, str] | None:
    """The gender-neutral form, per language, of the captions a model in `folder` made by
    `train_text_to_image` learnt from: as its card records it (`caption_forms`), or for a card that
    does not, as its training dataset's card does, read from a local store (never a download). None
    for any other model."""
    if folder is None:
        return None
    try:
        metadata = card_metadata(folder)
    except UserError:
        return None
    lineage = metadata.get("lineage") or {}
    if not isinstance(lineage, dict) or lineage.get("stage") != "train_text_to_image":
        return None
    forms = metadata.get("caption_forms")
    if isinstance(forms, dict) and forms:
        return dict(forms)
    if isinstance(store, LocalStore):
        return caption_forms(store, (lineage.get("inputs") or {}).get("dataset_name"))
    return None


def open_artifact(spec: str, store: Store | None = None, namespace: str | None = None) -> DatasetArtifact:
    """A dataset artifact by `ns/name@revision` (revision: `main`, a tag or an id), from the store."""
    store = store or open_store()
    ref = parse_ref(spec, namespace=namespace)
    revision = store.revision_of(ref, "dataset")
    return DatasetArtifact(store.resolve(f"{ref.repo_id}@{revision}", "dataset"), f"{ref.repo_id}@{revision}")


def load_artifact(spec: str, config: str | None = None, store: Store | None = None) -> Any:
    """One call for a user: `load_artifact("t2i-bias/prompts@v1", "de")` is a `datasets.Dataset`.

    The store is the one the environment names (`T2I_BIAS_STORE`, `T2I_BIAS_STORE_ROOT`); without a
    config, the card's default (its first) config.
    """
    artifact = open_artifact(spec, store)
    return artifact.load(config or artifact.configs[0])
