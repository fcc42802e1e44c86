"""With no engine running, Edit says so in plain words and changes nothing."""

import json
import tempfile
from pathlib import Path

import bpy

from scene_setup import configure_edit, finish, new_scene, register_addon, strip_summary

register_addon()
folder = Path(tempfile.mkdtemp())
scene, *_ = new_scene(folder)
configure_edit(scene, str(folder / "missing.json"))
before = strip_summary(scene)
vg = scene.videograin
try:
    bpy.ops.videograin.edit()
    raise AssertionError("edit ran without an engine")
except RuntimeError as exc:  # an operator that reports an error raises in scripts
    assert "No engine is running" in str(exc), exc
assert "No engine is running" in vg.error and not vg.running

dead = folder / "dead.json"
dead.write_text(json.dumps({"address": "tcp://127.0.0.1:9", "key": "00" * 32}))
vg.connection_file = str(dead)
try:
    bpy.ops.videograin.edit()
    raise AssertionError("edit ran without an engine")
except RuntimeError:
    pass
assert "does not answer" in vg.error, vg.error

vg.prompt = "a robot"  # the phrase is checked before any engine is asked
try:
    bpy.ops.videograin.edit()
except RuntimeError:
    pass
assert "'iron man' is not in the prompt" in vg.error, vg.error
assert strip_summary(scene) == before
finish()
