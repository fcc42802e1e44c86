"""What happens as files open and close: jobs of the file that closes stop on the engine; a file that
opens gets its engines watched, its interrupted jobs said, and, when an earlier version saved it with
the edit on the scene, that edit moved onto its source strip (`legacy`)."""

from __future__ import annotations

import bpy

from . import jobs, legacy, previews, runs, timeline, watches


def migrate(scene) -> str:
    """Move a scene-level edit (files of earlier versions) onto its source strip: the strip it named, else
    the active strip. Returns the strip's name ("" when there was nothing to move or nowhere to put it)."""
    stored = scene.videograin
    found = legacy.legacy_edit({name: stored[name] for name in stored.keys()})
    if found is None or scene.sequence_editor is None:
        return ""
    if found.source_key:
        source = timeline.find_strip(scene, found.source_key, found.source_name)
    else:  # the edit was of whichever strip was active
        source = scene.sequence_editor.active_strip
    if source is None:
        scene.videograin.error = ("This file's edit (from an earlier version) has lost its strip: select the strip "
                                  "and open the file again to move the edit onto it.")
        return ""
    edit = source.videograin
    for name, value in found.values.items():
        edit[name] = value
    edit.enabled = True
    result = timeline.all_strips_of(scene).get(found.result_name) if found.result_name else None
    if result is not None:
        take = edit.takes.add()
        take.strip, take.prompt = result.name, edit.prompt
    for name in legacy.stale_names(stored):
        del stored[name]
    scene.videograin.status = f"The edit of this file (from an earlier version) is now the edit of '{source.name}'"
    return source.name


@bpy.app.handlers.persistent
def _file_closing(*_args) -> None:
    """Stop every job on the engine: another file opens (this one's timers die). The previews go too."""
    runs.abandon_all()
    watches.close_all()
    previews.clear()


@bpy.app.handlers.persistent
def _file_opened(*_args) -> None:
    """Old edits move to their strips; a file saved mid-edit opens with no job behind it: say so, and let
    Edit run again. Its engines are watched from now on."""
    for scene in bpy.data.scenes:
        migrate(scene)
        for strip in timeline.all_strips_of(scene) if scene.sequence_editor else ():
            edit = strip.videograin
            if edit.running:
                edit.running, edit.status = False, "The last edit or tracking was interrupted when its file closed"
        if scene.videograin.connection_file:
            jobs.engine_watch(scene.videograin.connection_file)


@bpy.app.handlers.persistent
def _frame_changed(*_args) -> None:
    previews.forget_attention()  # the panel loads the new frame's maps


def _redraw_panels() -> float:
    """Keep the engine's state and the queue in the sidebar current while nothing else redraws them."""
    for window in getattr(bpy.context.window_manager, "windows", ()):
        for area in window.screen.areas:
            if area.type == "SEQUENCE_EDITOR":
                area.tag_redraw()
    return 1.0


HANDLERS = ((bpy.app.handlers.load_pre, _file_closing), (bpy.app.handlers.load_post, _file_opened),
            (bpy.app.handlers.frame_change_post, _frame_changed))


def register() -> None:
    for handlers, handler in HANDLERS:
        handlers.append(handler)
    bpy.app.timers.register(_redraw_panels, first_interval=1.0, persistent=True)


def unregister() -> None:
    if bpy.app.timers.is_registered(_redraw_panels):
        bpy.app.timers.unregister(_redraw_panels)
    for handlers, handler in HANDLERS:
        if handler in handlers:
            handlers.remove(handler)
    _file_closing()
