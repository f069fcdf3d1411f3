"""Times the whole prompt grid in all ten languages: generate_prompts, then translate_prompts.

    python -m benchmarks.bench_prompts [--repeats 3]

Reports rows, seconds (best of the repeats) and rows per second for each stage, and writes
benchmarks/results/prompts.json. Both stages run with --force into a temporary local store, so
nothing is reused between repeats.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pyarrow.parquet as pq  # noqa: E402

from benchmarks.common import machine, scratch, write_report  # noqa: E402
from pipelines import generate_prompts, translate_prompts  # noqa: E402
from pipelines.artifacts.reader import DatasetArtifact  # noqa: E402
from pipelines.artifacts.store import LocalStore  # noqa: E402
from pipelines.prompting.grammar import LANGUAGES  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--results_dir", default=None)
    options = parser.parse_args(argv)
    languages = [code for code in LANGUAGES if code != "en"]
    timings: dict[str, list[float]] = {"generate_prompts": [], "translate_prompts": []}
    for _ in range(options.repeats):
        root = str(scratch("bench-prompts-"))
        common = {"store_root": root, "namespace": "bench", "force": True}
        started = time.perf_counter()
        generate_prompts.run(generate_prompts.Arguments(**common))
        timings["generate_prompts"].append(time.perf_counter() - started)
        started = time.perf_counter()
        published = translate_prompts.run(translate_prompts.Arguments(**common, languages=languages))
        timings["translate_prompts"].append(time.perf_counter() - started)
    # The rows the stages made, as the card counts them (not a formula that could go stale).
    artifact = DatasetArtifact(LocalStore(root).resolve(str(published), "dataset"), str(published))
    counts = {c: sum(pq.ParquetFile(f).metadata.num_rows for f in artifact.files(c)) for c in artifact.configs}
    rows = {"generate_prompts": counts["en"], "translate_prompts": sum(n for c, n in counts.items() if c != "en")}
    report = {
        "benchmark": "prompt grid, ten languages",
        "machine": machine(),
        "repeats": options.repeats,
        "stages": {
            stage: {"rows": rows[stage], "seconds": round(best, 3), "rows_per_second": round(rows[stage] / best)}
            for stage, best in ((stage, min(times)) for stage, times in timings.items())
        },
    }
    write_report("prompts", report, options.results_dir)
    return report


if __name__ == "__main__":
    main()
