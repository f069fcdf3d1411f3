"""The store contract: immutable revisions, atomic pushes, concurrent writers, clear errors."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipelines.artifacts.store import HubStore, LocalStore, content_revision, open_store, parse_ref
from pipelines.errors import StoreError

from .conftest import REPO_ROOT

CARD_WITH_LINEAGE = "---\nlicense: apache-2.0\nlineage:\n  stage: test\n  fingerprint: abc\n---\n# card\n"


def read_tree(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_push_resolve_and_history(store: LocalStore, make_folder) -> None:
    first = make_folder({"README.md": CARD_WITH_LINEAGE, "data/a.txt": "one"})
    rev1 = store.push(first, "ns/data", "dataset", "first")
    assert len(rev1) == 40 and rev1 == content_revision(first)
    assert read_tree(store.resolve("ns/data", "dataset")) == read_tree(first)
    assert read_tree(store.resolve("ns/data@main", "dataset")) == read_tree(first)

    second = make_folder({"README.md": CARD_WITH_LINEAGE, "data/a.txt": "two"})
    rev2 = store.push(second, "ns/data", "dataset", "second", tag="v2")
    assert rev2 != rev1
    assert store.revision_of("ns/data@main", "dataset") == rev2
    assert read_tree(store.resolve(f"ns/data@{rev1}", "dataset")) == read_tree(first)  # old revision intact
    assert read_tree(store.resolve(f"ns/data@{rev1[:8]}", "dataset")) == read_tree(first)  # unique prefix
    assert store.resolve("ns/data@v2", "dataset") == store.resolve("ns/data@main", "dataset")
    assert store.tags("ns/data", "dataset") == {"v2": rev2}
    history = store.history("ns/data", "dataset")
    assert [entry.revision for entry in history] == [rev2, rev1] == store.revisions("ns/data", "dataset")
    assert [entry.message for entry in history] == ["second", "first"]
    assert history[0].lineage == {"stage": "test", "fingerprint": "abc"}


def test_revisions_are_read_only(store: LocalStore, make_folder) -> None:
    rev = store.push(make_folder({"a.txt": "x"}), "ns/data", "dataset", "m")
    assert (store.resolve(f"ns/data@{rev}", "dataset") / "a.txt").stat().st_mode & 0o222 == 0


def test_identical_push_is_a_no_op(store: LocalStore, make_folder) -> None:
    folder = make_folder({"a.txt": "same"})
    rev = store.push(folder, "ns/data", "dataset", "first")
    again = store.push(make_folder({"a.txt": "same"}), "ns/data", "dataset", "again")
    assert again == rev
    assert len(store.history("ns/data", "dataset")) == 1


def test_repo_types_are_separate(store: LocalStore, make_folder) -> None:
    store.push(make_folder({"a.txt": "model"}), "ns/thing", "model", "m")
    assert store.exists("ns/thing", "model") and not store.exists("ns/thing", "dataset")
    assert (store.root / "models" / "ns" / "thing").is_dir()
    with pytest.raises(StoreError, match="unknown dataset repo 'ns/thing'"):
        store.resolve("ns/thing", "dataset")


@pytest.mark.parametrize(
    "spec, message",
    [
        ("ns/missing", "unknown dataset repo 'ns/missing'"),
        ("ns/data@nosuchtag", "unknown revision or tag 'nosuchtag' of dataset 'ns/data'"),
        ("ns/data@deadbeef00", "unknown revision or tag 'deadbeef00'"),
        ("not a repo", "malformed repo id 'not a repo'"),
        ("ns/bad--name", "malformed repo id 'ns/bad--name'"),
        ("noslash", "malformed repo id 'noslash'"),
        ("ns/data@bad rev", "malformed revision 'bad rev'"),
    ],
)
def test_errors_name_what_is_wrong(store: LocalStore, make_folder, spec: str, message: str) -> None:
    store.push(make_folder({"a.txt": "x"}), "ns/data", "dataset", "m")
    with pytest.raises(StoreError) as caught:
        store.resolve(spec, "dataset")
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_bad_repo_type_and_tag(store: LocalStore, make_folder) -> None:
    with pytest.raises(StoreError, match="unknown repo type 'datasets': allowed dataset, model, space"):
        store.push(make_folder({"a": "x"}), "ns/data", "datasets", "m")
    rev = store.push(make_folder({"a": "x"}), "ns/data", "dataset", "m", tag="v1")
    with pytest.raises(StoreError, match="tag 'v1' of 'ns/data' already names revision"):
        store.push(make_folder({"a": "y"}), "ns/data", "dataset", "m", tag="v1")
    assert store.tags("ns/data", "dataset") == {"v1": rev}
    assert store.tag("ns/data", "dataset", "first", rev) == rev


def test_parse_ref_with_namespace() -> None:
    assert parse_ref("prompts", namespace="study").repo_id == "study/prompts"
    assert str(parse_ref("a/b@v1")) == "a/b@v1"


# --- killed half way ---------------------------------------------------------------------------

_SLOW_PUSH = """
import shutil, sys, time
from pipelines.artifacts.store import LocalStore
real_copy = shutil.copy2
def slow_copy(src, dst, *args, **kwargs):
    result = real_copy(src, dst, *args, **kwargs)
    print("copied", flush=True)
    time.sleep(0.2)
    return result
