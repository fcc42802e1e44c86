"""The sidebar panel draws in every state. Headless Blender has no window to draw in, so the panel draws
into a recording layout that checks each call against Blender's real UILayout API and each property
against the real RNA of the data it names."""

import json
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
    for cls in panel.classes:
        if issubclass(cls, bpy.types.Panel):
            holder = type("PanelSelf", (), {})()
            holder.layout = RecordingLayout(calls)
            cls.draw(holder, context)
    return calls


def labels(calls: list, icon: str) -> list[str]:
    return [call[2]["text"] for call in calls if call[0] == "label" and call[2].get("icon") == icon]


folder = Path(tempfile.mkdtemp())
scene, source, mattes, frames = new_scene(folder)
vg = scene.videograin
context = bpy.context

idle = draw(context)
assert not any(name in ("progress", "template_icon") for name, *_ in idle)
for matte_source in ("MASK", "STRIP", "IMAGE"):
    bpy.ops.videograin.region_add()
    vg.regions[-1].matte_source = matte_source
    draw(context)

# The engine's state, from its watch: a connection file whose engine never answers.
dead = folder / "dead.json"
dead.write_text(json.dumps({"address": "tcp://127.0.0.1:9", "key": "00" * 32}))
vg.connection_file = str(dead)
assert any("Waiting for the engine at tcp://127.0.0.1:9" in text for text in labels(draw(context), "TIME"))
operators.engine_watch(vg.connection_file).wait(10)
assert any("does not answer" in text for text in labels(draw(context), "ERROR"))

vg.running, vg.phase, vg.step, vg.total, vg.progress = True, "edit", 3, 10, 55.0
operators._show_preview(scene.name, np.zeros((48, 64, 3), np.uint8))
running = draw(context)
edit_button = [call for call in running if call[0] == "operator" and call[1][0] == "videograin.edit"]
assert edit_button and not edit_button[0][3], "Edit must be disabled while an edit runs"
progress = [call for call in running if call[0] == "progress"]
assert progress and progress[0][2]["factor"] == 0.55 and progress[0][2]["text"] == "edit 3/10", progress
icons = [call for call in running if call[0] == "template_icon"]
assert icons and icons[0][2]["icon_value"] == operators.preview_of(scene.name).icon_id, "no step preview"

vg.running, vg.error = False, "The engine at tcp://127.0.0.1:5000 does not answer: is it still running? " * 2
lines = [call for call in draw(context) if call[0] == "label" and call[2]["text"] in vg.error]
assert len(lines) > 1 and all(len(call[2]["text"]) <= 48 for call in lines), lines
finish()
