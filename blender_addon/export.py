"""What the engine gets of the source strip and the region mattes, by one of two routes.

- Files: a plain image sequence or movie strip (shown unchanged at the render size: no modifier,
  transform, crop, colour or speed change, no animation) is read by the engine itself from its files,
  when the engine shares this disk (`plain_run`). Nothing is rendered.
- Renders: anything else goes through Blender's sequencer, so the engine sees exactly what the
  timeline shows, written as uncompressed BMP (PNG compression held export to 3-14 frames/s at 720p)
  and read back as arrays (`read_bmp`), or handed to the engine as a folder.

Exact pixels: the Standard view transform, no look, curves, dither or burnt-in stamp, 100 % resolution, and
every strip but the one being rendered muted. All of it is restored afterwards: the user's scene is
left as it was.
"""

from __future__ import annotations

import os
import shutil
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

import bpy
import numpy as np

from .jobspec import FileRun, image_run
from .keyframes import fit_image
from .timeline import all_strips_of, strips_of

UNCHANGED = {  # strip settings that leave pixels and timing as the files have them
    "use_flip_x": False, "use_flip_y": False, "use_reverse_frames": False, "use_deinterlace": False,
    "use_multiview": False, "use_float": False, "multiply_alpha": False,
    "color_saturation": 1.0, "color_multiply": 1.0, "blend_alpha": 1.0,
}


def frame_range(strip) -> range:
    """The frames the strip shows in the timeline, trims respected."""
    return range(strip.frame_final_start, strip.frame_final_end)


# -- the files route --------------------------------------------------------------------------

def plain_run(scene: bpy.types.Scene, strip, frames: range) -> FileRun | None:
    """The strip's files, when the engine reading them sees what the sequencer shows at `frames`;
    None when the strip must be rendered."""
    if strip.type not in ("IMAGE", "MOVIE") or not _shows_files_unchanged(scene, strip):
        return None
    # Timeline frame f shows content frame animation_offset_start + (f - frame_start); no hold frames.
    first = round(strip.animation_offset_start + frames.start - strip.frame_start)
    if frames.start < strip.frame_start or frames.stop > strip.frame_start + strip.frame_duration:
        return None
    if strip.type == "IMAGE":
        names = [element.filename for element in strip.elements[first : first + len(frames)]]
        return image_run(bpy.path.abspath(strip.directory), names)
    fps = scene.render.fps / scene.render.fps_base
    if abs(strip.fps - fps) > 1e-3 or strip.stream_index != 0:
        return None
    length = strip.frame_duration + strip.animation_offset_start + strip.animation_offset_end
    return FileRun(os.path.normpath(bpy.path.abspath(strip.filepath)), first, len(frames), length)


def _shows_files_unchanged(scene: bpy.types.Scene, strip) -> bool:
    if strips_of(scene).get(strip.name) != strip:  # inside a meta strip, which has settings of its own
        return False
    t, c = strip.transform, strip.crop
    if strip.modifiers or len(strip.retiming_keys) or strip.strobe > 1.0:
        return False
    if (t.offset_x, t.offset_y, t.scale_x, t.scale_y, t.rotation) != (0, 0, 1, 1, 0) or (c.min_x, c.max_x, c.min_y, c.max_y) != (0, 0, 0, 0):
        return False
    if any(getattr(strip, name) != value for name, value in UNCHANGED.items()):
        return False
    if strip.colorspace_settings.name != "sRGB":
        return False
    size = (strip.elements[0].orig_width, strip.elements[0].orig_height) if len(strip.elements) else (0, 0)
    if size != (scene.render.resolution_x, scene.render.resolution_y):
        return False
    return not _animated(scene, strip)


def _animated(scene: bpy.types.Scene, strip) -> bool:
    """Whether an F-curve or driver of the scene drives any setting of `strip`."""
    data = scene.animation_data
    if data is None:
        return False
    curves = list(data.drivers) + _action_curves(data)
    token = f'["{bpy.utils.escape_identifier(strip.name)}"]'
    return any(token in curve.data_path for curve in curves)


def _action_curves(data) -> list:
    """The F-curves of the action an `AnimData` plays (none without one)."""
    if data is None or data.action is None:
        return []
    if hasattr(data.action, "layers"):  # 4.4+: slotted actions
        from bpy_extras.anim_utils import action_get_channelbag_for_slot

        bag = action_get_channelbag_for_slot(data.action, data.action_slot)
        return list(bag.fcurves) if bag is not None else []
    return list(data.action.fcurves)


