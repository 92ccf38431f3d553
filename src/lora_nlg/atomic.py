"""Write files atomically: a failure never leaves a half-written file behind.

Paths are made absolute first (``a/sub/../../x`` is ``./x`` even while ``a/sub`` does not exist),
and a folder where a file is to go is an error before anything is written.
"""

import contextlib
import errno
import os
import tempfile
from typing import Dict


def check_writable(path) -> str:
    """The absolute path of a file to write; an error when a folder stands where it should go."""
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, "a folder, where a file is to be written", path)
    return path


@contextlib.contextmanager
def _temporary(path: str, mode: str, encoding: str):
    """(file, its temporary name) beside ``path``, flushed to disk at the end of the block; removed
    if the block, or anything after it in the caller's block, fails."""
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": encoding})) as f:
            yield f, tmp
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file open()'s permissions
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_write(path, mode="w", encoding="utf-8"):
    """Open a temporary file next to ``path``; rename it over ``path`` only if the block succeeds."""
    path = check_writable(path)
    with _temporary(path, mode, encoding) as (f, tmp):
        yield f
    os.replace(tmp, path)


def atomic_write_all(texts: Dict[str, str]) -> None:
    """Write several text files that belong together (a scorer's reference and hypothesis files):
    every path is checked and every file written to a temporary one first, then all are renamed; if
    any write fails, none is replaced."""
    paths = {check_writable(p): text for p, text in texts.items()}
    temps = []
    with contextlib.ExitStack() as stack:
        for path, text in paths.items():
            f, tmp = stack.enter_context(_temporary(path, "w", "utf-8"))
            f.write(text)
            temps.append((tmp, path))
    for tmp, path in temps:
        os.replace(tmp, path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
