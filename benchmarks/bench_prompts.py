"""Times the whole prompt grid in all ten languages: generate_prompts, then translate_prompts.

    python -m benchmarks.bench_prompts [--repeats 3]

Reports rows, seconds (best of the repeats) and rows per second for each stage, and writes
benchmarks/results/prompts.json. Both stages run with --force into a temporary local store, so
nothing is reused between repeats.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.common import machine, write_report  # noqa: E402
from pipelines import generate_prompts, translate_prompts  # noqa: E402
from pipelines.prompting.grammar import LANGUAGES  # noqa: E402


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
        "machine": machine(),
        "repeats": options.repeats,
        "stages": {
            stage: {"rows": rows[stage], "seconds": round(best, 3), "rows_per_second": round(rows[stage] / best)}
            for stage, best in ((stage, min(times)) for stage, times in timings.items())
        },
    }
    write_report("prompts", report)


if __name__ == "__main__":
    main()
