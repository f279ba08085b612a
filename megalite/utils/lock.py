"""One writer per folder: an exclusive lock file, held for a run's life.

The lock is a POSIX record lock (``fcntl.lockf``) on ``<folder>/.megalite.lock``, whose text
names the holder (host, pid, start time). The kernel drops the lock when its process dies,
however it dies, and forked children (data-loader workers) do not inherit it, so a process
restarted after a crash (torchrun --max-restarts), or a job requeued on another node, takes the
folder over; the file its predecessor left behind is reported as a stale lock. (On a shared
filesystem whose locks span machines, NFSv4, Lustre and GPFS among them, a free lock means its
holder is gone wherever it ran.) (A POSIX lock also drops when its
process closes any other descriptor of the file: only this module opens it.)
"""

import errno
import fcntl
import json
import os
import socket
import sys
import time
from typing import Dict, Optional

from megalite.errors import MegaliteError
from megalite.utils.atomic import writing

LOCK_NAME = ".megalite.lock"


class FolderLock:
    def __init__(self, folder: str, flag: str):
        """Take the lock on ``folder`` (created if missing) or raise a MegaliteError naming
        ``flag`` and the holder."""
        self.path = os.path.join(folder, LOCK_NAME)
        with writing(folder):
            os.makedirs(folder, exist_ok=True)
        while True:
            with writing(self.path):
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):  # a filesystem without locks
                    print(f"warning: cannot lock {self.path} ({e.strerror}); nothing stops a second run from "
                          f"writing into {folder}", file=sys.stderr, flush=True)
                    os.close(fd)
                    self.fd = None
                    return
                holder = _holder(_read(fd))
                os.close(fd)
                raise MegaliteError(f"{flag} {folder} is in use by another run ({holder}); wait for it to end "
                                    f"or choose another {flag}") from None
            if _same_file(fd, self.path):
                break
            os.close(fd)  # its holder removed it as we opened it: try the new one
        self.fd: Optional[int] = fd
        left = _read(fd)
        here = socket.gethostname()
        if left and (left.get("pid"), left.get("host")) != (os.getpid(), here):
            elsewhere = "" if left.get("host") == here else (
                "; if that run is still going, this filesystem does not share locks between machines: stop one")
            print(f"warning: {self.path}: taking over the stale lock of pid {left.get('pid')} on {left.get('host')} "
                  f"(no longer running{elsewhere})", file=sys.stderr, flush=True)
        text = json.dumps({"host": here, "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")})
        with writing(self.path):
            os.ftruncate(fd, 0)
            os.pwrite(fd, text.encode() + b"\n", 0)
            os.fsync(fd)

    def release(self, remove: bool = True) -> None:
        """Give the folder up (the file goes first, so nobody locks a file about to vanish)."""
        if self.fd is None:
            return
        if remove and _same_file(self.fd, self.path):
            os.remove(self.path)
        os.close(self.fd)  # closing drops the lock
        self.fd = None


def _read(fd: int) -> Optional[Dict]:
    """The holder a lock file names (None when empty or unreadable); read through ``fd``, as
    closing any other descriptor of the file would drop this process's lock."""
    data = os.pread(fd, 4096, 0)
    try:
        out = json.loads(data)
    except ValueError:
        return None
    return out if isinstance(out, dict) else None


def _holder(info: Optional[Dict]) -> str:
    if not info:
        return "holder unknown"
    return f"pid {info.get('pid')} on {info.get('host')}, since {info.get('since')}"


def _same_file(fd: int, path: str) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)
