"""Stage 7: bias metrics per language, prompt variant and model, with the fairness `evaluate` module.

    python -m pipelines.evaluate_bias --input images-attributes

For every config of the attributes dataset (`<language>_<variant>`) and every attribute (gender,
race in 7 and 4 groups, age, gender x race), the module in `spaces/fairness_metrics` (loaded with
`evaluate.load`) computes per-occupation distances from uniform, their mean with bootstrap
intervals, and MAGBIG's expected maximum unfairness next to its random reference. Only images with
exactly one face (`status == ok`) count; an occupation without one is excluded and listed.

Publishes a results dataset (configs `summary` and `per_occupation`) with bar charts of the
distributions per language, and, when the evaluated model is a repo of the store, a new revision
of its card with a `model-index` entry.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from pipelines import PROJECT_ROOT
from pipelines.artifacts.cards import dataset_card
from pipelines.artifacts.dataset_files import DatasetWriter, artifact_configs, config_entry, load_config
from pipelines.errors import ConfigError
from pipelines.harness.config import StageArguments, input_field
from pipelines.harness.stage import Published, StageRun, execute, stage_main
from pipelines.perception.classifiers import AGE_GROUPS, GENDER_LABELS, RACE4_LABELS, RACE_LABELS

STAGE = "evaluate_bias"
METRIC_PATH = PROJECT_ROOT / "spaces" / "fairness_metrics"
ATTRIBUTE_LABELS = {
    "gender": GENDER_LABELS,
    "race": RACE_LABELS,
    "race4": RACE4_LABELS,
    "age": AGE_GROUPS,
    "gender_race": [f"{g}|{r}" for g in GENDER_LABELS for r in RACE_LABELS],
}
SUMMARY_FEATURES = datasets.Features(
    {
        "language": datasets.Value("string"),
        "variant": datasets.Value("string"),
        "model": datasets.Value("string"),
        "model_revision": datasets.Value("string"),
        "attribute": datasets.Value("string"),
        "num_images": datasets.Value("int32"),
        "num_classified": datasets.Value("int32"),
        "rejection_rate": datasets.Value("float32"),
        "num_occupations": datasets.Value("int32"),
        "excluded_occupations": datasets.List(datasets.Value("string")),
        **{
            name: datasets.Value("float64")
            for name in (
                "mean_l1",
                "std_l1",
                "mean_l1_ci_low",
                "mean_l1_ci_high",
                "mean_l2",
                "std_l2",
                "mean_l2_ci_low",
                "mean_l2_ci_high",
                "expected_max_unfairness",
                "expected_max_unfairness_std",
                "random_expected_max_unfairness",
                "random_expected_max_unfairness_std",
            )
        },
        "k": datasets.Value("int32"),
        "n": datasets.Value("int32"),
        "rounds": datasets.Value("int32"),
    }
)
OCCUPATION_FEATURES = datasets.Features(
    {
        "language": datasets.Value("string"),
        "variant": datasets.Value("string"),
        "model": datasets.Value("string"),
        "attribute": datasets.Value("string"),
        "occupation": datasets.Value("string"),
        "n": datasets.Value("int32"),
        "labels": datasets.List(datasets.Value("string")),
        "distribution": datasets.List(datasets.Value("float64")),
        "l1": datasets.Value("float64"),
        "l2": datasets.Value("float64"),
    }
)


@dataclass
class Arguments(StageArguments):
    INPUTS = {"input": "dataset"}
    input: str = input_field("Attributes dataset from classify (ns/name@rev).", default="images-attributes")
    output_repo: str | None = field(default=None, metadata={"help": "Results repo (default <input>-bias)."})
    attributes: list[str] = field(
        default_factory=lambda: list(ATTRIBUTE_LABELS), metadata={"help": f"Any of {tuple(ATTRIBUTE_LABELS)}."}
    )
    num_occupations: int = field(default=10, metadata={"help": "k of the expected maximum unfairness (MAGBIG: 10)."})
    images_per_occupation: int = field(default=10, metadata={"help": "n of it (MAGBIG: 10)."})
    rounds: int = field(default=1000, metadata={"help": "Bootstrap rounds S (MAGBIG: 1000)."})
    seed: int = field(default=0, metadata={"help": "Bootstrap seed."})
    confidence: float = field(default=0.95, metadata={"help": "Confidence level of the intervals."})
    model_index: bool = field(
        default=True, metadata={"help": "Add the results to the evaluated model's card when it is a store repo."}
    )

    def __post_init__(self) -> None:
        if self.output_repo is None:
            self.output_repo = f"{self.input.partition('@')[0].split('/')[-1].removesuffix('-attributes')}-bias"
        super().__post_init__()
        unknown = [a for a in self.attributes if a not in ATTRIBUTE_LABELS]
        if unknown or not self.attributes:
            raise ConfigError(
                f"attributes: unknown {', '.join(map(repr, unknown))}; allowed {', '.join(ATTRIBUTE_LABELS)}"
            )
        for name in ("num_occupations", "images_per_occupation", "rounds"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)}: must be at least 1")
        if not 0 < self.confidence < 1:
            raise ConfigError(f"confidence={self.confidence}: between 0 and 1")


def labels_of(rows: list[dict[str, Any]], attribute: str) -> list[str | None]:
    """The attribute label of each image, None unless it has exactly one classified face."""
    if attribute == "gender_race":
        return [f"{r['gender']}|{r['race']}" if r["status"] == "ok" else None for r in rows]
    return [r[attribute] if r["status"] == "ok" else None for r in rows]


def build(run: StageRun, folder: Path) -> str:
    import evaluate

    args: Arguments = run.args
    source = run.input_folder("input")
    metric = evaluate.load(str(METRIC_PATH))
    writer_summary = DatasetWriter(folder, SUMMARY_FEATURES)
    writer_occupations = DatasetWriter(folder, OCCUPATION_FEATURES)
    summaries = []
    for config in artifact_configs(source):
        rows = load_config(source, config).to_list()
        if not rows:
            continue
        language, _, variant = config.partition("_")
        model, revision = rows[0]["model"], rows[0]["model_revision"]
        occupations = [r["profession"] for r in rows]
        for attribute in args.attributes:
            labels = ATTRIBUTE_LABELS[attribute]
            predictions = labels_of(rows, attribute)
            if attribute == "gender" and any(p not in (None, *labels) for p in predictions):
                labels = [*labels, "non-binary"]  # the CLIP classifier's optional bucket
            result = metric.compute(
                predictions=predictions,
                references=occupations,
                labels=labels,
                num_occupations=args.num_occupations,
                images_per_occupation=args.images_per_occupation,
                rounds=args.rounds,
                seed=args.seed,
                confidence=args.confidence,
            )
            classified = sum(p is not None for p in predictions)
            summary = {
                "language": language,
                "variant": variant,
                "model": model,
                "model_revision": revision,
                "attribute": attribute,
                "num_images": len(rows),
                "num_classified": classified,
                "rejection_rate": 1 - classified / len(rows),
                "num_occupations": len(result["occupations"]),
                "excluded_occupations": result["excluded_occupations"],
                "mean_l1_ci_low": result["mean_l1_ci"][0],
                "mean_l1_ci_high": result["mean_l1_ci"][1],
                "mean_l2_ci_low": result["mean_l2_ci"][0],
                "mean_l2_ci_high": result["mean_l2_ci"][1],
                **{
                    key: result[key]
                    for key in (
                        "mean_l1",
                        "std_l1",
                        "mean_l2",
                        "std_l2",
                        "expected_max_unfairness",
                        "expected_max_unfairness_std",
                        "random_expected_max_unfairness",
                        "random_expected_max_unfairness_std",
                        "k",
                        "n",
                        "rounds",
                    )
                },
            }
            summaries.append(summary)
            writer_summary.write("summary", [summary])
            writer_occupations.write(
                "per_occupation",
                [
                    {
                        "language": language,
                        "variant": variant,
                        "model": model,
                        "attribute": attribute,
                        "occupation": occupation,
                        "labels": result["labels"],
                        **values,
                    }
                    for occupation, values in result["per_occupation"].items()
                ],
            )
            if attribute in ("gender", "race", "age"):
                plot_distributions(folder / "plots" / f"{config}_{attribute}.png", result, f"{config}: {attribute}")
    writer_summary.close()
    writer_occupations.close()
    if not summaries:
        raise ConfigError(f"input={run.inputs['input']}: no rows to evaluate")
    plots = sorted(p.relative_to(folder).as_posix() for p in (folder / "plots").glob("*.png"))
    gender = [s for s in summaries if s["attribute"] == "gender"]
    table = [
        "| language | variant | model | classified | mean L1 [CI] | exp. max unfairness (random) |",
        "|---|---|---|---|---|---|",
    ] + [
        f"| {s['language']} | {s['variant']} | `{s['model']}` | {s['num_classified']}/{s['num_images']} | "
        f"{s['mean_l1']:.3f} [{s['mean_l1_ci_low']:.3f}, {s['mean_l1_ci_high']:.3f}] | "
        f"{s['expected_max_unfairness']:.3f} ({s['random_expected_max_unfairness']:.3f}) |"
        for s in gender
    ]
    dataset_card(
        repo_id=run.output_repo_id,
        title="Bias metrics",
        description=(
            f"Fairness metrics of the perceived attributes in `{run.inputs['input']}`, computed with the "
            "`spaces/fairness_metrics` evaluate module. Config `summary`: one row per language, variant, model "
            "and attribute; `per_occupation`: the distribution and distances per occupation. Gender:\n\n"
            + "\n".join(table)
            + "\n\n"
            + "\n".join(f"![{p}]({p})" for p in plots)
        ),
        lineage=run.lineage,
        configs=[config_entry("summary"), config_entry("per_occupation")],
        languages=sorted({s["language"] for s in summaries}),
        rows={"summary": len(summaries)},
        task_categories=["text-to-image"],
        tags=["bias", "evaluation", "results"],
    ).save(folder / "README.md")
    if args.model_index:
        add_model_index(run, summaries)
    return f"Bias metrics: {len(summaries)} summaries"


def plot_distributions(path: Path, result: dict[str, Any], title: str) -> None:
    """Stacked bars: one per occupation, one colour per label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    occupations = result["occupations"]
    if not occupations:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    figure, axis = plt.subplots(figsize=(max(4, 0.6 * len(occupations) + 2), 3.2), dpi=100)
    bottom = np.zeros(len(occupations))
    for index, label in enumerate(result["labels"]):
        values = np.array([result["per_occupation"][o]["distribution"][index] for o in occupations])
        axis.bar(occupations, values, bottom=bottom, label=label)
        bottom += values
    axis.set_ylim(0, 1)
    axis.set_ylabel("share of images")
    axis.set_title(title)
    axis.tick_params(axis="x", labelrotation=45)
    axis.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1, 1))
    figure.tight_layout()
    figure.savefig(path, metadata={"Software": None})  # no version stamp: the same data give the same bytes
    plt.close(figure)


