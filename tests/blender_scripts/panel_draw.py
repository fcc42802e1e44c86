"""The sidebar panel draws in every state. Headless Blender has no window to draw in, so the panel draws
into a recording layout that checks each call against Blender's real UILayout API and each property
against the real RNA of the data it names."""

import sys
import tempfile
from pathlib import Path

import bpy
import numpy as np

from scene_setup import finish, new_scene, register_addon

register_addon()
from videograin.blender_addon import operators, panel  # noqa: E402


class RecordingLayout:
    def __init__(self, calls: list) -> None:
        self.calls = calls
        self.enabled, self.scale_y = True, 1.0

    def __getattr__(self, name: str):
        function = bpy.types.UILayout.bl_rna.functions.get(name)
        assert function is not None, f"UILayout has no '{name}' in Blender {bpy.app.version_string}"

        def call(*args, **kwargs):
            unknown = set(kwargs) - set(function.parameters.keys())
            assert not unknown, f"UILayout.{name} takes no {unknown} in Blender {bpy.app.version_string}"
            if name in ("prop", "prop_search"):
                data, prop = args[0], args[1]
                assert prop in data.bl_rna.properties, f"{type(data).__name__} has no property '{prop}'"
            if name == "prop_search":
                assert args[3] in args[2].bl_rna.properties, f"no collection '{args[3]}'"
            if name == "template_list":
                assert args[3] in args[2].bl_rna.properties and args[5] in args[4].bl_rna.properties
            self.calls.append((name, args, kwargs, self.enabled))
            return RecordingLayout(self.calls) if name in ("box", "row", "column") else None

        return call


def draw(context) -> list:
    calls: list = []
    holder = type("PanelSelf", (), {})()
    holder.layout = RecordingLayout(calls)
    panel.VIDEOGRAIN_PT_panel.draw(holder, context)
    return calls


folder = Path(tempfile.mkdtemp())
scene, source, mattes, frames = new_scene(folder)
vg = scene.videograin
context = bpy.context

idle = draw(context)
assert not any(name == "progress" for name, *_ in idle)
for matte_source in ("MASK", "STRIP", "IMAGE"):
    bpy.ops.videograin.region_add()
    vg.regions[-1].matte_source = matte_source
    draw(context)

vg.running, vg.phase, vg.step, vg.total, vg.progress = True, "edit", 3, 10, 55.0
operators._show_preview(np.zeros((48, 64, 3), np.uint8))
running = draw(context)
edit_button = [call for call in running if call[0] == "operator" and call[1][0] == "videograin.edit"]
assert edit_button and not edit_button[0][3], "Edit must be disabled while an edit runs"
progress = [call for call in running if call[0] == "progress"]
assert progress and progress[0][2]["factor"] == 0.55 and progress[0][2]["text"] == "edit 3/10", progress
assert any(call[0] == "template_icon" for call in running), "no step preview"

vg.running, vg.error = False, "The engine at tcp://127.0.0.1:5000 does not answer: is it still running? " * 2
errors = [call for call in draw(context) if call[0] == "label" and call[2].get("icon") == "ERROR"]
assert len(errors) > 1 and all(len(call[2]["text"]) <= 48 for call in errors), errors
finish()
