"""Model inputs as users give them, resolved to a local path and pinned for the lineage.

A model input may be:

- a repo of the store (`tiny-altdiffusion`, `t2i-bias/finetuned@v1`): pinned to its revision;
- a Hub id, with or without a revision (`BAAI/AltDiffusion-m9`, `...@main`): downloaded (only the
  files the stage needs) and pinned to its commit;
- a folder or a file, absolute or relative (`weights/res34_fair_align_multi_7_20190809.pt`):
  pinned by a hash of its content, so changed weights are a new input, and recorded by name only,
  never by an absolute path;
- open_clip's `hf-hub:org/name[@revision]`: downloaded (config and weights) and pinned to its commit;
- a library's own model name (open_clip's `ViT-L-14-quickgelu`), resolved by that library when the
  model is loaded.

Anything else is a one-line error naming the input: "no such model", never "malformed repo id".
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.artifacts.store import LocalStore, Store, file_sha256, parse_ref
from pipelines.errors import ConfigError, StoreError

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".onnx", ".ckpt", ".dat")
# Weights a recipe names by file that no library downloads: where to get them (a run's preflight
# names the place when they are missing or not whole). FairFace publishes no checksums (its files are
# shared from a Google Drive folder only), so the preflight checks each file's torch header instead
# (`weights_file_problem`), and the lineage pins the files by their content hash.
FAIRFACE_WEIGHTS = (
    "FairFace's weights: download the folder linked from https://github.com/dchen236/FairFace#instructions-to-use-fairface"
    " (https://drive.google.com/drive/folders/1B2gAnEpJ6oC9sMkcwS8v5Wk8PtHycHOV) into the named folder"
)
WHERE_TO_GET = dict.fromkeys(
    ("res34_fair_align_multi_7_20190809.pt", "res34_fair_align_multi_4_20190809.pt",
     "fairface_alldata_20191111.pt", "fairface_alldata_4race_20191111.pt"),
    FAIRFACE_WEIGHTS,
)  # fmt: skip
KINDS = ("store", "hub", "folder", "file", "name")
# Weights files torch.save wrote, by their suffix: the preflight reads their header, not their tensors.
TORCH_CHECKPOINT_SUFFIXES = (".pt", ".pth")
# What torch.save's legacy format (FairFace's 2019 files) pickles first.
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def weights_file_problem(path: Path) -> str | None:
    """What is wrong with a weights file, judged from its size and header without loading its tensors:
    an empty file, or, for a torch checkpoint by its suffix, neither torch's zip format (a whole zip
    holding `data.pkl`) nor its legacy pickle format (which starts with torch's magic number). None:
    it looks whole. A legacy file cut short, or the weights of another network, pass: loading tells.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> (folder / "empty.pt").write_bytes(b""), (folder / "page.pt").write_bytes(b"<!DOCTYPE html>")
        (0, 15)
        >>> weights_file_problem(folder / "empty.pt"), weights_file_problem(folder / "page.pt")
        ('an empty file', 'not a torch checkpoint (15 bytes, an HTML page)')
    """
    import pickle
    import zipfile

    size = path.stat().st_size
    if size == 0:
        return "an empty file"
    if path.suffix not in TORCH_CHECKPOINT_SUFFIXES:
        return None
    with path.open("rb") as file:
        head = file.read(64)
        if head.startswith(b"\x80"):  # a pickle: the legacy format's first object is torch's magic number

            class NoGlobals(pickle.Unpickler):
                def find_class(self, module: str, name: str) -> Any:
                    raise pickle.UnpicklingError(f"{module}.{name}")

            file.seek(0)
            try:
                if NoGlobals(file).load() == _TORCH_LEGACY_MAGIC:
                    return None
            except Exception:  # noqa: BLE001 - any unpickling failure: not a checkpoint
                pass
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):
            return f"not a whole torch checkpoint ({size:,} bytes: a zip file cut short?)"
        if any(name == "data.pkl" or name.endswith("/data.pkl") for name in names):
            return None
        return "a zip file but not a torch checkpoint (no data.pkl)"
    page = ", an HTML page" if head.lstrip().lower().startswith((b"<!doctype", b"<html")) else ""
    return f"not a torch checkpoint ({size:,} bytes{page})"


@dataclass(frozen=True)
class ModelInput:
    """A resolved model input: what the user gave, how it was found, its pin and local path."""

    given: str
    kind: str  # one of KINDS
    pin: str  # what lineage and rows record
    path: Path | None = None  # None for a library name (the library resolves it)
    repo_id: str | None = None  # store and Hub inputs
    revision: str | None = None

    def __str__(self) -> str:
        return self.pin


def published_name(model: ModelInput) -> str | None:
    """The name a published card may give a model: its store or Hub repo id, the repo id of a Hugging
    Face cache snapshot (`models--org--name/snapshots/<revision>`), or None for any other folder or
    file, whose path belongs to one machine and means nothing on another.

    Example:
        >>> snapshot = Path("/c/models--BAAI--AltDiffusion-m9/snapshots/1f")
        >>> published_name(ModelInput("x", "folder", "folder:ab", snapshot))
        'BAAI/AltDiffusion-m9'
        >>> published_name(ModelInput("./mine", "folder", "folder:ab", Path("/home/me/mine"))) is None
        True
    """
    if model.repo_id:
        return model.repo_id
    if model.path is not None and model.path.parent.name == "snapshots":
        kind, _, name = model.path.parent.parent.name.partition("--")
        if kind in ("models", "datasets", "spaces") and "--" in name:
            return name.replace("--", "/", 1)
    return None


def content_hash(path: Path) -> str:
    """sha256 of a file, or of a folder's relative paths and file hashes; 16 hex digits."""
    if path.is_file():
        return file_sha256(path)[:16]
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
        digest.update(f"{file.relative_to(path).as_posix()}\0{file_sha256(file)}\0".encode())
    return digest.hexdigest()[:16]


def looks_like_path(spec: str) -> bool:
    """Whether a model input is written as a path (a weights suffix, a leading `/`, `./`, `~`, or two `/`s)."""
    return (
        spec.startswith(("/", "./", "../", "~"))
        or spec.endswith(WEIGHT_SUFFIXES)
        or spec.count("/") > 1
        or os.sep != "/"
        and os.sep in spec
    )


def resolve_model(
    spec: str,
    store: Store,
    *,
    namespace: str | None = None,
    what: str = "model",
    kinds: Iterable[str] = KINDS,
    is_library_name: Callable[[str], bool] | None = None,
    hub_files: Callable[[str, str], list[str] | None] | None = None,
    repo_type: str = "model",
    check: Callable[[Path], str | None] | None = None,
) -> ModelInput:
    """Finds a model input, in this order: a path, a library name, a store repo, a Hub repo.

    Args:
        spec (`str`): the input as given.
        store (`Store`): the study's store.
        what (`str`): the input's name, for errors (`classifier_model`).
        kinds (`Iterable[str]`): the forms this input may take.
        is_library_name (`Callable`, *optional*): whether a name belongs to a library (open_clip).
        hub_files (`Callable`, *optional*): given a Hub repo id and revision, the files to download
            (None: all), so a stage fetches only what it loads.
        repo_type (`str`): `model`, or `dataset` for a data source given the same ways (MAGBIG's files).
        check (`Callable`, *optional*): given the resolved folder or file, what is wrong with it for
            this stage (None: nothing), so a folder without a model is refused before any work.
    """
    found = _resolve(spec, store, namespace, what, tuple(kinds), is_library_name, hub_files, repo_type)
    problem = check(found.path) if check is not None and found.path is not None else None
    if problem:
        raise ConfigError(f"{what}={spec.strip()!r}: {problem}")
    return found


def _resolve(
    spec: str,
    store: Store,
    namespace: str | None,
    what: str,
    kinds: tuple[str, ...],
    is_library_name: Callable[[str], bool] | None,
    hub_files: Callable[[str, str], list[str] | None] | None,
    repo_type: str,
) -> ModelInput:
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"{what}: empty model input")
    spec = spec.strip()
    path = Path(spec).expanduser()
    try:
        found = path.exists()
    except OSError as err:  # inside a folder that cannot be searched
        raise ConfigError(f"{what}={spec!r}: cannot read {err.filename or path} ({err.strerror or err})") from None
    if found and ("folder" in kinds or "file" in kinds):
        if path.is_dir() and "folder" not in kinds:
            raise ConfigError(f"{what}={spec!r} is a folder; a weights file is expected")
        if path.is_file() and "file" not in kinds:
            raise ConfigError(f"{what}={spec!r} is a file; a model folder or repo is expected")
        kind = "folder" if path.is_dir() else "file"
        try:
            digest = content_hash(path)
        except OSError as err:  # a file or folder the user cannot read (permissions, an I/O error)
            raise ConfigError(f"{what}={spec!r}: cannot read {err.filename or path} ({err.strerror or err})") from None
        return ModelInput(spec, kind, f"{kind}:{path.resolve().name}@sha256:{digest}", path.resolve())
    if "name" in kinds and spec.startswith("hf-hub:"):
        # open_clip's Hub names: fetched here so the lineage pins the commit and a typo fails now.
        try:
            ref = parse_ref(spec.removeprefix("hf-hub:"))
        except StoreError:
            raise ConfigError(f"{what}={spec!r}: no such model (hf-hub: needs an org/name Hub id)") from None
        found = _from_hub(spec, ref.repo_id, ref.revision, what, open_clip_hub_files)
        return ModelInput(spec, "hub", f"hf-hub:{found.pin}", found.path, found.repo_id, found.revision)
    if "name" in kinds and is_library_name is not None and is_library_name(spec):
        return ModelInput(spec, "name", spec)
    if looks_like_path(spec):
        raise ConfigError(f"{what}={spec!r}: no such file or folder")
    try:
        ref = parse_ref(spec, namespace=namespace)
    except StoreError:
        raise ConfigError(
            f"{what}={spec!r}: no such model (not a file, a folder, a repo or a known model name)"
        ) from None
    if "store" in kinds and store.exists(ref.repo_id, repo_type):
        revision = store.revision_of(ref, repo_type)
        folder = store.resolve(f"{ref.repo_id}@{revision}", repo_type)
        return ModelInput(spec, "store", f"{ref.repo_id}@{revision}", folder, ref.repo_id, revision)
    if "hub" in kinds and isinstance(store, LocalStore) and "/" in spec.partition("@")[0]:
        return _from_hub(spec, ref.repo_id, ref.revision, what, hub_files, repo_type)
    where = f"the store ({store!r})" + (" or on the Hub" if "hub" in kinds else "")
    raise ConfigError(f"{what}={spec!r}: no such {repo_type} in {where}")


