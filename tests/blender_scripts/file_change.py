"""Opening another file mid-edit stops the edit on the engine and leaves no staging folder; a file saved
mid-edit opens ready to edit again."""

import sys
import tempfile
import time
from pathlib import Path

import bpy

from scene_setup import configure_edit, finish, limit, new_scene, register_addon

register_addon()
from videograin.blender_addon import operators  # noqa: E402
from videograin.blender_addon.engine_link import connect  # noqa: E402

folder = Path(tempfile.mkdtemp())
scene, source, mattes, frames = new_scene(folder)
blend = folder / "project.blend"
bpy.ops.wm.save_as_mainfile(filepath=str(blend))
configure_edit(scene, sys.argv[1], steps=400)
assert bpy.ops.videograin.check_engine(wait=True) == {"FINISHED"}  # an edit without `wait` needs an answer first
assert bpy.ops.videograin.edit() == {"FINISHED"}
job = operators._sessions[scene.name].job
deadline = time.monotonic() + limit(60)
while scene.videograin.phase not in ("invert", "edit"):
    assert operators.tick(scene.name) is not None and time.monotonic() < deadline
    time.sleep(0.05)
bpy.ops.wm.save_mainfile()  # saved with the edit running

bpy.ops.wm.open_mainfile(filepath=str(blend))
assert operators._sessions == {}
client = connect(sys.argv[1])
deadline = time.monotonic() + limit(30)
while client.status(job)[0]["state"] != "cancelled":
    assert time.monotonic() < deadline, client.status(job)
    time.sleep(0.1)
client.close()
results = folder / "videograin_results"
assert not results.exists() or not any(results.iterdir()), list(results.iterdir())

scene = bpy.context.scene
vg = scene.videograin
assert not vg.running and "interrupted" in vg.status, (vg.running, vg.status)
vg.steps = 2
assert bpy.ops.videograin.edit(wait=True) == {"FINISHED"}
assert vg.status.startswith("Done"), (vg.status, vg.error)
finish()
