"""With no engine, Edit says so in plain words and changes nothing. A connection file whose engine does
not answer never holds the operator up: the engine is asked on a background thread, and Edit answers
from what that found so far; the panel shows the engine's state."""

import json
import tempfile
from pathlib import Path

import bpy

from scene_setup import configure_edit, finish, new_scene, register_addon, strip_summary

register_addon()
from videograin.blender_addon import jobs  # noqa: E402


def edit_error(**options) -> str:
    try:
        bpy.ops.videograin.edit(**options)
    except RuntimeError as exc:  # an operator that reports an error raises in scripts
        return str(exc)
    raise AssertionError("edit ran without an engine")


folder = Path(tempfile.mkdtemp())
scene, *_ = new_scene(folder)
bpy.ops.wm.save_as_mainfile(filepath=str(folder / "project.blend"))
vg = configure_edit(scene, str(folder / "missing.json"))
before = strip_summary(scene)
assert "No engine is running" in edit_error(), vg.error  # a missing file is known at once
assert "No engine is running" in vg.error and not vg.running

dead = folder / "dead.json"
dead.write_text(json.dumps({"address": "tcp://127.0.0.1:9", "key": "00" * 32}))
scene.videograin.connection_file = str(dead)
watch = jobs.engine_watch(str(dead))
assert "Waiting for the engine at tcp://127.0.0.1:9" in edit_error()
assert watch.state == "connecting", "Edit waited for the engine's hello"
assert "does not answer" in edit_error(wait=True), vg.error  # a script may wait for the answer
assert watch.state == "silent", watch.state

vg.prompt = "a robot"  # the phrase is checked before any engine is asked
assert "'iron man' is not in the prompt" in edit_error(), vg.error
assert strip_summary(scene) == before
assert not (folder / "videograin_results").exists()
finish()
