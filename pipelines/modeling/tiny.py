"""Tiny, randomly initialised models of the real classes, for tests and the offline study.

Nothing downloads: every stage runs on these through the same loading code as the real models.

- `build_tiny_pipeline`: AltDiffusion's classes (RoBERTa-series text encoder with an XLM-R
  tokenizer) or Stable Diffusion's (CLIP), the tokenizer trained on the study's prompts;
- `build_tiny_fairface`: FairFace's ResNet-34 with its 18-logit head (a state dict);
- `build_tiny_open_clip`: a small open_clip CLIP in open_clip's Hub layout.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipelines.errors import ConfigError

TINY_KINDS = ("altdiffusion", "stable-diffusion")


def train_tokenizer(kind: str, texts: list[str], vocab_size: int = 4000) -> Any:
    """A small tokenizer of the real model's class, trained on the given prompts.

    `altdiffusion`: an XLM-R (SentencePiece unigram) tokenizer; `stable-diffusion`: a CLIP BPE one.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    if kind == "altdiffusion":
        from transformers import XLMRobertaTokenizer

        tokenizer = Tokenizer(models.Unigram())
        tokenizer.normalizer = normalizers.NFKC()
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
        specials = ["<s>", "<pad>", "</s>", "<unk>"]
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token="<unk>")
        tokenizer.train_from_iterator(texts, trainer)
        vocab = [tuple(piece) for piece in json.loads(tokenizer.to_str())["model"]["vocab"]]
        # The trainer works in a hash map's order, which changes from process to process: the same
        # pieces come back in another order (other ids) with scores a last digit apart, and the rarest
        # pieces' scores, which the trainer makes from that order, differ a little more. Ids in
        # alphabetical order make the same prompts give the same token ids, and so the same model.
        pieces = canonical_scores(sorted((piece, round(score, 8)) for piece, score in vocab[len(specials) :]))
        return XLMRobertaTokenizer(vocab=[*vocab[: len(specials)], *pieces, ("<mask>", 0.0)], model_max_length=77)
    from transformers import CLIPTokenizer

    specials = ["<|startoftext|>", "<|endoftext|>"]
    # The words as the tokenizer itself will see them: CLIP's normalizer and pre-tokenizer, whose
    # byte-level alphabet writes every UTF-8 byte as one character. Learnt from raw characters instead,
    # every word outside ASCII (German umlauts, Chinese, Arabic...) came out as unknown tokens.
    backend = CLIPTokenizer(vocab={piece: i for i, piece in enumerate(specials)}, merges=[]).backend_tokenizer
    words: dict[str, int] = {}
    for text in texts:
        for word, _ in backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(text)):
            words[word] = words.get(word, 0) + 1
    # tokenizers' BpeTrainer breaks ties between equally frequent pairs in a hash map's order, another
    # in every process: the same prompts gave merges in another order (so another tokenizer.json and
    # another revision of the model). This trainer is the same algorithm with ties broken by the pair.
    # Every byte, alone and word-final, is in the vocabulary, as in CLIP's: no text is unknown.
    byte_level = pre_tokenizers.ByteLevel.alphabet()
    every_byte = [*byte_level, *(byte + "</w>" for byte in byte_level)]
    alphabet, merges = train_bpe(words, vocab_size - len(specials), suffix="</w>", initial=every_byte)
    pieces = specials + sorted({*alphabet, *("".join(pair) for pair in merges)})  # alphabetical ids
    return CLIPTokenizer(vocab={piece: i for i, piece in enumerate(pieces)}, merges=merges, model_max_length=77)


