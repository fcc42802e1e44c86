"""Track Matte's keyframes and refusals. An animated mask gives its keyed frames, a painted image of any
size (Blender's new image is 1024²) its playhead frame, stretched to the render size. A region with no
mask, an empty mask, a playhead off the source, keys off the source or a region already on a strip is
refused in plain words, and nothing is written. A queued tracking cancels like an edit: the timeline
stays as it was."""

import sys
import tempfile
from pathlib import Path

import bpy
import numpy as np

from scene_setup import (FRAMES, HEIGHT, START, WIDTH, configure_edit, count_renders, finish, limit, new_scene,
                         operator_error, png, rectangle_mask, register_addon, run_until_done, strip_summary, tick_until)

register_addon()
from videograin.blender_addon import export, runs  # noqa: E402
from videograin.blender_addon.jobspec import FileRun  # noqa: E402
from videograin.blender_addon.timeline import all_strips_of  # noqa: E402
from videograin.protocol.client import EngineClient, EngineError  # noqa: E402

folder = Path(tempfile.mkdtemp())
scene, source, mattes, frames = new_scene(folder)
bpy.ops.wm.save_as_mainfile(filepath=str(folder / "project.blend"))
vg = configure_edit(scene, sys.argv[1])
region = vg.regions[0]
results = folder / "videograin_results"
before = strip_summary(scene)
track = bpy.ops.videograin.track_matte

# Refusals: each names what to fix; nothing is written, the timeline is unchanged.
assert "takes its mattes from a strip" in operator_error(track)
assert "Add a region first" in operator_error(track, region=3)
region.matte_source = "MASK"
assert "Region 'iron man' has no mask to track" in operator_error(track)
region.mask = bpy.data.masks.new("nothing drawn")
region.mask.layers.new(name="matte")
scene.frame_set(START + 2)
assert f"Region 'iron man': its mask is empty on frame {START + 2}: draw the region there" in operator_error(track)
region.mask = rectangle_mask("runner", 0.1, 0.45, 0.45, 0.75)
scene.frame_set(START + FRAMES)
assert f"Move the playhead into the source strip (frames {START}-{START + FRAMES - 1})" in operator_error(track)
keyed = rectangle_mask("keyed elsewhere", 0.1, 0.45, 0.45, 0.75)
keyed.keyframe_insert(data_path='layers["matte"].splines[0].points[1].co', frame=1)
region.mask = keyed
assert "The mask 'keyed elsewhere' is keyed on frames 1, none within the source strip's 10-13" in operator_error(track)
assert strip_summary(scene) == before and not results.exists() and vg.error

# An animated mask: its keyed frames (not the playhead's) are the keyframes, and come back as drawn.
mask = rectangle_mask("keyed", 0.1, 0.45, 0.45, 0.75)
for frame, x in ((START, 0.45), (START + 3, 0.6)):
    for index in (1, 2):
        mask.layers["matte"].splines[0].points[index].co.x = x
        mask.keyframe_insert(data_path=f'layers["matte"].splines[0].points[{index}].co', frame=frame)
region.mask = mask
scene.frame_set(START + 1)
assert track(wait=True) == {"FINISHED"}, vg.error
matte = all_strips_of(scene)[region.strip]
tracked = [png(Path(bpy.path.abspath(matte.directory)) / e.filename) == 255 for e in matte.elements]
for index in (0, 3):
    drawn = export.read_bmp(export.render_mask(scene, mask, [START + index], folder / f"drawn-{index}")[0]) >= 128
    assert np.array_equal(tracked[index], drawn), index
assert tracked[3].sum() > tracked[0].sum()  # the keys differ: both were sent

# A painted 1024² image, stretched to the render size: its lower half is the region.
painted = bpy.data.images.new("painted", 1024, 1024)
pixels = np.zeros((1024, 1024, 4), np.float32)
pixels[..., 3] = 1.0
pixels[:512, :, :3] = 1.0  # Blender rows run bottom-up
painted.pixels.foreach_set(pixels.ravel())
images = set(bpy.data.images)
region.matte_source, region.image = "IMAGE", painted
scene.frame_set(START + 2)
# ... sent as pixels, as when the engine cannot read our paths (a path track it refuses is sent again inline).
plain_run, renders = export.plain_run, count_renders()
export.plain_run = lambda *args: FileRun(str(folder / "not-on-the-engine's-disk"), 0, FRAMES, FRAMES)
assert track(wait=True) == {"FINISHED"}, vg.error
export.plain_run = plain_run
assert len(renders) == FRAMES, len(renders)  # the source, rendered (the painted image is written, not rendered)
assert tuple(painted.size) == (1024, 1024) and set(bpy.data.images) == images, "the user's image changed"
assert [s.type for s in all_strips_of(scene)].count("COLOR") == 1, "the region's last overlay stays behind"
matte = all_strips_of(scene)[region.strip]
key = png(Path(bpy.path.abspath(matte.directory)) / matte.elements[2].filename)
assert key.shape == (HEIGHT, WIDTH) and key[HEIGHT // 2 + 1 :].min() == 255 and key[: HEIGHT // 2 - 1].max() == 0

# Cancelled while queued behind another job: as an edit, nothing changes.
blocker_client = EngineClient(sys.argv[1])
settings = {"prompt": vg.prompt, "source_prompt": vg.source_prompt, "regions": [{"phrase": "iron man"}],
            "source": {"width": 64, "height": 64}, "steps": 400}
blocker = blocker_client.submit(settings, list(frames), [[np.full((HEIGHT, WIDTH), 255, np.uint8)] * FRAMES])
region.matte_source, region.image = "IMAGE", painted
summary, folders = strip_summary(scene), sorted(results.iterdir())
assert track() == {"FINISHED"} and vg.running
tick_until(lambda: vg.phase == "queued" and runs.shot_of(source["videograin_key"]).session.job)
assert bpy.ops.videograin.cancel() == {"FINISHED"}
run_until_done()
assert not vg.running and vg.status == "Cancelled" and vg.error == "", (vg.status, vg.error)
assert strip_summary(scene) == summary and sorted(results.iterdir()) == folders
blocker_client.cancel(blocker)
try:
    list(blocker_client.events(blocker, timeout_s=limit(300)))  # a cancel lands at the next step: slow when loaded
except EngineError as exc:
    assert exc.code == "cancelled"
blocker_client.close()
finish()
