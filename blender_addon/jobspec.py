"""From the panel's settings to a protocol `submit` settings mapping, with checks in plain words.

Plain Python (no bpy): the operator snapshots scene properties into an `EditRequest`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any


@dataclass
class EditRequest:
    prompt: str
    source_prompt: str
    phrases: list[str]
    background_phrase: str = ""
    steps: int = 50
    guidance: float = 7.5
    seed: int = 0
    cross_strength: float = 1.0
    self_strength: float = 0.3
    control_type: str = "canny"
    control_scale: float = 1.0
    working_size: int = 512  # longest side of the working size
    model: str = ""  # empty: the engine's own model
    extra: dict[str, Any] = field(default_factory=dict)


def problems(request: EditRequest) -> list[str]:
    """What the user must fix before an edit can start; empty when all is well."""
    found = []
    if not request.prompt.strip():
        found.append("Write the target prompt: it names every region.")
    if not request.phrases:
        found.append("Add at least one region with its phrase and matte.")
    phrases = [p for p in request.phrases] + ([request.background_phrase] if request.background_phrase else [])
    for phrase in phrases:
        if not phrase.strip():
            found.append("A region has no phrase: give it the words of the prompt that describe it.")
        elif not re.search(rf"(?<!\w){re.escape(phrase.strip())}(?!\w)", request.prompt, re.IGNORECASE):
            found.append(f"The phrase '{phrase}' is not in the prompt: each phrase must be words of the prompt.")
    if len({p.strip().lower() for p in phrases}) != len(phrases):
        found.append("Two regions share a phrase: give each its own words.")
    return found


def working_size(width: int, height: int, longest: int) -> tuple[int, int]:
    """The source's aspect at `longest` pixels on the long side, both sides multiples of 8, at least 64."""
    scale = longest / max(width, height)
    fit = lambda side: max(64, int(round(side * scale / 8)) * 8)  # noqa: E731
    return fit(width), fit(height)


def settings(request: EditRequest, source_width: int, source_height: int) -> dict[str, Any]:
    width, height = working_size(source_width, source_height, request.working_size)
    mapping: dict[str, Any] = {
        "prompt": request.prompt,
        "source_prompt": request.source_prompt or request.prompt,
        "regions": [{"phrase": p} for p in request.phrases],
        "source": {"width": width, "height": height},
        "control": {"type": request.control_type, "scale": request.control_scale},
        "steps": request.steps,
        "guidance": request.guidance,
        "seed": request.seed,
        "modulation": {"cross": request.cross_strength, "self": request.self_strength},
        **request.extra,
    }
    if request.background_phrase:
        mapping["background"] = {"phrase": request.background_phrase}
    if request.model:
        mapping["model"] = request.model
    return mapping
