"""Loading text-to-image pipelines, in one place: full pipelines or LoRA adapters, any source.

- A model input (`pipelines.artifacts.inputs.ModelInput`: a store repo, a Hub id, a folder) is a
  folder in diffusers' layout, loaded at its pinned revision.
- AltDiffusion is assembled from its components: diffusers 0.42 still ships `AltDiffusionPipeline`,
  but `from_pretrained` cannot import the text encoder class `RobertaSeriesModelWithTransformation`
  that AltDiffusion-m9's `model_index.json` names, under any library name (the class lives in a
  module that exports none of the base classes diffusers checks for). A folder this toolkit saves
  names it through a one-line module in `text_encoder/` that re-exports diffusers' own class, the
  Hub's way of naming a custom component, so stock `DiffusionPipeline.from_pretrained(folder,
  trust_remote_code=True)` opens it (without the flag, diffusers says to pass it). The toolkit's own
  loader never runs that file: it assembles the pipeline from components, which works for
  AltDiffusion-m9 itself too, and so does the snippet of a LoRA on such a base (`usage_snippet`).
- A LoRA model repo (`pytorch_lora_weights.safetensors` and a card naming `base_model`) loads its
  base model and then the adapter with the pipeline's `load_lora_weights`.
- The scheduler is the model's own unless asked for (`dpm++` is the reference study's for its
  training images); fp16 on GPU, fp32 on CPU. The safety checker is loaded only when asked for
  (`safety_checker=True`, the reference's training images): the study measures the model's raw output.
- Weights are never unpickled beyond `weights_only=True`, and remote code is never trusted.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.artifacts.inputs import ModelInput, resolve_model
from pipelines.artifacts.store import Store, card_metadata
from pipelines.errors import ConfigError

if TYPE_CHECKING:
    import torch

SCHEDULERS = {
    "default": (None, {}),  # the scheduler the model ships with
    "dpm++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-ancestral": ("EulerAncestralDiscreteScheduler", {}),
}
# Names of torch dtypes (torch is imported where a model loads: a stage's --help and refusals need none).
DTYPES = {"auto": None, "float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
# Text-encoder LoRA lives beside the UNet's, in peft's own key format: diffusers' load_lora_weights
# would hand it to transformers, which loads adapters only with peft>=0.22 (newer than any release
# here) and has no key conversion for AltDiffusion's RoBERTa-series encoder.
TEXT_ENCODER_LORA_WEIGHTS = "text_encoder_lora.safetensors"
TEXT_ENCODER_LORA_CONFIG = "text_encoder_lora_config.json"
TEXT_ENCODER_LORA_TARGETS = {"clip": ["q_proj", "k_proj", "v_proj", "out_proj"], "roberta": ["query", "key", "value"]}
# Where diffusers keeps AltDiffusion's text encoder class.
ROBERTA_SERIES_MODULE = "diffusers.pipelines.deprecated.alt_diffusion.modeling_roberta_series"
# The text encoder's entry in a saved AltDiffusion `model_index.json`, and the file it names.
TEXT_ENCODER_ENTRY = ["modeling_roberta_series", "RobertaSeriesModelWithTransformation"]
TEXT_ENCODER_MODULE = f"""# AltDiffusion's text encoder is diffusers' own class. diffusers 0.42 has no library name
# to load it by from model_index.json, so this file names it for
# DiffusionPipeline.from_pretrained(..., trust_remote_code=True).
from {ROBERTA_SERIES_MODULE} import RobertaSeriesModelWithTransformation

