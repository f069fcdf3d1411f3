"""Attach evaluation results to the card of the model they are about, as a recipe's last step.

    python -m pipelines.attach_results --bias images-finetuned-eval-bias

Reads a bias results dataset (from `evaluate_bias`), finds the model it measured (the `model` its
rows name, a repo of the store at the revision that made the images) and publishes a new revision
of that model repo whose card's `model-index` holds the gender results per language and variant,
added to the results the card already had: results are added, never replaced, and a rerun with the
same results publishes nothing. The weights are the evaluated revision's; if the repo's `main` has
other weights since, the results are refused rather than attached to a model they do not describe.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.artifacts.store import content_revision, parse_ref
from pipelines.errors import ConfigError, DataError
from pipelines.harness.config import StageArguments, input_field
from pipelines.harness.stage import Stage, StageRun

METRICS = {
    "mean_l1": "Gender: mean L1 distance from uniform",
    "exp_max_l1": "Gender: expected maximum unfairness (L1)",
}


@dataclass
class Arguments(StageArguments):
    INPUTS = {"bias": "bias"}
    bias: str = input_field("Bias results dataset from evaluate_bias (ns/name@rev).", default="images-bias")
    output_repo: str | None = field(
        default=None, metadata={"help": "The model repo (default: the one the results measured)."}
    )


def _key(result: dict) -> tuple:
    return tuple(result.get(k) for k in ("dataset_type", "dataset_config", "dataset_revision", "metric_type"))


class AttachResults(Stage):
    name = "attach_results"
    Arguments = Arguments
    repo_type = "model"

    def estimate(self, args: Arguments, estimates: Any, costs: Any) -> Any:
        from pipelines.harness.estimate import Estimate

        return Estimate(reads=[args.bias], makes="a new revision of the evaluated model's card with its results")

    def run(self, args: Arguments):  # noqa: ANN201 - the Published of execute
        if args.output_repo is None:
            args.output_repo = evaluated_model(args).partition("@")[0]
        return super().run(args)

    def build(self, run: StageRun, folder: Path) -> str:
        from huggingface_hub import EvalResult, ModelCard

        bias = run.dataset("bias")
        evaluated = evaluated_model(run.args)
        repo_id, _, revision = evaluated.partition("@")
        if repo_id != run.output_repo_id:
            raise ConfigError(f"output_repo={run.output_repo_id!r}: the results measured {repo_id!r}")
        if not run.store.exists(repo_id, "model"):
            raise DataError(f"bias={bias.name}: the model it measured, {repo_id!r}, is not a repo of the store")
        source = run.store.resolve(evaluated, "model")
        latest = run.store.resolve(repo_id, "model")
        if content_revision(source, ignore=["README.md"]) != content_revision(latest, ignore=["README.md"]):
            raise DataError(
                f"{repo_id}: main has other weights than the evaluated revision {revision[:12]}; "
                "evaluate the new weights, or publish the results to another repo"
            )

        # The store's files are read-only blobs: copied as plain files (not their mode), and the card
        # read from the store and written anew, so nothing is made writable after the fact.
        def card(where: str, names: list[str]) -> list[str]:  # the top folder's card only
            return ["README.md"] if Path(where) == latest else []

        shutil.copytree(latest, folder, dirs_exist_ok=True, ignore=card, copy_function=shutil.copyfile)
        card_path = folder / "README.md"
        card = ModelCard.load(latest / "README.md")
        card.data.model_name = card.data.model_name or repo_id.split("/")[-1]
        existing = list(card.data.eval_results or [])
        known = {_key(vars(result)) for result in existing}
        added = []
        for row in bias.rows("summary"):
            if row["model"] != evaluated or row["attribute"] != "gender":
                continue
            for metric, name in METRICS.items():
                value = row.get(metric)
                if value is None or math.isnan(value):
                    continue
                result = EvalResult(
                    task_type="text-to-image",
                    dataset_type=bias.name.partition("@")[0],
                    dataset_name=f"occupation prompts ({row['language']}, {row['variant']})",
                    dataset_config=f"{row['language']}_{row['variant']}",
                    dataset_revision=bias.name.partition("@")[2],
                    metric_type=f"gender_{metric}",
                    metric_name=name,
                    metric_value=round(value, 4),
                )
                if _key(vars(result)) not in known:
                    known.add(_key(vars(result)))
                    added.append(result)
        if not added and not existing:
            raise DataError(f"bias={bias.name}: no finite gender results about {evaluated}")
        card.data.eval_results = existing + added
        card.data.lineage = run.lineage | {
            "attached_to": evaluated,
            "model_lineage": card.data.to_dict().get("lineage"),
        }
        card.save(card_path)
        return f"Add {len(added)} bias result(s) from {bias.name}"


def evaluated_model(args: Arguments) -> str:
    """The model (`ns/name@rev`) the bias results measured: one per results dataset."""
    from pipelines.artifacts.reader import open_artifact

    bias = open_artifact(args.bias, args.open_store(), args.namespace).expect("bias", "bias")
    models = sorted({row["model"] for row in bias.rows("summary")})
    if len(models) != 1:
        raise DataError(f"bias={bias.name}: measured {len(models)} models ({', '.join(models)}); attach one at a time")
    try:
        parse_ref(models[0])
    except Exception:  # noqa: BLE001 - a Hub id or a folder's hash: not a repo of the store
        raise DataError(
            f"bias={bias.name}: the model it measured, {models[0]!r}, is not a repo of the store"
        ) from None
    return models[0]


STAGE = AttachResults()
run = STAGE.run

if __name__ == "__main__":
    STAGE.main()
