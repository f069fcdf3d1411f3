"""The artifact store: versioned repositories laid out exactly as Hub repositories.

One small interface, two backends:

- `LocalStore` (the default): a folder such as `./hub`, no account, no network. Revisions are
  content-addressed, immutable folders; `main` and tags are pointers kept in one JSON file that is
  replaced atomically under a file lock, so a push killed half way leaves nothing visible and two
  writers at once both land.
- `HubStore`: the Hugging Face Hub through `huggingface_hub.HfApi`; the token comes from the usual
  place (`HF_TOKEN` or `huggingface-cli login`) and is never printed.

`open_store()` picks the backend from arguments or the `T2I_BIAS_STORE` / `T2I_BIAS_STORE_ROOT`
environment variables.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

from pipelines.errors import StoreError

REPO_TYPES = ("dataset", "model", "space")
BACKENDS = ("local", "hub")
STORE_ENV = "T2I_BIAS_STORE"
STORE_ROOT_ENV = "T2I_BIAS_STORE_ROOT"
DEFAULT_STORE_ROOT = "./hub"

# Same rules as the Hub: letters, digits, '-', '_', '.'; no leading/trailing '-' or '.'; no '--' or '..'.
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_REPO_ID = re.compile(rf"^{_NAME}/{_NAME}$")
_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")


@dataclass(frozen=True)
class RepoRef:
    """A parsed `namespace/name@revision` reference."""

    repo_id: str
    revision: str = "main"

    def __str__(self) -> str:
        return f"{self.repo_id}@{self.revision}"


@dataclass
class HistoryEntry:
    """One revision of a repository, newest first in `history()`."""

    revision: str
    message: str
    created_at: str
    lineage: dict[str, Any] = field(default_factory=dict)


def validate_repo_id(repo_id: str) -> str:
    if not isinstance(repo_id, str) or not _REPO_ID.match(repo_id) or "--" in repo_id or ".." in repo_id:
        raise StoreError(
            f"malformed repo id {repo_id!r}: expected 'namespace/name' of letters, digits, '-', '_' or '.'"
        )
    return repo_id


def validate_repo_type(repo_type: str) -> str:
    if repo_type not in REPO_TYPES:
        raise StoreError(f"unknown repo type {repo_type!r}: allowed {', '.join(REPO_TYPES)}")
    return repo_type


def parse_ref(spec: str, namespace: str | None = None) -> RepoRef:
    """Parses `ns/name@rev`, `ns/name` (main) or, with a default namespace, `name@rev`.

    Example:
        >>> parse_ref("study/prompts@v1")
        RepoRef(repo_id='study/prompts', revision='v1')
        >>> parse_ref("prompts", namespace="study")
        RepoRef(repo_id='study/prompts', revision='main')
    """
    if not isinstance(spec, str) or not spec.strip():
        raise StoreError(f"malformed repo reference {spec!r}: expected 'namespace/name[@revision]'")
    repo_id, _, revision = spec.strip().partition("@")
    if "/" not in repo_id and namespace:
        repo_id = f"{namespace}/{repo_id}"
    validate_repo_id(repo_id)
    revision = revision or "main"
    if not _REF.match(revision):
        raise StoreError(f"malformed revision {revision!r} in {spec!r}")
    return RepoRef(repo_id, revision)


def lineage_of(folder: str | Path) -> dict[str, Any]:
    """The `lineage` block of a folder's card metadata, or `{}` when it has none."""
    card = Path(folder) / "README.md"
    if not card.is_file():
        return {}
    text = card.read_text(encoding="utf-8")
    match = re.match(r"^---\s*\n(.*?)\n---\s*\n", text, re.DOTALL)
    if not match:
        return {}
    metadata = yaml.safe_load(match.group(1)) or {}
    lineage = metadata.get("lineage") or {}
    return lineage if isinstance(lineage, dict) else {}


