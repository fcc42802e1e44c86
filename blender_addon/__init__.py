"""VideoGrain for Blender's Video Sequence Editor: paint regions, prompt each, edit, get a new strip.

The bpy layer is thin and split by what it does: what is stored (properties), the edit and the queue
(edit_ops, runs), Check (check_ops), Track Matte (track_ops), the engine (engine_ops), regions
(region_ops), files opening (files) and the panels. Job building, the edit session, the shots of the
queue and the engine link are plain modules, testable without Blender.
"""

from __future__ import annotations


def _modules():
    from . import check_ops, edit_ops, engine_ops, files, panel, previews, properties, region_ops, runs, track_ops

    return (properties, previews, runs, engine_ops, edit_ops, check_ops, track_ops, region_ops, files, panel)


def register() -> None:
    for module in _modules():
        module.register()


def unregister() -> None:
    for module in reversed(_modules()):
        module.unregister()
