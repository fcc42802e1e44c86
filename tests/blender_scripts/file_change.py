"""Opening another file mid-edit stops the edit on the engine and leaves no staging folder; a file saved
mid-edit opens ready to edit again."""

import sys
import tempfile
import time
from pathlib import Path

import bpy

from scene_setup import configure_edit, finish, limit, new_scene, register_addon, tick_until

register_addon()
from videograin.blender_addon import runs  # noqa: E402
from videograin.blender_addon.engine_link import connect  # noqa: E402

folder = Path(tempfile.mkdtemp())
scene, source, mattes, frames = new_scene(folder)
blend = folder / "project.blend"
bpy.ops.wm.save_as_mainfile(filepath=str(blend))
vg = configure_edit(scene, sys.argv[1], steps=400)
assert bpy.ops.videograin.check_engine(wait=True) == {"FINISHED"}  # an edit without `wait` needs an answer first
assert bpy.ops.videograin.edit() == {"FINISHED"}
job = runs.shot_of(source["videograin_key"]).session.job
tick_until(lambda: vg.phase in ("invert", "edit"))
bpy.ops.wm.save_mainfile()  # saved with the edit running

bpy.ops.wm.open_mainfile(filepath=str(blend))
assert runs.shots() == []
client = connect(sys.argv[1])
deadline = time.monotonic() + limit(30)
while client.status(job)[0]["state"] != "cancelled":
    assert time.monotonic() < deadline, client.status(job)
    time.sleep(0.1)
client.close()
results = folder / "videograin_results"
assert not results.exists() or not any(results.iterdir()), list(results.iterdir())

scene = bpy.context.scene
vg = scene.sequence_editor.active_strip.videograin
assert not vg.running and "interrupted" in vg.status, (vg.running, vg.status)
vg.steps = 2
assert bpy.ops.videograin.edit(wait=True) == {"FINISHED"}
assert vg.status.startswith("Done"), (vg.status, vg.error)
finish()
