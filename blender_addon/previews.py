"""What the panel shows as pictures: each running job's latest step preview, and the attention maps of
a strip's last edit on the current frame. Both live in `bpy.utils.previews` collections (not in the
.blend), keyed by the strip's key."""

from __future__ import annotations

from pathlib import Path

import bpy
import bpy.utils.previews
import numpy as np

from .session import attention_map

_previews: dict[str, bpy.utils.previews.ImagePreviewCollection] = {}


def preview_of(key: str):
    """The latest step preview of the strip with `key` (`bpy.types.ImagePreview`), or None."""
    previews = _previews.get("steps")
    return previews.get(key) if previews is not None and key else None


def show_preview(key: str, rgb: np.ndarray) -> None:
    previews = _previews["steps"]
    preview = previews.get(key) or previews.new(key)
    height, width = rgb.shape[:2]
    rgba = np.ones((height, width, 4), np.float32)
    rgba[..., :3] = rgb[::-1, :, :3] / 255.0  # previews store rows bottom-up
    preview.image_size = (width, height)
    preview.image_pixels_float.foreach_set(rgba.ravel())


def drop_preview(key: str) -> None:
    previews = _previews.get("steps")
    if previews is not None and key in previews:
        del previews[key]


def phrases_of(edit) -> list[str]:
    """The phrases whose maps an edit brings back, by index: the regions', then the background's."""
    return [region.phrase for region in edit.regions] + [edit.background_phrase]


def attention_of(scene, strip, index: int):
    """The map of phrase `index` of `strip`'s last edit on the scene's current frame
    (`bpy.types.ImagePreview`), loaded the first time it is asked for; None where there is none."""
    previews, edit = _previews.get("attention"), strip.videograin
    if previews is None or not edit.attention_folder or not strip.get("videograin_key"):
        return None
    phrases = phrases_of(edit)
    if not 0 <= index < len(phrases) or not phrases[index].strip():
        return None
    frame = scene.frame_current - edit.attention_start
    name = f"{strip['videograin_key']}\n{edit.attention_folder}\n{frame}\n{index}"
    if name not in previews:
        path = attention_map(Path(bpy.path.abspath(edit.attention_folder)), phrases[index], frame)
        if frame < 0 or not path.is_file():
            return None
        previews.load(name, str(path), "IMAGE")
    return previews[name]


def forget_attention() -> None:
    """Drop the loaded maps (the frame changed): the panel loads those of the new frame."""
    previews = _previews.get("attention")
    if previews is not None:
        previews.clear()


def clear() -> None:
    for previews in _previews.values():
        previews.clear()


def register() -> None:
    _previews["steps"] = bpy.utils.previews.new()
    _previews["attention"] = bpy.utils.previews.new()


def unregister() -> None:
    for name in list(_previews):
        bpy.utils.previews.remove(_previews.pop(name))
