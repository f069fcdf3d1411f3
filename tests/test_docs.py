"""Every Python example in the README and the Spaces' cards runs as written, in a fresh interpreter,
from the checkout's top level as a user would run it. An example that needs what this machine cannot
download (OpenAI's CLIP weights) runs with the one model substituted, named in `OFFLINE`; an example
that reads the study's store (`./hub`) runs on the offline study's."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.modeling.tiny import build_tiny_open_clip

from .conftest import REPO_ROOT

DOCUMENTS = ["README.md", *sorted(p.relative_to(REPO_ROOT).as_posix() for p in REPO_ROOT.glob("spaces/*/README.md"))]
# What an example needs that no offline machine has, and what stands in for it here.
OFFLINE = {
    'model="ViT-L-14-quickgelu",': "model=TINY_CLIP,",
    'pretrained="openai",': "",
}
PRELUDE = {"predictions=images": "from PIL import Image\nimages = [Image.new('RGB', (64, 64), 'grey')] * 2\n"}


def examples() -> list[tuple[str, int, str]]:
    """(document, number, code) of every ```python block."""
    found = []
    for document in DOCUMENTS:
        text = (REPO_ROOT / document).read_text(encoding="utf-8")
        found += [(document, i, code) for i, code in enumerate(re.findall(r"```python\n(.*?)```", text, re.DOTALL))]
    return found


def reads_the_store(code: str) -> bool:
    return '"./hub"' in code or "'./hub'" in code


def run_example(code: str, cwd: Path, tiny_clip: str | None = None) -> subprocess.CompletedProcess[str]:
    for needs, stands_in in OFFLINE.items():
        code = code.replace(needs, stands_in)
    code = "".join(prelude for needle, prelude in PRELUDE.items() if needle in code) + code
    code = code.replace("TINY_CLIP", repr(tiny_clip))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_the_documents_have_examples_and_each_is_run_by_a_test() -> None:
    found = examples()
    assert {document for document, _, _ in found} >= {"README.md", "spaces/clip_score/README.md"}
    assert any(reads_the_store(code) for _, _, code in found)  # the slow test below has work


@pytest.mark.parametrize(
    "document,number", [(d, n) for d, n, code in examples() if not reads_the_store(code)], ids=lambda v: str(v)
)
def test_every_example_runs_as_written(document: str, number: int, tmp_path: Path) -> None:
    code = next(c for d, n, c in examples() if (d, n) == (document, number))
    tiny_clip = str(build_tiny_open_clip(tmp_path / "tiny-clip")) if "ViT-L-14-quickgelu" in code else None
    result = run_example(code, REPO_ROOT, tiny_clip)
    assert result.returncode == 0, f"{document} example {number}:\n{result.stderr[-3000:]}"


@pytest.mark.slow
def test_the_examples_that_read_the_store_run_on_the_offline_study(offline_study: dict, tmp_path: Path) -> None:
    assert offline_study["result"].returncode == 0, offline_study["result"].stderr[-3000:]
    (tmp_path / "hub").symlink_to(offline_study["root"])
    for document, number, code in (e for e in examples() if reads_the_store(e[2])):
        result = run_example(code, tmp_path)
        assert result.returncode == 0, f"{document} example {number}:\n{result.stderr[-3000:]}"
