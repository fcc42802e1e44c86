"""Start Engine runs `videograin serve` with the configured Python; Check Engine talks to it."""

import os

import bpy

from scene_setup import finish, register_addon

register_addon()
from videograin.blender_addon import operators  # noqa: E402

vg = bpy.context.scene.videograin
vg.engine_python, vg.engine_args = os.environ["VIDEOGRAIN_ENGINE_PYTHON"], "--model tiny --device cpu"
assert bpy.ops.videograin.start_engine(wait=True) == {"FINISHED"}
assert vg.connection_file.endswith("engine.json") and vg.status == "Engine ready"
assert bpy.ops.videograin.check_engine() == {"FINISHED"}
assert "on cpu, model tiny" in vg.status, vg.status
process = operators._engine["local"].process
assert bpy.ops.videograin.stop_engine() == {"FINISHED"}
assert process.poll() is not None
vg.engine_python = "/nonexistent/python"
try:
    bpy.ops.videograin.start_engine(wait=True)
    raise AssertionError("started with a missing Python")
except RuntimeError as exc:
    assert "Cannot start the engine" in str(exc), exc
finish()
