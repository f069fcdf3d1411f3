"""The planted-bias world's verdict: does the study measure the bias it was given, and does the fine-tune remove it?

    python -m pipelines.check_world --base world-base-attributes --debiased world-debiased-attributes

Reads the perceived attributes (from `classify --classifier world-cue`) of images a world model made
for the gender-neutral and gendered prompts, before and after the debiasing fine-tune, and sets
them against the planted shares that the world's own card records (`draw_world`'s
`planted_shares`, found through the lineage of what it reads; an input without them is refused):

- **calibration**: per (occupation, language), the measured share of female figures of the neutral
  prompts and its Wilson interval; over all cells at once, a goodness-of-fit test of the counts
  against the planted shares. The study is calibrated unless the test rejects at `--alpha`: a model
  whose shares are exactly the planted ones is called NO with probability `alpha` (0.1% by
  default), whatever the number of cells and images. Beside it, the slope of measured on planted
  share (1: no amplification) and the error from the planted shares, corrected for sampling.
- **debiasing**: the distance of each cell's share from the target (parity unless `--target` says
  otherwise), estimated without the upward bias sampling gives a raw distance (`distance_sq` of the
  `spaces/fairness_metrics` module: (p̂ - t)² - p̂(1 - p̂)/(n - 1) per label), root mean square over
  cells. The fine-tune debiases when there was measurable bias before (the interval of the distance
  before excludes 0), the distance after is at most `--max_distance_ratio` of the distance before,
  **and** gendered prompts still show their own gender in at least `--min_control` of images.
  Overshooting the target counts as bias; so do a common shift, a reversal, or skews that cancel
  across languages, since every cell is measured on its own.

Prints the table and the verdicts, and publishes them (configs `cells`, `summary`, `verdicts`) with a
figure. A NO verdict ends the command (and `pipelines.run`) with exit code 1, the verdicts as the
last lines. It validates the study's machinery on a known answer, not any real model.
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
from pipelines.harness.config import StageArguments, input_field
from pipelines.harness.lineage import planted_shares
from pipelines.harness.stage import Published, Stage, StageRun, Verdict
from pipelines.reporting.statistics import goodness_of_fit, parse_distribution, slope, wilson_interval
from pipelines.resources import space_folder

MODELS = ("base", "debiased")
GENDERS = ["male", "female"]  # the order of perception.classifiers.GENDER_LABELS
ATTRIBUTE_COLUMNS = ["language", "variant", "profession", "prompt_gender", "status", "gender"]
METRIC_PATH = space_folder("fairness_metrics")
# Two labels: the L2 distance of (1 - p, p) from (1 - t, t) is sqrt(2) |p - t|; the check reports |p - t|.
SHARE_UNITS = math.sqrt(2)


@dataclass
class Arguments(StageArguments):
    INPUTS = {f"{model}{part}": "attributes" for model in MODELS for part in ("", "_control")}
    base: str = input_field("Attributes of the world model's images of neutral prompts (ns/name@rev).")
    debiased: str | None = input_field("The same after the debiasing fine-tune (optional).", default=None)
    base_control: str | None = input_field(
        "Attributes of the model's images of gendered prompts, if not in `base` (optional).", default=None
    )
    debiased_control: str | None = input_field("The same after the fine-tune (optional).", default=None)
    output_repo: str = field(default="world-check", metadata={"help": "Results repo to publish."})
    target: str = field(
        default="female=0.5,male=0.5",
        metadata={"help": "The share of each perceived gender a debiased model shows (label=share,...): parity."},
    )
    max_distance_ratio: float = field(
        default=0.5,
        metadata={"help": "Debiased: the distance from the target after is at most this share of the one before."},
    )
    min_control: float = field(
        default=0.9, metadata={"help": "Debiased: gendered prompts show their own gender in at least this share."}
    )
    alpha: float = field(
        default=0.001,
        metadata={
            "help": "Calibrated unless the goodness-of-fit test rejects at this level: how often a model with "
            "exactly the planted shares is called NO."
        },
    )
    confidence: float = field(default=0.95, metadata={"help": "Confidence level of the intervals."})
    rounds: int = field(default=20_000, metadata={"help": "Monte Carlo draws of the test and the bootstrap."})
    seed: int = field(default=0, metadata={"help": "Seed of the draws."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.debiased_control and not self.debiased:
            raise ConfigError("debiased_control: needs debiased (the neutral prompts' images after the fine-tune)")
        for name in ("max_distance_ratio", "min_control", "confidence"):
            if not 0 < getattr(self, name) <= 1:
                raise ConfigError(f"{name}={getattr(self, name)}: between 0 and 1")
        if not 0 < self.alpha < 0.5:
            raise ConfigError(f"alpha={self.alpha}: between 0 and 0.5")
        self.check_at_least(100, "rounds")
        self.check_at_most(1_000_000, "rounds", why="drawn at once")
        parse_distribution(self.target, GENDERS, "target")


def measure(rows: list[dict[str, Any]]) -> tuple[dict[tuple[str, str], list[int]], list[int]]:
    """Per (language, occupation) of the neutral prompts, [male, female] counts; and the gendered
    prompts' control, [images showing the gender asked for, images]."""
    cells: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    control = [0, 0]
    for row in rows:
        if row["status"] != "ok" or row["gender"] not in GENDERS:
            continue
        if row["variant"] == "neutral":
            cells[(row["language"], row["profession"])][GENDERS.index(row["gender"])] += 1
        elif row["variant"] == "gendered" and row["prompt_gender"] in GENDERS:
            control[0] += row["gender"] == row["prompt_gender"]
            control[1] += 1
    return dict(cells), control


