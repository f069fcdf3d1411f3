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
