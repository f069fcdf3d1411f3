"""The bad-input battery: every stage, the training script and the runner, given what a hurried or
hostile user types. Each case must end with exit code 2 and one line naming the input (never a
traceback), and leave the store exactly as it was: no new revision, no leftover file.

One table drives it: (command, arguments, a fragment of the expected message). Arguments may name
the study's artifacts as `{prompts}`, `{images}`, `{attributes}`, `{bias}`, `{train}`, `{model}`,
files the fixture makes as `{tmp}/...`, and the store root as `{root}`.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines import build_tiny_model, classify, collect_datasets, evaluate_bias, generate_images, generate_prompts

from .conftest import image_arguments

# (command, arguments, message fragment). A command is a stage's module name, "train" or "run".
CASES: list[tuple[str, list[str], str]] = [
    # Any stage: flags, recipes, stores.
    ("generate_prompts", ["--profesions", "nurse"], "--profesions: did you mean --professions?"),
    ("generate_prompts", ["--professions"], "--professions: expected at least one argument"),
    ("generate_prompts", ["--recipe", "{tmp}/missing.yaml"], "missing.yaml"),
    ("generate_prompts", ["--recipe", "{tmp}/broken.yaml"], "broken.yaml', line 4, column 1: YAML syntax error"),
    ("generate_prompts", ["--recipe", "{tmp}/string_list.yaml"], "professions"),
    ("generate_prompts", ["--recipe", "{tmp}/recipe.yaml", "--step", "nosuch"], "nosuch"),
    ("generate_prompts", ["--store_root", "{tmp}/a_file"], "a_file"),
    ("generate_prompts", ["--store_root", "{tmp}/a_file/hub"], "a_file"),
    # generate_prompts
    ("generate_prompts", ["--genders", "robot"], "genders"),
    ("generate_prompts", ["--ages", "young", "old", "young"], "ages: duplicate value(s) 'young'"),
    ("generate_prompts", ["--styles", ""], "styles"),
    ("generate_prompts", ["--professions", "nurse", "Prisoner"], "'Prisoner' name(s) a condition, not an occupation"),
    # translate_prompts
    ("translate_prompts", ["--input", "{prompts}", "--languages", "pt"], "languages"),
    ("translate_prompts", ["--input", "{prompts}", "--backend", "google"], "backend"),
    ("translate_prompts", ["--input", "no-such-prompts"], "no-such-prompts"),
    ("translate_prompts", ["--input", "{images}"], "prompts"),
    ("translate_prompts", ["--input", "{prompts}", "--batch_size", "0"], "batch_size=0"),
    (
        "translate_prompts",
        ["--input", "{custom}", "--languages", "de"],
        "German lexicon (pipelines/prompting/lexicons/de.yaml): profession 'zeppelin pilot'",
    ),
    # import_magbig
    ("import_magbig", ["--sets", "directt"], "sets"),
    ("import_magbig", ["--languages", "pt"], "languages"),
    ("import_magbig", ["--source", "{tmp}/nowhere"], "nowhere"),
    # build_tiny_model
    ("build_tiny_model", ["--kind", "sdxl"], "kind='sdxl'"),
    ("build_tiny_model", ["--resolution", "30"], "resolution=30"),
    ("build_tiny_model", ["--input", "{attributes}"], "prompts"),
    # generate_images
    ("generate_images", ["--input", "{prompts}", "--languages", "pt"], "pt"),
    ("generate_images", ["--input", "{prompts}", "--variants", "eval_directt"], "eval_directt"),
    ("generate_images", ["--input", "{prompts}", "--num_images", "0"], "num_images=0"),
    ("generate_images", ["--input", "{prompts}", "--guidance_scale", "nan"], "guidance_scale=nan: a finite number"),
    ("check_world", ["--base", "{attributes}", "--alpha", "inf"], "alpha=inf: a finite number"),
    ("generate_images", ["--input", "{prompts}", "--seeds", "random"], "seeds='random'"),
    ("generate_images", ["--input", "{prompts}", "--scheduler", "euler_x"], "euler_x"),
    ("generate_images", ["--input", "{prompts}", "--dtype", "fp8"], "dtype='fp8'"),
    ("generate_images", ["--input", "{prompts}", "--guidance_scale", "lots"], "guidance_scale"),
    ("generate_images", ["--input", "{prompts}", "--professions", "astronaut"], "astronaut"),
    ("generate_images", ["--input", "{attributes}"], "prompts"),
    ("generate_images", ["--input", "{prompts}", "--height", "30"], "height=30"),
    ("generate_images", ["--input", "{prompts}", "--face_filter", "yolo"], "face_filter"),
    ("generate_images", ["--input", "{prompts}", "--interventions", "magic"], "interventions"),
    (
        "generate_images",
        ["--input", "{prompts}", "--interventions", "sega", "--variants", "gendered"],
        "interventions apply to the eval_direct prompts",
    ),
    ("generate_images", ["--input", "study/prompts@deadbeef"], "deadbeef"),
    # collect_datasets
    (
        "collect_datasets",
        ["--prompts", "{prompts}", "--images", "{images}", "--caption_variant", "x"],
        "caption_variant",
    ),
    (
        "collect_datasets",
        ["--prompts", "{prompts}", "--images", "{images}", "--gendered_share", "1.5"],
        "gendered_share",
    ),
    ("collect_datasets", ["--prompts", "{prompts}", "--images", "{images}", "--caption_languages", "pt"], "pt"),
    ("collect_datasets", ["--prompts", "{prompts}", "--images", "{prompts}"], "images"),
    ("collect_datasets", ["--prompts", "{prompts}", "--images", "{images}", "--image_configs", "xx_eval"], "xx_eval"),
    # classify
    ("classify", ["--input", "{images}", "--detector", "yolo"], "detector='yolo'"),
    ("classify", ["--input", "{images}", "--classifier", "resnet"], "classifier='resnet'"),
    ("classify", ["--input", "{images}", "--chip_size", "0"], "chip_size=0"),
    ("classify", ["--input", "{images}", "--chip_padding", "-1"], "chip_padding"),
    ("classify", ["--input", "{images}", "--configs", "fr_eval_direct"], "fr_eval_direct"),
    ("classify", ["--input", "{prompts}"], "images"),
    # evaluate_bias
    ("evaluate_bias", ["--input", "{images}"], "a dataset of attributes (made by classify) is expected"),
    ("evaluate_bias", ["--input", "{attributes}", "--attributes", "height"], "height"),
    ("evaluate_bias", ["--input", "{attributes}", "--nonbinary", "x"], "nonbinary='x'"),
    ("evaluate_bias", ["--input", "{attributes}", "--confidence", "1.5"], "confidence=1.5"),
    ("evaluate_bias", ["--input", "{attributes}", "--rounds", "0"], "rounds=0"),
    ("evaluate_bias", ["--input", "{attributes}", "--num_occupations", "0"], "num_occupations=0"),
    ("evaluate_bias", ["--input", "{attributes}", "--targets", "height:tall=1"], "targets: 'height:tall=1'"),
    ("evaluate_bias", ["--input", "{attributes}", "--targets", "gender:female=0.7"], "must sum to 1, not 0.7"),
    ("evaluate_bias", ["--input", "{attributes}", "--targets", "gender:female=x,male=1"], "shares in [0, 1]"),
    ("evaluate_bias", ["--input", "{attributes}", "--targets", "age:0-2=1", "age:3-9=1"], "age is given twice"),
    # Devices and counts that allocate: refused before anything loads (cuda:99 is no GPU on any machine).
    ("generate_images", ["--device", "cuda:99"], "device='cuda:99': torch sees"),
    ("classify", ["--input", "{images}", "--device", "cuda:99"], "device='cuda:99': torch sees"),
    ("evaluate_alignment", ["--input", "{images}", "--device", "tpu"], "device='tpu': allowed auto, cpu, cuda"),
    ("generate_images", ["--num_images", "1000000000000"], "num_images=1000000000000: at most 100,000"),
    ("generate_images", ["--num_inference_steps", "100000000"], "num_inference_steps=100000000: at most 1,000"),
    ("generate_images", ["--height", "800000"], "height=800000: at most 4,096"),
    ("train", ["--dataset_name", "{train}", "--resolution", "8192"], "resolution=8192: at most 4,096"),
    ("train", ["--dataset_name", "{train}", "--train_batch_size", "100000"], "train_batch_size=100000: at most 4,096"),
    ("train", ["--dataset_name", "{train}", "--use_lora", "--rank", "100000"], "rank=100000: at most 1,024"),
    (
        "train",
        ["--dataset_name", "{train}", "--train_batch_size", "4096", "--resolution", "4096"],
        "train_batch_size=4096 with resolution=4096: 68,719,476,736 pixels per batch; at most 268,435,456",
    ),
    ("classify", ["--input", "{images}", "--chip_size", "100000"], "chip_size=100000: at most 4,096"),
    ("classify", ["--input", "{images}", "--batch_size", "100000"], "batch_size=100000: at most 4,096"),
    ("classify", ["--input", "{images}", "--dlib_max_size", "10000000"], "dlib_max_size=10000000: at most 16,384"),
    ("classify", ["--input", "{images}", "--batch_size", "4096", "--chip_size", "4096"], "pixels per batch"),
    ("evaluate_alignment", ["--input", "{images}", "--batch_size", "1000000"], "batch_size=1000000: at most 4,096"),
    ("compare_methods", ["--methods", "base={images}", "--batch_size", "1000000"], "batch_size=1000000: at most"),
    ("translate_prompts", ["--input", "{prompts}", "--batch_size", "1000000"], "batch_size=1000000: at most 4,096"),
    ("translate_prompts", ["--input", "{prompts}", "--max_new_tokens", "0"], "max_new_tokens=0"),
    (
        "generate_images",
        ["--batch_size", "4096", "--height", "4096", "--width", "4096"],
        "batch_size=4096 with height=4096, width=4096: 68,719,476,736 pixels per batch",
    ),
    ("generate_images", ["--batch_size", "2048"], "height unset (counted as 1024)"),
    (
        "evaluate_bias",
        ["--input", "{attributes}", "--rounds", "1000000", "--noise_rates", "0.1"],
        "rounds=1000000: 1,000,000 rounds of",
    ),
    # The Hub backend offline (HF_HUB_OFFLINE is set for every case): the Hub is named, never a traceback.
    ("generate_prompts", ["--store", "hub", "--professions", "nurse"], "HF_HUB_OFFLINE is set"),
    ("classify", ["--store", "hub", "--input", "study/images"], "cannot reach the Hub for dataset 'study/images'"),
    ("evaluate_bias", ["--store", "hub", "--input", "study/images-attributes@main"], "HF_HUB_OFFLINE is set"),
    # A translation model offline, mistyped or not a model.
    (
        "translate_prompts",
        ["--input", "{prompts}", "--backend", "transformers", "--translation_model", "Helsinki-NLP/opus-mt-{{lang}}"],
        "translation_model='Helsinki-NLP/opus-mt-de': no such model",
    ),
    (
        "translate_prompts",
        ["--input", "{prompts}", "--backend", "transformers", "--translation_model", "no-such-model-{{lang}}"],
        "translation_model='no-such-model-de': no such model",
    ),
    (
        "translate_prompts",
        ["--input", "{prompts}", "--backend", "transformers", "--translation_model", "{tmp}/nowhere"],
        "cannot load a translation model",
    ),
    # evaluate_alignment
    ("evaluate_alignment", ["--input", "{images}", "--convention", "x"], "convention='x'"),
    ("evaluate_alignment", ["--input", "{images}", "--on_corrupt", "ignore"], "on_corrupt='ignore'"),
    ("evaluate_alignment", ["--input", "{images}", "--configs", "xx_eval_direct"], "xx_eval_direct"),
    ("evaluate_alignment", ["--input", "{attributes}"], "images"),
    ("evaluate_alignment", ["--input", "{images}", "--clip_model", "ViT-L-14"], "QuickGELU"),
    # attach_results
    ("attach_results", ["--bias", "{images}"], "bias"),
    ("attach_results", ["--bias", "no-such-bias"], "no-such-bias"),
    # compare_methods
    ("compare_methods", ["--methods", "base"], "methods: 'base' is not label=ns/images[@revision]"),
    ("compare_methods", ["--methods", "base={images}", "--baseline", "other"], "baseline='other'"),
    ("compare_methods", ["--methods", "base=no-such-images"], "no images dataset study/no-such-images"),
    ("compare_methods", ["--methods", "base={prompts}"], "no attributes made by classify"),
    ("compare_methods", ["--methods", "base={images}", "--confidence", "2"], "confidence=2.0"),
    ("compare_methods", ["--methods", "base={images}", "--attribute", "height"], "no 'height' results"),
    # draw_world and check_world (the planted-bias world)
    ("draw_world", ["--input", "{prompts}", "--languages", "fr"], "languages=['fr']: allowed en, de, zh, ja"),
    ("draw_world", ["--input", "{prompts}", "--professions", "astronaut"], "professions=['astronaut']"),
    ("draw_world", ["--input", "{prompts}", "--images_per_prompt", "0"], "images_per_prompt=0"),
    (
        "draw_world",
        ["--input", "{prompts}", "--images_per_prompt", "200000000"],
        "images_per_prompt=200000000: at most",
    ),
    ("evaluate_bias", ["--input", "{attributes}", "--rounds", "1000000000"], "rounds=1000000000: at most 1,000,000"),
    ("draw_world", ["--input", "{prompts}", "--images_per_gendered_prompt", "-1"], "images_per_gendered_prompt=-1"),
    ("draw_world", ["--input", "{prompts}", "--languages", "ja"], "languages: ja not in study/prompts"),
    ("draw_world", ["--input", "{images}"], "prompts"),
    ("check_world", ["--base", "{prompts}"], "attributes"),
    ("check_world", ["--base", "{attributes}", "--debiased_control", "{attributes}"], "debiased_control: needs"),
    ("check_world", ["--base", "{attributes}", "--min_control", "1.5"], "min_control=1.5"),
    ("check_world", ["--base", "{attributes}", "--alpha", "0.7"], "alpha=0.7: between 0 and 0.5"),
    ("check_world", ["--base", "{attributes}", "--target", "female=0.7,male=0.7"], "must sum to 1"),
    ("check_world", ["--base", "{attributes}", "--target", "woman=1"], "labels among male, female"),
    ("check_world", ["--base", "{attributes}"], "records planted shares (draw_world's card does)"),
    # publish_space
    ("publish_space", ["--versions", "base"], "versions"),
    ("publish_space", ["--space_store", "ftp"], "space_store='ftp'"),
    (
        "publish_space",
        ["--versions", "base=no-such-images", "--space_store", "local"],
        "no images dataset study/no-such-images",
    ),
    ("publish_space", ["--versions", "base={prompts}", "--space_store", "local"], "no attributes made by classify"),
    ("publish_space", ["--versions", "base={images},base={images}"], "the label 'base' is given twice"),
    ("publish_space", ["--versions", "base=bad name!"], "versions[base]='bad name!': malformed repo id"),
    ("publish_space", ["--versions", "base={images}", "--methods", "a/b/c"], "methods='a/b/c': malformed repo id"),
    (
        "publish_space",
        ["--versions", "base={images}", "--methods", "no-such-methods", "--space_store", "local"],
        "no methods dataset study/no-such-methods",
    ),
    (
        "publish_space",
        ["--versions", "base={images}", "--methods", "{bias}", "--space_store", "local"],
        "is a dataset of bias; a dataset of methods",
    ),
    # The training script.
    ("align_distribution", ["--target", "female=0.9"], "target='female=0.9': the shares must sum to 1, not 0.9"),
    ("align_distribution", ["--classifier", "fairface"], "classifier='fairface' needs classifier_model"),
    ("align_distribution", ["--languages", "xx"], "languages: xx not in the prompts dataset"),
    ("align_distribution", ["--professions", "astronaut"], "professions: 'astronaut' not in the prompts dataset"),
    ("align_distribution", ["--train_unet", "false"], "train_unet=false without train_text_encoder: nothing to train"),
    ("train", ["--dataset_name", "{train}", "--mixed_precision", "fp8"], "mixed_precision='fp8'"),
    ("train", ["--dataset_name", "{train}", "--max_train_steps", "-1"], "max_train_steps=-1"),
    ("train", ["--dataset_name", "{train_name}", "--dataset_revision", "nope"], "'nope'"),
    ("train", ["--dataset_name", "{prompts}"], "dataset_name"),
    ("train", ["--dataset_name", "{train}", "--resolution", "0"], "resolution=0"),
    ("train", ["--dataset_name", "{train}", "--learnig_rate", "1"], "did you mean --learning_rate?"),
    ("train", ["--dataset_name", "{train}", "--dataset_config_name", "xx"], "xx"),
    ("train", ["--dataset_name", "{train}", "--pretrained_model_name_or_path", "{tmp}/nowhere"], "nowhere"),
    # The runner.
    ("run", ["{tmp}/missing.yaml"], "missing.yaml"),
    ("run", ["{tmp}/empty.yaml"], "empty.yaml': no stages to run"),
    ("run", ["{tmp}/recipe.yaml", "--dry_run", "--seconds_per_image", "nan"], "--seconds_per_image=nan: a number"),
    ("run", ["{tmp}/recipe.yaml", "--bogus"], "--bogus"),
    ("run", ["{tmp}/recipe.yaml", "--set", "nostep.professions=[nurse]"], "nostep"),
    ("run", ["{tmp}/recipe.yaml", "--set", "generate_prompts.professions"], "STEP.KEY=VALUE"),
    ("run", ["{tmp}/recipe.yaml", "--set", "generate_prompts.professions=[nurse"], "the value is not YAML"),
    ("run", ["{tmp}/broken.yaml"], "broken.yaml', line 4, column 1: YAML syntax error"),
    ("run", ["{tmp}/string_list.yaml"], "professions"),
    ("run", ["{tmp}/unknown_stage.yaml"], "make_coffee"),
]


@pytest.fixture(scope="module")
def study(tiny_study: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The session study with images, attributes, bias results and a training set; and bad files."""
    common = {"store_root": tiny_study["store_root"], "namespace": "study"}
    fairface = build_tiny_model.run(build_tiny_model.Arguments(**common, kind="fairface"))
    images = generate_images.run(image_arguments(tiny_study, output_repo="battery-images", languages=["en"]))
    attributes = classify.run(
        classify.Arguments(**common, input=str(images), detector="none", classifier_model=str(fairface))
    )
    bias = evaluate_bias.run(evaluate_bias.Arguments(**common, input=str(attributes), rounds=10))
    custom = generate_prompts.run(
        generate_prompts.Arguments(**common, professions=["zeppelin pilot", "nurse"], output_repo="battery-custom")
    )
    train = collect_datasets.run(
        collect_datasets.Arguments(
            **common, prompts=tiny_study["prompts"], images=str(images), output_repo="battery-train"
        )
    )
    tmp = tmp_path_factory.mktemp("battery")
    (tmp / "a_file").write_text("not a folder")
    (tmp / "nowhere").mkdir()  # exists, holds nothing a stage can read
    (tmp / "recipe.yaml").write_text("stages:\n  - stage: generate_prompts\n    professions: [nurse]\n")
    (tmp / "broken.yaml").write_text("stages:\n  - stage: generate_prompts\n    professions: [nurse\n")
    (tmp / "string_list.yaml").write_text("stages:\n  - stage: generate_prompts\n    professions: nurse\n")
    (tmp / "empty.yaml").write_text("namespace: study\nstages: []\n")
    (tmp / "unknown_stage.yaml").write_text("stages:\n  - stage: make_coffee\n")
    values = {
        "prompts": tiny_study["prompts"],
        "model": tiny_study["model"],
        "images": str(images),
        "attributes": str(attributes),
        "bias": str(bias),
        "train": str(train),
        "custom": str(custom),
        "train_name": train.repo_id,
        "tmp": str(tmp),
        "root": tiny_study["store_root"],
    }
    return values


