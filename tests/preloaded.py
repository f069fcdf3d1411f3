"""`python SCRIPT ARGS` without paying for the imports each time.

A training launch spends ~6.5 of its ~10 s importing torch, diffusers, transformers, datasets and
accelerate; test_training.py launches the script about twenty times. Here a fork server (one per test
process, started on first use) imports those libraries once, and each launch is a child forked from it
that runs the script as `python SCRIPT ARGS` would: `runpy` as `__main__`, `sys.argv`, `sys.path[0]`
the script's folder, the caller's working folder and environment, its own stdout and stderr, the
interpreter's exit status (a traceback and 1 on an uncaught exception) and exit handlers. The server is
a fresh interpreter, not the test process: nothing a test imported or set (accelerate's state, logging
handlers, pytest's capture) reaches the script. A launch that needs an environment other than the
test process's (read by a library when it is imported) takes `conftest.run_python`, a fresh interpreter.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import runpy
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

# What the training script imports; a module that fails to import here is imported by the script itself.
PRELOAD = ["training.train_text_to_image", "training.models", "training.checkpoints"]

_context = multiprocessing.get_context("forkserver")
_context.set_forkserver_preload(PRELOAD)


def _launch(script: str, args: list[str], cwd: str, env: dict[str, str], out: str, err: str) -> None:
    """The child: becomes `python script *args` run from `cwd`, then exits as the interpreter would."""
    for fd, path in ((1, out), (2, err)):
        opened = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(opened, fd)
        os.close(opened)
    sys.stdout = open(1, "w", closefd=False, encoding="utf-8", errors="backslashreplace")  # noqa: SIM115
    sys.stderr = open(2, "w", closefd=False, encoding="utf-8", errors="backslashreplace")  # noqa: SIM115
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    sys.argv = [script, *args]
    sys.path[0] = str(Path(script).resolve().parent)
    code = 0
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as stop:  # what the interpreter does with sys.exit(code)
        if stop.code is None:
            code = 0
        elif isinstance(stop.code, int):
            code = stop.code
        else:
            print(stop.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_script(script: str, *args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    """Runs `python script *args` from `cwd`, in the test process's environment, in a child of the
    preloaded server; the result as `subprocess.run(..., capture_output=True, text=True)` gives it."""
    with tempfile.TemporaryDirectory(prefix="launch-") as folder:
        out, err = os.path.join(folder, "stdout"), os.path.join(folder, "stderr")
        child = _context.Process(target=_launch, args=(script, list(args), str(cwd), dict(os.environ), out, err))
        child.start()
        child.join(timeout)
        if child.exitcode is None:
            child.kill()
            child.join()
            raise subprocess.TimeoutExpired([sys.executable, script, *args], timeout)
        return subprocess.CompletedProcess(
            [sys.executable, script, *args],
            child.exitcode,
            Path(out).read_text(encoding="utf-8", errors="replace"),
            Path(err).read_text(encoding="utf-8", errors="replace"),
        )
