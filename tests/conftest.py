"""Shared fixtures. Every test runs offline, against stores in temporary folders."""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Before any Hugging Face library is imported: no network, and caches that never touch the user's.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
if "HF_HOME" not in os.environ:
    os.environ["HF_HOME"] = _HF_HOME = tempfile.mkdtemp(prefix="t2i-bias-hf-home-")
else:
    _HF_HOME = None
for variable in ("T2I_BIAS_STORE", "T2I_BIAS_STORE_ROOT", "T2I_BIAS_NAMESPACE"):
    os.environ.pop(variable, None)


def _pin_this_xdist_worker() -> None:
    """Under pytest-xdist (`-n auto`), each worker and the processes it starts run on their own CPUs
    (worker i of n takes every n-th usable CPU), before torch is imported. Two workers with torch's
    default threads each would fight over every core (tens of times slower, README); and on its own
    CPUs a worker's training picks the same thread count in every run, so its bytes are reproducible."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not worker or not count or not hasattr(os, "sched_setaffinity"):
        return
    cpus, count = sorted(os.sched_getaffinity(0)), int(count)
    if len(cpus) >= count > 1:
        mine = cpus[int(worker.removeprefix("gw")) :: count]
        os.sched_setaffinity(0, mine)
        os.environ["OMP_NUM_THREADS"] = str(len(mine))


_pin_this_xdist_worker()

import pytest  # noqa: E402

from pipelines.artifacts.store import LocalStore  # noqa: E402

if TYPE_CHECKING:
    import subprocess

    from pipelines import generate_images

REPO_ROOT = Path(__file__).resolve().parent.parent


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: a worker per CPU this process may use (affinity and cgroup quota), not per core of the host."""
    from pipelines.harness.stage import usable_cpus

    return usable_cpus()


# The tests that need the offline study (they request `offline_study`, or a fixture that does), by
# name: under pytest-xdist the scheduler, in the controlling process, sees test ids only. Every test
# checks this list against what it requests (`_offline_study_tests_are_named`).
OFFLINE_STUDY_TESTS = frozenset({
    "test_a_space_that_reads_the_study_s_store_is_published_pinned",
    "test_an_untrained_world_ends_the_study_with_two_no_verdicts_and_exit_1",
    "test_a_sample_that_cannot_be_decoded_is_said_so_in_its_place_beside_the_other_version",
    "test_arabic_chinese_and_japanese_prompts_render_upright_with_fonts_that_have_their_glyphs",
    "test_every_offline_study_artifact_opens_by_reference_and_by_its_card",
    "test_readme_study_command_runs",
    "test_space_api_gives_the_study_s_own_figures",
    "test_space_in_a_real_browser",
    "test_space_on_a_phone",
    "test_space_refuses_bad_input_briefly",
    "test_space_soak_while_a_stage_republishes",
    "test_the_alignment_recipe_moves_the_world_towards_its_target_and_keeps_control",
    "test_the_examples_that_read_the_store_run_on_the_offline_study",
    "test_the_methods_recipe_compares_every_method_on_the_planted_world",
})  # fmt: skip
# Of those, the one that runs a recipe into its own copy of the study (`study_copy`), apart from the
# others: they run one after another on one worker, on the study's own store (the methods recipe adds
# to it, and the Space's tests then show its table).
FLOATING_STUDY_TESTS = frozenset({"test_the_alignment_recipe_moves_the_world_towards_its_target_and_keeps_control"})
# The minutes-long tests decide the wall time: the first queued, so no worker ends on one while the
# other idles.
FIRST_QUEUED = frozenset({"test_the_magbig_recipe_runs_offline_on_the_tiny_models"})
# The other test files, heaviest first, with their seconds at one CPU (slow tests included, measured
# 2026-12-05; test_benchmarks.py's with 40 s for the world-draws smoke added later; test_training.py's
# is the 350 measured less the ~60 s that preloaded launches saved its `-m "not slow"` tests): two
# workers then end within a small file of each other. In xdist's order (files with the most tests
# first) the training tests started 47 s into a `-m "not slow"` run and the two workers ended 18 s
# apart. Stale numbers cost balance, never a result.
HEAVIEST_FILES = {
    "test_benchmarks.py": 440,
    "test_training.py": 355,
    "test_sharded_stages.py": 165,
    "test_config_and_runner.py": 140,
    "test_methods.py": 85,
    "test_world.py": 75,
    "test_bias.py": 70,
    "test_model_inputs.py": 70,
    "test_faces.py": 45,
    "test_generate_images.py": 40,
}
# The floating study test goes once this many seconds of the other files are queued before it. One
# worker runs the study's group (about 1,950 s); the other the first-queued test (550), these files
# and the floating test (790), then both share what is left: the two end together when the floating
# test ends as the group does plus what is left, at about 1,100 s of files before it. The study is
# made by then (about 620 s after the start).
FLOATING_AFTER_SECONDS = 1_100


