"""Cancel mid-edit: the timeline is as it was and no result folder is left."""

import sys
import tempfile
import time
from pathlib import Path

import bpy

from scene_setup import configure_edit, finish, new_scene, register_addon, run_until_done, strip_summary

register_addon()
from videograin.blender_addon import operators  # noqa: E402

folder = Path(tempfile.mkdtemp())
scene, source, mattes, frames = new_scene(folder)
bpy.ops.wm.save_as_mainfile(filepath=str(folder / "project.blend"))
configure_edit(scene, sys.argv[1], steps=400)
before = strip_summary(scene)
vg = scene.videograin
assert bpy.ops.videograin.edit() == {"FINISHED"}
deadline = time.monotonic() + 60
while vg.phase not in ("invert", "edit"):
    assert operators.tick(scene.name) is not None and time.monotonic() < deadline
    time.sleep(0.05)
assert bpy.ops.videograin.cancel() == {"FINISHED"}
run_until_done(scene, limit_s=30)
assert not vg.running and vg.status == "Cancelled" and vg.error == "", (vg.status, vg.error)
assert strip_summary(scene) == before
results = folder / "videograin_results"
assert not results.exists() or not any(results.iterdir()), list(results.iterdir())
finish()
