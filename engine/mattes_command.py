"""`videograin mattes JOB.yaml --out DIR`: the mattes an edit would use, tracked where a region gives
keyframes, written for a look before editing.

DIR gets one folder of PNGs per region (`00-iron-man/00000.png`, ..., one per edited frame, white = the
region), `contact_sheet.png` (source frames above, the mattes over them in colour below) and
`mattes.json` (which folder is which region, and how each was made). All of it appears at once, from a
staging folder renamed into place, and DIR must be new or empty.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np

from videograin.engine.inputs.job import EditJob, load_job
from videograin.engine.inputs.media import current_umask, write_atomic, write_png
from videograin.engine.progress import ProgressBars

# Region colours for the overlay (RGB), in job order, repeating past eight regions.
COLOURS = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25), (145, 30, 180), (70, 240, 240),
           (245, 130, 48), (240, 50, 230))
OVERLAY_ALPHA = 0.55


def region_folder(index: int, phrase: str) -> str:
    """`03-spider-man`: the region's index in the job, then its phrase as a file name."""
    return f"{index:02d}-{re.sub(r'[^a-z0-9]+', '-', phrase.lower()).strip('-') or 'region'}"


def overlay(frames: np.ndarray, mattes: np.ndarray) -> np.ndarray:
    """(F, H, W, 3) frames with each region's matte (K, F, H, W) tinted in its colour and outlined."""
    out = frames.astype(np.float32)
    for k, stack in enumerate(mattes):
        colour = np.array(COLOURS[k % len(COLOURS)], np.float32)
        out[stack] = (1 - OVERLAY_ALPHA) * out[stack] + OVERLAY_ALPHA * colour
    out = out.astype(np.uint8)
    for k, stack in enumerate(mattes):
        for f, matte in enumerate(stack):
            contours, _ = cv2.findContours(matte.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(out[f], contours, -1, COLOURS[k % len(COLOURS)], max(1, frames.shape[2] // 400))
    return out


def mattes_sheet(frames: np.ndarray, mattes: np.ndarray, phrases: list[str], columns: int = 8, cell: int = 160) -> np.ndarray:
    """Evenly spaced frames: source above, mattes over the source below, frame numbers and a legend."""
    picks = np.linspace(0, len(frames) - 1, num=min(columns, len(frames))).round().astype(int)
    cell_h = max(1, round(cell * frames.shape[1] / frames.shape[2]))
    tinted = overlay(frames[picks], mattes[:, picks])

    def row(images: np.ndarray) -> np.ndarray:
        return np.concatenate([cv2.resize(im, (cell, cell_h), interpolation=cv2.INTER_AREA) for im in images], 1)

    sheet = np.concatenate([row(frames[picks]), row(tinted)], 0)
    for i, f in enumerate(picks):
        cv2.putText(sheet, str(f), (i * cell + 4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 0), 1, cv2.LINE_AA)
    legend = np.zeros((18 * len(phrases) + 6, sheet.shape[1], 3), np.uint8)
    for k, phrase in enumerate(phrases):
        cv2.putText(legend, f"{k}: {phrase}", (6, 18 * k + 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                    COLOURS[k % len(COLOURS)], 1, cv2.LINE_AA)
    return np.concatenate([sheet, legend], 0)


def write_mattes(out: Path, job: EditJob) -> None:
    """Write the job's mattes, contact sheet and mattes.json into a staging folder, then rename it to
    `out` (which must be absent or empty): `out` holds everything or nothing."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    try:
        staging.chmod(0o777 & ~current_umask())
        regions = []
        for k, (region, stack) in enumerate(zip(job.settings.regions, job.masks)):
            folder = region_folder(k, region.phrase)
            for f, matte in enumerate(stack):
                write_png(staging / folder / f"{f:05d}.png", matte.astype(np.uint8) * 255)
            regions.append({
                "phrase": region.phrase, "folder": folder,
                "tracked": region.track if region.keyframes else None,
                "keyframes": [key.frame for key in region.keyframes], "mask": region.mask,
            })
        phrases = [r.phrase for r in job.settings.regions]
        write_png(staging / "contact_sheet.png", mattes_sheet(job.frames, job.masks, phrases))
        report = {"source": job.settings.source.path, "frames": len(job.frames), "source_frames": job.indices,
                  "size": list(job.source_size), "regions": regions}
        write_atomic(staging / "mattes.json", json.dumps(report, indent=2).encode())
        if out.exists():
            out.rmdir()  # empty (checked first); a non-empty folder is never replaced
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def cmd_mattes(args: argparse.Namespace) -> int:
    from videograin.engine.runner import check_empty_folder, check_output_folder

    out = Path(args.out).resolve()  # a link to a folder: that folder, which the final rename replaces
    check_empty_folder(out)  # before tracking, which takes a while
    bars = ProgressBars()
    try:
        job = load_job(args.job, args.device, bars)
    finally:
        bars.close()
    check_output_folder(out, job)
    write_mattes(out, job)
    print(f"wrote {out}: {len(job.masks)} matte folders of {len(job.frames)} frames, contact_sheet.png, mattes.json")
    return 0
