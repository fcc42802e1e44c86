"""What Track Matte sends as a region's keyframes: which frames of its matte, and mattes fitted to the
render size. Plain Python (no bpy).

Which frames: a mask animated by keyframes (its points' F-curves, `export.keyed_frames`) gives each
keyed frame inside the source strip; anything else gives the frame under the playhead. A mask animated
by layer shape keys cannot say where its keys are: Blender keeps them out of the Python API (a
`MaskLayer` has no shape-key collection in 4.5 or 5.0), so it counts as not animated, and the playhead
chooses.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from .engine_link import EngineError


def keyframe_frames(playhead: int, keyed: Iterable[float], frames: range, what: str) -> list[int]:
    """Timeline frames whose matte becomes a keyframe: the keyed frames within `frames` (the source
    strip's), else the playhead's. EngineError when that leaves none; `what` names the matte ("the mask 'x'")."""
    keyed = sorted({round(frame) for frame in keyed})
    if keyed:
        inside = [frame for frame in keyed if frame in frames]
        if not inside:
            raise EngineError("bad_job", f"{what[:1].upper()}{what[1:]} is keyed on frames {_span(keyed)}, none within "
                                         f"the source strip's {_span(frames)}: key it on the frames to track from")
        return inside
    if playhead not in frames:
        raise EngineError("bad_job", f"Move the playhead into the source strip (frames {_span(frames)}): {what} "
                                     f"there becomes the keyframe to track from")
    return [playhead]


def _span(frames) -> str:
    frames = list(frames)
    return f"{frames[0]}-{frames[-1]}" if len(frames) > 1 else str(frames[0])


def fit_image(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """(h, w, c) pixels stretched to (height, width, c), bilinear between pixel centres: a matte painted
    on a canvas of any size stands for the whole frame."""
    h, w = pixels.shape[:2]
    if (w, h) == (width, height):
        return pixels
    rows = np.clip((np.arange(height) + 0.5) * h / height - 0.5, 0, h - 1)
    columns = np.clip((np.arange(width) + 0.5) * w / width - 0.5, 0, w - 1)
    r0, c0 = rows.astype(int), columns.astype(int)
    r1, c1 = np.minimum(r0 + 1, h - 1), np.minimum(c0 + 1, w - 1)
    down = (rows - r0)[:, None, None]
    right = (columns - c0)[None, :, None]
    top = pixels[r0][:, c0] * (1 - right) + pixels[r0][:, c1] * right
    bottom = pixels[r1][:, c0] * (1 - right) + pixels[r1][:, c1] * right
    return (top * (1 - down) + bottom * down).astype(pixels.dtype)
