"""Operators under `bpy.ops.videograin.*`. Each works through `execute`, so scripts and headless Blender
can drive it; long work never blocks the UI: it runs in the engine process, and a timer on the main
thread (`tick`) takes in what arrives.
"""

from __future__ import annotations

import functools
import tempfile
import time
from pathlib import Path

import bpy
import numpy as np

from . import export, jobspec, timeline
from .engine_link import EngineError, LocalEngine, connect
from .session import DONE, EditSession

TICK_SECONDS = 0.2
PREVIEW_IMAGE = "VideoGrain Preview"

# What cannot live in Blender properties: the edit in flight per scene, and a local engine process.
_sessions: dict[str, EditSession] = {}
_engine: dict[str, LocalEngine] = {}


def source_strip(scene):
    vg = scene.videograin
    sed = scene.sequence_editor
    if sed is None:
        return None
    if vg.source_strip:
        return export.all_strips_of(scene).get(vg.source_strip)
    return sed.active_strip


def results_folder(scene, source) -> Path:
    """Next to the .blend (`//videograin_results`), or in the temp folder while it is unsaved."""
    root = Path(bpy.path.abspath("//videograin_results")) if bpy.data.filepath else Path(tempfile.gettempdir()) / "videograin_results"
    return root / f"{bpy.path.clean_name(source.name)}-{time.strftime('%Y%m%d-%H%M%S')}"


def request_of(vg) -> jobspec.EditRequest:
    return jobspec.EditRequest(
        prompt=vg.prompt, source_prompt=vg.source_prompt, phrases=[r.phrase for r in vg.regions],
        background_phrase=vg.background_phrase, steps=vg.steps, guidance=vg.guidance, seed=vg.seed,
        cross_strength=vg.cross_strength, self_strength=vg.self_strength, control_type=vg.control_type,
        control_scale=vg.control_scale, working_size=vg.working_size, model=vg.model,
    )


def _fail(operator, vg, message: str) -> set[str]:
    vg.error, vg.status = message, ""
    operator.report({"ERROR"}, message)
    return {"CANCELLED"}


class VIDEOGRAIN_OT_edit(bpy.types.Operator):
    """Export the source strip and mattes, and start the edit on the engine"""

    bl_idname = "videograin.edit"
    bl_label = "Edit"

    def execute(self, context):
        scene = context.scene
        vg = scene.videograin
        if vg.running or scene.name in _sessions:
            return _fail(self, vg, "An edit is already running in this scene: wait for it or cancel it.")
        source = source_strip(scene)
        if source is None:
            return _fail(self, vg, "Select the strip to edit (or name it as Source).")
        request = request_of(vg)
        problems = jobspec.problems(request)
        if problems:
            return _fail(self, vg, problems[0])
        for region in vg.regions:
            if not _matte_ready(scene, region):
                return _fail(self, vg, f"Region '{region.phrase}' has no matte: choose its {region.matte_source.lower()}.")
        try:
            client = connect(vg.connection_file)
        except EngineError as exc:
            return _fail(self, vg, exc.message)
        vg.error, vg.status = "", "Exporting frames and mattes"
        try:
            frames_range = export.frame_range(source)
            # The renders are read back into memory for the submit: their folder goes at once.
            with tempfile.TemporaryDirectory(prefix="videograin-export-") as folder:
                work = Path(folder)
                frames = export.render_strip(scene, source, frames_range, work / "frames")
                mattes = [_render_matte(scene, region, frames_range, work / f"matte-{i}") for i, region in enumerate(vg.regions)]
            session = EditSession(client, results_folder(scene, source), vg.keep_partial)
            settings = jobspec.settings(request, scene.render.resolution_x, scene.render.resolution_y)
            session.submit(settings, frames, mattes)
        except EngineError as exc:
            client.close()
            return _fail(self, vg, exc.message)
        session.source_name = source.name
        _sessions[scene.name] = session
        vg.running, vg.status, vg.progress, vg.phase = True, "Queued on the engine", 0.0, "queued"
        bpy.app.timers.register(functools.partial(tick, scene.name), first_interval=TICK_SECONDS)
        return {"FINISHED"}


