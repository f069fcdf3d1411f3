"""The import layering of ARCHITECTURE.md, enforced: each layer imports only layers below it, no
stage imports another, and the ground floor (errors, artifacts, prompting, harness) and the
comparison Space's data module load without torch, transformers or diffusers."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO_ROOT

# Layer of each package (a module may import its own package and lower layers only).
LAYERS = {
    "pipelines.errors": 0,
    "pipelines.resources": 0,  # where the package data (card templates, metric modules) is
    "pipelines": 0,  # __init__: the version and the project root
    "pipelines.artifacts": 1,
    "pipelines.reporting": 1,
    "pipelines.prompting": 2,
    "pipelines.harness": 2,
    "pipelines.modeling": 2,
    "pipelines.perception": 3,
    # What every fine-tune shares (training/finetune.py, models.py, checkpoints.py, target_assignment.py):
    # below the training scripts, above everything they build on.
    "training.shared": 3.5,
    # The evaluate modules stand alone (each folder is a Space with its own requirements): they import
    # nothing of the project, and the toolkit reads them (and the card templates) from below.
    "spaces.clip_score": -1,
    "spaces.fairness_metrics": -1,
    "hub_cards": -1,
    # The comparison Space imports the ground floor only (publish_space copies those modules beside it).
    "spaces.compare_languages": 3,
    "benchmarks": 5,  # measure anything; nothing imports them
}
STAGE_LAYER = 4  # pipelines/<stage>.py, pipelines/run.py, training/
PROJECT_TOPS = ("pipelines", "training", "spaces", "benchmarks", "hub_cards")
HEAVY = ("torch", "transformers", "diffusers")
LIGHT_MODULES = [
    "pipelines.errors",
    "pipelines.artifacts.store",
    "pipelines.artifacts.reader",
    "pipelines.artifacts.cards",
    "pipelines.artifacts.inputs",
    "pipelines.prompting.grammar",
    "pipelines.prompting.grid",
    "pipelines.prompting.magbig",
    "pipelines.harness.config",
    "pipelines.harness.lineage",
    "pipelines.harness.estimate",
    "pipelines.reporting.figures",
]


FINE_TUNING_SHARED = ("training.finetune", "training.models", "training.checkpoints", "training.target_assignment")


def package_of(module: str) -> str:
    """The layered package a module belongs to (`pipelines.artifacts.store` -> `pipelines.artifacts`)."""
    if module in FINE_TUNING_SHARED:
        return "training.shared"
    parts = module.split(".")
    if len(parts) >= 2 and ".".join(parts[:2]) in LAYERS:
        return ".".join(parts[:2])
    if parts[0] in ("benchmarks", "hub_cards"):  # one layer for the whole folder
        return parts[0]
    return module


def layer_of(module: str) -> int:
    package = package_of(module)
    if package in LAYERS:
        return LAYERS[package]
    return STAGE_LAYER  # a stage, the runner or the training script


def project_modules() -> dict[str, Path]:
    modules = {}
    for path in sorted([*REPO_ROOT.glob("pipelines/**/*.py"), *REPO_ROOT.glob("training/*.py"),
                        *REPO_ROOT.glob("spaces/*/*.py"), *REPO_ROOT.glob("benchmarks/*.py")]):  # fmt: skip
        parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def imports_of(path: Path) -> list[tuple[str, int]]:
    """Every project module a file imports (at any depth: lazy imports count), with its line, and every
    project folder or file it reads by path (`PROJECT_ROOT / "spaces" / "clip_score"`), as the module
    or package there: a reach by path is an import the interpreter does not see."""
    from pipelines.harness.code_version import reached_paths

    source = path.read_text(encoding="utf-8")
    found = []
    for reached in reached_paths(source, path, REPO_ROOT):
        parts = reached.relative_to(REPO_ROOT).with_suffix("").parts if reached.is_relative_to(REPO_ROOT) else ()
        if parts and parts[0] in PROJECT_TOPS and not reached.is_relative_to(path.parent):
            found.append((".".join(parts[:2]), 0))
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PROJECT_TOPS:
            if node.module in ("pipelines", "pipelines.artifacts", "pipelines.prompting", "pipelines.modeling"):
                # `from pipelines import classify` imports a module; `from pipelines import __version__` does not.
                for alias in node.names:
                    name = f"{node.module}.{alias.name}"
                    found.append((name if name in project_modules() else node.module, node.lineno))
            else:
                found.append((node.module, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] in PROJECT_TOPS]
    return found


def test_every_module_imports_only_lower_layers_and_no_stage_imports_another() -> None:
    modules = project_modules()
    problems = []
    for module, path in modules.items():
        own_layer, own_package = layer_of(module), package_of(module)
        for imported, line in imports_of(path):
            if package_of(imported) == own_package and own_layer != STAGE_LAYER:
                continue  # within a package
            if own_layer == STAGE_LAYER and layer_of(imported) == STAGE_LAYER:
                problems.append(f"{path.relative_to(REPO_ROOT)}:{line}: a stage imports {imported}")
            elif layer_of(imported) >= own_layer:
                problems.append(
                    f"{path.relative_to(REPO_ROOT)}:{line}: layer {own_layer} ({own_package}) imports {imported} "
                    f"(layer {layer_of(imported)})"
                )
    assert problems == []


def test_a_metric_module_that_imports_or_reaches_the_toolkit_is_caught(tmp_path: Path) -> None:
    """The evaluate modules are the floor: one that imports a stage, or any toolkit module, breaks the
    layering, and a stage that reaches the comparison Space by path is seen as importing it."""
    metric = tmp_path / "fairness_metrics.py"
    metric.write_text("import evaluate\nfrom pipelines.modeling.clip import load_open_clip\n")
    (imported, _), *_ = imports_of(metric)
    assert layer_of(imported) >= layer_of("spaces.fairness_metrics.fairness_metrics")
    stage = tmp_path / "evaluate_bias.py"
    stage.write_text('from pipelines import PROJECT_ROOT\nM = PROJECT_ROOT / "spaces" / "fairness_metrics"\n')
    assert ("spaces.fairness_metrics", 0) in imports_of(stage)
    stage.write_text('from pipelines.resources import space_folder\nM = space_folder("compare_languages")\n')
    assert ("spaces.compare_languages", 0) in imports_of(stage)
    assert {"spaces.clip_score.clip_score", "spaces.compare_languages.app", "benchmarks.bench_train"} <= set(
        project_modules()
    )


def test_the_checker_catches_an_upward_and_a_sideways_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The layering test itself can fail: a grammar importing the store's harness, a stage importing a stage."""
    upward = tmp_path / "grammar.py"
    upward.write_text("def f():\n    from pipelines.harness.stage import Stage\n")
    sideways = tmp_path / "classify.py"
    sideways.write_text("from pipelines import generate_images\n")
    assert layer_of(imports_of(upward)[0][0]) >= layer_of("pipelines.prompting.grammar")
    (imported, _), *_ = imports_of(sideways)
    assert imported == "pipelines.generate_images" and layer_of(imported) == STAGE_LAYER


