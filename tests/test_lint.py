"""The code style of STYLE.md (ruff, line length 119) holds for the whole tree."""

from __future__ import annotations

import subprocess
import sys

from .conftest import REPO_ROOT


def test_ruff_clean() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "."], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout[-3000:]