def keyed_frames(datablock) -> list[float]:
    """The frames on which a datablock (a mask) has keyframes: its F-curves' keys, in scene frames.
    (A mask's layer shape keys are not in the Python API, so they are not among them.)"""
    return sorted({point.co.x for curve in _action_curves(datablock.animation_data) for point in curve.keyframe_points})


def run_of_files(files: list[Path]) -> FileRun:
    """Rendered frames handed to the engine as the folder they fill, one per edited frame."""
    return FileRun(str(files[0].parent), 0, len(files), len(files))


# -- the render route -------------------------------------------------------------------------

def _literal(path: Path) -> str:
    """`path` as a render output path: since Blender 4.5 `{...}` there is a template variable."""
    text = str(path)
    return text.replace("{", "{{").replace("}", "}}") if bpy.app.version >= (4, 5, 0) else text


@contextmanager
def _changed(target, *kept: str, **values) -> Iterator[None]:
    """Set attributes of `target` (those it has, in order) for the block, then restore them in the same
    order followed by the `kept` ones, which keeps dependent settings valid (colour depth after format)."""
    names = [name for name in (*values, *kept) if hasattr(target, name)]
    saved = [(name, getattr(target, name)) for name in names]
    try:
        for name in names:
            if name in values:
                setattr(target, name, values[name])
        yield
    finally:
        for name, value in saved:
            setattr(target, name, value)


@contextmanager
def _exact_output(scene: bpy.types.Scene, grey: bool) -> Iterator[None]:
    """Output pixels equal to the input's, as 8-bit BMP (RGB, or grey for mattes) at 100 %."""
    image = scene.render.image_settings
    with ExitStack() as stack:
        stack.enter_context(_changed(scene.view_settings, view_transform="Standard", look="None", exposure=0.0,
                                     gamma=1.0, use_curve_mapping=False))
        stack.enter_context(_changed(scene.display_settings, display_device="sRGB"))
        stack.enter_context(_changed(scene.sequencer_colorspace_settings, name="sRGB"))
        stack.enter_context(_changed(scene.render, "filepath", resolution_percentage=100, use_border=False,
                                     use_stamp=False, dither_intensity=0.0, use_file_extension=True,
                                     use_overwrite=True, use_placeholder=False))
        stack.enter_context(_changed(image, "color_depth", color_management="FOLLOW_SCENE", media_type="IMAGE",
                                     file_format="BMP", color_mode="BW" if grey else "RGB"))
        yield


@contextmanager
def _render_only(scene: bpy.types.Scene, strip) -> Iterator[None]:
    """`strip` alone: every other strip muted meanwhile, mute flags and the current frame restored after."""
    muted = {s.name: s.mute for s in all_strips_of(scene)}
    frame = scene.frame_current
    try:
        for other in all_strips_of(scene):
            other.mute = other != strip
        yield
    finally:
        for other in all_strips_of(scene):
            if other.name in muted:
                other.mute = muted[other.name]
        scene.frame_set(frame)


def render_strip(scene: bpy.types.Scene, strip, frames: range, folder: Path, grey: bool = False) -> list[Path]:
    """BMP files of `strip` alone at each of `frames`, in one animation render (strip animation is
    evaluated per frame)."""
    folder.mkdir(parents=True, exist_ok=True)
    # Each frame is rendered once: caching it would only cost copies (and evict the user's cached frames).
    with _exact_output(scene, grey), _render_only(scene, strip), _changed(scene.render, use_sequencer=True), \
            _changed(scene.sequence_editor, use_cache_raw=False, use_cache_final=False, use_prefetch=False), \
            _changed(scene, frame_start=frames.start, frame_end=frames.stop - 1, frame_step=1):
        scene.render.filepath = _literal(folder / "frame-######")
        bpy.ops.render.render(animation=True, scene=scene.name)
        return [Path(scene.render.frame_path(frame=frame)) for frame in frames]


