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
    "pipelines": 0,  # __init__: the version and the project root
    "pipelines.artifacts": 1,
    "pipelines.reporting": 1,
    "pipelines.prompting": 2,
    "pipelines.harness": 2,
    "pipelines.modeling": 2,
    "pipelines.perception": 3,
}
STAGE_LAYER = 4  # pipelines/<stage>.py, pipelines/run.py, training/
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


def package_of(module: str) -> str:
    """The layered package a module belongs to (`pipelines.artifacts.store` -> `pipelines.artifacts`)."""
    parts = module.split(".")
    if len(parts) >= 2 and ".".join(parts[:2]) in LAYERS:
        return ".".join(parts[:2])
    return module


def layer_of(module: str) -> int:
    package = package_of(module)
    if package in LAYERS:
        return LAYERS[package]
    return STAGE_LAYER  # a stage, the runner or the training script


def project_modules() -> dict[str, Path]:
    modules = {}
    for path in sorted([*REPO_ROOT.glob("pipelines/**/*.py"), *REPO_ROOT.glob("training/*.py")]):
        parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def imports_of(path: Path) -> list[tuple[str, int]]:
    """Every project module a file imports (at any depth: lazy imports count), with its line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("pipelines", "training"):
            if node.module in ("pipelines", "pipelines.artifacts", "pipelines.prompting", "pipelines.modeling"):
                # `from pipelines import classify` imports a module; `from pipelines import __version__` does not.
                for alias in node.names:
                    name = f"{node.module}.{alias.name}"
                    found.append((name if name in project_modules() else node.module, node.lineno))
            else:
                found.append((node.module, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] in ("pipelines", "training")]
    return found


def test_every_module_imports_only_lower_layers_and_no_stage_imports_another() -> None:
    modules = project_modules()
    problems = []
    for module, path in modules.items():
        own_layer, own_package = layer_of(module), package_of(module)
        for imported, line in imports_of(path):
            if package_of(imported) == own_package and own_layer < STAGE_LAYER:
                continue  # within a package
            if own_layer == STAGE_LAYER and layer_of(imported) == STAGE_LAYER:
                problems.append(f"{path.relative_to(REPO_ROOT)}:{line}: a stage imports {imported}")
            elif layer_of(imported) >= own_layer:
                problems.append(
                    f"{path.relative_to(REPO_ROOT)}:{line}: layer {own_layer} ({own_package}) imports {imported} "
                    f"(layer {layer_of(imported)})"
                )
    assert problems == []


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
