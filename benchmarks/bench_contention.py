"""Training steps per second alone and beside CPU-bound neighbours, at each thread policy, one run.

    python -m benchmarks.bench_contention [--seconds 20] [--neighbours 1]

A machine is often shared. torch runs one intra-op thread per core by default, and its OpenMP
threads spin while they wait for each other: beside a neighbour that keeps a core busy, a step
waits for a thread that has no core to run on, and training slowed tens of times (issue #30). The
benchmark runs the world model's training step (its UNet and text encoder, forward and backward,
on a batch of 64 at 16 px: the offline study's step) in a fresh process for `--seconds`, alone and
beside `--neighbours` processes that spin a core each, under four policies:

- `toolkit default`: what training chooses without `--cpu_threads` (`cpu_share`): one thread per
  usable CPU that other work leaves free when it starts;
- `all cores`: one thread per usable CPU (what the toolkit chose before it looked at the load);
- `all cores, passive wait`: the same with `OMP_WAIT_POLICY=PASSIVE` (waiting threads sleep);
- `one thread`.

The slowdown a neighbour should cost is the share of CPU time it takes: with one neighbour on
2 cores, about 2x (`expected_slowdown`). Writes benchmarks/results/contention.json.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import machine, write_report
from pipelines.harness.stage import usable_cpus

ROOT = Path(__file__).resolve().parents[1]
SPIN = "while True:\n    pass\n"


def worker(seconds: float, threads: int, neighbours: int) -> tuple[float, int]:
    """Training steps per second of the world model on `threads` (0: the toolkit's choice) beside
    `neighbours` spinning processes, after one warm-up step, and the threads it ran on. The neighbours
    start once the libraries are imported and the model built, before the threads are chosen: what is
    measured is the same, and the start-up (most of a short measurement's time) does not run at the
    neighbours' pace."""
    import torch

    from pipelines.harness.stage import cpu_share
    from pipelines.modeling.world import SIZE, build_world_pipeline

    pipe = build_world_pipeline([f"a photo of a {job}" for job in ("nurse", "CEO", "teacher", "firefighter")])
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(neighbours)]
    try:
        time.sleep(0.2 if neighbours else 0)  # the neighbours at their loop before the load is sampled
        threads = threads or cpu_share()[0]
        torch.set_num_threads(threads)
        return train(pipe, SIZE, seconds), threads
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def train(pipe: Any, size: int, seconds: float) -> float:
    """The world model's training steps per second over `seconds`, after one warm-up step."""
    import torch

    unet, text_encoder = pipe.unet.train(), pipe.text_encoder.train()
    optimizer = torch.optim.AdamW([*unet.parameters(), *text_encoder.parameters()], lr=1e-4)
    tokens = pipe.tokenizer(["a photo of a nurse"] * 64, padding="max_length", return_tensors="pt")
    pixels = torch.randn(64, 3, size, size)

    def step() -> None:
        hidden = text_encoder(tokens.input_ids, attention_mask=tokens.attention_mask)[0]
        timesteps = torch.randint(0, 1000, (64,))
        loss = unet(pixels, timesteps, hidden).sample.square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    steps, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        step()
        steps += 1
    return steps / (time.perf_counter() - started)


def measure(seconds: float, threads: int, passive: bool, neighbours: int) -> tuple[float, int]:
    """Steps per second of a fresh worker process beside `neighbours` spinning processes, and its threads."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads or usable_cpus())}
    if passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_contention", "--worker", "--threads", str(threads),
         "--seconds", str(seconds), "--neighbours", str(neighbours)],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    rate, used = done.stdout.strip().splitlines()[-1].split()
    return float(rate), int(used)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="timed training per measurement")
    parser.add_argument("--neighbours", type=int, default=1, help="processes that each keep a core busy")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--results_dir", default=None)
    options = parser.parse_args(argv)
    if options.worker:
        print(*worker(options.seconds, options.threads, options.neighbours))
        return {}
    cpus = usable_cpus()
    policies = {
        "toolkit default": (0, False),
        "all cores": (cpus, False),
        "all cores, passive wait": (cpus, True),
        "one thread": (1, False),
    }
    results = {}
    for name, (threads, passive) in policies.items():
        alone, threads_alone = measure(options.seconds, threads, passive, 0)
        beside, threads_beside = measure(options.seconds, threads, passive, options.neighbours)
        results[name] = {
            "threads_alone": threads_alone,
            "threads_beside_neighbours": threads_beside,
            "omp_wait_policy": "PASSIVE" if passive else "default",
            "steps_per_second_alone": round(alone, 2),
            "steps_per_second_beside_neighbours": round(beside, 2),
            "slowdown": round(alone / beside, 2),
        }
    report = {
        "benchmark": "training steps/s alone and beside CPU-bound neighbours",
        "machine": machine(),
        "usable_cpus": cpus,
        "neighbours": options.neighbours,
        "model": "the planted-bias world's UNet and text encoder, batch 64, 16 px, forward and backward",
        "seconds_per_measurement": options.seconds,
        "expected_slowdown": round(cpus / max(cpus - options.neighbours, 1), 2),
        "policies": results,
    }
    write_report("contention", report, options.results_dir)
    return report


if __name__ == "__main__":
    main()