def _from_hub(
    spec: str,
    repo_id: str,
    revision: str,
    what: str,
    hub_files: Callable[[str, str], list[str] | None] | None,
    repo_type: str = "model",
) -> ModelInput:
    """Downloads (or finds in the Hugging Face cache) a Hub model, only the files it needs."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        files = hub_files(repo_id, revision) if hub_files else None
        folder = Path(snapshot_download(repo_id, repo_type=repo_type, revision=revision, allow_patterns=files))
    except (LocalEntryNotFoundError, OSError, HfHubHTTPError, StoreError) as err:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "false", "")
        reason = "offline and not in the Hugging Face cache" if offline else type(err).__name__
        raise ConfigError(
            f"{what}={spec!r}: no such {repo_type} (not a file, a folder or a store repo, and not downloadable "
            f"from the Hub: {reason})"
        ) from None
    # Snapshot folders are named by commit: the pin that makes the lineage exact.
    return ModelInput(spec, "hub", f"{repo_id}@{folder.name}", folder, repo_id, folder.name)


# diffusers' weight variants, written into the file name (`diffusion_pytorch_model.fp16.safetensors`).
WEIGHT_VARIANTS = ("fp16", "bf16", "fp32", "non_ema", "ema_only")


def variant_of(name: str) -> str | None:
    """The variant a weights file name carries (`a.fp16.safetensors`, `a.safetensors.index.fp16.json`)."""
    return next((part for part in Path(name).name.split(".")[1:] if part in WEIGHT_VARIANTS), None)


def diffusers_files(files: list[str], model_index: dict, safety_checker: bool = False) -> list[str]:
    """The files a diffusers pipeline loads: its components (the safety checker and its feature
    extractor only with `safety_checker`), safetensors over `.bin` where a component has both, and one
    variant of each weight: the pipeline loads the plain files, so a `fp16` or `non_ema` copy beside
    them is not fetched.

    Example:
        >>> index = {"unet": ["diffusers", "UNet2DConditionModel"], "safety_checker": ["x", "Y"]}
        >>> diffusers_files(["model_index.json", "unet/config.json", "unet/a.bin", "unet/a.safetensors",
        ...                  "safety_checker/model.bin", "README.md"], index)
        ['model_index.json', 'unet/a.safetensors', 'unet/config.json']
        >>> diffusers_files(["model_index.json", "unet/config.json", "unet/a.safetensors", "unet/a.fp16.safetensors",
        ...                  "unet/a.non_ema.bin"], index)
        ['model_index.json', 'unet/a.safetensors', 'unet/config.json']
        >>> diffusers_files(["unet/config.json", "unet/a.fp16.safetensors"], index)  # only a variant: that one
        ['model_index.json', 'unet/a.fp16.safetensors', 'unet/config.json']
        >>> diffusers_files(["unet/config.json", "unet/a.bin", "safety_checker/model.bin"], index, safety_checker=True)
        ['model_index.json', 'safety_checker/model.bin', 'unet/a.bin', 'unet/config.json']
    """
    skip = set() if safety_checker else {"safety_checker", "feature_extractor"}
    components = {
        name
        for name, value in model_index.items()
        if not name.startswith("_") and isinstance(value, list) and value[0]
    } - skip
    wanted = ["model_index.json"]
    for component in sorted(components):
        inside = [f for f in files if f.startswith(f"{component}/")]
        if any(f.endswith((".safetensors", ".bin")) and variant_of(f) is None for f in inside):
            inside = [f for f in inside if variant_of(f) is None]
        has_safetensors = any(f.endswith(".safetensors") for f in inside)
        for name in inside:
            if name.endswith(".bin") and has_safetensors:
                continue
            if name.endswith((".msgpack", ".h5", ".onnx", ".ckpt")) or "/" in name[len(component) + 1 :]:
                continue  # other frameworks' weights and nested variants
            wanted.append(name)
    return sorted(set(wanted))


OPEN_CLIP_FILES = ("open_clip_config.json", "open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def open_clip_hub_files(repo_id: str, revision: str) -> list[str]:
    """The files open_clip loads from an `hf-hub:` repo: its config and one weights file, safetensors
    over `.bin` when both exist (offline, whichever the cache holds)."""
    from huggingface_hub import HfApi

    try:
        files = set(HfApi().list_repo_files(repo_id, revision=revision))
    except Exception:  # noqa: BLE001 - offline: the cache decides
        return list(OPEN_CLIP_FILES)
    weights = (
        "open_clip_model.safetensors" if "open_clip_model.safetensors" in files else "open_clip_pytorch_model.bin"
    )
    return ["open_clip_config.json", weights]


def hub_pipeline_files(repo_id: str, revision: str, safety_checker: bool = False) -> list[str] | None:
    """The files of a Hub diffusers pipeline to download (None: the whole repo, e.g. offline)."""
    from huggingface_hub import HfApi, hf_hub_download

    try:
        index = json.loads(Path(hf_hub_download(repo_id, "model_index.json", revision=revision)).read_text())
        files = HfApi().list_repo_files(repo_id, revision=revision)
    except Exception:  # noqa: BLE001 - offline or not a pipeline: snapshot_download decides
        return None
    return diffusers_files(files, index, safety_checker)
