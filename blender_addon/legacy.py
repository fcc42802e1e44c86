"""Files saved before edits belonged to strips kept the one edit on the scene (`scene.videograin`).
Which of those stored values are a strip's edit now, and which strip they belong to. Plain Python (no
bpy): the load handler reads the scene's stored values and writes them onto the strip as they are
(enum values and datablock pointers included), so nothing is converted here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

# The scene-level names of the old edit that a strip's edit has under the same name.
EDIT_FIELDS = (
    "prompt", "source_prompt", "background_phrase", "regions", "active_region", "steps", "guidance", "seed",
    "cross_strength", "self_strength", "control_type", "control_scale", "working_size", "model", "keep_partial",
    "attention_maps", "tracker", "tracker_model", "attention_folder", "attention_start",
)
# Old values with no place now: the source choice (the edit sits on the strip itself), the last
# result's name (found again as a take), the last check and the live state (they were the old edit's).
DROPPED = (
    "source_strip_key", "source_strip_name", "result_strip", "status", "error", "running", "phase", "step",
    "total", "progress", "check_status", "check_ok", "check_estimate", "check_frame", "check_findings",
)


@dataclass
class LegacyEdit:
    values: dict[str, Any]  # name → stored value, for the strip's edit
    source_key: str  # the chosen source's key; empty when the edit used the active strip
    source_name: str
    result_name: str  # the strip the last edit added ("" if none)


def legacy_edit(stored: Mapping[str, Any]) -> LegacyEdit | None:
    """The old edit among a scene's stored settings, or None when there is none (a new file, one already
    moved, or an old one where nothing was ever written)."""
    values = {name: stored[name] for name in EDIT_FIELDS if name in stored}
    if not values:
        return None
    return LegacyEdit(values, str(stored.get("source_strip_key", "")), str(stored.get("source_strip_name", "")),
                      str(stored.get("result_strip", "")))


def stale_names(stored: Mapping[str, Any]) -> list[str]:
    """Every old name still stored, to be removed once the edit has moved."""
    return [name for name in (*EDIT_FIELDS, *DROPPED) if name in stored]
