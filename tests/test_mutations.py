"""The standing list of mutations (benchmarks/mutations.py) stays applicable, spans what matters, and
its last report says every one was killed; the script kills a mutation without ever writing the file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from benchmarks.mutations import MUTATIONS, apply

from .conftest import REPO_ROOT, run_python

AREAS = {"metrics", "statistics", "store", "verdicts", "prompts", "training"}


def test_every_mutation_applies_once_and_names_tests_that_exist() -> None:
    assert len(MUTATIONS) >= 30
    assert len({m.id for m in MUTATIONS}) == len(MUTATIONS)
    assert {m.area for m in MUTATIONS} >= AREAS
    for mutation in MUTATIONS:
        assert apply(mutation) != (REPO_ROOT / mutation.file).read_text(encoding="utf-8"), mutation.id
        for test in mutation.tests:
            path, _, name = test.partition("::")
            assert (REPO_ROOT / path).is_file(), test
            assert not name or f"def {name}(" in (REPO_ROOT / path).read_text(encoding="utf-8"), test


def test_the_last_report_killed_every_mutation_of_the_list() -> None:
    report = json.loads((REPO_ROOT / "benchmarks" / "results" / "mutations.json").read_text())
    assert [o["id"] for o in report["outcomes"]] == [m.id for m in MUTATIONS]  # rerun after changing the list
    for outcome, mutation in zip(report["outcomes"], MUTATIONS):
        assert outcome["tests"] == list(mutation.tests), mutation.id
    assert report["survived"] == [] and report["kill_rate"] == 1.0


def test_the_script_kills_a_mutation_without_ever_writing_the_file(tmp_path: Path) -> None:
    """The mutant is killed although the file is never written (its modification time stays): other
    processes on this checkout, such as the suite's other worker, never import a mutant."""
    mutated = next(m for m in MUTATIONS if m.id == "holm-is-bonferroni")
    path = REPO_ROOT / mutated.file
    before = (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
    done = run_python("-m", "benchmarks.mutations", "--only", mutated.id, "--results_dir", str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    assert (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns) == before
    report = json.loads((tmp_path / "mutations.json").read_text())
    assert [(o["id"], o["killed"]) for o in report["outcomes"]] == [(mutated.id, True)]
    unknown = run_python("-m", "benchmarks.mutations", "--only", "no-such-mutation", "--results_dir", str(tmp_path))
    assert unknown.returncode != 0 and "unknown mutation(s) no-such-mutation" in unknown.stderr
