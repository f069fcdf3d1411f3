"""The dry run's arithmetic: what each step of a recipe would read, download and make, and its time.

Nothing is loaded or downloaded: counts follow from the recipe's own settings (the prompt grid's
lists, MAGBIG's published set sizes, `num_images`, epochs and batch sizes), passed from step to
step by output repo. Time uses seconds per unit of work, measured (the throughput file the benchmarks
write, by device kind) or built-in GPU guesses, which a user can override (`--seconds_per_image`,
`--seconds_per_step`), scaled by denoising steps and pixels, and for a model that the recipe itself
builds, by its FLOPs as a share of the real model's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.errors import ConfigError

# MAGBIG's published set sizes (its CSV files): 151 occupations, 20 adjectives.
MAGBIG_SIZES = {"direct": 151, "indirect": 151, "gender_star": 151, "feminine": 151, "adjectives": 20}


# The units of work are the real study's: an image of AltDiffusion-m9 at 512 px, a training step of 16
# images at 256 px, a FairFace chip, an image encoded by CLIP ViT-L/14. A model that an earlier step of
# the recipe builds (the tiny and world models, a tiny CLIP) is priced by its FLOPs as a share of the
# real model's, counted the same way: PyTorch's flop counter on the meta device, nothing computed
# (tests/test_benchmarks.py counts both constants again). Without that, a 16 px world model was priced
# as m9 at 512 px: the offline study, 8 minutes on 2 cores, was planned at 1,731 CPU hours.
M9_PIXELS = 512
M9_UNET_CALL_FLOPS = 803_273_441_280  # m9's UNet, one call: batch 1, 64 x 64 latents (512 px), 77 tokens
VIT_L14_IMAGE_FLOPS = 162_025_537_536  # CLIP ViT-L/14 (QuickGELU) encoding one 224 px image


def meta_flops(call: Any) -> int:
    """FLOPs of `call()` on the meta device (a model built there): counted, nothing computed."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"), FlopCounterMode(display=False) as counter:
        call()
    return counter.get_total_flops()


def unet_call_flops(unet: Any) -> int:
    """FLOPs of one call of `unet`, built on the meta device: batch 1, latents of its sample size, 77
    tokens of its cross-attention width."""
    import torch

    config = unet.config
    shape = (1, config.in_channels, config.sample_size, config.sample_size)
    return meta_flops(
        lambda: unet(torch.zeros(shape), torch.full((1,), 500), torch.zeros(1, 77, config.cross_attention_dim))
    )


def diffusion_facts(unet: Any, pixels: int) -> dict[str, Any]:
    """What the dry run records of a diffusion model a step builds (its UNet on the meta device): its
    native size in pixels and its UNet's FLOPs per pixel as a share of m9's."""
    share = unet_call_flops(unet) / pixels**2 / (M9_UNET_CALL_FLOPS / M9_PIXELS**2)
    return {"resolution": pixels, "flop_share": share}


def clip_facts(model: Any) -> dict[str, Any]:
    """What the dry run records of an open_clip model a step builds (on the meta device): the FLOPs of
    encoding one image as a share of ViT-L/14's."""
    import torch

    size = model.visual.image_size
    size = size if isinstance(size, int) else size[0]
    return {"clip_share": meta_flops(lambda: model.encode_image(torch.zeros(1, 3, size, size))) / VIT_L14_IMAGE_FLOPS}


def prompt_count(prompts: dict[str, Any], variant: str, professions: list[str] | None) -> int:
    """How many prompts of `variant` a step takes from a prompts dataset's recorded facts, only those
    of `professions` where it names some (the grid's variants hold every occupation equally often;
    a dataset whose occupations were not recorded is counted whole)."""
    count = prompts.get("variants", {}).get(variant, 0)
    known = prompts.get("professions")
    if professions and known and count:
        count = max(1, round(count * len(set(professions) & set(known)) / len(known)))
    return count


def flop_note(share: float, of: str = "m9's UNet per pixel") -> str:
    """What the plan says of a time scaled by a model's FLOPs (empty for the real model's own).

    Example:
        >>> flop_note(0.0459)
        "priced by FLOPs: 0.0459 of m9's UNet per pixel"
    """
    return "" if share == 1 else f"priced by FLOPs: {share:.3g} of {of}"


def architecture_facts(estimates: Estimates, repo_id: str) -> dict[str, Any]:
    """The facts `diffusion_facts` recorded for a model, for a fine-tune of it to record in turn."""
    return {key: value for key, value in estimates.get(repo_id).items() if key in ("flop_share", "resolution")}


def diffusion_scale(estimates: Estimates, repo_id: str) -> tuple[float, int]:
    """(FLOPs per pixel as a share of m9's, native size in pixels) of a diffusion model: recorded by the
    step that builds or fine-tunes it, m9's own (1, 512) for any other model."""
    facts = estimates.get(repo_id)
    return facts.get("flop_share", 1.0), facts.get("resolution", M9_PIXELS)


# Where `python -m pipelines.run --dry_run` finds measured figures: the benchmarks' results of a checkout.
THROUGHPUT_FILE = Path("benchmarks") / "results" / "throughput.json"
DEVICE_KINDS = {"cuda": "GPU", "cpu": "CPU"}
UNITS = ("seconds_per_image", "seconds_per_step", "seconds_per_classified_image", "seconds_per_scored_image")


