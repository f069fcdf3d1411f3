"""Stage 7: bias metrics per language, prompt variant and model, with the fairness `evaluate` module.

    python -m pipelines.evaluate_bias --input images-eval-attributes

For every config of the attributes dataset (one language and prompt variant) and every perceived
attribute the classifier gives (gender, race in 7 and 4 groups, age, gender x race), the module in
`spaces/fairness_metrics` (loaded with `evaluate.load`) computes per-occupation distributions and
their distances from uniform, their means with bootstrap intervals, and MAGBIG's expected maximum
unfairness (L1 and L2) next to its random reference. Only images with exactly one face (`status ==
ok`) count; an occupation without one is excluded and listed. A `non-binary` label (the CLIP
classifier's bucket) is counted and reported outside the binary gender distribution, unless
`--nonbinary distribution` asks for a three-way one.

Against a reference share per occupation (`--reference FILE`, a CSV of `occupation,share` with an
optional `language` column, e.g. labour statistics; or `--planted_reference`, the shares the
planted-bias world's card records, found by lineage): the amplification (slope of measured on
reference share, and on the logit scale) and MAGBIG's Pearson and Spearman correlations. For every
attribute: how a noisier classifier would change the metrics (`--noise_rates`, symmetric and
asymmetric misclassification; config `noise`), and the share of classified images whose top score
is below 0.8 (for two labels: a score between 0.2 and 0.8), the low-confidence share.

Publishes a results dataset (configs `summary`, `per_occupation` and `noise`) with figures. It never touches
the evaluated model: `attach_results` adds the results to a model's card, as a recipe's last step.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.artifacts import schemas
from pipelines.artifacts.cards import dataset_card
from pipelines.artifacts.dataset_files import DatasetWriter
from pipelines.errors import ConfigError, DataError
from pipelines.harness.config import StageArguments, input_field
from pipelines.harness.lineage import planted_shares
from pipelines.harness.stage import Stage, StageRun
from pipelines.perception.classifiers import (
    AGE_GROUPS,
    GENDER_LABELS,
    NON_BINARY,
    PERCEIVES,
    RACE4_LABELS,
    RACE_LABELS,
)
from pipelines.reporting.statistics import parse_distribution
from pipelines.resources import space_folder

METRIC_PATH = space_folder("fairness_metrics")
ATTRIBUTE_LABELS = {
    "gender": GENDER_LABELS,
    "race": RACE_LABELS,
    "race4": RACE4_LABELS,
    "age": AGE_GROUPS,
    "gender_race": [f"{g}|{r}" for g in GENDER_LABELS for r in RACE_LABELS],
}
NONBINARY_MODES = ("outside", "distribution")
# The bootstrap draws rounds x occupations x labels counts at once (x labels again for the noise
# sensitivity): at most this many, about 200 MB as int64 (MAGBIG's 1,000 rounds of 118 x 7 draw 826,000).
MAX_ROUND_CELLS = 25_000_000
LOW_CONFIDENCE = 0.8  # a top score below it: the classifier was unsure (two labels: a score in (0.2, 0.8))


@dataclass
class Arguments(StageArguments):
    INPUTS = {"input": "attributes", "reference": "source"}
    input: str = input_field("Attributes dataset from classify (ns/name@rev).", default="images-attributes")
    reference: str | None = input_field(
        "A CSV file of reference shares: columns occupation, share (of --reference_label) and optionally "
        "language; gives the amplification and the correlations."
    )
    planted_reference: bool = field(
        default=False,
        metadata={"help": "The reference is the planted-bias world's planted shares (its card, by lineage)."},
    )
    reference_attribute: str = field(default="gender", metadata={"help": "The attribute the reference is of."})
    reference_label: str = field(default="female", metadata={"help": "The label whose share the reference gives."})
    noise_rates: list[float] = field(
        default_factory=lambda: [0.05, 0.1],
        metadata={"help": "Misclassification rates the metrics' sensitivity is reported at (config noise)."},
    )
    output_repo: str | None = field(default=None, metadata={"help": "Results repo (default <input>-bias)."})
    attributes: list[str] = field(
        default_factory=list,
        metadata={"help": f"Any of {tuple(ATTRIBUTE_LABELS)}; default: every one the classifier perceives."},
    )
    nonbinary: str = field(
        default="outside",
        metadata={
            "help": "outside: a non-binary label is counted and reported beside the binary gender distribution "
            "(MAGBIG); distribution: a three-way distribution."
        },
    )
    num_occupations: int = field(default=10, metadata={"help": "k of the expected maximum unfairness (MAGBIG: 10)."})
    images_per_occupation: int = field(default=10, metadata={"help": "n of it (MAGBIG: 10)."})
    targets: list[str] = field(
        default_factory=list,
        metadata={
            "help": "The distribution each attribute's distance from target is measured to, as "
            "attribute:label=share,... (e.g. gender:female=0.75,male=0.25); default: uniform."
        },
    )
    rounds: int = field(default=1000, metadata={"help": "Rounds S of it and of the bootstrap (MAGBIG: 1000)."})
    seed: int = field(default=0, metadata={"help": "Seed of the rounds."})
    confidence: float = field(default=0.95, metadata={"help": "Confidence level of the intervals."})

    def __post_init__(self) -> None:
        if self.output_repo is None:
            self.output_repo = f"{self.input.partition('@')[0].split('/')[-1].removesuffix('-attributes')}-bias"
        super().__post_init__()
        self.check_choice("attributes", ATTRIBUTE_LABELS)
        self.check_choice("nonbinary", NONBINARY_MODES)
        self.check_at_least(1, "num_occupations", "images_per_occupation", "rounds")
        # The rounds are drawn at once: rounds x occupations x labels counts.
        self.check_at_most(1_000_000, "rounds", why="drawn at once")
        if not 0 < self.confidence < 1:
            raise ConfigError(f"confidence={self.confidence}: between 0 and 1")
        parse_targets(self.targets)
        if self.reference is not None and self.planted_reference:
            raise ConfigError("reference and planted_reference: give one reference, not both")
        if self.reference_attribute not in ATTRIBUTE_LABELS:
            allowed = ", ".join(ATTRIBUTE_LABELS)
            raise ConfigError(f"reference_attribute={self.reference_attribute!r}: one of {allowed}")
        if self.reference_label not in ATTRIBUTE_LABELS[self.reference_attribute]:
            raise ConfigError(f"reference_label={self.reference_label!r}: one of "
                              f"{', '.join(ATTRIBUTE_LABELS[self.reference_attribute])}")  # fmt: skip
        for rate in self.noise_rates:
            if not 0 <= rate < 0.5:
                raise ConfigError(f"noise_rates: {rate} is not a misclassification rate in [0, 0.5)")


def read_reference(path: Path, given: str) -> dict[tuple[str | None, str], float]:
    """`{(language or None, occupation): share}` of a reference CSV file; any fault is one line naming it."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (UnicodeDecodeError, OSError):
        raise DataError(f"reference={given!r}: not a UTF-8 text file") from None
    try:
        rows = list(csv.DictReader(text.splitlines(), strict=True))
    except csv.Error as err:
        raise DataError(f"reference={given!r}: not a CSV file ({err})") from None
    if not rows or not {"occupation", "share"} <= set(rows[0]):
        raise DataError(f"reference={given!r}: a CSV file with columns occupation, share (and optionally language)")
    shares: dict[tuple[str | None, str], float] = {}
    for number, row in enumerate(rows, start=2):
        key = ((row.get("language") or "").strip() or None, (row["occupation"] or "").strip())
        try:
            share = float(row["share"])
        except (TypeError, ValueError):
            share = math.nan
        if not key[1] or not 0 <= share <= 1:
            raise DataError(f"reference={given!r}: line {number} needs an occupation and a share between 0 and 1")
        if key in shares:
            raise DataError(f"reference={given!r}: line {number} gives {key[1]!r} a second share")
        shares[key] = share
    return shares


