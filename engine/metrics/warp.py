"""Warp error: how much an edit flickers where the source moves smoothly.

The convention of Lai et al. (ECCV 2018, "Learning Blind Video Temporal Consistency"), which video-editing
papers follow when they report Warp-Err: with the *source's* optical flow (inputs/flow.py), edited frame t
is warped onto frame t + 1, and the squared difference to edited frame t + 1 is averaged over the pixels
that are not occluded (the flow's forward–backward check), RGB in [0, 1]; the clip's error is the mean
over its frame pairs. Reported ×10³, as the papers' tables do (VideoGrain's: 1.42). Peers differ in
the flow estimator (RAFT, PWC-Net; here whatever `flow.method` gives) and sometimes in the direction of
the warp; the numbers are comparable only under the same estimator.
"""

from __future__ import annotations

import numpy as np

from videograin.engine.inputs.flow import ClipFlow, warp

SCALE = 1000.0  # reported ×10³


def warp_error(frames: np.ndarray, flow: ClipFlow) -> float | None:
    """Warp error (×10³) of edited `frames` (F, H, W, 3) uint8 under the source's `flow` (same size);
    None for a single frame."""
    if len(frames) < 2:
        return None
    if flow.backward.shape[1:3] != frames.shape[1:3] or len(flow.backward) != len(frames) - 1:
        raise ValueError(f"flow of {len(flow.backward) + 1} frames at {flow.backward.shape[1:3]} for "
                         f"{len(frames)} frames at {frames.shape[1:3]}")
    errors = []
    for t in range(len(frames) - 1):
        visible = ~flow.occluded_backward[t]
        if not visible.any():
            continue
        previous = warp(frames[t].astype(np.float32) / 255.0, flow.backward[t])
        difference = np.square(frames[t + 1].astype(np.float32) / 255.0 - previous).sum(-1)
        errors.append(float(difference[visible].mean()))
    return SCALE * float(np.mean(errors)) if errors else None