__all__ = ["RobertaSeriesModelWithTransformation"]
"""


def pick_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def pick_dtype(dtype: str, device: str) -> torch.dtype:
    import torch

    if dtype not in DTYPES:
        raise ConfigError(f"dtype={dtype!r}: allowed {', '.join(DTYPES)}")
    if DTYPES[dtype] is not None:
        return getattr(torch, DTYPES[dtype])
    return torch.float16 if device.startswith("cuda") else torch.float32


_WARNED: set[str] = set()  # the settings warned about in this process


def cpu_computes_bfloat16() -> bool | None:
    """Whether this CPU computes in bfloat16 natively (AVX512 with BF16, or AMX), as oneDNN reports it;
    None where torch no longer has that (private) check."""
    import torch

    native = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return None if native is None else bool(native())


def warn_if_bfloat16_is_emulated(dtype: Any, device: str, setting: str) -> None:
    """Says so, once a process, when bfloat16 is asked for on a CPU that does not compute in it: every
    operand is converted, so it runs several times slower than float32 (on a 2-core AVX2 AMD EPYC:
    generation 7x at bench_generate's smoke size and 18x at full size, the world's training step under
    bf16 autocast 7x to 8x). Where torch cannot tell, nothing is said."""
    import torch

    if dtype != torch.bfloat16 or not device.startswith("cpu") or setting in _WARNED:
        return
    if cpu_computes_bfloat16() is False:
        _WARNED.add(setting)
        print(
            f"warning: {setting} on a CPU without native bfloat16 ({torch.backends.cpu.get_cpu_capability()}): "
            "expect it to run several times slower than float32",
            file=sys.stderr,
        )


def pipeline_problem(folder: Path) -> str | None:
    """What keeps a folder from being a diffusers pipeline or LoRA weights (None: nothing)."""
    if not folder.is_dir():
        return "a diffusers model folder or repo is expected, not a file"
    if not (folder / "model_index.json").is_file() and not (folder / LORA_WEIGHTS).is_file():
        return f"the folder has neither model_index.json nor {LORA_WEIGHTS} (not a diffusers pipeline)"
    return None


def is_lora(folder: Path) -> bool:
    return (folder / LORA_WEIGHTS).is_file() and not (folder / "model_index.json").is_file()


def load_pipeline(
    model: ModelInput,
    store: Store,
    *,
    namespace: str | None = None,
    scheduler: str = "default",
    device: str = "auto",
    dtype: str = "auto",
    safety_checker: bool = False,
) -> Any:
    """The text-to-image pipeline of a resolved model input, on `device`, progress bars off; with its
    own safety checker only when asked (`safety_checker`)."""
    if scheduler not in SCHEDULERS:
        raise ConfigError(f"scheduler={scheduler!r}: allowed {', '.join(SCHEDULERS)}")
    device = pick_device(device)
    folder = model.path
    if folder is None or not folder.is_dir():
        raise ConfigError(f"model={model.given!r}: a diffusers model folder or repo is expected")
    if is_lora(folder):
        base = base_of_lora(folder, model.given)
        pipe = load_pipeline(
            resolve_model(base, store, namespace=namespace, what="base_model", check=pipeline_problem),
            store,
            namespace=namespace,
            scheduler=scheduler,
            device=device,
            dtype=dtype,
            safety_checker=safety_checker,
        )
        pipe.load_lora_weights(str(folder), weight_name=LORA_WEIGHTS)
        if (folder / TEXT_ENCODER_LORA_WEIGHTS).is_file():
            load_text_encoder_lora(pipe.text_encoder, folder)
    else:
        torch_dtype = pick_dtype(dtype, device)
        warn_if_bfloat16_is_emulated(torch_dtype, device, f"dtype={dtype}")
        pipe = assemble_pipeline(folder, torch_dtype, safety_checker)
        if safety_checker and getattr(pipe, "safety_checker", None) is None:
            raise ConfigError(
                f"safety_checker: model {model.given!r} has no safety checker (its repo's safety_checker/ and "
                "feature_extractor/ folders, as BAAI/AltDiffusion-m9 has)"
            )
        set_scheduler(pipe, scheduler)
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def set_scheduler(pipe: Any, scheduler: str) -> None:
    name, overrides = SCHEDULERS[scheduler]
    if name is not None:
        import diffusers

        pipe.scheduler = getattr(diffusers, name).from_config(pipe.scheduler.config, **overrides)


# Semantic guidance as Fair Diffusion uses it (Friedrich et al. 2023; diffusers' SEGA example): the
# warm-up is 10 of 50 steps there, so it is a share of the steps here.
SEGA_SETTINGS = {"edit_guidance_scale": 4.0, "edit_threshold": 0.95, "edit_momentum_scale": 0.3, "edit_mom_beta": 0.6}
SEGA_WARMUP_SHARE = 0.2


def semantic_guidance_pipeline(pipe: Any) -> Any:
    """diffusers' semantic-guidance (SEGA) pipeline on the components of a loaded text-to-image
    pipeline, AltDiffusion's RoBERTa-series text encoder included (it returns its projection first,
    as CLIP's text model returns its hidden states)."""
    import inspect

    from diffusers import SemanticStableDiffusionPipeline

    accepted = inspect.signature(SemanticStableDiffusionPipeline.__init__).parameters
    components = {name: module for name, module in pipe.components.items() if name in accepted}
    sega = SemanticStableDiffusionPipeline(**components, requires_safety_checker=False)
    sega.set_progress_bar_config(disable=True)
    return sega


