"""A script's edit through a real engine, `edit(wait=True)`: a new strip above the source, same range, one
frame each, named in `result_strip`. The source and matte strips are plain image sequences and the engine
is on loopback, so nothing is rendered: the engine reads the files. An engine that cannot read our paths
gets pixels instead."""

import sys
import tempfile
from pathlib import Path

import bpy

from scene_setup import FRAMES, START, configure_edit, count_renders, finish, new_scene, register_addon, strip_summary

register_addon()
from videograin.blender_addon import export, previews  # noqa: E402
from videograin.blender_addon.jobspec import FileRun  # noqa: E402
from videograin.blender_addon.timeline import all_strips_of  # noqa: E402

folder = Path(tempfile.mkdtemp())
tempfile.tempdir = str(folder / "tmp")  # the export's scratch files land here, to be checked at the end
Path(tempfile.tempdir).mkdir()
scene, source, mattes, frames = new_scene(folder)
bpy.ops.wm.save_as_mainfile(filepath=str(folder / "project.blend"))
vg = configure_edit(scene, sys.argv[1])
scene.videograin.keep_preview = True
before = strip_summary(scene)
renders = count_renders()

assert bpy.ops.videograin.edit(wait=True) == {"FINISHED"}
assert not vg.running and vg.error == "", vg.error
assert vg.status.startswith("Done") and "not an edit" in vg.status, vg.status
assert renders == [], f"{len(renders)} frames rendered for plain strips on a local engine"

new = [s for s in all_strips_of(scene) if s.name not in {b[0] for b in before}]
assert len(new) == 1, strip_summary(scene)
result = new[0]
assert vg.result_strip == result.name, (vg.result_strip, result.name)
assert result.channel > source.channel and result.channel not in (1, 2), result.channel
assert (result.frame_final_start, result.frame_final_duration) == (START, FRAMES)
assert len(result.elements) == FRAMES
assert result.directory.startswith("//videograin_results/"), result.directory  # relative to the .blend
results_dir = Path(bpy.path.abspath(result.directory))
assert results_dir.parent == folder / "videograin_results", results_dir
assert sorted(p.name for p in results_dir.glob("*.png")) == [f"{i:05d}.png" for i in range(FRAMES)]
assert not [p for p in results_dir.parent.iterdir() if ".partial-" in p.name]
assert strip_summary(scene) == sorted(before + [(result.name, result.channel, START, START + FRAMES, False)])
assert previews.preview_of(source["videograin_key"]) is not None, "Keep Preview is on: the last preview stays"

# A path the engine cannot read (as behind a forwarded port): the edit renders and sends pixels.
plain_run = export.plain_run
export.plain_run = lambda *args: FileRun(str(folder / "not-on-the-engine's-disk"), 0, FRAMES, FRAMES)
assert bpy.ops.videograin.edit(wait=True) == {"FINISHED"}
export.plain_run = plain_run
assert vg.error == "" and vg.status.startswith("Done"), (vg.status, vg.error)
assert len(renders) == 2 * FRAMES, len(renders)  # the source and the matte strip, rendered
assert vg.result_strip not in (result.name, ""), vg.result_strip
assert not any(Path(tempfile.tempdir).iterdir()), "the export left scratch files"
finish()
