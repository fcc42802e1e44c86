"""Each strip keeps its own edit, in the .blend: three strips with three edits (one region on a mask
datablock) are saved and reopened, and the panel shows each strip's own edit, also after a rename and a
move to another channel. Duplicating a strip copies its edit (an independent copy), as copy and paste
does; a strip with none starts one, or copies another's."""

import tempfile
from pathlib import Path

import bpy

from recording_layout import draw
from scene_setup import (configure_edit, finish, image_strip, new_scene, operator_error, rectangle_mask,
                         register_addon, sequencer_context, shot_strips)

register_addon()
from videograin.blender_addon import edit_ops  # noqa: E402

folder = Path(tempfile.mkdtemp())
scene, *_ = new_scene(folder)
strips = shot_strips(scene, folder, 3)
edits = {"source": ("iron man", "left mattes", 3), "shot 2": ("spider man", "shot 2 mattes", 4),
         "shot 3": ("robot", "shot 3 mattes", 5)}
for strip in strips:
    phrase, matte, steps = edits[strip.name]
    edit = configure_edit(scene, "engine.json", steps=steps, strip=strip, matte=matte)
    edit.prompt = f"a {phrase} jogging under cherry blossoms"
    edit.regions[0].phrase = phrase
mask = rectangle_mask("robot", 0.1, 0.45, 0.45, 0.75)
strips[2].videograin.regions[0].matte_source, strips[2].videograin.regions[0].mask = "MASK", mask


def shown_edit(strip) -> tuple:
    """What the Edit panel shows with `strip` active: the prompt it draws, and whose edit that is."""
    scene.sequence_editor.active_strip = strip
    prompts = [call[1][0] for call in draw(bpy.context) if call[0] == "prop" and call[1][1] == "prompt"]
    assert len(prompts) == 1, prompts
    return prompts[0].prompt, [r.phrase for r in prompts[0].regions], prompts[0].steps


def expected(name: str) -> tuple:
    phrase, _, steps = edits[name]
    return f"a {phrase} jogging under cherry blossoms", [phrase], steps


blend = folder / "three shots.blend"
bpy.ops.wm.save_as_mainfile(filepath=str(blend))
bpy.ops.wm.open_mainfile(filepath=str(blend))
scene = bpy.context.scene
strips = {strip.name: strip for strip in scene.sequence_editor.strips_all if strip.channel == 1}
assert sorted(strips) == sorted(edits), sorted(strips)
for name, strip in strips.items():
    assert shown_edit(strip) == expected(name), (name, shown_edit(strip))
assert strips["shot 3"].videograin.regions[0].mask == bpy.data.masks["robot"], "the mask stays the region's"
assert strips["shot 2"].videograin.regions[0].strip == "shot 2 mattes"

# Renamed and moved to another channel: the edit goes with the strip.
moved = strips["shot 2"]
moved.name, moved.channel = "the spider shot", 4
assert shown_edit(moved) == expected("shot 2")

# Duplicated (Shift+D): the copy carries the edit, an independent copy of it. Its list of takes comes
# along too, but those strips lie above the original: they are not the copy's takes once it moves.
override = sequencer_context(scene)
for strip in scene.sequence_editor.strips_all:
    strip.select = False
original = strips["source"]
result = image_strip(scene, "source edit", folder / "source", 5)
take = original.videograin.takes.add()
take.strip, take.prompt = result.name, original.videograin.prompt
assert edit_ops.own_takes(original) == [(0, result)]
original.select = True
scene.sequence_editor.active_strip = original
with bpy.context.temp_override(**override):
    assert bpy.ops.sequencer.duplicate_move() == {"FINISHED"}
copy = scene.sequence_editor.active_strip
assert copy != original and copy.name != original.name
assert shown_edit(copy) == expected("source") and copy.videograin.regions[0].strip == "left mattes"
copy.videograin.prompt = "a knight jogging under cherry blossoms"
assert original.videograin.prompt == expected("source")[0], "the duplicate's edit is its own"
copy.frame_start += 100
assert len(copy.videograin.takes) == 1 and edit_ops.own_takes(copy) == [] and edit_ops.own_takes(original)
scene.sequence_editor.active_strip = copy
assert not [call for call in draw(bpy.context) if call[0] == "operator" and call[1][0] == "videograin.take_show"]
assert bpy.ops.videograin.take_show(index=0) == {"CANCELLED"} and not result.mute

# Copied and pasted: the pasted strip carries the edit too.
for strip in scene.sequence_editor.strips_all:
    strip.select = False
strips["shot 3"].select = True
with bpy.context.temp_override(**override):
    assert bpy.ops.sequencer.copy() == {"FINISHED"} and bpy.ops.sequencer.paste() == {"FINISHED"}
pasted = [s for s in scene.sequence_editor.strips_all if s.select and s != strips["shot 3"]]
assert len(pasted) == 1 and shown_edit(pasted[0])[0] == expected("shot 3")[0], [s.name for s in pasted]
# Blender's copy buffer does not carry the mask the edit points at: the region finds it again by name.
scene.sequence_editor.active_strip = pasted[0]
assert "No engine is running" in operator_error(bpy.ops.videograin.edit)  # the regions are checked first
assert pasted[0].videograin.regions[0].mask == bpy.data.masks["robot"]

# A strip with no edit starts an empty one, or copies another strip's.
blank = scene.sequence_editor.strips_all["shot 2 mattes"]
scene.sequence_editor.active_strip = blank
assert not blank.videograin.enabled
assert bpy.ops.videograin.edit_new(copy_from="the spider shot") == {"FINISHED"}
assert shown_edit(blank) == expected("shot 2") and len(blank.videograin.takes) == 0
blank.videograin.regions[0].phrase = "spider"
assert moved.videograin.regions[0].phrase == "spider man"
finish()
