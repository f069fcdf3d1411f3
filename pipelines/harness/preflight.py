"""Before a recipe's first step: what would stop it part-way that can be known now.

A real study runs for days; an input missing at step 9 (FairFace's weights, which no library
downloads) was found after about 174 of 182 GPU hours. The dry run and the start of a real run
check every input that no step of the recipe makes, and the disk the planned images need, and name
what is missing and where to get it, one line each.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from pipelines.artifacts.inputs import WHERE_TO_GET, looks_like_path, weights_file_problem
from pipelines.artifacts.store import LocalStore, parse_ref
from pipelines.errors import UserError
from pipelines.harness.config import input_fields
from pipelines.harness.estimate import Estimate

# What a generated image takes in the store: a PNG of a photo-like picture is about half its raw
# RGB bytes (the reference's 512 px images: 330-450 KB each).
PNG_BYTES_PER_PIXEL = 1.5
DEFAULT_SIDE = 512


def preflight(steps: list[tuple[str, Any, Estimate | None]], made: set[str], hub_offline: bool = False) -> list[str]:
    """The problems of `steps` (name, arguments, estimate), one line each:

    - an input that no step makes (`made`: the recipe's output repo ids) and that is not there: a
      weights file or folder (with where to get the ones no library downloads), a dataset of the
      local store;
    - a weights file that is there but empty or not a torch checkpoint (`weights_file_problem`: its
      header, not its tensors; FairFace publishes no checksums to compare with);
    - with the Hub offline (`hub_offline`), a Hub repo that is not in the Hugging Face cache; with
      it online, a repo or revision the Hub does not have (`hub_problem`).

    The disk the planned images need is `disk_problems`.
    """
    found: dict[tuple[str, str], list[str]] = {}  # (input, problem) -> the steps that read it
    hints: list[str] = []
    for name, args, _ in steps:
        store = args.open_store()
        for field_name, kind in input_fields(args).items():
            spec = getattr(args, field_name)
            if isinstance(spec, str) and spec.strip():
                problem = input_problem(spec.strip(), kind, args, store, made, hub_offline)
                if problem:
                    found.setdefault((spec.strip(), problem), []).append(f"{name}.{field_name}")
                    hint = WHERE_TO_GET.get(Path(spec).name)  # missing, empty or not whole: get it again
                    if hint and hint not in hints:
                        hints.append(hint)
    problems = [f"{spec} ({', '.join(where)}): {problem}" for (spec, problem), where in found.items()]
    return problems + hints


NO_SUCH_PATH = "no such file or folder"


def input_problem(spec: str, kind: str, args: Any, store: Any, made: set[str], hub_offline: bool) -> str | None:
    """What is wrong with one input given as `spec`, or None."""
    path = Path(spec).expanduser()
    try:
        if path.exists():
            return weights_file_problem(path) if path.is_file() else None
    except OSError as err:  # a folder on the way that cannot be searched, a file that cannot be read
        return f"cannot be read ({err.strerror or err})"
    if looks_like_path(spec):
        return NO_SUCH_PATH
    try:
        ref = parse_ref(spec.removeprefix("hf-hub:"), namespace=args.namespace)
    except UserError:
        return None  # a library's own model name (open_clip's): the library resolves it
    if ref.repo_id in made or any(store.exists(ref.repo_id, repo_type) for repo_type in ("dataset", "model")):
        return None
    if "/" not in spec.partition("@")[0]:  # a name in the study's namespace
        if isinstance(store, LocalStore) and kind != "model":  # a bare model name may be a library's
            return "no step of the recipe makes it, and the store has no such dataset"
        return None
    if hub_offline and not in_hub_cache(ref.repo_id, ref.revision, kind):
        return "not in the Hugging Face cache, and the Hub is offline (HF_HUB_OFFLINE)"
    return None if hub_offline else hub_problem(ref.repo_id, ref.revision, kind)


def hub_problem(repo_id: str, revision: str, kind: str, api: Any = None) -> str | None:
    """With the Hub reachable: a repo or revision it does not have (a misspelt id), or one gated from
    this token, found before step 1 rather than at the step that downloads it. Where the Hub cannot be
    asked (offline, no network, an error of its own), nothing is said: the run finds out itself, and
    a dry run is often planned on another machine than the one that runs."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    if api is None:
        if constants.HF_HUB_OFFLINE:
            return None
        api = HfApi()
    repo_types = {"model": ("model",), "source": ("model", "dataset")}.get(kind, ("dataset",))
    found = None
    for repo_type in repo_types:
        try:
            info = api.repo_info(repo_id, repo_type=repo_type, revision=None if revision == "main" else revision,
                                 timeout=10)  # fmt: skip
            if getattr(info, "gated", False):  # the Hub describes a gated repo to anyone; its files need access
                api.auth_check(repo_id, repo_type=repo_type)
            return None
        except GatedRepoError:
            return "gated on the Hub: this token has not been granted access (ask for it on the repo's page)"
        except RevisionNotFoundError:
            found = f"the Hub has no revision or tag {revision!r} of it"
        except RepositoryNotFoundError:
            found = found or f"the Hub has no such {' or '.join(repo_types)} repo (or this token cannot see it)"
        except Exception:  # noqa: BLE001
            return None  # no network, a timeout, the Hub's own error: not known, so not said
    return found


def in_hub_cache(repo_id: str, revision: str, kind: str) -> bool:
    """Whether the Hugging Face cache holds the repo at `revision` (a model, a dataset, or either)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo_types = {"model": ("model",), "source": ("dataset", "model")}.get(kind, ("dataset",))
    for repo_type in repo_types:
        try:
            snapshot_download(repo_id, repo_type=repo_type, revision=revision, local_files_only=True)
            return True
        except (LocalEntryNotFoundError, OSError, ValueError):
            continue
    return False


def disk_problems(steps: list[tuple[str, Any, Estimate | None]], made: set[str]) -> list[str]:
    """Too little free space at a local store for the images its steps would generate. A size the
    recipe leaves to the model is its native one: the one the plan recorded for a model a step builds
    (`Estimate.native_side`), 512 px for a model from the Hub or a folder, and unknown (not counted)
    for any other model the recipe makes, whose config does not exist yet."""
    need: dict[Path, float] = {}
    for _, args, estimate in steps:
        store = args.open_store()
        if estimate is None or not estimate.images or not isinstance(store, LocalStore):
            continue
        model = str(getattr(args, "model", "") or "")
        made_here = model and model_made_here(model, args, store, made)
        native = estimate.native_side or (None if made_here else DEFAULT_SIDE)
        height, width = getattr(args, "height", None) or native, getattr(args, "width", None) or native
        if height is None or width is None:
            continue
        root = Path(store.root).resolve()
        while not root.exists():
            root = root.parent
        need[root] = need.get(root, 0.0) + estimate.images * height * width * PNG_BYTES_PER_PIXEL
    problems = []
    for root, size in need.items():
        free = shutil.disk_usage(root).free
        if size > free:
            problems.append(
                f"disk: the planned images need about {size / 1e9:,.1f} GB in the store's file system, "
                f"{free / 1e9:,.1f} GB are free"
            )
    return problems


def model_made_here(spec: str, args: Any, store: Any, made: set[str]) -> bool:
    """Whether a model input is a repo of the recipe or of the store (not a Hub id or a folder)."""
    try:
        repo_id = parse_ref(spec, namespace=args.namespace).repo_id
    except UserError:
        return False
    return repo_id in made or store.exists(repo_id, "model")
