"""The stage lifecycle, written once: pin inputs, reuse or build, shard, resume, split, publish.

A stage is a `Stage` subclass with an `Arguments` dataclass (a `StageArguments`) and one of:

- `build(run, folder)`: writes the whole artifact (data and card) into an empty folder;
- for a `ShardedStage`, `plan(run)` (the work, cut into shards in a fixed order), `open(run,
  device)` (load models once per process), `make(run, shard)` (the rows of one shard) and
  `finish(run, folder)` (the card, and any table computed from all rows).

`execute` does everything else. It pins every input (a store or Hub revision, a content hash for a
local file) and fingerprints inputs and parameters; if the output repo already has a revision
with that fingerprint it is reused. Otherwise a sharded stage works in `<store root>/.work/<stage>/
<fingerprint>/`, writing each shard atomically, so a killed run resumes where it stopped; shard `i`
belongs to process `i % num_processes` under `torchrun` or `accelerate launch`, and every shard is
made in the same batches whatever the number of processes, so the output does not depend on it. On a
CPU, a stage whose copies share nothing (generation) makes a process's shards in worker threads, each
with its own copy of the models (`cpu_workers`): the same bytes, the idle cores used.
The main process holds the work folder's lock for the whole run and publishes the artifact.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pipelines.artifacts import workspace
from pipelines.artifacts.cards import make_lineage
from pipelines.artifacts.inputs import ModelInput, resolve_model
from pipelines.artifacts.reader import DatasetArtifact
from pipelines.artifacts.store import WORK_DIR, parse_ref
from pipelines.errors import StoreError, UserError
from pipelines.harness.code_version import code_version
from pipelines.harness.config import StageArguments, input_fields, parse_arguments

# Settings that choose where things go or how fast, not what is made: they stay out of the fingerprint.
STATS = ".stats"  # per-shard timing in a work folder, left out of the published artifact
NOT_PARAMETERS = {"store", "store_root", "namespace", "output_repo", "tag", "force", "work_dir", "device"}


@dataclass(frozen=True)
class Verdict:
    """What a judging stage concluded (`check_world`): a NO ends the command with exit code 1."""

    passed: bool
    lines: tuple[str, ...]


@dataclass(frozen=True)
class Published:
    repo_id: str
    revision: str
    repo_type: str
    reused: bool = False
    lineage: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False, repr=False)
    verdict: Verdict | None = dataclasses.field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        return f"{self.repo_id}@{self.revision}"


class StageRun:
    """One run of a stage: its store, pinned inputs, parameters, fingerprint and lineage."""

    def __init__(self, stage: Stage, args: StageArguments):
        self.stage = stage.name
        self.args = args
        self.repo_type = stage.repo_type
        self.store = args.open_store()
        self.output_repo_id = args.repo_id(args.output_repo)
        self.inputs: dict[str, str] = {}
        self.models: dict[str, ModelInput] = {}
        self._kinds = input_fields(args)
        for name, kind in self._kinds.items():
            spec = getattr(args, name)
            if spec is None:
                continue
            if kind in ("model", "source"):
                self.models[name] = resolve_model(
                    spec, self.store, namespace=args.namespace, **stage.model_options(name, args)
                )
                self.inputs[name] = self.models[name].pin
            else:
                ref = parse_ref(spec, namespace=args.namespace)
                self.inputs[name] = f"{ref.repo_id}@{self.store.revision_of(ref, 'dataset')}"
        self.inputs |= stage.pinned_inputs(args, self.store)
        self.parameters = {
            f.name: plain_value(getattr(args, f.name))
            for f in dataclasses.fields(args)
            if f.name not in NOT_PARAMETERS and f.name not in stage.not_parameters and f.name not in self._kinds
        }
        # The code that decides the output is part of what is reused: a fix to it rebuilds (code_version).
        self.code = code_version(sys.modules[type(stage).__module__].__file__)
        self.fingerprint = hashlib.sha256(
            json.dumps([self.stage, self.code, self.inputs, self.parameters], sort_keys=True).encode()
        ).hexdigest()[:16]
        self.lineage = make_lineage(self.stage, self.inputs, self.parameters, self.fingerprint, code=self.code)

    def dataset(self, name: str) -> DatasetArtifact:
        """Input `name` at its pinned revision, checked to be of the kind the stage reads."""
        artifact = DatasetArtifact(self.store.resolve(self.inputs[name], "dataset"), self.inputs[name])
        kind = self._kinds.get(name, "any")  # a pinned input (`Stage.pinned_inputs`) is checked by its stage
        if kind != "any":
            artifact.expect(kind, name)
        return artifact

    def model(self, name: str) -> ModelInput:
        return self.models[name]

    def work_root(self) -> Path:
        return Path(getattr(self.args, "work_dir", None) or Path(self.args.store_root) / WORK_DIR)

    def work_folder(self) -> Path:
        return workspace.work_folder(self.work_root(), self.stage, self.fingerprint)

    def publish(self, folder: Path, message: str, ignore: tuple[str, ...] = ()) -> Published:
        revision = self.store.push(
            folder, self.output_repo_id, self.repo_type, message, tag=self.args.tag, ignore=ignore
        )
        print(f"[{self.stage}] published {self.repo_type} {self.output_repo_id}@{revision}", file=sys.stderr)
        return Published(self.output_repo_id, revision, self.repo_type, lineage=self.lineage)

    def reuse(self, main: bool = True) -> Published | None:
        """The existing output for the same inputs and parameters, unless `--force`. A `--tag` asked
        for names it (the main process writes it), unless the tag already names another revision."""
        if getattr(self.args, "force", False):
            return None
        revision = self.existing()
        if revision is None:
            return None
        tag = self.args.tag
        current = self._tagged() if tag is not None else None
        if tag is not None and current not in (None, revision):
            raise StoreError(
                f"tag {tag!r} of {self.output_repo_id!r} already names revision {current}, not {revision} "
                "(the same inputs and parameters): nothing was changed; choose another tag"
            )
        if main:
            if tag is not None and current is None:
                self.store.tag(self.output_repo_id, self.repo_type, tag, revision)
            print(
                f"[{self.stage}] up to date: {self.output_repo_id}@{revision} (same inputs and parameters)"
                + (f", tagged {tag!r}" if tag is not None else ""),
                file=sys.stderr,
            )
        return Published(self.output_repo_id, revision, self.repo_type, reused=True, lineage=self.lineage)

    def existing(self) -> str | None:
        """The newest revision of the output repo made from the same inputs and parameters (the one
        `--tag` names, when it names one of them)."""
        if not self.store.exists(self.output_repo_id, self.repo_type):
            return None
        history = self.store.history(self.output_repo_id, self.repo_type)  # newest first
        made = [entry.revision for entry in history if entry.lineage.get("fingerprint") == self.fingerprint]
        tagged = self._tagged() if self.args.tag is not None else None
        return tagged if tagged in made else (made[0] if made else None)

    def check_tag(self) -> None:
        """Refuses, before any work, a `--tag` that already names a revision made otherwise: the push
        would refuse it too, but only after the build (hours of generation or training)."""
        current = self._tagged() if self.args.tag is not None else None
        if current is None:
            return
        # Called when reuse found nothing, so the tagged revision was made otherwise, or `--force`
        # rebuilds, and a rebuild need not give the same bytes (a GPU's sums).
        why = (
            "and --force rebuilds, which may make another revision"
            if getattr(self.args, "force", False)
            else "made from other inputs, parameters or code"
        )
        raise StoreError(
            f"tag {self.args.tag!r} of {self.output_repo_id!r} already names revision {current}, {why}: "
            "nothing was made; choose another tag"
        )

    def _tagged(self) -> str | None:
        if not self.store.exists(self.output_repo_id, self.repo_type):
            return None
        return self.store.tags(self.output_repo_id, self.repo_type).get(self.args.tag)


class Stage:
    """A stage: what it reads and publishes, and how it builds its artifact."""

    name: ClassVar[str]
    Arguments: ClassVar[type[StageArguments]]
    repo_type: ClassVar[str] = "dataset"
    command: ClassVar[str] = ""  # how a user starts it (default `python -m pipelines.<name>`)
    # Fields that choose where or how fast, not what is made (besides NOT_PARAMETERS).
    not_parameters: ClassVar[tuple[str, ...]] = ()
    # Whether it runs torch: its threads are then capped at the usable CPUs and restored after the run.
    uses_torch: ClassVar[bool] = False

    def model_options(self, name: str, args: Any = None) -> dict[str, Any]:
        """How model input `name` may be given (see `resolve_model`): forms, library names, files."""
        return {"what": name}

    def pinned_inputs(self, args: StageArguments, store: Any) -> dict[str, str]:
        """Inputs named otherwise than by an input field (a list of versions), pinned for the lineage
        and fingerprint: `{name: ns/repo@revision}`."""
        return {}

    def build(self, run: StageRun, folder: Path) -> str:
        """Writes the artifact into an empty folder; returns the commit message."""
        raise NotImplementedError

    def estimate(self, args: StageArguments, estimates: Any, costs: Any) -> Any:
        """For `run --dry_run`: what this step reads, downloads and makes (`harness.estimate.Estimate`),
        recording its output's counts in `estimates` for the steps after it. Nothing is loaded."""
        return None

    def verdict(self, store: Any, published: Published) -> Verdict | None:
        """For a stage that judges (`check_world`): the verdict of the revision a run published or
        reused, read back from it, so that a rerun that reuses it concludes the same."""
        return None

    def run(self, args: StageArguments) -> Published:
        # Each run works on an instance of its own: whatever it loads or caches in `open` (a pipeline,
        # a SEGA pipeline, a classifier) lives there and goes with it. On the module's `STAGE` it
        # outlived the run, and a second run in the same process (a recipe) reused the first one's.
        fresh = type(self)()
        try:
            with torch_settings_kept(load=self.uses_torch):
                published = execute(fresh, args)
        finally:
            forget_accelerate_state()
        verdict = fresh.verdict(args.open_store(), published)
        return dataclasses.replace(published, verdict=verdict) if verdict is not None else published

    def main(self, argv: list[str] | None = None) -> None:
        stage_main(self, argv)