def file_name(item: pytest.Item) -> str:
    return item.nodeid.split("::")[0].rsplit("/", 1)[-1]


def test_name(nodeid: str) -> str:
    """The test function's name in a test id (`path::name[parameters]`)."""
    return nodeid.split("::")[-1].split("[")[0]


@pytest.fixture(autouse=True)
def _offline_study_tests_are_named(request: pytest.FixtureRequest) -> None:
    """A test that needs the offline study and is not in OFFLINE_STUDY_TESTS (or the reverse) fails
    here, before the study is made: under xdist it would wait for the study on a worker of its own."""
    name, uses = test_name(request.node.nodeid), "offline_study" in request.fixturenames
    if uses != (name in OFFLINE_STUDY_TESTS):
        pytest.fail(f"tests/conftest.py OFFLINE_STUDY_TESTS: {'add' if uses else 'remove'} {name}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist, the queue's order. A test that needs the study may be the one that waits for
    it (about 13 minutes at one CPU): its time limit allows for that."""
    grouped, floating, first, others = [], [], [], []
    for item in items:
        name = test_name(item.nodeid)
        if name in OFFLINE_STUDY_TESTS and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(2400))
        if name in FLOATING_STUDY_TESTS:
            floating.append(item)
        elif name in OFFLINE_STUDY_TESTS:
            grouped.append(item)
        else:
            (first if name in FIRST_QUEUED else others).append(item)
    if hasattr(config, "workerinput"):
        rank = {name: index for index, name in enumerate(HEAVIEST_FILES)}
        others.sort(key=lambda item: rank.get(file_name(item), len(rank)))
        present, before, queued = {file_name(item) for item in others}, set(), 0
        for name in (name for name in HEAVIEST_FILES if name in present):  # the order `others` now has
            if queued >= FLOATING_AFTER_SECONDS:
                break
            before.add(name)
            queued += HEAVIEST_FILES[name]
        # Half of the others where too few of these files are selected to reach the mark.
        later = sum(file_name(i) in before for i in others) if queued >= FLOATING_AFTER_SECONDS else len(others) // 2
        items[:] = grouped + first + others[:later] + floating + others[later:]


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Tests sent to workers in the collected order, a test file at a time as workers free up, except
    the tests of the offline study, which go together to one worker (in their own order), ahead of the
    rest, and the floating study test and the first-queued one, which go alone. A file goes whole
    because its module-scoped fixtures (the methods' images, the detected faces, a sharded store) are
    built once per worker that runs any of its tests: split over two workers, a 60-second fixture was
    built twice. (xdist's own `--dist loadgroup` does not group with pytest 9: it renames test ids in a
    way pytest 9 ignores.)"""
    from xdist.scheduler import LoadScopeScheduling

    # xdist otherwise queues the files by their number of tests, most first (`--loadscope-reorder`, on by
    # default): the parametrised bad-input battery ahead of the training tests, a single-test scope last.
    config.option.loadscopereorder = False

    class OfflineStudyTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            name = test_name(nodeid)
            if name in OFFLINE_STUDY_TESTS - FLOATING_STUDY_TESTS:
                return "offline-study"
            return nodeid if name in FLOATING_STUDY_TESTS | FIRST_QUEUED else nodeid.split("::")[0]

    return OfflineStudyTogether(config, log)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The Hugging Face cache made for this session goes with it."""
    import shutil

    if _HF_HOME is not None and not hasattr(session.config, "workerinput"):
        shutil.rmtree(_HF_HOME, ignore_errors=True)


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "hub")


@pytest.fixture
def make_folder(tmp_path: Path) -> Callable[[dict[str, str]], Path]:
    """Makes a folder with the given files ({relative path: text}) and returns its path."""
    counter = iter(range(1_000_000))

    def make(files: dict[str, str]) -> Path:
        folder = tmp_path / f"folder-{next(counter)}"
        for name, text in files.items():
            path = folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        return folder

    return make


def launcher(processes: int = 1) -> list[str]:
    """The command a script or module is run by in `processes` processes: `torchrun` for several (with
    --standalone, a free port per launch: the default 29500 can still be held by the run before), the
    interpreter for one, as a user runs them."""
    if processes == 1:
        return [sys.executable]
    return [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node", str(processes)]


def run_python(
    *args: str, env: dict[str, str] | None = None, timeout: int = 600, cwd: Path = REPO_ROOT, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """Runs `python *args` in a fresh interpreter, from the repository root unless `cwd` says otherwise."""
    import subprocess

    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


TINY_PROFESSIONS = ["doctor", "nurse", "CEO", "teacher"]


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A session store with small prompts (en, de, zh) and a tiny AltDiffusion, built by the real stages."""
    from pipelines import build_tiny_model, generate_prompts, translate_prompts

    root = str(tmp_path_factory.mktemp("study-hub"))
    common = {"store_root": root, "namespace": "study"}
    generate_prompts.run(
        generate_prompts.Arguments(
            **common, professions=TINY_PROFESSIONS, styles=["close-up"], dressings=["wearing work clothes"]
        )
    )
    prompts = translate_prompts.run(translate_prompts.Arguments(**common, languages=["de", "zh"]))
    model = build_tiny_model.run(build_tiny_model.Arguments(**common, input=str(prompts), kind="altdiffusion"))
    return {"store_root": root, "namespace": "study", "prompts": str(prompts), "model": str(model)}


def data_digest(folder: Path) -> dict[str, str]:
    """sha256 of every data file of an artifact, by relative path."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((folder / "data").rglob("*.parquet"))
    }


def machine_paths_in(root: str | Path, *extra: str | Path) -> list[str]:
    """Every published file under a store (its revisions, blobs and history; not the `.work` folder
    of unfinished runs, nor lock files) that names the store root, the home directory, the working
    directory, the repository or any of `extra`: what nothing published may hold."""
    root = Path(root)
    needles = {str(root), str(root.resolve()), str(Path.home()), os.getcwd(), str(REPO_ROOT), *map(str, extra)}
    needles = {n.encode() for n in needles if len(n) > 1}
    found = []
    for path in root.rglob("*"):
        relative = path.relative_to(root)
        if not path.is_file() or path.is_symlink() or ".work" in relative.parts or path.name.endswith(".lock"):
            continue
        data = path.read_bytes()
        found += [f"{relative}: {n.decode()}" for n in needles if n in data]
    return found


def fairness_module() -> Any:
    """The fairness `evaluate` module's file as a plain Python module, for its numpy functions."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "fairness_metrics", REPO_ROOT / "spaces" / "fairness_metrics" / "fairness_metrics.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def readme_block(name: str) -> str:
    """The command in the README's fenced block marked <!-- ci:NAME -->."""
    import re

    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(rf"<!-- ci:{name} -->\s*```(?:bash|sh)?\n(.*?)```", readme, re.DOTALL)
    assert match, f"README.md has no block marked ci:{name}"
    return match.group(1).strip()


@pytest.fixture(scope="session")
def offline_study(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The README's study command, as written, run once into a fresh store; returns its output. Under
    pytest-xdist the workers share the one run: the first to need it runs it under a file lock, keeps a
    copy of the store as the study left it (`pristine`, for `study_copy`), and the others wait on the
    lock and read its output. The tests in the `offline-study` group run one after another on this
    store (the methods recipe adds to it, and the Space's tests then show its table)."""
    import json
    import shutil
    import subprocess

    from filelock import FileLock

    if not os.environ.get("PYTEST_XDIST_WORKER"):
        root = tmp_path_factory.mktemp("offline-study") / "hub"
        return {"root": root, "result": run_study(root), "pristine": None}
    shared = tmp_path_factory.getbasetemp().parent / "offline-study"  # the folder of every worker's basetemp
    output = shared / "result.json"
    with FileLock(str(shared) + ".lock"):
        if not output.is_file():
            shared.mkdir(exist_ok=True)
            result = run_study(shared / "hub")
            if (shared / "hub").is_dir():
                shutil.copytree(shared / "hub", shared / "pristine", symlinks=True)
            fields = {"returncode": result.returncode, "stdout": result.stdout, "stderr": result.stderr}
            output.write_text(json.dumps(fields))
    fields = json.loads(output.read_text())
    result = subprocess.CompletedProcess(readme_block("study"), **fields)
    return {"root": shared / "hub", "result": result, "pristine": shared / "pristine"}


def study_copy(offline_study: dict, folder: Path) -> Path:
    """A store of its own in `folder`, as the offline study left it, for a test that runs a recipe on the
    study outside the `offline-study` group (the study's store may be written meanwhile)."""
    import shutil

    assert offline_study["result"].returncode == 0, offline_study["result"].stderr[-3000:]
    source = offline_study["pristine"] or offline_study["root"]
    return Path(shutil.copytree(source, folder / "hub", symlinks=True))


def run_study(root: Path, extra: str = "") -> subprocess.CompletedProcess[str]:
    """The README's study command, as written (with `extra` options), into the store at `root`."""
    import subprocess

    command = readme_block("study").replace(".venv/bin/python", sys.executable)
    return subprocess.run(
        command + extra,
        shell=True,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=1500,
        env={**os.environ, "T2I_BIAS_STORE_ROOT": str(root)},
    )


def image_arguments(study: dict, **overrides: Any) -> generate_images.Arguments:
    """generate_images arguments for the session study: small and fast, overridable."""
    from pipelines import generate_images

    values = {
        "store_root": study["store_root"],
        "namespace": study["namespace"],
        "input": study["prompts"],
        "model": study["model"],
        "languages": ["en", "de"],
        "variants": ["eval_direct"],
        "num_images": 2,
        "num_inference_steps": 2,
        "batch_size": 3,
        "images_per_shard": 4,
    }
    return generate_images.Arguments(**(values | overrides))


class LoadedByRuns:
    """Records what each run of a sharded stage loads in `open` (its instance and every object on it
    that can be weakly referenced: pipelines, detectors, classifiers), to check that a finished run
    holds none of it: a recipe's memory then does not grow with its number of steps."""

    # Process-wide by design, not run state: load_grammar caches each language's immutable lexicons.
    SHARED = ("grammar",)

    def __init__(self, stage_class: type, monkeypatch: pytest.MonkeyPatch) -> None:
        import weakref

        self.refs: list[tuple[str, weakref.ref]] = []
        original = stage_class.open

        def recording_open(instance: Any, run: Any, device: str) -> None:
            original(instance, run, device)
            for name, value in [("stage", instance), *vars(instance).items()]:
                if name in self.SHARED:
                    continue
                try:
                    self.refs.append((name, weakref.ref(value)))
                except TypeError:  # ints, strings, dicts: they hold no model
                    pass

        monkeypatch.setattr(stage_class, "open", recording_open)

    def alive(self) -> list[str]:
        """The names of the objects loaded so far that something still holds."""
        import gc

        gc.collect()
        return [name for name, ref in self.refs if ref() is not None]
