"""One writer per folder: an exclusive lock held by a live process, in a file that names its holder.

The lock is the operating system's (``fcntl.lockf``, which NFS honours too): it ends with the
process, however the process ends, so a lock left by a killed run never blocks the next one; the
file still names the dead holder, and the next run says that it took the lock over.
"""

import datetime
import fcntl
import json
import os
import socket
from typing import Optional

from lora_nlg.errors import InputError

LOCK_FILE = ".lock"


class LockedError(InputError):
    """The folder is held by another live process; the message names it."""


class FolderLock:
    def __init__(self, folder: str):
        self.folder = folder
        self.path = os.path.join(folder, LOCK_FILE)
        self.fd: Optional[int] = None

    def acquire(self) -> Optional[dict]:
        """Take the lock, or raise LockedError naming its holder. Returns the description a dead
        holder left behind (its lock was taken over), or None."""
        os.makedirs(self.folder, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = describe(_read(fd))
            os.close(fd)
            raise LockedError(
                f"{self.folder} is in use by {holder} (lock file {self.path}): wait for that run to end, "
                f"stop it, or use another folder"
            ) from None
        previous = _read(fd)
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        os.fsync(fd)
        self.fd = fd
        return previous

    def release(self) -> None:
        """Empty the lock file (a clean end leaves no holder to take over) and let go."""
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            os.close(self.fd)
            self.fd = None


def _read(fd: int) -> Optional[dict]:
    data = os.pread(fd, 4096, 0)
    try:
        info = json.loads(data) if data.strip() else None
    except ValueError:
        return {"unreadable": data[:80].decode("utf-8", "replace")}
    return info if isinstance(info, dict) else None


def describe(info: Optional[dict]) -> str:
    """'pid N on HOST (started T)' for a lock file's description."""
    if not info:
        return "another process"
    return f"pid {info.get('pid', '?')} on {info.get('host', '?')} (started {info.get('started', '?')})"