@dataclass
class Shard:
    """One unit of resumable work: the rows `make` returns go to `data/<config>/train-<index>.parquet`."""

    config: str
    index: int
    items: list[Any]


class ShardedStage(Stage):
    """A stage whose rows are made shard by shard, resumably, over any number of processes."""

    uses_torch = True  # accelerate's processes

    features: ClassVar[Any]  # datasets.Features of the rows
    unit: ClassVar[str] = "img"
    # Whether copies of it, each `open`ed, may `make` shards at once in threads of one process: true
    # where a copy shares nothing `make` changes and its work runs in torch, which leaves Python's
    # lock while it computes (`cpu_workers`).
    threads_share_nothing: ClassVar[bool] = False

    def plan(self, run: StageRun) -> list[Shard]:
        raise NotImplementedError

    def open(self, run: StageRun, device: str) -> None:
        """Loads what `make` needs (models), once per process that has work left."""

    def make(self, run: StageRun, shard: Shard) -> list[dict[str, Any]]:
        raise NotImplementedError

    def finish(self, run: StageRun, folder: Path) -> str:
        """Writes the card (and tables computed from every row) once all shards exist; the message."""
        raise NotImplementedError


class DistributedStage(Stage):
    """A stage that runs in every process and manages them itself (training with accelerate).

    `build(run, folder)` is called in every process with the run's work folder; the main process
    then publishes `output(run, folder)` without the files matching `ignore`.
    """

    ignore: ClassVar[tuple[str, ...]] = ()
    uses_torch = True

    def work_folder(self, run: StageRun) -> Path:
        return run.work_folder()

    def output(self, run: StageRun, folder: Path) -> Path:
        return folder

    def sends_elsewhere(self, run: StageRun) -> bool:
        """Whether `after_publish` sends the output somewhere (then a rerun that reuses sends it too)."""
        return False

    def after_publish(self, run: StageRun, output: Path, message: str) -> None:
        """What the main process does once the store holds `output` (training: `--push_to_hub`). Only
        here: a copy sent anywhere before the store's push could outlive that push's refusal."""


