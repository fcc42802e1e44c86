"""Running a validated job: working-size inputs, the edit, and results at the source size.

`edit_clip` is shared by the CLI (which then calls `write_results`) and the engine server (which streams
the frames instead).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from videograin.engine.inputs.control import control_maps
from videograin.engine.errors import JobError
from videograin.engine.inputs.job import EditJob
from videograin.engine.inputs.media import contact_sheet, current_umask, resize, write_atomic, write_mp4, write_png
from videograin.engine.method.pipeline import EditResult, FrameCallback, VideoGrainPipeline
from videograin.engine.progress import ProgressCallback, no_progress

RANDOM_WEIGHTS_BANNER = "RANDOM WEIGHTS - NOT AN EDIT"


def edit_clip(
    job: EditJob,
    pipe: VideoGrainPipeline,
    progress: ProgressCallback = no_progress,
    cancelled: Callable[[], bool] = lambda: False,
    measure_leakage: bool = False,
    on_frame: FrameCallback | None = None,
) -> EditResult:
    """Run the edit at the working size; frames, returned and handed to `on_frame` as each is decoded,
    are back at the source size."""
    s = job.settings
    width, height = s.source.width, s.source.height
    to_source = lambda images: resize(images, *job.source_size)  # noqa: E731
    frames = resize(job.frames, width, height)
    # Mattes stay at source size: the layout resizes them straight to each attention resolution.
    masks_small = resize(job.masks.reshape(-1, *job.masks.shape[2:]).astype(np.uint8), width, height, nearest=True)
    supplied = None if job.control_maps is None else resize(job.control_maps, width, height)
    control = control_maps(s.control, frames, masks_small.reshape(len(job.masks), -1, height, width) > 0, supplied)
    result = pipe(
        frames,
        job.masks,
        prompt=s.prompt,
        source_prompt=s.source_prompt,
        phrases=[r.phrase for r in s.regions],
        background_phrase=s.background_phrase,
        control_maps=control,
        control_scale=s.control.scale,
        steps=s.steps,
        guidance=s.guidance,
        seed=s.seed,
        modulation=s.modulation,
        window=s.window,
        progress=progress,
        cancelled=cancelled,
        measure_leakage=measure_leakage,
        on_frame=None if on_frame is None else lambda index, image: on_frame(index, to_source(image[None])[0]),
    )
    return EditResult(to_source(result.frames), result.leakage)


def check_output_folder(out: Path, job: EditJob) -> None:
    """Refuse a destination that holds anything, or that is the user's source media."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise JobError(f"output folder '{out}' is not empty: choose a new folder, results never overwrite files")
    media = [Path(job.settings.source.path)] + [Path(r.mask) for r in job.settings.regions if r.mask]
    for path in media:
        if path.exists() and path.resolve() in (out.resolve(), *out.resolve().parents):
            raise JobError(f"output folder '{out}' would be inside the job's media '{path}'")


def write_results(
    out: Path, job: EditJob, result: EditResult, random_weights: bool, extra: dict | None = None
) -> None:
    """Write frames, MP4 preview, contact sheet and result.json into a staging folder, then move it
    into place in one rename: `out` holds all results or none."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    try:
        staging.chmod(0o777 & ~current_umask())
        for index, frame in enumerate(result.frames):
            write_png(staging / "frames" / f"{index:05d}.png", frame)
        write_mp4(staging / "preview.mp4", result.frames)
        banner = RANDOM_WEIGHTS_BANNER if random_weights else None
        write_png(staging / "contact_sheet.png", contact_sheet(job.frames, result.frames, banner=banner))
        report = {
            "settings": job.settings.to_dict(),
            "frames": len(result.frames),
            "size": list(job.source_size),
            "leakage": result.leakage,
            "random_weights": random_weights,
            "note": "random weights: the pictures are not an edit" if random_weights else None,
            "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **(extra or {}),
        }
        write_atomic(staging / "result.json", json.dumps(report, indent=2).encode())
        if out.exists():
            out.rmdir()  # empty (checked before the edit); rename cannot replace a non-empty folder anyway
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
