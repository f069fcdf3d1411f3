"""Tiny, randomly initialised models of the real classes, published as model repos.

    python -m pipelines.build_tiny_model --input prompts --kind altdiffusion

- `altdiffusion`: AltDiffusion's classes (RoBERTa-series text encoder with an XLM-R tokenizer, UNet,
  VAE), the tokenizer trained on the prompts of every language in the input dataset;
- `stable-diffusion`: Stable Diffusion's (CLIP text encoder and tokenizer), likewise;
- `fairface`: FairFace's classifier, a torchvision ResNet-34 with an 18-logit head (a state dict);
- `open-clip`: a small open_clip CLIP, saved as open_clip saves one to the Hub;
- `world`: the planted-bias world's untrained model (`pipelines.modeling.world`): AltDiffusion's
  classes at 16 px, v-prediction, an identity VAE; `train_text_to_image` teaches it the world.

Nothing downloads: tests and the offline study run every stage on these through the same loading
code as the real models.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.artifacts.cards import model_card
from pipelines.errors import ConfigError
from pipelines.harness.config import StageArguments, input_field
from pipelines.harness.stage import Stage, StageRun
from pipelines.modeling import tiny
from pipelines.modeling.diffusion import save_pipeline, usage_snippet

TINY_KINDS = (*tiny.TINY_KINDS, "world", "fairface", "open-clip")
NOT_A_MODEL = (
    "It makes noise, not predictions: it exists so that every stage of the study runs offline, "
    "through the same loading code as the real model."
)


@dataclass
class Arguments(StageArguments):
    INPUTS = {"input": "prompts"}
    input: str | None = input_field(
        "Prompts dataset whose prompts (all languages) train a diffusion model's tokenizer.", default="prompts"
    )
    kind: str = field(default="altdiffusion", metadata={"help": f"Model family, one of {TINY_KINDS}."})
    resolution: int = field(default=64, metadata={"help": "Native image size in pixels (a multiple of 8)."})
    seed: int = field(default=0, metadata={"help": "Seed of the random weights."})

    def __post_init__(self) -> None:
        if self.output_repo is None:
            self.output_repo = f"tiny-{self.kind}"
        if self.kind not in (*tiny.TINY_KINDS, "world"):
            self.input = None  # only the diffusion models have a tokenizer to train
        super().__post_init__()
        self.check_choice("kind", TINY_KINDS)
        if self.resolution < 16 or self.resolution % 8:
            raise ConfigError(f"resolution={self.resolution}: a multiple of 8, at least 16")


class BuildTinyModel(Stage):
    name = "build_tiny_model"
    Arguments = Arguments
    repo_type = "model"
    uses_torch = True

    def estimate(self, args: Arguments, estimates: Any, costs: Any) -> Any:
        import torch

        from pipelines.harness.estimate import Estimate, clip_facts, diffusion_facts

        facts: dict[str, Any] = {}
        with torch.device("meta"):  # the architecture only, to count its FLOPs: no weights are made
            if args.kind == "world":
                from pipelines.modeling import world

                facts = diffusion_facts(world.world_unet(), world.SIZE)
            elif args.kind in tiny.TINY_KINDS:
                facts = diffusion_facts(tiny.tiny_unet(args.resolution), args.resolution)
            elif args.kind == "open-clip":
                import open_clip

                facts = clip_facts(open_clip.CLIP(**tiny.TINY_CLIP_CONFIG))
        estimates.put(args.repo_id(args.output_repo), kind="model", **facts)
        return Estimate(reads=[args.input] if args.input else [], makes=f"a tiny random {args.kind} model")

    def build(self, run: StageRun, folder: Path) -> str:
        args: Arguments = run.args
        if args.kind == "fairface":
            return self._fairface(run, folder)
        if args.kind == "open-clip":
            return self._open_clip(run, folder)
        source = run.dataset("input")
        texts = sorted({row["prompt"] for config in source.configs for row in source.rows(config, ["prompt"])})
        if args.kind == "world":
            from pipelines.modeling.world import build_world_pipeline

            pipe = build_world_pipeline(texts, seed=args.seed)
            purpose = (
                "The planted-bias world's model before training: v-prediction, an identity VAE (it diffuses "
                "16 px pictures in pixel space). Train it on `draw_world`'s pictures with `train_text_to_image`."
            )
        else:
            pipe = tiny.build_tiny_pipeline(args.kind, texts, seed=args.seed, resolution=args.resolution)
            purpose = NOT_A_MODEL
        save_pipeline(pipe, folder)
        model_class = type(pipe).__name__
        model_card(
            title=f"Tiny {model_class} (random weights)",
            description=(
                f"A {model_class} with randomly initialised weights and a {len(pipe.tokenizer)}-token "
                f"{type(pipe.tokenizer).__name__} trained on {len(texts)} prompts in {', '.join(source.configs)}. "
                + purpose
            ),
            lineage=run.lineage,
            languages=source.configs,
            datasets=[run.inputs["input"].partition("@")[0]],
            tags=["tiny", "random-weights", args.kind],
            usage=usage_snippet(run.output_repo_id, folder),
        ).save(folder / "README.md")
        size = pipe.unet.config.sample_size * pipe.vae_scale_factor
        return f"Tiny {model_class} ({args.kind}), seed {args.seed}, {size} px"

    def _fairface(self, run: StageRun, folder: Path) -> str:
        tiny.build_tiny_fairface(folder / "res34_fair_align_multi_7.pt", seed=run.args.seed)
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

    def _open_clip(self, run: StageRun, folder: Path) -> str:
        tiny.build_tiny_open_clip(folder, seed=run.args.seed)
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


STAGE = BuildTinyModel()
run = STAGE.run

if __name__ == "__main__":
    STAGE.main()
