"""The sidebar panels draw in every state. Headless Blender has no window to draw in, so the panels draw
into a recording layout (recording_layout.py) that checks each call against Blender's real UILayout API
and each property against the real RNA of the data it names."""

import json
import tempfile
from pathlib import Path

import bpy
import cv2
import numpy as np

from recording_layout import RecordingLayout, draw, labels
from scene_setup import finish, limit, new_scene, register_addon

register_addon()
from videograin.blender_addon import panel, previews  # noqa: E402
from videograin.blender_addon.jobs import engine_watch  # noqa: E402
from videograin.blender_addon.timeline import stamp  # noqa: E402

folder = Path(tempfile.mkdtemp())
scene, source, mattes, frames = new_scene(folder)
context = bpy.context


def operators_of(calls) -> list:
    return [(call[1][0], call[2].get("text")) for call in calls if call[0] == "operator"]


# A strip with no edit offers to start one; once another strip has an edit, to copy that.
sed = scene.sequence_editor
sed.active_strip = None
assert "Select the strip to edit" in labels(draw(context), "INFO")
sed.active_strip = mattes
assert ("videograin.edit_new", None) in operators_of(draw(context)) and "'left mattes' has no edit" in labels(draw(context), "INFO")
sed.active_strip = source
assert bpy.ops.videograin.edit_new() == {"FINISHED"}
vg = source.videograin
idle = draw(context)
assert not any(name in ("progress", "template_icon") for name, *_ in idle)
sed.active_strip = mattes
assert ("videograin.edit_new", "source") in operators_of(draw(context)), "no offer to copy the source's edit"
sed.active_strip = source
for matte_source in ("MASK", "STRIP", "IMAGE"):
    bpy.ops.videograin.region_add()
    vg.regions[-1].matte_source = matte_source
    draw(context)

# The engine's state, from its watch: a connection file whose engine never answers.
dead = folder / "dead.json"
dead.write_text(json.dumps({"address": "tcp://127.0.0.1:9", "key": "00" * 32}))
scene.videograin.connection_file = str(dead)
assert any("Waiting for the engine at tcp://127.0.0.1:9" in text for text in labels(draw(context), "TIME"))
engine_watch(str(dead)).wait(limit(10))
assert any("does not answer" in text for text in labels(draw(context), "ERROR"))

# Running while the engine does not answer: "waiting for the engine", not a frozen step count.
vg.running, vg.phase, vg.step, vg.total, vg.progress = True, "edit", 3, 10, 55.0
previews.show_preview(stamp(source), np.zeros((48, 64, 3), np.uint8))
running = draw(context)
edit_button = [call for call in running if call[0] == "operator" and call[1][0] == "videograin.edit"]
assert edit_button and not edit_button[0][3], "Edit must be disabled while an edit runs"
assert not [call for call in running if call[0] == "progress"] and "Waiting for the engine" in labels(running, "TIME")
icons = [call for call in running if call[0] == "template_icon"]
assert icons and icons[0][2]["icon_value"] == previews.preview_of(stamp(source)).icon_id, "no step preview"

# Track Matte on each region's row and under the active region (not for one already on a strip), greyed
# while a job runs; Show Mattes once a region has a tracked overlay.
vg.active_region = 0
row: list = []
panel.VIDEOGRAIN_UL_regions.draw_item(None, context, RecordingLayout(row), vg, vg.regions[0], 0, vg, "active_region", 0)
tracks = [call for call in row if call[0] == "operator" and call[1][0] == "videograin.track_matte"]
assert tracks and not tracks[0][3] and ("operator_setting", ("region", 0), {}, True) in row, row
vg.running = False
idle = draw(context)
assert any(c[0] == "operator" and c[1][0] == "videograin.track_matte" and c[3] for c in idle), "no Track Matte"
assert not any(c[0] == "prop" and c[1][1] == "show_mattes" for c in idle)
vg.regions[0].overlay_key = "tracked"
assert any(c[0] == "prop" and c[1][1] == "show_mattes" for c in draw(context))

# Attention maps of the strip's last edit, one per region (and the background), for the current frame.
maps = folder / "result" / "attention"
for name in ("iron_man", "cherry_blossoms"):
    (maps / name).mkdir(parents=True)
    cv2.imwrite(str(maps / name / "00001.png"), np.full((12, 16, 3), 200, np.uint8))
vg.regions[0].phrase, vg.regions[1].phrase, vg.background_phrase = "iron man", "spider man", "cherry blossoms"
vg.attention_folder, vg.attention_start = str(folder / "result"), scene.frame_current - 1
shown = [call[2]["icon_value"] for call in draw(context) if call[0] == "template_icon"]
assert previews.attention_of(scene, source, 0) is not None and previews.attention_of(scene, source, 3) is not None
assert [previews.attention_of(scene, source, i).icon_id for i in (0, 3)] == shown[-2:], shown
texts = [call[2].get("text") for call in draw(context) if call[0] == "label"]
assert {"iron man", "spider man", "cherry blossoms (background)"} <= set(texts)
assert texts.count(f"No map on frame {scene.frame_current}") == 1, texts  # spider man has none
scene.frame_set(scene.frame_current + 1)  # a frame with no maps at all
assert previews.attention_of(scene, source, 0) is None

vg.running, vg.error = False, "The engine at tcp://127.0.0.1:5000 does not answer: is it still running? " * 2
lines = [call for call in draw(context) if call[0] == "label" and call[2]["text"] in vg.error]
assert len(lines) > 1 and all(len(call[2]["text"]) <= 48 for call in lines), lines
finish()
