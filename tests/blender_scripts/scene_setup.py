"""Shared by the scripts that run inside real Blender (bpy from PyPI), one process per script."""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

import bpy
import cv2
import numpy as np

WIDTH, HEIGHT, FRAMES, START = 64, 48, 4, 10


def _fail_at_once(kind, value, trace) -> None:
    traceback.print_exception(kind, value, trace)
    sys.stderr.flush()
    runs = sys.modules.get("videograin.blender_addon.runs")
    if runs is not None:  # the engine is shared by a test module's scripts: stop what this one sent
        runs.abandon_all()
    os._exit(1)  # as finish(): a failing script must not hang in bpy 4.5's teardown either


sys.excepthook = _fail_at_once


def limit(seconds: float) -> float:
    """A limit for something that takes well under `seconds` on a quiet machine, scaled by how slow this one
    is (tests/conftest.py `slowness`, which the test passes in as VIDEOGRAIN_TEST_SLOWNESS)."""
    return seconds * float(os.environ.get("VIDEOGRAIN_TEST_SLOWNESS", "1"))


def finish() -> None:
    """Report success and leave at once: bpy 4.5 can hang in its own teardown after a render."""
    print("OK", flush=True)
    os._exit(0)


def register_addon():
    """Enable the add-on as Blender does (so its preferences exist), from the videograin package."""
    import addon_utils  # on the path once bpy is imported

    module = addon_utils.enable("videograin.blender_addon", default_set=True, handle_error=_fail_at_once_on_error)
    assert module is not None, "the add-on did not enable"
    return module


def _fail_at_once_on_error(exc) -> None:
    _fail_at_once(type(exc), exc, exc.__traceback__)


def preferences():
    return bpy.context.preferences.addons["videograin.blender_addon"].preferences


