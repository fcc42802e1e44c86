import sys
import tempfile
from pathlib import Path

import bpy
import cv2
import numpy as np

from scene_setup import FRAMES, HEIGHT, START, WIDTH, finish, new_scene, register_addon, strip_summary

register_addon()
from videograin.blender_addon import export  # noqa: E402

folder = Path(tempfile.mkdtemp())
scene, source, mattes, frames = new_scene(folder)
scene.view_settings.view_transform = "AgX"  # the default that would change pixels
before = strip_summary(scene)
assert list(export.frame_range(source)) == list(range(START, START + FRAMES))

decode = lambda data, flag=cv2.IMREAD_COLOR: cv2.imdecode(np.frombuffer(data, np.uint8), flag)  # noqa: E731
exported = export.render_strip(scene, source, export.frame_range(source), folder / "out")
assert len(exported) == FRAMES
for data, frame in zip(exported, frames):
    assert np.array_equal(decode(data), frame), "exported frame differs from the source pixels"

# A trimmed strip exports only its visible frames.
source.frame_offset_start = 1
assert list(export.frame_range(source)) == [START + 1, START + 2, START + 3]
trimmed = export.render_strip(scene, source, export.frame_range(source), folder / "trimmed")
assert np.array_equal(decode(trimmed[0]), frames[1])
source.frame_offset_start = 0

# Matte strip: renders to the matte pixels themselves, though it is muted in the timeline.
from_strip = export.render_strip(scene, mattes, export.frame_range(source), folder / "mattes-out")
for i, data in enumerate(from_strip):
    grey = decode(data, cv2.IMREAD_GRAYSCALE)
    assert grey[:, : WIDTH // 2 + i].min() == 255 and grey[:, WIDTH // 2 + i :].max() == 0

# Mask datablock: a rectangle in mask space (a square of side max(W, H) centred on the frame, y up).
mask = bpy.data.masks.new(name="upper left")
spline = mask.layers.new(name="l").splines.new()
spline.points.add(3)
for point, co in zip(spline.points, [(0.1, 0.6), (0.4, 0.6), (0.4, 0.9), (0.1, 0.9)]):
    point.co = co
    point.handle_left_type = point.handle_right_type = "VECTOR"
rendered = export.render_mask(scene, mask, export.frame_range(source), folder / "mask-out")
grey = decode(rendered[0], cv2.IMREAD_GRAYSCALE)
side, offset = max(WIDTH, HEIGHT), (max(WIDTH, HEIGHT) - HEIGHT) / 2
x0, x1 = 0.1 * side, 0.4 * side
top = HEIGHT - (0.9 * side - offset)  # rows from the top
bottom = HEIGHT - (0.6 * side - offset)
inside = grey[int(max(top, 0)) + 2 : int(bottom) - 2, int(x0) + 2 : int(x1) - 2]
assert inside.size and inside.min() == 255, inside
assert grey[int(bottom) + 2 :, :].max() == 0 and grey[:, int(x1) + 2 :].max() == 0

# A painted still image: the same matte for every frame.
painted = bpy.data.images.new("painted", WIDTH, HEIGHT)
pixels = np.zeros((HEIGHT, WIDTH, 4), np.float32)
pixels[..., 3] = 1.0
pixels[: HEIGHT // 2, :, :3] = 1.0  # Blender rows run bottom-up: this is the lower half on screen
painted.pixels.foreach_set(pixels.ravel())
stills = export.render_image(scene, painted, export.frame_range(source), folder / "painted-out")
assert len(stills) == FRAMES and len(set(stills)) == 1
grey = decode(stills[0], cv2.IMREAD_GRAYSCALE)
assert grey.shape == (HEIGHT, WIDTH) and grey[: HEIGHT // 2].max() == 0 and grey[HEIGHT // 2 :].min() == 255, grey[:, 0]

# The user's scene is as it was: settings, mute flags, no temporary strips.
assert scene.view_settings.view_transform == "AgX"
assert strip_summary(scene) == before, (strip_summary(scene), before)
finish()
