"""One state object per view: what a browser tab shows, and which of its requests are still wanted.

A **view** is (model, :class:`craftlab.settings.Setting`) plus the ``/compress`` answer computed for it. Every
control change opens a new view of the session (``Views.open``): it gets the next sequence number and replaces
the session's previous view. Every panel is drawn from a :class:`View` and titled with its :attr:`View.tag`
(``[vit-tiny · wanda 70% + W4A8]``), and a response computed for a view that is no longer the session's current
one is dropped (``Views.current``) — so however fast the controls change, what the page shows agrees with
itself, and a slow computation for an abandoned view gives up (``Views.cancelled``) instead of holding the lane.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from craftlab.settings import Setting

__all__ = ["View", "Views", "tag"]


def tag(model: str, setting: Setting | str) -> str:
    """The label every panel of a view carries: ``[vit-tiny · wanda 70% + W4A8]``."""
    label = setting.label() if isinstance(setting, Setting) else str(setting)
    return f"[{model} · {label}]"


@dataclass(frozen=True)
class View:
    """What one browser tab shows: the session, the view's sequence number, the model, the validated setting
    and the ``/compress`` answer for them (seed 0 of each arm)."""

    session: str
    seq: int
    model: str
    setting: Setting
    answer: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def tag(self) -> str:
        return tag(self.model, self.setting)


class Views:
    """The current view of every session (bounded: the oldest sessions are forgotten)."""

    def __init__(self, max_sessions: int = 4096) -> None:
        self.max_sessions = max_sessions
        self._latest: OrderedDict[str, int] = OrderedDict()
        self._seq = 0
        self._lock = threading.Lock()

    def open(self, session: str, model: str, setting: Setting) -> View:
        """A new view of `session`; it replaces (and so cancels) the session's previous one."""
        with self._lock:
            self._seq += 1
            self._latest[session] = self._seq
            self._latest.move_to_end(session)
            while len(self._latest) > self.max_sessions:
                self._latest.popitem(last=False)
            return View(session, self._seq, model, setting)

    def current(self, view: View | None) -> bool:
        """True while `view` is its session's current view."""
        if view is None:
            return False
        with self._lock:
            return self._latest.get(view.session) == view.seq

    def cancelled(self, view: View) -> Callable[[], bool]:
        """A predicate for long computations: True once `view` is no longer current."""
        return lambda: not self.current(view)
