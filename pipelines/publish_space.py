"""Publish the language-comparison Space: the app, a card the Hub reads, and what it imports.

    python -m pipelines.publish_space --versions "base=images-base-eval,finetuned=images-finetuned-eval"

Publishes a Space repo (to the store, or the Hub with `--store hub`) holding `spaces/compare_languages`'
app, its card (the Space front matter the Hub expects: sdk, sdk_version, app_file, ...), a
`requirements.txt` that installs everything the app imports, the toolkit included as a wheel built
from this checkout, and `space_config.json` naming the model versions to show, so the Space needs no
settings to start. It shows what the store the Space reads holds (`T2I_BIAS_STORE`: `hub` on a Space).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from pipelines import PROJECT_ROOT, __version__
from pipelines.artifacts.reader import DatasetArtifact
from pipelines.artifacts.store import parse_ref
from pipelines.errors import ConfigError, DataError, UserError
from pipelines.harness.config import StageArguments
from pipelines.harness.lineage import parse_versions, version_refs
from pipelines.harness.stage import Stage, StageRun

SOURCE = PROJECT_ROOT / "spaces" / "compare_languages"
APP_FILES = ("app.py", "study_data.py")


@dataclass
class Arguments(StageArguments):
    output_repo: str = field(default="compare-languages", metadata={"help": "Space repo to publish."})
    versions: str = field(
        default="base=world-base-eval,debiased=world-debiased-eval",
        metadata={"help": "The model versions to show: label=ns/images[@rev],..."},
    )
    methods: str | None = field(
        default=None,
        metadata={"help": "The methods comparison to show (ns/methods[@rev]; default: found by lineage)."},
    )
    space_store: str = field(
        default="hub", metadata={"help": "Where the Space reads the study: hub, or local (a store folder beside it)."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_choice("space_store", ("hub", "local"))
        named = {f"versions[{label}]": spec for label, spec in parse_versions(self.versions).items()}
        for what, spec in {**named, "methods": self.methods}.items():
            try:
                if spec is not None:
                    parse_ref(spec, namespace=self.namespace)
            except UserError as err:
                raise ConfigError(f"{what}={spec!r}: {err}") from None

    def reads_this_store(self) -> bool:
        """Whether the Space will read the store this command publishes to (so its inputs can be checked
        and pinned now)."""
        return self.space_store == "local" or self.store == "hub"


def build_wheel(folder: Path) -> Path:
    """The toolkit as a wheel (no dependencies: the Space's requirements name what it needs), built
    from a copy of its sources so the checkout gains no build/ or egg-info folders."""
    import tempfile

    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="t2i-bias-wheel-") as tmp:
        source = Path(tmp) / "source"
        skip = shutil.ignore_patterns("__pycache__", "*.pyc")
        for name in ("pipelines", "training"):
            shutil.copytree(PROJECT_ROOT / name, source / name, ignore=skip)
        for name in ("pyproject.toml", "README.md"):
            shutil.copyfile(PROJECT_ROOT / name, source / name)
        result = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q",
             "-w", str(folder)],
            capture_output=True,
            text=True,
        )  # fmt: skip
    wheels = sorted(folder.glob("t2i_bias-*.whl"))
    if result.returncode != 0 or not wheels:
        raise ConfigError(f"the toolkit's wheel could not be built: {result.stderr.strip().splitlines()[-1:]}")
    return wheels[0]


class PublishSpace(Stage):
    name = "publish_space"
    Arguments = Arguments
    repo_type = "space"

    def pinned_inputs(self, args: Arguments, store: Any) -> dict[str, str]:
        """Every dataset the Space shows, pinned: each version's images, attributes, bias and alignment
        (found by lineage) and the methods comparison. Checked here, before anything is written, so a
        Space that would fail on its first start is never published; when the Space reads another
        store (the Hub, from a local study), only the values' form can be checked."""
        if not args.reads_this_store():
            return {}
        pinned = {}
        for label, spec in parse_versions(args.versions).items():
            for kind, ref in version_refs(store, args.namespace, label, spec).items():
                pinned[f"{label}.{kind}"] = ref
        if args.methods:
            ref = parse_ref(args.methods, namespace=args.namespace)
            if not store.exists(ref.repo_id, "dataset"):
                raise DataError(f"methods={args.methods!r}: no methods dataset {ref.repo_id} in the store")
            pinned["methods"] = f"{ref.repo_id}@{store.revision_of(ref, 'dataset')}"
            DatasetArtifact(store.resolve(pinned["methods"], "dataset"), pinned["methods"]).expect(
                "methods", "methods"
            )
        return pinned

    def build(self, run: StageRun, folder: Path) -> str:
        args: Arguments = run.args
        for name in APP_FILES:
            shutil.copyfile(SOURCE / name, folder / name)
        wheel = build_wheel(folder / "wheels")
        requirements = (SOURCE / "requirements.txt").read_text().rstrip() + f"\n./wheels/{wheel.name}\n"
        (folder / "requirements.txt").write_text(requirements)
        # The Space shows exactly what was checked: each version's images and the methods, by revision.
        versions = {
            label: run.inputs.get(f"{label}.images", spec) for label, spec in parse_versions(args.versions).items()
        }
        config = {
            "versions": ",".join(f"{label}={spec}" for label, spec in versions.items()),
            "store": args.space_store,
            "namespace": args.namespace,
        }
        if args.methods:
            config["methods"] = run.inputs.get("methods", args.methods)
        (folder / "space_config.json").write_text(json.dumps(config, indent=2) + "\n")
        from huggingface_hub import RepoCard

        card = RepoCard((SOURCE / "README.md").read_text())
        card.data.sdk_version = metadata.version("gradio")
        card.data.lineage = run.lineage  # the store's history and the runner's reuse read it
        card.save(folder / "README.md")
        return f"Space showing {args.versions} (toolkit {__version__})"

    def estimate(self, args: Arguments, estimates: Any, costs: Any) -> Any:
        from pipelines.harness.estimate import Estimate

        return Estimate(makes=f"a Space showing {args.versions}")


STAGE = PublishSpace()
run = STAGE.run

if __name__ == "__main__":
    STAGE.main()
