"""Edit Selected: three selected strips with edits, one of which the engine's check refuses (weights
that are nowhere): the other two are queued on one engine, each result lands above its own strip, and
the third is listed with its reason before anything is sent. A second batch is driven by the tick
while the user works elsewhere (another active strip, a rename): one shot is cancelled mid-queue and
leaves nothing, the other is a re-edit that keeps the earlier take muted and takes its inversion from
the engine's cache. The queue panel shows each shot's state and progress."""

import sys
import tempfile
from pathlib import Path

import bpy

from recording_layout import draw, labels
from scene_setup import (FRAMES, configure_edit, finish, new_scene, register_addon, run_until_done, shot_strips,
                         strip_summary, tick_until)

register_addon()
from videograin.blender_addon import runs  # noqa: E402
from videograin.blender_addon.timeline import all_strips_of  # noqa: E402

folder = Path(tempfile.mkdtemp())
scene, *_ = new_scene(folder)
one, two, three = shot_strips(scene, folder, 3)
for strip, phrase, matte in ((one, "iron man", "left mattes"), (two, "spider man", "shot 2 mattes"),
                             (three, "robot", "shot 3 mattes")):
    edit = configure_edit(scene, sys.argv[1], strip=strip, matte=matte)
    edit.prompt, edit.regions[0].phrase = f"a {phrase} jogging under cherry blossoms", phrase
three.videograin.model = "no-such-org/no-such-model"
bpy.ops.wm.save_as_mainfile(filepath=str(folder / "shots.blend"))
vg = scene.videograin


def pointers() -> set:
    return {strip.as_pointer() for strip in all_strips_of(scene)}


def new_strips(before: set) -> list:
    return [strip for strip in all_strips_of(scene) if strip.as_pointer() not in before]


# Every strip selected (the matte strips have no edit: they are not shots).
for strip in all_strips_of(scene):
    strip.select = True
before = pointers()
assert bpy.ops.videograin.edit_selected(wait=True) == {"FINISHED"}
assert [(r.code, r.message) for r in vg.refused] == [("shot 3", three.videograin.check_findings[0].message)], \
    [(r.code, r.message) for r in vg.refused]
assert "no-such-org/no-such-model" in vg.refused[0].message and "refused 'shot 3'" in vg.status, vg.status
assert vg.status.startswith("Queued 2 of 3 strips"), vg.status
assert not three.videograin.check_ok and three.videograin.error == vg.refused[0].message
added = new_strips(before)
assert len(added) == 2, strip_summary(scene)
for strip in (one, two):
    edit = strip.videograin
    assert edit.status.startswith("Done") and len(edit.takes) == 1, (strip.name, edit.status, edit.error)
    result = all_strips_of(scene)[edit.result_strip]
    assert result in added and result.channel > strip.channel and not result.mute
    assert (result.frame_final_start, result.frame_final_duration) == (strip.frame_final_start, FRAMES)
assert len(three.videograin.takes) == 0 and not three.videograin.running
first_take = all_strips_of(scene)[one.videograin.result_strip]
first_folder = sorted(Path(bpy.path.abspath(first_take.directory)).glob("*.png"))

# A second batch, followed by the tick: one's re-edit (a new prompt) and a long edit of two.
one.videograin.prompt = "an iron man jogging under cherry blossoms at night"
two.videograin.steps = 400
for strip in all_strips_of(scene):
    strip.select = strip in (one, two)
before = pointers()
assert bpy.ops.videograin.edit_selected() == {"FINISHED"}
assert [shot.name for shot in runs.shots() if shot.active] == ["source", "shot 2"]
scene.sequence_editor.active_strip = three  # the user works elsewhere meanwhile
one.name = "hero"
tick_until(lambda: two.videograin.phase in ("queued", "invert", "edit")
           and runs.shot_of(two["videograin_key"]).session.job)
calls = draw(bpy.context)
bars = [call[2]["text"] for call in calls if call[0] == "progress"]
assert len(bars) == 2 and any(text.startswith("Queued") or "/" in text for text in bars), bars
cancels = [call for call in calls if call[0] == "operator_setting" and call[1][0] == "strip"]
assert [call[1][1] for call in cancels] == ["hero", "shot 2"], cancels
assert bpy.ops.videograin.cancel(strip="shot 2") == {"FINISHED"}
run_until_done()
assert two.videograin.status == "Cancelled" and two.videograin.error == "" and len(two.videograin.takes) == 1
edit = one.videograin
assert edit.status.startswith("Done") and len(edit.takes) == 2, (edit.status, edit.error)
assert "inversion from the cache" in edit.takes[1].summary, edit.takes[1].summary
new_take = all_strips_of(scene)[edit.result_strip]
assert new_strips(before) == [new_take], "a cancelled shot adds nothing"
assert new_take.channel > one.channel and new_take.frame_final_start == one.frame_final_start and not new_take.mute
assert first_take.mute and edit.takes[0].strip == first_take.name, "the earlier take stays, muted"
assert sorted(Path(bpy.path.abspath(first_take.directory)).glob("*.png")) == first_folder
assert new_take.directory != first_take.directory
assert edit.takes[1].prompt.endswith("at night") and edit.takes[0].prompt.endswith("blossoms")

# The queue panel: how each shot ended; the take stack switches which take is shown.
texts = " ".join(labels(draw(bpy.context), "CHECKMARK") + labels(draw(bpy.context), "ERROR"))
assert "Done" in texts and "Cancelled" in texts, texts
scene.sequence_editor.active_strip = one
assert bpy.ops.videograin.take_show(index=0) == {"FINISHED"}
assert not first_take.mute and new_take.mute
assert bpy.ops.videograin.queue_clear() == {"FINISHED"} and runs.shots() == [] and len(vg.refused) == 0
finish()
