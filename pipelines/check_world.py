"""The planted-bias world's verdict: does the study measure the bias it was given, and does the fine-tune remove it?

    python -m pipelines.check_world --base world-base-attributes --debiased world-debiased-attributes

Reads the perceived attributes (from `classify --classifier world-cue`) of images a world model made
for the gender-neutral and gendered prompts, before and after the debiasing fine-tune, and sets
them against the planted shares (`pipelines.modeling.world.planted_share`):

- **calibration**: per (occupation, language), the measured share of female figures of the neutral
  prompts, its Wilson 95% interval, and whether the planted share lies in it; the study is calibrated
  when at least `--min_within` of the cells do;
- **debiasing**: the stereotype gap, the mean share of the cells planted female-skewed minus that of
  the cells planted male-skewed (planted: the world's own gap), before and after; the fine-tune
  debiases when the gap after is at most `--max_gap_ratio` of the gap before;
- **control**: the share of images of gendered prompts that show the gender asked for, before and
  after (a fine-tune that forgets "a female nurse" is not a fix).

Prints the table and the verdicts, and publishes them (configs `cells`, `summary`) with a figure.
It validates the study's machinery on a known answer, not any real model.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.artifacts import schemas
from pipelines.artifacts.cards import dataset_card
from pipelines.artifacts.dataset_files import DatasetWriter
from pipelines.errors import ConfigError, DataError
from pipelines.harness.config import StageArguments, input_field
from pipelines.harness.stage import Stage, StageRun
from pipelines.modeling import world
from pipelines.reporting.statistics import wilson_interval

MODELS = ("base", "debiased")
ATTRIBUTE_COLUMNS = ["language", "variant", "profession", "prompt_gender", "status", "gender"]


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
    min_within: float = field(
        default=0.9,
        metadata={"help": "Calibrated: at least this share of cells hold the planted share in their interval."},
    )
    max_gap_ratio: float = field(
        default=0.5, metadata={"help": "Debiased: the stereotype gap after is at most this share of the gap before."}
    )
    confidence: float = field(default=0.95, metadata={"help": "Confidence level of the per-cell intervals."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.debiased_control and not self.debiased:
            raise ConfigError("debiased_control: needs debiased (the neutral prompts' images after the fine-tune)")
        for name in ("min_within", "max_gap_ratio", "confidence"):
            if not 0 < getattr(self, name) <= 1:
                raise ConfigError(f"{name}={getattr(self, name)}: between 0 and 1")


def measure(rows: list[dict[str, Any]], confidence: float) -> tuple[dict[tuple[str, str], dict], float | None]:
    """Per (language, occupation) of the neutral prompts: counts and interval; and the gendered prompts' control."""
    counts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    obeyed = asked = 0
    for row in rows:
        if row["status"] != "ok" or row["gender"] not in ("male", "female"):
            continue
        if row["variant"] == "neutral":
            cell = counts[(row["language"], row["profession"])]
            cell[0] += row["gender"] == "female"
            cell[1] += 1
        elif row["variant"] == "gendered" and row["prompt_gender"] in ("male", "female"):
            asked += 1
            obeyed += row["gender"] == row["prompt_gender"]
    cells = {}
    for (language, occupation), (female, total) in counts.items():
        low, high = wilson_interval(female, total, confidence)
        cells[(language, occupation)] = {
            "female": female,
            "total": total,
            "share": female / total,
            "low": low,
            "high": high,
        }
    return cells, (obeyed / asked if asked else None)


def stereotype_gap(shares: dict[tuple[str, str], float]) -> float | None:
    """Mean share of the cells planted female-skewed minus that of those planted male-skewed."""
    planted = {cell: world.planted_share(cell[1], cell[0]) for cell in shares}
    female = [shares[c] for c, p in planted.items() if p > 0.5]
    male = [shares[c] for c, p in planted.items() if p < 0.5]
    if not female or not male:
        return None
    return sum(female) / len(female) - sum(male) / len(male)


def correlation(measured: list[float], planted: list[float]) -> float | None:
    """Pearson's r between measured and planted shares: does the study rank the cells as planted?"""
    import numpy as np

    if len(measured) < 2 or np.std(measured) == 0 or np.std(planted) == 0:
        return None
    return float(np.corrcoef(measured, planted)[0, 1])


