"""Figures for cards and papers: perceived-attribute shares with intervals and a parity line.

Each figure is written twice: SVG (vector, sharp at any size, for papers) and PNG (for cards and
the Space). Text is sized for a printed column; every occupation is labelled; error bars are the
bootstrap intervals the fairness module computes; the dashed line is the uniform share, where a
fair model's bars would sit. Files carry no software stamp, so the same data give the same bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#999999", "#000000"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8, "svg.hashsalt": "t2i-bias"}
    )
    return plt


def _save(figure: Any, stem: Path) -> list[Path]:
    import matplotlib

    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".svg"), stem.with_suffix(".png")]
    # The tight box once for both files: bbox_inches="tight" lays the figure out again for each
    # (a quarter of a figure's time; evaluate_bias draws one per config and attribute).
    box = figure.get_tightbbox(figure.canvas.get_renderer()).padded(matplotlib.rcParams["savefig.pad_inches"])
    figure.savefig(paths[0], metadata={"Date": None, "Creator": None}, bbox_inches=box)
    figure.savefig(paths[1], dpi=200, metadata={"Software": None}, bbox_inches=box)
    return paths


def _finish(plt: Any, figure: Any, axis: Any, stem: Path, title: str) -> list[Path]:
    """The house style every figure ends with: title, open top and right, legend outside; saved, closed."""
    axis.set_title(title)
    axis.spines[["top", "right"]].set_visible(False)
    axis.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    paths = _save(figure, stem)
    plt.close(figure)
    return paths


def grouped_bars(
    stem: Path,
    groups: Sequence[str],
    series: dict[str, Sequence[float]],
    errors: dict[str, tuple[Sequence[float], Sequence[float]]] | None = None,
    *,
    title: str,
    ylabel: str = "share of images",
    parity: float | None = None,
    ymax: float | None = None,
) -> list[Path]:
    """Bars per group (x axis), one colour per series, with asymmetric error bars and a parity line.

    The y axis runs to 1.05 (shares) or, given `ymax`, to it; bars never stack or clip.
    """
    plt = _pyplot()
    width = 0.8 / max(len(series), 1)
    figure, axis = plt.subplots(figsize=(max(4.5, 0.55 * len(groups) * max(len(series), 1) ** 0.5 + 1.5), 3.2))
    x = np.arange(len(groups))
    for index, (name, values) in enumerate(series.items()):
        offset = (index - (len(series) - 1) / 2) * width
        values = np.asarray(values, dtype=float)
        yerr = None
        if errors and name in errors:
            low, high = (np.asarray(v, dtype=float) for v in errors[name])
            yerr = np.vstack([np.clip(values - low, 0, None), np.clip(high - values, 0, None)])
        axis.bar(x + offset, values, width, label=name, color=PALETTE[index % len(PALETTE)], yerr=yerr,
                 error_kw={"elinewidth": 0.8, "capsize": 2})  # fmt: skip
    if parity is not None:
        axis.axhline(parity, color="black", linestyle="--", linewidth=0.8, label="uniform")
    axis.set_xticks(x, groups, rotation=45 if len(groups) > 4 else 0, ha="right" if len(groups) > 4 else "center")
    axis.set_ylim(0, ymax if ymax is not None else 1.05)
    axis.set_ylabel(ylabel)
    return _finish(plt, figure, axis, stem, title)


def distribution_figure(stem: Path, result: dict[str, Any], title: str) -> list[Path]:
    """One occupation per group, one bar per label: a fairness module result as a figure."""
    occupations = result["occupations"]
    per = result["per_occupation"]
    series = {label: [per[o]["distribution"][i] for o in occupations] for i, label in enumerate(result["labels"])}
    errors = {
        label: (
            [per[o]["distribution_ci"][0][i] for o in occupations],
            [per[o]["distribution_ci"][1][i] for o in occupations],
        )
        for i, label in enumerate(result["labels"])
    }
    return grouped_bars(stem, occupations, series, errors, title=title, parity=1 / len(result["labels"]))


def lines(
    stem: Path,
    x: Sequence[float],
    series: dict[str, Sequence[float]],
    errors: dict[str, tuple[Sequence[float], Sequence[float]]] | None = None,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
) -> list[Path]:
    """One line per series over a numeric x axis (e.g. bias against guidance scale), with bands."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5.5, 3.2))
    for index, (name, values) in enumerate(series.items()):
        colour = PALETTE[index % len(PALETTE)]
        axis.plot(x, values, marker="o", markersize=3, linewidth=1.2, color=colour, label=name)
        if errors and name in errors:
            low, high = (np.asarray(v, dtype=float) for v in errors[name])
            axis.fill_between(x, low, high, color=colour, alpha=0.15, linewidth=0)
    axis.set_xticks(list(x))
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_ylim(bottom=0)
    return _finish(plt, figure, axis, stem, title)
