"""The artifact store: versioned repositories laid out exactly as Hub repositories.

One small interface, two backends:

- `LocalStore` (the default): a folder such as `./hub` in the layout of the Hugging Face cache
  (`datasets--ns--name/{refs,snapshots,blobs}`), so `huggingface_hub.snapshot_download(...,
  cache_dir="./hub", local_files_only=True)` and `DiffusionPipeline.from_pretrained(...,
  cache_dir="./hub")` read it as they read a download. Revisions are content-addressed, immutable
  snapshots; `main` and tags are `refs/` files written atomically under a file lock, so a push
  killed half way leaves nothing visible and two writers at once both land.
- `HubStore`: the Hugging Face Hub through `huggingface_hub.HfApi`; the token comes from the usual
  place (`HF_TOKEN` or `huggingface-cli login`) and is never printed.

`open_store()` picks the backend from arguments or the `T2I_BIAS_STORE` / `T2I_BIAS_STORE_ROOT`
environment variables. `python -m pipelines.artifacts.store gc` reports and removes what failed
pushes and killed runs left behind.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, Protocol

import yaml

from pipelines.artifacts.workspace import pid_alive
from pipelines.errors import StoreError

REPO_TYPES = ("dataset", "model", "space")
BACKENDS = ("local", "hub")
STORE_ENV = "T2I_BIAS_STORE"
STORE_ROOT_ENV = "T2I_BIAS_STORE_ROOT"
DEFAULT_STORE_ROOT = "./hub"
WORK_DIR = ".work"  # stages' unfinished work, under the local store root

# Same rules as the Hub: letters, digits, '-', '_', '.'; no leading/trailing '-' or '.'; no '--' or '..'.
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_REPO_ID = re.compile(rf"^{_NAME}/{_NAME}$")
_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


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


# `refs/pinned/<revision>`: a revision that another artifact of the store was made from (its lineage
# names it). As a ref, Hugging Face's cache tools count it as used: `hf cache prune` removes only the
# detached revisions nobody pins, never an input of a published result.
PINNED_REFS = "pinned"


def validate_tag(tag: str) -> str:
    reserved = tag == "main" or tag.startswith(PINNED_REFS + "/") if isinstance(tag, str) else False
    if not isinstance(tag, str) or not _REF.match(tag) or reserved or ".." in tag or _COMMIT.match(tag):
        raise StoreError(
            f"malformed tag {tag!r}: letters, digits, '.', '_', '-', '/', not 'main', not starting "
            f"'{PINNED_REFS}/' and not a revision id"
        )
    return tag


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
    if not _REF.match(revision) or ".." in revision:
        raise StoreError(f"malformed revision {revision!r} in {spec!r}")
    return RepoRef(repo_id, revision)


def card_metadata(folder: str | Path) -> dict[str, Any]:
    """The YAML metadata of a folder's `README.md` card, or `{}` when it has none."""
    card = Path(folder) / "README.md"
    if not card.is_file():
        return {}
    try:
        text = card.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        problem = "is not UTF-8 text" if isinstance(err, UnicodeDecodeError) else f"cannot be read ({err.strerror})"
        folder = card.parent
        if folder.parent.name == "snapshots":  # a revision of a store (or of the Hugging Face cache)
            raise StoreError(
                f"the store is damaged: {folder.parent.parent.name}/snapshots/{folder.name[:12]}/README.md "
                f"{problem} (edited or overwritten?); a card is UTF-8 Markdown"
            ) from None
        raise StoreError(f"{card}: {problem}; a card is UTF-8 Markdown") from None
    match = re.match(r"^---\s*\n(.*?)\n---\s*\n", text, re.DOTALL)
    if not match:
        return {}
    try:
        metadata = yaml.safe_load(match.group(1)) or {}
    except yaml.YAMLError:
        return {}
    return metadata if isinstance(metadata, dict) else {}


def lineage_of(folder: str | Path) -> dict[str, Any]:
    """The `lineage` block of a folder's card metadata, or `{}` when it has none."""
    lineage = card_metadata(folder).get("lineage") or {}
    return lineage if isinstance(lineage, dict) else {}


