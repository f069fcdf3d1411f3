"""Checkpoints every fine-tune writes and resumes from, whole or not at all.

`checkpoint-<step>/` holds accelerate's state (optimiser, schedule, random states), the trained models
in diffusers' format (or the LoRA adapters), the EMA weights and `trainer_state.json`, written last
with the name and size of every other file. A checkpoint is written aside and renamed into place
once whole; `resume` refuses one that could not continue the run exactly (cut short, written by
another number of processes or by a run of other inputs or settings, without the EMA the run keeps,
random states this machine cannot restore), where accelerate would only log it or go on as another run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipelines.errors import ConfigError
from pipelines.modeling.diffusion import LORA_WEIGHTS

EMA_WEIGHTS = "ema_unet.safetensors"  # in a checkpoint: EMA weights as safetensors, never a pickle


# Written last, with the name and size of every other file: a checkpoint without it, or whose files
# are not those it lists, was cut short (killed while saving, copied in part, truncated on disk).
CHECKPOINT_DONE = "trainer_state.json"


PARTIAL_CHECKPOINTS = ".checkpoint-*"  # checkpoints being written aside (`save_checkpoint`)


# What a resume may change: how long the run goes on (max_train_steps, or the epochs that set it). The
# loss history keeps the learning rate each step had. Anything else fingerprinted would make a model
# whose card names settings or inputs that only some of its steps were trained with.
RESUMABLE_SETTINGS = ("max_train_steps", "num_train_epochs")


def run_settings(run: Any) -> dict[str, Any]:
    """What a checkpoint records of its run, and a resume must share: the pinned inputs (base model,
    dataset or prompts, by revision) and every fingerprinted setting but the run's length."""
    parameters = {k: v for k, v in run.parameters.items() if k not in RESUMABLE_SETTINGS}
    return json.loads(json.dumps({"inputs": run.inputs, "parameters": parameters}))  # as the file holds them


def argument_defaults(run: Any) -> dict[str, Any]:
    """Each fingerprinted setting's default, as `run_settings` holds values (`settings_problem` reads them)."""
    from pipelines.harness.stage import plain_value

    defaults = {}
    for field in dataclasses.fields(run.args):
        if field.name not in run.parameters:
            continue
        if field.default is not dataclasses.MISSING:
            defaults[field.name] = plain_value(field.default)
        elif field.default_factory is not dataclasses.MISSING:
            defaults[field.name] = plain_value(field.default_factory())
    return json.loads(json.dumps(defaults))


def settings_problem(
    saved: dict[str, Any] | None, current: dict[str, Any], defaults: dict[str, Any] | None = None
) -> str | None:
    """The inputs and settings a checkpoint's run had that this one has not, or None where they match
    (or the checkpoint, written before they were recorded, does not say). A setting the checkpoint does
    not record (an argument added since it was written) matches where this run leaves it at its default
    (`defaults`): that run had the default's behaviour, as it had no other."""
    if saved is None:
        return None
    defaults = defaults or {}
    differ = []
    for part in ("inputs", "parameters"):
        was, now = saved.get(part, {}), current[part]
        for key in sorted(set(was) | set(now)):
            pair = was.get(key, "(unset)"), now.get(key, "(unset)")
            if part == "parameters" and key not in was and key in defaults and pair[1] == defaults[key]:
                continue
            if pair[0] != pair[1]:
                differ.append(f"{key} {pair[0]!r} there, {pair[1]!r} here")
    if not differ:
        return None
    shown = "; ".join(differ[:3]) + (f"; and {len(differ) - 3} more" if len(differ) > 3 else "")
    return f"written by a run with other inputs or settings ({shown})"


def checkpoint_files(folder: Path) -> dict[str, int]:
    """Every file of a checkpoint but its marker: path relative to it, and size in bytes."""
    files = (p for p in sorted(folder.rglob("*")) if p.is_file())
    return {p.relative_to(folder).as_posix(): p.stat().st_size for p in files if p != folder / CHECKPOINT_DONE}


def cut_short(folder: Path) -> str | None:
    """Why a checkpoint is not whole (no marker, an unreadable one, or a file it lists missing or of
    another size), in words; None when it is."""
    marker = folder / CHECKPOINT_DONE
    if not marker.is_file():
        return f"cut short (no {CHECKPOINT_DONE})"
    try:
        listed = json.loads(marker.read_text())["files"]
        if not isinstance(listed, dict) or not all(isinstance(size, int) for size in listed.values()):
            raise ValueError
    except (OSError, ValueError, KeyError, TypeError):
        return f"cut short ({CHECKPOINT_DONE} unreadable or without the list of the checkpoint's files)"
    damaged = []
    for name, size in listed.items():
        path = folder / name
        if not path.is_file():
            damaged.append(f"{name} missing")
        elif path.stat().st_size != size:
            damaged.append(f"{name} is {path.stat().st_size} bytes, not {size}")
    if damaged:
        more = f" and {len(damaged) - 3} more" if len(damaged) > 3 else ""
        return f"cut short ({', '.join(damaged[:3])}{more})"
    return None


