"""What every stage does around its own work: pin inputs, record lineage, skip or build, publish.

A stage module defines an `Arguments` dataclass (a `StageArguments`), a `build(run, folder)`
function that writes the artifact (data and card) into an empty folder, and calls `execute`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines import __version__
from pipelines.artifacts.cards import make_lineage
from pipelines.artifacts.store import parse_ref
from pipelines.errors import ConfigError, StoreError
from pipelines.harness.config import StageArguments, input_fields, parse_arguments

# Settings that choose where things go, not what is made: they stay out of the fingerprint.
NOT_PARAMETERS = {"store", "store_root", "namespace", "output_repo", "tag", "force", "work_dir", "device"}


@dataclass(frozen=True)
class Published:
    repo_id: str
    revision: str
    repo_type: str
    reused: bool = False

    def __str__(self) -> str:
        return f"{self.repo_id}@{self.revision}"


class StageRun:
    """One run of a stage: its store, pinned inputs, parameters, fingerprint and lineage."""

    def __init__(
        self, stage: str, args: StageArguments, repo_type: str = "dataset", not_parameters: tuple[str, ...] = ()
    ):
        self.stage = stage
        self.args = args
        self.repo_type = repo_type
        self.store = args.open_store()
        self.output_repo_id = args.repo_id(args.output_repo)
        self.inputs: dict[str, str] = {}
        self._input_types = input_fields(args)
        for name, input_type in self._input_types.items():
            spec = getattr(args, name)
            if spec is not None:
                self.inputs[name] = self._pin(spec, input_type)
        self.parameters = {
            f.name: _plain(getattr(args, f.name))
            for f in dataclasses.fields(args)
            if f.name not in NOT_PARAMETERS and f.name not in not_parameters and f.name not in self._input_types
        }
        self.fingerprint = hashlib.sha256(
            json.dumps([stage, __version__, self.inputs, self.parameters], sort_keys=True).encode()
        ).hexdigest()[:16]
        self.lineage = make_lineage(stage, self.inputs, self.parameters, self.fingerprint)

    def _pin(self, spec: str, repo_type: str) -> str:
        """`ns/name@<revision id>` for a store repo; a model may also be a folder or a Hub id."""
        if repo_type == "model" and Path(spec).is_dir():
            return str(Path(spec).resolve())
        if repo_type == "model":
            try:
                ref = parse_ref(spec, namespace=self.args.namespace)
            except StoreError:
                return spec  # a library's own model name (open_clip's "hf-hub:..."): resolved when loaded
            if not self.store.exists(ref.repo_id, repo_type):
                return spec  # a Hub id (BAAI/AltDiffusion-m9) or a library model name: resolved when loaded
        ref = parse_ref(spec, namespace=self.args.namespace)
        return f"{ref.repo_id}@{self.store.revision_of(ref, repo_type)}"

    def model_path(self, name: str) -> str:
        """A local folder for a pinned store model input; other specs (Hub ids, library names) as given."""
        spec = self.inputs[name]
        if "@" in spec and not Path(spec).exists():
            return str(self.store.resolve(spec, "model"))
        return spec

    def publish(self, folder: Path, message: str) -> Published:
        revision = self.store.push(folder, self.output_repo_id, self.repo_type, message, tag=self.args.tag)
        print(f"[{self.stage}] published {self.repo_type} {self.output_repo_id}@{revision}", file=sys.stderr)
        return Published(self.output_repo_id, revision, self.repo_type)

    def reuse(self) -> Published | None:
        """The existing output for the same inputs and parameters, unless `--force`."""
        if getattr(self.args, "force", False):
            return None
        revision = self.existing()
        if revision is None:
            return None
        print(
            f"[{self.stage}] up to date: {self.output_repo_id}@{revision} (same inputs and parameters)",
            file=sys.stderr,
        )
        return Published(self.output_repo_id, revision, self.repo_type, reused=True)

    def input_folder(self, name: str) -> Path:
        """The local folder of input `name` at its pinned revision."""
        return self.store.resolve(self.inputs[name], self._input_types[name])

    def existing(self) -> str | None:
        """The revision of the output repo first made from the same inputs and parameters.

        The first, because later revisions can carry the same lineage with an amended card (a model's
        card gains model-index results): what the stage made is the original.
        """
        if not self.store.exists(self.output_repo_id, self.repo_type):
            return None
        matches = [
            entry.revision
            for entry in self.store.history(self.output_repo_id, self.repo_type)
            if entry.lineage.get("fingerprint") == self.fingerprint
        ]
        return matches[-1] if matches else None


def execute(
    stage: str,
    args: StageArguments,
    build: Callable[[StageRun, Path], str],
    repo_type: str = "dataset",
) -> Published:
    """Runs `build` into a fresh folder and publishes it, unless the same output already exists.

    `build` returns the commit message. A failure leaves nothing published and no folder behind.
    """
    run = StageRun(stage, args, repo_type)
    reused = run.reuse()
    if reused is not None:
        return reused
    folder = Path(tempfile.mkdtemp(prefix=f"{stage}-"))
    try:
        return run.publish(folder, build(run, folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def stage_main(
    cls: type[StageArguments], stage: str, run: Callable[[Any], Published], argv: list[str] | None = None
) -> None:
    """The command line of a stage: a one-line error and exit code 2 on bad input."""
    try:
        args = parse_arguments(cls, stage, argv)
        published = run(args)
    except (ConfigError, StoreError) as err:
        print(f"{stage}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(published)


def _plain(value: Any) -> Any:
    """Makes a field value JSON- and YAML-friendly (tuples to lists, paths to strings)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value