# ---------------------------------------------------------------------------------------------
# The executor
# ---------------------------------------------------------------------------------------------


def execute(stage: Stage, args: StageArguments) -> Published:
    """Runs a stage: reuse, or build and publish. A failure publishes nothing."""
    if isinstance(stage, (ShardedStage, DistributedStage)):
        return _execute_in_processes(stage, args)
    run = StageRun(stage, args)
    reused = run.reuse()
    if reused is not None:
        return reused
    run.check_tag()
    folder = workspace.build_folder(run.work_root(), stage.name)
    try:
        return run.publish(folder, stage.build(run, folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def torch_settings_kept(load: bool) -> Iterator[None]:
    """Leaves torch's process-wide settings as a run found them (threads capped at the usable CPUs
    meanwhile). A stage's thread count and training's TF32 flags would otherwise carry into the next
    step of a recipe and change its results while its fingerprint says they are the same. `load`
    imports torch first (for a stage that will): the settings to restore are those before its first use."""
    if load:
        import torch  # noqa: F401
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    threads, tf32 = torch.get_num_threads(), _tf32_settings(torch)
    saved = (threads, [getattr(owner, name) for owner, name in tf32])
    # torch's default is a thread per core of the host, which a container's quota or affinity may not
    # give this process: a stage with no thread setting of its own uses the CPUs it may use, no more.
    torch.set_num_threads(min(saved[0], usable_cpus()))
    try:
        yield
    finally:
        torch.set_num_threads(saved[0])
        for (owner, name), value in zip(tf32, saved[1]):
            setattr(owner, name, value)


def _tf32_settings(torch: Any) -> list[tuple[Any, str]]:
    """Where torch keeps its TF32 choices: the legacy flags (what training's `--allow_tf32` sets), or,
    once another library used torch's newer `fp32_precision` settings (torch >= 2.9), those: reading
    the legacy flags then raises."""
    backends = torch.backends
    try:
        backends.cuda.matmul.allow_tf32, backends.cudnn.allow_tf32  # noqa: B018 - raises once mixed
        return [(backends.cuda.matmul, "allow_tf32"), (backends.cudnn, "allow_tf32")]
    except RuntimeError:
        owners = [backends, backends.cuda.matmul, backends.cudnn, backends.cudnn.conv, backends.cudnn.rnn]
        return [(owner, "fp32_precision") for owner in owners]


def forget_accelerate_state() -> None:
    """Ends accelerate's process-wide state after a run in a single process. It would otherwise hold
    the first run's choices for the rest of a recipe: a later training with another mixed precision
    fails ("AcceleratorState has already been initialized"), and a `device: cpu` step would keep a
    later `auto` step on the CPU. Under torchrun the state is the process group's and stays."""
    state = sys.modules.get("accelerate.state")
    distributed = sys.modules.get("torch.distributed")
    if state is None or (distributed is not None and distributed.is_available() and distributed.is_initialized()):
        return
    state.AcceleratorState._reset_state(reset_partial_state=True)


def process_state(device: str = "auto") -> Any:
    """accelerate's view of the processes (torchrun / accelerate launch); one process otherwise."""
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=device == "cpu" or not torch.cuda.is_available())
    if state.num_processes > 1:
        _close_group_at_exit(state)
    return state


@functools.cache
def _close_group_at_exit(state: Any) -> None:
    """Closes the process group while Python still runs, once per process.

    Left to the interpreter's teardown, gloo's threads can outlive the group and abort a process
    that has already published (`terminate called without an active exception`, SIGABRT).
    """
    atexit.register(state.destroy_process_group)


def _execute_in_processes(stage: ShardedStage | DistributedStage, args: StageArguments) -> Published:
    from accelerate.utils import broadcast_object_list

    state = process_state(getattr(args, "device", "auto"))
    run = StageRun(stage, args)
    folder = stage.work_folder(run) if isinstance(stage, DistributedStage) else run.work_folder()
    result: list[Any] = [None]
    # A folder the user named (`--output_dir`) keeps no lock file beside it: gc would never find it.
    store_owned = folder.resolve() == run.work_folder().resolve()
    main = state.is_main_process
    with workspace.locked(folder, tidy=True, keep_lock=store_owned) if main else contextlib.nullcontext():
        state.wait_for_everyone()  # the main process holds the lock: no other run works in this folder
        reused = run.reuse(main=main)
        if reused is not None:
            if isinstance(stage, DistributedStage) and main and stage.sends_elsewhere(run):
                # What the store holds may not have been sent on (a push to the Hub that failed after
                # the store published): a rerun sends it again; an unchanged upload makes no commit.
                output = run.store.resolve(str(reused), stage.repo_type)
                stage.after_publish(run, output, f"{run.stage}: the store's revision {reused.revision[:12]}")
            return reused
        run.check_tag()
        # A user's mistake is found by every process alike (in `plan` or before `build` splits the
        # work), so each raises it; a process that fails alone ends the group (torchrun stops it).
        if isinstance(stage, ShardedStage):
            _make_shards(stage, run, state, folder)
            if state.is_main_process:
                result = [run.publish(folder, stage.finish(run, folder), ignore=(STATS,))]
                shutil.rmtree(folder, ignore_errors=True)
        else:
            message = stage.build(run, folder)
            if state.is_main_process:
                result = [run.publish(stage.output(run, folder), message, ignore=stage.ignore)]
                stage.after_publish(run, stage.output(run, folder), message)
                if store_owned:
                    # The store's own work folder held resume state, which a published model no
                    # longer needs; a folder the user named (`--output_dir`) is theirs to keep.
                    shutil.rmtree(folder, ignore_errors=True)
        if state.num_processes > 1:
            broadcast_object_list(result)
    return result[0]


def _make_shards(stage: ShardedStage, run: StageRun, state: Any, folder: Path) -> None:
    """This process's missing shards, then a check (main process) that every shard exists."""
    from tqdm.auto import tqdm

    from pipelines.artifacts.dataset_files import DatasetWriter

    shards = stage.plan(run)
    writer = DatasetWriter(folder, stage.features)
    mine = [s for number, s in enumerate(shards) if number % state.num_processes == state.process_index]
    todo = [s for s in mine if not writer.shard_path(s.config, s.index).is_file()]
    if todo:
        device = _device(run.args, state)
        _set_threads(run.args, device)
        workers = cpu_workers(stage, run.args, device, state.num_processes, len(todo))
        before = resident_bytes()
        stage.open(run, device)
        if workers > 1 and getattr(run.args, "cpu_workers", None) is None:
            workers = min(workers, copies_that_fit(resident_bytes() - before))
        progress = tqdm(
            total=sum(len(s.items) for s in todo),
            desc=f"{stage.name} [{state.process_index + 1}/{state.num_processes}]"
            + (f" ({workers} workers)" if workers > 1 else ""),
            unit=stage.unit,
            disable=not state.is_local_main_process,
            file=sys.stderr,
        )
        counted = threading.Lock()

        def make_one(worker: ShardedStage, shard: Shard) -> None:
            started = time.perf_counter()
            writer.write_shard(shard.config, shard.index, worker.make(run, shard))
            # Timing beside the data, not in it: the rows stay byte-identical from run to run.
            stats = folder / STATS / f"{shard.config}-{shard.index:05d}.json"
            stats.parent.mkdir(parents=True, exist_ok=True)
            stats.write_text(json.dumps({"items": len(shard.items), "seconds": time.perf_counter() - started}))
            with counted:
                progress.update(len(shard.items))

        if workers == 1:
            for shard in todo:
                make_one(stage, shard)
        else:
            _make_in_threads(stage, run, device, todo, workers, make_one)
        progress.close()
    state.wait_for_everyone()
    if state.is_main_process:
        missing = [f"{s.config}/{s.index}" for s in shards if not writer.shard_path(s.config, s.index).is_file()]
        if missing:
            raise RuntimeError(f"shards missing after {stage.name}: {', '.join(missing[:5])}")
        for leftover in folder.rglob(".*.tmp"):
            leftover.unlink()  # a killed writer's partial file; its shard was made again
        # Shards of an earlier plan that this one does not have (a stage's own extra tables) go too.
        planned = {writer.shard_path(s.config, s.index) for s in shards}
        for path in folder.glob("data/*/*.parquet"):
            if path not in planned:
                path.unlink()


def _make_in_threads(
    stage: ShardedStage, run: StageRun, device: str, todo: list[Shard], workers: int, make_one: Any
) -> None:
    """`todo` made by `workers` threads, each with its own `open`ed copy of the stage (the first: the
    stage itself, open already), taking the next shard as it finishes one. Each shard is made as one
    process makes it (the same batches, the same threads per operation), so the bytes do not depend
    on `workers`. The first failure stops the others after the shard each is making, and is raised
    here."""
    import copy
    import queue
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

    pending: queue.SimpleQueue[Shard] = queue.SimpleQueue()
    for shard in todo:
        pending.put(shard)
    stop = threading.Event()
    # One `open` at a time: loading a model patches process-wide state for a moment (transformers and
    # diffusers build it on the meta device), and two loads at once broke one another.
    opening = threading.Lock()

    def work(number: int) -> None:
        try:
            worker = stage
            if number:
                worker = copy.copy(stage)  # what `plan` set is shared, read-only
                with opening:
                    worker.open(run, device)
            while not stop.is_set():
                try:
                    shard = pending.get_nowait()
                except queue.Empty:
                    return
                make_one(worker, shard)
        except BaseException:
            stop.set()
            raise

    with ThreadPoolExecutor(workers, thread_name_prefix=f"{stage.name}-worker") as pool:
        futures = [pool.submit(work, number) for number in range(workers)]
        try:
            wait(futures, return_when=FIRST_EXCEPTION)
        except BaseException:  # Ctrl-C: the workers stop after their shards in progress
            stop.set()
            raise
    for future in futures:
        future.result()


def cpu_workers(stage: ShardedStage, args: Any, device: str, processes: int, shards: int) -> int:
    """Threads of this process that make shards at once: on a CPU, for a stage whose copies share
    nothing (`threads_share_nothing`), `--cpu_workers` or, by default, as many as the CPUs that other
    work leaves free hold at `--cpu_threads` each (one process's share of them under torchrun), then
    as many as the memory holds (`copies_that_fit`, once the first copy is loaded). A stage on fixed
    threads (the same bytes on any machine) otherwise leaves the other cores idle."""
    if device != "cpu" or not stage.threads_share_nothing or shards < 2:
        return 1
    asked = getattr(args, "cpu_workers", None)
    if asked is not None:
        return max(1, min(asked, shards))
    import torch

    threads = getattr(args, "cpu_threads", None) or torch.get_num_threads()
    if usable_cpus() // processes < 2 * threads:
        return 1  # no room for a second worker, busy or not: no need to sample the load
    share, _ = cpu_share(processes)
    return max(1, min(shards, share // threads))


PROC_MEMINFO = Path("/proc/meminfo")
CGROUP_MEMORY = Path("/sys/fs/cgroup")  # v2: memory.max ("max" or bytes) and memory.current


def resident_bytes() -> int:
    """This process's resident memory (Linux; 0 where /proc cannot be read)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def memory_room() -> int | None:
    """Bytes this process could still take: the machine's available memory, capped by what the
    cgroup's limit leaves; None where neither can be read."""
    room = None
    try:
        for line in PROC_MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                room = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = (CGROUP_MEMORY / "memory.max").read_text().strip()
        if limit != "max":
            left = int(limit) - int((CGROUP_MEMORY / "memory.current").read_text())
            room = left if room is None else min(room, left)
    except (OSError, ValueError):
        pass
    return None if room is None else max(0, room)


def copies_that_fit(per_copy: int) -> int:
    """How many copies of the models (the one loaded, and more) a process may hold: more only while
    they take at most half of the memory left, and none more where that cannot be read. A worker per
    free core of a large model on a many-core machine would otherwise run out of memory."""
    room = memory_room()
    if room is None:
        return 1
    return 1 + int(room / 2 // max(per_copy, 1 << 20))


def cpu_workers_field() -> Any:
    """The `cpu_workers` setting of a stage whose copies share nothing (one definition for each)."""
    return field(
        default=None,
        metadata={
            "help": "On CPU, shards made at once in each process, by as many copies of the models on "
            "--cpu_threads threads each (default: as many as the CPUs other work leaves free hold, and "
            "half the free memory). The bytes are the same for any value; memory grows with it."
        },
    )


def shard_seconds(folder: Path) -> dict[str, tuple[int, float]]:
    """Per config, the items made and the seconds `make` took, over every run that made a shard."""
    totals: dict[str, tuple[int, float]] = {}
    for path in sorted((folder / STATS).glob("*.json")):
        config = path.stem.rsplit("-", 1)[0]
        stats = json.loads(path.read_text())
        items, seconds = totals.get(config, (0, 0.0))
        totals[config] = (items + stats["items"], seconds + stats["seconds"])
    return totals


def _device(args: Any, state: Any) -> str:
    requested = getattr(args, "device", "auto")
    return str(state.device) if requested == "auto" else requested


CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # v2: "<quota> <period>" in microseconds, or "max <period>"
CGROUP_V1_CPU = Path("/sys/fs/cgroup/cpu")  # v1: cpu.cfs_quota_us (-1: none) and cpu.cfs_period_us


def usable_cpus() -> int:
    """The CPUs this process may use: its affinity mask, capped by a cgroup CPU quota (v2, or v1 on
    older hosts), which `os.cpu_count()` and torch's default both ignore (a container limited to 2
    CPUs on a 64-core host would otherwise run 64 threads on 2 CPUs' time)."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    if quota is not None:
        count = min(count, int(quota))
    return max(1, count)


def cgroup_cpu_quota() -> float | None:
    """CPUs' worth of time the cgroup allows per period, or None where none is set or readable."""
    try:
        quota, period = CGROUP_CPU_MAX.read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass  # no cgroup v2 quota: try v1
    try:
        quota = int((CGROUP_V1_CPU / "cpu.cfs_quota_us").read_text())
        period = int((CGROUP_V1_CPU / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 or period <= 0 else quota / period


PROC_STAT = Path("/proc/stat")  # per-CPU time in ticks: user nice system idle iowait irq softirq steal ...


def busy_cpus(seconds: float = 0.3, cpus: set[int] | None = None) -> float:
    """How many of this process's CPUs other work keeps busy, sampled over `seconds` while this
    process sleeps (Linux; 0.0 where /proc/stat cannot be read). Busy is everything but idle and
    iowait, summed over the CPUs in the affinity mask, so 1.0 is one core's worth of a neighbour."""
    cpus = cpus if cpus is not None else (os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None)

    def ticks() -> dict[int, tuple[int, int]]:
        found = {}
        for line in PROC_STAT.read_text().splitlines():
            name, *fields = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and (cpus is None or int(name[3:]) in cpus):
                values = [int(value) for value in fields]
                found[int(name[3:])] = (sum(values[:8]), values[3] + values[4])  # total, idle + iowait
        return found

    try:
        before = ticks()
        time.sleep(seconds)
        after = ticks()
    except (OSError, ValueError, IndexError):
        return 0.0
    busy = 0.0
    for cpu, (total, idle) in after.items():
        spent = total - before.get(cpu, (total, idle))[0]
        if spent > 0:
            busy += 1 - (idle - before[cpu][1]) / spent
    return busy


def cpu_share(processes: int = 1, sample_seconds: float = 0.3) -> tuple[int, float]:
    """Intra-op threads for each of `processes` starting together on this machine, and the CPUs other
    work kept busy when they started. Threads beyond the free CPUs are what makes a busy machine slow
    training tens of times (each step waits for a thread with no core to run on); one thread per free
    core degrades by about the share of cores lost. The processes' siblings may be busy starting up
    while this one samples, so up to `processes - 1` busy CPUs are counted as theirs."""
    others = max(0.0, busy_cpus(sample_seconds) - (processes - 1))
    free = usable_cpus() - round(others)
    return max(1, free // processes), others


def _set_threads(args: Any, device: str) -> None:
    """On CPU, a fixed thread count per process makes float sums (and so the bytes) reproducible."""
    import torch

    threads = getattr(args, "cpu_threads", None)
    if device == "cpu" and threads:
        warn_if_oversubscribed(threads, "--cpu_threads")
        torch.set_num_threads(threads)


def warn_if_oversubscribed(threads: int, why: str) -> None:
    """Says so when a thread count asked for is above the CPUs this process may use. It is kept (the
    bytes of the results depend on it, and the card records it), but every step will wait on
    threads with no CPU to run on."""
    usable = usable_cpus()
    if threads > usable:
        print(
            f"warning: {threads} CPU threads ({why}) on {usable} usable CPU(s): expect it to run several "
            f"times slower than with {usable}",
            file=sys.stderr,
        )


def stage_main(stage: Stage, argv: list[str] | None = None) -> None:
    """The command line of a stage: a one-line error and exit code 2 on bad input."""
    try:
        args = parse_arguments(stage.Arguments, stage.command or f"python -m pipelines.{stage.name}", argv, stage.name)
        published = stage.run(args)
    except UserError as err:
        print(f"{stage.name}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(published)
    _leave_the_group()
    if published.verdict is not None:
        print("\n".join(published.verdict.lines), flush=True)
        if not published.verdict.passed:
            raise SystemExit(1)


def _leave_the_group() -> None:
    """Ends a process of a torchrun group that has finished its work, without the interpreter's
    teardown: there, under load, gloo's threads still abort a process that has already published
    (`terminate called without an active exception`, SIGABRT; 2 runs in 10 on a busy 2-core
    machine, even with the group closed at exit). Every process waits for the others first, so no
    one leaves while another still talks to it."""
    distributed = sys.modules.get("torch.distributed")
    if distributed is None or not distributed.is_initialized() or distributed.get_world_size() < 2:
        return
    import logging
    import os

    distributed.barrier()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def plain_value(value: Any) -> Any:
    """Makes a field value JSON- and YAML-friendly (tuples to lists, paths to strings)."""
    if isinstance(value, (list, tuple)):
        return [plain_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain_value(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value
