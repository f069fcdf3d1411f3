"""CLIP score: how well images match texts, as an `evaluate` module.

Each image and its text are embedded with an open_clip model (a name with a pretrained tag, or a
folder in open_clip's Hub layout), and scored by the cosine of the two embeddings. Two conventions:
`cosine`, the raw cosine (the reference study), and `torchmetrics`, 100 * max(cos, 0) per pair with
the aggregate clamped as torchmetrics' CLIPScore does (max(100 * mean cos, 0)). Images go through
the model in batches without gradients, and each distinct text is encoded once.
"""

import datasets
import evaluate
import numpy as np
import torch
from PIL import Image, ImageOps

from .open_clip_loader import load_open_clip

_CITATION = """\
@inproceedings{hessel2021clipscore,
  title={CLIPScore: A Reference-free Evaluation Metric for Image Captioning},
  author={Hessel, Jack and Holtzman, Ari and Forbes, Maxwell and Le Bras, Ronan and Choi, Yejin},
  booktitle={EMNLP},
  year={2021}
}
"""

_DESCRIPTION = __doc__

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[PIL.Image.Image]`): the images, in any mode: each is scored as the RGB picture it
        shows (`as_rgb`: upright, 16-bit scaled, palette and alpha on white, CMYK converted).
    references (`list[str]`): the text of each image.
    model (`str`): an open_clip model name (`ViT-L-14-quickgelu`, `xlm-roberta-large-ViT-H-14`,
        `hf-hub:...`) or a folder with `open_clip_config.json` and weights. OpenAI's weights need
        the `-quickgelu` name; a known activation mismatch is refused.
    pretrained (`str`, *optional*): the open_clip pretrained tag (`openai`, `frozen_laion5b_s13b_b90k`).
    convention (`str`, defaults to `cosine`): `cosine` or `torchmetrics`.
    batch_size (`int`, defaults to 64): images per forward pass.
    device (`str`, *optional*): defaults to CUDA when available.
    precision (`str`, defaults to `fp32`): `fp32`, or `fp16` (the reference study ran its CLIP in half
        precision); the cosines are computed in float32 either way.
    other_references (`dict[str, list[str]]`, *optional*): more texts of each image, by name, scored
        against the same image embeddings: each image is encoded once however many texts it has.
Returns:
    `scores` (one per pair), `mean` (the aggregate), `convention`; with `other_references`, `other`:
    the same for each of its names.
Examples:
    >>> import evaluate
    >>> from PIL import Image
    >>> clip_score = evaluate.load("spaces/clip_score")
    >>> images = [Image.new("RGB", (64, 64), colour) for colour in ("red", "blue")]
    >>> texts = ["a red square", "a blue square"]
    >>> model = "ViT-B-32"  # random weights (no pretrained tag): runs offline; use your CLIP here
    >>> result = clip_score.compute(predictions=images, references=texts, model=model)
    >>> len(result["scores"]), all(-1 <= s <= 1 for s in result["scores"]), result["convention"]
    (2, True, 'cosine')
    >>> scaled = clip_score.compute(predictions=images, references=texts, model=model, convention="torchmetrics")
    >>> all(0 <= s <= 100 for s in scaled["scores"])
    True
"""

CONVENTIONS = ("cosine", "torchmetrics")
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16}

# The reference study's CLIP: OpenAI's ViT-L/14, which uses QuickGELU.
REFERENCE_CLIP = ("ViT-L-14-quickgelu", "openai")


def as_rgb(image: Image.Image) -> Image.Image:
    """An image as the 8-bit RGB picture it shows, which `image.convert("RGB")` is not for every
    image: turned upright by its EXIF orientation; 16-bit greyscale (`I;16*`, and `I`, as which older
    Pillow opens it) scaled from its full range, 65535, where `convert` clips it (a 16-bit photo turns
    white); palette and alpha images laid on white (`convert` shows the colours under transparent
    pixels); `F` from [0, 1] when every value is in it, else [0, 255]; CMYK and the rest by Pillow.

    The toolkit decodes every image it stores so (`pipelines.artifacts.dataset_files.to_rgb`); this
    module stands alone, so it keeps its own copy, and a test holds the two to the same pixels.

    Example:
        >>> import numpy as np
        >>> from PIL import Image
        >>> dark = Image.fromarray(np.full((2, 2), 200, np.uint16))  # 200 of 65535
        >>> np.asarray(as_rgb(dark))[0, 0].tolist(), np.asarray(dark.convert("RGB"))[0, 0].tolist()
        ([1, 1, 1], [200, 200, 200])
    """
    image = ImageOps.exif_transpose(image)
    if image.mode == "I" or image.mode.startswith("I;16") or image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0
        if image.mode == "F":
            top = 1.0 if values.max(initial=0) <= 1.0 else 255.0
        grey = np.clip(np.rint(values / top * 255), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ClipScore(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Image(), "references": datasets.Value("string")}),
            reference_urls=["https://arxiv.org/abs/2104.08718"],
        )

    def _model(self, model: str, pretrained: str | None, device: str, precision: str) -> tuple:
        # Loaded once per module instance, whatever the number of compute calls, and released with it
        # (a class-level cache kept every model a process ever scored with until the process ended).
        loaded = self.__dict__.setdefault("_models", {})
        key = (model, pretrained, device, precision)
        if key not in loaded:
            clip, preprocess, tokenizer = load_open_clip(model, pretrained, device)
            loaded[key] = (clip.to(PRECISIONS[precision]), preprocess, tokenizer)
        return loaded[key]

    def _compute(
        self,
        predictions: list,
        references: list[str],
        model: str | None = None,
        pretrained: str | None = None,
        convention: str = "cosine",
        batch_size: int = 64,
        device: str | None = None,
        precision: str = "fp32",
        other_references: dict[str, list[str]] | None = None,
    ) -> dict:
        if model is None:
            raise ValueError("model: an open_clip model name or folder is required")
        if convention not in CONVENTIONS:
            raise ValueError(f"convention={convention!r}: allowed {', '.join(CONVENTIONS)}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision={precision!r}: allowed {', '.join(PRECISIONS)}")
        other_references = dict(other_references or {})
        for name, other in other_references.items():
            if len(other) != len(predictions):
                raise ValueError(f"other_references[{name!r}]: {len(other)} texts for {len(predictions)} images")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        clip, preprocess, tokenizer = self._model(model, pretrained, device, precision)
        sets = {None: list(references), **other_references}
        with torch.inference_mode():
            # Each set's distinct texts encoded as a call with that set alone would encode them.
            text_features, rows = {}, {}
            for name, chosen in sets.items():
                texts = list(dict.fromkeys(chosen))
                encoded = []
                for start in range(0, len(texts), batch_size):
                    tokens = tokenizer(texts[start : start + batch_size]).to(device)
                    encoded.append(torch.nn.functional.normalize(clip.encode_text(tokens).float(), dim=-1))
                text_features[name] = torch.cat(encoded) if encoded else torch.empty(0)
                position = {text: index for index, text in enumerate(texts)}
                rows[name] = torch.tensor([position[text] for text in chosen], dtype=torch.long)
            cosines: dict = {name: [] for name in sets}
            for start in range(0, len(predictions), batch_size):
                batch = [preprocess(as_rgb(image)) for image in predictions[start : start + batch_size]]
                image_features = torch.nn.functional.normalize(
                    clip.encode_image(torch.stack(batch).to(device, PRECISIONS[precision])).float(), dim=-1
                )
                for name, row in rows.items():
                    chosen = text_features[name][row[start : start + batch_size].to(device)]
                    cosines[name].append((image_features * chosen).sum(-1).cpu())
        results = {
            name: scored(torch.cat(parts).double().numpy() if parts else np.zeros(0), convention)
            for name, parts in cosines.items()
        }
        main = results.pop(None)
        return {**main, "other": results} if other_references else main


def scored(cosine: np.ndarray, convention: str) -> dict:
    """The scores and their aggregate from the pairs' cosines, in a convention.

    torchmetrics clamps each pair's score at 0 but its aggregate only once, after the mean: with
    cosines of both signs the aggregate is not the mean of the scores.

    Example:
        >>> scored(np.array([0.5, -0.3]), "torchmetrics")
        {'scores': [50.0, 0.0], 'mean': 10.0, 'convention': 'torchmetrics'}
        >>> scored(np.array([0.5, -0.3]), "cosine")["mean"]
        0.1
        >>> scored(np.array([-0.5, 0.3]), "torchmetrics")["mean"]
        0.0
    """
    if convention == "cosine":
        return {
            "scores": cosine.tolist(),
            "mean": float(cosine.mean()) if len(cosine) else float("nan"),
            "convention": convention,
        }
    scores = 100 * np.maximum(cosine, 0)
    mean = max(100 * float(cosine.mean()), 0.0) if len(cosine) else float("nan")
    return {"scores": scores.tolist(), "mean": mean, "convention": convention}
