"""Figures for cards and papers: perceived-attribute shares with intervals and a parity line.

Each figure is written twice: SVG (vector, sharp at any size, for papers) and PNG (for cards and
the Space). Text is sized for a printed column; every occupation is labelled; error bars are the
bootstrap intervals the fairness module computes; the dashed line is the uniform share, where a
fair model's bars would sit. Beyond `MAX_BAR_OCCUPATIONS` occupations (MAGBIG's 151, the reference
grid's 118) bars no longer fit a page, and the shares are a heat map instead, one row an occupation,
its intervals as marks. Files carry no software stamp, so the same data give the same bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

# Bars for more occupations than this drew a figure 250 inches wide (MAGBIG's 151 occupations by 9 age
# groups: a PNG 39,168 px wide, which no card or browser shows, and a minute of the stage's time).
MAX_BAR_OCCUPATIONS = 24
# A PNG of more pixels than this is saved at a lower dpi (never under 100, where 9 pt text is still
# 12 px high): a guard for any figure that grows with its data.
MAX_PNG_PIXELS = 8_000_000
PNG_DPI = 200

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
    figure.savefig(paths[1], dpi=png_dpi(box.width, box.height), metadata={"Software": None}, bbox_inches=box)
    return paths


def png_dpi(width: float, height: float) -> int:
    """The PNG's dots per inch for a figure of this many inches: PNG_DPI, or less, down to 100, where
    it would have more than MAX_PNG_PIXELS."""
    return int(max(100, min(PNG_DPI, (MAX_PNG_PIXELS / (width * height)) ** 0.5)))


def _finish(plt: Any, figure: Any, axis: Any, stem: Path, title: str, legend: bool = True) -> list[Path]:
    """The house style every figure ends with: title, open top and right, legend outside; saved, closed."""
    axis.set_title(title)
    axis.spines[["top", "right"]].set_visible(False)
    if legend:
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
    """One occupation per group, one bar per label: a fairness module result as a figure (a heat map
    beyond MAX_BAR_OCCUPATIONS occupations)."""
    occupations = result["occupations"]
    if len(occupations) > MAX_BAR_OCCUPATIONS:
        return distribution_heat_map(stem, result, title)
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


def beyond_parity(result: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Per occupation (rows, in `occupations` order) and label (columns): whether the share's interval
    lies wholly above, and wholly below, the uniform share."""
    per, parity = result["per_occupation"], 1 / len(result["labels"])
    low = np.array([per[o]["distribution_ci"][0] for o in result["occupations"]], dtype=float)
    high = np.array([per[o]["distribution_ci"][1] for o in result["occupations"]], dtype=float)
    return low > parity, high < parity


def distribution_heat_map(stem: Path, result: dict[str, Any], title: str) -> list[Path]:
    """One row per occupation, one column per label, the share as colour; a white triangle up where the
    share's interval lies wholly above the uniform share, down where wholly below."""
    plt = _pyplot()
    occupations, labels, per = result["occupations"], result["labels"], result["per_occupation"]
    shares = np.array([per[o]["distribution"] for o in occupations], dtype=float)
    height = 0.13 * len(occupations)  # the axes' inches: a row per 6 pt label
    figure, axis = plt.subplots(figsize=(2.0 + 0.45 * len(labels), height + 1.2))
    mesh = axis.pcolormesh(shares, cmap="viridis", vmin=0, vmax=1)
    axis.invert_yaxis()  # the first occupation on top, as in the dataset
    axis.xaxis.tick_top()
    axis.set_xticks(np.arange(len(labels)) + 0.5, labels, rotation=45, ha="left", rotation_mode="anchor")
    axis.set_yticks(np.arange(len(occupations)) + 0.5, occupations, fontsize=6)
    axis.tick_params(length=0)
    for marks, marker in zip(beyond_parity(result), ("^", "v")):
        rows, columns = np.nonzero(marks)
        axis.scatter(columns + 0.5, rows + 0.5, marker=marker, s=10, color="white", edgecolors="black", linewidths=0.4)
    # The colour bar under the axes, a fixed 0.12 inch high and 0.25 inch below whatever the rows' height.
    bar = axis.inset_axes((0.0, -0.37 / height, 1.0, 0.12 / height))
    figure.colorbar(mesh, cax=bar, orientation="horizontal",
                    label="share of images (▲ ▼: 95% interval above / below uniform)")  # fmt: skip
    return _finish(plt, figure, axis, stem, title, legend=False)


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
