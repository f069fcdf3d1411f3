"""The benchmarks run, at a tiny size, and report what the README's table quotes: every ratio is
measured against its baseline in the same run. Speed itself is never asserted here."""

from __future__ import annotations

import json
import math
import re
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
    # Its figures for the dry run, kept as a smoke run's, never as a GPU's.
    figures = json.loads((tmp_path / "throughput.json").read_text())
    assert set(figures) == {"smoke"} and figures["smoke"] == report["throughput"]
    assert figures["smoke"]["seconds_per_classified_image"] == round(
        1 / report["classification"]["batched_images_per_second"], 4
    )


def test_every_hot_loop_is_measured_against_the_machine_s_peak_and_below_the_goal_says_why(tmp_path: Path) -> None:
    from benchmarks import bench_peak

    report = bench_peak.main(["--smoke", "--results_dir", str(tmp_path)])
    assert json.loads((tmp_path / "peak.json").read_text()) == report
    assert set(report["dtypes"]) == {"float32", "bfloat16"}
    for dtype in report["dtypes"].values():
        assert positive(dtype["matmul_peak_tflops"])
        loops = {loop["loop"]: loop for loop in dtype["loops"]}
        assert list(loops) == ["generation", "training", "classification", "alignment"]
        for loop in loops.values():
            share = loop["flops_per_call"] / loop["seconds_per_call"] / 1e12 / dtype["matmul_peak_tflops"]
            assert loop["share_of_peak"] == pytest.approx(share, rel=0.01)
            assert loop["meets_goal"] == (loop["share_of_peak"] >= 0.5)
            if not loop["meets_goal"]:  # the reason: where the time goes, by operator, shares that add up
                why = loop["why"]
                named = sum(o["share_of_time"] for o in why["memory_bound_operators"])
                assert 0 < why["dense_share_of_time"] + why["bookkeeping_share_of_time"] + named <= 1.001
                assert all(not bench_peak.is_dense(o["operator"]) for o in why["memory_bound_operators"])
        # Training does a forward and a backward: about three forwards' FLOPs at the same batch.
        assert loops["training"]["flops_per_call"] > 2 * loops["generation"]["flops_per_call"]
    # The real study's units at the real size: 50 guided steps of m9's UNet (0.84 TFLOP an image each at
    # 512 px) dominate an image; ResNet-34 is 3.6 GMACs at 224 px.
    units = report["real_study_on_this_cpu"]["flops_per_unit"]
    assert 50 * 2 * 0.8e12 < units["image"] < 50 * 2 * 0.9e12 + 5e12
    assert units["classified_image"] == pytest.approx(7.33e9, rel=0.01)
    # The dry run prices models a recipe builds by their FLOPs against these, counted the same way.
    import diffusers
    import torch

    from benchmarks.architectures import M9_UNET
    from pipelines.harness.estimate import M9_UNET_CALL_FLOPS, VIT_L14_IMAGE_FLOPS, unet_call_flops

    assert units["scored_image"] == VIT_L14_IMAGE_FLOPS
    with torch.device("meta"):
        assert unet_call_flops(diffusers.UNet2DConditionModel(**M9_UNET)) == M9_UNET_CALL_FLOPS
    figures = json.loads((tmp_path / "throughput.json").read_text())["cpu"]
    rate = {loop["loop"]: loop["tflops"] for loop in report["dtypes"]["float32"]["loops"]}
    assert figures["seconds_per_image"] == pytest.approx(units["image"] / (rate["generation"] * 1e12), rel=1e-3)


def test_the_overhead_benchmark_compares_each_stage_with_a_bare_loop_of_its_models(tmp_path: Path) -> None:
    from benchmarks import bench_overhead

    argv = ["--images", "16", "--batch_size", "4", "--steps", "2", "--results_dir", str(tmp_path)]
    report = bench_overhead.main(argv)
    assert json.loads((tmp_path / "overhead.json").read_text()) == report
    for stage in ("generation", "classification", "alignment"):
        figures = report[stage]
        assert positive(figures["bare_images_per_second"])
        if figures["stage_images_per_second"] is not None:  # None: start-up and work not told apart at 16
            ratio = figures["stage_images_per_second"] / figures["bare_images_per_second"]
            assert figures["stage_share_of_bare"] == pytest.approx(ratio, rel=0.01)
            assert figures["meets_goal"] == (figures["stage_share_of_bare"] >= 0.95)
    with pytest.raises(SystemExit, match="--images=8: at least 4 batches"):
        bench_overhead.main(["--images", "8", "--batch_size", "4", "--results_dir", str(tmp_path)])


