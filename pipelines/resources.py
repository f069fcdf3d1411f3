"""The files the toolkit reads that are not its own modules: the card templates (`hub_cards/`) and
the metric modules and Space (`spaces/<name>/`).

They ship as packages of their own, `t2i_bias_cards` and `t2i_bias_spaces.<name>`: pyproject's
`package-dir` maps them onto the top-level folders, which keep the names the Hub knows. `spaces`
itself is not a package name to install: Hugging Face's ZeroGPU package is called `spaces`. Read
through `importlib.resources`, they are found in an editable checkout and in an installed wheel alike
(a `PROJECT_ROOT / "hub_cards"` path exists only in a checkout).

`harness.code_version` counts a call of `space_folder` or `card_template` as a use of those files,
for reuse and for the layer test.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

SPACES = ("clip_score", "compare_languages", "fairness_metrics")


def space_folder(name: str) -> Path:
    """The folder of a metric module or Space, as `evaluate.load` and `publish_space` read it.

    Example:
        >>> space_folder("fairness_metrics").joinpath("fairness_metrics.py").is_file()
        True
    """
    if name not in SPACES:
        raise ValueError(f"space {name!r}: one of {', '.join(SPACES)}")
    # Installed as files on disk (editable or wheel), so the Traversable is a real folder.
    return Path(str(files(f"t2i_bias_spaces.{name}")))


def cards_folder() -> Path:
    return Path(str(files("t2i_bias_cards")))


def card_template(name: str) -> str:
    """A card template's text (`dataset_card.md`, `model_card.md`, `lineage.md`)."""
    return files("t2i_bias_cards").joinpath(name).read_text(encoding="utf-8")


def reached(function: str, argument: str | None) -> Path | None:
    """The file or folder a call `function(argument)` of this module reads (`argument` None: not a
    literal, so the whole folder), or None for another function."""
    if function == "space_folder":
        return space_folder(argument) if argument in SPACES else space_folder(SPACES[0]).parent
    if function == "card_template":
        return cards_folder() / argument if argument else cards_folder()
    return None
