"""Tiny, randomly initialised models of the real classes, published as model repos.

    python -m pipelines.build_tiny_model --input prompts --kind altdiffusion

- `altdiffusion`: AltDiffusion's classes (RoBERTa-series text encoder with an XLM-R tokenizer, UNet,
  VAE), the tokenizer trained on the prompts of every language in the input dataset;
- `stable-diffusion`: Stable Diffusion's (CLIP text encoder and tokenizer), likewise;
- `fairface`: FairFace's classifier, a torchvision ResNet-34 with an 18-logit head (a state dict);
- `open-clip`: a small open_clip CLIP, saved as open_clip saves one to the Hub.

Nothing downloads: tests and the offline study run every stage on these through the same loading
code as the real models.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipelines.artifacts.cards import model_card
from pipelines.artifacts.dataset_files import artifact_configs, load_config
from pipelines.errors import ConfigError
from pipelines.harness.config import StageArguments, input_field
from pipelines.harness.stage import Published, StageRun, execute, stage_main
from pipelines.modeling.diffusion import TINY_KINDS as DIFFUSION_KINDS
from pipelines.modeling.diffusion import build_tiny_pipeline

STAGE = "build_tiny_model"
TINY_KINDS = (*DIFFUSION_KINDS, "fairface", "open-clip")


@dataclass
class Arguments(StageArguments):
    INPUTS = {"input": "dataset"}
    input: str | None = input_field(
        "Prompts dataset whose prompts (all languages) train a diffusion model's tokenizer.", default="prompts"
    )
    kind: str = field(default="altdiffusion", metadata={"help": f"Model family, one of {TINY_KINDS}."})
    resolution: int = field(default=64, metadata={"help": "Native image size in pixels (a multiple of 8)."})
    seed: int = field(default=0, metadata={"help": "Seed of the random weights."})

    def __post_init__(self) -> None:
        if self.output_repo is None:
            self.output_repo = f"tiny-{self.kind}"
        if self.kind not in DIFFUSION_KINDS:
            self.input = None  # only the diffusion models have a tokenizer to train
        super().__post_init__()
        if self.kind not in TINY_KINDS:
            raise ConfigError(f"kind={self.kind!r}: allowed {', '.join(TINY_KINDS)}")
        if self.resolution < 16 or self.resolution % 8:
            raise ConfigError(f"resolution={self.resolution}: a multiple of 8, at least 16")


def build(run: StageRun, folder: Path) -> str:
    args: Arguments = run.args
    if args.kind == "fairface":
        return _build_fairface(run, folder)
    if args.kind == "open-clip":
        return _build_open_clip(run, folder)
    source = run.input_folder("input")
    languages = artifact_configs(source)
    texts = sorted({prompt for config in languages for prompt in load_config(source, config)["prompt"]})
    pipe = build_tiny_pipeline(args.kind, texts, seed=args.seed, resolution=args.resolution)
    pipe.save_pretrained(folder)
    model_class = type(pipe).__name__
    model_card(
        title=f"Tiny {model_class} (random weights)",
        description=(
            f"A {model_class} with randomly initialised weights and a {len(pipe.tokenizer)}-token "
            f"{type(pipe.tokenizer).__name__} trained on {len(texts)} prompts in {', '.join(languages)}. "
            + NOT_A_MODEL
        ),
        lineage=run.lineage,
        languages=languages,
        datasets=[run.inputs["input"].partition("@")[0]],
        tags=["tiny", "random-weights", args.kind],
        usage=(
            "from pipelines.modeling.diffusion import load_pipeline\n"
            f'pipe, _ = load_pipeline("{run.output_repo_id}", store)'
        ),
    ).save(folder / "README.md")
    return f"Tiny {model_class}, seed {args.seed}, {args.resolution} px"


NOT_A_MODEL = (
    "It makes noise, not predictions: it exists so that every stage of the study runs offline, "
    "through the same loading code as the real model."
)


def _build_fairface(run: StageRun, folder: Path) -> str:
    import torch
    import torchvision

    torch.manual_seed(run.args.seed)
    model = torchvision.models.resnet34(weights=None)
    model.fc = torch.nn.Linear(model.fc.in_features, 18)
    torch.save(model.state_dict(), folder / "res34_fair_align_multi_7.pt")
    model_card(
        title="Tiny FairFace classifier (random weights)",
        description="FairFace's architecture: a torchvision ResNet-34 whose 18 logits are race (7), gender (2) "
        "and age (9), in that order, with randomly initialised weights. " + NOT_A_MODEL,
        lineage=run.lineage,
        languages=[],
        tags=["tiny", "random-weights", "fairface", "image-classification"],
        pipeline_tag="image-classification",
        library_name="pytorch",
    ).save(folder / "README.md")
    return "Tiny FairFace ResNet-34"


def _build_open_clip(run: StageRun, folder: Path) -> str:
    from pipelines.modeling.clip import build_tiny_open_clip

    build_tiny_open_clip(folder, seed=run.args.seed)
    model_card(
        title="Tiny open_clip CLIP (random weights)",
        description="A small open_clip CLIP (ViT image tower, transformer text tower, open_clip's English BPE "
        "tokenizer) with randomly initialised weights, in open_clip's Hub layout. " + NOT_A_MODEL,
        lineage=run.lineage,
        languages=["en"],
        tags=["tiny", "random-weights", "open_clip", "zero-shot-image-classification"],
        pipeline_tag="zero-shot-image-classification",
        library_name="open_clip",
    ).save(folder / "README.md")
    return "Tiny open_clip CLIP"


def run(args: Arguments) -> Published:
    return execute(STAGE, args, build, repo_type="model")


def main(argv: list[str] | None = None) -> None:
    stage_main(Arguments, STAGE, run, argv)


if __name__ == "__main__":
    main()
