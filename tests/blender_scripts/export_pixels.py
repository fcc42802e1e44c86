"""The render route gives the source's exact pixels and the mattes, and leaves the user's scene (and its
data) as it was: a mask datablock rasterises with its F-curve animation and without Blender's
"ID user count error" (the test checks Blender's output for it)."""

import tempfile
from pathlib import Path

import bpy
import cv2
import numpy as np

from scene_setup import FRAMES, HEIGHT, START, WIDTH, count_renders, finish, new_scene, register_addon, strip_summary

register_addon()
from videograin.blender_addon import export  # noqa: E402

folder = Path(tempfile.mkdtemp() + "/a {braces} folder")  # Blender 5 reads {...} in output paths as templates
scene, source, mattes, frames = new_scene(folder)
scene.view_settings.view_transform = "AgX"  # the default that would change pixels
scene.render.image_settings.file_format = "PNG"
scene.render.image_settings.color_depth = "16"  # the user's output settings come back after
scene.frame_current = 3
before = strip_summary(scene)
assert list(export.frame_range(source)) == list(range(START, START + FRAMES))
renders = count_renders()

exported = [export.read_bmp(p) for p in export.render_strip(scene, source, export.frame_range(source), folder / "out")]
assert len(exported) == FRAMES and len(renders) == FRAMES
for image, frame in zip(exported, frames):
    assert np.array_equal(image, frame[..., ::-1]), "exported frame differs from the source pixels"

# A trimmed strip exports only its visible frames.
source.frame_offset_start = 1
assert list(export.frame_range(source)) == [START + 1, START + 2, START + 3]
trimmed = export.render_strip(scene, source, export.frame_range(source), folder / "trimmed")
assert len(trimmed) == 3 and np.array_equal(export.read_bmp(trimmed[0]), frames[1][..., ::-1])
source.frame_offset_start = 0

# Matte strip: renders to grey matte pixels themselves, though it is muted in the timeline.
for i, path in enumerate(export.render_strip(scene, mattes, export.frame_range(source), folder / "mattes-out", grey=True)):
    grey = export.read_bmp(path)
    assert grey.shape == (HEIGHT, WIDTH) and grey[:, : WIDTH // 2 + i].min() == 255 and grey[:, WIDTH // 2 + i :].max() == 0

# Mask datablock: a rectangle in mask space (a square of side max(W, H) centred on the frame, y up), its
# right edge animated by F-curves from x = 0.4 to 0.7 over the strip.
mask = bpy.data.masks.new(name="upper left")
spline = mask.layers.new(name="l").splines.new()
spline.points.add(3)
for point, co in zip(spline.points, [(0.1, 0.6), (0.4, 0.6), (0.4, 0.9), (0.1, 0.9)]):
    point.co = co
    point.handle_left_type = point.handle_right_type = "VECTOR"
for frame, x in ((START, 0.4), (START + FRAMES - 1, 0.7)):
    for index in (1, 2):
        spline.points[index].co.x = x
        mask.keyframe_insert(data_path=f'layers["l"].splines[0].points[{index}].co', frame=frame)
users = mask.users
side, offset = max(WIDTH, HEIGHT), (max(WIDTH, HEIGHT) - HEIGHT) / 2
top, bottom = HEIGHT - (0.9 * side - offset), HEIGHT - (0.6 * side - offset)  # rows from the top
rendered = export.render_mask(scene, mask, export.frame_range(source), folder / "mask-out")
assert len(rendered) == FRAMES
for path, x in zip(rendered, np.linspace(0.4, 0.7, FRAMES)):
    grey = export.read_bmp(path)
    inside = grey[int(max(top, 0)) + 2 : int(bottom) - 2, int(0.1 * side) + 2 : int(x * side) - 2]
    assert inside.size and inside.min() == 255, (x, inside)
    assert grey[int(bottom) + 2 :, :].max() == 0 and grey[:, int(x * side) + 2 :].max() == 0, x
assert mask.users == users, "the mask's users changed"
assert [s.name for s in bpy.data.scenes] == [scene.name] and len(bpy.data.node_groups) == 0

# A painted still image: the same matte for every frame.
painted = bpy.data.images.new("painted", WIDTH, HEIGHT)
pixels = np.zeros((HEIGHT, WIDTH, 4), np.float32)
pixels[..., 3] = 1.0
pixels[: HEIGHT // 2, :, :3] = 1.0  # Blender rows run bottom-up: this is the lower half on screen
painted.pixels.foreach_set(pixels.ravel())
stills = export.render_image(scene, painted, export.frame_range(source), folder / "painted-out")
assert len(stills) == FRAMES and len({p.read_bytes() for p in stills}) == 1
grey = export.read_bmp(stills[0])
assert grey.shape == (HEIGHT, WIDTH) and grey[: HEIGHT // 2].max() == 0 and grey[HEIGHT // 2 :].min() == 255, grey[:, 0]
assert np.array_equal(cv2.imread(str(stills[0]), cv2.IMREAD_GRAYSCALE), grey), "the engine reads other pixels"

# A painted image of another size (a new image is 1024² by default) is stretched to the render size; the
# user's image stays as it was.
big = bpy.data.images.new("painted big", 1024, 1024)
pixels = np.zeros((1024, 1024, 4), np.float32)
pixels[..., 3] = 1.0
pixels[:512, :, :3] = 1.0
big.pixels.foreach_set(pixels.ravel())
images = set(bpy.data.images)
grey = export.read_bmp(export.render_image(scene, big, range(2), folder / "big-out")[0])
assert grey.shape == (HEIGHT, WIDTH) and grey[HEIGHT // 2 + 1 :].min() == 255 and grey[: HEIGHT // 2 - 1].max() == 0
assert tuple(big.size) == (1024, 1024) and set(bpy.data.images) == images

# The user's scene is as it was: settings, frame, mute flags, no temporary strips.
assert scene.view_settings.view_transform == "AgX" and scene.frame_current == 3
image = scene.render.image_settings
assert (image.file_format, image.color_depth, image.color_mode) == ("PNG", "16", "RGBA"), (image.file_format, image.color_depth)
assert strip_summary(scene) == before, (strip_summary(scene), before)
finish()
