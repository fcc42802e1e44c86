"""Start Engine runs `videograin serve` with the configured Python; Check Engine talks to it. Its log and
connection file live in the add-on's own folder (under BLENDER_USER_RESOURCES here), and a clean stop
leaves the log there and nothing in the temp folder."""

import os
import tempfile
from pathlib import Path

import bpy

from scene_setup import finish, register_addon

tempfile.tempdir = tempfile.mkdtemp()  # to see that nothing lands in the temp folder
register_addon()
from videograin.blender_addon import engine_ops, jobs  # noqa: E402

known = Path(os.environ["BLENDER_USER_RESOURCES"]) / "datafiles" / "videograin"
vg = bpy.context.scene.videograin
vg.engine_python, vg.engine_args = os.environ["VIDEOGRAIN_ENGINE_PYTHON"], "--model tiny --device cpu"
assert bpy.ops.videograin.start_engine(wait=True) == {"FINISHED"}
assert Path(vg.connection_file).parent == known and vg.status == "Engine ready", (vg.connection_file, vg.status)
assert bpy.ops.videograin.check_engine(wait=True) == {"FINISHED"}
assert "on cpu, model tiny" in vg.status, vg.status
watch = jobs.engine_watch(vg.connection_file)
assert watch.alive and watch.last_heard is not None
log = engine_ops.engine_log()
assert log.parent == known / "logs" and "videograin engine on" in log.read_text(), log

process = engine_ops.local_process()
assert bpy.ops.videograin.stop_engine() == {"FINISHED"}
assert process.poll() is not None
assert not Path(vg.connection_file).exists() and log.exists() and engine_ops.engine_log() == log
assert os.listdir(tempfile.tempdir) == [], os.listdir(tempfile.tempdir)

logs = sorted((known / "logs").iterdir())
vg.engine_python = "/nonexistent/python"
try:
    bpy.ops.videograin.start_engine(wait=True)
    raise AssertionError("started with a missing Python")
except RuntimeError as exc:
    assert "Cannot start the engine" in str(exc), exc
assert sorted((known / "logs").iterdir()) == logs  # a start that failed keeps no log
finish()
