"""A stand-in for Blender's UILayout, for drawing panels in headless Blender (which has no window): it
records each call, checked against the real UILayout API and the real RNA of the data it names."""

import bpy


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
            if name == "operator":
                return OperatorSettings(args[0], self.calls)
            return RecordingLayout(self.calls) if name in ("box", "row", "column") else None

        return call


class OperatorSettings:
    """What `layout.operator` returns: setting a property the operator lacks fails, as in Blender."""

    def __init__(self, idname: str, calls: list) -> None:
        module, name = idname.split(".")
        self.__dict__["_rna"] = getattr(getattr(bpy.ops, module), name).get_rna_type()
        self.__dict__["_calls"] = calls

    def __setattr__(self, name: str, value) -> None:
        assert name in self._rna.properties, f"{self._rna.identifier} has no property '{name}'"
        self._calls.append(("operator_setting", (name, value), {}, True))


def draw(context) -> list:
    """Every panel of the add-on drawn in `context`: the calls they made."""
    from videograin.blender_addon import panel

    calls: list = []
    for cls in panel.classes:
        if issubclass(cls, bpy.types.Panel) and (not hasattr(cls, "poll") or cls.poll(context)):
            holder = type("PanelSelf", (), {})()
            holder.layout = RecordingLayout(calls)
            cls.draw(holder, context)
    return calls


def labels(calls: list, icon: str) -> list[str]:
    return [call[2]["text"] for call in calls if call[0] == "label" and call[2].get("icon") == icon]