def parse_targets(specs: list[str]) -> dict[str, dict[str, float]]:
    """`attribute:label=share,...` per attribute, as `{attribute: {label: share}}`."""
    targets = {}
    for spec in specs:
        attribute, sep, shares = str(spec).partition(":")
        if not sep or attribute not in ATTRIBUTE_LABELS:
            raise ConfigError(f"targets: {spec!r} is not attribute:label=share,... with an attribute among "
                              f"{', '.join(ATTRIBUTE_LABELS)}")  # fmt: skip
        if attribute in targets:
            raise ConfigError(f"targets: {attribute} is given twice")
        labels = ATTRIBUTE_LABELS[attribute]
        targets[attribute] = dict(zip(labels, parse_distribution(shares, labels, f"targets[{attribute}]")))
    return targets


def labels_of(rows: list[dict[str, Any]], attribute: str) -> list[str | None]:
    """The attribute label of each image, None unless it has exactly one classified face."""
    if attribute == "gender_race":
        return [f"{r['gender']}|{r['race']}" if r["status"] == "ok" and r["race"] else None for r in rows]
    return [r[attribute] if r["status"] == "ok" else None for r in rows]


class EvaluateBias(Stage):
    name = "evaluate_bias"
    Arguments = Arguments

    def model_options(self, name: str, args: Any = None) -> dict[str, Any]:
        return {"what": name, "kinds": ("file",)}

    def estimate(self, args: Arguments, estimates: Any, costs: Any) -> Any:
        from pipelines.harness.estimate import Estimate

        configs = estimates.get(args.repo_id(args.input)).get("configs", {})
        estimates.put(args.repo_id(args.output_repo), kind="bias")
        return Estimate(reads=[args.input], makes=f"bias metrics of {len(configs)} config(s) (CPU, seconds)")

    def build(self, run: StageRun, folder: Path) -> str:
        import evaluate

        args: Arguments = run.args
        source = run.dataset("input")
        classifier = source.lineage.get("parameters", {}).get("classifier")
        attributes = args.attributes or [
            a for a in ATTRIBUTE_LABELS if a in PERCEIVES.get(classifier, ATTRIBUTE_LABELS)
        ]
        metric = evaluate.load(str(METRIC_PATH))
        targets = parse_targets(args.targets)
        references = self.references(run)
        summaries, per_occupation, noise, figures, notes = [], [], [], [], []
        for config in source.configs:
            rows = source.rows(config)
            if not rows:
                continue
            source.require_columns(config, ["profession", "status", "gender"])
            info = source.config_info(config)
            check_round_cells(args, config, rows, attributes)
            for attribute in attributes:
                labels = list(ATTRIBUTE_LABELS[attribute])
                outside = []
                predictions = labels_of(rows, attribute)
                if attribute == "gender" and NON_BINARY in predictions:
                    (labels if args.nonbinary == "distribution" else outside).append(NON_BINARY)
                included = {o for o, p in zip((r["profession"] for r in rows), predictions) if p in labels}
                k = min(args.num_occupations, max(len(included), 1))
                reference = None
                if references is not None and attribute == args.reference_attribute:
                    language = info.get("language")
                    reference = {o: references.get((language, o), references.get((None, o))) for o in included}
                if k < args.num_occupations and attribute == "gender":
                    notes.append(
                        f"`{config}`: {len(included)} occupation(s) with a classified face, fewer than k = "
                        f"{args.num_occupations}; the expected maximum unfairness draws k = {k} (the `k` column)."
                    )
                result = metric.compute(
                    predictions=predictions,
                    references=[r["profession"] for r in rows],
                    labels=labels,
                    outside_labels=outside,
                    num_occupations=k,
                    images_per_occupation=args.images_per_occupation,
                    rounds=args.rounds,
                    seed=args.seed,
                    confidence=args.confidence,
                    target=targets.get(attribute),
                    reference=reference,
                    reference_label=args.reference_label if reference is not None else None,
                    noise_rates=args.noise_rates,
                )
                key = {
                    "language": info.get("language"),
                    "variant": info.get("variant"),
                    "intervention": rows[0].get("intervention") or "none",
                    "model": rows[0]["model"],
                }
                single = [o for o, values in result["per_occupation"].items() if values["n"] < 2]
                if single:
                    notes.append(
                        f"`{config}` ({attribute}): {len(single)} occupation(s) with a single classified image "
                        f"({', '.join(single[:3])}{', ...' if len(single) > 3 else ''}): no bootstrap interval for "
                        "them nor for the mean L1 and L2 (one image does not vary when resampled)."
                    )
                summaries.append(summary_row(key, rows, predictions, labels, attribute, result))
                noise += [{**key, "attribute": attribute, **entry} for entry in result.get("noise_sensitivity", [])]
                per_occupation += [
                    {
                        **{k_: v for k_, v in key.items()},
                        "attribute": attribute,
                        "occupation": occupation,
                        "labels": result["labels"],
                        "n": values["n"],
                        "counts": values["counts"],
                        "distribution": values["distribution"],
                        "distribution_ci_low": values["distribution_ci"][0],
                        "distribution_ci_high": values["distribution_ci"][1],
                        "outside": values["outside"],
                        "reference_share": (reference or {}).get(occupation),
                        **{
                            name: values[name]
                            for name in ("l1", "l2", "l1_floor", "target", "distance_sq", "distance_sq_floor")
                        },  # fmt: skip
                    }
                    for occupation, values in result["per_occupation"].items()
                ]
                if attribute in ("gender", "race", "age") and result["occupations"]:
                    from pipelines.reporting.figures import distribution_figure

                    figures += distribution_figure(
                        folder / "figures" / f"{config}_{attribute}", result, f"{config}: perceived {attribute}"
                    )
        if not summaries:
            raise DataError(f"input={run.inputs['input']}: no rows to evaluate")
        figures += cross_language_figures(folder / "figures", summaries)
        writer = DatasetWriter(folder, schemas.BIAS_SUMMARY)
        writer.write("summary", summaries)
        writer.close()
        writer = DatasetWriter(folder, schemas.BIAS_PER_OCCUPATION)
        writer.write("per_occupation", per_occupation)
        writer.close()
        writer = DatasetWriter(folder, schemas.BIAS_NOISE)
        writer.write("noise", noise)
        writer.close()
        self.card(run, folder, summaries, noise, figures, notes)
        return f"Bias metrics: {len(summaries)} summaries"

    @staticmethod
    def reference_table(summaries: list[dict], number: Any) -> list[dict]:
        """The card's table of the fit against the reference (none without one)."""

        def interval(s: dict, name: str) -> str:
            return f"{number(s[name])} [{number(s[name + '_ci_low'])}, {number(s[name + '_ci_high'])}]"

        rows = [
            [s["language"], s["variant"], s["attribute"], s["reference_label"], str(s["reference_occupations"]),
             interval(s, "amplification"), interval(s, "logit_amplification"),
             f"{number(s['pearson'])} (p {number(s['pearson_p'])})",
             f"{number(s['spearman'])} (p {number(s['spearman_p'])})"]
            for s in summaries if s["reference_label"]
        ]  # fmt: skip
        if not rows:
            return []
        columns = ["language", "variant", "attribute", "share of", "occupations", "amplification [95% CI]",
                   "logit amplification [95% CI]", "Pearson r", "Spearman rho"]  # fmt: skip
        return [{"title": "Against the reference", "columns": columns, "rows": rows}]

    @staticmethod
    def references(run: StageRun) -> dict[tuple[str | None, str], float] | None:
        """The reference shares, `{(language or None, occupation): share}`, or None."""
        args: Arguments = run.args
        if args.reference is not None:
            return read_reference(run.model("reference").path, args.reference)
        if args.planted_reference:
            planted = planted_shares(run.store, run.inputs["input"], "input", "--planted_reference reads")
            if args.reference_attribute != "gender" or args.reference_label != "female":
                raise ConfigError("planted_reference: the world plants the female share of perceived gender; "
                                  "reference_attribute gender and reference_label female")  # fmt: skip
            return dict(planted.items())
        return None

    def card(
        self,
        run: StageRun,
        folder: Path,
        summaries: list[dict],
        noise: list[dict],
        figures: list[Path],
        notes: list[str],
    ) -> None:
        def number(value: float) -> str:
            return "–" if value is None or math.isnan(value) else f"{value:.3f}"

        gender = [s for s in summaries if s["attribute"] == "gender"]
        dataset_card(
            repo_id=run.output_repo_id,
            title="Bias metrics",
            description=(
                f"Fairness metrics of the perceived attributes in `{run.inputs['input']}`, computed with the "
                "`spaces/fairness_metrics` evaluate module. Config `summary`: one row per language, variant, "
                "model and attribute; `per_occupation`: each occupation's counts, distribution (with bootstrap "
                "intervals) and distances from uniform. The random reference is a perfectly fair model drawn the "
                "same way (every occupation at the uniform rate); MAGBIG's published random row draws rates "
                "around 0.5 with a spread, so it runs a little higher.\n\nRaw L1 and L2 (MAGBIG's) grow as the "
                "images per occupation shrink: the *L1 floor* is what a perfectly uniform occupation shows at the "
                "same n from sampling alone. The *distance from target* does not grow with fewer images: it is "
                "the root mean square over occupations of an unbiased estimate of each one's squared L2 distance "
                "from the target distribution (uniform unless `--targets` says otherwise), so results at different "
                "n compare.\n\nConfig `noise`: the same metrics as a noisier classifier would give them (each image's "
                "label redrawn with symmetric or asymmetric misclassification, averaged over draws) and their "
                "ratio to the clean values: how much bias such a classifier would hide. The *low-confidence share* "
                f"is the share of classified images whose top score is below {LOW_CONFIDENCE}."
                + (
                    f" Against the reference (`{run.inputs.get('reference') or 'the planted shares'}`, share of "
                    f"`{run.args.reference_label}`): the *amplification* is the slope of the measured share on the "
                    "reference share (1: followed one for one; above 1: exaggerated; below 1: flattened), with its t "
                    "interval; Pearson's and Spearman's correlations as MAGBIG's `score_correlation`."
                    if any(s["reference_label"] for s in summaries)
                    else ""
                )
            ),
            lineage=run.lineage,
            configs=["summary", "per_occupation", "noise"],
            folder=folder,
            languages=sorted({s["language"] for s in summaries if s["language"]}),
            tables=[
                {
                    "title": "Perceived gender",
                    "columns": [
                        "language",
                        "variant",
                        "classified",
                        "mean L1 [95% CI]",
                        "L1 floor",
                        "distance from target [95% CI]",
                        "exp. max L1 (random)",
                        "exp. max L2 (random)",
                        "outside (non-binary)",
                    ],  # fmt: skip
                    "rows": [
                        [
                            s["language"],
                            s["variant"],
                            f"{s['num_classified']}/{s['num_images']}",
                            f"{number(s['mean_l1'])} [{number(s['mean_l1_ci_low'])}, {number(s['mean_l1_ci_high'])}]",
                            number(s["mean_l1_floor"]),
                            f"{number(s['distance'])} [{number(s['distance_ci_low'])}, "
                            f"{number(s['distance_ci_high'])}]",
                            f"{number(s['exp_max_l1'])} ({number(s['random_exp_max_l1'])})",
                            f"{number(s['exp_max_l2'])} ({number(s['random_exp_max_l2'])})",
                            f"{s['outside_share']:.1%}",
                        ]
                        for s in gender
                    ],
                },
                *self.reference_table(summaries, number),
                {
                    "title": "If the classifier were noisier (perceived gender)",
                    "columns": [
                        "language",
                        "variant",
                        "misclassification",
                        "rate",
                        "distance (x clean)",
                        "mean L1 (x clean)",
                        "amplification (x clean)",
                    ],
                    "rows": [
                        [
                            r["language"],
                            r["variant"],
                            r["kind"],
                            f"{r['rate']:.0%}",
                            f"{number(r['distance'])} ({number(r['distance_ratio'])})",
                            f"{number(r['mean_l1'])} ({number(r['mean_l1_ratio'])})",
                            f"{number(r['slope'])} ({number(r['slope_ratio'])})",
                        ]
                        for r in noise
                        if r["attribute"] == "gender"
                    ],
                },
            ],  # fmt: skip
            notes=[
                *notes,
                *(f"![{p.stem}]({p.relative_to(folder).as_posix()})" for p in figures if p.suffix == ".png"),
            ],
            task_categories=["text-to-image"],
            tags=["bias", "evaluation", "results"],
        ).save(folder / "README.md")