def write_clip(folder: Path) -> tuple[Path, Path, np.ndarray]:
    """Random RGB frames and a left-half matte sequence as PNG files."""
    rng = np.random.default_rng(5)
    frames = rng.integers(0, 256, (FRAMES, HEIGHT, WIDTH, 3), dtype=np.uint8)
    source, mattes = folder / "source", folder / "mattes"
    source.mkdir(parents=True)
    mattes.mkdir(parents=True)
    for i, frame in enumerate(frames):
        cv2.imwrite(str(source / f"{i:03d}.png"), frame)
        matte = np.zeros((HEIGHT, WIDTH), np.uint8)
        matte[:, : WIDTH // 2 + i] = 255
        cv2.imwrite(str(mattes / f"{i:03d}.png"), matte)
    return source, mattes, frames


def image_strip(scene, name: str, folder: Path, channel: int, start: int = START):
    from videograin.blender_addon.timeline import strips_of

    files = sorted(folder.glob("*.png"))
    strip = strips_of(scene).new_image(name=name, filepath=str(files[0]), channel=channel, frame_start=start)
    for path in files[1:]:
        strip.elements.append(path.name)
    return strip


def new_scene(folder: Path):
    """A scene at the clip's resolution with the source on channel 1 and a matte strip on channel 2."""
    scene = bpy.context.scene
    scene.render.resolution_x, scene.render.resolution_y = WIDTH, HEIGHT
    scene.sequence_editor_create()
    source_dir, mattes_dir, frames = write_clip(folder)
    source = image_strip(scene, "source", source_dir, 1)
    mattes = image_strip(scene, "left mattes", mattes_dir, 2)
    mattes.mute = True  # as a user would keep a matte strip: in the timeline, not in the picture
    scene.sequence_editor.active_strip = source
    return scene, source, mattes, frames


def configure_edit(scene, connection_file: str, steps: int = 3, strip=None, matte: str = "left mattes"):
    """An edit of `strip` (the active strip): a prompt with a background and one region on a matte strip.
    Returns the strip's edit."""
    scene.videograin.connection_file = connection_file
    strip = strip or scene.sequence_editor.active_strip
    scene.sequence_editor.active_strip = strip
    assert bpy.ops.videograin.edit_new() == {"FINISHED"}
    edit = strip.videograin
    edit.prompt = "an iron man jogging under cherry blossoms"
    edit.source_prompt = "a man jogging"
    edit.background_phrase = "cherry blossoms"
    edit.steps, edit.working_size = steps, 64
    bpy.ops.videograin.region_add()
    region = edit.regions[0]
    region.phrase, region.matte_source, region.strip = "iron man", "STRIP", matte
    return edit


def count_renders() -> list:
    """A list that grows by one for every frame Blender renders from now on."""
    renders: list = []
    bpy.app.handlers.render_pre.append(lambda *args: renders.append(args))
    return renders


def strip_summary(scene) -> list[tuple]:
    from videograin.blender_addon.timeline import all_strips_of

    return sorted((s.name, s.channel, s.frame_final_start, s.frame_final_end, s.mute) for s in all_strips_of(scene))


def run_until_done(limit_s: float = 300.0) -> None:
    """Drive the timer of jobs started without `wait` by hand: timers do not fire in headless Blender."""
    import time

    from videograin.blender_addon import runs

    deadline = time.monotonic() + limit(limit_s)
    while runs.tick() is not None:
        assert time.monotonic() < deadline, "the jobs did not finish"
        time.sleep(0.05)


def tick_until(condition, limit_s: float = 300.0) -> None:
    """Drive the tick until `condition()` holds (the limit only stops a hang: a loaded machine is slow)."""
    import time

    from videograin.blender_addon import runs

    deadline = time.monotonic() + limit(limit_s)
    while not condition():
        assert runs.tick() is not None and time.monotonic() < deadline, "the condition never came"
        time.sleep(0.05)


def rectangle_mask(name: str, left: float, bottom: float, right: float, top: float):
    """A mask datablock with one rectangle, in mask space (a square of side max(W, H) centred on the
    frame, y up, 0..1)."""
    mask = bpy.data.masks.new(name=name)
    spline = mask.layers.new(name="matte").splines.new()
    spline.points.add(3)
    for point, co in zip(spline.points, [(left, bottom), (right, bottom), (right, top), (left, top)]):
        point.co = co
        point.handle_left_type = point.handle_right_type = "VECTOR"
    return mask


def png(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def operator_error(operator, **options) -> str:
    """The message of an operator that reports an error (scripts see it raised)."""
    try:
        operator(**options)
    except RuntimeError as exc:
        return str(exc)
    raise AssertionError(f"{operator} did not fail")


def sequencer_context(scene) -> dict:
    """A context for the sequencer's own operators (duplicate, copy, paste): headless Blender has a window
    but no sequencer area, so its first area becomes one."""
    window = bpy.context.window_manager.windows[0]
    area = window.screen.areas[0]
    area.type = "SEQUENCE_EDITOR"
    region = next(region for region in area.regions if region.type == "WINDOW")
    if hasattr(bpy.context.workspace, "sequencer_scene"):  # 5.x: the sequencer edits its own scene
        bpy.context.workspace.sequencer_scene = scene
    return {"window": window, "area": area, "region": region, "scene": scene}


def shot_strips(scene, folder: Path, count: int) -> list:
    """`count` source strips on channel 1, each with its own matte strip above it, 10 frames apart
    (the first is new_scene's "source" with "left mattes")."""
    from videograin.blender_addon.timeline import all_strips_of

    source_dir, mattes_dir = folder / "source", folder / "mattes"
    strips = [all_strips_of(scene)["source"]]
    for index in range(1, count):
        strips.append(image_strip(scene, f"shot {index + 1}", source_dir, 1, start=START + 10 * index))
        image_strip(scene, f"shot {index + 1} mattes", mattes_dir, 2, start=START + 10 * index).mute = True
    return strips