@dataclass
class Costs:
    """Seconds per unit of work on one device. The defaults are guesses for one modern data-centre GPU
    (fp16); `measured_costs` reads measured figures instead, and `source` says which were used."""

    seconds_per_image: float = 2.0  # one image, 50 denoising steps, 512 x 512
    seconds_per_step: float = 0.6  # one optimisation step of 16 images at 256 x 256, UNet and text encoder
    seconds_per_classified_image: float = 0.05  # detection, chip and classifier
    seconds_per_scored_image: float = 0.02  # CLIP ViT-L/14 image embedding
    device_kind: str = "cuda"
    source: str = "built-in guesses for one data-centre GPU in fp16, not measured"

    @property
    def device(self) -> str:
        return DEVICE_KINDS[self.device_kind]


def measured_costs(path: Path, kind: str, given: bool) -> Costs:
    """The `kind` device's seconds per unit from a throughput file (`benchmarks.gpu` writes "cuda" where
    a GPU is lent, `benchmarks.bench_peak` writes "cpu"). Without a file, or without the kind in it,
    a GPU falls back on the built-in guesses and says so; a CPU has none to fall back on."""
    import json

    if kind not in DEVICE_KINDS:
        raise ConfigError(f"--device_kind={kind!r}: one of {', '.join(DEVICE_KINDS)}")
    figures = {}
    if path.is_file():
        try:
            figures = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ConfigError(f"--throughput={str(path)!r}: not a throughput file ({err})") from None
        if not isinstance(figures, dict):
            raise ConfigError(f"--throughput={str(path)!r}: not a throughput file (a JSON object by device kind)")
    elif given:
        raise ConfigError(f"--throughput={str(path)!r}: no such file")
    entry = figures.get(kind)
    if entry is None:
        if kind == "cuda":
            return Costs(source=f"built-in guesses for one data-centre GPU in fp16: {path} has no measured GPU "
                         "figures (python -m benchmarks.gpu writes them on a GPU machine)")  # fmt: skip
        raise ConfigError(f"--device_kind=cpu: {path} has no measured CPU figures; "
                          "python -m benchmarks.bench_peak writes them")  # fmt: skip
    values = {}
    for unit in UNITS:
        value = entry.get(unit) if isinstance(entry, dict) else None
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not (math.isfinite(value) and value > 0):
            raise ConfigError(f"--throughput={str(path)!r}: {kind}.{unit} is {value!r}, "
                              "not a number of seconds above 0")  # fmt: skip
        values[unit] = float(value)
    how = entry.get("measured_by", "measured")
    device = entry.get("device", DEVICE_KINDS[kind])
    return Costs(**values, device_kind=kind, source=f"measured on {device} ({how}; {path})")


@dataclass
class Estimate:
    reads: list[str] = field(default_factory=list)
    downloads: list[str] = field(default_factory=list)
    makes: str = ""
    images: int = 0
    train_steps: int = 0
    gpu_hours: float = 0.0
    priced: str = ""  # how the time was scaled from the real model's units, where it was (`flop_note`)
    native_side: int = 0  # the size in pixels of a generating step's model where the plan knows it, else 0


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


def image_seconds(
    costs: Costs, steps: int, height: int | None, width: int | None, native: int = 512, share: float = 1.0
) -> float:
    """Seconds for one image in `steps` denoising steps, the unit scaled by pixels and by the model's
    FLOPs per pixel as a share of m9's (`diffusion_scale`)."""
    pixels = (height or native) * (width or native) / M9_PIXELS**2
    return costs.seconds_per_image * steps / 50 * pixels * share


def duration(hours: float) -> str:
    """A planned time: hours from one hour up, minutes or seconds below (an offline recipe's plan).

    Example:
        >>> duration(181.83), duration(0.2), duration(0.0005)
        ('181.8 h', '12.0 min', '1.8 s')
    """
    if hours >= 1:
        return f"{hours:,.1f} h"
    if hours * 60 >= 1:
        return f"{hours * 60:.1f} min"
    return f"{hours * 3600:.1f} s"


def train_steps(rows: int, batch: int, accumulation: int, epochs: int, max_steps: int | None) -> int:
    if max_steps:
        return max_steps
    return epochs * math.ceil(max(rows, 1) / (batch * accumulation))


def print_plan(rows: list[tuple[str, Any, Any, Estimate | None]], costs: Costs) -> None:
    total = 0.0
    device = costs.device
    print(
        f"Dry run: nothing is loaded, downloaded or published. {device} time assumes {costs.seconds_per_image:g} s "
        f"per image (50 steps, 512 px), {costs.seconds_per_step:g} s per training step (16 images, 256 px), "
        f"{costs.seconds_per_classified_image:g} s per classified image and {costs.seconds_per_scored_image:g} s "
        f"per CLIP-scored image: {costs.source}. Override with --seconds_per_image and --seconds_per_step.\n"
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
            print(
                f"    {device} time:  {duration(estimate.gpu_hours)}"
                + (f" ({estimate.priced})" if estimate.priced else "")
            )
        total += estimate.gpu_hours
    where = "one GPU (divide by the number of GPUs for wall time)" if device == "GPU" else "this CPU"
    print(f"\nTotal {device} time: about {duration(total)} on {where}.")


def download_of(spec: str | None, args: Any, estimates: Estimates, what: str) -> str | None:
    """What fetching input `spec` would download, judged offline: None when it is local or made here,
    and for a file or folder given by its path, there or not (no library downloads it: a missing one
    is the preflight's to name, never a Hub repo)."""
    from pathlib import Path

    from pipelines.artifacts.inputs import looks_like_path
    from pipelines.artifacts.store import LocalStore, parse_ref
    from pipelines.errors import UserError

    if not spec or Path(spec).expanduser().exists() or looks_like_path(spec):
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
