"""How fast the add-on moves frames, measured inside Blender (bpy) for `videograin bench --blender`:

    python -m videograin.blender_addon.throughput --frames 48 --json report.json

Export: the render route (the sequencer renders the strip to uncompressed BMP, read back as the arrays
an inline submit sends) next to the route it replaced (one render per frame to PNG at Blender's default
compression), the files route (nothing rendered: the engine reads the files, timed here with the
engine's own reader), and mask mattes rasterised through the compositor. Import: result frames arriving
as PNG files' bytes written by the edit session and put on the timeline as an image strip. Each for
smooth and noisy pictures at 720p and 1080p. A development tool: not part of the built extension.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import bpy
import cv2
import numpy as np

from ..engine.inputs.media import read_sequence  # what the engine does with the paths it is sent
from ..protocol.wire import Message
from .export import frame_range, plain_run, read_bmp, render_mask, render_strip
from .session import EditSession
from .timeline import insert_result_strip, strips_of

SIZES = {"720p": (1280, 720), "1080p": (1920, 1080)}
START = 1


def picture(kind: str, index: int, width: int, height: int) -> np.ndarray:
    """Smooth gradients that move (compress well), or noise (does not compress at all)."""
    if kind == "noise":
        return np.random.default_rng(index).integers(0, 256, (height, width, 3), dtype=np.uint8)
    x, y = np.meshgrid(np.linspace(0, 1, width), np.linspace(0, 1, height))
    shift = index / 48
    return (np.stack([x + shift, y, (x + y) / 2 - shift], axis=-1) % 1.0 * 255).astype(np.uint8)


def _rate(frames: int, started: float) -> float:
    return frames / (time.perf_counter() - started)


def _png_baseline(scene, strip, frames: range, folder: Path) -> float:
    """The route export took before: one render per frame, written as PNG at Blender's default compression."""
    folder.mkdir()
    image = scene.render.image_settings
    image.file_format, image.color_mode, image.compression = "PNG", "RGB", 15
    started = time.perf_counter()
    for frame in frames:
        scene.frame_set(frame)
        scene.render.filepath = str(folder / f"{frame:05d}.png")
        bpy.ops.render.render(write_still=True)
        (folder / f"{frame:05d}.png").read_bytes()
    return _rate(len(frames), started)


class _Playback:
    """Stands in for the engine: a `frame` message per PNG file's bytes, then `done`."""

    def __init__(self, pngs: list[bytes]) -> None:
        self.messages = [Message({"type": "frame", "job": "bench", "index": i, "image": {"part": 0, "encoding": "png"}}, [png])
                         for i, png in enumerate(pngs)]
        self.messages.append(Message({"type": "done", "job": "bench", "frames": len(pngs), "seconds": 0.0}))

    def poll(self) -> list[Message]:
        messages, self.messages = self.messages, []
        return messages

    def close(self) -> None:
        pass


def measure(kind: str, size: str, count: int, folder: Path) -> dict[str, float]:
    width, height = SIZES[size]
    clip = folder / f"{kind}-{size}"
    clip.mkdir()
    pictures = [picture(kind, i, width, height) for i in range(count)]
    for i, rgb in enumerate(pictures):
        cv2.imwrite(str(clip / f"{i:05d}.png"), rgb[..., ::-1])
    bpy.ops.wm.read_homefile(use_empty=True)
    scene = bpy.context.scene
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = width, height, 100
    scene.sequence_editor_create()
    strip = strips_of(scene).new_image(name="clip", filepath=str(clip / "00000.png"), channel=1, frame_start=START)
    for i in range(1, count):
        strip.elements.append(f"{i:05d}.png")
    frames = frame_range(strip)
    report: dict[str, float] = {}
    render_strip(scene, strip, range(frames.start, frames.start + 1), folder / f"warm-up-{kind}-{size}")

    started = time.perf_counter()
    arrays = [read_bmp(p) for p in render_strip(scene, strip, frames, folder / f"render-{kind}-{size}")]
    report["export_render_fps"] = _rate(count, started)
    assert np.array_equal(arrays[-1], pictures[-1]), "the render route changed pixels"
    baseline = range(frames.start, frames.start + min(count, 12))  # it is slow: fewer frames
    report["export_png_per_frame_fps"] = _png_baseline(scene, strip, baseline, folder / f"png-{kind}-{size}")

    started = time.perf_counter()
    run = plain_run(scene, strip, frames)
    report["export_files_ms"] = 1000 * (time.perf_counter() - started)
    assert run is not None and run.count == count
    started = time.perf_counter()
    read_sequence(Path(run.path), list(range(run.start, run.start + run.count)), "source")
    report["engine_reads_files_fps"] = _rate(count, started)

    mask = bpy.data.masks.new("bench")
    spline = mask.layers.new(name="l").splines.new()
    spline.points.add(3)
    for point, co in zip(spline.points, [(0.2, 0.2), (0.7, 0.25), (0.8, 0.8), (0.25, 0.7)]):
        point.co = co
    started = time.perf_counter()
    for path in render_mask(scene, mask, frames, folder / f"mask-{kind}-{size}"):
        read_bmp(path)
    report["export_mask_fps"] = _rate(count, started)

    bpy.ops.wm.save_as_mainfile(filepath=str(folder / f"{kind}-{size}.blend"))
    pngs = [(clip / f"{i:05d}.png").read_bytes() for i in range(count)]
    started = time.perf_counter()
    session = EditSession(_Playback(pngs), folder / f"results-{kind}-{size}" / "edit")
    session.job = "bench"  # as if submitted
    while session.tick():
        pass
    insert_result_strip(scene, strip, session.frame_paths(), "clip edit")
    report["import_fps"] = _rate(count, started)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    report: dict = {"blender": bpy.app.version_string, "python": platform.python_version(), "frames": args.frames}
    with tempfile.TemporaryDirectory(prefix="videograin-bench-") as folder:
        for size in SIZES:
            for kind in ("smooth", "noise"):
                report[f"{size} {kind}"] = measure(kind, size, args.frames, Path(folder))
    Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