def add_model_index(run: StageRun, summaries: list[dict[str, Any]]) -> None:
    """A new revision of each evaluated store model, its card carrying the gender results as model-index."""
    from huggingface_hub import EvalResult, ModelCard

    for model in sorted({s["model"] for s in summaries}):
        if "/" not in model or not run.store.exists(model, "model"):
            continue  # a Hub model or a folder: not ours to update
        revision = next(s["model_revision"] for s in summaries if s["model"] == model)
        folder = Path(tempfile.mkdtemp(prefix="model-index-"))
        try:
            shutil.copytree(run.store.resolve(f"{model}@{revision}", "model"), folder, dirs_exist_ok=True)
            card_path = folder / "README.md"
            card_path.chmod(0o644)
            card = ModelCard.load(card_path)
            card.data.model_name = model.split("/")[-1]
            card.data.eval_results = [
                EvalResult(
                    task_type="text-to-image",
                    dataset_type=run.inputs["input"].partition("@")[0],
                    dataset_name=f"occupation prompts ({s['language']}, {s['variant']})",
                    dataset_config=f"{s['language']}_{s['variant']}",
                    dataset_revision=run.inputs["input"].partition("@")[2],
                    metric_type="gender_mean_l1",
                    metric_name="Gender: mean L1 distance from uniform",
                    metric_value=round(s["mean_l1"], 4),
                )
                for s in summaries
                if s["model"] == model and s["attribute"] == "gender" and np.isfinite(s["mean_l1"])
            ]
            if not card.data.eval_results:
                continue
            card.save(card_path)
            run.store.push(folder, model, "model", f"Add bias results from {run.output_repo_id}")
            print(f"[{STAGE}] model-index added to {model}", file=sys.stderr)
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def run(args: Arguments) -> Published:
    return execute(STAGE, args, build)


def main(argv: list[str] | None = None) -> None:
    stage_main(Arguments, STAGE, run, argv)


if __name__ == "__main__":
    main()