def _files(folder: Path, ignore: Iterable[str] = ()) -> list[Path]:
    """The files of a folder, sorted, without those whose relative path matches an `ignore` pattern."""
    patterns = list(ignore)
    found = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if path.is_dir() or any(fnmatch(relative, p) or fnmatch(relative.split("/")[0], p) for p in patterns):
            continue
        found.append(path)
    return found


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def content_revision(folder: str | Path, ignore: Iterable[str] = ()) -> str:
    """A content hash of a folder: relative paths and file bytes, streamed (memory flat in size)."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for path in _files(folder, ignore):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()[:40]


class Store(Protocol):
    """What every stage needs of a store."""

    def push(
        self,
        folder: str | Path,
        repo_id: str,
        repo_type: str,
        message: str,
        tag: str | None = None,
        ignore: Iterable[str] = (),
    ) -> str: ...

    def resolve(self, spec: str | RepoRef, repo_type: str) -> Path: ...

    def revision_of(self, spec: str | RepoRef, repo_type: str) -> str: ...

    def revisions(self, repo_id: str, repo_type: str) -> list[str]: ...

    def tags(self, repo_id: str, repo_type: str) -> dict[str, str]: ...

    def tag(self, repo_id: str, repo_type: str, tag: str, revision: str = "main") -> str: ...

    def history(self, repo_id: str, repo_type: str) -> list[HistoryEntry]: ...

    def exists(self, repo_id: str, repo_type: str) -> bool: ...

    def repos(self, namespace: str, repo_type: str) -> list[str]: ...


# ---------------------------------------------------------------------------------------------
# Local backend: the Hugging Face cache layout
# ---------------------------------------------------------------------------------------------


def repo_folder_name(repo_id: str, repo_type: str) -> str:
    """`datasets--ns--name`, as `huggingface_hub` names a cached repository."""
    return f"{repo_type}s--{repo_id.replace('/', '--')}"


class LocalStore:
    """A folder of repositories in the Hugging Face cache layout.

    `<root>/<type>s--<ns>--<name>/` holds `snapshots/<rev>/` (one immutable, content-addressed
    folder per revision, its files read-only links into `blobs/<sha256>`, so revisions that share
    files share bytes), `refs/main`, `refs/<tag>` and `refs/pinned/<rev>` (a revision another
    artifact was made from; cache tools then keep it), a revision id each, and the toolkit's own
    `history.json` (every revision with its message and lineage), `.lock` and `.staging/`. A push
    writes blobs and a staging folder, then, holding the lock, renames the staging folder into
    `snapshots/` and rewrites the refs atomically: a push killed half way leaves the previous
    revision and nothing partial visible, and the next push sweeps what it left.
    """

    HISTORY = "history.json"

    def __init__(self, root: str | Path = DEFAULT_STORE_ROOT):
        self.root = Path(root).resolve()
        for path in (self.root, *self.root.parents):  # the root, or a folder it would be made in
            try:
                found = path.exists()
            except OSError as err:  # inside a folder that cannot be searched
                raise StoreError(f"store root {str(self.root)!r} cannot be read: {err.strerror or err}") from None
            if found:
                if not path.is_dir():
                    raise StoreError(f"store root {str(self.root)!r}: {str(path)!r} is a file, not a folder")
                break

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    # -- layout -----------------------------------------------------------------------------
    def _repo_dir(self, repo_id: str, repo_type: str) -> Path:
        validate_repo_type(repo_type)
        validate_repo_id(repo_id)
        return self.root / repo_folder_name(repo_id, repo_type)

    def _history(self, repo_dir: Path) -> list[dict[str, Any]]:
        path = repo_dir / self.HISTORY
        try:
            history = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
        except (ValueError, UnicodeDecodeError):  # JSONDecodeError is a ValueError
            history = None
        except OSError as err:
            raise StoreError(self._unreadable(err, path)) from None
        if not isinstance(history, list) or not all(isinstance(e, dict) and "revision" in e for e in history):
            raise StoreError(
                f"the store is damaged: {repo_dir.name}/{self.HISTORY} is not a list of revisions (edited or cut "
                "short?); its snapshots/ and refs/ still hold every revision"
            )
        return history

    def _ref(self, repo_dir: Path, name: str) -> str | None:
        """The revision a ref names (None: no such ref). A ref file that names no snapshot of the repo
        (cut short, overwritten, edited by hand) is a damaged store, said as such, never read as an
        unknown tag."""
        path = repo_dir / "refs" / name
        try:
            if not path.is_file():
                return None
            revision = path.read_text(encoding="utf-8").strip()
        except UnicodeDecodeError:
            revision = ""
        except OSError as err:  # an unreadable root or repo is not a damaged one: say which and why
            raise StoreError(self._unreadable(err, path)) from None
        if not re.fullmatch(r"[0-9a-f]{40}", revision) or not (repo_dir / "snapshots" / revision).is_dir():
            raise StoreError(
                f"the store is damaged: {repo_dir.name}/refs/{name} names no revision of the repo "
                f"({revision[:40]!r}); its history.json lists every revision it had"
            )
        return revision

    def _unreadable(self, err: OSError, path: Path) -> str:
        """The line for a store file the file system refuses to read (permissions, an I/O error)."""
        try:
            where = Path(err.filename or path).relative_to(self.root).as_posix() or "."
        except ValueError:
            where = str(err.filename or path)
        return f"store {str(self.root)!r} cannot be read: {where}: {err.strerror or err}"

    def _tags(self, repo_dir: Path) -> dict[str, str]:
        refs = repo_dir / "refs"
        try:
            return self._read_tags(refs)
        except OSError as err:
            raise StoreError(self._unreadable(err, refs)) from None

    def _read_tags(self, refs: Path) -> dict[str, str]:
        if not refs.is_dir():
            return {}
        return {
            path.relative_to(refs).as_posix(): path.read_text(encoding="utf-8").strip()
            for path in sorted(refs.rglob("*"))
            if path.is_file()
            and not path.name.startswith(".")
            and path.relative_to(refs).as_posix() != "main"
            and path.relative_to(refs).parts[0] != PINNED_REFS
        }

    def pinned(self, repo_id: str, repo_type: str) -> set[str]:
        """The revisions of a repo that other artifacts of the store were made from."""
        folder = self._repo_dir(repo_id, repo_type) / "refs" / PINNED_REFS
        return {path.name for path in folder.iterdir() if not path.name.startswith(".")} if folder.is_dir() else set()

    def _pin_inputs(self, lineage: dict[str, Any]) -> None:
        """Writes `refs/pinned/<rev>` into each input repo of this store that `lineage` names by revision."""
        inputs = lineage.get("inputs") if isinstance(lineage.get("inputs"), dict) else {}
        for spec in inputs.values():
            repo_id, _, revision = str(spec).partition("@")
            if not re.fullmatch(r"[0-9a-f]{40}", revision):
                continue
            for repo_type in REPO_TYPES:
                try:
                    repo_dir = self._repo_dir(repo_id, repo_type)
                except StoreError:
                    break  # not a repo id of this store (a folder, a Hub id of another form)
                if (repo_dir / "snapshots" / revision).is_dir():
                    with self._locked(repo_dir):
                        self._write_atomic(repo_dir / "refs" / PINNED_REFS / revision, revision)

    @staticmethod
    def _write_atomic(path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
        try:
            with tmp.open("w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    @contextlib.contextmanager
    def _locked(self, repo_dir: Path) -> Iterator[None]:
        try:
            repo_dir.mkdir(parents=True, exist_ok=True)
            handle = (repo_dir / ".lock").open("a")
        except OSError as err:  # a read-only or unreadable root: one line, nothing written
            raise StoreError(
                f"store {str(self.root)!r} is not writable ({err.strerror or err}): cannot lock {repo_dir.name}"
            ) from None
        with handle as lock:
            # flock is released by the kernel when a holder dies, so a killed push never wedges the repo.
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _check_tag(self, repo_dir: Path, repo_id: str, tag: str | None, revision: str) -> str | None:
        """The revision `tag` names now (None if none); refused when it names another than `revision`."""
        current = self._ref(repo_dir, tag) if tag is not None else None
        if current is not None and current != revision:
            raise StoreError(f"tag {tag!r} of {repo_id!r} already names revision {current}")
        return current

    def _require(self, repo_id: str, repo_type: str) -> Path:
        repo_dir = self._repo_dir(repo_id, repo_type)
        if not self._ref(repo_dir, "main"):
            raise StoreError(f"unknown {repo_type} repo {repo_id!r} in {self.root}")
        return repo_dir

    # -- interface --------------------------------------------------------------------------
    def push(
        self,
        folder: str | Path,
        repo_id: str,
        repo_type: str,
        message: str,
        tag: str | None = None,
        ignore: Iterable[str] = (),
    ) -> str:
        """Publishes a folder as the new `main` (and `tag`); files matching `ignore` stay out."""
        folder = Path(folder)
        if not folder.is_dir():
            raise StoreError(f"cannot push {folder}: not a folder")
        if tag is not None:
            validate_tag(tag)
        repo_dir = self._repo_dir(repo_id, repo_type)
        files = _files(folder, ignore)
        revision = content_revision(folder, ignore)
        try:
            # The tag is checked before the pins are written (and again under the lock, in `_push`):
            # a refused push changes nothing.
            self._check_tag(repo_dir, repo_id, tag, revision)
            # Inputs are pinned next: a pin left by a push that then fails only keeps a revision.
            self._pin_inputs(lineage_of(folder))
            return self._push(folder, files, repo_dir, revision, message, tag, repo_id)
        except OSError as err:
            if err.errno == errno.ENOSPC:
                raise StoreError(
                    f"no space left on the device of {self.root} while pushing {repo_id}: the store is unchanged"
                ) from None
            if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise StoreError(
                    f"store {str(self.root)!r} is not writable ({err.strerror}): nothing was published"
                ) from None
            # Any other reason the file system refuses (a root that cannot be made, in /proc, say).
            raise StoreError(
                f"store {str(self.root)!r}: {err.strerror or err} ({err.filename}): nothing was published"
            ) from None

    def _push(
        self,
        folder: Path,
        files: list[Path],
        repo_dir: Path,
        revision: str,
        message: str,
        tag: str | None,
        repo_id: str,
    ) -> str:
        target = repo_dir / "snapshots" / revision
        staging = repo_dir / ".staging" / f"{os.getpid()}-{uuid.uuid4().hex}"
        try:
            if not target.is_dir():
                self._stage(folder, files, repo_dir, staging)
            with self._locked(repo_dir):
                for path in self.garbage(repo_dir):
                    _force_unlink(path)
                history = self._history(repo_dir)
                # Every check before any write: a refused tag leaves `main` and the history as they were.
                current_tag = self._check_tag(repo_dir, repo_id, tag, revision)
                if not target.is_dir():
                    self._restore_blobs(folder, staging)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.rename(staging, target)
                try:
                    main = self._ref(repo_dir, "main")
                except StoreError:
                    main = None  # a damaged `main` is replaced by this push
                if main != revision:
                    entry = HistoryEntry(
                        revision=revision,
                        message=message,
                        created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        lineage=lineage_of(target),
                    )
                    # History first: a revision named by a ref is always in the history.
                    self._write_atomic(repo_dir / self.HISTORY, json.dumps([*history, asdict(entry)], indent=1))
                    self._write_atomic(repo_dir / "refs" / "main", revision)
                if tag is not None and current_tag is None:
                    self._write_atomic(repo_dir / "refs" / tag, revision)
        except BaseException:
            # A failed push (a full disk, say) leaves the store as it was: its staging folder, and the
            # blobs and snapshot it added that no revision uses, are removed now, not at the next push.
            shutil.rmtree(staging, ignore_errors=True)
            with contextlib.suppress(OSError), self._locked(repo_dir):
                for path in self.garbage(repo_dir):
                    _force_unlink(path)
            raise
        return revision

    def _stage(self, folder: Path, files: list[Path], repo_dir: Path, staging: Path) -> None:
        """Links each file from a staging folder to its blob in `blobs/` (copied once per content)."""
        (repo_dir / "blobs").mkdir(parents=True, exist_ok=True)
        for path in files:
            link = staging / path.relative_to(folder)
            link.parent.mkdir(parents=True, exist_ok=True)
            blob = repo_dir / "blobs" / file_sha256(path)
            # The staging folder sits as deep in the repo as snapshots/<rev>, so relative links stay true.
            # The link comes first: a blob that a live staging folder links to is never swept.
            os.symlink(os.path.relpath(blob, link.parent), link)
            self._copy_blob(path, blob)

    @staticmethod
    def _copy_blob(path: Path, blob: Path) -> None:
        if blob.is_file():
            return
        tmp = blob.with_name(f".{blob.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
        try:
            shutil.copyfile(path, tmp)
            tmp.chmod(0o444)  # revisions are immutable; read-only makes accidents loud
            os.replace(tmp, blob)
        finally:
            tmp.unlink(missing_ok=True)

    def _restore_blobs(self, folder: Path, staging: Path) -> None:
        """Copies again any blob a sweep removed between staging and taking the lock (called with it)."""
        for link in (p for p in staging.rglob("*") if p.is_symlink()):
            blob = (link.parent / os.readlink(link)).resolve()
            self._copy_blob(folder / link.relative_to(staging), blob)

    def garbage(self, repo_dir: Path) -> list[Path]:
        """What failed pushes left in one repo: dead staging folders and temp files, snapshots no ref
        names, blobs no snapshot or live staging folder links to. Call it holding the lock: pushes
        rename and write refs only under it, so nothing found is half way through a live push."""
        found: list[Path] = []
        live: list[Path] = []
        # Blobs are listed before any link is read: a blob listed here was written after its link
        # (see `_stage`), so a live staging folder's link to it is seen below.
        blobs = repo_dir / "blobs"
        listed = [b for b in blobs.iterdir() if not b.name.startswith(".")] if blobs.is_dir() else []
        staging = repo_dir / ".staging"
        for folder in staging.iterdir() if staging.is_dir() else []:
            pid = folder.name.split("-", 1)[0]
            (live if pid.isdigit() and pid_alive(int(pid)) else found).append(folder)
        for tmp in [*repo_dir.glob(".*.tmp"), *repo_dir.glob("refs/**/.*.tmp"), *repo_dir.glob("blobs/.*.tmp")]:
            pid = tmp.name.split(".")[-3] if tmp.name.count(".") >= 3 else ""
            if not (pid.isdigit() and pid_alive(int(pid))):
                found.append(tmp)
        known = {entry["revision"] for entry in self._history(repo_dir)}
        snapshots = repo_dir / "snapshots"
        for snapshot in snapshots.iterdir() if snapshots.is_dir() else []:
            (live if snapshot.name in known else found).append(snapshot)
        used = {os.path.basename(os.readlink(p)) for folder in live for p in folder.rglob("*") if p.is_symlink()}
        found += [blob for blob in listed if blob.name not in used]
        return found

    def tag(self, repo_id: str, repo_type: str, tag: str, revision: str = "main") -> str:
        """Names an existing revision with a tag; returns the revision."""
        repo_dir = self._require(repo_id, repo_type)
        validate_tag(tag)
        with self._locked(repo_dir):
            resolved = self._lookup(repo_id, repo_type, repo_dir, revision)
            current = self._ref(repo_dir, tag)
            if current not in (None, resolved):
                raise StoreError(f"tag {tag!r} of {repo_id!r} already names revision {current}")
            self._write_atomic(repo_dir / "refs" / tag, resolved)
        return resolved

    def _lookup(self, repo_id: str, repo_type: str, repo_dir: Path, revision: str) -> str:
        named = self._ref(repo_dir, revision)
        if named:
            return named
        known = [entry["revision"] for entry in self._history(repo_dir)]
        if re.fullmatch(r"[0-9a-f]{7,40}", revision):
            matches = sorted({rev for rev in known if rev.startswith(revision)})
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise StoreError(f"ambiguous revision {revision!r} of {repo_type} {repo_id!r}: use more digits")
        raise StoreError(
            f"unknown revision or tag {revision!r} of {repo_type} {repo_id!r} "
            f"(tags: {', '.join(sorted(self._tags(repo_dir))) or 'none'})"
        )

    def revision_of(self, spec: str | RepoRef, repo_type: str) -> str:
        ref = spec if isinstance(spec, RepoRef) else parse_ref(spec)
        return self._lookup(ref.repo_id, repo_type, self._require(ref.repo_id, repo_type), ref.revision)

    def resolve(self, spec: str | RepoRef, repo_type: str) -> Path:
        ref = spec if isinstance(spec, RepoRef) else parse_ref(spec)
        repo_dir = self._require(ref.repo_id, repo_type)
        return repo_dir / "snapshots" / self._lookup(ref.repo_id, repo_type, repo_dir, ref.revision)

    def revisions(self, repo_id: str, repo_type: str) -> list[str]:
        return [entry.revision for entry in self.history(repo_id, repo_type)]

    def tags(self, repo_id: str, repo_type: str) -> dict[str, str]:
        return self._tags(self._require(repo_id, repo_type))

    def history(self, repo_id: str, repo_type: str) -> list[HistoryEntry]:
        repo_dir = self._require(repo_id, repo_type)
        return [HistoryEntry(**entry) for entry in reversed(self._history(repo_dir))]

    def exists(self, repo_id: str, repo_type: str) -> bool:
        return bool(self._ref(self._repo_dir(repo_id, repo_type), "main"))

    def repos(self, namespace: str, repo_type: str) -> list[str]:
        """The repos of one type under a namespace."""
        validate_repo_type(repo_type)
        prefix = f"{repo_type}s--{namespace}--"
        try:
            if not self.root.is_dir():
                return []
            return sorted(
                f"{namespace}/{path.name[len(prefix) :]}"
                for path in self.root.iterdir()
                if path.name.startswith(prefix) and (path / "refs" / "main").is_file()
            )
        except OSError as err:
            raise StoreError(self._unreadable(err, self.root)) from None


def _force_unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()


# ---------------------------------------------------------------------------------------------
# Hugging Face Hub backend
# ---------------------------------------------------------------------------------------------


class HubStore:
    """The Hugging Face Hub. Calls eight `HfApi` methods and `snapshot_download`, nothing else.

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
        import huggingface_hub.errors
        from huggingface_hub.errors import (
            EntryNotFoundError,
            HfHubHTTPError,
            LocalEntryNotFoundError,
            OfflineModeIsEnabled,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        # The HTTP client's own errors (no network, a timeout) are not OSErrors.
        transport_error = getattr(huggingface_hub.errors, "HTTPError", OSError)
        try:
            yield
        except OfflineModeIsEnabled:
            raise StoreError(
                f"cannot reach the Hub for {what}: HF_HUB_OFFLINE is set (unset it, or use --store local)"
            ) from None
        except RevisionNotFoundError:
            raise StoreError(f"unknown revision or tag of {what} on the Hub") from None
        except LocalEntryNotFoundError:  # before EntryNotFoundError, which it subclasses
            raise StoreError(f"{what} is not in the local Hugging Face cache and the Hub is not reachable") from None
        except (RepositoryNotFoundError, EntryNotFoundError):
            raise StoreError(f"unknown {what} on the Hub (or no access with the current token)") from None
        except HfHubHTTPError as err:
            # The status and the first line of the reason; never the request (its headers hold the
            # token), and the token struck out should a server echo it back.
            status = getattr(getattr(err, "response", None), "status_code", "?")
            reason = redact(str(err).splitlines()[0][:200])
            raise StoreError(f"the Hub refused {what} (HTTP {status}): {reason}") from None
        except (OSError, transport_error) as err:  # no network, a proxy, a cache folder that cannot be written
            reason = redact(str(err).splitlines()[0][:200]) if str(err) else type(err).__name__
            raise StoreError(f"cannot get {what} from the Hub: {reason}") from None

    def check_can_push(self, repo_id: str, repo_type: str) -> None:
        """Refuses, before any expensive work, a push that cannot happen: the Hub offline, no token, a
        read-only token, or a repo of someone else's that the token cannot write to."""
        from huggingface_hub import constants

        validate_repo_type(repo_type)
        validate_repo_id(repo_id)
        if constants.HF_HUB_OFFLINE:
            raise StoreError(f"cannot push to {repo_type} {repo_id!r}: the Hub is offline (HF_HUB_OFFLINE is set)")
        from huggingface_hub import get_token

        if getattr(self.api, "token", None) is None and get_token() is None:
            raise StoreError(
                f"cannot push to {repo_type} {repo_id!r}: no Hugging Face token (set HF_TOKEN or run `hf auth login`)"
            )
        with self._errors("the token"):
            me = self.api.whoami()
        role = me.get("auth", {}).get("accessToken", {}).get("role")
        if role == "read":
            raise StoreError(f"cannot push to {repo_type} {repo_id!r}: the Hugging Face token is read-only")
        owner = repo_id.split("/")[0]
        if owner != me.get("name") and owner not in {org.get("name") for org in me.get("orgs", [])}:
            raise StoreError(f"cannot push to {repo_type} {repo_id!r}: the token's user {me.get('name')!r} is not "
                             f"{owner!r} nor one of its organisations")  # fmt: skip

    def push(
        self,
        folder: str | Path,
        repo_id: str,
        repo_type: str,
        message: str,
        tag: str | None = None,
        ignore: Iterable[str] = (),
    ) -> str:
        validate_repo_type(repo_type)
        validate_repo_id(repo_id)
        if tag is not None:
            validate_tag(tag)
        folder = Path(folder)
        if not folder.is_dir():
            raise StoreError(f"cannot push {folder}: not a folder")
        if tag is not None and self.exists(repo_id, repo_type):
            # Checked before the upload, which moves `main`: the commit's id is known only after it, so
            # a tag that names any revision already is refused (a rerun that makes the same artifact
            # reuses it and never pushes).
            current = self.tags(repo_id, repo_type).get(tag)
            if current is not None:
                raise StoreError(f"tag {tag!r} of {repo_id!r} already names revision {current}")
        with self._errors(f"{repo_type} {repo_id!r}"):
            self.api.create_repo(repo_id, repo_type=repo_type, exist_ok=True)
            # One commit per push: the Hub applies it atomically, and an unchanged folder makes no commit.
            info = self.api.upload_folder(
                repo_id=repo_id,
                repo_type=repo_type,
                folder_path=str(folder),
                commit_message=message,
                commit_description=json.dumps({"lineage": lineage_of(folder)}, sort_keys=True),
                ignore_patterns=list(ignore) or None,
                delete_patterns="*",
            )
            revision = info.oid
            if tag is not None:
                self.api.create_tag(repo_id, repo_type=repo_type, tag=tag, revision=revision, exist_ok=False)
        return revision

    def tag(self, repo_id: str, repo_type: str, tag: str, revision: str = "main") -> str:
        """Names an existing revision with a tag; returns the revision. A tag that names another
        revision already is refused, never moved or kept silently."""
        validate_tag(tag)
        # A commit id is taken as it is: `revision_of` would download its snapshot to read its name.
        ref = RepoRef(validate_repo_id(repo_id), revision)
        resolved = revision if _COMMIT.match(revision) else self.revision_of(ref, repo_type)
        current = self.tags(repo_id, repo_type).get(tag)
        if current not in (None, resolved):
            raise StoreError(f"tag {tag!r} of {repo_id!r} already names revision {current}")
        if current is None:
            with self._errors(f"{repo_type} {repo_id!r}"):
                self.api.create_tag(repo_id, repo_type=repo_type, tag=tag, revision=resolved, exist_ok=False)
        return resolved

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
        """Whether the repo is on the Hub; a Hub that cannot be reached is an error, not a "no"."""
        from huggingface_hub.errors import RepositoryNotFoundError

        validate_repo_type(repo_type)
        validate_repo_id(repo_id)
        with self._errors(f"{repo_type} {repo_id!r}"):
            try:
                self.api.list_repo_refs(repo_id, repo_type=repo_type)
            except RepositoryNotFoundError:
                return False
        return True

    def repos(self, namespace: str, repo_type: str) -> list[str]:
        validate_repo_type(repo_type)
        listing = {"dataset": "list_datasets", "model": "list_models", "space": "list_spaces"}[repo_type]
        with self._errors(f"{repo_type}s of {namespace!r}"):
            return sorted(info.id for info in getattr(self.api, listing)(author=namespace))


def redact(text: str) -> str:
    """`text` without the Hugging Face token in use."""
    from huggingface_hub import get_token

    token = get_token()
    return text.replace(token, "***") if token else text


def open_store(backend: str | None = None, root: str | Path | None = None) -> Store:
    """The store named by the arguments, else by `T2I_BIAS_STORE` (`local` or `hub`)."""
    backend = backend or os.environ.get(STORE_ENV) or "local"
    if backend == "local":
        return LocalStore(root or os.environ.get(STORE_ROOT_ENV) or DEFAULT_STORE_ROOT)
    if backend == "hub":
        return HubStore()
    raise StoreError(f"unknown store backend {backend!r}: allowed {', '.join(BACKENDS)}")


# ---------------------------------------------------------------------------------------------
# python -m pipelines.artifacts.store gc
# ---------------------------------------------------------------------------------------------


def _size(path: Path) -> int:
    if path.is_symlink() or path.is_file():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() or p.is_symlink())