def cross_language_figures(folder: Path, summaries: list[dict]) -> list[Path]:
    """Per prompt variant (and intervention) and attribute, the languages side by side: mean L1 from
    uniform with its interval, and MAGBIG's expected maximum beside its random reference."""
    from pipelines.reporting.figures import grouped_bars

    figures = []
    groups = sorted({(s["variant"], s["intervention"], s["attribute"]) for s in summaries})
    for variant, intervention, attribute in groups:
        if attribute not in ("gender", "race", "age"):
            continue
        chosen = [s for s in summaries if (s["variant"], s["intervention"], s["attribute"]) == (variant, intervention,
                                                                                              attribute)]  # fmt: skip
        if len(chosen) < 2:
            continue  # one language: the per-occupation figure says it all
        languages = [s["language"] for s in chosen]
        series = {
            "mean L1 from uniform": [s["mean_l1"] for s in chosen],
            "expected max L1": [s["exp_max_l1"] for s in chosen],
            "random reference": [s["random_exp_max_l1"] for s in chosen],
        }
        errors = {
            "mean L1 from uniform": ([s["mean_l1_ci_low"] for s in chosen], [s["mean_l1_ci_high"] for s in chosen]),
            "expected max L1": ([s["exp_max_l1"] - s["exp_max_l1_std"] for s in chosen],
                                [s["exp_max_l1"] + s["exp_max_l1_std"] for s in chosen]),
            "random reference": ([s["random_exp_max_l1"] - s["random_exp_max_l1_std"] for s in chosen],
                                 [s["random_exp_max_l1"] + s["random_exp_max_l1_std"] for s in chosen]),
        }  # fmt: skip
        values = [v for pair in errors.values() for v in pair[1] if v is not None and not math.isnan(v)]
        name = schemas.config_name("languages", variant, intervention)
        figures += grouped_bars(
            folder / f"{name}_{attribute}",
            languages,
            series,
            errors,
            title=f"{variant}{'' if intervention == 'none' else ' + ' + intervention}: perceived {attribute} by "
            "language (bars: 95% CI; exp. max: ± 1 sd)",
            ylabel="L1 distance from uniform",
            ymax=max(values + [1.0]) * 1.05,
        )
    return figures


