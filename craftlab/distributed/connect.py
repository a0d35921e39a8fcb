"""Connecting to a Ray cluster: the address checked in seconds (never a hang), Ray's errors as one line.

``address=None`` uses the Ray session this process already has, else ``RAY_ADDRESS`` (set by ``ray job
submit``), else ``ray.init()``: Ray joins the last ``ray start`` cluster of this machine whose address file is in
its default temp folder, else starts a local cluster (``include_dashboard=False``) shut down afterwards. An explicit
address is probed first (:func:`check_address`): a closed port, an HTTP server or a silent proxy fails within
:data:`ADDRESS_TIMEOUT_S` seconds with the address in a one-line message.

Example::

    >>> check_address("127.0.0.1:1")
    Traceback (most recent call last):
    RayUnreachableError: cannot reach the Ray cluster at '127.0.0.1:1': ...
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import time
from collections.abc import Iterator

ADDRESS_TIMEOUT_S = 5.0


class RayUnreachableError(ConnectionError, RuntimeError):
    """No Ray cluster answers at the given address (a ConnectionError; also a RuntimeError for the CLI)."""


_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
"""An HTTP/2 client preface and an empty SETTINGS frame: a gRPC server (Ray's GCS, a Ray Client server) answers
with a SETTINGS frame (frame type 4); an HTTP/1 server, a proxy or anything else does not."""


def _unreachable(address: str, why: str, timeout: float) -> RayUnreachableError:
    return RayUnreachableError(
        f"cannot reach the Ray cluster at {address!r}: {why} (checked for up to {timeout:g} s). Start one with "
        "`ray start --head` and pass the address it prints (the GCS port, 6379 by default; from a machine that "
        "is not a node of the cluster: ray://HEAD:10001), or leave the address out for a local cluster")


def check_address(address: str, timeout: float = ADDRESS_TIMEOUT_S) -> None:
    """Raise a clear error unless a Ray head answers at `address` (``HOST:PORT``, ``ray://HOST:PORT``; ``auto``
    and ``local`` are left to Ray) within `timeout` seconds in all.

    A TCP connection is not enough: the port must speak gRPC (Ray's GCS and the Ray Client server do), checked
    with an HTTP/2 preface whose answer must be a SETTINGS frame. A closed port, an HTTP server (the dashboard's
    port), or a proxy that accepts every connection and never answers all fail within `timeout`.

    Example::

        >>> check_address("127.0.0.1:1")
        Traceback (most recent call last):
        RayUnreachableError: cannot reach the Ray cluster at '127.0.0.1:1': ...
    """
    if not isinstance(address, str) or not address.strip():
        raise ValueError(f"Ray address must be a non-empty string like '10.0.0.1:6379', got {address!r}")
    if address in ("auto", "local"):
        return
    host, sep, port = address.split("://", 1)[-1].rstrip("/").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"Ray address must look like HOST:PORT (e.g. 10.0.0.1:6379), ray://HOST:PORT or 'auto', "
                         f"got {address!r}")
    deadline = time.monotonic() + timeout
    try:
        sock = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
    except OSError as err:
        raise _unreachable(address, err.strerror or str(err) or type(err).__name__, timeout) from None
    answer = b""
    with sock:
        try:
            sock.sendall(_H2_PREFACE)
            while len(answer) < 9 and (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                chunk = sock.recv(9 - len(answer))
                if not chunk:
                    break
                answer += chunk
        except OSError:
            pass
    if len(answer) < 9 or answer[3] != 4:
        seen = (f"it answered {answer[:9]!r}" if answer else "it sent nothing back")
        raise _unreachable(address, f"the port is open but is not a Ray head ({seen}; expected gRPC, e.g. the "
                                    "GCS port, not the dashboard's 8265)", timeout)
    if "://" not in address and local_raylets() == []:  # Ray would wait a minute, then "No node info found"
        raise RayUnreachableError(
            f"cannot join the Ray cluster at {address!r} from here: this machine runs no Ray node (no raylet "
            f"process), and a driver at the GCS address must run on a node. {_USE_CLIENT.format(host=host)}")


_USE_CLIENT = ("From a machine outside the cluster use Ray Client: --address ray://{host}:10001 (the head's "
               "--ray-client-server-port); or run the driver on a node (after `ray start --address HEAD:6379` here)")


def local_raylets() -> list[str] | None:
    """The node ids of the Ray nodes (raylet processes) on this machine — what ``ray.init(address=HOST:PORT)`` looks
    for to attach a driver — or None when Ray cannot tell (not installed, or its process listing failed)."""
    try:
        from ray._private.services import find_node_ids

        return list(find_node_ids())
    except Exception:  # a private Ray function: when it moves or fails, Ray's own error remains (join_error)
        return None


def join_error(address: str, err: BaseException) -> RayUnreachableError:
    """`err` of ``ray.init(address=...)`` as one line naming the address (Ray's own is a traceback; a driver
    without a local raylet gets ``ConnectionError: Failed to connect ...`` caused by ``RuntimeError: No node info
    found ...`` after a minute: both are named), with the way out.

    Example::

        >>> msg = str(join_error("10.0.0.5:6379", RuntimeError("No node info found matching attributes: ''")))
        >>> msg.startswith("could not join the Ray cluster at '10.0.0.5:6379': RuntimeError: No node info"), \\
        ...     "ray://10.0.0.5:10001" in msg
        (True, True)
    """
    host = address.split("://", 1)[-1].rpartition(":")[0] or "HEAD"
    hint = ("" if "://" in address else " " + _USE_CLIENT.format(host=host))
    why = last_line(err)
    if isinstance(err.__cause__, BaseException):  # Ray wraps the reason: ConnectionError("Failed to connect ...")
        why += f" ({last_line(err.__cause__)})"
    return RayUnreachableError(f"could not join the Ray cluster at {address!r}: {why}.{hint}")


def last_line(err: BaseException) -> str:
    """``Type: message`` of `err`'s last non-empty line, without ANSI colours (a Ray task error's cause when it
    has one: Ray's own message is a colour-coded traceback of dozens of lines).

    Example::

        >>> last_line(ValueError("first line\\nthe point"))
        'ValueError: the point'
    """
    cause = getattr(err, "cause", None)
    if isinstance(cause, BaseException) and cause is not err:
        err = cause
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", str(err))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    name = type(err).__name__
    line = lines[-1] if lines else ""
    return f"{name}: {line}" if line and not line.startswith(name) else (line or name)


@contextlib.contextmanager
def ray_session(address: str | None = None) -> Iterator[None]:
    """Connected to Ray inside the block (see module doc for which cluster); shut down after if started here."""
    import ray

    if address is not None:
        check_address(address)
    if ray.is_initialized():
        yield
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        ray.init(include_dashboard=False, log_to_driver=False, logging_level="warning")
    else:
        try:
            ray.init(address=address, log_to_driver=False, logging_level="warning")
        except Exception as err:  # Ray's ConnectionError / "No node info found" + tracebacks: one line instead
            with contextlib.suppress(Exception):
                ray.shutdown()
            raise join_error(address, err) from None
    try:
        yield
    finally:
        ray.shutdown()


