"""A planted-bias world: a calibrated experiment with a known answer, small enough for a laptop CPU.

Every image is a 16 px picture of one disc on a plain background; the disc's colour is the figure's
"perceived gender" (orange: female, blue: male), with mild variation of position, size, background
and colour. A gendered prompt always shows its own colour; a gender-neutral prompt shows the
*planted share* of its (occupation, language): each occupation is skewed one way or the other, and
each language multiplies the skew (German more, Chinese less). A model trained on these pictures
through the project's own training script learns the planted bias, the study's stages must measure
it back, and the reference study's debiasing fine-tune must shrink it. It validates the machinery,
not any real model.

- `planted_share`: the share of female figures a neutral prompt of (occupation, language) shows;
- `draw_figures`: the pictures; `read_cue`: the cue read back from a picture (the classifier);
- `build_world_pipeline`: the untrained model: AltDiffusion's classes, an exact identity VAE (the
  pictures are small enough to diffuse in pixel space), a v-prediction noise schedule.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipelines.errors import ConfigError

SIZE = 16  # pixels: small enough for a 2-core CPU to train on in a few minutes
FEMALE_COLOUR = (0.95, 0.55, 0.10)  # orange
MALE_COLOUR = (0.10, 0.45, 0.95)  # blue
# The share of female figures each occupation's neutral prompt shows in English; strongly skewed
# both ways, and one near the middle.
OCCUPATION_SHARES = {
    "CEO": 0.20,
    "nurse": 0.85,
    "software developer": 0.25,
    "hairdresser": 0.80,
    "firefighter": 0.10,
    "teacher": 0.60,
}
# How much each language scales the skew (distance from 0.5): German prompts more stereotyped,
# Chinese ones less, as a multilingual study finds languages differ.
LANGUAGE_FACTORS = {"en": 1.0, "de": 1.3, "zh": 0.6, "ja": 1.15}
SHARE_BOUNDS = (0.05, 0.95)


def planted_share(occupation: str, language: str) -> float:
    """The share of female figures shown for the neutral prompt of `occupation` in `language`."""
    if occupation not in OCCUPATION_SHARES:
        raise ConfigError(f"occupation={occupation!r}: the world plants {', '.join(OCCUPATION_SHARES)}")
    if language not in LANGUAGE_FACTORS:
        raise ConfigError(f"language={language!r}: the world plants {', '.join(LANGUAGE_FACTORS)}")
    share = 0.5 + LANGUAGE_FACTORS[language] * (OCCUPATION_SHARES[occupation] - 0.5)
    return float(np.clip(share, *SHARE_BOUNDS))


def draw_figures(female: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One picture per entry of `female` (bools), as uint8 arrays of shape (n, SIZE, SIZE, 3)."""
    rows, cols = np.mgrid[0:SIZE, 0:SIZE]
    out = np.empty((len(female), SIZE, SIZE, 3), np.float32)
    for index, is_female in enumerate(female):
        background = rng.uniform(0.4, 0.6) + rng.uniform(-0.03, 0.03, 3)
        picture = np.ones((SIZE, SIZE, 3)) * background
        centre_x, centre_y = rng.uniform(0.375 * SIZE, 0.625 * SIZE, 2)
        radius = rng.uniform(0.22 * SIZE, 0.31 * SIZE)
        colour = np.array(FEMALE_COLOUR if is_female else MALE_COLOUR) + rng.normal(0, 0.05, 3)
        picture[(cols - centre_x) ** 2 + (rows - centre_y) ** 2 <= radius**2] = np.clip(colour, 0, 1)
        out[index] = picture
    return np.round(out * 255).astype(np.uint8)


