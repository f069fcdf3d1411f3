"""What every benchmark shares: the machine it ran on, writing its report, counting FLOPs."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, CPU"


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