def collect_garbage(
    store: LocalStore, remove: bool = True, work: bool = False, work_roots: tuple[Path, ...] = ()
) -> list[tuple[Path, int]]:
    """Leftovers of failed pushes in every repo (and, with `work`, unlocked stage work folders), in
    the store's work root and in `work_roots` (the `--work_dir` stages were given)."""
    found: list[tuple[Path, int]] = []
    if not store.root.is_dir():
        return found
    for repo_dir in sorted(p for p in store.root.iterdir() if "--" in p.name and p.is_dir()):
        with store._locked(repo_dir):
            for path in store.garbage(repo_dir):
                found.append((path, _size(path)))
                if remove:
                    _force_unlink(path)
    for root in (store.root / WORK_DIR, *work_roots):
        if root.is_dir():
            found += tidy_work_root(root, remove, work)
    return found


def tidy_work_root(root: Path, remove: bool, work: bool) -> list[tuple[Path, int]]:
    """What stopped and killed runs left in one work root (`.work` of a store, or a `--work_dir`)."""
    from pipelines.artifacts.workspace import dead_builds, idle_work_folders, stale_locks

    found: list[tuple[Path, int]] = []
    # Work folders of stopped runs are resume state: removed only when asked (--work). Their lock
    # files, once the folder is gone and no run holds them, are leftovers, and so are the build
    # folders of killed one-go stages and stage folders left empty.
    for path in idle_work_folders(root) if work else []:
        found.append((path, _size(path)))
        if remove:
            shutil.rmtree(path, ignore_errors=True)
    for path in stale_locks(root):
        found.append((path, 0))
        if remove:
            path.unlink(missing_ok=True)
    for path in dead_builds(root):
        found.append((path, _size(path)))
        if remove and path.name.startswith("."):
            shutil.rmtree(path, ignore_errors=True)
        elif remove:
            with contextlib.suppress(OSError):
                path.rmdir()  # only while still empty: a run may have just started in it
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipelines.artifacts.store", description="Local store upkeep.")
    commands = parser.add_subparsers(dest="command", required=True)
    gc = commands.add_parser("gc", help="report and remove what failed pushes left behind")
    gc.add_argument("--store_root", default=os.environ.get(STORE_ROOT_ENV, DEFAULT_STORE_ROOT))
    gc.add_argument("--dry_run", action="store_true", help="report only")
    gc.add_argument("--work", action="store_true", help="also the work folders of stopped runs (their resume state)")
    gc.add_argument(
        "--work_dir",
        action="append",
        default=[],
        metavar="FOLDER",
        help="a work folder that stages were given with --work_dir, besides the store's own (repeatable)",
    )
    options = parser.parse_args(argv)
    try:
        store = LocalStore(options.store_root)
        if not store.root.is_dir():
            raise StoreError(f"store root {str(store.root)!r}: no such folder")
        roots = tuple(Path(folder) for folder in options.work_dir)
        for root in roots:
            if not root.is_dir():
                raise StoreError(f"--work_dir {str(root)!r}: no such folder")
        found = collect_garbage(store, remove=not options.dry_run, work=options.work, work_roots=roots)
    except OSError as err:  # an unreadable or read-only root (a listing, a removal): one line
        root = Path(options.store_root).resolve()
        where = Path(err.filename or root).resolve()
        where = "" if where == root else f"{where.relative_to(root) if where.is_relative_to(root) else where}: "
        print(f"store gc: error: store {str(root)!r} cannot be read or written: {where}{err.strerror or err}",
              file=sys.stderr)  # fmt: skip
        raise SystemExit(2) from None
    except StoreError as err:
        print(f"store gc: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    verb = "would remove" if options.dry_run else "removed"
    for path, size in found:
        shown = path.relative_to(store.root) if path.is_relative_to(store.root) else path  # a --work_dir's, as given
        print(f"{verb} {shown} ({size / 1e6:.1f} MB)")
    where = ", ".join([str(store.root), *options.work_dir])
    print(f"{verb} {len(found)} item(s), {sum(size for _, size in found) / 1e6:.1f} MB in {where}")


if __name__ == "__main__":
    main()
