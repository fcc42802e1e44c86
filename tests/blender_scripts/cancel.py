"""Edits driven by the timer: cancelled mid-edit, the timeline is as it was and no results folder is
left (not even an empty one); the panel's step preview is there while an edit runs and goes when it ends."""

import sys
import tempfile
import time
from pathlib import Path

import bpy

from scene_setup import (configure_edit, finish, limit, new_scene, register_addon, run_until_done, strip_summary,
                         tick_until)

register_addon()
from videograin.blender_addon import previews, runs  # noqa: E402

folder = Path(tempfile.mkdtemp())
scene, source, mattes, frames = new_scene(folder)
bpy.ops.wm.save_as_mainfile(filepath=str(folder / "project.blend"))
vg = configure_edit(scene, sys.argv[1], steps=400)
assert bpy.ops.videograin.check_engine(wait=True) == {"FINISHED"}  # an edit without `wait` needs an answer first
before = strip_summary(scene)
assert bpy.ops.videograin.edit() == {"FINISHED"}
assert (folder / "videograin_results").is_dir()  # the edit's staging folder is in there
tick_until(lambda: vg.phase in ("invert", "edit"))
assert bpy.ops.videograin.cancel() == {"FINISHED"}
run_until_done()
assert not vg.running and vg.status == "Cancelled" and vg.error == "", (vg.status, vg.error)
assert strip_summary(scene) == before
assert not (folder / "videograin_results").exists(), list((folder / "videograin_results").iterdir())

vg.steps = 10  # previews come every 5 edit steps
key = source["videograin_key"]
assert previews.preview_of(key) is None
assert bpy.ops.videograin.edit() == {"FINISHED"}
shown = []
deadline = time.monotonic() + limit(120)
while runs.tick() is not None:
    assert time.monotonic() < deadline, vg.status
    preview = previews.preview_of(key)
    if preview is not None:
        shown.append((preview.image_size[0], preview.image_size[1], len(preview.image_pixels_float)))
    time.sleep(0.02)
assert vg.status.startswith("Done"), (vg.status, vg.error)
assert shown and all(w > 0 and n == 4 * w * h for w, h, n in shown), shown
assert previews.preview_of(key) is None, "the preview outlived its edit"
finish()
