"""A tiny, randomly initialised text-to-image model of the real classes, published as a model repo.

    python -m pipelines.build_tiny_model --input prompts --kind altdiffusion

`altdiffusion`: AltDiffusion's classes (RoBERTa-series text encoder with an XLM-R tokenizer, UNet,
VAE); `stable-diffusion`: Stable Diffusion's (CLIP text encoder and tokenizer). The tokenizer is
trained on the prompts of every language in the input dataset. Nothing downloads: tests and the
offline study run every stage on these through the same loading code as the real models.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .cards import model_card
from .config import ConfigError, StageArguments, input_field
from .dataset_files import artifact_configs, load_config
from .models import TINY_KINDS, build_tiny_pipeline
from .stage import Published, StageRun, execute, stage_main

STAGE = "build_tiny_model"


@dataclass
class Arguments(StageArguments):
    INPUTS = {"input": "dataset"}
    input: str = input_field("Prompts dataset whose prompts (all languages) train the tokenizer.", default="prompts")
    kind: str = field(default="altdiffusion", metadata={"help": f"Model family, one of {TINY_KINDS}."})
    resolution: int = field(default=64, metadata={"help": "Native image size in pixels (a multiple of 8)."})
    seed: int = field(default=0, metadata={"help": "Seed of the random weights."})

    def __post_init__(self) -> None:
        if self.output_repo is None:
            self.output_repo = f"tiny-{self.kind}"
        super().__post_init__()
        if self.kind not in TINY_KINDS:
            raise ConfigError(f"kind={self.kind!r}: allowed {', '.join(TINY_KINDS)}")
        if self.resolution < 16 or self.resolution % 8:
            raise ConfigError(f"resolution={self.resolution}: a multiple of 8, at least 16")


def build(run: StageRun, folder: Path) -> str:
    args: Arguments = run.args
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
            "It makes noise, not pictures: it exists so that every stage of the study runs offline, "
            "through the same loading code as the real model."
        ),
        lineage=run.lineage,
        languages=languages,
        datasets=[run.inputs["input"].partition("@")[0]],
        tags=["tiny", "random-weights", args.kind],
        usage=f'from pipelines.models import load_pipeline\npipe, _ = load_pipeline("{run.output_repo_id}", store)',
    ).save(folder / "README.md")
    return f"Tiny {model_class}, seed {args.seed}, {args.resolution} px"


def run(args: Arguments) -> Published:
    return execute(STAGE, args, build, repo_type="model")


def main(argv: list[str] | None = None) -> None:
    stage_main(Arguments, STAGE, run, argv)


if __name__ == "__main__":
    main()
