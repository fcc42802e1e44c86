"""Edit through a real engine process: a new strip above the source, same range, one frame each."""

import sys
import tempfile
from pathlib import Path

import bpy

from scene_setup import FRAMES, START, configure_edit, finish, new_scene, register_addon, run_until_done, strip_summary

register_addon()
folder = Path(tempfile.mkdtemp())
tempfile.tempdir = str(folder / "tmp")  # the export's scratch files land here, to be checked at the end
Path(tempfile.tempdir).mkdir()
scene, source, mattes, frames = new_scene(folder)
bpy.ops.wm.save_as_mainfile(filepath=str(folder / "project.blend"))
configure_edit(scene, sys.argv[1])
before = strip_summary(scene)
vg = scene.videograin

assert bpy.ops.videograin.edit() == {"FINISHED"}
assert vg.running
run_until_done(scene)
assert not vg.running and vg.error == "", vg.error
assert vg.status.startswith("Done") and "not an edit" in vg.status, vg.status

from videograin.blender_addon.export import all_strips_of  # noqa: E402

new = [s for s in all_strips_of(scene) if s.name not in {b[0] for b in before}]
assert len(new) == 1, strip_summary(scene)
result = new[0]
assert result.channel > source.channel and result.channel not in (1, 2), result.channel
assert (result.frame_final_start, result.frame_final_duration) == (START, FRAMES)
assert len(result.elements) == FRAMES
results_dir = Path(bpy.path.abspath(result.directory))
assert results_dir.parent == folder / "videograin_results", results_dir  # next to the .blend
assert sorted(p.name for p in results_dir.glob("*.png")) == [f"{i:05d}.png" for i in range(FRAMES)]
assert not [p for p in results_dir.parent.iterdir() if ".partial-" in p.name]
assert not any(Path(tempfile.tempdir).iterdir()), "the export left scratch files"
assert strip_summary(scene) == sorted(before + [(result.name, result.channel, START, START + FRAMES, False)])
finish()
