"""The dry run's arithmetic: what each step of a recipe would read, download and make, and its GPU time.

Nothing is loaded or downloaded: counts follow from the recipe's own settings (the prompt grid's
lists, MAGBIG's published set sizes, `num_images`, epochs and batch sizes), passed from step to
step by output repo. GPU time uses per-unit figures a user can override (`--seconds_per_image`,
`--seconds_per_step`), scaled by denoising steps and pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

# MAGBIG's published set sizes (its CSV files): 151 occupations, 20 adjectives.
MAGBIG_SIZES = {"direct": 151, "indirect": 151, "gender_star": 151, "feminine": 151, "adjectives": 20}


@dataclass
class Costs:
    """GPU seconds per unit of work, on one modern data-centre GPU (fp16)."""

    seconds_per_image: float = 2.0  # one image, 50 denoising steps, 512 x 512
    seconds_per_step: float = 0.6  # one optimisation step of 16 images at 256 x 256, UNet and text encoder
    seconds_per_classified_image: float = 0.05  # detection, chip and classifier
    seconds_per_scored_image: float = 0.02  # CLIP ViT-L/14 image embedding


@dataclass
class Estimate:
    reads: list[str] = field(default_factory=list)
    downloads: list[str] = field(default_factory=list)
    makes: str = ""
    images: int = 0
    train_steps: int = 0
    gpu_hours: float = 0.0


class Estimates:
    """What earlier steps would publish, by repo id: prompt counts, image counts, dataset rows."""

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, Any]] = {}

    def get(self, repo_id: str) -> dict[str, Any]:
        return self.repos.get(repo_id, {})

    def put(self, repo_id: str, **facts: Any) -> None:
        self.repos.setdefault(repo_id, {}).update(facts)


def hours(seconds: float) -> float:
    return seconds / 3600


def image_seconds(costs: Costs, steps: int, height: int | None, width: int | None, native: int = 512) -> float:
    pixels = (height or native) * (width or native) / 512**2
    return costs.seconds_per_image * steps / 50 * pixels


def train_steps(rows: int, batch: int, accumulation: int, epochs: int, max_steps: int | None) -> int:
    if max_steps:
        return max_steps
    return epochs * math.ceil(max(rows, 1) / (batch * accumulation))


def print_plan(rows: list[tuple[str, Any, Any, Estimate | None]], costs: Costs) -> None:
    total = 0.0
    print(
        f"Dry run: nothing is loaded, downloaded or published. GPU time assumes {costs.seconds_per_image} s per "
        f"image (50 steps, 512 px) and {costs.seconds_per_step} s per training step (16 images, 256 px); "
        "override with --seconds_per_image and --seconds_per_step.\n"
    )
    for number, (name, stage, args, estimate) in enumerate(rows, 1):
        estimate = estimate or Estimate()
        output = getattr(args, "output_repo", None)
        print(f"{number:2d}. {name} ({stage.name}) -> {args.repo_id(output) if output else '-'}")
        if estimate.reads:
            print(f"    reads:     {', '.join(estimate.reads)}")
        if estimate.downloads:
            print(f"    downloads: {', '.join(estimate.downloads)}")
        if estimate.makes:
            print(f"    makes:     {estimate.makes}")
        if estimate.images:
            print(f"    images:    {estimate.images:,}")
        if estimate.train_steps:
            print(f"    training:  {estimate.train_steps:,} steps")
        if estimate.gpu_hours:
            print(f"    GPU time:  {estimate.gpu_hours:,.1f} h")
        total += estimate.gpu_hours
    print(f"\nTotal GPU time: about {total:,.1f} h on one GPU (divide by the number of GPUs for wall time).")


def download_of(spec: str | None, args: Any, estimates: Estimates, what: str) -> str | None:
    """What fetching input `spec` would download, judged offline: None when it is local or made here."""
    from pathlib import Path

    from pipelines.artifacts.store import LocalStore, parse_ref
    from pipelines.errors import UserError

    if not spec or Path(spec).expanduser().exists():
        return None
    if spec.startswith("hf-hub:"):
        return f"{what}: {spec} (open_clip, from the Hub)"
    try:
        ref = parse_ref(spec, namespace=args.namespace)
    except UserError:
        return f"{what}: {spec} (the library's own download)"
    if ref.repo_id in estimates.repos:
        return None
    store = args.open_store()
    for repo_type in ("model", "dataset"):
        if store.exists(ref.repo_id, repo_type):
            return None
    if isinstance(store, LocalStore) and "/" not in spec.partition("@")[0]:
        return f"{what}: {spec} (the library's own download, or missing: not in the store)"
    return f"{what}: {ref.repo_id}@{ref.revision} (Hub)"
