"""Times the whole prompt grid in all ten languages: generate_prompts, then translate_prompts.

    python -m benchmarks.bench_prompts [--repeats 3]

Reports rows, seconds (best of the repeats) and rows per second for each stage, and writes
benchmarks/results/prompts.json. Both stages run with --force into a temporary local store, so
nothing is reused between repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pipelines import generate_prompts, translate_prompts  # noqa: E402
from pipelines.grammar import LANGUAGES  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    options = parser.parse_args()
    languages = [code for code in LANGUAGES if code != "en"]
    timings: dict[str, list[float]] = {"generate_prompts": [], "translate_prompts": []}
    for _ in range(options.repeats):
        root = tempfile.mkdtemp(prefix="bench-prompts-")
        common = {"store_root": root, "namespace": "bench", "force": True}
        started = time.perf_counter()
        generate_prompts.run(generate_prompts.Arguments(**common))
        timings["generate_prompts"].append(time.perf_counter() - started)
        started = time.perf_counter()
        translate_prompts.run(translate_prompts.Arguments(**common, languages=languages))
        timings["translate_prompts"].append(time.perf_counter() - started)
    rows_per_language = 3 * 3 * 2 * 120 * 2 * 2 * 3 // 2 + 2 * 120
    rows = {"generate_prompts": rows_per_language, "translate_prompts": rows_per_language * len(languages)}
    report = {
        "benchmark": "prompt grid, ten languages",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "repeats": options.repeats,
        "stages": {
            stage: {"rows": rows[stage], "seconds": round(best, 3), "rows_per_second": round(rows[stage] / best)}
            for stage, best in ((stage, min(times)) for stage, times in timings.items())
        },
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "prompts.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
