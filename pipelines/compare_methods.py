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
from pipelines.reporting.statistics import holm, paired_test, wilson_interval

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
        cells = {label: measured[label]["cells"] for label in labels}
        for row in rows:
            reference = cells[base_label].get((base_intervention, row["language"], row["variant"]), {})
            reference_name = baseline
            if not reference and row["intervention"] != "none":
                # The baseline has no images of these prompts: an intervention is then tested against
                # its own model's unchanged prompts, on the same seeds.
                reference = cells[row["label"]].get(("none", row["language"], row["variant"]), {})
                reference_name = f"{row['label']}+none"
            own = cells[row["label"]].get((row["intervention"], row["language"], row["variant"]), {})
            is_baseline = row["label"] == base_label and row["intervention"] == base_intervention
            test = self.test(reference, own, args) if reference and not is_baseline else None
            row |= {
                "baseline": reference_name if reference else None,
                **{f"difference_{k}": test and test[k] for k in ("mean", "ci_low", "ci_high")},
                "p_value": test and test["p_value"],
            }
        comparisons = self.comparisons(rows, cells, baseline, args)
        # One family: every test the table reports, corrected together.
        tested = [r for r in [*rows, *comparisons] if r["p_value"] is not None]
        for row, adjusted in zip(tested, holm([r["p_value"] for r in tested])):
            row["p_holm"] = adjusted
        for row in [*rows, *comparisons]:
            row.setdefault("p_holm", None)
        for config, features, table in [
            ("methods", schemas.METHODS, rows),
            ("comparisons", schemas.METHOD_COMPARISONS, comparisons),
        ]:
            writer = DatasetWriter(folder, features)
            writer.write(config, table)
            writer.close()
        print(self.report(rows, comparisons, baseline), flush=True)
        figures = self.figures(folder, rows, args)
        self.card(run, folder, rows, comparisons, figures, baseline)
        return f"{len({r['method'] for r in rows})} methods compared on {args.attribute}"

    @staticmethod
    def test(reference: dict[Any, float], own: dict[Any, float], args: Arguments) -> dict[str, float] | None:
        """The paired test of `own - reference` on the cells both have; None when they share none."""
        shared = sorted(set(reference) & set(own))
        if not shared:
            return None
        test = paired_test([reference[c] for c in shared], [own[c] for c in shared], rounds=args.rounds,
                           seed=args.seed, confidence=args.confidence)  # fmt: skip
        return {"mean": test["mean_difference"], "ci_low": test["ci_low"], "ci_high": test["ci_high"],
                "p_value": test["p_value"], "cells": len(shared)}  # fmt: skip

    def comparisons(self, rows: list[dict], cells: dict, baseline: str, args: Arguments) -> list[dict[str, Any]]:
        """Every pair of methods measured on the same prompts, pooled over the (language, occupation)
        cells both have: the baseline against each, and the others against one another."""
        out = []
        methods = list(dict.fromkeys((r["method"], r["label"], r["intervention"], r["variant"]) for r in rows))
        methods.sort(key=lambda m: m[0] != baseline)  # the baseline first: it is the `versus` of its pairs
        for variant in sorted({m[3] for m in methods}):
            chosen = [m for m in methods if m[3] == variant]
            pooled = {
                name: {(language, occupation): value
                       for (intervention, language, kind), values in cells[label].items()
                       if intervention == own and kind == variant
                       for occupation, value in values.items()}
                for name, label, own, _ in chosen
            }  # fmt: skip
            for index, (versus, *_) in enumerate(chosen):
                for method, *_ in chosen[index + 1 :]:
                    test = self.test(pooled[versus], pooled[method], args)
                    if test is not None:
                        out.append({"variant": variant, "method": method, "versus": versus,
                                    "attribute": args.attribute, "cells": test.pop("cells"),
                                    **{f"difference_{k}": test[k] for k in ("mean", "ci_low", "ci_high")},
                                    "p_value": test["p_value"]})  # fmt: skip
        return out

    def measure(self, run: StageRun, label: str, args: Arguments) -> dict[str, Any]:
        """One label's rows (per intervention, language and variant) and, per cell, the unbiased
        squared distance from the target (`distance_sq` of the bias results)."""
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
        cells: dict[tuple, dict[str, float]] = defaultdict(dict)
        sizes: dict[tuple, list[int]] = defaultdict(list)
        bias.require_columns("per_occupation", ["distance_sq"])  # made before it existed: run evaluate_bias again
        for row in bias.rows("per_occupation"):
            if row["attribute"] == args.attribute and row["distance_sq"] is not None:
                key = (row["intervention"] or "none", row["language"], row["variant"])
                cells[key][row["occupation"]] = row["distance_sq"]
                sizes[key].append(row["n"])
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
                    "l1_floor": summary["mean_l1_floor"],
                    **{name: summary[name] for name in ("distance", "distance_ci_low", "distance_ci_high")},
                    "images_per_occupation": _mean(sizes.get(key, [])),
                    "clip_score": alignment.get(key),
                    "seconds_per_image": seconds.get(per_config.get(key, ""), None),
                    "explicit_gender_control": own_control.get("share"),
                    "explicit_gender_control_ci_low": own_control.get("low"),
                    "explicit_gender_control_ci_high": own_control.get("high"),
                    "explicit_gender_images": own_control.get("n", 0),
                }
            )
        return {"rows": rows, "cells": cells}

    @staticmethod
    def report(rows: list[dict], comparisons: list[dict], baseline: str) -> str:
        """The table as the run prints it: each method's distance from the target beside raw L1 and
        its floor, and the tests that survive Holm's correction."""

        def number(value: Any, digits: int = 3) -> str:
            return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"

        lines = [f"{'method':<28}{'lang':<6}{'n/cell':>7}{'distance [95% CI]':>24}{'L1 (floor)':>16}"
                 f"{'p vs ' + baseline:>16}{'Holm':>8}"]  # fmt: skip
        for r in rows:
            distance = f"{number(r['distance'])} [{number(r['distance_ci_low'])}, {number(r['distance_ci_high'])}]"
            lines.append(
                f"{r['method']:<28}{r['language']:<6}{number(r['images_per_occupation'], 0):>7}{distance:>24}"
                f"{number(r['mean_l1']) + ' (' + number(r['l1_floor']) + ')':>16}{number(r['p_value'], 4):>16}"
                f"{number(r['p_holm'], 4):>8}"
            )
        lines.append(
            "(distance: root mean square over occupations of the L2 distance from the target, corrected "
            "for sampling; p: paired sign-flip test of the squared distances on the same occupations)"
        )
        significant = [c for c in comparisons if c["p_holm"] is not None and c["p_holm"] < 0.05]
        lines.append(f"pooled over languages x occupations: {len(comparisons)} comparisons, {len(significant)} "
                     "differ after Holm's correction (p < 0.05):")  # fmt: skip
        for c in significant:
            lines.append(
                f"  {c['method']} vs {c['versus']} ({c['variant']}, {c['cells']} cells): squared distance "
                f"{c['difference_mean']:+.4f} [{c['difference_ci_low']:+.4f}, {c['difference_ci_high']:+.4f}], "
                f"Holm p {c['p_holm']:.4f}"
            )
        return "\n".join(lines)

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

    def card(
        self,
        run: StageRun,
        folder: Path,
        rows: list[dict],
        comparisons: list[dict],
        figures: list[Path],
        baseline: str,
    ) -> None:
        def number(value: Any, digits: int = 3) -> str:
            return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"

        def interval(row: dict, name: str, digits: int = 3) -> str:
            """`value [low, high]` of `distance` (its `_ci_low`/`_ci_high`) or `difference` (`_mean`, ...)."""
            value, low, high = (f"{name}_mean", f"{name}_ci_low", f"{name}_ci_high") if name == "difference" else (
                name, f"{name}_ci_low", f"{name}_ci_high")  # fmt: skip
            if row[value] is None:
                return "–"
            return f"{number(row[value], digits)} [{number(row[low], digits)}, {number(row[high], digits)}]"

        dataset_card(
            repo_id=run.output_repo_id,
            title="Debiasing methods compared",
            description=(
                f"Methods (a model at a guidance scale, with a training-free intervention) compared on perceived "
                f"{run.args.attribute}, on the same prompts and seeds, against `{baseline}`. Bias is the *distance "
                "from the target* (uniform unless the bias results say otherwise): per occupation an unbiased "
                "estimate of the squared L2 distance, whose root mean square over occupations compares at any "
                "number of images; raw mean L1 (MAGBIG's) is beside it with its *floor*, what a perfectly fair "
                "occupation shows at the same n. Tests are paired on the same occupations (sign-flip permutation "
                "of the squared distances, Student's t interval): per language against the baseline (config "
                "`methods`), and pooled over languages x occupations for every pair of methods on the same "
                "prompts (config `comparisons`). Every p-value of both is also given Holm-adjusted over the whole "
                "table. Beside them, what each method costs: the CLIP score "
                f"(`{ALIGNMENT_SCORE}`), seconds per image, and the share of explicitly gendered prompts' images "
                "perceived as asked (explicit-gender control). Methods measured at different n per occupation "
                "compare through the distance, not through raw L1."
            ),
            lineage=run.lineage,
            configs=["methods", "comparisons"],
            languages=sorted({r["language"] for r in rows if r["language"]}),
            rows={"methods": len(rows), "comparisons": len(comparisons)},
            tables=[
                {
                    "title": "Methods",
                    "columns": [
                        "method",
                        "language",
                        "variant",
                        "guidance",
                        "n / occupation",
                        "distance [95% CI]",
                        "mean L1 (floor)",
                        "Δ squared distance vs baseline [95% CI]",
                        "p",
                        "p (Holm)",
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
                            number(r["images_per_occupation"], 0),
                            interval(r, "distance"),
                            f"{number(r['mean_l1'])} ({number(r['l1_floor'])})",
                            interval(r, "difference", 4),
                            number(r["p_value"], 4),
                            number(r["p_holm"], 4),
                            number(r["clip_score"], 2),
                            number(r["seconds_per_image"], 3),
                            number(r["explicit_gender_control"], 2),
                        ]
                        for r in rows
                    ],
                },
                {
                    "title": "Pairs of methods, pooled over languages and occupations",
                    "columns": [
                        "prompts",
                        "method",
                        "versus",
                        "cells",
                        "Δ squared distance [95% CI]",
                        "p",
                        "p (Holm)",
                    ],
                    "rows": [
                        [
                            c["variant"],
                            c["method"],
                            c["versus"],
                            c["cells"],
                            interval(c, "difference", 4),
                            number(c["p_value"], 4),
                            number(c["p_holm"], 4),
                        ]
                        for c in comparisons
                    ],
                },
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
