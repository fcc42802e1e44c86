"""Source and matte strips chosen by name stay chosen when renamed, before and after a save and reload,
and a duplicate carrying the same stamp does not take their place; the edit still runs."""

import sys
import tempfile
from pathlib import Path

import bpy

from scene_setup import configure_edit, finish, new_scene, register_addon

register_addon()
from videograin.blender_addon import operators  # noqa: E402
from videograin.blender_addon.properties import referenced_strip  # noqa: E402
from videograin.blender_addon.timeline import all_strips_of, strips_of  # noqa: E402

folder = Path(tempfile.mkdtemp())
scene, source, mattes, frames = new_scene(folder)
configure_edit(scene, sys.argv[1])
vg = scene.videograin
vg.source_strip = "source"
scene.sequence_editor.active_strip = mattes  # not the source: the reference must do the work
source.name, mattes.name = "take 3", "take 3 mattes"
assert (vg.source_strip, vg.regions[0].strip) == ("take 3", "take 3 mattes"), (vg.source_strip, vg.regions[0].strip)
assert operators.source_strip(scene) == source

blend = folder / "project.blend"
bpy.ops.wm.save_as_mainfile(filepath=str(blend))
bpy.ops.wm.open_mainfile(filepath=str(blend))
scene = bpy.context.scene
vg = scene.videograin
strips = all_strips_of(scene)
strips["take 3"].name, strips["take 3 mattes"].name = "hero", "hero mattes"
assert (vg.source_strip, vg.regions[0].strip) == ("hero", "hero mattes")

# A duplicate (as Shift+D makes) carries the same stamp under another name; the original stays chosen.
copy = strips_of(scene).new_image(name="hero copy", filepath=str(folder / "source" / "000.png"), channel=7, frame_start=40)
copy["videograin_key"] = strips["hero"]["videograin_key"]
assert referenced_strip(vg, "source_strip") == strips["hero"]

assert bpy.ops.videograin.edit(wait=True) == {"FINISHED"}
assert vg.status.startswith("Done") and vg.result_strip == "hero edit", (vg.status, vg.error, vg.result_strip)
result = strips[vg.result_strip]
assert result.frame_final_start == strips["hero"].frame_final_start and result.channel > strips["hero"].channel

# A deleted source is said, not replaced by the active strip.
for name in ("hero copy", "hero"):
    strips_of(scene).remove(strips[name])
try:
    bpy.ops.videograin.edit(wait=True)
    raise AssertionError("edited without its source")
except RuntimeError as exc:
    assert "source strip 'hero' is gone" in str(exc), exc
finish()
