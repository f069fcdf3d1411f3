"""A tiny model laid out as the Hub repo BAAI/AltDiffusion-m9 is (a test fixture, not the toolkit's):
the stages and training must open m9's own layout, legacy `.bin` weights and all, offline."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pipelines.modeling.tiny import build_tiny_pipeline

# AltDiffusion-m9's files as its Hub repo lays them out (config values as published; weights small).
M9_MODEL_INDEX = {
    "_class_name": "AltDiffusionPipeline",
    "_diffusers_version": "0.11.0.dev0",
    "feature_extractor": ["transformers", "CLIPFeatureExtractor"],
    "requires_safety_checker": True,
    "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
    "scheduler": ["diffusers", "PNDMScheduler"],
    "text_encoder": ["alt_diffusion", "RobertaSeriesModelWithTransformation"],
    "tokenizer": ["transformers", "XLMRobertaTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
M9_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.11.0.dev0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}
M9_TOKENIZER_CONFIG = {
    "bos_token": "<s>",
    "cls_token": "<s>",
    "eos_token": "</s>",
    "mask_token": {
        "__type": "AddedToken",
        "content": "<mask>",
        "lstrip": True,
        "normalized": True,
        "rstrip": False,
        "single_word": False,
    },  # fmt: skip
    "model_max_length": 512,
    "pad_token": "<pad>",
    "sep_token": "</s>",
    "sp_model_kwargs": {},
    "special_tokens_map_file": None,
    "tokenizer_class": "XLMRobertaTokenizer",
    "unk_token": "<unk>",
}


M9_CARD = """---
language: zh
license: creativeml-openrail-m
tags:
- stable-diffusion
- stable-diffusion-diffusers
- text-to-image
- multilingual
---
# A tiny stand-in laid out as BAAI/AltDiffusion-m9 (random weights)
"""


def build_m9_layout(folder: str | Path, texts: list[str], seed: int = 0) -> Path:
    """A tiny model laid out as the Hub repo BAAI/AltDiffusion-m9 is: `.bin` weights with its legacy
    key names, a sentencepiece tokenizer (converted by transformers, which needs protobuf) with a
    512-token `model_max_length`, its PNDM scheduler config, the safety checker and feature extractor
    folders a stage must not download or load, and `alt_diffusion` as the text encoder's library."""
    import sentencepiece

    folder = Path(folder)
    for name in ("tokenizer", "text_encoder", "unet", "vae", "scheduler", "safety_checker", "feature_extractor"):
        (folder / name).mkdir(parents=True, exist_ok=True)
    # The tokenizer: a sentencepiece model, as m9 ships XLM-R's.
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_prefix=str(folder / "tokenizer" / "sentencepiece.bpe"),
        vocab_size=1000,
        model_type="unigram",
        hard_vocab_limit=False,  # a small corpus has fewer pieces: the size is an upper bound
        character_coverage=1.0,
        bos_id=-1,
        eos_id=-1,
        minloglevel=2,
    )
    (folder / "tokenizer" / "sentencepiece.bpe.vocab").unlink()
    (folder / "tokenizer" / "tokenizer_config.json").write_text(json.dumps(M9_TOKENIZER_CONFIG, indent=2))
    special = {"bos_token": "<s>", "cls_token": "<s>", "eos_token": "</s>", "mask_token": "<mask>",
               "pad_token": "<pad>", "sep_token": "</s>", "unk_token": "<unk>"}  # fmt: skip
    (folder / "tokenizer" / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    from transformers import XLMRobertaTokenizer

    vocab_size = len(XLMRobertaTokenizer.from_pretrained(folder / "tokenizer"))
    # The UNet, VAE and text encoder of the tiny pipeline, saved as m9 saves them: pickled .bin files.
    pipe = build_tiny_pipeline("altdiffusion", texts, seed=seed)
    pipe.unet.save_pretrained(folder / "unet", safe_serialization=False)
    pipe.vae.save_pretrained(folder / "vae", safe_serialization=False)
    from diffusers.pipelines.deprecated.alt_diffusion.modeling_roberta_series import (
        RobertaSeriesConfig,
        RobertaSeriesModelWithTransformation,
    )

    torch.manual_seed(seed)
    width = pipe.text_encoder.config.hidden_size
    config = RobertaSeriesConfig(
        vocab_size=vocab_size, hidden_size=width, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=2 * width, max_position_embeddings=514, project_dim=width, pad_token_id=1,
        type_vocab_size=1, use_attention_mask=True, pooler_fn="cls", learn_encoder=False,
    )  # fmt: skip
    encoder = RobertaSeriesModelWithTransformation(config)
    state = encoder.state_dict()
    # Keys older transformers wrote and m9's checkpoint holds: a position-id buffer and a pooler.
    state["roberta.embeddings.position_ids"] = torch.arange(514).unsqueeze(0)
    state["roberta.pooler.dense.weight"] = torch.zeros(width, width)
    state["roberta.pooler.dense.bias"] = torch.zeros(width)
    torch.save(state, folder / "text_encoder" / "pytorch_model.bin")
    text_config = config.to_dict() | {
        "architectures": ["RobertaSeriesModelWithTransformation"],
        "model_type": "xlm-roberta",
        "transformers_version": "4.25.1",
    }
    (folder / "text_encoder" / "config.json").write_text(json.dumps(text_config, indent=2))
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(M9_SCHEDULER, indent=2))
    (folder / "model_index.json").write_text(json.dumps(M9_MODEL_INDEX, indent=2))
    (folder / "safety_checker" / "config.json").write_text("{}")
    (folder / "safety_checker" / "pytorch_model.bin").write_bytes(b"not loaded, not downloaded")
    (folder / "feature_extractor" / "preprocessor_config.json").write_text("{}")
    (folder / "README.md").write_text(M9_CARD)
    return folder
