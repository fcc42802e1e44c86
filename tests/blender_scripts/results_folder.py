"""Where results go. A saved project's result strip points at its frames relatively, so the project
folder moved elsewhere reopens with working results. A file never saved needs the results folder of the
add-on's preferences (not the system temp). A failed edit leaves no folder behind, not even an empty one."""

import shutil
import sys
import tempfile
from pathlib import Path

import bpy
import cv2
import numpy as np

from scene_setup import FRAMES, configure_edit, finish, new_scene, preferences, register_addon

register_addon()
from videograin.blender_addon import export  # noqa: E402
from videograin.blender_addon.timeline import all_strips_of  # noqa: E402

root = Path(tempfile.mkdtemp())
project = root / "project"
scene, source, mattes, frames = new_scene(project)
bpy.ops.wm.save_as_mainfile(filepath=str(project / "edit.blend"))
edit = configure_edit(scene, sys.argv[1])
assert bpy.ops.videograin.edit(wait=True) == {"FINISHED"}, edit.error
name = edit.result_strip
bpy.ops.wm.save_mainfile()

moved = root / "elsewhere" / "project moved"
shutil.move(project, moved)
bpy.ops.wm.open_mainfile(filepath=str(moved / "edit.blend"))
scene = bpy.context.scene
result = all_strips_of(scene)[name]
folder = Path(bpy.path.abspath(result.directory))
assert folder.parent == moved / "videograin_results", folder
files = [folder / element.filename for element in result.elements]
assert len(files) == FRAMES and all(path.is_file() for path in files), files
shown = export.read_bmp(export.render_strip(scene, result, range(result.frame_final_start, result.frame_final_start + 1),
                                            root / "shown")[0])
assert np.array_equal(shown, cv2.imread(str(files[0]))[..., ::-1]), "Blender does not show the moved result"

# A file never saved: Edit asks for a results folder, and writes nothing anywhere until it has one.
bpy.ops.wm.read_homefile(use_empty=True)
scene = bpy.context.scene
scene, source, mattes, frames = new_scene(root / "unsaved")
vg = configure_edit(scene, sys.argv[1])
tempfile.tempdir = tempfile.mkdtemp()
try:
    bpy.ops.videograin.edit(wait=True)
    raise AssertionError("an unsaved file edited without a results folder")
except RuntimeError as exc:
    assert "results folder for unsaved files" in str(exc), exc
assert list(Path(tempfile.tempdir).iterdir()) == []
chosen = root / "chosen results"
preferences().results_folder = str(chosen)
assert bpy.ops.videograin.edit(wait=True) == {"FINISHED"}, vg.error
result = all_strips_of(scene)[vg.result_strip]
assert Path(result.directory).parent == chosen, result.directory  # absolute: nothing to be relative to

# A failed edit (an empty matte: the engine refuses the job) leaves no folder it made.
preferences().results_folder = str(root / "new" / "results")
for path in sorted((root / "unsaved" / "mattes").iterdir()):
    cv2.imwrite(str(path), np.zeros(frames[0].shape[:2], np.uint8))
try:
    bpy.ops.videograin.edit(wait=True)
    raise AssertionError("edited with an empty matte")
except RuntimeError as exc:
    assert "the matte is empty" in str(exc), exc
assert not (root / "new").exists()
assert list(Path(tempfile.tempdir).iterdir()) == []
finish()