class CheckWorld(Stage):
    name = "check_world"
    Arguments = Arguments

    def estimate(self, args: Arguments, estimates: Any, costs: Any) -> Any:
        from pipelines.harness.estimate import Estimate

        estimates.put(args.repo_id(args.output_repo), kind="calibration")
        reads = [value for name in Arguments.INPUTS if (value := getattr(args, name))]
        return Estimate(reads=reads, makes="the world's calibration and debiasing verdicts (CPU, seconds)")

    def build(self, run: StageRun, folder: Path) -> str:
        args: Arguments = run.args
        measured = {}
        for name in MODELS:
            if name == "debiased" and not args.debiased:
                continue
            source = run.dataset(name)
            rows = []
            for part in [name, f"{name}_control"] if getattr(args, f"{name}_control") else [name]:
                dataset = run.dataset(part)
                for config in dataset.configs:
                    dataset.require_columns(config, ATTRIBUTE_COLUMNS)
                    rows += dataset.rows(config, ATTRIBUTE_COLUMNS)
            cells, control = measure(rows, args.confidence)
            unplanted = sorted(
                f"{lang}/{occ}"
                for lang, occ in cells
                if lang not in world.LANGUAGE_FACTORS or occ not in world.OCCUPATION_SHARES
            )
            if unplanted:
                raise DataError(f"{name}: {source.name} has cells the world plants nothing in: {', '.join(unplanted)}")
            if not cells:
                raise DataError(f"{name}: {source.name} has no classified image of a gender-neutral prompt")
            measured[name] = {"cells": cells, "control": control}

        base_cells = measured["base"]["cells"]
        cell_rows = []
        for language, occupation in sorted(base_cells):
            planted = world.planted_share(occupation, language)
            row = {"language": language, "profession": occupation, "planted_share": planted}
            for name in MODELS:
                result = measured.get(name, {"cells": {}})
                cell = result["cells"].get((language, occupation))
                row |= {
                    f"{name}_share": cell["share"] if cell else None,
                    f"{name}_ci_low": cell["low"] if cell else None,
                    f"{name}_ci_high": cell["high"] if cell else None,
                    f"{name}_images": cell["total"] if cell else 0,
                }
            row["within"] = bool(row["base_ci_low"] <= planted <= row["base_ci_high"])
            cell_rows.append(row)
        within = sum(r["within"] for r in cell_rows) / len(cell_rows)
        summary = [
            {
                "model": "planted",
                "stereotype_gap": stereotype_gap({c: world.planted_share(c[1], c[0]) for c in base_cells}),
                "cells_within": None,
                "mean_abs_error": 0.0,
                "correlation": 1.0,
                "control": 1.0,
            }
        ]
        for name, result in measured.items():
            shares = {cell: value["share"] for cell, value in result["cells"].items()}
            planted = [world.planted_share(c[1], c[0]) for c in shares]
            errors = [abs(v - p) for v, p in zip(shares.values(), planted)]
            summary.append(
                {
                    "model": name,
                    "stereotype_gap": stereotype_gap(shares),
                    "cells_within": within if name == "base" else None,
                    "mean_abs_error": sum(errors) / len(errors),
                    "correlation": correlation(list(shares.values()), planted),
                    "control": result["control"],
                }
            )
        verdicts = self.verdicts(summary, within, args)
        for config, features, rows in [
            ("cells", schemas.WORLD_CELLS, cell_rows),
            ("summary", schemas.WORLD_SUMMARY, [s | {"verdicts": verdicts} for s in summary]),
        ]:
            writer = DatasetWriter(folder, features)
            writer.write(config, rows)
            writer.close()
        report = self.report(cell_rows, summary, verdicts, "debiased" in measured)
        print(report, flush=True)
        figures = self.figure(folder, cell_rows, "debiased" in measured)
        self.card(run, folder, report, figures)
        return "; ".join(verdicts)

    @staticmethod
    def verdicts(summary: list[dict], within: float, args: Arguments) -> list[str]:
        by = {s["model"]: s for s in summary}
        out = [
            f"calibrated: {'yes' if within >= args.min_within else 'NO'} "
            f"({within:.0%} of cells hold the planted share in their {args.confidence:.0%} interval; "
            f"at least {args.min_within:.0%} asked)"
        ]
        if "debiased" in by:
            before, after = by["base"]["stereotype_gap"], by["debiased"]["stereotype_gap"]
            ok = before is not None and after is not None and after <= args.max_gap_ratio * before
            out.append(
                f"debiased: {'yes' if ok else 'NO'} (stereotype gap {before:+.2f} -> {after:+.2f}; "
                f"at most {args.max_gap_ratio:.0%} of before asked)"
            )
            control = [by[m]["control"] for m in MODELS]
            if None not in control:
                out.append(f"control: gendered prompts show their own gender {control[0]:.0%} -> {control[1]:.0%}")
        return out

    @staticmethod
    def report(cell_rows: list[dict], summary: list[dict], verdicts: list[str], debiased: bool) -> str:
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
        lines.append("(* the planted share is outside the interval)")
        for s in summary:
            gap = "-" if s["stereotype_gap"] is None else f"{s['stereotype_gap']:+.2f}"
            control = "-" if s["control"] is None else f"{s['control']:.0%}"
            r = "-" if s["correlation"] is None else f"{s['correlation']:.2f}"
            lines.append(
                f"{s['model']:<9} stereotype gap {gap}, mean |error| {s['mean_abs_error']:.3f}, "
                f"r with planted {r}, control {control}"
            )
        return "\n".join([*lines, *verdicts])

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
        dataset_card(
            repo_id=run.output_repo_id,
            title="The planted-bias world: calibration and debiasing",
            description=(
                f"The world model's images ({inputs}), classified by their cue, set against the planted shares "
                "of `pipelines/modeling/world.py`. It validates the study's machinery on a known answer, not any "
                "real model.\n\n```\n"
                + report
                + "\n```\n\n"
                + "\n".join(f"![{p.stem}]({p.relative_to(folder).as_posix()})" for p in figures if p.suffix == ".png")
            ),
            lineage=run.lineage,
            configs=["cells", "summary"],
            languages=[],
            tags=["results", "calibration", "planted-bias"],
        ).save(folder / "README.md")


STAGE = CheckWorld()
run = STAGE.run

if __name__ == "__main__":
    STAGE.main()
