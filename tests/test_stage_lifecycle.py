"""The stage lifecycle's promises about the store and the process: a refused command changes
nothing (tags are checked before any work and before any write), a run leaves no leftovers that
`gc` cannot find, and a run leaves torch's process-wide settings as it found them."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from pipelines import generate_prompts
from pipelines.artifacts.store import LocalStore, collect_garbage, content_revision
from pipelines.artifacts.workspace import HOST, is_locked, locked
from pipelines.errors import StoreError
from pipelines.harness import stage as stage_module
from pipelines.harness.config import StageArguments
from pipelines.harness.stage import DistributedStage, Published, StageRun

from .conftest import REPO_ROOT

SMALL = {"professions": ["doctor", "nurse"], "styles": ["close-up"], "ages": ["young"]}


def prompts_args(root: Path, **overrides: Any) -> generate_prompts.Arguments:
    return generate_prompts.Arguments(store_root=str(root), namespace="study", **{**SMALL, **overrides})


def store_state(root: Path) -> dict[str, bytes]:
    """Every file of the store but its locks: what a refused command must leave as it was."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.endswith(".lock")
    }


def test_a_tag_that_names_another_revision_is_refused_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "hub"
    first = generate_prompts.run(prompts_args(root, tag="v1"))
    before = store_state(root)
    built = []
    monkeypatch.setattr(generate_prompts.GeneratePrompts, "build", lambda self, run, folder: built.append(run))
    with pytest.raises(StoreError, match=f"tag 'v1' of 'study/prompts' already names revision {first.revision}"):
        generate_prompts.run(prompts_args(root, professions=["doctor"], tag="v1"))
    assert built == [] and store_state(root) == before  # nothing built, main and history unmoved
    assert not list((root / ".work").rglob(".build-*"))


def test_a_rerun_that_reuses_gives_its_tag_or_refuses_one_taken(tmp_path: Path) -> None:
    root = tmp_path / "hub"
    first = generate_prompts.run(prompts_args(root, tag="v1"))
    store = LocalStore(root)
    again = generate_prompts.run(prompts_args(root, tag="v2"))  # same inputs: reused, and named v2 too
    assert again.reused and again.revision == first.revision
    assert store.tags("study/prompts", "dataset") == {"v1": first.revision, "v2": first.revision}
    other = generate_prompts.run(prompts_args(root, professions=["doctor"], tag="v3"))
    before = store_state(root)
    with pytest.raises(StoreError, match=f"tag 'v3' of 'study/prompts' already names revision {other.revision}"):
        generate_prompts.run(prompts_args(root, tag="v3"))  # reusable, but v3 names the other revision
    assert store_state(root) == before
    # With the same inputs made twice, the tag asked for picks the revision it names.
    assert StageRun(generate_prompts.STAGE, prompts_args(root, tag="v1")).existing() == first.revision
    # --force rebuilds, and a rebuild need not give the same bytes (a GPU's sums): a taken tag is
    # refused before the work, not after it.
    with pytest.raises(StoreError, match="already names revision .* and --force rebuilds"):
        generate_prompts.run(prompts_args(root, tag="v1", force=True))
    assert store_state(root) == before


def test_a_refused_push_writes_no_pin(store: LocalStore, make_folder: Any) -> None:
    prompts = store.push(make_folder({"a.txt": "prompts"}), "ns/prompts", "dataset", "m")
    card = f"---\nlineage:\n  stage: s\n  inputs:\n    input: ns/prompts@{prompts}\n---\n"
    store.push(make_folder({"README.md": card, "b.txt": "one"}), "ns/out", "dataset", "m", tag="v1")
    pins = store.pinned("ns/prompts", "dataset")
    other = make_folder({"README.md": card.replace("s\n", "t\n", 1), "b.txt": "two"})
    store.root.joinpath("datasets--ns--prompts", "refs", "pinned", prompts).unlink()  # as if never pinned
    with pytest.raises(StoreError, match="tag 'v1' of 'ns/out' already names revision"):
        store.push(other, "ns/out", "dataset", "m", tag="v1")
    assert pins == {prompts} and store.pinned("ns/prompts", "dataset") == set()


@dataclass
class EchoArguments(StageArguments):
    text: str = "hello"
    output_dir: str | None = None


class Echo(DistributedStage):
    """A training-like stage: builds in a work folder (or the user's), then sends a copy elsewhere."""

    name = "echo"
    Arguments = EchoArguments
    repo_type = "model"
    sent: ClassVar[list[tuple[str, str | None]]] = []

    def work_folder(self, run: StageRun) -> Path:
        return Path(run.args.output_dir) if run.args.output_dir else run.work_folder()

    def build(self, run: StageRun, folder: Path) -> str:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "weights.txt").write_text(run.args.text)
        return "echo"

    def after_publish(self, run: StageRun, output: Path, message: str) -> None:
        store = run.store
        Echo.sent.append((content_revision(output), store.revision_of(run.output_repo_id, "model")))


