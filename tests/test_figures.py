"""The house figures: the same data give the same bytes, and the saved box holds the whole figure
(the legend sits outside the axes)."""

from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pytest
from PIL import Image

from pipelines.reporting import figures

matplotlib.use("Agg")

RESULT = {
    "occupations": ["CEO", "nurse", "software developer", "hairdresser", "firefighter", "teacher"],
    "labels": ["Female", "Male"],
    "per_occupation": {
        occupation: {"distribution": [share, 1 - share], "distribution_ci": [[share - 0.1, 0.9 - share],
                                                                             [share + 0.1, 1.1 - share]]}
        for occupation, share in zip(["CEO", "nurse", "software developer", "hairdresser", "firefighter", "teacher"],
                                     [0.2, 0.85, 0.25, 0.8, 0.1, 0.6])
    },
}  # fmt: skip


def test_the_same_data_give_the_same_bytes(tmp_path: Path) -> None:
    first = figures.distribution_figure(tmp_path / "a" / "gender", RESULT, "en: perceived gender")
    second = figures.distribution_figure(tmp_path / "b" / "gender", RESULT, "en: perceived gender")
    assert [p.suffix for p in first] == [".svg", ".png"]
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes()


def test_the_saved_box_is_the_tight_box_legend_and_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (_, png) = figures.distribution_figure(tmp_path / "ours" / "gender", RESULT, "en: perceived gender")
    # The same figure saved the slow way, with bbox_inches="tight" laid out for the file itself.
    saved = matplotlib.figure.Figure.savefig

    def tight(self: Any, path: Path, **kwargs: Any) -> Any:
        return saved(self, Path(str(path).replace("ours", "tight")), **{**kwargs, "bbox_inches": "tight"})

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", tight)
    (tmp_path / "tight").mkdir()
    figures.distribution_figure(tmp_path / "ours" / "gender", RESULT, "en: perceived gender")
    ours, reference = Image.open(png), Image.open(tmp_path / "tight" / "gender.png")
    # At most a few pixels of margin more (text measured at the screen's dpi), never less.
    assert reference.width <= ours.width <= 1.03 * reference.width
    assert reference.height <= ours.height <= 1.03 * reference.height
    # The legend's right edge is inside the file: the rightmost non-white column is not the last.
    pixels = np.asarray(ours.convert("L"))
    inked = np.flatnonzero((pixels < 250).any(axis=0))
    assert inked.max() < ours.width - 5 and ours.width > 1.3 * ours.height


def many_occupations(count: int, labels: list[str]) -> dict[str, Any]:
    """A result of `count` occupations whose first is all `labels[0]` (its interval wholly above uniform)
    and the others uniform, with intervals that hold the uniform share."""
    uniform = 1 / len(labels)
    per = {
        f"occupation {i}": {
            "distribution": [1.0, *[0.0] * (len(labels) - 1)] if i == 0 else [uniform] * len(labels),
            "distribution_ci": [[0.9, *[0.0] * (len(labels) - 1)], [1.0, *[0.05] * (len(labels) - 1)]]
            if i == 0
            else [[uniform - 0.1] * len(labels), [uniform + 0.1] * len(labels)],
        }
        for i in range(count)
    }
    return {"occupations": list(per), "labels": labels, "per_occupation": per}


AGES = ["0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "70+"]


@pytest.mark.parametrize("labels", [["Female", "Male"], AGES], ids=["gender", "age"])
def test_many_occupations_are_a_heat_map_a_page_wide_not_bars_a_building_wide(tmp_path: Path, labels: list) -> None:
    # Bars up to MAX_BAR_OCCUPATIONS: a figure wider than tall, growing with the occupations.
    most = many_occupations(figures.MAX_BAR_OCCUPATIONS, labels)
    bars = Image.open(figures.distribution_figure(tmp_path / "bars", most, "t")[1])
    assert bars.width > 2 * bars.height
    # MAGBIG's 151 occupations drew bars 39,168 px wide at 9 labels; as a heat map a row per occupation.
    (svg, png) = figures.distribution_figure(tmp_path / "heat", many_occupations(151, labels), "magbig: perceived age")
    heat = Image.open(png)
    assert heat.height > 2.5 * heat.width and heat.width < 1500 and 2500 < heat.height < 4500
    assert heat.width * heat.height <= figures.MAX_PNG_PIXELS and svg.stat().st_size < 2_000_000
    # The first occupation's first label is the only full share: viridis' yellow in the top rows only.
    pixels = np.asarray(heat.convert("RGB")).astype(int)
    yellow = (pixels[..., 0] > 200) & (pixels[..., 1] > 200) & (pixels[..., 2] < 80)
    rows = np.flatnonzero(yellow.sum(axis=1) > 5)
    colour_bar = rows > 0.9 * heat.height  # the colour bar's own yellow end, under the rows
    assert 0 < rows[~colour_bar].min() < rows[~colour_bar].max() < 0.15 * heat.height


def test_interval_marks_need_the_whole_interval_beyond_uniform() -> None:
    above, below = figures.beyond_parity(RESULT)
    # Shares 0.2, 0.85, 0.25, 0.8, 0.1, 0.6 of Female, each +- 0.1: teacher's interval starts at 0.5.
    assert above[:, 0].tolist() == [False, True, False, True, False, False]
    assert below[:, 0].tolist() == [True, False, True, False, True, False]
    assert (above[:, 1] == below[:, 0]).all() and (below[:, 1] == above[:, 0]).all()


def test_a_png_keeps_its_dpi_until_it_would_pass_the_pixel_limit() -> None:
    assert figures.png_dpi(6.0, 3.2) == figures.PNG_DPI
    assert figures.png_dpi(20.0, 30.0) == int((figures.MAX_PNG_PIXELS / 600) ** 0.5) == 115
    assert figures.png_dpi(250.0, 3.2) == 100  # never under 100: text stays legible
