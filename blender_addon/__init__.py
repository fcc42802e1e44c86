"""VideoGrain for Blender's Video Sequence Editor: paint regions, prompt each, edit, get a new strip.

The bpy layer (properties, operators, panel, export, timeline) is thin; job building, the edit session
and the engine link are plain modules, testable without Blender.
"""

from __future__ import annotations


def register() -> None:
    from . import operators, panel, properties

    properties.register()
    operators.register()
    panel.register()


def unregister() -> None:
    from . import operators, panel, properties

    panel.unregister()
    operators.unregister()
    properties.unregister()