def sega_arguments(editing_prompts: tuple[str, ...], reverse: tuple[bool, ...], steps: int) -> dict[str, Any]:
    """The keyword arguments of a SEGA call with Fair Diffusion's settings for each edit."""
    edits = len(editing_prompts)
    return {
        "editing_prompt": list(editing_prompts),
        "reverse_editing_direction": list(reverse),
        "edit_warmup_steps": [round(SEGA_WARMUP_SHARE * steps)] * edits,
        "edit_guidance_scale": [SEGA_SETTINGS["edit_guidance_scale"]] * edits,
        "edit_threshold": [SEGA_SETTINGS["edit_threshold"]] * edits,
        "edit_momentum_scale": SEGA_SETTINGS["edit_momentum_scale"],
        "edit_mom_beta": SEGA_SETTINGS["edit_mom_beta"],
    }


def base_of_lora(folder: Path, given: str) -> str:
    """The base model a LoRA repo's card names, at its recorded revision."""
    card = card_metadata(folder)
    base = card.get("base_model")
    if not base:
        raise ConfigError(f"model={given!r}: a LoRA repo needs 'base_model' in its card")
    revision = card.get("base_model_revision")
    return f"{base}@{revision}" if revision and "@" not in base else base


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


def model_index(folder: Path) -> dict[str, Any]:
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        raise ConfigError(f"model folder {folder.name!r} has neither model_index.json nor {LORA_WEIGHTS}")
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        index = None
    if not isinstance(index, dict):
        raise ConfigError(f"model folder {folder.name!r}: its model_index.json is not a JSON object (damaged?)")
    return index


def is_altdiffusion(folder: Path) -> bool:
    return model_index(folder).get("_class_name") == "AltDiffusionPipeline"


def assemble_pipeline(folder: Path, torch_dtype: torch.dtype, safety_checker: bool = False) -> Any:
    """The pipeline saved in `folder`; AltDiffusion built from its components. Its safety checker
    only with `safety_checker` (and only where the folder has one)."""
    index = model_index(folder)
    unchecked = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    if index.get("_class_name") != "AltDiffusionPipeline":
        from diffusers import DiffusionPipeline

        try:
            return DiffusionPipeline.from_pretrained(
                folder, dtype=torch_dtype, **({} if safety_checker else unchecked)
            )
        except (OSError, ValueError) as err:
            raise ConfigError(f"model folder {folder.name!r} does not load: {str(err).splitlines()[0]}") from None
    import diffusers
    from diffusers.pipelines.deprecated.alt_diffusion import AltDiffusionPipeline
    from diffusers.pipelines.deprecated.alt_diffusion.modeling_roberta_series import (
        RobertaSeriesModelWithTransformation,
    )
    from transformers import XLMRobertaTokenizer

    # The bias study needs the model's raw output, so the safety checker (which blacks out images) is off
    # unless asked for (the reference made its training images with it on).
    checked = unchecked
    if safety_checker and (folder / "safety_checker").is_dir() and (folder / "feature_extractor").is_dir():
        from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
        from transformers import CLIPImageProcessor

        checked = {
            "safety_checker": StableDiffusionSafetyChecker.from_pretrained(
                folder, subfolder="safety_checker", dtype=torch_dtype
            ),
            "feature_extractor": CLIPImageProcessor.from_pretrained(folder, subfolder="feature_extractor"),
            "requires_safety_checker": True,
        }
    try:
        return AltDiffusionPipeline(
            vae=diffusers.AutoencoderKL.from_pretrained(folder, subfolder="vae", dtype=torch_dtype),
            text_encoder=RobertaSeriesModelWithTransformation.from_pretrained(
                folder, subfolder="text_encoder", dtype=torch_dtype
            ),
            tokenizer=XLMRobertaTokenizer.from_pretrained(folder, subfolder="tokenizer"),
            unet=diffusers.UNet2DConditionModel.from_pretrained(folder, subfolder="unet", dtype=torch_dtype),
            scheduler=getattr(diffusers, index["scheduler"][1]).from_pretrained(folder, subfolder="scheduler"),
            **checked,
        )
    except (OSError, ValueError) as err:
        raise ConfigError(f"model folder {folder.name!r} does not load: {str(err).splitlines()[0]}") from None


