"""Work folders: where a stage builds its artifact before the store publishes it.

A stage run works in `<store root>/.work/<stage>/<fingerprint>/`, named by what it makes, so a run
that was killed is resumed by the next identical run from what it finished. Its main process holds
an exclusive lock on `<fingerprint>.lock` beside the folder for the whole run: a second identical
run waits for the first and then finds its result published, and `gc` never removes a folder a
live run holds. A run that published, reused or failed before making anything leaves neither folder
nor lock; `gc` removes a lock left without its folder, and (with `--work`) the folders of stopped runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import sys
from collections.abc import Iterator
from pathlib import Path


def work_folder(root: str | Path, stage: str, fingerprint: str) -> Path:
    return Path(root) / stage / fingerprint


@contextlib.contextmanager
def locked(folder: Path, tidy: bool = False) -> Iterator[None]:
    """Holds the folder's run lock; waits (saying so) while another run holds it. With `tidy`, on the
    way out an empty work folder is removed, and the lock with it when no folder is left: a run that
    published, reused or failed before making anything leaves nothing; resume state keeps its lock."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    lock_path = folder.with_name(folder.name + ".lock")
    with lock_path.open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another run of the same step to finish ({folder})", file=sys.stderr)
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if tidy:
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only when empty
                if not folder.exists():
                    lock_path.unlink(missing_ok=True)
            fcntl.flock(lock, fcntl.LOCK_UN)


def is_locked(folder: Path) -> bool:
    lock_path = folder.with_name(folder.name + ".lock")
    if not lock_path.is_file():
        return False
    with lock_path.open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(lock, fcntl.LOCK_UN)
    return False


def idle_work_folders(work_root: Path) -> list[Path]:
    """Work folders of runs that stopped (no live run holds their lock): resume state, or garbage."""
    return sorted(
        folder
        for stage in work_root.iterdir()
        if stage.is_dir()
        for folder in stage.iterdir()
        if folder.is_dir() and not is_locked(folder)
    )


def stale_locks(work_root: Path) -> list[Path]:
    """Lock files that no live run holds and whose work folder is gone: pure leftovers."""
    return sorted(
        lock
        for stage in work_root.iterdir()
        if stage.is_dir()
        for lock in stage.glob("*.lock")
        if not lock.with_suffix("").is_dir() and not is_locked(lock.with_suffix(""))
    )
