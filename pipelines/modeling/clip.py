"""open_clip models for the toolkit: the CLIP score module's own loader (`spaces/clip_score`), so
that the Space, `evaluate.load` and every stage load a CLIP model the same way, with its errors
as one-line ConfigErrors.

The metric module must stand alone (its folder runs as a Space with its own requirements), so the
loader lives there, in a file of its own that imports no `evaluate` (3 s: a recipe's arguments
check a CLIP name before anything runs), and this module reads it from the file; the import graph
of the layer test and the code version of reuse both see the reach (`space_folder("clip_score")`).
"""

from __future__ import annotations

import functools
import importlib.util
from types import ModuleType
from typing import Any

from pipelines.errors import ConfigError
from pipelines.resources import space_folder

LOADER_FILE = space_folder("clip_score") / "open_clip_loader.py"

# The reference study's CLIP: OpenAI's ViT-L/14, which uses QuickGELU (the metric module's constant).
REFERENCE_CLIP = ("ViT-L-14-quickgelu", "openai")


@functools.cache
def loader_module() -> ModuleType:
    """The CLIP score module's loader, imported from its file once per process."""
    spec = importlib.util.spec_from_file_location("t2i_bias_open_clip_loader", LOADER_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def is_open_clip_name(name: str) -> bool:
    """Whether open_clip knows a model name (its registry, or an `hf-hub:` name)."""
    return loader_module().is_open_clip_name(name)


def check_activation(model: str, pretrained: str | None) -> None:
    """Refuses weights trained with one activation (QuickGELU or GELU) in a model built with the other."""
    try:
        loader_module().check_activation(model, pretrained)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def load_open_clip(model: str, pretrained: str | None = None, device: str = "cpu") -> tuple[Any, Any, Any]:
    """(model, image preprocess, tokenizer) for a folder, an open_clip name with a pretrained tag,
    or an `hf-hub:` name."""
    try:
        return loader_module().load_open_clip(model, pretrained, device)
    except ValueError as err:
        raise ConfigError(str(err)) from None