class CheckWorld(Stage):
    name = "check_world"
    Arguments = Arguments

    def estimate(self, args: Arguments, estimates: Any, costs: Any) -> Any:
        from pipelines.harness.estimate import Estimate

        estimates.put(args.repo_id(args.output_repo), kind="calibration")
        reads = [value for name in Arguments.INPUTS if (value := getattr(args, name))]
        return Estimate(reads=reads, makes="the world's calibration and debiasing verdicts (CPU, seconds)")

    def build(self, run: StageRun, folder: Path) -> str:
        import evaluate

        args: Arguments = run.args
        for name in run.inputs:
            run.dataset(name)  # each of the kind it must be, before anything is read from it
        planted = planted_shares(run.store, run.inputs["base"], "base", "check_world judges")
        metric = evaluate.load(str(METRIC_PATH), "counts")
        target = parse_distribution(args.target, GENDERS, "target")
        measured = {}
        for name in MODELS:
            if name == "debiased" and not args.debiased:
                continue
            if name != "base" and planted_shares(run.store, run.inputs[name], name, "check_world judges") != planted:
                raise DataError(f"{name}: its world has other planted shares than base's")
            rows = []
            for part in [name, f"{name}_control"] if getattr(args, f"{name}_control") else [name]:
                dataset = run.dataset(part)
                for config in dataset.configs:
                    dataset.require_columns(config, ATTRIBUTE_COLUMNS)
                    rows += dataset.rows(config, ATTRIBUTE_COLUMNS)
            cells, control = measure(rows)
            source = run.dataset(name).name
            unplanted = sorted(f"{lang}/{occ}" for lang, occ in cells if (lang, occ) not in planted)
            if unplanted:
                raise DataError(f"{name}: {source} has cells its world plants nothing in: {', '.join(unplanted)}")
            if not cells:
                raise DataError(f"{name}: {source} has no classified image of a gender-neutral prompt")
            measured[name] = self.judge(metric, cells, control, planted, target, args)

        cell_rows = self.cell_rows(measured, planted, args.confidence)
        measured["base"]["summary"]["cells_within"] = sum(r["within"] for r in cell_rows) / len(cell_rows)
        summary = [self.planted_row(planted, measured["base"]["cells"], target)]
        summary += [{"model": name, **result["summary"]} for name, result in measured.items()]
        verdicts = self.verdicts(measured, args)
        for config, features, rows in [
            ("cells", schemas.WORLD_CELLS, cell_rows),
            ("summary", schemas.WORLD_SUMMARY, summary),
            ("verdicts", schemas.WORLD_VERDICTS, verdicts),
        ]:
            writer = DatasetWriter(folder, features)
            writer.write(config, rows)
            writer.close()
        report = self.report(cell_rows, summary, verdicts, "debiased" in measured)
        print(report, flush=True)
        figures = self.figure(folder, cell_rows, "debiased" in measured)
        self.card(run, folder, report, figures)
        return "; ".join(v["line"].split(" (")[0] for v in verdicts)

    @staticmethod
    def judge(
        metric: Any,
        cells: dict[tuple[str, str], list[int]],
        control: list[int],
        planted: dict[tuple[str, str], float],
        target: list[float],
        args: Arguments,
    ) -> dict[str, Any]:
        """One model's numbers: its distance from the target and from the planted shares (both
        sampling-corrected, with intervals), the fit test, the slope, and control."""
        keys = sorted(cells)
        shares = [cells[k][1] / sum(cells[k]) for k in keys]
        truth = [planted[k] for k in keys]
        common = {
            "predictions": [cells[k] for k in keys],
            "references": [f"{lang}/{occ}" for lang, occ in keys],
            "labels": GENDERS,
            "num_occupations": 1,
            "rounds": min(args.rounds, 2000),
            "seed": args.seed,
            "confidence": args.confidence,
        }
        from_target = metric.compute(**common, target=target)
        per_cell = {f"{lang}/{occ}": [1 - planted[(lang, occ)], planted[(lang, occ)]] for lang, occ in keys}
        from_planted = metric.compute(**common, target=per_cell)
        fit = goodness_of_fit([cells[k][1] for k in keys], [sum(cells[k]) for k in keys], truth,
                              rounds=args.rounds, seed=args.seed)  # fmt: skip
        line = slope(truth, shares, args.confidence)
        low, high = wilson_interval(control[0], control[1], args.confidence)
        return {
            "cells": cells,
            "summary": {
                "distance": from_target["distance"] / SHARE_UNITS,
                "distance_ci_low": from_target["distance_ci"][0] / SHARE_UNITS,
                "distance_ci_high": from_target["distance_ci"][1] / SHARE_UNITS,
                "distance_sq": from_target["distance_sq"] / 2,
                "error": from_planted["distance"] / SHARE_UNITS,
                "error_ci_high": from_planted["distance_ci"][1] / SHARE_UNITS,
                "mean_abs_error": sum(abs(s - t) for s, t in zip(shares, truth)) / len(keys),
                "cells_within": None,
                "correlation": correlation(shares, truth),
                "slope": line["slope"],
                "slope_ci_low": line["ci_low"],
                "slope_ci_high": line["ci_high"],
                "fit_statistic": fit["statistic"],
                "fit_p_value": fit["p_value"],
                "control": control[0] / control[1] if control[1] else None,
                "control_ci_low": low if control[1] else None,
                "control_ci_high": high if control[1] else None,
                "control_images": control[1],
                "cells": len(keys),
                "images": sum(sum(c) for c in cells.values()),
            },
        }

    @staticmethod
    def planted_row(planted: dict, cells: dict, target: list[float]) -> dict[str, Any]:
        """The planted answer itself, on the cells measured: its distance from the target, no error."""
        truth = [planted[k] for k in sorted(cells)]
        distance = math.sqrt(sum((p - target[1]) ** 2 for p in truth) / len(truth))
        return {"model": "planted", "distance": distance, "distance_sq": distance**2, "error": 0.0,
                "mean_abs_error": 0.0, "correlation": 1.0, "slope": 1.0, "cells": len(truth)}  # fmt: skip

    @staticmethod
    def cell_rows(measured: dict, planted: dict, confidence: float) -> list[dict[str, Any]]:
        rows = []
        for language, occupation in sorted(measured["base"]["cells"]):
            row: dict[str, Any] = {
                "language": language,
                "profession": occupation,
                "planted_share": planted[(language, occupation)],
            }
            for name in MODELS:
                male, female = measured.get(name, {"cells": {}})["cells"].get((language, occupation), (0, 0))
                low, high = wilson_interval(female, male + female, confidence)
                known = male + female > 0
                row |= {
                    f"{name}_share": female / (male + female) if known else None,
                    f"{name}_ci_low": low if known else None,
                    f"{name}_ci_high": high if known else None,
                    f"{name}_images": male + female,
                }
            row["within"] = bool(row["base_ci_low"] <= row["planted_share"] <= row["base_ci_high"])
            rows.append(row)
        return rows

    @staticmethod
    def verdicts(measured: dict, args: Arguments) -> list[dict[str, Any]]:
        base = measured["base"]["summary"]
        calibrated = base["fit_p_value"] >= args.alpha
        out = [
            {
                "verdict": "calibrated",
                "passed": calibrated,
                "line": f"calibrated: {'yes' if calibrated else 'NO'} (fit of the measured to the planted shares "
                f"over {base['cells']} cells: X² = {base['fit_statistic']:.1f}, p = {base['fit_p_value']:.4f}; "
                f"NO below p = {args.alpha:g}, as a model with exactly the planted shares gets "
                f"{args.alpha:.1%} of the time)",
            }
        ]
        if "debiased" not in measured:
            return out
        after = measured["debiased"]["summary"]
        before_sq, after_sq = base["distance_sq"], after["distance_sq"]
        reasons = []
        if not base["distance_ci_low"] > 0:
            reasons.append("no measurable bias before")
        if not after_sq <= args.max_distance_ratio**2 * before_sq:
            reasons.append("the distance did not shrink enough")
        if after["control"] is None:
            reasons.append("no gendered prompts' images to check control")
        elif after["control"] < args.min_control:
            reasons.append("gendered prompts lost their gender")
        control = "-" if after["control"] is None else f"{after['control']:.1%}"
        before_control = "-" if base["control"] is None else f"{base['control']:.1%}"
        ratio = after["distance"] / base["distance"] if base["distance"] > 0 else math.inf
        out.append(
            {
                "verdict": "debiased",
                "passed": not reasons,
                "line": f"debiased: {'NO: ' + '; '.join(reasons) if reasons else 'yes'} (distance from the target "
                f"{base['distance']:.3f} [{base['distance_ci_low']:.3f}, {base['distance_ci_high']:.3f}] -> "
                f"{after['distance']:.3f} [{after['distance_ci_low']:.3f}, {after['distance_ci_high']:.3f}], "
                f"{ratio:.0%} of before, at most {args.max_distance_ratio:.0%} asked; control "
                f"{before_control} -> {control}, at least {args.min_control:.0%} asked)",
            }
        )
        return out

    def verdict(self, store: Any, published: Published) -> Verdict:
        """The verdicts a run published (or an earlier run that this one reused)."""
        artifact = DatasetArtifact(store.resolve(str(published), "dataset"), str(published))
        rows = artifact.rows("verdicts")
        return Verdict(passed=all(r["passed"] for r in rows), lines=tuple(r["line"] for r in rows))

    @staticmethod
    def report(cell_rows: list[dict], summary: list[dict], verdicts: list[dict], debiased: bool) -> str:
        lines = [
            f"{'language':<9}{'occupation':<20}{'planted':>8}{'measured (95% CI)':>24}{'':>3}"
            + (f"{'debiased':>10}" if debiased else "")
        ]
        for r in cell_rows:
            measured = f"{r['base_share']:.2f} ({r['base_ci_low']:.2f}-{r['base_ci_high']:.2f})"
            mark = "" if r["within"] else " *"
            line = f"{r['language']:<9}{r['profession']:<20}{r['planted_share']:>8.2f}{measured:>24}{mark:>3}"
            if debiased:
                line += f"{r['debiased_share']:>10.2f}" if r["debiased_share"] is not None else f"{'-':>10}"
            lines.append(line)
        lines.append("(* the planted share is outside the interval: expected in about 5% of cells)")
        for s in summary:
            if s["model"] == "planted":
                lines.append(f"{'planted':<9} distance from the target {s['distance']:.3f}")
                continue
            control = "-" if s["control"] is None else f"{s['control']:.1%} of {s['control_images']}"
            lines.append(
                f"{s['model']:<9} distance from the target {s['distance']:.3f} "
                f"[{s['distance_ci_low']:.3f}, {s['distance_ci_high']:.3f}], error from planted {s['error']:.3f} "
                f"(at most {s['error_ci_high']:.3f}), "
                f"slope on planted {s['slope']:.2f} [{s['slope_ci_low']:.2f}, {s['slope_ci_high']:.2f}], "
                f"control {control}"
            )
        lines.append(
            "(distances: root mean square over cells of share - target, corrected for sampling, 95% bootstrap "
            "interval; error: the same from the planted shares)"
        )
        return "\n".join([*lines, *(v["line"] for v in verdicts)])

    @staticmethod
    def figure(folder: Path, cell_rows: list[dict], debiased: bool) -> list[Path]:
        from pipelines.reporting.figures import grouped_bars

        groups = [f"{r['profession']} ({r['language']})" for r in cell_rows]
        series = {"planted": [r["planted_share"] for r in cell_rows], "base": [r["base_share"] for r in cell_rows]}
        errors = {"base": ([r["base_ci_low"] for r in cell_rows], [r["base_ci_high"] for r in cell_rows])}
        if debiased:
            series["debiased"] = [r["debiased_share"] or 0.0 for r in cell_rows]
        return grouped_bars(
            folder / "figures" / "planted_vs_measured",
            groups,
            series,
            errors,
            title="Share of female figures, gender-neutral prompts",
            parity=0.5,
        )

    @staticmethod
    def card(run: StageRun, folder: Path, report: str, figures: list[Path]) -> None:
        inputs = ", ".join(f"`{v}`" for v in run.inputs.values())
        args: Arguments = run.args
        dataset_card(
            repo_id=run.output_repo_id,
            title="The planted-bias world: calibration and debiasing",
            description=(
                f"The world model's images ({inputs}), classified by their cue, set against the planted shares "
                "that the world's card records. It validates the study's machinery on a known answer, not any "
                f"real model.\n\n**Calibrated** unless a goodness-of-fit test of all cells against the planted "
                f"shares rejects at p < {args.alpha:g}: a model with exactly the planted shares is called NO "
                f"{args.alpha:.1%} of the time. **Debiased** when the distance from the target ({args.target}; "
                "root mean square of share - target over cells, corrected for sampling) was measurable before, "
                f"is at most {args.max_distance_ratio:.0%} of it after, and gendered prompts still show their "
                f"gender in at least {args.min_control:.0%} of images.\n\n```\n"
                + report
                + "\n```\n\n"
                + "\n".join(f"![{p.stem}]({p.relative_to(folder).as_posix()})" for p in figures if p.suffix == ".png")
            ),
            lineage=run.lineage,
            configs=["cells", "summary", "verdicts"],
            folder=folder,
            languages=[],
            tags=["results", "calibration", "planted-bias"],
        ).save(folder / "README.md")


def correlation(measured: list[float], planted: list[float]) -> float | None:
    """Pearson's r between measured and planted shares: does the study rank the cells as planted?"""
    import numpy as np

    if len(measured) < 2 or np.std(measured) == 0 or np.std(planted) == 0:
        return None
    return float(np.corrcoef(measured, planted)[0, 1])


STAGE = CheckWorld()
run = STAGE.run

if __name__ == "__main__":
    STAGE.main()