def _matte_ready(scene, region) -> bool:
    if region.matte_source == "MASK":
        return region.mask is not None
    if region.matte_source == "IMAGE":
        return region.image is not None
    return bool(region.strip) and export.all_strips_of(scene).get(region.strip) is not None


def _render_matte(scene, region, frames: range, folder: Path) -> list[bytes]:
    if region.matte_source == "MASK":
        return export.render_mask(scene, region.mask, frames, folder)
    if region.matte_source == "IMAGE":
        return export.render_image(scene, region.image, frames, folder)
    return export.render_strip(scene, export.all_strips_of(scene)[region.strip], frames, folder)


def tick(scene_name: str) -> float | None:
    """Timer callback: take in the engine's messages; returns None (stop) once the edit has ended."""
    scene = bpy.data.scenes.get(scene_name)
    session = _sessions.get(scene_name)
    if scene is None or session is None:
        _sessions.pop(scene_name, None)
        return None
    vg = scene.videograin
    still_running = session.tick()
    vg.phase, vg.step, vg.total = session.phase, session.step, session.total
    vg.progress = 100.0 * session.progress
    vg.status = f"{session.phase} {session.step}/{session.total}" if session.total else session.phase
    if session.preview is not None:
        _show_preview(session.preview)
    if still_running:
        return TICK_SECONDS
    del _sessions[scene_name]
    session.close()
    vg.running = False
    if session.state == DONE:
        source = export.all_strips_of(scene).get(session.source_name)
        strip = timeline.insert_result_strip(scene, source, session.frame_paths(), f"{session.source_name} edit")
        vg.status, vg.progress = f"Done: '{strip.name}' on channel {strip.channel}, {session.message}", 100.0
        if session.summary.get("random_weights"):
            vg.status += " (random-weight model: not an edit)"
    else:
        vg.status, vg.error = session.state.capitalize(), ("" if session.state == "cancelled" else session.message)
    return None


def _show_preview(rgb: np.ndarray) -> None:
    height, width = rgb.shape[:2]
    image = bpy.data.images.get(PREVIEW_IMAGE)
    if image is None or tuple(image.size) != (width, height):
        if image is not None:
            bpy.data.images.remove(image)
        image = bpy.data.images.new(PREVIEW_IMAGE, width, height)
    rgba = np.ones((height, width, 4), np.float32)
    rgba[..., :3] = rgb[::-1, :, :3] / 255.0  # Blender stores rows bottom-up
    image.pixels.foreach_set(rgba.ravel())
    image.update()


class VIDEOGRAIN_OT_cancel(bpy.types.Operator):
    """Stop the running edit; nothing is added to the timeline"""

    bl_idname = "videograin.cancel"
    bl_label = "Cancel"

    def execute(self, context):
        session = _sessions.get(context.scene.name)
        if session is None:
            self.report({"WARNING"}, "No edit is running")
            return {"CANCELLED"}
        session.cancel()
        context.scene.videograin.status = "Cancelling"
        return {"FINISHED"}


class VIDEOGRAIN_OT_start_engine(bpy.types.Operator):
    """Start a local engine with the configured Python and arguments"""

    bl_idname = "videograin.start_engine"
    bl_label = "Start Engine"

    wait: bpy.props.BoolProperty(name="Wait", default=False, description="Block until the engine listens (scripts)")

    def execute(self, context):
        vg = context.scene.videograin
        stop_engine()
        try:
            engine = LocalEngine(vg.engine_python, vg.engine_args)
            if self.wait:
                engine.wait_ready()
        except EngineError as exc:
            return _fail(self, vg, exc.message)
        _engine["local"] = engine
        vg.connection_file, vg.error = str(engine.connection_file), ""
        vg.status = "Engine ready" if self.wait else "Engine starting"
        if not self.wait:
            bpy.app.timers.register(functools.partial(_engine_tick, context.scene.name), first_interval=0.5)
        return {"FINISHED"}


