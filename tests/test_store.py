"""The store contract: immutable revisions, atomic pushes, concurrent writers, clear errors."""

from __future__ import annotations

import errno
import fnmatch
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NoReturn

import pytest

from pipelines.artifacts.store import HubStore, LocalStore, content_revision, open_store, parse_ref
from pipelines.errors import StoreError

from .conftest import REPO_ROOT

CARD_WITH_LINEAGE = "---\nlicense: apache-2.0\nlineage:\n  stage: test\n  fingerprint: abc\n---\n# card\n"


def read_tree(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_push_resolve_and_history(store: LocalStore, make_folder: Callable[[dict[str, str]], Path]) -> None:
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


def test_revisions_are_read_only(store: LocalStore, make_folder: Callable[[dict[str, str]], Path]) -> None:
    rev = store.push(make_folder({"a.txt": "x"}), "ns/data", "dataset", "m")
    assert (store.resolve(f"ns/data@{rev}", "dataset") / "a.txt").stat().st_mode & 0o222 == 0


def test_identical_push_is_a_no_op(store: LocalStore, make_folder: Callable[[dict[str, str]], Path]) -> None:
    folder = make_folder({"a.txt": "same"})
    rev = store.push(folder, "ns/data", "dataset", "first")
    again = store.push(make_folder({"a.txt": "same"}), "ns/data", "dataset", "again")
    assert again == rev
    assert len(store.history("ns/data", "dataset")) == 1


def test_repo_types_are_separate(store: LocalStore, make_folder: Callable[[dict[str, str]], Path]) -> None:
    store.push(make_folder({"a.txt": "model"}), "ns/thing", "model", "m")
    assert store.exists("ns/thing", "model") and not store.exists("ns/thing", "dataset")
    assert (store.root / "models--ns--thing").is_dir()  # the Hugging Face cache's naming
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
def test_errors_name_what_is_wrong(
    store: LocalStore, make_folder: Callable[[dict[str, str]], Path], spec: str, message: str
) -> None:
    store.push(make_folder({"a.txt": "x"}), "ns/data", "dataset", "m")
    with pytest.raises(StoreError) as caught:
        store.resolve(spec, "dataset")
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("garbled", ["", "not a revision\n", "0" * 40, "\xff\xfe"])
def test_a_damaged_ref_is_said_to_be_damaged_and_a_push_mends_it(
    store: LocalStore, make_folder: Callable[[dict[str, str]], Path], garbled: str
) -> None:
    """A `refs/main` cut short, overwritten or naming no snapshot: reading it says the store is damaged
    (not "unknown revision or tag"); the next push writes a good `main` again."""
    first = store.push(make_folder({"a.txt": "1"}), "ns/data", "dataset", "first")
    ref = store.root / "datasets--ns--data" / "refs" / "main"
    ref.write_bytes(garbled.encode("latin-1"))
    with pytest.raises(StoreError, match=r"the store is damaged: datasets--ns--data/refs/main names no revision"):
        store.revision_of("ns/data", "dataset")
    assert store.push(make_folder({"a.txt": "1"}), "ns/data", "dataset", "again") == first
    assert store.revision_of("ns/data", "dataset") == first


def test_bad_repo_type_and_tag(store: LocalStore, make_folder: Callable[[dict[str, str]], Path]) -> None:
    with pytest.raises(StoreError, match="unknown repo type 'datasets': allowed dataset, model, space"):
        store.push(make_folder({"a": "x"}), "ns/data", "datasets", "m")
    rev = store.push(make_folder({"a": "x"}), "ns/data", "dataset", "m", tag="v1")
    with pytest.raises(StoreError, match="tag 'v1' of 'ns/data' already names revision"):
        store.push(make_folder({"a": "y"}), "ns/data", "dataset", "m", tag="v1")
    # The refused push changed nothing: main, the history and the tag are where they were.
    assert store.tags("ns/data", "dataset") == {"v1": rev}
    assert store.revision_of("ns/data", "dataset") == rev and store.revisions("ns/data", "dataset") == [rev]
    assert store.garbage(store.root / "datasets--ns--data") == []
    assert store.tag("ns/data", "dataset", "first", rev) == rev
    # Tagging never moves a tag either: `first` names rev, and another revision cannot take it.
    other = store.push(make_folder({"a": "z"}), "ns/data", "dataset", "m")
    with pytest.raises(StoreError, match=f"tag 'first' of 'ns/data' already names revision {rev}"):
        store.tag("ns/data", "dataset", "first", other)
    assert store.tags("ns/data", "dataset") == {"v1": rev, "first": rev}
    assert store.tag("ns/data", "dataset", "first", rev) == rev  # naming the same revision again is fine


def test_a_revision_is_the_content_and_the_names_of_the_files(make_folder: Callable[[dict[str, str]], Path]) -> None:
    """Content addressing: the same bytes under another name, or in another folder, are another revision."""
    from pipelines.artifacts.store import content_revision

    same = content_revision(make_folder({"a.txt": "x", "b.txt": "y"}))
    assert content_revision(make_folder({"a.txt": "x", "b.txt": "y"})) == same
    assert content_revision(make_folder({"b.txt": "x", "a.txt": "y"})) != same  # names swapped
    assert content_revision(make_folder({"a.txt": "x", "c.txt": "y"})) != same  # a file renamed
    assert content_revision(make_folder({"a.txt": "x", "sub/b.txt": "y"})) != same  # moved into a folder
    assert content_revision(make_folder({"a.txt": "xy", "b.txt": ""})) != same  # bytes moved between files


def test_parse_ref_with_namespace() -> None:
    assert parse_ref("prompts", namespace="study").repo_id == "study/prompts"
    assert str(parse_ref("a/b@v1")) == "a/b@v1"


# --- killed half way ---------------------------------------------------------------------------

_SLOW_PUSH = """
import shutil, sys, time
from pipelines.artifacts.store import LocalStore
real_copy = shutil.copyfile
def slow_copy(src, dst, *args, **kwargs):
    result = real_copy(src, dst, *args, **kwargs)
    print("copied", flush=True)
    time.sleep(0.2)
    return result
shutil.copyfile = slow_copy
LocalStore(sys.argv[1]).push(sys.argv[2], "ns/data", "dataset", "doomed")
print("finished", flush=True)
"""


def test_push_killed_half_way_leaves_previous_revision(
    store: LocalStore, make_folder: Callable[[dict[str, str]], Path]
) -> None:
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
    repo = store.root / "datasets--ns--data"
    assert sorted(p.name for p in (repo / "snapshots").iterdir()) == [rev]  # nothing partial visible
    assert any((repo / ".staging").iterdir())  # the leftover is private
    leftovers = [p for p in (repo / "blobs").iterdir()]
    assert len(leftovers) > 1  # blobs the killed push copied

    new_rev = store.push(big, "ns/data", "dataset", "retry")
    assert read_tree(store.resolve("ns/data", "dataset")) == read_tree(big)
    assert store.revisions("ns/data", "dataset") == [new_rev, rev]
    assert not any((repo / ".staging").iterdir())  # swept
    used = {os.path.basename(os.readlink(p)) for p in (repo / "snapshots").rglob("*") if p.is_symlink()}
    assert {p.name for p in (repo / "blobs").iterdir()} == used  # no blob that no revision uses


# --- two writers at once ---------------------------------------------------------------------

_PUSHER = """
import sys, tempfile, pathlib
from pipelines.artifacts.store import LocalStore
store = LocalStore(sys.argv[1])
for i in range(int(sys.argv[3])):
    folder = pathlib.Path(tempfile.mkdtemp(dir=sys.argv[1] + "-sources"))
    (folder / "who.txt").write_text(f"{sys.argv[2]}-{i}")
    for j in range(20):
        (folder / f"pad{j}.txt").write_text("x" * 1000)
    print(store.push(folder, "ns/data", "dataset", f"{sys.argv[2]}-{i}"), flush=True)
"""


def test_concurrent_pushes_all_land(store: LocalStore) -> None:
    pushes = 6
    Path(f"{store.root}-sources").mkdir()  # the writers' folders, beside the store in the test's tmp_path
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
    assert (store.root / "datasets--ns--data" / "refs" / "main").read_text() == history[0].revision


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

    def create_repo(self, repo_id: str, repo_type: str | None = None, exist_ok: bool = False) -> None:
        self.calls.append("create_repo")
        self.repos.setdefault((repo_id, repo_type), {"commits": [], "tags": {}, "files": {}})

    def upload_folder(
        self,
        *,
        repo_id: str,
        repo_type: str,
        folder_path: str,
        commit_message: str,
        commit_description: str,
        delete_patterns: str,
        ignore_patterns: list[str] | None,
    ) -> SimpleNamespace:
        self.calls.append("upload_folder")
        assert delete_patterns == "*"  # the remote mirrors the folder exactly
        repo = self._repo(repo_id, repo_type)
        files = {
            name: text
            for name, text in read_tree(Path(folder_path)).items()
            if not any(fnmatch.fnmatch(name, pattern) for pattern in ignore_patterns or [])
        }
        if repo["commits"] and files == repo["files"]:  # the Hub skips an empty commit
            return SimpleNamespace(oid=repo["commits"][-1]["id"])
        oid = f"{len(repo['commits']) + 1:040x}"
        repo["files"] = files
        repo["commits"].append({"id": oid, "title": commit_message, "message": commit_description, "files": files})
        return SimpleNamespace(oid=oid)

    def create_tag(self, repo_id: str, *, repo_type: str, tag: str, revision: str, exist_ok: bool) -> None:
        self.calls.append("create_tag")
        tags = self._repo(repo_id, repo_type)["tags"]
        if tag in tags and not exist_ok:
            raise _hub_error("HfHubHTTPError")  # the Hub answers 409 Conflict
        tags[tag] = revision

    def list_repo_refs(self, repo_id: str, *, repo_type: str) -> SimpleNamespace:
        repo = self._repo(repo_id, repo_type)
        return SimpleNamespace(
            branches=[SimpleNamespace(name="main", target_commit=repo["commits"][-1]["id"])],
            tags=[SimpleNamespace(name=k, target_commit=v) for k, v in repo["tags"].items()],
        )

    def list_repo_commits(self, repo_id: str, *, repo_type: str) -> list[SimpleNamespace]:
        return [
            SimpleNamespace(
                commit_id=c["id"],
                title=c["title"],
                message=c["message"],
                created_at=datetime(2026, 1, 1, tzinfo=timezone.utc),
            )
            for c in reversed(self._repo(repo_id, repo_type)["commits"])
        ]

    def snapshot_download(self, repo_id: str, *, repo_type: str, revision: str) -> str:
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


def test_hub_push_resolve_history(
    hub: tuple[HubStore, FakeHfApi], make_folder: Callable[[dict[str, str]], Path]
) -> None:
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


def test_a_refused_tag_on_the_hub_uploads_nothing(
    hub: tuple[HubStore, FakeHfApi], make_folder: Callable[[dict[str, str]], Path]
) -> None:
    """The upload moves `main`, so a tag that already names a revision is refused before it."""
    store, api = hub
    rev1 = store.push(make_folder({"data/a.txt": "one"}), "ns/data", "dataset", "first", tag="v1")
    api.calls.clear()
    with pytest.raises(StoreError, match="tag 'v1' of 'ns/data' already names revision"):
        store.push(make_folder({"data/a.txt": "two"}), "ns/data", "dataset", "second", tag="v1")
    assert api.calls == [] and store.revision_of("ns/data", "dataset") == rev1
    assert store.tags("ns/data", "dataset") == {"v1": rev1}


def test_hub_errors_are_one_line(
    hub: tuple[HubStore, FakeHfApi], make_folder: Callable[[dict[str, str]], Path]
) -> None:
    store, _ = hub
    with pytest.raises(StoreError, match="unknown dataset 'ns/missing@main' on the Hub"):
        store.resolve("ns/missing", "dataset")
    store.push(make_folder({"a.txt": "x"}), "ns/data", "dataset", "m")
    with pytest.raises(StoreError, match="unknown revision or tag of dataset 'ns/data@nope'"):
        store.resolve("ns/data@nope", "dataset")
    with pytest.raises(StoreError, match="malformed repo id"):
        store.push(make_folder({"a.txt": "x"}), "bad id", "dataset", "m")


def test_a_hub_error_that_echoes_the_token_never_shows_it(
    hub: tuple[HubStore, FakeHfApi], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server may put the credentials it got into its error message; the one line a user sees has
    the token struck out, whatever part of the message carries it."""
    from types import SimpleNamespace

    from huggingface_hub.errors import HfHubHTTPError

    secret = "hf_echoed_secret_0123456789"
    monkeypatch.setenv("HF_TOKEN", secret)
    store, _ = hub
    response = SimpleNamespace(status_code=401, headers={}, request=None)
    for message in (f"401 Unauthorized: Bearer {secret}", f"Invalid credentials {secret} for ns/data"):
        with pytest.raises(StoreError) as refused:
            with store._errors("dataset 'ns/data'"):
                raise HfHubHTTPError(message, response=response)  # type: ignore[arg-type]
        assert secret not in str(refused.value)
        assert str(refused.value).startswith("the Hub refused dataset 'ns/data' (HTTP 401): ")
        assert "***" in str(refused.value)


# --- the real HfApi against a hostile server on loopback: the token is sent, and never shown ------

_HOSTILE_SERVER = """
import http.server, json, sys
class Handler(http.server.BaseHTTPRequestHandler):
    def _answer(self):
        auth = self.headers.get("Authorization", "")
        print(json.dumps({"path": self.path, "authorization": auth}), flush=True)
        # Echo the credentials back in the error, as a careless server would.
        body = json.dumps({"error": f"Invalid credentials in Authorization header: {auth}"}).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Error-Message", f"Invalid credentials: {auth}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_GET = do_POST = do_PUT = do_HEAD = _answer
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def test_hub_token_is_sent_but_never_printed(tmp_path: Path) -> None:
    secret = "hf_secret_token_value_1234567890"
    server = subprocess.Popen([sys.executable, "-c", _HOSTILE_SERVER], stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "0",
            "HF_ENDPOINT": f"http://127.0.0.1:{port}",
            "HF_TOKEN": secret,
            "HF_HUB_VERBOSITY": "debug",
            "HF_HOME": str(tmp_path / "hf-home"),
        }
        stage = subprocess.run(
            [sys.executable, "-m", "pipelines.generate_prompts", "--store", "hub", "--namespace", "someone",
             "--professions", "nurse", "--styles", "close-up", "--ages", "young"],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        server.kill()
    seen = [json.loads(line) for line in server.stdout.read().splitlines() if line.startswith("{")]
    assert any(secret in request["authorization"] for request in seen)  # reachable: it was sent
    assert stage.returncode == 2, stage.stderr[-2000:]
    assert stage.stderr.strip().splitlines()[-1].startswith("generate_prompts: error: the Hub refused")
    assert secret not in stage.stdout + stage.stderr  # never shown, even when the server echoes it
    # Nor in what a stage writes: lineage and cards record the command and versions, never the environment.
    local = subprocess.run(
        [sys.executable, "-m", "pipelines.generate_prompts", "--store_root", str(tmp_path / "hub"),
         "--professions", "nurse", "--styles", "close-up", "--ages", "young"],
        cwd=REPO_ROOT, env={**os.environ, "HF_TOKEN": secret}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert local.returncode == 0, local.stderr[-2000:]
    written = [p for p in (tmp_path / "hub").rglob("*") if p.is_file()]
    assert written and not any(secret.encode() in p.read_bytes() for p in written)


# --- failed pushes leave nothing behind ---------------------------------------------------------------


def store_files(store: LocalStore) -> dict[str, bytes]:
    return {
        p.relative_to(store.root).as_posix(): (os.readlink(p).encode() if p.is_symlink() else p.read_bytes())
        for p in sorted(store.root.rglob("*"))
        if p.is_file() or p.is_symlink()
        if p.name != ".lock"
    }


def test_a_full_disk_leaves_the_store_as_it_was(
    store: LocalStore, make_folder: Callable[[dict[str, str]], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    store.push(make_folder({"README.md": CARD_WITH_LINEAGE, "a.txt": "first"}), "ns/data", "dataset", "first")
    before = store_files(store)
    real = shutil.copyfile
    calls = []

    def full_disk(src: Path, dst: Path, *args: Any, **kwargs: Any) -> Path:
        calls.append(dst)
        if len(calls) > 2:  # two files land, then the disk is full mid-copy
            Path(dst).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(shutil, "copyfile", full_disk)
    big = make_folder({f"data/{i}.txt": f"new {i}" for i in range(6)})
    with pytest.raises(
        StoreError, match="no space left on the device of .* while pushing ns/data: the store is unchanged"
    ):
        store.push(big, "ns/data", "dataset", "doomed")
    assert store_files(store) == before  # the two blobs that landed are freed too


def test_unwritable_and_misplaced_store_roots_are_one_line_errors(
    tmp_path: Path, make_folder: Callable[[dict[str, str]], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(StoreError, match="store root '.*a-file': '.*a-file' is a file, not a folder"):
        LocalStore(tmp_path / "a-file")
    store = LocalStore(tmp_path / "hub")

    def refused(*args: Any, **kwargs: Any) -> NoReturn:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(os, "symlink", refused)
    with pytest.raises(StoreError, match="store '.*hub' is not writable .Permission denied.: nothing was published"):
        store.push(make_folder({"a.txt": "x"}), "ns/data", "dataset", "m")
    assert not store.exists("ns/data", "dataset")


def test_gc_reports_and_removes_what_failed_pushes_left(
    store: LocalStore, make_folder: Callable[[dict[str, str]], Path]
) -> None:
    rev = store.push(make_folder({"README.md": CARD_WITH_LINEAGE, "a.txt": "kept"}), "ns/data", "dataset", "m")
    repo = store.root / "datasets--ns--data"
    # What killed pushes leave: a dead writer's staging folder and temp files, a snapshot renamed into
    # place before its refs were written, and a blob nothing links to.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    (repo / ".staging" / f"{pid}-abc").mkdir(parents=True)
    (repo / ".staging" / f"{pid}-abc" / "x.txt").write_text("x" * 1000)
    (repo / "refs" / f".main.{pid}.ff.tmp").write_text("partial")
    orphan = repo / "snapshots" / ("f" * 40)
    orphan.mkdir()
    (orphan / "a.txt").write_text("orphan")
    (repo / "blobs" / ("0" * 64)).write_text("unused" * 100)
    report = subprocess.run(
        [sys.executable, "-m", "pipelines.artifacts.store", "gc", "--store_root", str(store.root), "--dry_run"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr
    assert report.stdout.strip().splitlines()[-1].startswith("would remove 4 item(s)")
    assert orphan.exists()
    removed = subprocess.run(
        [sys.executable, "-m", "pipelines.artifacts.store", "gc", "--store_root", str(store.root)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert removed.stdout.strip().splitlines()[-1].startswith("removed 4 item(s)")
    assert not orphan.exists() and not any((repo / ".staging").iterdir())
    assert sorted(p.name for p in (repo / "snapshots").iterdir()) == [rev]
    assert (store.resolve("ns/data", "dataset") / "a.txt").read_text() == "kept"


def test_stock_huggingface_hub_reads_the_local_store(
    store: LocalStore, make_folder: Callable[[dict[str, str]], Path]
) -> None:
    from huggingface_hub import scan_cache_dir, snapshot_download

    rev = store.push(make_folder({"README.md": CARD_WITH_LINEAGE, "a.txt": "x"}), "ns/data", "dataset", "m", tag="v1")
    for revision in ("main", "v1", rev):
        folder = snapshot_download("ns/data", repo_type="dataset", revision=revision, cache_dir=store.root,
                                   local_files_only=True)  # fmt: skip
        assert Path(folder) == store.resolve(f"ns/data@{revision}", "dataset")
    cache = scan_cache_dir(store.root)
    (repo,) = [r for r in cache.repos if r.repo_id == "ns/data"]
    assert repo.repo_type == "dataset" and {r.commit_hash for r in repo.revisions} == {rev}


def test_gc_removes_lock_files_nobody_holds_and_keeps_resume_state_unless_asked(store: LocalStore) -> None:
    """A work folder's lock left without its folder is a leftover, removed by a plain gc; a stopped
    run's folder (resume state) and its lock go only with --work; a lock a live run holds stays."""
    from pipelines.artifacts.workspace import locked

    work = store.root / ".work" / "classify"
    work.mkdir(parents=True)
    (work / "aaaa.lock").write_text("")  # its run finished and removed the folder
    (work / "bbbb").mkdir()
    (work / "bbbb" / "shard.parquet").write_text("x")
    (work / "bbbb.lock").write_text("")  # a stopped run: resume state
    held = work / "cccc"
    with locked(held):  # a live run, its folder not made yet
        collect = [sys.executable, "-m", "pipelines.artifacts.store", "gc", "--store_root", str(store.root)]
        plain = subprocess.run(collect, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
        assert plain.returncode == 0, plain.stderr
        assert sorted(p.name for p in work.iterdir()) == ["bbbb", "bbbb.lock", "cccc.lock"]
        deep = subprocess.run([*collect, "--work"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
        assert deep.returncode == 0, deep.stderr
        assert sorted(p.name for p in work.iterdir()) == ["cccc.lock"]


def test_gc_tidies_the_work_folders_stages_were_given_with_work_dir(store: LocalStore, tmp_path: Path) -> None:
    """A stage given `--work_dir` keeps its resume state there, outside the store: gc finds it only
    when that folder is named, with the same rules as in the store's own; a name that is no folder
    is refused in one line."""
    store.root.mkdir(parents=True, exist_ok=True)
    elsewhere = tmp_path / "scratch"
    stage = elsewhere / "generate_images"
    (stage / "dddd").mkdir(parents=True)
    (stage / "dddd" / "shard.parquet").write_text("x" * 1000)
    (stage / "dddd.lock").write_text("")  # a stopped run: resume state
    (stage / "eeee.lock").write_text("")  # a finished run's lock, its folder gone
    collect = [sys.executable, "-m", "pipelines.artifacts.store", "gc", "--store_root", str(store.root)]

    def gc(*options: str) -> subprocess.CompletedProcess:
        return subprocess.run([*collect, *options], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)

    assert gc("--work").returncode == 0  # the store's own work folder only
    assert sorted(p.name for p in stage.iterdir()) == ["dddd", "dddd.lock", "eeee.lock"]
    plain = gc("--work_dir", str(elsewhere))
    assert plain.returncode == 0, plain.stderr
    assert f"removed {stage / 'eeee.lock'} (0.0 MB)" in plain.stdout
    assert sorted(p.name for p in stage.iterdir()) == ["dddd", "dddd.lock"]  # resume state kept
    deep = gc("--work", "--work_dir", str(elsewhere))
    assert deep.returncode == 0, deep.stderr
    assert not stage.exists() and f"in {store.root}, {elsewhere}" in deep.stdout  # emptied, then removed
    missing = gc("--work_dir", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and missing.stdout == ""
    assert missing.stderr.strip() == f"store gc: error: --work_dir {str(tmp_path / 'nowhere')!r}: no such folder"


def test_hub_push_is_checked_before_expensive_work(
    hub: tuple[HubStore, FakeHfApi], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`check_can_push` refuses an offline Hub, no token, a read-only token and someone else's repo,
    each in one line, and lets a writable repo through."""
    from huggingface_hub import constants

    store, api = hub
    api.token = "hf_x"
    identity = {"name": "me", "orgs": [{"name": "lab"}], "auth": {"accessToken": {"role": "write"}}}
    api.whoami = lambda: identity
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(StoreError, match="^cannot push to model 'me/m': the Hub is offline"):
        store.check_can_push("me/m", "model")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    store.check_can_push("me/m", "model")
    store.check_can_push("lab/m", "dataset")
    with pytest.raises(StoreError, match="user 'me' is not 'other' nor one of its organisations"):
        store.check_can_push("other/m", "model")
    identity["auth"]["accessToken"]["role"] = "read"
    with pytest.raises(StoreError, match="token is read-only"):
        store.check_can_push("me/m", "model")
    api.token = None
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    with pytest.raises(StoreError, match="no Hugging Face token"):
        store.check_can_push("me/m", "model")


def test_revisions_that_other_artifacts_pin_are_refs_that_cache_tools_keep(
    store: LocalStore, make_folder: Callable[[dict[str, str]], Path]
) -> None:
    """An input revision a published artifact names (its lineage pins it) is a ref, `refs/pinned/<rev>`,
    so `hf cache prune` keeps it after `main` has moved on; a revision nobody pins or tags is pruned."""

    def card(inputs: dict[str, str]) -> str:
        lines = "".join(f"    {name}: {spec}\n" for name, spec in inputs.items())
        return f"---\nlineage:\n  stage: test\n  inputs:\n{lines}---\n# card\n"

    used = store.push(make_folder({"a.txt": "used"}), "ns/prompts", "dataset", "first")
    tagged = store.push(make_folder({"a.txt": "tagged"}), "ns/prompts", "dataset", "second", tag="v2")
    unused = store.push(make_folder({"a.txt": "nobody's"}), "ns/prompts", "dataset", "third")
    model = store.push(make_folder({"m.txt": "weights"}), "ns/model", "model", "model")
    store.push(make_folder({"a.txt": "now"}), "ns/prompts", "dataset", "fourth")  # main moves on
    inputs = {"input": f"ns/prompts@{used}", "model": f"ns/model@{model}", "hub": f"other/elsewhere@{'0' * 40}"}
    store.push(make_folder({"README.md": card(inputs), "b.txt": "made"}), "ns/images", "dataset", "made")
    assert store.pinned("ns/prompts", "dataset") == {used} and store.pinned("ns/model", "model") == {model}
    assert store.tags("ns/prompts", "dataset") == {"v2": tagged}  # pins are not tags
    assert not (store.root / "datasets--other--elsewhere").exists()  # a repo of another store: nothing written
    with pytest.raises(StoreError, match="not starting 'pinned/'"):
        store.push(make_folder({"a.txt": "x"}), "ns/prompts", "dataset", "m", tag=f"pinned/{unused}")

    from huggingface_hub import scan_cache_dir

    refs = {rev.commit_hash: set(rev.refs) for repo in scan_cache_dir(store.root).repos for rev in repo.revisions}
    assert refs[used] == {f"pinned/{used}"} and refs[tagged] == {"v2"} and refs[unused] == set()
    hf = Path(sys.executable).with_name("hf")
    result = subprocess.run([str(hf), "cache", "prune", "--cache-dir", str(store.root), "--yes"], capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert store.resolve(f"ns/prompts@{used}", "dataset").is_dir() and store.resolve("ns/prompts@v2", "dataset")
    assert not (store.root / "datasets--ns--prompts" / "snapshots" / unused).exists()
