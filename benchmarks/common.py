"""What every benchmark shares: the machine it ran on, writing its report, counting FLOPs, and
scratch folders that do not outlive the process."""

from __future__ import annotations

import atexit
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, CPU"


def scratch(prefix: str = "bench-") -> Path:
    """A new temporary folder, removed when the process exits: the benchmarks write stores, model
    weights and gigabytes of cached text states, and run in every CI run on the same machine."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def write_report(name: str, report: dict[str, Any], folder: str | Path | None = None) -> Path:
    """Prints the report and keeps it as benchmarks/results/<name>.json (or in `folder`)."""
    folder = Path(folder) if folder else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return path


def count_flops(function: Callable[[], Any]) -> int:
    """FLOPs of one call of `function`, by PyTorch's flop counter (it also counts on the meta device,
    where no weights exist and nothing is computed)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        function()
    return counter.get_total_flops()
