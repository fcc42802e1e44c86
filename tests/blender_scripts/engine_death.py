"""An engine the add-on started dies mid-edit: the tick that first runs after its process has exited
reports it, with the end of its log, on the strip's edit and the scene (no heartbeats to wait for);
the timeline is as it was."""

import os
import signal
import tempfile
from pathlib import Path

import bpy

from scene_setup import configure_edit, finish, new_scene, register_addon, strip_summary

register_addon()
from videograin.blender_addon import engine_ops, runs  # noqa: E402

folder = Path(tempfile.mkdtemp())
scene, source, mattes, frames = new_scene(folder)
bpy.ops.wm.save_as_mainfile(filepath=str(folder / "project.blend"))
vg = scene.videograin
vg.engine_python, vg.engine_args = os.environ["VIDEOGRAIN_ENGINE_PYTHON"], "--model tiny --device cpu --heartbeat 5"
assert bpy.ops.videograin.start_engine(wait=True) == {"FINISHED"}, vg.error
edit = configure_edit(scene, vg.connection_file, steps=400)
before = strip_summary(scene)
assert bpy.ops.videograin.check_engine(wait=True) == {"FINISHED"}  # an edit without `wait` needs an answer first
assert bpy.ops.videograin.edit() == {"FINISHED"}
assert runs.tick() is not None and runs.shot_of(source["videograin_key"]).session.job  # accepted, running

process = engine_ops.local_process()
process.send_signal(signal.SIGKILL)
process.wait()  # the exit is observable from here on
assert runs.tick() is None, "the shot outlived its engine"
assert not edit.running and edit.status == "Failed", (edit.status, edit.error)
assert edit.error.startswith("The engine exited (code -9)") and "videograin engine on" in edit.error, edit.error
assert vg.error == edit.error and engine_ops.local_process() is None
assert strip_summary(scene) == before and not any((folder / "videograin_results").glob("*"))
finish()
