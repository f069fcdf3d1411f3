"""Debiasing methods side by side: bias, alignment, speed and explicit-gender control in one table.

    python -m pipelines.compare_methods \\
        --methods "base=images-base,base-g3=images-base-g3,finetuned=images-finetuned" --baseline base

A method is what made a set of images: a model at one guidance scale (an images dataset, named by a
label), with one of the training-free interventions (`none`, `explicit_gender`, `ethical`,
`negative`, `sega`; each a config of the images dataset, see `pipelines/prompting/interventions.py`).
Everything else is found by lineage from each images dataset: its attributes (classify), bias
results (evaluate_bias) and CLIP scores (evaluate_alignment). For every method, language and prompt
variant the table gives:

- the bias: mean L1 distance from uniform of the perceived attribute (with its bootstrap interval)
  and MAGBIG's expected maximum unfairness beside its random reference;
- a paired comparison with the baseline method on the same occupations and seeds: the mean
  per-occupation difference of L1, its bootstrap interval and the sign-flip permutation p-value
  (`pipelines/reporting/statistics.py`);
- what it costs: the CLIP score (English CLIP, the occupation text), seconds per image (the images
  dataset's own timing), and explicit-gender control, the share of images from explicitly gendered
  prompts (`eval_female`, `eval_male`) perceived as the gender asked for, when the images have them.

Publishes a results dataset (config `methods`) with figures: bias per method and language (the
base-vs-fine-tuned figure when the methods are models), bias against guidance scale, and control.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.artifacts import schemas
from pipelines.artifacts.cards import dataset_card
from pipelines.artifacts.dataset_files import DatasetWriter
from pipelines.artifacts.reader import DatasetArtifact
from pipelines.errors import ConfigError, DataError
from pipelines.harness.config import StageArguments
from pipelines.harness.lineage import parse_versions, version_refs
from pipelines.harness.stage import Stage, StageRun
from pipelines.reporting.statistics import paired_test, wilson_interval

# Explicitly gendered prompts, and the gender they ask for (None: each row's own, the grid's gendered prompts).
CONTROL_VARIANTS = {"eval_female": "female", "eval_male": "male", "gendered": None}
ALIGNMENT_SCORE = "clip_en_occupation"


@dataclass
class Arguments(StageArguments):
    output_repo: str = field(default="methods", metadata={"help": "Results dataset repo to publish."})
    methods: str = field(
        default="base=images-base-eval",
        metadata={"help": "label=ns/images[@rev],...: the images of each model and guidance scale."},
    )
    baseline: str | None = field(
        default=None,
        metadata={"help": "The method the others are tested against: a label, or label+intervention (default: "
                  "the first label, no intervention)."},
    )  # fmt: skip
    attribute: str = field(default="gender", metadata={"help": "The perceived attribute compared."})
    rounds: int = field(default=10_000, metadata={"help": "Bootstrap (and Monte Carlo permutation) rounds."})
    seed: int = field(default=0, metadata={"help": "Seed of the bootstrap."})
    confidence: float = field(default=0.95, metadata={"help": "Interval level."})

    def __post_init__(self) -> None:
        super().__post_init__()
        labels = parse_versions(self.methods, "methods")
        self.check_at_least(1, "rounds")
        if not 0 < self.confidence < 1:
            raise ConfigError(f"confidence={self.confidence}: between 0 and 1")
        if self.baseline is not None and self.baseline.partition("+")[0] not in labels:
            raise ConfigError(f"baseline={self.baseline!r}: not one of the methods' labels ({', '.join(labels)})")


class CompareMethods(Stage):
    name = "compare_methods"
    Arguments = Arguments

    def pinned_inputs(self, args: Arguments, store: Any) -> dict[str, str]:
        pinned = {}
        for label, spec in parse_versions(args.methods, "methods").items():
            for kind, ref in version_refs(store, args.namespace, label, spec).items():
                pinned[f"{label}.{kind}"] = ref
        return pinned

    def estimate(self, args: Arguments, estimates: Any, costs: Any) -> Any:
        from pipelines.harness.estimate import Estimate

        labels = parse_versions(args.methods, "methods")
        estimates.put(args.repo_id(args.output_repo), kind="methods")
        return Estimate(reads=list(labels.values()), makes=f"a comparison of {len(labels)} method(s) (CPU, seconds)")

    def build(self, run: StageRun, folder: Path) -> str:
        args: Arguments = run.args
        labels = list(parse_versions(args.methods, "methods"))
        measured = {label: self.measure(run, label, args) for label in labels}
        rows = [row for label in labels for row in measured[label]["rows"]]
        if not rows:
            raise DataError(f"methods: no {args.attribute!r} results in the bias datasets of {', '.join(labels)}")
        baseline = args.baseline or labels[0]
        base_label, _, base_intervention = baseline.partition("+")
        base_intervention = base_intervention or "none"
        l1 = {label: measured[label]["l1"] for label in labels}
        for row in rows:
            reference = l1[base_label].get((base_intervention, row["language"], row["variant"]), {})
            reference_name = baseline
            if not reference and row["intervention"] != "none":
                # The baseline has no images of these prompts: an intervention is then tested against
                # its own model's unchanged prompts, on the same seeds.
                reference = l1[row["label"]].get(("none", row["language"], row["variant"]), {})
                reference_name = f"{row['label']}+none"
            own = l1[row["label"]].get((row["intervention"], row["language"], row["variant"]), {})
            shared = sorted(set(reference) & set(own))
            test = paired_test(
                [reference[o] for o in shared],
                [own[o] for o in shared],
                rounds=args.rounds,
                seed=args.seed,
                confidence=args.confidence,
            )
            is_baseline = row["label"] == base_label and row["intervention"] == base_intervention
            row |= {
                "baseline": reference_name if reference else None,
                "difference_mean": None if is_baseline or not shared else test["mean_difference"],
                "difference_ci_low": None if is_baseline or not shared else test["ci_low"],
                "difference_ci_high": None if is_baseline or not shared else test["ci_high"],
                "p_value": None if is_baseline or not shared else test["p_value"],
            }
        writer = DatasetWriter(folder, schemas.METHODS)
        writer.write("methods", rows)
        writer.close()
        figures = self.figures(folder, rows, args)
        self.card(run, folder, rows, figures, baseline)
        return f"{len({r['method'] for r in rows})} methods compared on {args.attribute}"

    def measure(self, run: StageRun, label: str, args: Arguments) -> dict[str, Any]:
        """One label's rows (per intervention, language and variant) and per-occupation L1."""
        images = run.dataset(f"{label}.images").expect("images", label)
        bias = run.dataset(f"{label}.bias").expect("bias", label)
        parameters = images.lineage.get("parameters", {})
        guidance = float(parameters.get("guidance_scale", math.nan))
        model = images.lineage.get("inputs", {}).get("model", "")
        seconds = images.metadata.get("seconds_per_image") or {}
        alignment = self.alignment(run, label)
        control = self.control(run.dataset(f"{label}.attributes"), args.confidence)
        per_config = {
            (info.get("intervention") or "none", info.get("language"), info.get("variant")): config
            for config in images.configs
            for info in [images.config_info(config)]
        }
        l1: dict[tuple, dict[str, float]] = defaultdict(dict)
        for row in bias.rows("per_occupation"):
            if row["attribute"] == args.attribute:
                l1[(row["intervention"] or "none", row["language"], row["variant"])][row["occupation"]] = row["l1"]
        rows = []
        for summary in bias.rows("summary"):
            key = (summary["intervention"] or "none", summary["language"], summary["variant"])
            if summary["attribute"] != args.attribute or summary["variant"] in CONTROL_VARIANTS:
                continue
            intervention = key[0]
            own_control = control.get(summary["language"], {})
            rows.append(
                {
                    "method": label if intervention == "none" else f"{label}+{intervention}",
                    "label": label,
                    "intervention": intervention,
                    "model": model,
                    "language": summary["language"],
                    "variant": summary["variant"],
                    "attribute": args.attribute,
                    "guidance_scale": guidance,
                    "num_occupations": summary["num_occupations"],
                    **{name: summary[name] for name in ("mean_l1", "mean_l1_ci_low", "mean_l1_ci_high")},
                    **{name: summary[name] for name in ("exp_max_l1", "random_exp_max_l1")},
                    "clip_score": alignment.get(key),
                    "seconds_per_image": seconds.get(per_config.get(key, ""), None),
                    "explicit_gender_control": own_control.get("share"),
                    "explicit_gender_control_ci_low": own_control.get("low"),
                    "explicit_gender_control_ci_high": own_control.get("high"),
                    "explicit_gender_images": own_control.get("n", 0),
                }
            )
        return {"rows": rows, "l1": l1}

    @staticmethod
    def alignment(run: StageRun, label: str) -> dict[tuple, float]:
        """The mean CLIP score over all occupations, per (intervention, language, variant)."""
        if f"{label}.alignment" not in run.inputs:
            return {}
        found = run.dataset(f"{label}.alignment")
        return {
            (row["intervention"] or "none", row["language"], row["variant"]): row[ALIGNMENT_SCORE]
            for row in found.rows("summary")
            if row["occupation"] == schemas.ALL_OCCUPATIONS
        }

    @staticmethod
    def control(attributes: DatasetArtifact, confidence: float) -> dict[str, dict[str, float]]:
        """Per language: the share of explicitly gendered prompts' images perceived as asked."""
        counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for config in attributes.configs:
            info = attributes.config_info(config)
            variant = info.get("variant", "")
            if variant not in CONTROL_VARIANTS or (info.get("intervention") or "none") != "none":
                continue
            for row in attributes.rows(config, ["status", "gender", "prompt_gender"]):
                asked = CONTROL_VARIANTS[variant] or row["prompt_gender"]
                if row["status"] == "ok" and row["gender"] is not None and asked:
                    counts[info["language"]][0] += row["gender"] == asked
                    counts[info["language"]][1] += 1
        out = {}
        for language, (obeyed, total) in counts.items():
            low, high = wilson_interval(obeyed, total, confidence)
            out[language] = {"share": obeyed / total if total else None, "low": low, "high": high, "n": total}
        return out

    def figures(self, folder: Path, rows: list[dict], args: Arguments) -> list[Path]:
        from pipelines.reporting.figures import grouped_bars, lines

        figures = []
        for variant in sorted({r["variant"] for r in rows}):
            chosen = [r for r in rows if r["variant"] == variant]
            languages = sorted({r["language"] for r in chosen})
            methods = list(dict.fromkeys(r["method"] for r in chosen))
            by = {(r["method"], r["language"]): r for r in chosen}
            series = {m: [_get(by, m, lang, "mean_l1") for lang in languages] for m in methods}
            errors = {
                m: ([_get(by, m, lang, "mean_l1_ci_low") for lang in languages],
                    [_get(by, m, lang, "mean_l1_ci_high") for lang in languages])
                for m in methods
            }  # fmt: skip
            top = max([v for pair in errors.values() for v in pair[1] if not math.isnan(v)] or [1.0])
            figures += grouped_bars(
                folder / "figures" / f"{variant}_bias_by_method",
                languages,
                series,
                errors,
                title=f"{variant}: perceived {args.attribute}, mean L1 from uniform (95% CI)",
                ylabel="mean L1 from uniform",
                ymax=max(1.0, top) * 1.05,
            )
            families = defaultdict(dict)  # (model, intervention) -> guidance -> mean over languages
            for r in chosen:
                family = f"{r['model'].split('@')[0].split('/')[-1]} {r['intervention']}"
                families[family].setdefault(r["guidance_scale"], []).append(r["mean_l1"])
            scales = sorted({g for f in families.values() for g in f})
            if len(scales) > 1:
                figures += lines(
                    folder / "figures" / f"{variant}_bias_by_guidance",
                    scales,
                    {f: [_mean(values.get(g, [])) for g in scales] for f, values in families.items()},
                    title=f"{variant}: bias against guidance scale (mean over languages)",
                    xlabel="guidance scale",
                    ylabel="mean L1 from uniform",
                )
            labels = list(dict.fromkeys(r["label"] for r in chosen if r["explicit_gender_images"]))
            if labels:
                first = {(r["label"], r["language"]): r for r in chosen}
                figures += grouped_bars(
                    folder / "figures" / "explicit_gender_control",
                    languages,
                    {lab: [_get(first, lab, lang, "explicit_gender_control") for lang in languages] for lab in labels},
                    {
                        lab: (
                            [_get(first, lab, lang, "explicit_gender_control_ci_low") for lang in languages],
                            [_get(first, lab, lang, "explicit_gender_control_ci_high") for lang in languages],
                        )
                        for lab in labels
                    },  # fmt: skip
                    title="Explicit-gender control: images perceived as the gender asked for (95% CI)",
                    ylabel="share obeyed",
                    parity=0.5,
                )
        return figures

    def card(self, run: StageRun, folder: Path, rows: list[dict], figures: list[Path], baseline: str) -> None:
        def number(value: Any, digits: int = 3) -> str:
            return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"

        dataset_card(
            repo_id=run.output_repo_id,
            title="Debiasing methods compared",
            description=(
                f"Methods (a model at a guidance scale, with a training-free intervention) compared on perceived "
                f"{run.args.attribute}, on the same prompts and seeds, against `{baseline}`: mean L1 distance from "
                "uniform over occupations (lower is fairer) with its bootstrap interval; the paired difference "
                "from the baseline on the same occupations with its interval and sign-flip permutation p-value; "
                f"and what each method costs: the CLIP score (`{ALIGNMENT_SCORE}`), seconds per image, and the "
                "share of explicitly gendered prompts' images perceived as asked (explicit-gender control)."
            ),
            lineage=run.lineage,
            configs=["methods"],
            languages=sorted({r["language"] for r in rows if r["language"]}),
            rows={"methods": len(rows)},
            tables=[
                {
                    "title": "Methods",
                    "columns": [
                        "method",
                        "language",
                        "variant",
                        "guidance",
                        "mean L1 [95% CI]",
                        "Δ vs baseline [95% CI]",
                        "p",
                        "CLIP",
                        "s/image",
                        "control",
                    ],
                    "rows": [
                        [
                            r["method"],
                            r["language"],
                            r["variant"],
                            number(r["guidance_scale"], 1),
                            f"{number(r['mean_l1'])} [{number(r['mean_l1_ci_low'])}, {number(r['mean_l1_ci_high'])}]",
                            "–"
                            if r["difference_mean"] is None
                            else f"{number(r['difference_mean'])} [{number(r['difference_ci_low'])}, "
                            f"{number(r['difference_ci_high'])}]",
                            number(r["p_value"]),
                            number(r["clip_score"], 2),
                            number(r["seconds_per_image"], 3),
                            number(r["explicit_gender_control"], 2),
                        ]
                        for r in rows
                    ],
                }
            ],  # fmt: skip
            notes=[f"![{p.stem}]({p.relative_to(folder).as_posix()})" for p in figures if p.suffix == ".png"],
            tags=["bias", "debiasing", "comparison", "results"],
        ).save(folder / "README.md")


def _mean(values: list[float]) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def _get(table: dict, label: str, language: str, name: str) -> float:
    row = table.get((label, language))
    return math.nan if row is None or row[name] is None else row[name]


STAGE = CompareMethods()
run = STAGE.run

if __name__ == "__main__":
    STAGE.main()
