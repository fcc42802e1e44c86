"""The engine: start a local one (and see at once when it dies), stop it, ask whether an engine answers."""

from __future__ import annotations

import functools
from pathlib import Path

import bpy

from . import jobs, watches
from .engine_link import ABSENT, SILENT, EngineError, LocalEngine

LOG_LINES = 8  # of a dead engine's log, shown with its exit

# A local engine process and its last log (also after it stopped).
_engine: dict[str, LocalEngine] = {}
_last_log: dict[str, Path] = {}


def data_folder() -> Path:
    """The add-on's own folder for engine logs and connection files: the extension's user folder when it
    runs as an extension, else `<Blender user folder>/datafiles/videograin`."""
    try:
        return Path(bpy.utils.extension_path_user(__package__, create=True))
    except ValueError:  # not an extension: registered from the videograin package itself
        return Path(bpy.utils.user_resource("DATAFILES", path="videograin", create=True))


def engine_log() -> Path | None:
    """The local engine's log, also after it stopped."""
    return _last_log.get("local")


def local_process():
    """The local engine's process (`subprocess.Popen`), or None when the add-on started none."""
    engine = _engine.get("local")
    return engine.process if engine is not None else None


def exited_engine() -> tuple[str, str] | None:
    """(its connection file, what to tell) when the engine this add-on started has exited since the last
    call; None while it runs, or when there is none. The process itself says so: no heartbeat to miss."""
    engine = _engine.get("local")
    if engine is None or engine.process.poll() is None:
        return None
    del _engine["local"]
    engine.stop()  # closes its log
    lines = engine.log_path.read_text(errors="replace").splitlines()[-LOG_LINES:]
    message = f"The engine exited (code {engine.process.returncode}); the end of its log ({engine.log_path.name}):"
    return str(engine.connection_file), " | ".join([message, *lines])


class VIDEOGRAIN_OT_start_engine(bpy.types.Operator):
    """Start a local engine with the configured Python and arguments"""

    bl_idname = "videograin.start_engine"
    bl_label = "Start Engine"

    wait: bpy.props.BoolProperty(name="Wait", default=False, options={"SKIP_SAVE"},
                                 description="Block until the engine answers (scripts)")

    def execute(self, context):
        vg = context.scene.videograin
        stop_engine()
        try:
            engine = LocalEngine(vg.engine_python, vg.engine_args, data_folder())
            if self.wait:
                engine.wait_ready()
        except EngineError as exc:
            return jobs.fail(self, vg, exc.message)
        _engine["local"], _last_log["local"] = engine, engine.log_path
        vg.connection_file, vg.error = str(engine.connection_file), ""
        if not self.wait:
            vg.status = "Engine starting"
            bpy.app.timers.register(functools.partial(_engine_tick, context.scene.name), first_interval=0.5)
            return {"FINISHED"}
        watch = jobs.engine_watch(vg.connection_file)
        watch.wait(watches.WATCH_TIMEOUT_S + 1.0)
        if not watch.alive:
            return jobs.fail(self, vg, watch.message)
        vg.status = "Engine ready"
        return {"FINISHED"}


def _engine_tick(scene_name: str) -> float | None:
    engine, scene = _engine.get("local"), bpy.data.scenes.get(scene_name)
    if engine is None or scene is None:
        return None
    try:
        if not engine.ready():
            return 0.5
        scene.videograin.status = "Engine ready"
        jobs.engine_watch(str(engine.connection_file), restart=True)  # check it now, not at the next retry
    except EngineError as exc:
        scene.videograin.error = exc.message
    return None


def stop_engine() -> None:
    engine = _engine.pop("local", None)
    if engine is not None:
        engine.stop()


class VIDEOGRAIN_OT_stop_engine(bpy.types.Operator):
    """Stop the local engine this add-on started"""

    bl_idname = "videograin.stop_engine"
    bl_label = "Stop Engine"

    def execute(self, context):
        stop_engine()
        context.scene.videograin.status = "Engine stopped"
        return {"FINISHED"}


class VIDEOGRAIN_OT_check_engine(bpy.types.Operator):
    """Ask the engine again whether it answers, and who it is"""

    bl_idname = "videograin.check_engine"
    bl_label = "Check Engine"

    wait: bpy.props.BoolProperty(name="Wait", default=False, options={"SKIP_SAVE"},
                                 description="Block until the engine answers or is found silent (scripts)")

    def execute(self, context):
        vg = context.scene.videograin
        watch = jobs.engine_watch(vg.connection_file, restart=True)
        if self.wait:
            watch.wait(watches.WATCH_TIMEOUT_S + 1.0)
        if watch.state in (SILENT, ABSENT):
            return jobs.fail(self, vg, watch.message)
        vg.error, vg.status = "", watch.message
        self.report({"INFO"}, vg.status)
        return {"FINISHED"}


classes = (VIDEOGRAIN_OT_start_engine, VIDEOGRAIN_OT_stop_engine, VIDEOGRAIN_OT_check_engine)


def register() -> None:
    for cls in classes:
        bpy.utils.register_class(cls)


def unregister() -> None:
    stop_engine()
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