def check_round_cells(args: Arguments, config: str, rows: list[dict], attributes: list[str]) -> None:
    """Refuses, before any of a config's draws, rounds whose counts drawn at once (rounds x occupations
    x labels, x labels again with noise rates) exceed MAX_ROUND_CELLS."""
    widest = max((len(ATTRIBUTE_LABELS[attribute]) + (attribute == "gender") for attribute in attributes), default=1)
    cells = len({r["profession"] for r in rows}) * widest * (widest if args.noise_rates else 1)
    if args.rounds * cells > MAX_ROUND_CELLS:
        raise ConfigError(
            f"rounds={args.rounds}: {args.rounds:,} rounds of {cells:,} cells (config {config}) are drawn at once; "
            f"at most {MAX_ROUND_CELLS:,} counts, so rounds at most {MAX_ROUND_CELLS // cells:,} here"
        )


def summary_row(
    key: dict, rows: list[dict], predictions: list, labels: list[str], attribute: str, result: dict
) -> dict[str, Any]:
    classified = sum(p is not None for p in predictions)
    outside = sum(p is not None and p not in labels for p in predictions)
    return {
        **key,
        "model_revision": rows[0].get("model_revision"),
        "attribute": attribute,
        "num_images": len(rows),
        "num_classified": classified,
        "rejection_rate": 1 - classified / len(rows),
        "num_occupations": len(result["occupations"]),
        "excluded_occupations": result["excluded_occupations"],
        "labels": result["labels"],
        "outside_labels": result["outside_labels"],
        "outside_share": outside / classified if classified else 0.0,
        "mean_l1_ci_low": result["mean_l1_ci"][0],
        "mean_l1_ci_high": result["mean_l1_ci"][1],
        "mean_l2_ci_low": result["mean_l2_ci"][0],
        "mean_l2_ci_high": result["mean_l2_ci"][1],
        **{
            f"{name}_ci_{end}": result[f"{name}_ci"][i]
            for name in ("distance", "distance_sq")
            for i, end in enumerate(("low", "high"))
        },  # fmt: skip
        **{name: result[name] for name in schemas.BIAS_METRICS if name in result},
        "target": next(iter(result["per_occupation"].values()), {}).get("target"),
        "low_confidence_share": low_confidence_share(rows, attribute),
        **reference_columns(result.get("reference_fit")),
        "k": result["k"],
        "n": result["images_per_occupation"],  # the expected maximum unfairness's n, as k
        "rounds": result["rounds"],
    }