def content_revision(folder: str | Path) -> str:
    """A content hash of a folder: relative paths and file bytes, streamed (memory flat in size)."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()[:40]


class Store(Protocol):
    """What every stage needs of a store."""

    def push(self, folder: str | Path, repo_id: str, repo_type: str, message: str, tag: str | None = None) -> str: ...

    def resolve(self, spec: str | RepoRef, repo_type: str) -> Path: ...

    def revision_of(self, spec: str | RepoRef, repo_type: str) -> str: ...

    def revisions(self, repo_id: str, repo_type: str) -> list[str]: ...

    def tags(self, repo_id: str, repo_type: str) -> dict[str, str]: ...

    def history(self, repo_id: str, repo_type: str) -> list[HistoryEntry]: ...

    def exists(self, repo_id: str, repo_type: str) -> bool: ...


# ---------------------------------------------------------------------------------------------
# Local backend
# ---------------------------------------------------------------------------------------------


class LocalStore:
    """A folder of repositories: `<root>/<type>s/<namespace>/<name>/`.

    Each repository holds `revisions/<rev>/` (immutable, content-addressed folders that the stock
    loaders open as they are), `refs.json` (`main`, tags and the history with lineage) and a lock
    file. A push copies into a private staging folder, renames it into place (atomic on one file
    system), then rewrites `refs.json` atomically under the lock.
    """

    def __init__(self, root: str | Path = DEFAULT_STORE_ROOT):
        self.root = Path(root).resolve()

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    # -- layout -----------------------------------------------------------------------------
    def _repo_dir(self, repo_id: str, repo_type: str) -> Path:
        validate_repo_type(repo_type)
        validate_repo_id(repo_id)
        return self.root / f"{repo_type}s" / repo_id

    def _read_refs(self, repo_dir: Path) -> dict[str, Any]:
        refs = repo_dir / "refs.json"
        if not refs.is_file():
            return {"main": None, "tags": {}, "history": []}
        return json.loads(refs.read_text(encoding="utf-8"))

    def _write_refs(self, repo_dir: Path, refs: dict[str, Any]) -> None:
        tmp = repo_dir / f".refs.{os.getpid()}.{uuid.uuid4().hex}.tmp"
        tmp.write_text(json.dumps(refs, indent=1, sort_keys=True), encoding="utf-8")
        with tmp.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, repo_dir / "refs.json")

    @contextlib.contextmanager
    def _locked(self, repo_dir: Path) -> Iterator[None]:
        repo_dir.mkdir(parents=True, exist_ok=True)
        with (repo_dir / ".lock").open("a") as lock:
            # flock is released by the kernel when a holder dies, so a killed push never wedges the repo.
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _require(self, repo_id: str, repo_type: str) -> tuple[Path, dict[str, Any]]:
        repo_dir = self._repo_dir(repo_id, repo_type)
        refs = self._read_refs(repo_dir)
        if not refs["main"]:
            raise StoreError(f"unknown {repo_type} repo {repo_id!r} in {self.root}")
        return repo_dir, refs

    @staticmethod
    def _sweep_staging(staging: Path) -> None:
        """Removes staging folders of pushes whose process is gone (killed half way)."""
        if not staging.is_dir():
            return
        for leftover in staging.iterdir():
            pid = leftover.name.split("-", 1)[0]
            if pid.isdigit() and not _pid_alive(int(pid)):
                shutil.rmtree(leftover, ignore_errors=True)

    # -- interface --------------------------------------------------------------------------
    def push(self, folder: str | Path, repo_id: str, repo_type: str, message: str, tag: str | None = None) -> str:
        folder = Path(folder)
        if not folder.is_dir():
            raise StoreError(f"cannot push {folder}: not a folder")
        if tag is not None and (not _REF.match(tag) or tag == "main"):
            raise StoreError(f"malformed tag {tag!r}: letters, digits, '.', '_', '-', '/' and not 'main'")
        repo_dir = self._repo_dir(repo_id, repo_type)
        revision = content_revision(folder)
        target = repo_dir / "revisions" / revision
        staging = repo_dir / ".staging"
        repo_dir.mkdir(parents=True, exist_ok=True)
        self._sweep_staging(staging)
        if not target.is_dir():
            stage = staging / f"{os.getpid()}-{uuid.uuid4().hex}"
            shutil.copytree(folder, stage)
            for path in stage.rglob("*"):
                if path.is_file():
                    path.chmod(0o444)  # revisions are immutable; read-only makes accidents loud
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(stage, target)
            except OSError:
                # Another writer landed the same content first: theirs is identical, keep it.
                shutil.rmtree(stage, ignore_errors=True)
                if not target.is_dir():
                    raise
        with self._locked(repo_dir):
            refs = self._read_refs(repo_dir)
            changed = False
            if refs["main"] != revision:
                refs["history"].append(
                    asdict(
                        HistoryEntry(
                            revision=revision,
                            message=message,
                            created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                            lineage=lineage_of(target),
                        )
                    )
                )
                refs["main"] = revision
                changed = True
            if tag is not None and refs["tags"].get(tag) != revision:
                if tag in refs["tags"]:
                    raise StoreError(f"tag {tag!r} of {repo_id!r} already names revision {refs['tags'][tag]}")
                refs["tags"][tag] = revision
                changed = True
            if changed:
                self._write_refs(repo_dir, refs)
        return revision

    def tag(self, repo_id: str, repo_type: str, tag: str, revision: str = "main") -> str:
        """Names an existing revision with a tag; returns the revision."""
        repo_dir, _ = self._require(repo_id, repo_type)
        if not _REF.match(tag) or tag == "main":
            raise StoreError(f"malformed tag {tag!r}: letters, digits, '.', '_', '-', '/' and not 'main'")
        with self._locked(repo_dir):
            refs = self._read_refs(repo_dir)
            resolved = self._lookup(repo_id, repo_type, refs, revision)
            if refs["tags"].get(tag, resolved) != resolved:
                raise StoreError(f"tag {tag!r} of {repo_id!r} already names revision {refs['tags'][tag]}")
            refs["tags"][tag] = resolved
            self._write_refs(repo_dir, refs)
        return resolved

    def _lookup(self, repo_id: str, repo_type: str, refs: dict[str, Any], revision: str) -> str:
        if revision == "main":
            return refs["main"]
        if revision in refs["tags"]:
            return refs["tags"][revision]
        known = {entry["revision"] for entry in refs["history"]}
        if re.fullmatch(r"[0-9a-f]{7,40}", revision):
            matches = sorted(rev for rev in known if rev.startswith(revision))
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise StoreError(f"ambiguous revision {revision!r} of {repo_type} {repo_id!r}: use more digits")
        raise StoreError(
            f"unknown revision or tag {revision!r} of {repo_type} {repo_id!r} "
            f"(tags: {', '.join(sorted(refs['tags'])) or 'none'})"
        )

    def revision_of(self, spec: str | RepoRef, repo_type: str) -> str:
        ref = spec if isinstance(spec, RepoRef) else parse_ref(spec)
        _, refs = self._require(ref.repo_id, repo_type)
        return self._lookup(ref.repo_id, repo_type, refs, ref.revision)

    def resolve(self, spec: str | RepoRef, repo_type: str) -> Path:
        ref = spec if isinstance(spec, RepoRef) else parse_ref(spec)
        repo_dir, refs = self._require(ref.repo_id, repo_type)
        return repo_dir / "revisions" / self._lookup(ref.repo_id, repo_type, refs, ref.revision)

    def revisions(self, repo_id: str, repo_type: str) -> list[str]:
        return [entry.revision for entry in self.history(repo_id, repo_type)]

    def tags(self, repo_id: str, repo_type: str) -> dict[str, str]:
        return dict(self._require(repo_id, repo_type)[1]["tags"])

    def history(self, repo_id: str, repo_type: str) -> list[HistoryEntry]:
        _, refs = self._require(repo_id, repo_type)
        return [HistoryEntry(**entry) for entry in reversed(refs["history"])]

    def exists(self, repo_id: str, repo_type: str) -> bool:
        return bool(self._read_refs(self._repo_dir(repo_id, repo_type))["main"])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------------------------------------
# Hugging Face Hub backend
# ---------------------------------------------------------------------------------------------


class HubStore:
    """The Hugging Face Hub. Calls six `HfApi` methods and `snapshot_download`, nothing else.

    Lineage travels in each commit's description as JSON, so `history()` needs no card downloads.
    """

    def __init__(self, api: Any = None, download: Any = None):
        if api is None:
            from huggingface_hub import HfApi

            api = HfApi()  # token from HF_TOKEN or the saved login; never passed on a command line
        if download is None:
            from huggingface_hub import snapshot_download as download
        self.api = api
        self._download = download

    def __repr__(self) -> str:
        return "HubStore()"

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

        try:
            yield
        except RevisionNotFoundError:
            raise StoreError(f"unknown revision or tag of {what} on the Hub") from None
        except (RepositoryNotFoundError, EntryNotFoundError):
            raise StoreError(f"unknown {what} on the Hub (or no access with the current token)") from None

    def push(self, folder: str | Path, repo_id: str, repo_type: str, message: str, tag: str | None = None) -> str:
        validate_repo_type(repo_type)
        validate_repo_id(repo_id)
        folder = Path(folder)
        if not folder.is_dir():
            raise StoreError(f"cannot push {folder}: not a folder")
        self.api.create_repo(repo_id, repo_type=repo_type, exist_ok=True)
        # One commit per push: the Hub applies it atomically, and an unchanged folder makes no commit.
        info = self.api.upload_folder(
            repo_id=repo_id,
            repo_type=repo_type,
            folder_path=str(folder),
            commit_message=message,
            commit_description=json.dumps({"lineage": lineage_of(folder)}, sort_keys=True),
            delete_patterns="*",
        )
        revision = info.oid
        if tag is not None:
            self.api.create_tag(repo_id, repo_type=repo_type, tag=tag, revision=revision, exist_ok=True)
        return revision

    def resolve(self, spec: str | RepoRef, repo_type: str) -> Path:
        ref = spec if isinstance(spec, RepoRef) else parse_ref(spec)
        validate_repo_type(repo_type)
        with self._errors(f"{repo_type} {str(ref)!r}"):
            return Path(self._download(ref.repo_id, repo_type=repo_type, revision=ref.revision))

    def revision_of(self, spec: str | RepoRef, repo_type: str) -> str:
        ref = spec if isinstance(spec, RepoRef) else parse_ref(spec)
        if ref.revision == "main" or ref.revision in self.tags(ref.repo_id, repo_type):
            refs = self._refs(ref.repo_id, repo_type)
            names = {b.name: b.target_commit for b in refs.branches} | {t.name: t.target_commit for t in refs.tags}
            return names[ref.revision]
        return self.resolve(ref, repo_type).name  # snapshot folders are named by commit sha

    def _refs(self, repo_id: str, repo_type: str) -> Any:
        validate_repo_type(repo_type)
        validate_repo_id(repo_id)
        with self._errors(f"{repo_type} {repo_id!r}"):
            return self.api.list_repo_refs(repo_id, repo_type=repo_type)

    def revisions(self, repo_id: str, repo_type: str) -> list[str]:
        return [entry.revision for entry in self.history(repo_id, repo_type)]

    def tags(self, repo_id: str, repo_type: str) -> dict[str, str]:
        return {t.name: t.target_commit for t in self._refs(repo_id, repo_type).tags}

    def history(self, repo_id: str, repo_type: str) -> list[HistoryEntry]:
        validate_repo_type(repo_type)
        validate_repo_id(repo_id)
        with self._errors(f"{repo_type} {repo_id!r}"):
            commits = self.api.list_repo_commits(repo_id, repo_type=repo_type)
        entries = []
        for commit in commits:
            # The description holds the lineage JSON; tolerate a message that repeats the title before it.
            text = commit.message or ""
            try:
                lineage = json.loads(text[text.find("{") :]).get("lineage", {}) if "{" in text else {}
            except (json.JSONDecodeError, AttributeError):
                lineage = {}
            created = commit.created_at
            entries.append(
                HistoryEntry(
                    revision=commit.commit_id,
                    message=commit.title,
                    created_at=created.isoformat() if hasattr(created, "isoformat") else str(created),
                    lineage=lineage,
                )
            )
        return entries

    def exists(self, repo_id: str, repo_type: str) -> bool:
        try:
            self._refs(repo_id, repo_type)
        except StoreError:
            return False
        return True


def open_store(backend: str | None = None, root: str | Path | None = None) -> Store:
    """The store named by the arguments, else by `T2I_BIAS_STORE` (`local` or `hub`)."""
    backend = backend or os.environ.get(STORE_ENV) or "local"
    if backend == "local":
        return LocalStore(root or os.environ.get(STORE_ROOT_ENV) or DEFAULT_STORE_ROOT)
    if backend == "hub":
        return HubStore()
    raise StoreError(f"unknown store backend {backend!r}: allowed {', '.join(BACKENDS)}")