def render_mask(scene: bpy.types.Scene, mask: bpy.types.Mask, frames: range, folder: Path) -> list[Path]:
    """Grey BMP files of a mask datablock at each of `frames`, rasterised by a Mask node in a temporary
    compositing scene.

    Not through a temporary mask strip: freeing a mask strip leaves the mask with a user too many and
    prints "ID user count error" (Blender 4.5 and 5.0, whatever the order of removal). A node holds its
    mask with an ordinary user, which removing the scene gives back. Mask points animated by F-curves
    follow the user's scene frame, so both scenes step together, one render per frame.
    """
    folder.mkdir(parents=True, exist_ok=True)
    matte_scene = bpy.data.scenes.new("videograin matte")
    group = None
    frame = scene.frame_current
    try:
        render = matte_scene.render
        render.resolution_x, render.resolution_y = scene.render.resolution_x, scene.render.resolution_y
        render.use_compositing = True
        if hasattr(matte_scene, "compositing_node_group"):  # 5.0+: the compositor is a node group
            group = tree = bpy.data.node_groups.new("videograin matte", "CompositorNodeTree")
            tree.interface.new_socket("Image", in_out="OUTPUT", socket_type="NodeSocketColor")
            matte_scene.compositing_node_group = tree
            output = tree.nodes.new("NodeGroupOutput").inputs[0]
        else:
            matte_scene.use_nodes = True
            tree = matte_scene.node_tree
            tree.nodes.clear()  # the default Render Layers node would render the (empty) 3D scene
            output = tree.nodes.new("CompositorNodeComposite").inputs["Image"]
        node = tree.nodes.new("CompositorNodeMask")
        node.mask = mask
        tree.links.new(node.outputs["Mask"], output)
        files = []
        with _exact_output(matte_scene, grey=True):
            for index, number in enumerate(frames):
                scene.frame_set(number)
                matte_scene.frame_set(number)
                files.append(folder / f"{index:06d}.bmp")
                render.filepath = _literal(files[-1])
                bpy.ops.render.render(write_still=True, scene=matte_scene.name)
        return files
    finally:
        bpy.data.scenes.remove(matte_scene)
        if group is not None:
            bpy.data.node_groups.remove(group)
        scene.frame_set(frame)


def render_image(scene: bpy.types.Scene, image: bpy.types.Image, frames: range, folder: Path) -> list[Path]:
    """A painted (still) image as the matte of every frame: stretched to the render size when it has
    another (a new image is 1024² by default), written once, linked once per frame."""
    folder.mkdir(parents=True, exist_ok=True)
    first = folder / "000000.bmp"
    with _exact_output(scene, grey=True), _fitted(image, scene.render.resolution_x, scene.render.resolution_y) as still:
        still.save_render(str(first), scene=scene)
    files = [first] + [folder / f"{index:06d}.bmp" for index in range(1, len(frames))]
    for path in files[1:]:
        try:
            os.link(first, path)
        except OSError:  # a file system without hard links
            shutil.copyfile(first, path)
    return files


@contextmanager
def _fitted(image: bpy.types.Image, width: int, height: int) -> Iterator[bpy.types.Image]:
    """`image` at width × height: itself, or a temporary copy of its pixels stretched to that size, in
    the same colour space and precision (the user's image is never changed)."""
    if tuple(image.size) == (width, height):
        yield image
        return
    if 0 in image.size:
        raise RuntimeError(f"the image '{image.name}' has no pixels to read (is its file missing?)")
    pixels = np.empty(image.size[0] * image.size[1] * image.channels, np.float32)
    image.pixels.foreach_get(pixels)
    pixels = pixels.reshape(image.size[1], image.size[0], image.channels)
    if image.channels != 4:  # greyscale or RGB files: Blender's pixel buffers of new images are RGBA
        pixels = np.concatenate([np.repeat(pixels[..., :1], 3, 2) if image.channels == 1 else pixels[..., :3],
                                 np.ones((*pixels.shape[:2], 1), np.float32)], axis=2)
    fitted = bpy.data.images.new(f"{image.name} fitted", width, height, alpha=True, float_buffer=image.is_float)
    try:
        fitted.colorspace_settings.name = image.colorspace_settings.name
        fitted.pixels.foreach_set(fit_image(pixels, width, height).ravel())
        yield fitted
    finally:
        bpy.data.images.remove(fitted)


def read_bmp(path: Path) -> np.ndarray:
    """An uncompressed BMP as Blender writes it: (H, W, 3) RGB from 24-bit, (H, W) grey from 8-bit."""
    data = path.read_bytes()
    offset = int.from_bytes(data[10:14], "little")
    width, height = int.from_bytes(data[18:22], "little", signed=True), int.from_bytes(data[22:26], "little", signed=True)
    depth = int.from_bytes(data[28:30], "little")
    channels = depth // 8
    stride = (width * channels + 3) // 4 * 4  # rows are padded to 4 bytes
    rows = np.frombuffer(data, np.uint8, stride * abs(height), offset).reshape(abs(height), stride)
    rows = rows[::-1] if height > 0 else rows  # positive height: bottom row first
    if channels == 1:
        palette = np.frombuffer(data, np.uint8, 1024, 14 + int.from_bytes(data[14:18], "little")).reshape(256, 4)
        return palette[rows[:, :width], 0]  # blue of the palette entry: a grey palette has B = G = R
    pixels = rows[:, : width * 3].reshape(abs(height), width, 3)
    rgb = np.empty_like(pixels)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = pixels[..., 2], pixels[..., 1], pixels[..., 0]  # BGR
    return rgb
