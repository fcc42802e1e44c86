"""Rendering through Blender's sequencer: the source strip's frames and the region mattes, as PNGs.

Exact pixels: the Standard view transform, 8-bit RGB PNG, 100 % resolution, and every strip but the
one being rendered muted. All of it is restored afterwards: the user's scene is left as it was.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import bpy


def strips_of(scene: bpy.types.Scene):
    """The sequencer's strips on Blender 4.2 (`sequences`) and 4.4+ (`strips`)."""
    sed = scene.sequence_editor
    return sed.strips if hasattr(sed, "strips") else sed.sequences


def all_strips_of(scene: bpy.types.Scene):
    sed = scene.sequence_editor
    return sed.strips_all if hasattr(sed, "strips_all") else sed.sequences_all


def frame_range(strip) -> range:
    """The frames the strip shows in the timeline, trims respected."""
    return range(strip.frame_final_start, strip.frame_final_end)


@contextmanager
def _exact_output(scene: bpy.types.Scene) -> Iterator[None]:
    """Output pixels equal to the input's: no view transform, look or exposure; 8-bit RGB PNG at 100 %."""
    view, render, image = scene.view_settings, scene.render, scene.render.image_settings
    saved = (view.view_transform, view.look, view.exposure, view.gamma, image.file_format, image.color_mode,
             image.color_depth, render.resolution_percentage, render.filepath)
    try:
        view.view_transform, view.look, view.exposure, view.gamma = "Standard", "None", 0.0, 1.0
        image.file_format, image.color_mode, image.color_depth = "PNG", "RGB", "8"
        render.resolution_percentage = 100
        yield
    finally:
        (view.view_transform, view.look, view.exposure, view.gamma, image.file_format, image.color_mode,
         image.color_depth, render.resolution_percentage, render.filepath) = saved


@contextmanager
def _render_only(scene: bpy.types.Scene, strip) -> Iterator[None]:
    """Exact output of `strip` alone: every other strip muted meanwhile, mute flags restored after."""
    muted = {s.name: s.mute for s in all_strips_of(scene)}
    frame = scene.frame_current
    try:
        with _exact_output(scene):
            for other in all_strips_of(scene):
                other.mute = other != strip
            yield
    finally:
        for other in all_strips_of(scene):
            if other.name in muted:
                other.mute = muted[other.name]
        scene.frame_set(frame)


def render_strip(scene: bpy.types.Scene, strip, frames: range, folder: Path) -> list[bytes]:
    """PNG bytes of `strip` alone at each of `frames`, rendered one frame at a time (so animated mask
    points and every per-frame setting are evaluated)."""
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    with _render_only(scene, strip):
        for frame in frames:
            scene.frame_set(frame)
            path = folder / f"{frame:05d}.png"
            scene.render.filepath = str(path)
            bpy.ops.render.render(write_still=True)
            images.append(path.read_bytes())
    return images


def render_mask(scene: bpy.types.Scene, mask: bpy.types.Mask, frames: range, folder: Path) -> list[bytes]:
    """Rasterise a mask datablock through a temporary mask strip, removed afterwards."""
    strips = strips_of(scene)
    channel = max((s.channel for s in all_strips_of(scene)), default=0) + 1
    temporary = strips.new_mask(name="videograin-matte", mask=mask, channel=min(channel, 128), frame_start=frames.start)
    try:
        temporary.frame_final_duration = len(frames)
        return render_strip(scene, temporary, frames, folder)
    finally:
        strips.remove(temporary)


def render_image(scene: bpy.types.Scene, image: bpy.types.Image, frames: range, folder: Path) -> list[bytes]:
    """A painted (still) image as the matte of every frame."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "matte.png"
    with _exact_output(scene):
        image.save_render(str(path), scene=scene)
    data = path.read_bytes()
    return [data] * len(frames)
