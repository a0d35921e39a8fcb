"""User-facing errors of every tab: bad input becomes one line in a toast, never a traceback in the server log.

:func:`user_errors` turns the errors ``craftlab`` raises for bad input (ValueError, CheckpointError, ...) into a
``gr.Error`` whose message is :func:`one_line`; :func:`lazy_module` imports a tab's heavy module (plotly, torch)
on first use, so the page is served before they load.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from typing import Any

__all__ = ["LazyModule", "one_line", "user_errors"]


def one_line(err: BaseException | str) -> str:
    """An error message as one line that a browser toast (which renders HTML) shows whole: newlines folded,
    and ``<`` ``>`` written as ``‹`` ``›`` (``<urlopen error ...>`` would otherwise be swallowed as a tag).

    Example::

        >>> one_line("bad value:\\n <urlopen error>")
        'bad value: ‹urlopen error›'
    """
    text = str(err) or type(err).__name__
    text = text.replace(">=", "≥").replace("<=", "≤")  # not "›=" below
    return " ".join(text.split()).replace("<", "‹").replace(">", "›")


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors craftlab raises for bad input (ValueError, CheckpointError, ...) into a gr.Error whose
    one-line message names the problem (no traceback in the server log); the app keeps serving.

    Example::

        >>> with user_errors():  # doctest: +SKIP
        ...     make_setting("wanda", 2.0)  # gr.Error("sparsity must be in [0, 1) ...")
    """
    import gradio as gr

    try:
        yield
    except gr.Error:
        raise
    except (ValueError, TypeError, KeyError, RuntimeError, OSError) as err:
        raise gr.Error(one_line(err), print_exception=False) from None


class LazyModule:
    """A module imported on first attribute access (figures pull in plotly and torch; the page does not need
    them to be served).

    Example::

        >>> LazyModule("json").dumps([1])
        '[1]'
    """

    def __init__(self, name: str, package: str | None = None) -> None:
        self._name, self._package = name, package

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name, self._package), attr)
