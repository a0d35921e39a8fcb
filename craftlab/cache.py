"""The artifact store: where craftlab keeps what it builds (``$CRAFTLAB_HOME`` or ``~/.cache/craftlab``), and the
one way every artifact is named and written.

* :func:`home`, :func:`subdir` — the cache root and its folders (``runs``, ``supernets``, ``explore``, ...);
* :func:`atomic_write` / :func:`atomic_write_json` — the one atomic writer: a temp file beside the target, fsync,
  rename; readers never see half a file, a failed write leaves the old file;
* :func:`fingerprint` — the one content hash (bytes, text, JSON-able records, tensors and models);
  :func:`file_sha256` for a file's bytes;
* :func:`slug` / :func:`num` — the spelling of keys (folder-safe names, shortest exact numbers);
* :func:`file_lock` — work that processes sharing the folder must do once (a dataset download);
* :class:`Spec` — what a cached artifact is (``key``, ``record()``, ``label``) and :class:`Store` — a folder of
  one kind of artifact: ``Store("compose").get_json(spec, make)`` returns the stored record or makes and stores it.

Imports nothing heavy (torch only inside :func:`fingerprint`, when it is given tensors). Example::

    from craftlab import cache
    cache.atomic_write_json(cache.subdir("notes") / "a.json", {"accuracy": 0.97})
    cache.fingerprint({"model": "vit-tiny", "seed": 0})[:12]     # the same on every machine
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

__all__ = ["LockTimeout", "Spec", "Store", "atomic_write", "atomic_write_json", "file_lock", "file_sha256",
           "fingerprint", "home", "num", "read_json", "slug", "subdir"]


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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, content: bytes | str | Callable[[str], None]) -> Path:
    """Write `content` to `path` atomically: into a temp file beside it (bytes, text, or a function that writes the
    temp file's path, e.g. ``lambda tmp: save_file(tensors, tmp)``), flushed to disk, then renamed over `path`.
    The file gets ordinary permissions (0666 less the umask); the folder is created. Returns `path`.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.txt"
    >>> atomic_write(p, "hello").read_text()
    'hello'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if callable(content):
            os.close(fd)
            content(tmp)
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(content.encode() if isinstance(content, str) else content)
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; an artifact is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_json(path: str | os.PathLike, obj: Any, **dumps: Any) -> Path:
    """:func:`atomic_write` of ``json.dumps(obj, **dumps)``."""
    return atomic_write(path, json.dumps(obj, **dumps))


def read_json(path: str | os.PathLike) -> Any:
    """The JSON in `path`, or None when it is missing or damaged (a cache miss, never an error)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (what a checkpoint sidecar's ``weights_sha256`` records)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _tensors(obj: Any) -> list[tuple[str, Any]] | None:
    """(name, tensor) pairs of a module (its state dict) or of a mapping of tensors; None for anything else."""
    state = obj.state_dict() if hasattr(obj, "state_dict") and callable(obj.state_dict) else obj
    if isinstance(state, Mapping) and state and all(hasattr(v, "detach") for v in state.values()):
        return sorted(state.items())
    return None


def fingerprint(obj: Any, *, salt: str = "", skip: Callable[[str], bool] | None = None) -> str:
    """THE content hash of craftlab's keys (hex SHA-256).

    * bytes and text: their bytes (text as UTF-8);
    * a model or a mapping of tensors: every tensor in name order, as ``name|dtype|shape|`` and its raw bytes
      (`skip(name)` leaves a tensor out, e.g. a classifier head);
    * anything else: its canonical JSON (sorted keys; values JSON cannot hold are written with ``str``).

    `salt` is hashed first (a format version, an architecture name). Equal content gives equal fingerprints on any
    machine; the dtype and shape are part of a tensor's content.

    >>> fingerprint({"b": 1, "a": [0.5, None]}) == fingerprint({"a": [0.5, None], "b": 1})
    True
    >>> fingerprint("abc") == __import__("hashlib").sha256(b"abc").hexdigest()
    True
    """
    h = hashlib.sha256(salt.encode())
    if isinstance(obj, (bytes, bytearray, memoryview)):
        h.update(bytes(obj))
        return h.hexdigest()
    if isinstance(obj, str):
        h.update(obj.encode())
        return h.hexdigest()
    tensors = _tensors(obj)
    if tensors is None:
        h.update(json.dumps(obj, sort_keys=True, default=str).encode())
        return h.hexdigest()
    import torch

    for name, t in tensors:
        if skip is not None and skip(name):
            continue
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def num(x: float) -> str:
    """Shortest text that reads back as exactly `x` (``0.05``, ``1e-05``, ``0.5``, ``1``): numbers in keys.

    >>> num(0.05), num(1e-5), num(1.0)
    ('0.05', '1e-05', '1')
    """
    short = f"{x:g}"
    return short if float(short) == float(x) else repr(float(x))


def slug(text: str, keep: str = "._+-") -> str:
    """`text` made safe for a folder name (letters, digits and `keep`); a short hash keeps two texts that differ
    only in replaced characters (``imagefolder:/a/b`` vs ``imagefolder:/a_b``) apart.

    >>> slug("vit-tiny"), slug("imagefolder:/a/b")[:17]
    ('vit-tiny', 'imagefolder__a_b-')
    """
    safe = re.sub(f"[^A-Za-z0-9{re.escape(keep)}]", "_", text)
    return text if safe == text else f"{safe}-{fingerprint(text)[:8]}"


@runtime_checkable
class Spec(Protocol):
    """What a cached artifact is: a folder-safe ``key``, the ``record()`` stored beside it (what it was made from,
    checked on reuse) and a ``label`` people read."""

    @property
    def key(self) -> str: ...

    def record(self) -> dict[str, Any]: ...


class Store:
    """One kind of artifact in its folder of the cache: ``Store("compose")`` is ``$CRAFTLAB_HOME/compose``.

    :meth:`get_json` returns the stored JSON record of a spec, or makes it, stores it atomically and returns it; a
    stored file whose ``spec`` differs from ``spec.record()`` (another artifact under the same key, or a damaged
    file) is made again.

    >>> import os, tempfile; os.environ["CRAFTLAB_HOME"] = tempfile.mkdtemp()
    >>> class Sq:
    ...     key, label = "sq-3", "3 squared"
    ...     def record(self): return {"x": 3}
    >>> Store("demo").get_json(Sq(), lambda: {"y": 9})
    {'y': 9}
    >>> Store("demo").get_json(Sq(), lambda: {"y": -1})   # stored: not made again
    {'y': 9}
    """

    def __init__(self, kind: str) -> None:
        if not kind or "/" in kind or kind.startswith("."):
            raise ValueError(f"a store kind is a folder name, got {kind!r}")
        self.kind = kind

    @property
    def root(self) -> Path:
        return subdir(self.kind)

    def path(self, key: str, suffix: str = "") -> Path:
        """Where `key`'s artifact lives (a folder, or a file with `suffix`)."""
        if not key or "/" in key or key.startswith("."):
            raise ValueError(f"a store key is a file name, got {key!r}")
        return self.root / f"{key}{suffix}"

    def get_json(self, spec: Spec, make: Callable[[], Any]) -> Any:
        """The JSON value stored for `spec`, or ``make()`` stored atomically with ``spec.record()`` beside it."""
        path = self.path(spec.key, ".json")
        stored = read_json(path)
        record = json.loads(json.dumps(spec.record(), default=str))
        if isinstance(stored, dict) and stored.get("spec") == record and "value" in stored:
            return stored["value"]
        text = json.dumps({"spec": record, "value": make()}, default=str)
        atomic_write(path, text)
        return json.loads(text)["value"]  # what a later call reads back


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
