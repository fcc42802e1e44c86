"""From the panel's settings to a protocol `submit` settings mapping, with checks in plain words.

Plain Python (no bpy): the operator snapshots scene properties into an `EditRequest`. For an engine that
shares this machine's disk, `FileRun`s name media by path instead (`inline: false`, SPEC §3.2).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

# How the engine reads a folder of frames (engine/inputs/media.py `list_frames`): these suffixes, in
# natural order. A path submit is only right if both sides count frames alike; a test holds them equal.
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".exr"}


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
    control_type: str = "auto"  # the engine's model family picks: a canny ControlNet on SD-1.5, none on Wan
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
    # A region without a phrase is allowed: it still groups self-attention, with no words of its own.
    phrases = [p for p in [*request.phrases, request.background_phrase] if p.strip()]
    for phrase in phrases:
        if not re.search(rf"(?<!\w){re.escape(phrase.strip())}(?!\w)", request.prompt, re.IGNORECASE):
            found.append(f"The phrase '{phrase}' is not in the prompt: each phrase must be words of the prompt.")
    if len({p.strip().lower() for p in phrases}) != len(phrases):
        found.append("Two regions share a phrase: give each its own words.")
    return found


def working_size(width: int, height: int, longest: int, multiple: int = 8) -> tuple[int, int]:
    """The source's aspect at `longest` pixels on the long side, both sides multiples of `multiple` (what
    the engine's model takes: 8 for SD-1.5, 16 for Wan, its `welcome` says), at least 64."""
    scale = longest / max(width, height)
    smallest = -(-64 // multiple) * multiple
    fit = lambda side: max(smallest, int(round(side * scale / multiple)) * multiple)  # noqa: E731
    return fit(width), fit(height)


def size_multiple(capabilities: dict[str, Any] | None) -> int:
    """The working-size multiple of an engine's model, from its `welcome` (8 for an engine that predates it)."""
    return int(((capabilities or {}).get("family") or {}).get("size_multiple", 8))


def settings(request: EditRequest, source_width: int, source_height: int, multiple: int = 8) -> dict[str, Any]:
    width, height = working_size(source_width, source_height, request.working_size, multiple)
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


@dataclass(frozen=True)
class FileRun:
    """`count` consecutive frames of `path` (a folder of images or a video) from frame `start`, where the
    engine counts `length` frames in `path`."""

    path: str
    start: int
    count: int
    length: int


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def folder_frames(folder: str) -> list[str]:
    """The image files of `folder` in the order the engine reads them."""
    names = (n for n in os.listdir(folder) if os.path.splitext(n)[1].lower() in IMAGE_SUFFIXES)
    return sorted(names, key=_natural_key)


def image_run(folder: str, shown: Sequence[str]) -> FileRun | None:
    """The run of `folder` that is exactly the files `shown`, in order; None when the engine, listing the
    folder, would not read those files as consecutive frames."""
    try:
        listed = folder_frames(folder)
    except OSError:
        return None
    if not shown or shown[0] not in listed:
        return None
    start = listed.index(shown[0])
    if listed[start : start + len(shown)] != list(shown):
        return None
    return FileRun(os.path.normpath(folder), start, len(shown), len(listed))


def aligned(matte: FileRun, source: FileRun) -> bool:
    """Whether the engine reads `matte` frame for frame with `source`: a matte sequence as long as the
    source is read at the source's frames, one as long as the edit from its first frame."""
    if matte.count != source.count:
        return False
    return (matte.length == source.length and matte.start == source.start) or (matte.length == source.count and matte.start == 0)


def with_files(mapping: dict[str, Any], source: FileRun, mattes: Sequence[FileRun]) -> dict[str, Any]:
    """`mapping` for a path submit: the source and each region's matte named by absolute path."""
    return {
        **mapping,
        "source": {**mapping["source"], "path": source.path, "start": source.start, "count": source.count},
        "regions": [{**region, "mask": matte.path} for region, matte in zip(mapping["regions"], mattes)],
    }
