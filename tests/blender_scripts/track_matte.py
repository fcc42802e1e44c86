"""Track Matte with a script (`wait=True`): a mask drawn on one frame is tracked through the source, and
the mattes come back as a muted image strip as long as the source, on a free channel, relative to the
.blend; the region switches to it, and an overlay strip shows it in the region's colour over the source
(on the picture only while Show Mattes is on). Edit then uses the tracked mattes, and with Attention
Maps on, the panel's per-region maps follow the current frame."""

import sys
import tempfile
from pathlib import Path

import bpy
import cv2
import numpy as np

from scene_setup import (FRAMES, HEIGHT, START, WIDTH, configure_edit, finish, new_scene, png, rectangle_mask,
                         register_addon, strip_summary)

register_addon()
from videograin.blender_addon import export, previews  # noqa: E402
from videograin.blender_addon.timeline import all_strips_of  # noqa: E402

folder = Path(tempfile.mkdtemp())
scene, source, mattes, frames = new_scene(folder)
bpy.ops.wm.save_as_mainfile(filepath=str(folder / "project.blend"))
vg = configure_edit(scene, sys.argv[1])
region = vg.regions[0]
region.color = (1.0, 0.0, 0.0)
mask = rectangle_mask("runner", 0.1, 0.45, 0.45, 0.75)
region.matte_source, region.mask = "MASK", mask
scene.frame_set(START + 1)  # the playhead's frame is the keyframe
before = strip_summary(scene)

assert bpy.ops.videograin.track_matte(wait=True) == {"FINISHED"}, vg.error
assert not vg.running and vg.error == "" and vg.status.startswith("Tracked:"), (vg.status, vg.error)
new = {s.name: s for s in all_strips_of(scene) if s.name not in {b[0] for b in before}}
assert len(new) == 2, strip_summary(scene)
matte = next(s for s in new.values() if s.type == "IMAGE")
overlay = next(s for s in new.values() if s.type == "COLOR")
assert matte.mute and (matte.frame_final_start, matte.frame_final_duration) == (START, FRAMES), strip_summary(scene)
assert matte.channel not in (source.channel, mattes.channel) and overlay.channel > matte.channel
assert matte.directory.startswith("//videograin_results/"), matte.directory
files = [Path(bpy.path.abspath(matte.directory)) / element.filename for element in matte.elements]
assert len(files) == FRAMES and all(path.is_file() for path in files)
assert (region.matte_source, region.strip, region.overlay) == ("STRIP", matte.name, overlay.name)
modifier = overlay.modifiers[0]
assert (modifier.type, modifier.input_mask_type, modifier.input_mask_strip) == ("MASK", "STRIP", matte)
assert not overlay.mute and (overlay.frame_final_start, overlay.frame_final_end) == (START, START + FRAMES)

# The keyframe comes back as the mask drew it; every frame has the region.
drawn = export.read_bmp(export.render_mask(scene, mask, [START + 1], folder / "drawn")[0]) >= 128
tracked = [png(path) for path in files]
assert all(m.shape == (HEIGHT, WIDTH) and set(np.unique(m)) <= {0, 255} for m in tracked)
assert np.array_equal(tracked[1] == 255, drawn) and all((m == 255).any() for m in tracked)

# The overlay tints the region over the source in the picture, and Show Mattes takes it away.


def picture(name: str) -> np.ndarray:
    view = scene.view_settings.view_transform
    scene.view_settings.view_transform = "Standard"
    scene.render.image_settings.file_format = "PNG"
    scene.render.filepath = str(folder / name)
    bpy.ops.render.render(write_still=True)
    scene.view_settings.view_transform = view
    return cv2.imread(str(folder / f"{name}.png"))[..., ::-1].astype(int)


shown, inside = picture("shown"), tracked[1] == 255
clip = frames[1][..., ::-1]  # written by OpenCV, which takes the array as BGR
tint = (clip.astype(int) + np.array([255, 0, 0])) / 2
assert np.abs(shown[inside] - tint[inside]).max() <= 2 and np.array_equal(shown[~inside], clip[~inside])
scene.videograin.show_mattes = False
assert overlay.mute and np.array_equal(picture("hidden"), clip)
scene.videograin.show_mattes = True
assert not overlay.mute

# Edit uses the tracked mattes (a plain strip: the engine reads its files); attention maps come along.
vg.attention_maps = True
strips_before_edit = {s.name for s in all_strips_of(scene)}
assert bpy.ops.videograin.edit(wait=True) == {"FINISHED"}, vg.error
assert vg.status.startswith("Done"), (vg.status, vg.error)
result = all_strips_of(scene)[vg.result_strip]
assert {s.name for s in all_strips_of(scene)} - strips_before_edit == {result.name}
assert result.channel > overlay.channel and result.frame_final_duration == FRAMES
assert vg.attention_folder.startswith("//videograin_results/") and vg.attention_start == START
maps = Path(bpy.path.abspath(vg.attention_folder)) / "attention"
assert sorted(p.name for p in maps.iterdir()) == ["cherry_blossoms", "iron_man"], list(maps.iterdir())
assert all(len(list((maps / name).glob("*.png"))) == FRAMES for name in ("cherry_blossoms", "iron_man"))
shown_maps = {index: previews.attention_of(scene, source, index) for index in (0, 1)}
assert all(p is not None and p.image_size[0] > 0 for p in shown_maps.values()), "no map for the current frame"
scene.frame_set(START + FRAMES + 2)  # past the edit: no map there
assert previews.attention_of(scene, source, 0) is None
scene.frame_set(START)
assert previews.attention_of(scene, source, 0) is not None
# A new edit drops the last one's maps.
vg.attention_maps = False
assert bpy.ops.videograin.edit(wait=True) == {"FINISHED"}, vg.error
assert vg.attention_folder == "" and previews.attention_of(scene, source, 0) is None
finish()
