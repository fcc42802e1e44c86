"""Which route the export takes: a plain image sequence or movie strip is named by its files (nothing
rendered), and the engine, reading them, gets the pixels the sequencer shows; any change the sequencer
would make to pixels or timing sends the strip through a render instead."""

import tempfile
from pathlib import Path

import cv2
import numpy as np

from scene_setup import FRAMES, HEIGHT, START, WIDTH, count_renders, finish, image_strip, new_scene, register_addon

register_addon()
from videograin.blender_addon import export, jobspec  # noqa: E402
from videograin.blender_addon.timeline import strips_of  # noqa: E402
from videograin.engine.inputs.media import read_sequence  # noqa: E402  (what the engine reads)

folder = Path(tempfile.mkdtemp())
scene, source, mattes, frames = new_scene(folder)
renders = count_renders()


def engine_reads(run: jobspec.FileRun) -> np.ndarray:
    return read_sequence(Path(run.path), list(range(run.start, run.start + run.count)), "source")


def rendered(strip) -> np.ndarray:
    files = export.render_strip(scene, strip, export.frame_range(strip), Path(tempfile.mkdtemp()))
    return np.stack([export.read_bmp(p) for p in files])


# Plain, then trimmed at both ends: the files route, and the engine reads what a render shows.
for trim in (0, 1):
    source.frame_offset_start = source.frame_offset_end = trim
    run = export.plain_run(scene, source, export.frame_range(source))
    assert run is not None and (run.path, run.start, run.count, run.length) == (str(folder / "source"), trim, FRAMES - 2 * trim, FRAMES), run
    count = len(renders)
    assert np.array_equal(engine_reads(run), rendered(source)), "the engine would read other frames"
    assert len(renders) == count + run.count
source.frame_offset_start = source.frame_offset_end = 0

# Another folder of frames beside the clip's own: they count too, as the engine lists the folder.
cv2.imwrite(str(folder / "source" / "0000-first.png"), frames[0])
run = export.plain_run(scene, source, export.frame_range(source))
assert (run.start, run.length) == (1, FRAMES + 1), run
(folder / "source" / "0000-first.png").unlink()

# A plain movie strip (written losslessly, to compare pixels).
movie_path = folder / "clip.avi"
writer = cv2.VideoWriter(str(movie_path), cv2.VideoWriter_fourcc(*"FFV1"), scene.render.fps, (WIDTH, HEIGHT))
for frame in frames:
    writer.write(frame)
writer.release()
movie = strips_of(scene).new_movie(name="movie", filepath=str(movie_path), channel=5, frame_start=START + 20)
movie.frame_offset_start = 1
run = export.plain_run(scene, movie, export.frame_range(movie))
assert run is not None and (run.path, run.start, run.count) == (str(movie_path), 1, FRAMES - 1), run
assert np.array_equal(engine_reads(run), rendered(movie))
scene.render.fps = 30 if scene.render.fps != 30 else 25  # the sequencer would retime it
assert export.plain_run(scene, movie, export.frame_range(movie)) is None
scene.render.fps = int(movie.fps)

# Each change the sequencer makes to pixels or timing takes the render route.
renders.clear()
changes = {
    "moved": lambda s: setattr(s.transform, "offset_x", 3),
    "scaled": lambda s: setattr(s.transform, "scale_x", 0.5),
    "rotated": lambda s: setattr(s.transform, "rotation", 0.1),
    "cropped": lambda s: setattr(s.crop, "min_x", 2),
    "flipped": lambda s: setattr(s, "use_flip_y", True),
    "reversed": lambda s: setattr(s, "use_reverse_frames", True),
    "strobed": lambda s: setattr(s, "strobe", 2.0),
    "saturation": lambda s: setattr(s, "color_saturation", 0.5),
    "multiplied": lambda s: setattr(s, "color_multiply", 0.5),
    "faded": lambda s: setattr(s, "blend_alpha", 0.5),
    "float": lambda s: setattr(s, "use_float", True),
    "colour space": lambda s: setattr(s.colorspace_settings, "name", "Non-Color"),
    "animated": lambda s: s.keyframe_insert("color_multiply", frame=START),
    "held": lambda s: setattr(s, "frame_offset_start", -1),  # shows the first frame before the clip starts
}
for name, change in changes.items():
    strip = image_strip(scene, name, folder / "source", channel=10)
    assert export.plain_run(scene, strip, export.frame_range(strip)) is not None, name
    change(strip)
    assert export.plain_run(scene, strip, export.frame_range(strip)) is None, f"{name} strip taken as plain"
    strips_of(scene).remove(strip)
assert renders == []

# The files must be at the render size: the sequencer would scale them.
scene.render.resolution_x = WIDTH * 2
assert export.plain_run(scene, source, export.frame_range(source)) is None
scene.render.resolution_x = WIDTH

# Mattes line up with the source frame for frame, or are rendered.
run = export.plain_run(scene, source, export.frame_range(source))
matte_run = export.plain_run(scene, mattes, export.frame_range(source))
assert matte_run is not None and jobspec.aligned(matte_run, run)
shifted = jobspec.FileRun(matte_run.path, 1, matte_run.count, matte_run.length)
assert not jobspec.aligned(shifted, run)
finish()
