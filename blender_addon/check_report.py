"""What the Check button shows of an engine's `check` reply (SPEC.md §3.8): a headline, the estimate and
each finding, errors first. Plain Python (no bpy): the operator stores it in scene properties and the
panel draws those.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

LAYOUT_IMAGE = "VideoGrain Layout"  # the one image datablock that holds the last check's picture


@dataclass(frozen=True)
class Finding:
    code: str
    message: str
    error: bool = False  # the edit would fail on it (else a warning: it runs, maybe not as meant)


@dataclass
class CheckView:
    ok: bool
    headline: str
    estimate: str = ""
    findings: list[Finding] = field(default_factory=list)


def read_reply(reply: Mapping[str, Any]) -> CheckView:
    """The panel's view of a `check` reply. Codes it does not know are shown like the others: every
    message says what to do."""
    errors = [Finding(str(e["code"]), str(e["message"]), True) for e in reply.get("errors") or ()]
    warnings = [Finding(str(w["code"]), str(w["message"])) for w in reply.get("warnings") or ()]
    ok = bool(reply.get("ok", not errors))
    if not ok:
        headline = f"The edit would fail: {_count(len(errors), 'error')}."
    elif warnings:
        headline = f"Ready to edit, with {_count(len(warnings), 'warning')}."
    else:
        headline = "Ready to edit: no warnings."
    estimate = ((reply.get("summary") or {}).get("estimate") or {}).get("text") or ""
    return CheckView(ok, headline, estimate, errors + warnings)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def clip_frame(playhead: int, frames: range) -> int:
    """The clip frame (0 = the strip's first) the layout shows for the playhead: the playhead's, or the
    nearest end of the strip when it is outside it."""
    return min(max(playhead, frames.start), frames.stop - 1) - frames.start
