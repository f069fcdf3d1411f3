"""open_clip models: real ones by name and pretrained tag, or a folder (`open_clip_config.json` and
weights, the layout of an open_clip Hub repo), and a tiny random one for offline runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from pipelines.errors import ConfigError

TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def load_open_clip(model: str, pretrained: str | None = None, device: str = "cpu") -> tuple[Any, Any, Any]:
    """(model, image preprocess, tokenizer) for a folder, or an open_clip name with a pretrained tag.

    The CLIP-score evaluate module (spaces/clip_score) keeps a copy: a Space must run on its own.
    """
    import open_clip

    name = f"local-dir:{Path(model).resolve()}" if Path(model).is_dir() else model
    try:
        clip, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained, device=device)
        tokenizer = open_clip.get_tokenizer(name)
    except (RuntimeError, OSError, ValueError) as err:
        raise ConfigError(
            f"open_clip model {model!r} (pretrained {pretrained!r}) could not be loaded: {err}"
        ) from None
    return clip.eval(), preprocess, tokenizer


def build_tiny_open_clip(folder: str | Path, seed: int = 0) -> Path:
    """A randomly initialised small open_clip CLIP, saved as open_clip saves one to the Hub."""
    import open_clip
    from safetensors.torch import save_model

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY_CLIP_CONFIG)
    config = {
        "model_cfg": TINY_CLIP_CONFIG,
        "preprocess_cfg": {"mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD)},
    }
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    save_model(model, str(folder / "open_clip_model.safetensors"))
    return folder
