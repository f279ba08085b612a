"""Write-then-rename helpers so a crash never leaves a half-written file where a good one stood."""

import contextlib
import os


def temp_name(path: str) -> str:
    """A sibling name for ``path`` that no other process writes to."""
    return f"{path}.tmp-{os.getpid()}"


def fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(tmp: str, final: str) -> None:
    """Flush ``tmp`` to disk and rename it over ``final`` in one atomic step."""
    fsync_path(tmp)
    os.replace(tmp, final)
    with contextlib.suppress(OSError):  # directory fsync is unsupported on some filesystems
        fsync_path(os.path.dirname(os.path.abspath(final)))


def remove_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "wb"):
    """``with atomic_write(p) as f: ...`` writes ``p`` completely or not at all."""
    tmp = temp_name(path)
    try:
        with open(tmp, mode) as f:
            yield f
        publish(tmp, path)
    except BaseException:
        remove_quietly(tmp)
        raise
