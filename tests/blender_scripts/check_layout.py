"""Check with a script (`wait=True`): the job Edit would send, checked by the engine without running it.
The layout picture of the playhead's frame lands in one image datablock, packed (no file), and the
engine's warnings in the scene's properties and the panel: here a 3-px wire that vanishes from the
coarse attention resolutions. Refused jobs show their error as Edit shows it, and leave nothing behind.

argv: the engine's connection file, the layout's width for one frame column."""

import os
import sys
import tempfile
from pathlib import Path

import bpy
import numpy as np

from recording_layout import draw, labels
from scene_setup import FRAMES, HEIGHT, START, WIDTH, configure_edit, finish, new_scene, operator_error, \
    preferences, register_addon, strip_summary

tempfile.tempdir = tempfile.mkdtemp()  # to see that nothing is left in the temp folder
register_addon()
from videograin.blender_addon.check_report import LAYOUT_IMAGE  # noqa: E402

folder = Path(tempfile.mkdtemp(dir=Path(tempfile.tempdir).parent))
scene, source, mattes, frames = new_scene(folder)
bpy.ops.wm.save_as_mainfile(filepath=str(folder / "project.blend"))
vg = configure_edit(scene, sys.argv[1])
one_column = int(sys.argv[2])
vg.prompt = "an iron man holding a wire under cherry blossoms"
wire = bpy.data.images.new("wire", WIDTH, HEIGHT)  # a painted still: a vertical wire 3 px wide
pixels = np.zeros((HEIGHT, WIDTH, 4), np.float32)
pixels[..., 3] = 1.0
pixels[:, 2:5, :3] = 1.0
wire.pixels.foreach_set(pixels.ravel())
bpy.ops.videograin.region_add()
vg.regions[1].phrase, vg.regions[1].matte_source, vg.regions[1].image = "wire", "IMAGE", wire
before = strip_summary(scene)


def left_behind() -> list:
    """Files the check left: in the temp folder, or beside the .blend."""
    return os.listdir(tempfile.tempdir) + [p.name for p in folder.iterdir() if p.name not in ("project.blend", "source", "mattes")]


# Refused: a phrase not in the prompt (found before anything is exported, as Edit finds it), and a job
# the engine refuses (a depth ControlNet needs its estimator's folder). Nothing is made or kept.
vg.regions[1].phrase = "cable"
message = operator_error(bpy.ops.videograin.check, wait=True)
assert "The phrase 'cable' is not in the prompt" in message and vg.error in message, (message, vg.error)
vg.regions[1].phrase, vg.control_type = "wire", "depth"
message = operator_error(bpy.ops.videograin.check, wait=True)
assert "control.type 'depth' needs control.path" in vg.error and vg.error in message, (message, vg.error)
assert vg.check_status == "" and len(vg.check_findings) == 0 and LAYOUT_IMAGE not in bpy.data.images
assert left_behind() == [] and strip_summary(scene) == before, (left_behind(), strip_summary(scene))
vg.control_type = "canny"

# Checked, by path (the engine shares this disk) and with pixels: the same verdict and picture.
scene.frame_set(START + 2)
assert bpy.ops.videograin.check(wait=True) == {"FINISHED"}, vg.error
assert vg.error == "" and vg.check_ok and vg.check_status.startswith("Ready to edit, with"), vg.check_status
assert vg.check_frame == START + 2 and "estimate" in vg.check_estimate, (vg.check_frame, vg.check_estimate)
vanishing = [f.message for f in vg.check_findings if f.code == "region_vanishes"]
assert len(vanishing) == 1 and "region 'wire' vanishes" in vanishing[0], [(f.code, f.message) for f in vg.check_findings]
assert not any(f.error for f in vg.check_findings)
image = bpy.data.images[LAYOUT_IMAGE]
assert image.packed_file is not None and image.size[0] == one_column and image.size[1] > 5 * 256 * HEIGHT // WIDTH, tuple(image.size)


def picture() -> np.ndarray:
    values = np.empty(image.size[0] * image.size[1] * 4, np.float32)
    image.pixels.foreach_get(values)
    return values.reshape(image.size[1], image.size[0], 4)


on_frame_2 = picture()
preferences().media_transfer = "INLINE"
assert bpy.ops.videograin.check(wait=True) == {"FINISHED"}, vg.error
assert np.array_equal(picture(), on_frame_2) and [f.message for f in vg.check_findings if f.code == "region_vanishes"] == vanishing
preferences().media_transfer = "AUTO"

# Past the strip's end the last frame is shown, in the same datablock.
scene.frame_set(START + FRAMES + 5)
assert bpy.ops.videograin.check(wait=True) == {"FINISHED"}, vg.error
assert vg.check_frame == START + FRAMES - 1 and bpy.data.images[LAYOUT_IMAGE] == image
assert [i.name for i in bpy.data.images if i.name.startswith(LAYOUT_IMAGE)] == [LAYOUT_IMAGE]
assert image.size[0] == one_column and not np.array_equal(picture(), on_frame_2)  # another frame
assert left_behind() == [] and strip_summary(scene) == before, (left_behind(), strip_summary(scene))

# The panel shows it all: each finding wrapped, the estimate, where the picture is.
calls = draw(bpy.context)
assert any(c[0] == "operator" and c[1][0] == "videograin.check" and c[3] for c in calls), "no Check button"
assert "Check" in [c[2]["text"] for c in calls if c[0] == "label" and c[2].get("icon") == "CHECKMARK"]
assert "region 'wire' vanishes" in " ".join(labels(calls, "ERROR")), labels(calls, "ERROR")
texts = [c[2]["text"] for c in calls if c[0] == "label"]
assert " ".join(vanishing[0].split()) in " ".join(texts) and max(map(len, texts)) <= 48, "messages are wrapped whole"
assert " ".join(vg.check_estimate.split()) in " ".join(texts) and vg.check_estimate.startswith(labels(calls, "TIME")[0])
assert any(f"Layout of frame {START + FRAMES - 1}" in text for text in labels(calls, "IMAGE_DATA"))

# A job whose edit would fail (weights that are nowhere): its errors come first, and the panel says so.
vg.model = "no-such-org/no-such-model"
assert bpy.ops.videograin.check(wait=True) == {"FINISHED"}, vg.error
errors = [f.code for f in vg.check_findings if f.error]
assert not vg.check_ok and vg.check_status == f"The edit would fail: {len(errors)} errors.", vg.check_status
# Not a model this engine loads, its weights nowhere, nor its ControlNet's.
assert errors == ["model_unavailable"] * 3 and all(f.error for f in vg.check_findings[:3]), errors
assert "is not one this engine loads" in vg.check_findings[0].message, vg.check_findings[0].message
calls = draw(bpy.context)
shown = labels(calls, "CANCEL")  # the box's heading, then the first line of each error
assert shown[0] == "Check" and len(shown) == 4, shown
assert all(f.message.startswith(line) for f, line in zip(vg.check_findings, shown[1:])), shown
finish()