def train_bpe(
    words: dict[str, int], vocab_size: int, suffix: str = "", initial: list[str] | None = None
) -> tuple[list[str], list[tuple[str, str]]]:
    """Byte-pair encoding learnt from word counts, the same in every process: (alphabet, merges).

    As tokenizers' BpeTrainer: each word is split into characters, `suffix` added to its last; the
    alphabet holds every character seen (and the word-final forms seen) and `initial`; the most
    frequent adjacent pair is merged, again and again, until the alphabet and the merged pieces
    number `vocab_size` or no pair is left. Ties go to the smallest pair (in string order).

    Example:
        >>> train_bpe({"low": 5, "lower": 2, "newest": 6, "widest": 3}, 16)[1][:4]
        [('e', 's'), ('es', 't'), ('l', 'o'), ('lo', 'w')]
    """
    import heapq

    split = [[*word[:-1], word[-1] + suffix] for word in words]
    counts = list(words.values())
    # Every character seen, and the word-final forms seen (a new word may use a character anywhere).
    alphabet = sorted({*"".join(words), *(symbols[-1] for symbols in split), *(initial or [])})
    pairs: dict[tuple[str, str], int] = {}  # pair -> its count over the words
    where: dict[tuple[str, str], set[int]] = {}  # pair -> the words it occurs in
    for index, symbols in enumerate(split):
        for pair in zip(symbols, symbols[1:]):
            pairs[pair] = pairs.get(pair, 0) + counts[index]
            where.setdefault(pair, set()).add(index)
    heap = [(-count, pair) for pair, count in pairs.items()]
    heapq.heapify(heap)
    merges: list[tuple[str, str]] = []
    pieces = set(alphabet)
    while heap and len(pieces) < vocab_size:
        count, pair = heapq.heappop(heap)
        if -count != pairs.get(pair, 0):
            continue  # a stale entry: the pair's count has changed since it was pushed
        merges.append(pair)
        pieces.add(pair[0] + pair[1])
        changed = set()
        for index in sorted(where.pop(pair)):
            symbols, merged = split[index], []
            for old in zip(symbols, symbols[1:]):
                pairs[old] -= counts[index]
                changed.add(old)
            position = 0
            while position < len(symbols):
                if tuple(symbols[position : position + 2]) == pair:
                    merged.append(pair[0] + pair[1])
                    position += 2
                else:
                    merged.append(symbols[position])
                    position += 1
            split[index] = merged
            for new in zip(merged, merged[1:]):
                pairs[new] = pairs.get(new, 0) + counts[index]
                where.setdefault(new, set()).add(index)
                changed.add(new)
        for changed_pair in sorted(changed):
            if pairs[changed_pair] > 0:
                heapq.heappush(heap, (-pairs[changed_pair], changed_pair))
            else:
                del pairs[changed_pair]
    return alphabet, merges


# The unigram trainer gives each character it must keep but did not learn the lowest learnt score plus
# k * 0.0001, k counting in a hash set's order (another in every process).
REQUIRED_CHAR_STEP = 1e-4


def canonical_scores(pieces: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """The same scores for the required characters in every process: the trainer's scores for them
    (min + k * step) handed out again in the characters' alphabetical order.

    Example:
        >>> canonical_scores([("a", -1.23456789), ("ab", -2.0), ("b", -9.0001), ("c", -9.0), ("d", -9.0002)])
        [('a', -1.23456789), ('ab', -2.0), ('b', -9.0), ('c', -9.0001), ('d', -9.0002)]
    """
    lowest = min(score for _, score in pieces)

    def on_grid(piece: str, score: float) -> bool:  # one character at min + k * step (scores have 8 decimals)
        k = round((score - lowest) / REQUIRED_CHAR_STEP)
        return len(piece) == 1 and k < 10_000 and abs(score - (lowest + k * REQUIRED_CHAR_STEP)) < 2e-8

    required = [index for index, (piece, score) in enumerate(pieces) if on_grid(piece, score)]
    scores = sorted((pieces[i][1] for i in required), reverse=True)  # alphabetical order gets the highest first
    out = list(pieces)
    for index, score in zip(sorted(required, key=lambda i: pieces[i][0]), scores):
        out[index] = (pieces[index][0], score)
    return out


def tiny_unet(resolution: int = 64, width: int = 32) -> Any:
    """The tiny pipelines' UNet (latents at half the image size: the tiny VAE downsamples once)."""
    import diffusers

    return diffusers.UNet2DConditionModel(
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


def build_tiny_pipeline(kind: str, texts: list[str], seed: int = 0, resolution: int = 64) -> Any:
    """A randomly initialised text-to-image pipeline of the real classes, small enough for a CPU."""
    import diffusers
    import torch

    if kind not in TINY_KINDS:
        raise ConfigError(f"kind={kind!r}: allowed {', '.join(TINY_KINDS)}")
    tokenizer = train_tokenizer(kind, texts)
    torch.manual_seed(seed)
    width = 32
    unet = tiny_unet(resolution, width)
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


TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def build_tiny_open_clip(folder: str | Path, seed: int = 0, config: dict[str, Any] | None = None) -> Path:
    """A randomly initialised small open_clip CLIP (or one of `config`'s architecture), saved as
    open_clip saves one to the Hub."""
    import open_clip
    import torch
    from safetensors.torch import save_model

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    architecture = config or TINY_CLIP_CONFIG
    model = open_clip.CLIP(**architecture)
    config = {
        "model_cfg": architecture,
        "preprocess_cfg": {"mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD)},
    }
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    save_model(model, str(folder / "open_clip_model.safetensors"))
    return folder


def build_tiny_fairface(path: Path, seed: int = 0) -> Path:
    """FairFace's architecture (torchvision ResNet-34; logits race 7, gender 2, age 9) with random weights."""
    import torch
    import torchvision

    torch.manual_seed(seed)
    model = torchvision.models.resnet34(weights=None)
    model.fc = torch.nn.Linear(model.fc.in_features, 18)
    torch.save(model.state_dict(), path)
    return path
