"""open_clip models by name and pretrained tag, by `hf-hub:` name, or from a folder in open_clip's
Hub layout: the CLIP score module's loader (`from .open_clip_loader import ...`, which
`evaluate.load` copies beside it), and the toolkit's (`pipelines.modeling.clip` reads this file), so
there is one loader. It imports no `evaluate`, so the toolkit can check a model's name without it.

OpenAI's CLIP weights were trained with QuickGELU. open_clip 3 builds `ViT-L-14` with plain GELU
and loads `openai` weights into it with only a warning, so the embeddings drift from the model the
reference study used; the matching name is `ViT-L-14-quickgelu`. A known mismatch of this kind is
refused before any weights load.
"""

from pathlib import Path


def is_open_clip_name(name: str) -> bool:
    """Whether open_clip knows a model name (its registry, or an `hf-hub:` name)."""
    import open_clip

    return name.startswith("hf-hub:") or name in open_clip.list_models()


def check_activation(model: str, pretrained: str | None) -> None:
    """Refuses (ValueError) weights trained with one activation (QuickGELU or GELU) in a model built
    with the other."""
    if pretrained is None or Path(model).is_dir() or model.startswith("hf-hub:"):
        return
    import open_clip
    from open_clip import pretrained as registry

    config = open_clip.get_model_config(model)
    # Weights are registered under the name of the model they were trained in: look there too.
    weights = registry.get_pretrained_cfg(model, pretrained) or registry.get_pretrained_cfg(
        model.removesuffix("-quickgelu"), pretrained
    )
    if not config or not weights:
        return
    trained, built = bool(weights.get("quick_gelu", False)), bool(config.get("quick_gelu", False))
    if trained != built:
        wanted = [
            name
            for name in (f"{model}-quickgelu", model.removesuffix("-quickgelu"))
            if name != model and pretrained in registry.list_pretrained_tags_by_model(name)
        ]
        raise ValueError(
            f"open_clip model {model!r} with pretrained {pretrained!r}: the weights were trained with "
            f"{'QuickGELU' if trained else 'GELU'} but {model!r} runs {'QuickGELU' if built else 'GELU'}"
            + (f"; use {wanted[0]!r}" if wanted else "")
        )


def load_open_clip(model: str, pretrained: str | None = None, device: str = "cpu") -> tuple:
    """(model, image preprocess, tokenizer) for a folder, an open_clip name with a pretrained tag,
    or an `hf-hub:` name; a model that cannot be loaded is a one-line ValueError."""
    import open_clip

    if Path(model).is_dir():
        pretrained = None  # a folder (a store repo, an hf-hub download) holds its own weights
    check_activation(model, pretrained)
    name = f"local-dir:{Path(model).resolve()}" if Path(model).is_dir() else model
    try:
        clip, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained, device=device)
        tokenizer = open_clip.get_tokenizer(name)
    except (RuntimeError, OSError, ValueError) as err:
        raise ValueError(
            f"open_clip model {model!r} (pretrained {pretrained!r}) could not be loaded: {str(err).splitlines()[0]}"
        ) from None
    return clip.eval(), preprocess, tokenizer