def planned_seconds(out: str) -> float:
    """The total a dry run printed ("Total GPU time: about 12.2 min on ..."), in seconds."""
    number, unit = re.search(r"Total \w+ time: about ([\d,.]+) (h|min|s) on", out).groups()
    return float(number.replace(",", "")) * {"h": 3600, "min": 60, "s": 1}[unit]


def test_the_dry_run_s_times_come_from_the_throughput_file_and_say_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipelines.run import main

    from .conftest import REPO_ROOT

    recipe = str(REPO_ROOT / "pipelines" / "recipes" / "offline.yaml")
    figures = {"seconds_per_image": 4.0, "seconds_per_step": 3.0, "seconds_per_classified_image": 0.5,
               "seconds_per_scored_image": 0.25, "device": "a test GPU", "measured_by": "hand"}  # fmt: skip
    path = tmp_path / "throughput.json"
    path.write_text(json.dumps({"cuda": figures}))
    monkeypatch.chdir(tmp_path)  # the command as run from a folder of its own: nothing of the checkout's is read

    def dry_run(*options: str) -> tuple[int, str, str]:
        """`python -m pipelines.run RECIPE --dry_run ...`, in this process: exit code, stdout, stderr."""
        code = 0
        try:
            main([recipe, "--dry_run", "--store_root", str(tmp_path / "hub"), *options])
        except SystemExit as exit_:
            code = exit_.code
        out, err = capsys.readouterr()
        return code, out, err

    code, out, err = dry_run("--throughput", str(path))
    assert code == 0, err[-2000:]
    assert "GPU time assumes 4 s per image" in out and "measured on a test GPU (hand;" in out
    # No file: the built-in guesses, saying they are; the CPU has no guesses to fall back on.
    _, out, _ = dry_run()
    assert "GPU time assumes 2 s per image" in out and "has no measured GPU figures" in out
    code, _, err = dry_run("--throughput", str(path), "--device_kind", "cpu")
    assert code == 2 and "has no measured CPU figures; python -m benchmarks.bench_peak" in err
    path.write_text(json.dumps({"cpu": figures}))
    _, out, _ = dry_run("--throughput", str(path), "--device_kind", "cpu")
    assert "CPU time assumes 4 s per image" in out and "Total CPU time: about" in out
    # Twice the seconds per unit, twice the total.
    totals = []
    for scale in (1, 2):
        path.write_text(json.dumps({"cuda": {**figures, **{k: v * scale for k, v in figures.items() if k[0] == "s"}}}))
        totals.append(planned_seconds(dry_run("--throughput", str(path))[1]))
    assert totals[1] == pytest.approx(2 * totals[0], rel=0.02) and totals[0] > 0
    # A broken file or value is a one-line error naming it.
    broken_files = {
        "{": "not a throughput file",
        '{"cuda": {"seconds_per_image": -1}}': "cuda.seconds_per_image is -1",
    }
    for text, message in broken_files.items():
        path.write_text(text)
        code, _, err = dry_run("--throughput", str(path))
        assert code == 2 and message in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("name", "argv", "ratios"),
    [
        (
            "bench_generate",
            ["--images", "8", "--steps", "2", "--batch_size", "2"],
            [
                "speedup_threads",
                "speedup_processes",
                "speedup_bf16_threads",
                "speedup_bf16_processes",
                "speedup_workers_vs_one_thread",
            ],
        ),
        (
            "bench_classify",
            ["--images", "4", "--occupations", "2", "--dlib_images", "1", "--people", "2"],
            ["fast_path_vs_reference"],
        ),
        ("bench_train", ["--steps", "2", "--memory_captions", "20"], ["speedup"]),
        ("bench_alignment", ["--images", "8", "--occupations", "2", "--batch_size", "4"], ["speedup"]),
        ("bench_prompts", ["--repeats", "1"], []),
        ("bench_align_distribution", ["--prompts", "3", "--images", "4", "--steps", "3", "--repeats", "1"], []),
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
        assert report["workers_same_bytes"] is True  # a worker thread per core: the bytes of one thread
    if name == "bench_classify":  # dlib's wheel against its port, MTCNN against MTCNN; the fast path's cost
        for detector in ("dlib", "mtcnn"):
            assert positive(report[detector]["speedup"]) and positive(report[detector]["reference_images_per_second"])
        assert report["dlib"]["same_boxes"] == "1/1"  # the port found the astronaut's face where dlib did
        agreement = report["agreement"]
        assert agreement["people"] == 2 and agreement["gender_agreement_dlib_vs_mtcnn"] in (0.0, 0.5, 1.0)
    if name == "bench_align_distribution":  # together and apart, on every usable CPU and on one thread
        from pipelines.harness.stage import usable_cpus

        runs = report["by_threads"]
        assert [run["threads"] for run in runs] == sorted({usable_cpus(), 1}, reverse=True)
        for run in runs:
            assert positive(run["speedup"]) and positive(run["prompts_together_s"])
            assert run["speedup"] == pytest.approx(run["one_prompt_at_a_time_s"] / run["prompts_together_s"], rel=0.01)
            # The same gradients: to the bit where the CPU library runs the same kernels, else to rounding.
            assert run["max_gradient_difference_relative"] < 1e-5
            assert run["same_bits"] == (run["max_gradient_difference_relative"] == 0)
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


def test_world_draws_count_each_draw_s_verdicts_and_a_no_is_a_verdict_not_an_error(tmp_path: Path) -> None:
    """One draw of the offline study trained two steps instead of 1,800, on 16 pictures a prompt
    instead of 192 (the world learns nothing): its run exits 1 with both verdicts NO, which the report
    counts as NO (0 of 1, the Wilson interval of a rate measured once), with the draw's figures from
    what check_world published. Its store is kept (`--stores`), and a variant of the debiasing
    fine-tune run after it reuses the trained world and reruns only the steps from the fine-tune on."""
    from benchmarks import bench_world_draws
    from pipelines.harness.stage import usable_cpus

    few = ["train_world.max_train_steps=2", "train_debiased.max_train_steps=2",
           "draw_world.images_per_prompt=16", "draw_world.images_per_gendered_prompt=8",
           "generate_base_eval.num_images=10", "generate_debiased_eval.num_images=10"]  # fmt: skip
    argv = ["--seeds", "3", "--processes", "1", "--label", "smoke", "--results_dir", str(tmp_path),
            "--stores", str(tmp_path / "stores")]  # fmt: skip
    report = bench_world_draws.main(argv + [part for setting in few for part in ("--set", setting)])
    assert json.loads((tmp_path / "world_draws_smoke.json").read_text()) == report
    assert report["seed_step"] == "train_world" and report["training_threads"] == usable_cpus()
    assert report["settings"] == few and report["processes"] == 1
    draw = report["draws"]["3"]
    assert draw["calibrated"] is False and draw["debiased"] is False and "failure" not in draw
    assert draw["lines"][0].startswith("calibrated: NO") and draw["lines"][1].startswith("debiased: NO")
    assert draw["fit_p_value"] < 0.001 and draw["fit_statistic"] > 0 and 0 <= draw["cells_within"] <= 1
    assert {"train_world", "generate_base_eval", "check_world"} <= set(draw["step_seconds"])
    assert positive(draw["seconds"]) and draw["seconds"] >= sum(draw["step_seconds"].values())
    summary = report["summary"]
    assert summary["draws"] == 1 and summary["failed_runs"] == 0
    assert summary["calibrated"] == {"passed": 0, "of": 1, "rate_ci95": [0.0, 0.793]}
    assert summary["fit_p_value"]["min"] == summary["fit_p_value"]["max"] == draw["fit_p_value"]
    assert report["stores_kept"] is True
    assert (tmp_path / "stores" / "store-3" / "models--t2i-bias--world-model").is_dir()
    variant = [*few[:1], "train_debiased.max_train_steps=3", *few[2:]]
    again = bench_world_draws.main(argv[:4] + ["--label", "variant", *argv[6:]]
                                   + [part for setting in variant for part in ("--set", setting)])  # fmt: skip
    steps = again["draws"]["3"]["step_seconds"]
    assert "train_world" not in steps and "generate_base_eval" not in steps  # reused: the same world
    assert {"train_debiased", "generate_debiased_eval", "check_world"} <= set(steps)
    assert again["draws"]["3"]["fit_statistic"] == draw["fit_statistic"]  # the base model's figures unchanged


def test_world_draws_run_side_by_side_at_most_as_many_as_asked(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Three commands, two at a time: never three at once, each one's exit code and output kept, and
    each start and end said as it happens (a draw of the study takes minutes)."""
    from benchmarks.bench_world_draws import run_side_by_side

    code = ("import sys, time; open(sys.argv[1] + '.start', 'w').write(repr(time.time())); time.sleep(0.6); "
            "open(sys.argv[1] + '.end', 'w').write(repr(time.time())); print('out', sys.argv[1]); "
            "sys.exit(int(sys.argv[2]))")  # fmt: skip
    codes = {"a": 0, "b": 1, "c": 3}
    commands = {key: [sys.executable, "-c", code, str(tmp_path / key), str(rc)] for key, rc in codes.items()}
    done = run_side_by_side(commands, 2, tmp_path)
    assert {key: outcome["returncode"] for key, outcome in done.items()} == codes
    assert all(outcome["stdout"].strip() == f"out {tmp_path / key}" for key, outcome in done.items())
    spans = [(float((tmp_path / f"{key}.start").read_text()), float((tmp_path / f"{key}.end").read_text()))
             for key in commands]  # fmt: skip
    most = max(sum(start <= moment < end for start, end in spans) for moment, _ in spans)
    assert most == 2  # two ran together, and the third waited for one of them
    progress = capsys.readouterr().err
    assert progress.count(": started") == 3 and "(exit code 3)" in progress and "3 of 3 done" in progress


def test_world_draws_a_run_that_fails_before_its_verdicts_is_a_failure_apart_from_them(tmp_path: Path) -> None:
    from benchmarks.bench_world_draws import read_draw, summarise

    failed = read_draw(Path("unused"), "t2i-bias/world-check", {
        "returncode": 2, "seconds": 12.34, "stdout": "",
        "stderr": "== step 1/23: generate_prompts ==\n== generate_prompts: x@1 (done in 0.3s) ==\nout of disk space",
    })  # fmt: skip
    assert failed == {"seconds": 12.3, "step_seconds": {"generate_prompts": 0.3}, "failure": "out of disk space"}
    # A crash exits 1, as a NO verdict does: with no verdicts published it is a failure too.
    crashed = read_draw(tmp_path / "empty", "t2i-bias/world-check", {
        "returncode": 1, "seconds": 5.0, "stdout": "", "stderr": "Traceback ...\nRuntimeError: boom"})  # fmt: skip
    assert crashed == {"seconds": 5.0, "step_seconds": {}, "failure": "RuntimeError: boom"}
    # A judged draw has an `error` (from the planted shares) of its own: it is not a failure.
    passed = {"calibrated": True, "debiased": False, "fit_p_value": 0.2, "error": 0.02, "seconds": 400.0}
    summary = summarise({1: failed, 2: passed, 3: {**passed, "debiased": True, "fit_p_value": 0.01}})
    assert summary["draws"] == 3 and summary["failed_runs"] == 1
    assert summary["calibrated"]["passed"] == 2 and summary["calibrated"]["of"] == 2
    assert summary["debiased"]["passed"] == 1 and summary["debiased"]["of"] == 2
    assert summary["fit_p_value"] == {"min": 0.01, "median": 0.105, "max": 0.2}
    assert summary["error"] == {"min": 0.02, "median": 0.02, "max": 0.02}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--seeds", "1", "1"], "--seeds 1 1: each seed once"),
        (["--processes", "0"], "--processes 0: at least 1"),
        (["--label", "../x"], "--label '../x': letters, digits"),
        (["--seed_step", "classify_base_eval"], "--seed_step 'classify_base_eval': allowed draw_world,"),
        (["--set", "no_such_step.seed=1"], "no_such_step"),
        (["--recipe", "pipelines/recipes/methods_offline.yaml"], "no check_world step"),
        (["--stores", "README.md"], "--stores 'README.md': a folder"),
    ],
)
def test_world_draws_refuse_bad_input_in_one_line_before_any_draw(
    argv: list[str], message: str, capsys: pytest.CaptureFixture
) -> None:
    from benchmarks import bench_world_draws

    with pytest.raises(SystemExit) as exit_info:
        bench_world_draws.main(argv)
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 2 and message in error, error
    assert "draw" not in capsys.readouterr().err