def save_pipeline(pipe: Any, folder: Path, source: Path | None = None) -> None:
    """Saves a full pipeline so that stock diffusers opens it (AltDiffusion: see the module doc).

    `source`, the folder it was loaded from, lends its tokenizer's sentencepiece model, which a
    converted (fast) tokenizer does not write.
    """
    pipe.save_pretrained(folder, safe_serialization=True)
    for config in folder.glob("*/config.json"):
        # diffusers writes where a component was loaded from (`_name_or_path`, an absolute path on
        # this machine): published, it would name a folder elsewhere and make the revision id depend
        # on where the store lives.
        values = json.loads(config.read_text())
        if values.pop("_name_or_path", None) is not None:
            config.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")
    index = json.loads((folder / "model_index.json").read_text())
    if index.get("_class_name") == "AltDiffusionPipeline":
        index["text_encoder"] = TEXT_ENCODER_ENTRY  # no library name diffusers 0.42 can import it by (module doc)
        (folder / "text_encoder" / f"{TEXT_ENCODER_ENTRY[0]}.py").write_text(TEXT_ENCODER_MODULE)
        for name in ("safety_checker", "feature_extractor", "image_encoder"):
            index[name] = [None, None]
        (folder / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    if source is not None:
        for model_file in (source / "tokenizer").glob("*.model"):
            shutil.copyfile(model_file, folder / "tokenizer" / model_file.name)


def usage_snippet(
    repo_id: str,
    folder: Path,
    lora_base: str | None = None,
    base_in_store: bool = True,
    text_encoder_lora: bool = False,
) -> str:
    """Stock diffusers code that opens a model of the store (a Hugging Face cache folder).

    AltDiffusion is assembled from its components, as `assemble_pipeline` does, since diffusers 0.42
    cannot load AltDiffusion-m9's own `model_index.json`. On the Hub, leave out `cache_dir` and
    `local_files_only`. `folder` is the model's (a LoRA's: its base's) saved pipeline. A LoRA with a
    text-encoder adapter (`text_encoder_lora`) loads it with peft: diffusers' `load_lora_weights`
    knows CLIP's text encoder only, not AltDiffusion's RoBERTa.
    """
    store = ', cache_dir="./hub", local_files_only=True'
    base, base_store = (lora_base, store if base_in_store else "") if lora_base else (repo_id, store)
    lines = ["import torch"]
    if is_altdiffusion(folder) and model_index(folder).get("text_encoder") == TEXT_ENCODER_ENTRY:
        lines += [
            "from diffusers import DiffusionPipeline",
            "",
            "# trust_remote_code: text_encoder/modeling_roberta_series.py re-exports diffusers' own text encoder",
            f'pipe = DiffusionPipeline.from_pretrained("{base}", trust_remote_code=True{base_store})',
        ]
    elif is_altdiffusion(folder):
        scheduler = model_index(folder)["scheduler"][1]
        lines += [
            f"from diffusers import AltDiffusionPipeline, AutoencoderKL, {scheduler}, UNet2DConditionModel",
            f"from {ROBERTA_SERIES_MODULE} import RobertaSeriesModelWithTransformation",
            "from transformers import XLMRobertaTokenizer",
            "",
            f'base = "{base}"',
            "pipe = AltDiffusionPipeline(",
            f'    vae=AutoencoderKL.from_pretrained(base, subfolder="vae"{base_store}),',
            "    text_encoder=RobertaSeriesModelWithTransformation.from_pretrained(",
            f'        base, subfolder="text_encoder"{base_store}',
            "    ),",
            f'    tokenizer=XLMRobertaTokenizer.from_pretrained(base, subfolder="tokenizer"{base_store}),',
            f'    unet=UNet2DConditionModel.from_pretrained(base, subfolder="unet"{base_store}),',
            f'    scheduler={scheduler}.from_pretrained(base, subfolder="scheduler"{base_store}),',
            "    safety_checker=None,",
            "    feature_extractor=None,",
            "    requires_safety_checker=False,",
            ")",
        ]
    else:
        lines += [
            "from diffusers import DiffusionPipeline",
            "",
            f'pipe = DiffusionPipeline.from_pretrained("{base}"{base_store})',
        ]
    if lora_base is not None:
        lines.append(f'pipe.load_lora_weights("{repo_id}", weight_name="{LORA_WEIGHTS}"{store})')
    if lora_base is not None and text_encoder_lora:
        lines += [
            "",
            "# The text encoder's adapter, with peft",
            "import json",
            "from huggingface_hub import hf_hub_download",
            "from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict",
            "from safetensors.torch import load_file",
            "",
            f'config = hf_hub_download("{repo_id}", "{TEXT_ENCODER_LORA_CONFIG}"{store})',
            "inject_adapter_in_model(LoraConfig(**json.loads(open(config).read())), pipe.text_encoder)",
            f'weights = hf_hub_download("{repo_id}", "{TEXT_ENCODER_LORA_WEIGHTS}"{store})',
            "set_peft_model_state_dict(pipe.text_encoder, load_file(weights))",
        ]
    lines.append('image = pipe("a photo of the face of a doctor", generator=torch.manual_seed(0)).images[0]')
    return "\n".join(lines)