def checkpoints(output_dir: Path, complete: bool = True) -> list[Path]:
    """The checkpoints in `output_dir`, oldest first: only whole ones (`cut_short`), or (`complete=False`) all."""
    found = [p for p in output_dir.glob("checkpoint-*") if p.name.split("-")[1].isdigit()]
    found = [p for p in found if not complete or cut_short(p) is None]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def remove_partial_checkpoints(output_dir: Path, accelerator: Any) -> None:
    """Removes what saves killed in an earlier run left aside (main process only): never resumed,
    never published, and otherwise only ever removed by a save of the same step."""
    for partial in sorted(output_dir.glob(PARTIAL_CHECKPOINTS)):
        shutil.rmtree(partial)
        accelerator.print(f"removed {partial.name}: a checkpoint an earlier run was killed while saving")


def save_checkpoint(
    accelerator: Any,
    output_dir: Path,
    step: int,
    limit: int | None,
    models: dict[str, Any],
    ema: Any,
    history: list,
    lora: Callable[[Path], None] | None = None,
    settings: dict[str, Any] | None = None,
) -> None:
    """accelerate's state, the models in diffusers' format (or the LoRA adapters, written by `lora`),
    the loss so far and the run's inputs and settings (`run_settings`), as checkpoint-<step>.

    Written aside (`.checkpoint-<step>.partial`) and renamed into place once whole, so a run killed
    while saving leaves the previous checkpoints as they were and never a checkpoint cut short; the
    oldest beyond the limit are pruned only then (main process only)."""
    folder = output_dir / f"checkpoint-{step}"
    partial = output_dir / f".checkpoint-{step}.partial"
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)  # what a killed save left
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()  # every process's random states are on disk before the file list
    if accelerator.is_main_process:
        for name, model in models.items():
            if model is not None:
                accelerator.unwrap_model(model).save_pretrained(partial / name)
        if lora is not None:
            lora(partial)
        if ema is not None:
            from safetensors.torch import save_file

            save_file(
                {f"{i}": p.detach().cpu().contiguous() for i, p in enumerate(ema.shadow_params)}, partial / EMA_WEIGHTS
            )
            (partial / "ema_state.json").write_text(
                json.dumps({"optimization_step": ema.optimization_step, "decay": ema.decay})
            )
        state = {"global_step": step, "log_history": history}
        if settings is not None:
            state["run"] = settings
        if accelerator.device.type == "cpu":
            state["cpu_threads"] = torch.get_num_threads()  # a resume uses it: the bytes depend on it
        state["files"] = checkpoint_files(partial)
        (partial / CHECKPOINT_DONE).write_text(json.dumps(state, indent=1))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if folder.exists():
            shutil.rmtree(folder)  # a rerun's checkpoint of the same step
        os.rename(partial, folder)
        if limit is not None:
            existing = checkpoints(output_dir, complete=False)
            for old in existing[: max(0, len(existing) - limit)]:
                shutil.rmtree(old)
        held = (
            f"LoRA adapters: {folder.name}/{LORA_WEIGHTS}"
            if lora
            else f"UNet in diffusers' format: {folder.name}/unet"
        )
        accelerator.print(f"saved checkpoint {folder.name} ({held})")
    accelerator.wait_for_everyone()


def load_ema(folder: Path, ema: Any) -> None:
    from safetensors.torch import load_file

    weights = load_file(folder / EMA_WEIGHTS)
    for index, parameter in enumerate(ema.shadow_params):
        parameter.data.copy_(weights[f"{index}"].to(parameter.device, parameter.dtype))
    ema.optimization_step = json.loads((folder / "ema_state.json").read_text())["optimization_step"]


def resume(
    output_dir: Path,
    resume_from: str | None,
    accelerator: Any,
    ema_unet: Any,
    settings: dict[str, Any] | None = None,
    defaults: dict[str, Any] | None = None,
) -> tuple[int, list]:
    """The step and loss history to continue from (`--resume_from_checkpoint`), state loaded; a
    checkpoint of a run with other inputs or `settings` (`run_settings`; `defaults` for the settings it
    does not record, `argument_defaults`) is refused."""
    if not resume_from:
        return 0, []
    found = checkpoints(output_dir)
    latest = resume_from == "latest"
    if latest:
        for cut in sorted(set(checkpoints(output_dir, complete=False)) - set(found)):
            accelerator.print(f"skipping {cut.name}: {cut_short(cut)}")
    path = (found[-1] if found else None) if latest else Path(resume_from)
    if path is None:
        accelerator.print("no checkpoint to resume from: starting a new run")
        return 0, []
    check_checkpoint(
        path, accelerator.process_index, ema_unet is not None, accelerator.num_processes, settings, defaults
    )
    accelerator.print(f"resuming from {path}")
    accelerator.load_state(str(path))
    if ema_unet is not None:
        load_ema(path, ema_unet)
    history = json.loads((path / CHECKPOINT_DONE).read_text())["log_history"]
    return int(path.name.split("-")[1]), history


