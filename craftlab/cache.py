"""Where craftlab keeps what it builds: ``$CRAFTLAB_HOME`` or ``~/.cache/craftlab``; a file lock for work that
concurrent processes sharing that folder must do once (a dataset download)."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path


def home() -> Path:
    """The craftlab cache root (created on demand)."""
    root = Path(os.environ.get("CRAFTLAB_HOME") or Path.home() / ".cache" / "craftlab").expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def subdir(name: str) -> Path:
    """A sub-folder of the cache root, e.g. ``zoo``, ``data``, ``runs``."""
    path = home() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


class LockTimeout(TimeoutError):
    """Another process held a :func:`file_lock` for longer than the timeout (the message names the lock file)."""


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, timeout: float = 1800.0, poll: float = 0.1) -> Iterator[None]:
    """Hold an exclusive lock on the file `path` (created if missing) inside the block: between processes and
    machines that see the same folder (``flock``; on NFS the client maps it to a POSIX lock), released when the
    block ends or the process dies. Waits at most `timeout` seconds, then raises :class:`LockTimeout` naming the
    file and the process that holds it. Without ``fcntl`` (Windows) the block runs unlocked.

    Example::

        >>> import tempfile, pathlib
        >>> with file_lock(pathlib.Path(tempfile.mkdtemp()) / "x.lock"):
        ...     pass
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = path.read_text(errors="replace").strip() or "unknown"
                    raise LockTimeout(f"waited {timeout:g} s for the lock {str(path)!r} (held by {holder}); "
                                      "if no such process runs any more, delete the file") from None
                time.sleep(poll)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