real_copytree = shutil.copytree
def slow_copytree(src, dst, symlinks=False, ignore=None, copy_function=None, *args, **kwargs):
    return real_copytree(src, dst, symlinks, ignore, slow_copy, *args, **kwargs)
shutil.copytree = slow_copytree
LocalStore(sys.argv[1]).push(sys.argv[2], "ns/data", "dataset", "doomed")
print("finished", flush=True)
"""


def test_push_killed_half_way_leaves_previous_revision(store: LocalStore, make_folder) -> None:
    good = make_folder({"README.md": CARD_WITH_LINEAGE, "data/a.txt": "good"})
    rev = store.push(good, "ns/data", "dataset", "good")
    big = make_folder({f"data/{i:03d}.txt": f"new {i}" for i in range(50)})
    child = subprocess.Popen(
        [sys.executable, "-c", _SLOW_PUSH, str(store.root), str(big)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    for _ in range(3):  # let it copy a few files, then kill it mid-copy
        assert child.stdout.readline().strip() == "copied"
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL

    assert store.revision_of("ns/data", "dataset") == rev
    assert read_tree(store.resolve("ns/data", "dataset")) == read_tree(good)
    assert store.revisions("ns/data", "dataset") == [rev]
    revisions_dir = store.root / "datasets" / "ns" / "data" / "revisions"
    assert sorted(p.name for p in revisions_dir.iterdir()) == [rev]  # nothing partial visible
    assert any((store.root / "datasets" / "ns" / "data" / ".staging").iterdir())  # the leftover is private

    new_rev = store.push(big, "ns/data", "dataset", "retry")
    assert read_tree(store.resolve("ns/data", "dataset")) == read_tree(big)
    assert store.revisions("ns/data", "dataset") == [new_rev, rev]
    assert not any((store.root / "datasets" / "ns" / "data" / ".staging").iterdir())  # swept


# --- two writers at once ---------------------------------------------------------------------

_PUSHER = """
import sys, tempfile, pathlib
from pipelines.artifacts.store import LocalStore
store = LocalStore(sys.argv[1])
for i in range(int(sys.argv[3])):
    folder = pathlib.Path(tempfile.mkdtemp())
    (folder / "who.txt").write_text(f"{sys.argv[2]}-{i}")
    for j in range(20):
        (folder / f"pad{j}.txt").write_text("x" * 1000)
    print(store.push(folder, "ns/data", "dataset", f"{sys.argv[2]}-{i}"), flush=True)
