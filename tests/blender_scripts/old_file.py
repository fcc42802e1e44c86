"""A file saved by the version that kept the one edit on the scene (`scene.videograin`) opens with that
edit moved onto its source strip: prompts, settings (enum values included), regions with their mask
datablock and matte strip; the last result becomes the strip's first take, and the scene keeps none of
the old values.

The old file is made here as that version stored it: its values written straight into the scene's
`videograin` properties (the layout seen in a file saved by the add-on at 1a54be6: enums as their index,
regions as a list of groups, datablocks as pointers). argv[1], when given, is such a file saved by the
old add-on itself, opened instead."""

import sys
import tempfile
from pathlib import Path

import bpy

from recording_layout import draw, labels
from scene_setup import finish, new_scene, rectangle_mask, register_addon

register_addon()
from videograin.blender_addon.timeline import all_strips_of, stamp  # noqa: E402

folder = Path(tempfile.mkdtemp())
if len(sys.argv) > 1:
    old_file = Path(sys.argv[1])
else:
    scene, source, mattes, frames = new_scene(folder)
    stored = scene.videograin
    stored["connection_file"], stored["source_strip_key"], stored["source_strip_name"] = "engine.json", stamp(source), "source"
    stored["prompt"], stored["source_prompt"], stored["steps"], stored["control_type"] = \
        "an iron man jogging", "a man jogging", 7, 3  # control "none"
    stored["regions"] = [
        {"color": [0.3, 1.0, 0.454], "phrase": "iron man", "matte_source": 0, "mask": rectangle_mask("runner", .1, .4, .5, .8)},
        {"color": [0.608, 0.3, 1.0], "phrase": "", "matte_source": 1, "strip_key": stamp(mattes), "strip_name": "left mattes"},
    ]
    stored["active_region"], stored["result_strip"] = 1, "left mattes"
    scene.sequence_editor.active_strip = mattes  # not the source: the stored reference must decide
    old_file = folder / "old.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(old_file))
    bpy.ops.wm.read_homefile(use_empty=True)

bpy.ops.wm.open_mainfile(filepath=str(old_file))
scene = bpy.context.scene
strips = all_strips_of(scene)
edit = strips["source"].videograin
assert edit.enabled and (edit.prompt, edit.source_prompt, edit.steps, edit.control_type) == \
    ("an iron man jogging", "a man jogging", 7, "none"), (edit.prompt, edit.steps, edit.control_type)
assert [(r.phrase, r.matte_source) for r in edit.regions] == [("iron man", "MASK"), ("", "STRIP")]
assert edit.regions[0].mask == bpy.data.masks["runner"] and edit.regions[1].strip == "left mattes"
assert edit.active_region == 1 and [take.strip for take in edit.takes] == ["left mattes"]
assert not strips["left mattes"].videograin.enabled
stored = scene.videograin
assert stored.connection_file == "engine.json", "the engine stays the scene's"
assert not {"prompt", "regions", "steps", "source_strip_key", "result_strip"} & set(stored.keys()), list(stored.keys())
assert "is now the edit of 'source'" in stored.status, stored.status

# The panel shows it as the source strip's edit; saved again, nothing moves twice.
scene.sequence_editor.active_strip = strips["source"]
assert any(call[0] == "prop" and call[1][1] == "prompt" and call[1][0] == edit for call in draw(bpy.context))
assert "source" in labels(draw(bpy.context), "SEQUENCE")
bpy.ops.wm.save_as_mainfile(filepath=str(folder / "new.blend"))
bpy.ops.wm.open_mainfile(filepath=str(folder / "new.blend"))
edit = all_strips_of(bpy.context.scene)["source"].videograin
assert edit.prompt == "an iron man jogging" and len(edit.regions) == 2 and len(edit.takes) == 1
finish()