@pytest.mark.parametrize("module", LIGHT_MODULES)
def test_the_ground_floor_loads_without_torch_transformers_or_diffusers(module: str) -> None:
    probe = f"import sys, {module}; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]", f"{module} pulls in {result.stdout.strip()}"


def test_the_comparison_space_data_module_loads_without_them() -> None:
    folder = REPO_ROOT / "spaces" / "compare_languages"
    probe = (
        f"import sys; sys.path.insert(0, {str(folder)!r}); import study_data; "
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


# Run inside a fresh interpreter before anything else: the project is off sys.path and cannot be imported.
_WITHOUT_THE_PROJECT = f"""
import importlib.abc, sys
class _OffPath(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {PROJECT_TOPS!r}:
            raise ImportError(f"{{name}}: the project is off sys.path")
sys.meta_path.insert(0, _OffPath())
sys.path = [p for p in sys.path if p not in ("", {str(REPO_ROOT)!r})]
"""
METRIC_RUNS = {
    "fairness_metrics": "r = m.compute(predictions=['male', 'female', 'male'], references=['CEO', 'CEO', 'nurse'], "
    "labels=['male', 'female'], num_occupations=2, rounds=20); print(round(r['mean_l1'], 3))",
    "clip_score": "from PIL import Image; r = m.compute(predictions=[Image.new('RGB', (32, 32))], "
    "references=['a photo'], model=MODEL); print(len(r['scores']))",
}


@pytest.mark.parametrize("name", sorted(METRIC_RUNS))
def test_each_metric_module_runs_from_a_copy_of_its_folder_alone(name: str, tmp_path: Path) -> None:
    """`evaluate.load(folder)` on a copy of the Space's folder, in an interpreter where no project
    module can be imported; and every package the module imports is in the folder's requirements.txt."""
    import importlib.metadata
    import shutil

    from pipelines.modeling.tiny import build_tiny_open_clip

    folder = shutil.copytree(REPO_ROOT / "spaces" / name, tmp_path / name)
    model = str(build_tiny_open_clip(tmp_path / "tiny-clip")) if name == "clip_score" else ""
    code = _WITHOUT_THE_PROJECT + f"import evaluate; MODEL = {model!r}; m = evaluate.load({str(folder)!r}); "
    result = subprocess.run([sys.executable, "-c", code + METRIC_RUNS[name]], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == {"fairness_metrics": "0.5", "clip_score": "1"}[name]
    required = {
        line.split("==")[0].split(">=")[0].split("<")[0].strip().lower().replace("_", "-")
        for line in (folder / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    distributions = importlib.metadata.packages_distributions()
    for source in folder.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            else:
                continue
            for top in {n.split(".")[0] for n in names} - set(sys.stdlib_module_names) - {"study_data"}:
                assert top not in PROJECT_TOPS, f"{source.name} imports {top}"
                wanted = {d.lower().replace("_", "-") for d in distributions.get(top, [top])}
                assert wanted & required, f"{source.name} imports {top}, which its requirements.txt does not install"


def test_no_module_reaches_another_top_level_folder_by_file_path() -> None:
    """The card templates and the metric modules are package data, read through pipelines.resources;
    a `PROJECT_ROOT / "hub_cards"` path would exist in a checkout only, not in an installed wheel."""
    from pipelines.harness.code_version import reached_paths, resource_reaches

    problems = []
    for name, path in project_modules().items():
        source = path.read_text(encoding="utf-8")
        by_path = set(reached_paths(source, path, REPO_ROOT)) - set(resource_reaches(source, REPO_ROOT))
        for reached in by_path:
            top = reached.relative_to(REPO_ROOT).parts[0] if reached.is_relative_to(REPO_ROOT) else None
            if top is not None and top != name.split(".")[0]:
                problems.append(f"{name} reaches {reached.relative_to(REPO_ROOT)} by path")
    assert problems == []


def test_the_package_list_is_the_tree() -> None:
    """pyproject lists its packages (the card templates and Spaces are mapped under names of their own):
    every package folder of the toolkit is in it, and every metric module and Space folder."""
    import tomllib

    from pipelines.resources import SPACES

    setuptools = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    on_disk = {
        ".".join(init.parent.relative_to(REPO_ROOT).parts)
        for top in ("pipelines", "training")
        for init in (REPO_ROOT / top).rglob("__init__.py")
    }
    spaces = {p.name for p in (REPO_ROOT / "spaces").iterdir() if p.is_dir() and not p.name.startswith(("_", "."))}
    assert spaces == set(SPACES)
    expected = on_disk | {"t2i_bias_cards"} | {f"t2i_bias_spaces.{name}" for name in SPACES}
    assert set(setuptools["packages"]) == expected
    assert setuptools["package-dir"] == {"": ".", "t2i_bias_cards": "hub_cards", "t2i_bias_spaces": "spaces"}


@pytest.mark.slow
def test_an_installed_wheel_finds_its_card_templates_and_metric_modules(tmp_path: Path) -> None:
    """Not a checkout: the toolkit built as a wheel and installed into a folder, imported from there
    with the checkout off the path, writes a card and loads the fairness metric from its package data."""
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), "."],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    site = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(site), str(wheel)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-2000:]
    probe = f"""
import sys
sys.path = [p for p in sys.path if "__editable__" not in p and p not in ("", {str(REPO_ROOT)!r})]
sys.path.insert(0, {str(site)!r})
sys.meta_path = [f for f in sys.meta_path if "editable" not in type(f).__module__.lower()]
import pathlib
import evaluate
import pipelines
from pipelines.artifacts.cards import dataset_card, make_lineage
from pipelines.resources import space_folder
assert pipelines.__file__.startswith({str(site)!r}), pipelines.__file__
lineage = make_lineage("probe", {{}}, {{}}, "0" * 16)
card = dataset_card(repo_id="ns/probe", title="Probe", description="made in a wheel", lineage=lineage,
                    configs=["en"], languages=["en"], folder=pathlib.Path("."))
assert "made in a wheel" in str(card) and "Made by stage `probe`" in str(card), str(card)
folder = space_folder("fairness_metrics")
assert str(folder).startswith({str(site)!r}), folder
metric = evaluate.load(str(folder))
result = metric.compute(predictions=["male", "female"], references=["nurse", "nurse"], labels=["male", "female"],
                        num_occupations=1, images_per_occupation=2)
print("ok", folder.relative_to({str(site)!r}), round(result["mean_l1"], 3))
"""
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["ok", "t2i_bias_spaces/fairness_metrics", "0.0"]


def test_architecture_names_every_module_and_no_module_that_is_gone() -> None:
    """ARCHITECTURE.md lists each package's modules: every module of the toolkit is named there (a
    stage by its name), and every `.py` file it names exists."""
    import re

    text = (REPO_ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    tree = [
        p
        for top in ("pipelines", "training", "spaces", "benchmarks", "tests")
        for p in (REPO_ROOT / top).rglob("*.py")
    ]
    # A module is named by its file name or any tail of its path (`harness/stage.py`).
    names = {
        "/".join(p.relative_to(REPO_ROOT).parts[i:]) for p in tree for i in range(len(p.relative_to(REPO_ROOT).parts))
    }
    gone = sorted(n for n in set(re.findall(r"[\w/]*\w\.py\b", text)) if n not in names and "<" not in n)
    assert gone == [], f"ARCHITECTURE.md names modules that do not exist: {gone}"
    unnamed = []
    for path in (REPO_ROOT / "pipelines").rglob("*.py"):
        if path.name == "__init__.py":
            continue
        named = path.name in text if path.parent.name != "pipelines" else re.search(rf"\b{path.stem}\b", text)
        if not named:
            unnamed.append(path.relative_to(REPO_ROOT).as_posix())
    assert unnamed == [], f"ARCHITECTURE.md does not name {unnamed}"


def test_architecture_lists_each_module_under_its_own_folder() -> None:
    """The layer diagram's rows name a folder, then its modules: each module named in a row is in that
    row's folder (it once listed the store's schemas and cards under `reporting`)."""
    import re

    text = (REPO_ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    diagram = text.split("## Layers", 1)[1].split("```")[1]
    rows: list[list[str]] = []
    for line in diagram.splitlines():
        if not line.strip():
            continue
        # A row starts where the line names a layer or a part in the first columns; others continue it.
        starts = re.match(r"^ ?(layer \d|floor|\s{10}\w)", line) and not line[:26].strip(" │") == ""
        if starts or not rows:
            rows.append([line])
        else:
            rows[-1].append(line)
    checked = 0
    for row in rows:
        joined = " ".join(row)
        folder = re.search(r"\b((?:pipelines|spaces|training|benchmarks)/[\w/]*/)", row[0])
        for name in re.findall(r"(?<![/\w<])(\w+\.py)\b", joined):
            if folder is not None:
                assert (REPO_ROOT / folder.group(1) / name).is_file(), f"{name} is not in {folder.group(1)}"
                checked += 1
        for path in re.findall(r"\b((?:pipelines|spaces|training)/[\w/]+\.py)\b", joined):
            assert (REPO_ROOT / path).is_file(), path
    assert checked >= 20