def _engine_tick(scene_name: str) -> float | None:
    engine, scene = _engine.get("local"), bpy.data.scenes.get(scene_name)
    if engine is None or scene is None:
        return None
    try:
        if not engine.ready():
            return 0.5
        scene.videograin.status = "Engine ready"
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
    """Ask the engine who it is"""

    bl_idname = "videograin.check_engine"
    bl_label = "Check Engine"

    def execute(self, context):
        vg = context.scene.videograin
        try:
            client = connect(vg.connection_file)
        except EngineError as exc:
            return _fail(self, vg, exc.message)
        caps = client.capabilities
        client.close()
        vg.error, vg.status = "", f"Engine {caps['version']} on {caps['device']}, model {caps['models'][0]}"
        self.report({"INFO"}, vg.status)
        return {"FINISHED"}


class VIDEOGRAIN_OT_region_add(bpy.types.Operator):
    """Add a region: a phrase of the prompt and its matte"""

    bl_idname = "videograin.region_add"
    bl_label = "Add Region"

    def execute(self, context):
        vg = context.scene.videograin
        region = vg.regions.add()
        hue = (len(vg.regions) * 0.37) % 1.0
        region.color = _hue_to_rgb(hue)
        vg.active_region = len(vg.regions) - 1
        return {"FINISHED"}


def _hue_to_rgb(hue: float) -> tuple[float, float, float]:
    import colorsys

    return colorsys.hsv_to_rgb(hue, 0.7, 1.0)


class VIDEOGRAIN_OT_region_remove(bpy.types.Operator):
    """Remove the active region"""

    bl_idname = "videograin.region_remove"
    bl_label = "Remove Region"

    def execute(self, context):
        vg = context.scene.videograin
        if not 0 <= vg.active_region < len(vg.regions):
            return {"CANCELLED"}
        vg.regions.remove(vg.active_region)
        vg.active_region = max(0, vg.active_region - 1)
        return {"FINISHED"}


class VIDEOGRAIN_OT_mask_new(bpy.types.Operator):
    """Create a mask datablock for the active region, ready to paint in the mask editor"""

    bl_idname = "videograin.mask_new"
    bl_label = "New Mask"

    def execute(self, context):
        vg = context.scene.videograin
        if not 0 <= vg.active_region < len(vg.regions):
            return _fail(self, vg, "Add a region first.")
        region = vg.regions[vg.active_region]
        mask = bpy.data.masks.new(name=f"VideoGrain {region.phrase or 'region'}")
        mask.layers.new(name="matte")
        source = source_strip(context.scene)
        if source is not None:
            mask.frame_start, mask.frame_end = source.frame_final_start, source.frame_final_end - 1
        region.matte_source, region.mask = "MASK", mask
        return {"FINISHED"}


classes = (
    VIDEOGRAIN_OT_edit,
    VIDEOGRAIN_OT_cancel,
    VIDEOGRAIN_OT_start_engine,
    VIDEOGRAIN_OT_stop_engine,
    VIDEOGRAIN_OT_check_engine,
    VIDEOGRAIN_OT_region_add,
    VIDEOGRAIN_OT_region_remove,
    VIDEOGRAIN_OT_mask_new,
)


@bpy.app.handlers.persistent
def _abandon_edits(*_args) -> None:
    """Stop every edit on the engine: the add-on goes, or another file opens (this one's timers die)."""
    for session in _sessions.values():
        session.abandon()
    _sessions.clear()


@bpy.app.handlers.persistent
def _clear_interrupted_edits(*_args) -> None:
    """A file saved mid-edit opens with no edit behind it: say so, and let Edit run again."""
    for scene in bpy.data.scenes:
        vg = scene.videograin
        if vg.running:
            vg.running, vg.status = False, "The last edit was interrupted when its file closed"


HANDLERS = ((bpy.app.handlers.load_pre, _abandon_edits), (bpy.app.handlers.load_post, _clear_interrupted_edits))


def register() -> None:
    for cls in classes:
        bpy.utils.register_class(cls)
    for handlers, handler in HANDLERS:
        handlers.append(handler)


def unregister() -> None:
    for handlers, handler in HANDLERS:
        if handler in handlers:
            handlers.remove(handler)
    _abandon_edits()
    stop_engine()
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
