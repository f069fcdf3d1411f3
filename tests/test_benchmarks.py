"""The benchmarks run, at a tiny size, and report what the README's table quotes: every ratio is
measured against its baseline in the same run. Speed itself is never asserted here."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
SPEEDUPS = ["speedup_threads", "speedup_processes"]


def positive(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_scratch_folders_are_gone_when_the_benchmark_process_exits() -> None:
    """Benchmarks write stores, weights and gigabytes of text states, in every CI run on one machine."""
    code = "from benchmarks.common import scratch; f = scratch(); (f / 'w.pt').write_bytes(bytes(1024)); print(f)"
    root = Path(__file__).resolve().parents[1]
    made = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    folder = Path(made.stdout.strip())
    assert folder.name.startswith("bench-") and folder.parent.is_dir() and not folder.exists()


def test_gpu_benchmark_smoke_runs_every_code_path_on_the_cpu(tmp_path: Path) -> None:
    from benchmarks import gpu

    report = gpu.main(["--smoke", "--results_dir", str(tmp_path)])
    assert json.loads((tmp_path / "gpu.json").read_text()) == report
    assert report["smoke"] and report["dtype"] == "float32" and positive(report["matmul_peak_tflops"])
    generation = report["generation"]
    assert [entry["batch_size"] for entry in generation["batch_sweep"]] == [1, 2]
    assert generation["batch_sweep"][0]["speedup_vs_one_per_call"] == 1.0
    assert all(positive(e["images_per_second"]) and positive(e["share_of_peak"]) for e in generation["batch_sweep"])
    assert positive(generation["flops_per_image"])
    names = [entry["name"] for entry in generation["optimisations"]]
    assert names == ["SDPA attention", "channels-last UNet", "batched VAE decoding"]  # compile: GPU only
    for section in ("classification", "clip_scoring"):
        assert positive(report[section]["speedup"]) and report[section]["images"] == 4
    dlib = report["classification"]["dlib_detector"]  # the reference's detector, in PyTorch on the device
    assert dlib["images"] == 2 and dlib["upsample"] == 1 and positive(dlib["images_per_second"])


@pytest.mark.parametrize(
    ("name", "argv", "ratios"),
    [
        (
            "bench_generate",
            ["--images", "4", "--steps", "2", "--batch_size", "2"],
            ["speedup_threads", "speedup_processes", "speedup_bf16_threads", "speedup_bf16_processes"],
        ),
        (
            "bench_classify",
            ["--images", "4", "--occupations", "2", "--dlib_images", "1", "--people", "2"],
            ["fast_path_vs_reference"],
        ),
        ("bench_train", ["--steps", "2", "--memory_captions", "20"], ["speedup"]),
        ("bench_alignment", ["--images", "8", "--occupations", "2", "--batch_size", "4"], ["speedup"]),
        ("bench_prompts", ["--repeats", "1"], []),
        ("bench_memory", ["--small", "10", "--large", "30"], []),
    ],
)
def test_cpu_benchmarks_report_their_ratios(tmp_path: Path, name: str, argv: list[str], ratios: list[str]) -> None:
    import importlib

    report = importlib.import_module(f"benchmarks.{name}").main([*argv, "--results_dir", str(tmp_path)])
    written = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert written == report and "cores" in report["machine"]
    for ratio in ratios:
        assert positive(report[ratio]), (ratio, report)
    if name == "bench_train":  # at m9's size caching removes the VAE and text encoders' FLOPs, the UNet's remain
        ceiling = report["real_size_ceiling"]
        removed = ceiling["vae_encoder_tflops"] + ceiling["text_encoder_tflops"]
        assert ceiling["unet_full_tflops"] > ceiling["unet_lora_tflops"] > removed / 2 > 0
        for kind in ("full", "lora"):
            unet = ceiling[f"unet_{kind}_tflops"]
            assert ceiling[f"speedup_ceiling_{kind}"] == pytest.approx((unet + removed) / unet, abs=0.01)
        # m9's 512-token text states: memory-mapped fp16 keeps them out of private memory
        memory = report["text_state_memory"]
        assert memory["width"] == 768  # the projection's width, which is what the UNet attends to and is cached
        assert memory["before_private_gib_per_10k"] > 2 * max(memory["after_private_gib_per_10k"], 0.5)
        assert memory["after_disk_gib_per_10k"] == pytest.approx(memory["before_private_gib_per_10k"] / 2, rel=0.1)
    if name == "bench_generate":  # bfloat16 images against their float32 twins, in 8-bit levels
        difference = report["bf16_pixel_difference"]
        assert 0 <= difference["mean"] <= difference["p99"] <= 255 and isinstance(report["cpu_bf16_native"], bool)
    if name == "bench_classify":  # dlib's wheel against its port, MTCNN against MTCNN; the fast path's cost
        for detector in ("dlib", "mtcnn"):
            assert positive(report[detector]["speedup"]) and positive(report[detector]["reference_images_per_second"])
        assert report["dlib"]["same_boxes"] == "1/1"  # the port found the astronaut's face where dlib did
        agreement = report["agreement"]
        assert agreement["people"] == 2 and agreement["gender_agreement_dlib_vs_mtcnn"] in (0.0, 0.5, 1.0)
    if name == "bench_memory":  # each stage's own peak, in its own process, at both sizes
        stages = report["stages"]
        assert sorted(stages) == ["classify", "evaluate_alignment", "generate_images"]
        for peaks in stages.values():
            assert 100 < peaks["peak_mib_small"] < 20_000 and 100 < peaks["peak_mib_large"] < 20_000
            assert peaks["growth"] == pytest.approx(peaks["peak_mib_large"] / peaks["peak_mib_small"] - 1, abs=2e-3)


def test_contention_benchmark_reports_each_policy_alone_and_beside_a_neighbour(tmp_path: Path) -> None:
    from benchmarks import bench_contention

    report = bench_contention.main(["--seconds", "1", "--results_dir", str(tmp_path)])
    assert json.loads((tmp_path / "contention.json").read_text()) == report
    policies = report["policies"]
    assert set(policies) == {"toolkit default", "all cores", "all cores, passive wait", "one thread"}
    # The toolkit's default takes the cores a neighbour leaves free; the others are fixed.
    default = policies["toolkit default"]
    assert 1 <= default["threads_beside_neighbours"] <= default["threads_alone"] <= report["usable_cpus"]
    assert policies["one thread"]["threads_alone"] == policies["one thread"]["threads_beside_neighbours"] == 1
    assert policies["all cores"]["threads_beside_neighbours"] == report["usable_cpus"]
    for policy in policies.values():
        assert positive(policy["steps_per_second_alone"]) and positive(policy["steps_per_second_beside_neighbours"])
        assert policy["slowdown"] == pytest.approx(
            policy["steps_per_second_alone"] / policy["steps_per_second_beside_neighbours"], rel=0.05
        )
    assert report["expected_slowdown"] >= 1 and report["neighbours"] == 1
