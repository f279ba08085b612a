"""Write-then-rename helpers so a crash never leaves a half-written file where a good one stood."""

import contextlib
import ctypes
import os
import shutil

from megalite.errors import MegaliteError


def temp_name(path: str) -> str:
    """A sibling name for ``path`` that no other process writes to."""
    return f"{path}.tmp-{os.getpid()}"


def fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_parent(path: str) -> None:
    with contextlib.suppress(OSError):  # directory fsync is unsupported on some filesystems
        fsync_path(os.path.dirname(os.path.abspath(path)))


def publish(tmp: str, final: str) -> None:
    """Flush ``tmp`` to disk and rename it over ``final`` in one atomic step."""
    fsync_path(tmp)
    os.replace(tmp, final)
    fsync_parent(final)


def remove_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


@contextlib.contextmanager
def writing(path: str, *temp_names: str):
    """OSErrors met writing ``path`` (or ``temp_names``, its temporary names) become one
    MegaliteError line naming it: a write call's error (a full disk) names no file, and one
    creating its folders names a parent. Errors naming other files are theirs and pass on."""
    try:
        yield
    except FileExistsError as e:  # os.makedirs: a file where a folder should be
        raise MegaliteError(f"cannot write {path}: {e.filename} is a file, not a folder") from None
    except OSError as e:
        if e.filename is not None and e.filename not in (path, *temp_names) and not _is_parent(e.filename, path):
            raise
        raise MegaliteError(f"cannot write {path}: {e.strerror or e}") from None


def _is_parent(folder, path: str) -> bool:
    return os.path.abspath(path).startswith(os.path.abspath(os.fsdecode(folder)) + os.sep)


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "wb"):
    """``with atomic_write(p) as f: ...`` writes ``p`` completely or not at all."""
    tmp = temp_name(path)
    try:
        with writing(path, tmp):
            with open(tmp, mode) as f:
                yield f
            publish(tmp, path)
    except BaseException:
        remove_quietly(tmp)
        raise


RENAME_EXCHANGE = 2  # linux/fs.h


def _exchange(a: str, b: str) -> bool:
    """Swap two paths in one atomic step (Linux renameat2); False where the system cannot."""
    rename = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if rename is None:
        return False
    at_cwd = -100
    if rename(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: this filesystem does not exchange
        return False
    raise OSError(err, os.strerror(err), a, None, b)


def _old_name(final: str) -> str:
    return final + ".megalite-old"


def replace_folder(tmp: str, final: str) -> None:
    """Put the complete folder ``tmp`` at ``final``, replacing what is there in one atomic step:
    a crash leaves either the old folder or the new one at ``final``. Filesystems that cannot
    swap two names get two renames, the old folder kept as ``final + '.megalite-old'`` in
    between; ``recover_folder`` puts it back."""
    if not os.path.lexists(final):
        os.rename(tmp, final)
    elif _exchange(tmp, final):
        shutil.rmtree(tmp)  # now the old folder
    else:
        old = _old_name(final)
        if os.path.lexists(old):
            shutil.rmtree(old)  # left by a replacement that got this far: ``final`` is complete
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old)
    fsync_parent(final)


def recover_folder(final: str) -> bool:
    """Undo a ``replace_folder`` cut short between its two renames; True when it did."""
    old = _old_name(final)
    if os.path.lexists(final) or not os.path.isdir(old):
        return False
    try:
        os.rename(old, final)
    except FileNotFoundError:  # another process (rank) recovered it first
        return False
    fsync_parent(final)
    return True
