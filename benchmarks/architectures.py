"""The real study's models with their real architectures and sizes, randomly initialised.

Throughput and memory do not depend on the weights, so every speed figure can be taken at the real
size without downloading anything: AltDiffusion-m9 (a Stable Diffusion 1.x UNet and VAE at 512 px,
an XLM-R-large RoBERTa-series text encoder with 512-token prompts), FairFace's ResNet-34 and
OpenAI's CLIP ViT-L/14. `scale="smoke"` gives the same code paths at a tiny size for the tests.
"""

from __future__ import annotations

from typing import Any

import torch

from benchmarks.common import count_flops

# AltDiffusion-m9's published configs (unet/, vae/, text_encoder/config.json of BAAI/AltDiffusion-m9).
M9_UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}
M9_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
}
M9_TEXT_ENCODER = {
    "vocab_size": 250002,
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
    "max_position_embeddings": 514,
    "type_vocab_size": 1,
    "pad_token_id": 1,
    "project_dim": 768,
    "layer_norm_eps": 1e-5,
    "use_attention_mask": True,
}
M9_PROMPT_TOKENS = 512  # m9's tokenizer pads every prompt to model_max_length = 512
REAL_RESOLUTION = 512


def m9_pipeline(scale: str = "real", dtype: torch.dtype = torch.float16, device: str = "cuda") -> Any:
    """An AltDiffusion pipeline with m9's architecture and random weights (`smoke`: the tiny one)."""
    import diffusers
    from diffusers.pipelines.deprecated.alt_diffusion import AltDiffusionPipeline
    from diffusers.pipelines.deprecated.alt_diffusion.modeling_roberta_series import (
        RobertaSeriesConfig,
        RobertaSeriesModelWithTransformation,
    )

    from pipelines.modeling.tiny import build_tiny_pipeline, train_tokenizer

    texts = ["a photo of the face of a nurse", "ein Foto des Gesichts einer Pflegekraft", "一张护士的脸的照片"]
    if scale == "smoke":
        return build_tiny_pipeline("altdiffusion", texts).to(device, dtype)
    torch.manual_seed(0)
    tokenizer = train_tokenizer("altdiffusion", texts * 50, vocab_size=200)
    tokenizer.model_max_length = M9_PROMPT_TOKENS
    with torch.device(device):
        unet = diffusers.UNet2DConditionModel(**M9_UNET)
        vae = diffusers.AutoencoderKL(**M9_VAE)
        text_encoder = RobertaSeriesModelWithTransformation(RobertaSeriesConfig(**M9_TEXT_ENCODER))
    scheduler = diffusers.DPMSolverMultistepScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
    )
    pipe = AltDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device, dtype)


def fairface_resnet34(device: str = "cuda", dtype: torch.dtype = torch.float16) -> Any:
    """FairFace's classifier: torchvision's ResNet-34 with an 18-logit head (race 7, gender 2, age 9)."""
    import torchvision

    model = torchvision.models.resnet34(weights=None)
    model.fc = torch.nn.Linear(model.fc.in_features, 18)
    return model.eval().to(device, dtype)


def clip_vit_l14(scale: str = "real", device: str = "cuda", dtype: torch.dtype = torch.float16) -> tuple[Any, Any]:
    """OpenAI's CLIP ViT-L/14 architecture (open_clip `ViT-L-14-quickgelu`), random weights, and its
    tokenizer; `smoke`: the toolkit's tiny open_clip."""
    import open_clip

    if scale == "smoke":
        from pipelines.modeling.tiny import TINY_CLIP_CONFIG

        model = open_clip.CLIP(**TINY_CLIP_CONFIG)
    else:
        model = open_clip.create_model("ViT-L-14-quickgelu", pretrained=None)
    return model.eval().to(device, dtype), open_clip.get_tokenizer("ViT-L-14-quickgelu")


def text_encoder_flops(batch: int, backward: bool) -> int:
    """FLOPs of m9's text encoder on `batch` prompts of 512 tokens (forward, or forward and backward).
    Counted on the CPU with one and two layers at the real width (the model asks a tensor for a
    Python number, which the meta device cannot give) and extended to its 24 layers: every layer
    costs the same."""
    from diffusers.pipelines.deprecated.alt_diffusion.modeling_roberta_series import (
        RobertaSeriesConfig,
        RobertaSeriesModelWithTransformation,
    )

    counts = []
    for layers in (1, 2):
        model = RobertaSeriesModelWithTransformation(
            RobertaSeriesConfig(**{**M9_TEXT_ENCODER, "num_hidden_layers": layers})
        )
        ids = torch.ones(1, M9_PROMPT_TOKENS, dtype=torch.long)

        def call(model: Any = model, ids: torch.Tensor = ids) -> None:
            out = model(ids, attention_mask=ids).projection_state
            if backward:
                out.float().square().mean().backward()

        counts.append(count_flops(call))
    per_layer = counts[1] - counts[0]
    return batch * (counts[0] + per_layer * (M9_TEXT_ENCODER["num_hidden_layers"] - 1))


def real_unit_flops() -> dict[str, int]:
    """FLOPs of each unit of the real study's work at the real size (no weights are made: the meta
    device), the units of the dry run's estimates."""
    import diffusers
    import open_clip
    import torchvision

    with torch.device("meta"):
        unet = diffusers.UNet2DConditionModel(**M9_UNET)
        vae = diffusers.AutoencoderKL(**M9_VAE)
        resnet = torchvision.models.resnet34(weights=None)
        clip = open_clip.create_model("ViT-L-14-quickgelu", pretrained=None, device="meta")
        guided = (torch.randn(2, 4, 64, 64), torch.full((2,), 500), torch.randn(2, M9_PROMPT_TOKENS, 768))
        step = count_flops(lambda: unet(*guided))
        decode = count_flops(lambda: vae.decode(torch.randn(1, 4, 64, 64)))
        train = (torch.randn(16, 4, 32, 32), torch.full((16,), 500), torch.randn(16, M9_PROMPT_TOKENS, 768))
        unet_train = count_flops(lambda: unet(*train).sample.sum().backward())
        encode = count_flops(lambda: vae.encode(torch.randn(16, 3, 256, 256)))
        chip = count_flops(lambda: resnet(torch.randn(1, 3, 224, 224)))
        scored = count_flops(lambda: clip.encode_image(torch.randn(1, 3, 224, 224)))
    return {
        "image": 50 * step + decode + text_encoder_flops(2, backward=False),
        "training_step": unet_train + encode + text_encoder_flops(16, backward=True),
        "classified_image": chip,
        "scored_image": scored,
    }
