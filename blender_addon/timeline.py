"""The sequencer's strips: reaching them on every Blender version, keeping a reference to one that
survives renaming, putting an edit's frames back as a new image strip, and showing a tracked matte
over its source.

Strips are not ID datablocks, so a PointerProperty cannot hold one, and `as_pointer()` changes when the
file is reloaded. A strip's custom properties are saved with it and stay through renames, moves and
meta-strip grouping (checked in Blender 4.5 and 5.0), so a reference is a key stamped on the strip
(`strip["videograin_key"]`) plus the name it had, which settles the tie when a duplicate carries the
same key.
"""

from __future__ import annotations

import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import bpy

MAX_CHANNEL = 128
KEY = "videograin_key"


def strips_of(scene: bpy.types.Scene):
    """The sequencer's top-level strips on Blender 4.2 (`sequences`) and 4.4+ (`strips`)."""
    sed = scene.sequence_editor
    return sed.strips if hasattr(sed, "strips") else sed.sequences


def all_strips_of(scene: bpy.types.Scene):
    """Every strip, inside meta strips too, by name."""
    sed = scene.sequence_editor
    return sed.strips_all if hasattr(sed, "strips_all") else sed.sequences_all


def stamp(strip) -> str:
    """The strip's key, stamped on it the first time it is referenced."""
    if not strip.get(KEY):
        strip[KEY] = uuid.uuid4().hex
    return strip[KEY]


def own_key(scene: bpy.types.Scene, strip) -> str:
    """The strip's key, made its own first when a duplicate shares it (a duplicate carries its original's
    custom properties): a job must find its own strip again, whatever is renamed meanwhile."""
    key = stamp(strip)
    if any(other.get(KEY) == key and other != strip for other in all_strips_of(scene)):
        strip[KEY] = key = uuid.uuid4().hex
    return key


def find_strip(scene: bpy.types.Scene, key: str, name: str):
    """The strip stamped with `key` (the one still called `name` when a duplicate shares the key), or None."""
    if not key or scene.sequence_editor is None:
        return None
    stamped = [s for s in all_strips_of(scene) if s.get(KEY) == key]
    return next((s for s in stamped if s.name == name), stamped[0] if stamped else None)


def lies_above(upper, lower) -> bool:
    """Whether `upper` is on a higher channel than `lower` and shares some of its frames."""
    return (upper.channel > lower.channel and upper.frame_final_start < lower.frame_final_end
            and upper.frame_final_end > lower.frame_final_start)


def free_channel_above(scene, strip, start: int, end: int) -> int:
    """The lowest channel above `strip` with nothing between frames `start` and `end`."""
    for channel in range(strip.channel + 1, MAX_CHANNEL + 1):
        if not any(s.channel == channel and s.frame_final_start < end and s.frame_final_end > start
                   for s in all_strips_of(scene)):
            return channel
    raise RuntimeError("no free channel above the source strip")


def insert_result_strip(scene, source, frames: list[Path], name: str):
    """An image strip of `frames` on a free channel above `source`, starting where it starts.

    In a saved file the strip points at its frames relatively (`//videograin_results/...`), so a project
    folder moved or copied elsewhere keeps working results.
    """
    start = source.frame_final_start
    channel = free_channel_above(scene, source, start, start + len(frames))
    first = bpy.path.relpath(str(frames[0])) if bpy.data.filepath else str(frames[0])
    strip = strips_of(scene).new_image(name=name, filepath=first, channel=channel, frame_start=start)
    for path in frames[1:]:
        strip.elements.append(path.name)
    return strip


OVERLAY_OPACITY = 0.5


def insert_overlay(scene, matte, colour: tuple[float, float, float], name: str):
    """A colour strip in `colour` over the frames of `matte` (a matte strip, muted), shown only where the
    matte is white: a Mask modifier reads the matte strip (a muted strip still serves as a mask), and the
    strip blends at half opacity over what lies below. It is a strip like any other, so it also renders:
    the scene's Show Mattes hides it."""
    start, end = matte.frame_final_start, matte.frame_final_end
    channel = free_channel_above(scene, matte, start, end)
    # 5.0 gives effect strips a length; 4.x an end frame.
    span = {"length": end - start} if bpy.app.version >= (5, 0, 0) else {"frame_end": end}
    strip = strips_of(scene).new_effect(name=name, type="COLOR", channel=channel, frame_start=start, **span)
    strip.color, strip.blend_type, strip.blend_alpha = colour, "ALPHA_OVER", OVERLAY_OPACITY
    with _sequencer_scene(scene):
        modifier = strip.modifiers.new(name="matte", type="MASK")
    modifier.input_mask_type = "STRIP"
    modifier.input_mask_strip = matte
    return strip


@contextmanager
def _sequencer_scene(scene) -> Iterator[None]:
    """Blender 5.0.1 crashes in `strip.modifiers.new` while the workspace has no sequencer scene (as in a
    background session): give it `scene` for the call."""
    workspace = bpy.context.workspace
    if workspace is None or getattr(workspace, "sequencer_scene", scene) is not None:
        yield
        return
    workspace.sequencer_scene = scene
    try:
        yield
    finally:
        workspace.sequencer_scene = None
