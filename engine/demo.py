"""A synthetic two-runner clip with mattes and a job file: the product end to end, no downloads."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import yaml

from videograin.engine.inputs.media import write_png

DEMO_PROMPT = "an iron man and a spider man are jogging under cherry blossoms"


def synthetic_clip(frames: int = 8, width: int = 128, height: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Two coloured figures crossing a textured backdrop: (F, H, W, 3) uint8 frames, (2, F, H, W) bool mattes."""
    rng = np.random.default_rng(7)
    backdrop = np.zeros((height, width, 3), np.uint8)
    backdrop[:] = np.linspace(60, 200, height, dtype=np.uint8)[:, None, None]
    backdrop[..., 1] = 140
    backdrop = cv2.add(backdrop, rng.integers(0, 40, backdrop.shape, dtype=np.uint8))
    clip = np.repeat(backdrop[None], frames, 0)
    mattes = np.zeros((2, frames, height, width), bool)
    for f in range(frames):
        shift = round(f * width / (8 * max(frames - 1, 1)))
        for k, (x, colour) in enumerate(((width // 4 + shift, (220, 40, 40)), (3 * width // 4 - shift, (40, 40, 220)))):
            matte = np.zeros((height, width), np.uint8)
            centre = (x, height // 2 + (4 if (f + k) % 2 else -4))
            cv2.ellipse(matte, centre, (width // 10, height // 4), 0, 0, 360, 255, -1)
            clip[f][matte > 0] = colour
            mattes[k, f] = matte > 0
    return clip, mattes


def write_demo_inputs(folder: Path, frames: int = 8, size: int = 128, steps: int = 20, model: str = "tiny") -> Path:
    """Write frames, mattes and job.yaml under `folder`; returns the job file's path. `model`: `tiny`
    (SD-1.5's layout, with a canny ControlNet) or `wan-tiny` (Wan 2.1's, no control, Wan's guidance)."""
    clip, mattes = synthetic_clip(frames, size, size)
    for f in range(frames):
        write_png(folder / "frames" / f"{f:04d}.png", clip[f])
        for k, name in enumerate(("left", "right")):
            write_png(folder / "masks" / name / f"{f:04d}.png", mattes[k, f].astype(np.uint8) * 255)
    job = {
        "source": {"path": "frames", "width": size, "height": size},
        "source_prompt": "two men are jogging in a park",
        "prompt": DEMO_PROMPT,
        "regions": [{"phrase": "iron man", "mask": "masks/left"}, {"phrase": "spider man", "mask": "masks/right"}],
        "background": {"phrase": "cherry blossoms"},
        "control": {"type": "canny" if model == "tiny" else "auto"},
        "steps": steps,
        "guidance": 7.5 if model == "tiny" else 5.0,
        "seed": 0,
        "model": model,
    }
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path
