"""A strip's edit goes with it through renames, a save and reload; its matte strip, chosen by name,
stays chosen when renamed; a strip carrying the same stamp (as a duplicate does) does not take the
result; a deleted matte strip is said before anything is sent."""

import sys
import tempfile
from pathlib import Path

import bpy

from scene_setup import configure_edit, finish, new_scene, operator_error, register_addon

register_addon()
from videograin.blender_addon.timeline import all_strips_of, stamp, strips_of  # noqa: E402

folder = Path(tempfile.mkdtemp())
scene, source, mattes, frames = new_scene(folder)
configure_edit(scene, sys.argv[1])
source.name, mattes.name = "take 3", "take 3 mattes"
assert source.videograin.regions[0].strip == "take 3 mattes"

blend = folder / "project.blend"
bpy.ops.wm.save_as_mainfile(filepath=str(blend))
bpy.ops.wm.open_mainfile(filepath=str(blend))
scene = bpy.context.scene
strips = all_strips_of(scene)
strips["take 3"].name, strips["take 3 mattes"].name = "hero", "hero mattes"
hero = strips["hero"]
edit = hero.videograin
assert edit.enabled and edit.prompt.startswith("an iron man") and edit.regions[0].strip == "hero mattes"

# A strip with the same stamp under another name (as a copy made elsewhere would be): the result still
# lands above the strip that was edited.
copy = strips_of(scene).new_image(name="hero copy", filepath=str(folder / "source" / "000.png"), channel=7, frame_start=40)
copy["videograin_key"] = stamp(hero)
scene.sequence_editor.active_strip = hero
assert bpy.ops.videograin.edit(wait=True) == {"FINISHED"}
assert edit.status.startswith("Done") and edit.result_strip == "hero edit", (edit.status, edit.error, edit.result_strip)
result = strips[edit.result_strip]
assert result.frame_final_start == hero.frame_final_start and result.channel > hero.channel
assert hero["videograin_key"] != copy["videograin_key"], "the edited strip's stamp is its own now"

# A deleted matte strip is said, and nothing is sent.
strips_of(scene).remove(strips["hero mattes"])
assert "Region 'iron man' has no matte" in operator_error(bpy.ops.videograin.edit, wait=True)
finish()
