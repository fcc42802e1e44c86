"""Wan's token grid: how clip frames and their mattes map onto latent frames and transformer tokens.

Wan's VAE compresses time causally: latent frame 0 is clip frame 0 alone, and latent frame j ≥ 1 holds
clip frames 4j − 3 … 4j, so a clip must have 4k + 1 frames. Space is compressed 8× by the VAE and 2× more
by the transformer's 2×2 patches: one token covers 16 × 16 pixels of 4 frames (1 of frame 0).

A latent frame's mattes are the **union** of its frames' mattes: a region that moves fast (or is thin and
crosses a cell in one frame only) is in the latent frame wherever it was during the frames it holds, so
its words and features keep every pixel where it appears. Overlaps that this creates between regions are
allowed by the layout rules (a token may carry two regions).
"""

from __future__ import annotations

import numpy as np

TIME_COMPRESSION = 4


def padded_length(frames: int) -> int:
    """The clip length Wan takes that holds `frames`: the next 4k + 1."""
    return 1 + -(-(frames - 1) // TIME_COMPRESSION) * TIME_COMPRESSION


def pad_clip(array: np.ndarray, axis: int = 0) -> np.ndarray:
    """Repeat the last frame along `axis` up to the next 4k + 1 frames (nothing to do when it is one)."""
    frames = array.shape[axis]
    extra = padded_length(frames) - frames
    if not extra:
        return array
    last = np.take(array, [frames - 1], axis=axis)
    return np.concatenate([array, np.repeat(last, extra, axis=axis)], axis=axis)


def latent_frames(frames: int) -> int:
    """Latent frames of a clip of `frames` = 4k + 1 frames."""
    return 1 + (frames - 1) // TIME_COMPRESSION


def frames_of_latent(index: int) -> range:
    """The clip frames latent frame `index` holds."""
    if index == 0:
        return range(0, 1)
    return range(TIME_COMPRESSION * index - 3, TIME_COMPRESSION * index + 1)


def latent_of_frame(frame: int) -> int:
    """The latent frame that holds clip frame `frame`."""
    return -(-frame // TIME_COMPRESSION)


def union_per_latent_frame(masks: np.ndarray) -> np.ndarray:
    """(K, F, H, W) bool mattes of a 4k + 1 clip → (K, T, H, W): each latent frame's union of its frames."""
    count = latent_frames(masks.shape[1])
    return np.stack([masks[:, frames_of_latent(j)].any(1) for j in range(count)], axis=1)

