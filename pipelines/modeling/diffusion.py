"""Loading text-to-image models, in one place: store repos, Hub ids and paths, full or LoRA.

- Any diffusers text-to-image pipeline loads by repo id (local store or Hub) or path, at a revision.
- AltDiffusion is assembled from its components: diffusers 0.42 still ships `AltDiffusionPipeline`,
  but its `from_pretrained` cannot load the text encoder class `RobertaSeriesModelWithTransformation`.
- A LoRA model repo (`pytorch_lora_weights.safetensors` and a card naming `base_model`) loads its
  base model and then the adapter with the pipeline's `load_lora_weights`.
- Scheduler DPM-Solver++ multistep by default (as the reference study); fp16 on GPU, fp32 on CPU.
- Weights are never unpickled beyond `weights_only=True`, and remote code is never trusted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from pipelines.artifacts.store import HubStore, Store, parse_ref
from pipelines.errors import ConfigError, StoreError

SCHEDULERS = {
    "dpm++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-ancestral": ("EulerAncestralDiscreteScheduler", {}),
    "default": (None, {}),  # the scheduler the model ships with
}
DTYPES = {"auto": None, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
# Text-encoder LoRA lives beside the UNet's, in peft's own key format: diffusers' load_lora_weights
# would hand it to transformers, which loads adapters only with peft>=0.22 (newer than any release
# here) and has no key conversion for AltDiffusion's RoBERTa-series encoder.
TEXT_ENCODER_LORA_WEIGHTS = "text_encoder_lora.safetensors"
TEXT_ENCODER_LORA_CONFIG = "text_encoder_lora_config.json"
TEXT_ENCODER_LORA_TARGETS = {"clip": ["q_proj", "k_proj", "v_proj", "out_proj"], "roberta": ["query", "key", "value"]}


def pick_device(device: str = "auto") -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def pick_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise ConfigError(f"dtype={dtype!r}: allowed {', '.join(DTYPES)}")
    if DTYPES[dtype] is not None:
        return DTYPES[dtype]
    return torch.float16 if device.startswith("cuda") else torch.float32


def model_folder(spec: str, store: Store, namespace: str | None = None) -> tuple[Path, str, str]:
    """A local folder for a model: a path, a repo of the store, or a Hub id; with its id and revision."""
    path = Path(spec)
    if path.is_dir():
        return path, str(path), "local"
    ref = parse_ref(spec, namespace=namespace)
    if store.exists(ref.repo_id, "model"):
        revision = store.revision_of(ref, "model")
        return store.resolve(f"{ref.repo_id}@{revision}", "model"), ref.repo_id, revision
    if isinstance(store, HubStore):
        raise StoreError(f"unknown model repo {ref.repo_id!r} on the Hub")
    # Not in the local store: a Hub id such as BAAI/AltDiffusion-m9 (needs the network, or the HF cache).
    hub = HubStore()
    try:
        folder = hub.resolve(ref, "model")
    except Exception as err:  # offline, no cache: say what was looked for, in one line
        raise StoreError(
            f"model {spec!r} is neither a folder, nor in the local store, nor downloadable from the Hub "
            f"({type(err).__name__})"
        ) from None
    return folder, ref.repo_id, folder.name


def model_card_data(folder: Path) -> dict[str, Any]:
    from huggingface_hub import ModelCard

    card = folder / "README.md"
    return ModelCard.load(card).data.to_dict() if card.is_file() else {}


def load_pipeline(
    spec: str,
    store: Store,
    *,
    namespace: str | None = None,
    scheduler: str = "dpm++",
    device: str = "auto",
    dtype: str = "auto",
) -> tuple[Any, dict[str, str]]:
    """Loads a text-to-image pipeline; returns it with `{"model": id, "model_revision": rev}`."""
    if scheduler not in SCHEDULERS:
        raise ConfigError(f"scheduler={scheduler!r}: allowed {', '.join(SCHEDULERS)}")
    device = pick_device(device)
    torch_dtype = pick_dtype(dtype, device)
    folder, model_id, revision = model_folder(spec, store, namespace)
    lora = (folder / LORA_WEIGHTS).is_file() and not (folder / "model_index.json").is_file()
    if lora:
        card = model_card_data(folder)
        base = card.get("base_model")
        if not base:
            raise ConfigError(f"model {spec!r}: a LoRA repo needs 'base_model' in its card")
        if card.get("base_model_revision") and not Path(base).is_dir():
            base = f"{base}@{card['base_model_revision']}"
        pipe, _ = load_pipeline(base, store, namespace=namespace, scheduler=scheduler, device=device, dtype=dtype)
        pipe.load_lora_weights(str(folder), weight_name=LORA_WEIGHTS)
        if (folder / TEXT_ENCODER_LORA_WEIGHTS).is_file():
            load_text_encoder_lora(pipe.text_encoder, folder)
    else:
        pipe = assemble_pipeline(folder, torch_dtype)
        if SCHEDULERS[scheduler][0] is not None:
            import diffusers

            name, overrides = SCHEDULERS[scheduler]
            pipe.scheduler = getattr(diffusers, name).from_config(pipe.scheduler.config, **overrides)
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe, {"model": model_id, "model_revision": revision}


def add_text_encoder_lora(text_encoder: Any, rank: int, alpha: int | None = None) -> dict[str, Any]:
    """Injects peft LoRA layers into a text encoder of either family; returns the LoRA config."""
    from peft import LoraConfig, inject_adapter_in_model

    family = "roberta" if "Roberta" in type(text_encoder).__name__ else "clip"
    config = {"r": rank, "lora_alpha": alpha or rank, "target_modules": TEXT_ENCODER_LORA_TARGETS[family]}
    inject_adapter_in_model(LoraConfig(init_lora_weights="gaussian", **config), text_encoder)
    return config


def save_text_encoder_lora(text_encoder: Any, config: dict[str, Any], folder: Path) -> None:
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    state = {k: v.detach().float().contiguous() for k, v in get_peft_model_state_dict(text_encoder).items()}
    save_file(state, str(folder / TEXT_ENCODER_LORA_WEIGHTS))
    (folder / TEXT_ENCODER_LORA_CONFIG).write_text(json.dumps(config, indent=2))


def load_text_encoder_lora(text_encoder: Any, folder: Path) -> None:
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    config = json.loads((folder / TEXT_ENCODER_LORA_CONFIG).read_text())
    add_text_encoder_lora(text_encoder, config["r"], config["lora_alpha"])
    result = set_peft_model_state_dict(text_encoder, load_file(str(folder / TEXT_ENCODER_LORA_WEIGHTS)))
    if getattr(result, "unexpected_keys", None):
        raise ConfigError(f"{folder}: text-encoder LoRA keys do not fit the model ({result.unexpected_keys[:3]})")
    text_encoder.to(next(text_encoder.parameters()).dtype)


def assemble_pipeline(folder: Path, torch_dtype: torch.dtype) -> Any:
    """The pipeline saved in `folder`; AltDiffusion built from its components."""
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        raise ConfigError(f"model folder {folder} has neither model_index.json nor {LORA_WEIGHTS}")
    index = json.loads(index_file.read_text())
    if index.get("_class_name") != "AltDiffusionPipeline":
        from diffusers import DiffusionPipeline

        return DiffusionPipeline.from_pretrained(
            folder, dtype=torch_dtype, safety_checker=None, requires_safety_checker=False
        )
    import diffusers
    from diffusers.pipelines.deprecated.alt_diffusion import AltDiffusionPipeline
    from diffusers.pipelines.deprecated.alt_diffusion.modeling_roberta_series import (
        RobertaSeriesModelWithTransformation,
    )
    from transformers import XLMRobertaTokenizer

    # The bias study needs the model's raw output, so the safety checker (which blacks out images) is off.
    scheduler_class = getattr(diffusers, index["scheduler"][1])
    return AltDiffusionPipeline(
        vae=diffusers.AutoencoderKL.from_pretrained(folder, subfolder="vae", dtype=torch_dtype),
        text_encoder=RobertaSeriesModelWithTransformation.from_pretrained(
            folder, subfolder="text_encoder", dtype=torch_dtype
        ),
        tokenizer=XLMRobertaTokenizer.from_pretrained(folder, subfolder="tokenizer"),
        unet=diffusers.UNet2DConditionModel.from_pretrained(folder, subfolder="unet", dtype=torch_dtype),
        scheduler=scheduler_class.from_pretrained(folder, subfolder="scheduler"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


# ---------------------------------------------------------------------------------------------
# Tiny, randomly initialised models of the real classes, for tests and the offline study.
# ---------------------------------------------------------------------------------------------

TINY_KINDS = ("altdiffusion", "stable-diffusion")


def train_tokenizer(kind: str, texts: list[str], vocab_size: int = 4000) -> Any:
    """A small tokenizer of the real model's class, trained on the given prompts.

    `altdiffusion`: an XLM-R (SentencePiece unigram) tokenizer; `stable-diffusion`: a CLIP BPE one.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    if kind == "altdiffusion":
        from transformers import XLMRobertaTokenizer

        tokenizer = Tokenizer(models.Unigram())
        tokenizer.normalizer = normalizers.NFKC()
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
        special = ["<s>", "<pad>", "</s>", "<unk>"]
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=special, unk_token="<unk>")
        tokenizer.train_from_iterator(texts, trainer)
        vocab = [tuple(piece) for piece in json.loads(tokenizer.to_str())["model"]["vocab"]]
        return XLMRobertaTokenizer(vocab=[*vocab, ("<mask>", 0.0)], model_max_length=77)
    from transformers import CLIPTokenizer

    tokenizer = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.decoder = decoders.BPEDecoder(suffix="</w>")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|startoftext|>", "<|endoftext|>"], end_of_word_suffix="</w>"
    )
    tokenizer.train_from_iterator(texts, trainer)
    model = json.loads(tokenizer.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return CLIPTokenizer(vocab=model["vocab"], merges=merges, model_max_length=77)


def build_tiny_pipeline(kind: str, texts: list[str], seed: int = 0, resolution: int = 64) -> Any:
    """A randomly initialised text-to-image pipeline of the real classes, small enough for a CPU."""
    import diffusers

    if kind not in TINY_KINDS:
        raise ConfigError(f"kind={kind!r}: allowed {', '.join(TINY_KINDS)}")
    tokenizer = train_tokenizer(kind, texts)
    torch.manual_seed(seed)
    width = 32
    unet = diffusers.UNet2DConditionModel(
        sample_size=resolution // 2,
        in_channels=4,
        out_channels=4,
        block_out_channels=(width, 2 * width),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=width,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    vae = diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(width, 2 * width),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=resolution,
    )
    scheduler = diffusers.PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True, steps_offset=1
    )
    # What both families share; the safety checker is off, as in every pipeline the study loads.
    shared = {
        "vae": vae,
        "tokenizer": tokenizer,
        "unet": unet,
        "scheduler": scheduler,
        "safety_checker": None,
        "feature_extractor": None,
        "requires_safety_checker": False,
    }
    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": width,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 2 * width,
    }
    if kind == "altdiffusion":
        from diffusers.pipelines.deprecated.alt_diffusion import AltDiffusionPipeline
        from diffusers.pipelines.deprecated.alt_diffusion.modeling_roberta_series import (
            RobertaSeriesConfig,
            RobertaSeriesModelWithTransformation,
        )

        config = RobertaSeriesConfig(
            **text_config, max_position_embeddings=80, project_dim=width, pad_token_id=1, type_vocab_size=1
        )
        return AltDiffusionPipeline(text_encoder=RobertaSeriesModelWithTransformation(config), **shared)
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        **text_config,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return diffusers.StableDiffusionPipeline(text_encoder=CLIPTextModel(config), **shared)
