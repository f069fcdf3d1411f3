"""Publish the language-comparison Space: the app, a card the Hub reads, and what it imports.

    python -m pipelines.publish_space --versions "base=images-base-eval,finetuned=images-finetuned-eval"

Publishes a Space repo (to the store, or the Hub with `--store hub`) holding `spaces/compare_languages`'
app, its card (the Space front matter the Hub expects: sdk, sdk_version, app_file, ...), a
`requirements.txt` that installs everything else the app imports from the package index alone, the
toolkit's modules the app uses (copied beside it: the Space needs no wheel and no checkout), and
`space_config.json` naming the model versions to show, so the Space needs no settings to start. It
shows what the store the Space reads holds (`T2I_BIAS_STORE`: `hub` on a Space). When that store is
the one published to, the Space is started (its app imported and built on the pinned data) before
anything is published, so a Space that would die on its first start is never published.
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
from pipelines.artifacts.store import LocalStore, parse_ref
from pipelines.errors import ConfigError, DataError, UserError
from pipelines.harness.config import StageArguments
from pipelines.harness.lineage import parse_versions, version_refs
from pipelines.harness.stage import Stage, StageRun
from pipelines.resources import space_folder

SOURCE = space_folder("compare_languages")
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


def toolkit_files() -> list[Path]:
    """The toolkit's files the app uses (its modules, imported anywhere and transitively, and the data
    files they read, such as the lexicons), relative to the checkout: copied into the Space as they are,
    so it imports them from its own folder."""
    from pipelines.harness.code_version import PROJECT_PACKAGES, used_files

    used = set().union(*(used_files(SOURCE / name, PROJECT_ROOT) for name in APP_FILES))
    relative = (path.relative_to(PROJECT_ROOT) for path in used)
    return sorted(path for path in relative if path.parts[0] in PROJECT_PACKAGES)


def start_space(folder: Path, store: Any) -> None:
    """Imports the published folder's app in a fresh interpreter, as the Space starts it: the study is
    loaded from `store` and the interface built. A failure is one line with the app's last error line."""
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "T2I_BIAS_SPACE_VERSIONS")}
    local = isinstance(store, LocalStore)
    env.update({"T2I_BIAS_STORE": "local" if local else "hub", "GRADIO_ANALYTICS_ENABLED": "False"})
    if local:
        env["T2I_BIAS_STORE_ROOT"] = str(store.root)
    # The app puts its own folder first on the path, so the copied toolkit is the one imported.
    probe = "import app, pipelines; assert pipelines.__file__.startswith(str(app.HERE)), pipelines.__file__"
    result = subprocess.run([sys.executable, "-c", probe], cwd=folder, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise DataError(f"the Space does not start on these versions, nothing published: {last}")


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
        for name in (*APP_FILES, "requirements.txt", "packages.txt"):  # packages.txt: the fonts, by apt
            shutil.copyfile(SOURCE / name, folder / name)
        for relative in toolkit_files():
            (folder / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(PROJECT_ROOT / relative, folder / relative)
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
        if args.reads_this_store():
            start_space(folder, run.store)
        return f"Space showing {args.versions} (toolkit {__version__})"

    def estimate(self, args: Arguments, estimates: Any, costs: Any) -> Any:
        from pipelines.harness.estimate import Estimate

        return Estimate(makes=f"a Space showing {args.versions}")


STAGE = PublishSpace()
run = STAGE.run

if __name__ == "__main__":
    STAGE.main()
