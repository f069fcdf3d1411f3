"""The version of the code that decides a stage's output, for reuse to compare.

A stage reuses an artifact made from the same inputs and parameters. With only the toolkit's
version number in the fingerprint, a rerun after a bug fix reused the old, wrong artifact as "up to
date". So the fingerprint holds a hash of the stage's own module and of every project file it
uses: the project modules it imports (anywhere in the file, so lazy imports count), transitively,
and the project files and folders it reads: by path, written as `PROJECT_ROOT / "a" / "b"` or
`Path(__file__).parent / "a"` (the lexicons), or as package data through `pipelines.resources`
(`space_folder("clip_score")`, `card_template(name)`: the metric modules, the card templates). A
change to that code rebuilds; a change elsewhere reuses.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

from pipelines import PROJECT_ROOT

PROJECT_PACKAGES = ("pipelines", "training")
SOURCE_SUFFIXES = (".py", ".md", ".txt", ".yaml", ".json")


def code_version(module_file: str | Path, root: Path = PROJECT_ROOT) -> str:
    """16 hex digits over the files that `module_file` (a file under `root`) uses, by path and content."""
    return _code_version(Path(module_file).resolve(), Path(root).resolve())


@functools.cache
def _code_version(module_file: Path, root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(used_files(module_file, root)):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def used_files(module_file: Path, root: Path) -> set[Path]:
    """`module_file` and the project files it uses, transitively."""
    seen: set[Path] = set()
    queue = [module_file]
    while queue:
        path = queue.pop()
        if path in seen or not path.is_file():
            continue
        seen.add(path)
        if path.suffix != ".py":
            continue
        text = path.read_text(encoding="utf-8")
        queue += [module for name in imported_names(text) for module in module_files(name, root)]
        for target in reached_paths(text, path, root):
            queue += [target] if target.is_file() else _source_files(target)
    return seen


def reached_paths(source: str, path: Path, root: Path) -> list[Path]:
    """The paths a source builds from the project root or its own file with `/` and string literals.

    Example:
        >>> root = Path("/p")
        >>> code = 'A = PROJECT_ROOT / "spaces" / "m"\\nB = Path(__file__).resolve().parent / "lexicons"'
        >>> code += '\\nC = Path(__file__).resolve().parents[1] / "hub_cards"'
        >>> [str(p) for p in reached_paths(code, root / "pkg" / "mod.py", root)]
        ['/p/spaces/m', '/p/pkg/lexicons', '/p/hub_cards']
    """
    found = resource_reaches(source, root)
    divisions = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Div)]
    inner = {id(n.left) for n in divisions}  # `a / "b"` inside `a / "b" / "c"`: only the whole path counts
    for node in divisions:
        if id(node) in inner:
            continue
        parts: list[str] = []
        while isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            if not (isinstance(node.right, ast.Constant) and isinstance(node.right.value, str)):
                break
            parts.insert(0, node.right.value)
            node = node.left
        else:
            base = _base_path(node, path, root)
            if base is not None and parts:
                found.append(base.joinpath(*parts))
    return found


def resource_reaches(source: str, root: Path = PROJECT_ROOT) -> list[Path]:
    """The package data a source reads through `pipelines.resources` (`space_folder("x")`,
    `card_template("y")`; a name that is not a literal reaches the whole folder).

    Example:
        >>> code = 'from pipelines.resources import card_template, space_folder\\nM = space_folder("clip_score")'
        >>> [p.relative_to(PROJECT_ROOT).as_posix() for p in resource_reaches(code + "\\ncard_template(n)")]
        ['spaces/clip_score', 'hub_cards']
    """
    from pipelines import resources

    tree = ast.parse(source)
    # Only the functions imported from it: inside resources.py itself the calls are its machinery.
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "pipelines.resources"
        for alias in node.names
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in imported and node.args:
            argument = node.args[0]
            literal = (
                argument.value if isinstance(argument, ast.Constant) and isinstance(argument.value, str) else None
            )
            target = resources.reached(node.func.id, literal)
            if target is not None:  # where it is here, taken to the same place under `root`
                found.append(root / target.relative_to(PROJECT_ROOT))
    return found


def _base_path(node: ast.expr, path: Path, root: Path) -> Path | None:
    """`PROJECT_ROOT`, or `Path(__file__)` followed by `.resolve()` and k `.parent`s (or `.parents[k - 1]`)."""
    if isinstance(node, ast.Name) and node.id == "PROJECT_ROOT":
        return root
    parents = 0
    if (
        isinstance(node, ast.Subscript)
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "parents"
        and isinstance(node.slice, ast.Constant)
        and isinstance(node.slice.value, int)
    ):
        parents, node = node.slice.value + 1, node.value.value
    while isinstance(node, ast.Attribute) and node.attr == "parent":
        parents, node = parents + 1, node.value
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "resolve":
        node = node.func.value
    if isinstance(node, ast.Call) and any(isinstance(a, ast.Name) and a.id == "__file__" for a in node.args):
        base = path
        for _ in range(parents):
            base = base.parent
        return base
    return None


def imported_names(source: str) -> list[str]:
    """Dotted names of the project modules a source imports, and `package.name` for each `from
    package import name` (a submodule or not: `module_files` keeps what exists).

    Example:
        >>> imported_names("import os\\nfrom pipelines.modeling import world\\ndef f():\\n    import training.x")
        ['pipelines.modeling', 'pipelines.modeling.world', 'training.x']
    """
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
    return [name for name in names if name.split(".")[0] in PROJECT_PACKAGES]


def module_files(name: str, root: Path) -> list[Path]:
    """The files of a dotted module name under `root`: each package's `__init__.py` on the way, and
    the module itself (`a/b.py` or `a/b/__init__.py`); nothing for a name that is not a module."""
    parts = name.split(".")
    found = [root.joinpath(*parts[:i], "__init__.py") for i in range(1, len(parts) + 1)]
    found.append(root.joinpath(*parts).with_suffix(".py"))
    return [path for path in found if path.is_file()]


def _source_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return [
        path
        for path in folder.rglob("*")
        if path.is_file() and path.suffix in SOURCE_SUFFIXES and "__pycache__" not in path.parts
    ]