def check_checkpoint(
    path: Path,
    process_index: int,
    ema: bool,
    processes: int = 1,
    settings: dict[str, Any] | None = None,
    defaults: dict[str, Any] | None = None,
) -> None:
    """Refuses a checkpoint that cannot resume the run exactly: cut short (`cut_short`), written by
    another number of processes or by a run of other inputs or `settings` (`run_settings`), without
    the EMA weights the run keeps, or with random states that cannot be restored (accelerate would
    only log that and go on with other random numbers)."""
    problem = cut_short(path)
    if problem:
        raise ConfigError(f"resume_from_checkpoint={str(path)!r}: {problem}; resume from an earlier one or 'latest'")
    if settings is not None:
        problem = settings_problem(json.loads((path / CHECKPOINT_DONE).read_text()).get("run"), settings, defaults)
        if problem:
            raise ConfigError(
                f"resume_from_checkpoint={str(path)!r}: {problem}; resume with the same ones, or start a new "
                "run in another folder"
            )
    # Each process saves its random states (random_states_<index>.pkl). In another number of processes
    # a step's batch is another size and each process draws other noise, so accelerate would load
    # what it finds and go on as another run (from one process to two it fails on a missing file).
    written = len(list(path.glob("random_states_*.pkl")))
    if written and written != processes:
        raise ConfigError(
            f"resume_from_checkpoint={str(path)!r}: written by {written} process(es), this run has {processes}; "
            f"resume in {written} (each process's share of a batch and its random states are part of the run)"
        )
    if ema and not (path / EMA_WEIGHTS).is_file():
        raise ConfigError(
            f"resume_from_checkpoint={str(path)!r}: has no EMA weights ({EMA_WEIGHTS}); the run would restart "
            "its EMA from the current weights. Resume with the same --use_ema"
        )
    states = path / f"random_states_{process_index}.pkl"
    problem = random_states_problem(states)
    if problem:
        raise ConfigError(
            f"resume_from_checkpoint={str(path)!r}: its random states ({states.name}) cannot be restored "
            f"({problem}); a resume would not be the run it continues"
        )


def random_state_setters() -> dict[str, Callable[[Any], Any]]:
    """Each random state accelerate's `load_state` sets on this machine, by its key in the states file,
    with a setter that applies it as accelerate would but to a scratch generator: accelerate reads them
    in one try block, so one that fails leaves the rest unrestored and is only logged."""
    from accelerate import utils

    def device_setter(kind: str) -> Callable[[Any], None]:
        def apply(states: Any) -> None:  # as `torch.<kind>.set_rng_state_all`: state i on device i
            count = getattr(torch, kind).device_count()
            if len(states) > count:  # a generator of a device that is not there is made without complaint
                raise ValueError(f"states of {len(states)} {kind} device(s), this machine has {count}")
            for index, state in enumerate(states):
                torch.Generator(f"{kind}:{index}").set_state(state)

        return apply

    setters = {
        "random_state": lambda state: random.Random().setstate(state),
        "numpy_random_seed": lambda state: np.random.RandomState().set_state(state),
        "torch_manual_seed": lambda state: torch.Generator().set_state(state),
    }
    for kind in ("xpu", "mlu", "sdaa", "musa", "hpu", "neuron", "cuda"):  # accelerate's availability checks
        if getattr(utils, f"is_{kind}_available")():
            setters[f"torch_{kind}_manual_seed"] = device_setter(kind)
    if utils.is_torch_xla_available():
        setters["xm_seed"] = int  # `xm.set_rng_state` takes the seed, an integer
    return setters


def first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def random_states_problem(states: Path) -> str | None:
    """Why accelerate could not restore a random states file here, or None when it could."""
    from accelerate.utils import load as accelerate_load

    try:
        loaded = accelerate_load(states)  # accelerate's safe loader, as `load_state` reads it
    except Exception as err:  # noqa: BLE001 - any reason it cannot be read
        return f"unreadable: {first_line(err)}"
    if not isinstance(loaded, dict):
        return f"a {type(loaded).__name__}, not the states by name"
    for key, apply in random_state_setters().items():
        if key not in loaded:
            device = re.fullmatch(r"torch_(\w+)_manual_seed", key)
            return f"no {key}" + (f": saved without {device.group(1)}, this machine has it" if device else "")
        try:
            apply(loaded[key])
        except Exception as err:  # noqa: BLE001 - any reason the state does not apply
            return f"{key} does not apply: {first_line(err)}"
    return None


def resumed_threads(output_dir: Path, resume_from: str) -> int | None:
    """The thread count recorded in the checkpoint a resume will load, if it is complete and says."""
    found = checkpoints(output_dir) if resume_from == "latest" else [Path(resume_from)]
    try:
        return json.loads((found[-1] / CHECKPOINT_DONE).read_text()).get("cpu_threads") if found else None
    except (OSError, ValueError):
        return None  # resume() refuses it with a clear line