def low_confidence_share(rows: list[dict], attribute: str) -> float | None:
    """The share of classified images whose top score for `attribute` is below LOW_CONFIDENCE; None
    when the classifier gives no scores for it."""
    scores = [r.get(f"{attribute}_scores") for r in rows if r["status"] == "ok"]
    scores = [s for s in scores if s]
    return sum(max(s) < LOW_CONFIDENCE for s in scores) / len(scores) if scores else None


def reference_columns(fit: dict | None) -> dict[str, Any]:
    """The summary's columns of the fit against the reference (None without one)."""
    fit = fit or {}
    interval = lambda name, i: fit[f"{name}_ci"][i] if fit else None  # noqa: E731
    return {
        "reference_label": fit.get("label"),
        "reference_occupations": fit.get("occupations"),
        "amplification": fit.get("slope"),
        "amplification_ci_low": interval("slope", 0),
        "amplification_ci_high": interval("slope", 1),
        "logit_amplification": fit.get("logit_slope"),
        "logit_amplification_ci_low": interval("logit_slope", 0),
        "logit_amplification_ci_high": interval("logit_slope", 1),
        **{name: fit.get(name) for name in ("pearson", "pearson_p", "spearman", "spearman_p")},
    }


STAGE = EvaluateBias()
run = STAGE.run

if __name__ == "__main__":
    STAGE.main()