"""


def test_concurrent_pushes_all_land(store: LocalStore) -> None:
    pushes = 6
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", _PUSHER, str(store.root), name, str(pushes)],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for name in ("a", "b")
    ]
    published = []
    for writer in writers:
        out, _ = writer.communicate(timeout=120)
        assert writer.returncode == 0
        published += out.split()
    assert len(set(published)) == 2 * pushes
    history = store.history("ns/data", "dataset")
    assert sorted(entry.revision for entry in history) == sorted(published)
    assert store.revision_of("ns/data", "dataset") == history[0].revision
    for entry in history:
        assert (store.resolve(f"ns/data@{entry.revision}", "dataset") / "who.txt").read_text() == entry.message
    refs = json.loads((store.root / "datasets" / "ns" / "data" / "refs.json").read_text())
    assert refs["main"] == history[0].revision


# --- backend selection -----------------------------------------------------------------------


def test_open_store_by_argument_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(open_store("local", tmp_path), LocalStore)
    monkeypatch.setenv("T2I_BIAS_STORE_ROOT", str(tmp_path / "elsewhere"))
    assert open_store().root == (tmp_path / "elsewhere").resolve()
    with pytest.raises(StoreError, match="unknown store backend 'ftp': allowed local, hub"):
        open_store("ftp")


# --- Hub backend against a test double of HfApi -------------------------------------------------


class FakeHfApi:
    """The six HfApi methods HubStore calls, keeping repos in memory as the Hub would."""

    def __init__(self, downloads: Path):
        self.repos: dict[tuple[str, str], dict] = {}
        self.downloads = downloads
        self.calls: list[str] = []

    def _repo(self, repo_id: str, repo_type: str) -> dict:
        if (repo_id, repo_type) not in self.repos:
            raise _hub_error("RepositoryNotFoundError")
        return self.repos[(repo_id, repo_type)]

    def create_repo(self, repo_id, repo_type=None, exist_ok=False):
        self.calls.append("create_repo")
        self.repos.setdefault((repo_id, repo_type), {"commits": [], "tags": {}, "files": {}})

    def upload_folder(self, *, repo_id, repo_type, folder_path, commit_message, commit_description, delete_patterns):
        self.calls.append("upload_folder")
        assert delete_patterns == "*"  # the remote mirrors the folder exactly
        repo = self._repo(repo_id, repo_type)
        files = read_tree(Path(folder_path))
        if repo["commits"] and files == repo["files"]:  # the Hub skips an empty commit
            return SimpleNamespace(oid=repo["commits"][-1]["id"])
        oid = f"{len(repo['commits']) + 1:040x}"
        repo["files"] = files
        repo["commits"].append({"id": oid, "title": commit_message, "message": commit_description, "files": files})
        return SimpleNamespace(oid=oid)

    def create_tag(self, repo_id, *, repo_type, tag, revision, exist_ok):
        self.calls.append("create_tag")
        self._repo(repo_id, repo_type)["tags"][tag] = revision

    def list_repo_refs(self, repo_id, *, repo_type):
        repo = self._repo(repo_id, repo_type)
        return SimpleNamespace(
            branches=[SimpleNamespace(name="main", target_commit=repo["commits"][-1]["id"])],
            tags=[SimpleNamespace(name=k, target_commit=v) for k, v in repo["tags"].items()],
        )

    def list_repo_commits(self, repo_id, *, repo_type):
        return [
            SimpleNamespace(
                commit_id=c["id"],
                title=c["title"],
                message=c["message"],
                created_at=datetime(2026, 1, 1, tzinfo=timezone.utc),
            )
            for c in reversed(self._repo(repo_id, repo_type)["commits"])
        ]

    def snapshot_download(self, repo_id, *, repo_type, revision):
        repo = self._repo(repo_id, repo_type)
        revision = repo["tags"].get(revision, revision)
        if revision == "main":
            revision = repo["commits"][-1]["id"]
        commit = next((c for c in repo["commits"] if c["id"] == revision), None)
        if commit is None:
            raise _hub_error("RevisionNotFoundError")
        folder = self.downloads / revision
        for name, text in commit["files"].items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text)
        return str(folder)


def _hub_error(name: str) -> Exception:
    import httpx2
    from huggingface_hub import errors

    response = httpx2.Response(404, request=httpx2.Request("GET", "http://127.0.0.1/"))
    return getattr(errors, name)("not found", response=response)


@pytest.fixture
def hub(tmp_path: Path) -> tuple[HubStore, FakeHfApi]:
    api = FakeHfApi(tmp_path / "downloads")
    return HubStore(api=api, download=api.snapshot_download), api


def test_hub_push_resolve_history(hub, make_folder) -> None:
    store, api = hub
    first = make_folder({"README.md": CARD_WITH_LINEAGE, "data/a.txt": "one"})
    rev1 = store.push(first, "ns/data", "dataset", "first", tag="v1")
    assert api.calls == ["create_repo", "upload_folder", "create_tag"]
    assert json.loads(api.repos[("ns/data", "dataset")]["commits"][0]["message"]) == {
        "lineage": {"stage": "test", "fingerprint": "abc"}
    }
    assert (
        store.push(make_folder({"README.md": CARD_WITH_LINEAGE, "data/a.txt": "one"}), "ns/data", "dataset", "same")
        == rev1
    )
    rev2 = store.push(make_folder({"data/a.txt": "two"}), "ns/data", "dataset", "second")
    assert read_tree(store.resolve("ns/data@v1", "dataset")) == read_tree(first)
    assert (store.resolve("ns/data", "dataset") / "data/a.txt").read_text() == "two"
    assert store.revision_of("ns/data@main", "dataset") == rev2
    assert store.revision_of("ns/data@v1", "dataset") == rev1
    assert store.tags("ns/data", "dataset") == {"v1": rev1}
    history = store.history("ns/data", "dataset")
    assert [(e.revision, e.message) for e in history] == [(rev2, "second"), (rev1, "first")]
    assert history[1].lineage == {"stage": "test", "fingerprint": "abc"}
    assert store.exists("ns/data", "dataset") and not store.exists("ns/other", "dataset")


def test_hub_errors_are_one_line(hub, make_folder) -> None:
    store, _ = hub
    with pytest.raises(StoreError, match="unknown dataset 'ns/missing@main' on the Hub"):
        store.resolve("ns/missing", "dataset")
    store.push(make_folder({"a.txt": "x"}), "ns/data", "dataset", "m")
    with pytest.raises(StoreError, match="unknown revision or tag of dataset 'ns/data@nope'"):
        store.resolve("ns/data@nope", "dataset")
    with pytest.raises(StoreError, match="malformed repo id"):
        store.push(make_folder({"a.txt": "x"}), "bad id", "dataset", "m")


def test_hub_token_is_never_printed(hub, make_folder, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_secret_token_value")
    store, _ = hub
    store.push(make_folder({"a.txt": "x"}), "ns/data", "dataset", "m")
    out = capsys.readouterr()
    assert "hf_secret_token_value" not in out.out + out.err + repr(store)
