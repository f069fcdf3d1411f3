"""What every benchmark shares: the machine it ran on, writing its report, counting FLOPs, and
scratch folders that do not outlive the process."""

from __future__ import annotations

import atexit
import json
import os
import platform
import shutil
import tempfile
import time
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


def timed(function: Callable[[], Any], device: str, repeats: int = 1) -> float:
    """Seconds per call of `function` (after one warm-up call)."""
    import torch

    function()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def matmul_peak(device: str, dtype: Any, size: int, repeats: int = 20) -> float:
    """Measured TFLOP/s of a large square matrix product: the device's practical peak."""
    import torch

    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    seconds = timed(lambda: a @ b, device, repeats=repeats)
    return 2 * size**3 / seconds / 1e12


def record_throughput(kind: str, entry: dict[str, Any], folder: str | Path | None = None) -> Path:
    """Keeps `entry` (seconds per unit of the real study's work, and how they were measured) as the
    `kind` device's figures in throughput.json, beside the other kinds': the file the dry run's
    estimates come from."""
    path = (Path(folder) if folder else RESULTS) / "throughput.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    figures = json.loads(path.read_text()) if path.is_file() else {}
    figures[kind] = entry
    path.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    return path
