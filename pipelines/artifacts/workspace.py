"""Work folders: where a stage builds its artifact before the store publishes it.

A stage run works in `<store root>/.work/<stage>/<fingerprint>/`, named by what it makes, so a run
that was killed is resumed by the next identical run from what it finished. Its main process holds
an exclusive lock on `<fingerprint>.lock` beside the folder for the whole run: a second identical
run waits for the first and then finds its result published, and `gc` never removes a folder a
live run holds. A run that published, reused or failed before making anything leaves neither folder
nor lock; `gc` removes a lock left without its folder, and (with `--work`) the folders of stopped runs.
A stage that builds in one go works in `.work/<stage>/.build-<pid>-…`, which `gc` removes once its
process is gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from pipelines.errors import StoreError


def work_folder(root: str | Path, stage: str, fingerprint: str) -> Path:
    return Path(root) / stage / fingerprint


def _refused(path: Path, err: OSError) -> StoreError:
    """A work folder or lock the file system refuses (a read-only or unreadable store root): one line."""
    return StoreError(
        f"cannot write {str(err.filename or path)!r} ({err.strerror or err}): a run keeps its work folder and "
        "lock there (under the store root's .work, or --output_dir), so it must be writable"
    )


def _make_folder(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _refused(path, err) from None


def _open_lock(path: Path) -> TextIO:
    try:
        return path.open("a")
    except FileNotFoundError:
        raise  # its folder went (a concurrent `gc`): the caller makes it again
    except OSError as err:
        raise _refused(path, err) from None


@contextlib.contextmanager
def locked(folder: Path, tidy: bool = False, keep_lock: bool = True) -> Iterator[None]:
    """Holds the folder's run lock; waits (saying so) while another run holds it. With `tidy`, on the
    way out an empty work folder is removed, and the lock with it when no folder is left: a run that
    published, reused or failed before making anything leaves nothing; resume state keeps its lock.
    Without `keep_lock` the lock goes in any case: a folder the user named (`--output_dir`) is not
    under the store's work root, where `gc` would find its lock."""
    lock_path = folder.with_name(folder.name + ".lock")
    with _acquire(folder, lock_path) as lock:
        try:
            yield
        finally:
            if tidy:
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only when empty
                if not folder.exists() or not keep_lock:
                    lock_path.unlink(missing_ok=True)
            fcntl.flock(lock, fcntl.LOCK_UN)


def _acquire(folder: Path, lock_path: Path) -> TextIO:
    """The lock file at `lock_path`, opened and held. A run that held it before may have removed the
    file on its way out (`tidy`): a lock held on a file no longer at that path excludes nobody (a
    newcomer makes a new file), so it is taken again on the file that is there."""
    missing = 0
    said = False
    while True:
        _make_folder(folder.parent)
        try:
            lock = _open_lock(lock_path)
        except FileNotFoundError:
            missing += 1
            if missing == 3:  # `gc` removed the empty stage folder between the two calls, thrice
                raise
            continue
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not said:
                print(f"waiting for another run of the same step to finish ({folder})", file=sys.stderr)
                said = True
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            held = os.fstat(lock.fileno()).st_ino == os.stat(lock_path).st_ino
        except FileNotFoundError:
            held = False
        if held:
            return lock
        lock.close()


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
        if folder.is_dir() and not folder.name.startswith(BUILD_PREFIX) and not is_locked(folder)
    )


BUILD_PREFIX = ".build-"  # `.work/<stage>/.build-<pid>-<host>-<random>`: a stage's folder for one build
# A process id means something on its own machine only: a store shared between machines (or containers
# with their own process ids) judges only the builds of the machine it runs on. A hash: no host name.
HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def build_folder(work_root: Path, stage: str) -> Path:
    """A fresh folder for a stage that builds its artifact in one go (no resume state): under the
    work root, not the system's temporary folder, so that `gc` finds it if the process is killed."""
    import tempfile

    parent = Path(work_root) / stage
    for attempt in range(3):
        _make_folder(parent)
        try:
            return Path(tempfile.mkdtemp(prefix=f"{BUILD_PREFIX}{os.getpid()}-{HOST}-", dir=parent))
        except FileNotFoundError:
            if attempt == 2:  # `gc` removed the empty stage folder between the two calls, thrice
                raise


def dead_builds(work_root: Path) -> list[Path]:
    """Build folders whose process is gone, and stage folders left empty: pure leftovers."""
    found = []
    for stage in sorted(p for p in work_root.iterdir() if p.is_dir()):
        for build in sorted(stage.glob(BUILD_PREFIX + "*")):
            pid, host, *_ = build.name[len(BUILD_PREFIX) :].split("-") + ["", ""]
            if host == HOST and not (pid.isdigit() and pid_alive(int(pid))):
                found.append(build)
        if not any(stage.iterdir()):
            found.append(stage)
    return found


def pid_alive(pid: int) -> bool:
    """Whether a process of this machine still runs (what names a leftover: its owner is gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def stale_locks(work_root: Path) -> list[Path]:
    """Lock files that no live run holds and whose work folder is gone: pure leftovers."""
    return sorted(
        lock
        for stage in work_root.iterdir()
        if stage.is_dir()
        for lock in stage.glob("*.lock")
        if not lock.with_suffix("").is_dir() and not is_locked(lock.with_suffix(""))
    )
