"""The queue of shots: one engine job per source strip (an edit, or the tracking of one of its
regions), followed by one tick on Blender's main thread. Plain Python (no bpy): the bpy layer keeps the
queue, draws it and puts each result back above its own strip.

A shot names its strip by the strip's key (`timeline.stamp`) and the name it had, so the user may rename,
move or select other strips meanwhile: the result still finds its strip.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .session import ACTIVE, EngineSession

REFUSED = "refused"


@dataclass
class Shot:
    scene: str  # the scene's name
    key: str  # the source strip's key
    name: str  # the source strip's name when the shot was queued
    session: EngineSession
    connection_file: str
    finish: Callable[[Any, "Shot"], None]  # (scene, shot): the result into the timeline, once done
    kind: str = "edit"  # or "track"
    region: str = ""  # a tracking's region key
    prompt: str = ""  # an edit's prompt, kept with its take
    started: float = field(default_factory=time.monotonic)

    @property
    def active(self) -> bool:
        return self.session.state == ACTIVE

    @property
    def state(self) -> str:
        """queued / invert / edit / decode ... while it runs, then done / failed / cancelled."""
        return self.session.phase if self.active else self.session.state

    def eta_s(self, now: float | None = None) -> float | None:
        """Seconds to go: the engine's own estimate when it sent one, else the pace so far; None while
        nothing tells."""
        session = self.session
        if not self.active:
            return None
        if session.eta_s is not None:
            return session.eta_s
        progress = session.progress
        if progress <= 0.0:
            return None
        elapsed = (time.monotonic() if now is None else now) - self.started
        return elapsed * (1.0 - progress) / progress


def eta_text(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = round(seconds)
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def describe(shot: Shot) -> str:
    """One line of the queue panel: the phase and step, or how it ended."""
    session = shot.session
    if not shot.active:
        said = session.message and session.state != "done"
        return session.state.capitalize() + (f": {session.message}" if said else "")
    if session.phase == "queued":
        return "Queued on the engine"
    steps = f" {session.step}/{session.total}" if session.total else ""
    eta = eta_text(shot.eta_s())
    return f"{session.phase}{steps}" + (f", about {eta} to go" if eta else "")