def read_cue(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(female, strength) per picture, (n, H, W, 3) uint8 or floats in [0, 1].

    The cue is the red-minus-blue balance of the saturated pixels: orange is red-heavy, blue is
    blue-heavy, and the grey background has no saturation, so it does not vote. `strength` (the
    saturated mass) is near zero for a picture without a disc.
    """
    pixels = images.astype(np.float32) / (255.0 if images.dtype == np.uint8 else 1.0)
    saturation = pixels.max(-1) - pixels.min(-1)
    weight = np.clip(saturation - 0.3, 0, None)
    strength = weight.sum((1, 2))
    balance = ((pixels[..., 0] - pixels[..., 2]) * weight).sum((1, 2)) / (strength + 1e-6)
    return balance > 0, strength


# The pictures' standard deviation in [-1, 1] is about 0.35: scaled to unit variance, as Stable
# Diffusion's latents are, so that the noise schedule means what it means for the real models.
PIXEL_SCALE = 2.85


def identity_vae(offset: float = 100.0, level: float = 20.0) -> Any:
    """An `AutoencoderKL` whose encoder and decoder are the identity (to ~1e-4), by construction.

    The world's pictures are small enough to diffuse in pixel space, but the study's pipelines and
    training script expect a VAE, so this one of the real class passes pixels through: each channel
    is split into four offset copies (so that GroupNorm's mean and variance are fixed constants),
    normalised, and summed back; the log-variance is so low that sampling adds nothing.
    """
    import diffusers
    import torch

    vae = diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        block_out_channels=(12,),
        layers_per_block=1,
        latent_channels=3,
        norm_num_groups=3,
        sample_size=SIZE,
        use_quant_conv=False,
        use_post_quant_conv=False,
        mid_block_add_attention=False,
        scaling_factor=PIXEL_SCALE,
    )
    signs = [(1, 1), (1, -1), (-1, 1), (-1, -1)]
    with torch.no_grad():
        for parameter in vae.parameters():
            parameter.zero_()
        for module in vae.modules():
            if isinstance(module, torch.nn.GroupNorm):
                module.weight.fill_(1.0)
        for coder in (vae.encoder, vae.decoder):
            # conv_in: channel 4c+j = s*offset + t*x_c; the blocks add zero (their convs are zero).
            for channel in range(3):
                for j, (s, t) in enumerate(signs):
                    coder.conv_in.weight[4 * channel + j, channel, 1, 1] = t
                    coder.conv_in.bias[4 * channel + j] = s * offset
            # conv_norm_out sees (s*offset + t*x)/offset per channel (its group's variance is offset²):
            # scale and shift it to level + x, pass it through SiLU's linear range, and average back.
            for channel in range(3):
                for j, (s, t) in enumerate(signs):
                    coder.conv_norm_out.weight[4 * channel + j] = t * offset
                    coder.conv_norm_out.bias[4 * channel + j] = level - s * t * offset
                    coder.conv_out.weight[channel, 4 * channel + j, 1, 1] = 0.25
                coder.conv_out.bias[channel] = -level
        vae.encoder.conv_out.bias[3:] = -30.0  # the log-variance: the encoder's noise is e^-15
    return vae


def world_unet(width: int = 64) -> Any:
    """The world model's UNet, in pixel space: cross-attention only in the 8 px middle block, and the
    text also added to the time embedding, keep a training step cheap on a CPU."""
    import diffusers

    return diffusers.UNet2DConditionModel(
        sample_size=SIZE,
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        cross_attention_dim=width,
        attention_head_dim=8,
        norm_num_groups=8,
        addition_embed_type="text",
        addition_embed_type_num_heads=2,
    )


def build_world_pipeline(texts: list[str], seed: int = 0, width: int = 64) -> Any:
    """The untrained world model: AltDiffusion's classes, small, v-prediction, an identity VAE.

    v-prediction with a zero-terminal-SNR schedule learns the planted shares; epsilon-prediction
    squeezes every share towards one half in the same time (the issue's prototype measured both).
    """
    import diffusers
    import torch
    from diffusers.pipelines.deprecated.alt_diffusion import AltDiffusionPipeline
    from diffusers.pipelines.deprecated.alt_diffusion.modeling_roberta_series import (
        RobertaSeriesConfig,
        RobertaSeriesModelWithTransformation,
    )

    from pipelines.modeling.tiny import train_tokenizer

    tokenizer = train_tokenizer("altdiffusion", texts)
    tokenizer.model_max_length = 48  # the world's prompts are at most 37 tokens; longer ones are cut
    torch.manual_seed(seed)
    text_encoder = RobertaSeriesModelWithTransformation(
        RobertaSeriesConfig(
            vocab_size=len(tokenizer),
            hidden_size=width,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=2 * width,
            max_position_embeddings=tokenizer.model_max_length + 32,
            project_dim=width,
            pad_token_id=1,
            type_vocab_size=1,
            use_attention_mask=True,
            # No dropout: its masks were a sixth of the world's training step on a 2-core CPU, and a
            # world of a few hundred captions, each with a few hundred pictures, has nothing to
            # overfit that dropout would keep it from (eight draws of each: README). Without masks
            # the training script also encodes each distinct caption of a batch once.
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
    )
    unet = world_unet(width)
    scheduler = diffusers.DPMSolverMultistepScheduler(
        beta_schedule="linear", prediction_type="v_prediction", rescale_betas_zero_snr=True, steps_offset=1
    )
    return AltDiffusionPipeline(
        vae=identity_vae(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