def call(command: str, argv: list[str]) -> int:
    """Runs a command line in this process; returns its exit code."""
    if command == "run":
        from pipelines import run

        main = run.main
    elif command == "train":
        main = importlib.import_module("training.train_text_to_image").main
    else:
        from pipelines.run import STAGES

        main = importlib.import_module(STAGES[command]).STAGE.main
    try:
        main(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1
    return 0


def store_files(root: str) -> dict[str, int]:
    """Every file under the store (locks aside) with its size: what a failed run must not change."""
    return {
        str(path.relative_to(root)): path.stat().st_size
        for path in Path(root).rglob("*")
        if path.is_file() and not path.name.endswith(".lock")
    }


@pytest.mark.parametrize(("command", "argv", "fragment"), CASES, ids=[f"{c}:{' '.join(a)}" for c, a, _ in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(
    study: dict,
    command: str,
    argv: list[str],
    fragment: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    argv = [part.format(**study) for part in argv]
    defaults = {"--store_root": study["root"], "--namespace": "study"}
    if command == "train":
        defaults |= {"--pretrained_model_name_or_path": study["model"], "--resolution": "64"}
    if command == "align_distribution":
        defaults |= {"--pretrained_model_name_or_path": study["model"], "--prompts": study["prompts"]}
    for flag, value in defaults.items():
        if flag not in argv:
            argv += [flag, value]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = store_files(study["root"])
    code = call(command, argv)
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2, err[-3000:]
    assert len(lines) == 1, err[-3000:]
    assert fragment in lines[0], lines[0]
    assert lines[0].startswith(f"{'train_text_to_image' if command == 'train' else command}: error: "), lines[0]
    assert store_files(study["root"]) == before


def test_the_battery_covers_every_stage_the_training_script_and_the_runner() -> None:
    from pipelines.run import STAGES

    covered = {"train_text_to_image" if command == "train" else command for command, _, _ in CASES}
    assert covered == set(STAGES) | {"run"}
    assert len(CASES) >= 40


def blob_of(repo: Path, pattern: str) -> Path:
    """The blob behind the first file of the repo's main revision matching `pattern`, made writable."""
    main = repo / "snapshots" / (repo / "refs" / "main").read_text().strip()
    blob = sorted(main.glob(pattern))[0].resolve()
    blob.chmod(0o644)
    return blob


DAMAGES = [
    # (the repo, its damaged file: history.json or a file of its main revision, the command that reads it,
    # its arguments, what the one line says)
    ("datasets--study--prompts", "history.json", "generate_prompts", ["--professions", "nurse", "--force"],
     "history.json is not a list of revisions"),
    ("datasets--study--battery-images", "data/*/*.parquet", "classify",
     ["--input", "battery-images", "--detector", "none", "--force"], "cannot be read as parquet"),
    ("datasets--study--prompts", "data/en/*.parquet", "generate_images", ["--output_repo", "damaged"],
     "data/en/train-00000.parquet cannot be read as parquet"),
    ("models--study--tiny-altdiffusion", "model_index.json", "generate_images", ["--output_repo", "damaged"],
     "model_index.json is not a JSON object"),
    # A card that is not UTF-8 (written as latin-1, overwritten with bytes): a dataset's, a model's.
    ("datasets--study--battery-images-attributes", "README.md", "evaluate_bias", ["--input",
     "battery-images-attributes", "--rounds", "10", "--force"],
     "the store is damaged: datasets--study--battery-images-attributes/snapshots/"),
    ("models--study--tiny-altdiffusion", "README.md", "check_world", ["--base", "battery-images-attributes"],
     "the store is damaged: models--study--tiny-altdiffusion/snapshots/"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("repo", "damaged", "command", "argv", "fragment"), DAMAGES, ids=[f"{d[0]}/{d[1]}" for d in DAMAGES]
)
def test_a_damaged_store_file_is_one_line_naming_it(
    study: dict, repo: str, damaged: str, command: str, argv: list[str], fragment: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """A file of the store that was edited, cut short or overwritten (history, a parquet shard, a model's
    index) is said to be damaged, in one line and exit 2, never a traceback."""
    import shutil

    root = tmp_path / "hub"
    shutil.copytree(study["root"], root, symlinks=True, ignore=shutil.ignore_patterns(".work", "*.lock"))
    target = root / repo / damaged if damaged == "history.json" else blob_of(root / repo, damaged)
    if damaged == "README.md":
        target.write_bytes(b"---\nlicense: mit\ntags: [caf\xe9]\n---\n# caf\xe9\n")  # latin-1
    else:
        target.write_text("{not what it should be")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = call(command, [*argv, "--store_root", str(root), "--namespace", "study"])
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and fragment in lines[0], lines[-3:]


@contextlib.contextmanager
def as_ordinary_user() -> Iterator[None]:
    """The file system's permissions as they bind an ordinary user. Root reads and writes whatever they
    say, so as root this thread drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from its effective
    capabilities (capset(2)) for the duration; they stay permitted and come back on the way out."""
    if os.geteuid() != 0:
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this thread
    data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable: low words, then high words
    if libc.capget(header, data) != 0:
        pytest.skip("capget(2) is refused here: root cannot be made to see permissions")
    saved = list(data)
    data[0] &= ~((1 << 1) | (1 << 2))  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
    if libc.capset(header, data) != 0:
        pytest.skip("capset(2) is refused here: root cannot be made to see permissions")
    try:
        yield
    finally:
        data[:] = saved
        libc.capset(header, data)


def chmod_tree(root: Path, mode: int, files: int | None = None) -> None:
    """Sets the mode of a folder and every folder under it (and of its files, with `files`)."""
    for path in sorted(root.rglob("*"), reverse=True):
        if path.is_dir() and not path.is_symlink():
            path.chmod(mode)
        elif files is not None and path.is_file() and not path.is_symlink():
            path.chmod(files)
    root.chmod(mode)


UNREADABLE = [
    # (how the store root is: unreadable (000) or read-only (555, every folder), the command, its
    # arguments, what the one line says)
    ("unreadable", "generate_prompts", ["--professions", "nurse"],
     "cannot be read: datasets--study--prompts/refs/main: Permission denied"),
    ("unreadable", "classify", ["--input", "battery-images", "--detector", "none"],
     "cannot be read: datasets--study--battery-images/refs/main: Permission denied"),
    ("unreadable", "gc", [], "Permission denied"),
    ("read-only", "classify", ["--input", "battery-images", "--detector", "none", "--force"],
     ".work' (Permission denied): a run keeps its work folder"),
    ("read-only", "generate_prompts", ["--professions", "nurse", "--force"], "Permission denied"),
    ("read-only", "gc", [], "is not writable (Permission denied): cannot lock datasets--study--"),
    ("unreadable-inside", "classify", ["--input", "battery-images", "--detector", "none"],
     "cannot be read: datasets--study--battery-images/refs/main: Permission denied"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("how", "command", "argv", "fragment"), UNREADABLE, ids=[f"{case[0]}:{case[1]}" for case in UNREADABLE]
)
def test_an_unreadable_or_read_only_store_root_is_one_line(
    study: dict, how: str, command: str, argv: list[str], fragment: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """A store root the user cannot read, or cannot write (a read-only mount, another user's store):
    one line saying which and why, exit 2, nothing written; a ref that cannot be read is not called
    damaged."""
    import shutil

    root = tmp_path / "hub"
    shutil.copytree(study["root"], root, symlinks=True, ignore=shutil.ignore_patterns(".work", "*.lock"))
    before = store_files(str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if command == "gc":
        from pipelines.artifacts.store import main as store_main

        def main(argv: list[str]) -> None:
            store_main(["gc", *argv])
    else:
        main = importlib.import_module(f"pipelines.{command}").STAGE.main
    if how == "unreadable":
        chmod_tree(root, 0o755)
        root.chmod(0o000)
    elif how == "unreadable-inside":  # the root can be listed, a repo's folders cannot
        chmod_tree(root / "datasets--study--battery-images", 0o000)
    else:
        chmod_tree(root, 0o555)
    try:
        with as_ordinary_user():
            try:
                main([*argv, "--store_root", str(root)] + ([] if command == "gc" else ["--namespace", "study"]))
                code = 0
            except SystemExit as exit_:
                code = exit_.code
    finally:
        chmod_tree(root, 0o755)
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err[-3000:]
    assert fragment in lines[0] and "damaged" not in lines[0], lines[0]
    assert lines[0].startswith(f"{'store gc' if command == 'gc' else command}: error: "), lines[0]
    assert store_files(str(root)) == before


@pytest.mark.parametrize("what", ["folder", "file", "folder inside"])
def test_an_unreadable_magbig_source_is_one_line_naming_it(
    what: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """MAGBIG's files in a folder the user cannot read (or one file of them): one line naming it."""
    source = tmp_path / "MAGBIG"
    (source / "indirect").mkdir(parents=True)
    for folder, name in ((source, "occ_english.csv"), (source / "indirect", "occ_english.csv")):
        (folder / name).write_text("name,prompt\nnurse,a photo of a nurse\n", encoding="utf-8")
    denied = {"folder": source, "file": source / "occ_english.csv", "folder inside": source / "indirect"}[what]
    denied.chmod(0o000)
    try:
        with as_ordinary_user():
            with pytest.raises(SystemExit) as exited:
                importlib.import_module("pipelines.import_magbig").STAGE.main(
                    ["--store_root", str(tmp_path / "hub"), "--source", str(source), "--languages", "en"]
                )
    finally:
        denied.chmod(0o755)
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if line.strip()]
    assert exited.value.code == 2 and len(lines) == 1, lines[-3:]
    assert lines[0].startswith("import_magbig: error: ") and str(denied) in lines[0], lines[0]
    assert "Permission denied" in lines[0], lines[0]
    assert not (tmp_path / "hub").exists() or not any((tmp_path / "hub").glob("datasets--*"))


def test_a_hub_that_cannot_be_reached_is_one_line_naming_why() -> None:
    """Offline, not in the cache, or no network: said as such (a cache miss is not an unknown repo)."""
    import httpx2
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    from pipelines.artifacts.store import HubStore
    from pipelines.errors import StoreError

    store = HubStore(api=object(), download=lambda *a, **k: None)
    for error, fragment in (
        (OfflineModeIsEnabled("offline mode is enabled"), "cannot reach the Hub for x: HF_HUB_OFFLINE is set"),
        (LocalEntryNotFoundError("no cache"), "x is not in the local Hugging Face cache"),
        (httpx2.ConnectError("Name or service not known"), "cannot get x from the Hub: Name or service not known"),
        (ConnectionResetError(104, "Connection reset by peer"), "cannot get x from the Hub"),
    ):
        with pytest.raises(StoreError, match=fragment):
            with store._errors("x"):
                raise error