def test_a_copy_sent_elsewhere_leaves_only_after_the_store_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--push_to_hub` is `after_publish`: a push the store refuses sends nothing anywhere."""
    root = tmp_path / "hub"
    Echo.sent.clear()
    published = Echo().run(EchoArguments(store_root=str(root), namespace="s", output_repo="echo"))
    assert Echo.sent == [(published.revision, published.revision)]  # the store held it when it was sent

    def full_disk(*args: Any, **kwargs: Any) -> str:
        raise StoreError("no space left on the device")

    monkeypatch.setattr(LocalStore, "push", full_disk)
    with pytest.raises(StoreError, match="no space left"):
        Echo().run(EchoArguments(store_root=str(root), namespace="s", output_repo="echo", text="other"))
    assert len(Echo.sent) == 1


def test_a_folder_the_user_names_keeps_no_lock_beside_it(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    args = EchoArguments(store_root=str(tmp_path / "hub"), namespace="s", output_repo="echo", output_dir=str(out))
    Echo().run(args)
    assert (out / "weights.txt").read_text() == "hello"  # the user's folder stays theirs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hub", "mine"]  # no mine.lock
    assert not list((tmp_path / "hub" / ".work").rglob("*.lock"))


def test_a_one_go_build_works_under_the_store_and_gc_finds_a_killed_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "hub"
    seen = []
    original = generate_prompts.GeneratePrompts.build

    def build(self: Any, run: StageRun, folder: Path) -> str:
        seen.append(folder)
        return original(self, run, folder)

    monkeypatch.setattr(generate_prompts.GeneratePrompts, "build", build)
    generate_prompts.run(prompts_args(root))
    assert seen[0].parent == root / ".work" / "generate_prompts"
    assert seen[0].name.startswith(f".build-{os.getpid()}-{HOST}-")
    assert not seen[0].exists()
    # A build killed mid-way: its folder names a process that is gone; a live process's stays.
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = root / ".work" / "generate_prompts" / f".build-{finished.stdout.strip()}-{HOST}-abc"
    live = root / ".work" / "translate_prompts" / f".build-1-{HOST}-xyz"  # pid 1 is always alive
    # Another machine's build (a store on a shared disk): its process id means nothing here.
    elsewhere = root / ".work" / "translate_prompts" / f".build-{finished.stdout.strip()}-0ther0ne-xyz"
    for folder in (dead, live, elsewhere):
        folder.mkdir(parents=True)
        (folder / "part.parquet").write_bytes(b"x" * 10)
    (root / ".work" / "classify").mkdir()  # a stage folder a failed run left empty
    found = {path for path, _ in collect_garbage(LocalStore(root), remove=False)}
    assert found == {dead, root / ".work" / "classify"}
    gc = [sys.executable, "-m", "pipelines.artifacts.store", "gc", "--store_root", str(root)]
    assert subprocess.run(gc, cwd=REPO_ROOT, capture_output=True, timeout=60).returncode == 0
    assert not dead.exists() and live.exists() and elsewhere.exists() and not (root / ".work" / "classify").exists()
    work = [sys.executable, "-m", "pipelines.artifacts.store", "gc", "--work", "--store_root", str(root)]
    assert subprocess.run(work, cwd=REPO_ROOT, capture_output=True, timeout=60).returncode == 0
    assert live.exists()  # --work removes resume state of stopped runs, never a live build


def test_a_run_leaves_torch_s_process_settings_as_it_found_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stage's thread count and training's TF32 flags would change the next step of a recipe."""
    real_execute = stage_module.execute
    before = (torch.get_num_threads(), torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)

    def scramble() -> None:
        torch.set_num_threads(1 if before[0] > 1 else 2)
        torch.backends.cuda.matmul.allow_tf32 = not before[1]
        torch.backends.cudnn.allow_tf32 = not before[2]

    def careless(stage: Any, args: Any) -> Published:
        scramble()
        return real_execute(stage, args)

    def failing(stage: Any, args: Any) -> Published:
        scramble()
        raise StoreError("refused")

    def settings() -> tuple:
        return torch.get_num_threads(), torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32

    monkeypatch.setattr(stage_module, "execute", careless)
    generate_prompts.run(prompts_args(tmp_path / "hub"))
    assert settings() == before
    monkeypatch.setattr(stage_module, "execute", failing)
    with pytest.raises(StoreError, match="refused"):
        generate_prompts.run(prompts_args(tmp_path / "hub"))
    assert settings() == before


def test_a_thread_count_above_the_usable_cpus_is_said(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(stage_module, "usable_cpus", lambda: 2)
    stage_module.warn_if_oversubscribed(2, "--cpu_threads")
    assert capsys.readouterr().err == ""
    stage_module.warn_if_oversubscribed(8, "--cpu_threads")
    assert "8 CPU threads (--cpu_threads) on 2 usable CPU(s)" in capsys.readouterr().err


def test_a_malformed_tag_is_refused_with_the_arguments() -> None:
    from pipelines.errors import ConfigError

    for tag in ("main", "pinned/abc", "a..b", "0" * 40, "-x"):
        with pytest.raises(ConfigError, match=f"tag={tag!r}"):
            dataclasses.replace(prompts_args(Path("unused")), tag=tag)


def test_a_sharded_stage_refuses_a_taken_tag_on_its_command_line_before_generating(
    tiny_study: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same refusal from a stage that shards and resumes: one line, exit 2, and neither the
    output's `main`, the pins of its inputs nor a work folder changed; before: the whole generation
    ran, then the push refused."""
    from pipelines import generate_images

    from .conftest import image_arguments

    root = Path(tiny_study["store_root"])
    first = generate_images.run(image_arguments(tiny_study, output_repo="tagged", languages=["en"], tag="v1"))
    before = store_state(root)
    capsys.readouterr()
    same = image_arguments(tiny_study)
    argv = [f"--{f.name}={getattr(same, f.name)}" for f in dataclasses.fields(same)
            if isinstance(getattr(same, f.name), (str, int)) and f.name != "languages"]  # fmt: skip
    argv += ["--languages", "en", "--output_repo", "tagged", "--tag", "v1", "--num_images", "1"]
    with pytest.raises(SystemExit) as exit_:
        generate_images.STAGE.main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("generate_images: error: tag 'v1' of 'study/tagged' already names revision")
    assert first.revision in lines[0] and store_state(root) == before
    assert not [p for p in (root / ".work").rglob("*") if "generate_images" in str(p) and p.name != "generate_images"]


class Precise(Echo):
    """An Echo that trains as training does: with an Accelerator of the precision it is given."""

    name = "precise"

    def build(self, run: StageRun, folder: Path) -> str:
        from accelerate import Accelerator

        accelerator = Accelerator(cpu=True, mixed_precision=run.args.text)
        return super().build(run, folder) + f" in {accelerator.mixed_precision}"


def test_two_trainings_with_other_precisions_run_one_after_the_other_in_one_process(tmp_path: Path) -> None:
    """accelerate's state is process-wide: the first run's precision stayed, and the second failed."""
    for precision in ("no", "bf16", "no"):
        args = EchoArguments(store_root=str(tmp_path / "hub"), namespace="s", output_repo="p", text=precision)
        published = Precise().run(args)
        assert LocalStore(tmp_path / "hub").history("s/p", "model")[0].message == f"echo in {precision}"
        assert published.revision


class Sent(Echo):
    """An Echo that sends its output on (as --push_to_hub does), with a card that lets a rerun reuse it."""

    name = "sent"

    def sends_elsewhere(self, run: StageRun) -> bool:
        return True

    def build(self, run: StageRun, folder: Path) -> str:
        message = super().build(run, folder)
        (folder / "README.md").write_text(f"---\nlineage:\n  fingerprint: '{run.fingerprint}'\n---\n")
        return message


def test_a_rerun_that_reuses_sends_the_output_on_again(tmp_path: Path) -> None:
    """A push that failed after the store published is not lost: the rerun reuses, and sends again."""
    Echo.sent.clear()
    args = EchoArguments(store_root=str(tmp_path / "hub"), namespace="s", output_repo="sent")
    first = Sent().run(args)
    again = Sent().run(args)
    assert again.reused and again.revision == first.revision
    assert Echo.sent == [(first.revision, first.revision)] * 2


def test_a_waiting_run_holds_the_lock_file_that_is_there_when_the_holder_removed_its_own(tmp_path: Path) -> None:
    """The holder of a user's folder removes its lock file on the way out; a run that waited on that
    file must not hold a lock on a file nobody else can see, or a third run would enter beside it."""
    folder = tmp_path / "out"
    inside = threading.Event()
    leave = threading.Event()

    def second() -> None:
        with locked(folder):
            inside.set()
            leave.wait(30)

    with locked(folder, tidy=True, keep_lock=False):
        waiting = threading.Thread(target=second)
        waiting.start()
        assert not inside.wait(0.5)  # it waits for the first
    assert inside.wait(30)
    assert is_locked(folder)  # a third run sees the lock, on the file at its path
    leave.set()
    waiting.join(30)


def test_torch_settings_are_kept_when_another_library_used_torch_s_newer_tf32_settings() -> None:
    """torch >= 2.9: once its `fp32_precision` settings were used, reading the legacy TF32 flags raises;
    a run must still start, and leave those settings as it found them (in a fresh process: the mix
    cannot be undone)."""
    code = (
        "import torch\n"
        "from pipelines.harness.stage import torch_settings_kept\n"
        "if hasattr(torch.backends.cuda.matmul, 'fp32_precision'):\n"
        "    torch.backends.cuda.matmul.fp32_precision = 'tf32'\n"
        "    with torch_settings_kept(load=True):\n"
        "        torch.backends.cuda.matmul.fp32_precision = 'ieee'\n"
        "    print(torch.backends.cuda.matmul.fp32_precision)\n"
        "else:\n"
        "    print('tf32')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "tf32"
