"""The shots in flight (`shots.Shot`, one per source strip) and the one tick that follows them all on
the main thread: progress onto each strip's edit, results into the timeline above their own strip, and
the engine's death (a local engine's exit is seen on the next tick). Scripts wait on the same tick."""

from __future__ import annotations

import time

import bpy

from . import engine_ops, jobs, previews, timeline
from .session import DONE
from .shots import Shot

TICK_SECONDS = 0.2
WAIT_SECONDS = 0.05  # between ticks when a script waits

_shots: dict[str, Shot] = {}  # by source strip key, in the order queued; ended shots stay to be shown


def shots() -> list[Shot]:
    return list(_shots.values())


def shot_of(key: str) -> Shot | None:
    return _shots.get(key)


def strip_of(scene, shot: Shot):
    return timeline.find_strip(scene, shot.key, shot.name)


def launch(scene, shot: Shot) -> None:
    """Follow a submitted job from the next tick on."""
    _shots.pop(shot.key, None)
    _shots[shot.key] = shot
    edit = strip_of(scene, shot).videograin
    edit.running, edit.status, edit.error, edit.progress, edit.phase = True, "Queued on the engine", "", 0.0, "queued"
    if not bpy.app.timers.is_registered(tick):
        bpy.app.timers.register(tick, first_interval=TICK_SECONDS)


def wait_for(keys: list[str]) -> None:
    """Run the tick here until the shots of `keys` have ended (scripts)."""
    try:
        while any(_shots[key].active for key in keys if key in _shots):
            tick()
            time.sleep(WAIT_SECONDS)
    except KeyboardInterrupt:  # a script stopped by hand stops its jobs on the engine too
        for key in keys:
            if key in _shots:
                _shots[key].session.abandon()
        tick()
        raise


def tick() -> float | None:
    """Take in every engine's messages; None (stop the timer) once no shot is running."""
    gone = engine_ops.exited_engine()
    for shot in list(_shots.values()):
        if not shot.active:
            continue
        scene = bpy.data.scenes.get(shot.scene)
        if gone is not None and gone[0] == shot.connection_file:
            shot.session.fail(gone[1])
            if scene is not None:
                scene.videograin.error = gone[1]
        if scene is None:
            shot.session.abandon()
            continue
        _follow(scene, shot)
    return TICK_SECONDS if any(shot.active for shot in _shots.values()) else None


def _follow(scene, shot: Shot) -> None:
    session = shot.session
    still_running = session.tick()
    strip = strip_of(scene, shot)
    preview = session.take_preview()
    if preview is not None:
        previews.show_preview(shot.key, preview)
    if strip is not None:
        shot.name = strip.name  # renamed meanwhile: the queue shows it, and it breaks a tie with a duplicate
        edit = strip.videograin
        edit.phase, edit.step, edit.total = session.phase, session.step, session.total
        edit.progress = 100.0 * session.progress
        edit.status = f"{session.phase} {session.step}/{session.total}" if session.total else session.phase
    if still_running:
        return
    session.close()
    if not scene.videograin.keep_preview:
        previews.drop_preview(shot.key)
    if strip is None:
        where = f": the results are in {session.result_folder}" if session.state == DONE else ""
        scene.videograin.status = f"'{shot.name}' is gone{where}"
        return
    edit = strip.videograin
    edit.running = False
    if session.state == DONE:
        shot.finish(scene, shot)
    else:
        edit.status, edit.error = session.state.capitalize(), ("" if session.state == "cancelled" else session.message)


def cancel(key: str) -> bool:
    """Ask the engine to stop the shot of `key`; False when none of it is running."""
    shot = _shots.get(key)
    if shot is None or not shot.active:
        return False
    shot.session.cancel()
    return True


def clear_ended() -> None:
    for key in [key for key, shot in _shots.items() if not shot.active]:
        del _shots[key]


def abandon_all() -> None:
    """Stop every job on the engine without waiting: another file opens, or the add-on goes."""
    for shot in _shots.values():
        shot.session.abandon()
    _shots.clear()
    if bpy.app.timers.is_registered(tick):
        bpy.app.timers.unregister(tick)


class VIDEOGRAIN_OT_cancel(bpy.types.Operator):
    """Stop the job of the active strip (or of the strip named); nothing is added to the timeline"""

    bl_idname = "videograin.cancel"
    bl_label = "Cancel"

    strip: bpy.props.StringProperty(name="Strip", default="", options={"SKIP_SAVE"},
                                    description="The strip whose job to stop (empty: the active strip)")

    def execute(self, context):
        strip = jobs.named_or_active(context.scene, self.strip)
        key = strip.get(timeline.KEY) if strip is not None else None
        if not key or not cancel(key):
            self.report({"WARNING"}, "No edit or tracking of that strip is running")
            return {"CANCELLED"}
        strip.videograin.status = "Cancelling"
        return {"FINISHED"}


class VIDEOGRAIN_OT_cancel_all(bpy.types.Operator):
    """Stop every job of the queue; nothing is added to the timeline"""

    bl_idname = "videograin.cancel_all"
    bl_label = "Cancel All"

    def execute(self, context):
        cancelled = [key for key in list(_shots) if cancel(key)]
        if not cancelled:
            self.report({"WARNING"}, "No edit or tracking is running")
            return {"CANCELLED"}
        return {"FINISHED"}


class VIDEOGRAIN_OT_queue_clear(bpy.types.Operator):
    """Take the shots that ended off the queue"""

    bl_idname = "videograin.queue_clear"
    bl_label = "Clear Ended"

    def execute(self, context):
        clear_ended()
        context.scene.videograin.refused.clear()
        return {"FINISHED"}


classes = (VIDEOGRAIN_OT_cancel, VIDEOGRAIN_OT_cancel_all, VIDEOGRAIN_OT_queue_clear)


def register() -> None:
    for cls in classes:
        bpy.utils.register_class(cls)


def unregister() -> None:
    abandon_all()
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
