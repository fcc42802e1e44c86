"""Operators under `bpy.ops.videograin.*`. Each works through `execute`, so scripts and headless Blender
can drive it. Long work (an edit, the tracking of a region's matte) never blocks the UI: it runs in the
engine process, a timer on the main thread (`tick`) takes in what arrives, and whether the engine
answers is watched on a background thread. Scripts pass `wait=True` to run the same loop until the work
is over.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import bpy
import bpy.utils.previews
import numpy as np

from . import check_report, export, jobspec, keyframes, timeline
from .engine_link import ABSENT, SILENT, EngineError, EngineWatch, LocalEngine, connect, shares_disk
from .properties import preferences, referenced_strip, region_key
from .session import DONE, EditSession, EngineSession, TrackSession, attention_map

TICK_SECONDS = 0.2
WAIT_SECONDS = 0.05  # between ticks when a script waits
WATCH_TIMEOUT_S = 5.0

# What cannot live in Blender properties: the job in flight per scene (an edit or a tracking), engine
# watches per connection file, a local engine process and its last log, the step previews and the
# attention maps shown for the current frame.
_sessions: dict[str, EngineSession] = {}
_watches: dict[str, EngineWatch] = {}
_engine: dict[str, LocalEngine] = {}
_last_log: dict[str, Path] = {}
_previews: dict[str, bpy.utils.previews.ImagePreviewCollection] = {}


def source_strip(scene):
    """The chosen source strip, else the active strip; None if there is neither (or it was deleted)."""
    vg = scene.videograin
    if scene.sequence_editor is None:
        return None
    if not vg.source_strip_name:
        return scene.sequence_editor.active_strip
    strip = referenced_strip(vg, "source_strip")
    if strip is not None and strip.name != vg.source_strip_name:
        vg.source_strip_name = strip.name  # renamed: the name to tell a duplicate apart, and to name it if it goes
    return strip


def results_folder(scene, source, label: str = "") -> Path:
    """A new folder for a job's frames (an edit's, or a tracked matte's: `label` says which): beside the
    .blend (`//videograin_results`), or, for a file never saved, in the folder the add-on's preferences
    name."""
    if bpy.data.filepath:
        root = Path(bpy.path.abspath("//videograin_results"))
    else:
        prefs = preferences(bpy.context)
        if prefs is None or not prefs.results_folder:
            raise EngineError("bad_job", "Save the .blend first (results go beside it, in videograin_results), "
                                         "or choose a results folder for unsaved files in the add-on's preferences.")
        root = Path(bpy.path.abspath(prefs.results_folder))
    name = "-".join(bpy.path.clean_name(part) for part in (source.name, label) if part)
    name = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    folder, number = root / name, 1
    while folder.exists() or folder.with_name(folder.name + "-partial").exists():
        number += 1
        folder = root / f"{name}-{number}"
    return folder


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


# -- the engine watch -------------------------------------------------------------------------

def engine_watch(connection_file: str, restart: bool = False) -> EngineWatch:
    """The watch on `connection_file`'s engine, started on first use; watches no scene names are closed."""
    if restart and connection_file in _watches:
        _watches.pop(connection_file).close()
    if connection_file not in _watches:
        _watches[connection_file] = EngineWatch(connection_file, timeout_s=WATCH_TIMEOUT_S)
    wanted = {scene.videograin.connection_file for scene in bpy.data.scenes} | {connection_file}
    for name in set(_watches) - wanted:
        _watches.pop(name).close()
    return _watches[connection_file]


def _close_watches() -> None:
    for watch in _watches.values():
        watch.close()
    _watches.clear()


def _ready_engine(operator, vg, wait: bool):
    """A connected client, or None after reporting why not; without `wait`, never waits for an engine that
    has not answered yet."""
    watch = engine_watch(vg.connection_file)
    if wait:
        watch.wait(WATCH_TIMEOUT_S + 1.0)
    if not watch.alive:
        _fail(operator, vg, watch.message)
        return None
    try:
        return connect(vg.connection_file)
    except EngineError as exc:
        _fail(operator, vg, exc.message)
        return None


# -- the edit ---------------------------------------------------------------------------------

class VIDEOGRAIN_OT_edit(bpy.types.Operator):
    """Export the source strip and mattes, and start the edit on the engine"""

    bl_idname = "videograin.edit"
    bl_label = "Edit"

    wait: bpy.props.BoolProperty(name="Wait", default=False, options={"SKIP_SAVE"},
                                 description="Run until the edit is done, failed or cancelled (scripts)")

    def execute(self, context):
        scene = context.scene
        vg = scene.videograin
        job = _job_to_send(self, scene)
        if job is None:
            return {"CANCELLED"}
        source, request = job
        try:
            folder = results_folder(scene, source)
        except EngineError as exc:
            return _fail(self, vg, exc.message)
        client = _ready_engine(self, vg, self.wait)
        if client is None:
            return {"CANCELLED"}
        vg.error, vg.status, vg.result_strip = "", "Exporting frames and mattes", ""
        _drop_preview(scene.name)
        vg.attention_folder = ""  # the last edit's maps go with it
        _show_attention(scene)
        try:
            session = _start(scene, vg, source, request, client, folder)
        except EngineError as exc:
            client.close()
            return _fail(self, vg, exc.message)
        except RuntimeError as exc:  # Blender could not render the frames or mattes
            client.close()
            return _fail(self, vg, f"Exporting the frames failed: {exc}")
        session.source = (timeline.stamp(source), source.name)
        return _launch(self, scene, session, self.wait)


def _job_to_send(operator, scene):
    """The source strip and the request of the panel's job, when it can be sent (no job runs in the scene,
    the settings are complete, every region has a matte); None after reporting why not."""
    vg = scene.videograin
    source = _free_to_start(operator, scene)
    if source is None:
        return None
    request = request_of(vg)
    problems = jobspec.problems(request)
    if problems:
        _fail(operator, vg, problems[0])
        return None
    for region in vg.regions:
        if not _matte_ready(region):
            _fail(operator, vg, f"Region '{region.phrase}' has no matte: choose its {region.matte_source.lower()}.")
            return None
    return source, request


def _free_to_start(operator, scene):
    """The source strip, when no job runs in the scene and there is one; None after reporting why not."""
    vg = scene.videograin
    if vg.running or scene.name in _sessions:
        _fail(operator, vg, "An edit or a tracking is already running in this scene: wait for it or cancel it.")
        return None
    source = source_strip(scene)
    if source is None:
        if vg.source_strip_name:
            _fail(operator, vg, f"The source strip '{vg.source_strip_name}' is gone: choose another.")
        else:
            _fail(operator, vg, "Select the strip to edit (or name it as Source).")
    return source


def _launch(operator, scene, session: EngineSession, wait: bool) -> set[str]:
    """Follow a submitted job: with a timer, or (`wait`) right here until it ends."""
    vg = scene.videograin
    _sessions[scene.name] = session
    vg.running, vg.status, vg.progress, vg.phase = True, "Queued on the engine", 0.0, "queued"
    if not wait:
        bpy.app.timers.register(functools.partial(tick, scene.name), first_interval=TICK_SECONDS)
        return {"FINISHED"}
    try:
        while tick(scene.name) is not None:
            time.sleep(WAIT_SECONDS)
    except KeyboardInterrupt:  # a script stopped by hand stops its job on the engine too
        _sessions.pop(scene.name).abandon()
        vg.running, vg.status = False, "Cancelled"
        raise
    if vg.error:
        operator.report({"ERROR"}, vg.error)
        return {"CANCELLED"}
    return {"FINISHED"}


def _matte_ready(region) -> bool:
    if region.matte_source == "MASK":
        return region.mask is not None
    if region.matte_source == "IMAGE":
        return region.image is not None
    return referenced_strip(region, "strip") is not None


def _start(scene, vg, source, request: jobspec.EditRequest, client, folder: Path) -> EditSession:
    """Export and submit the job (`_send`); the session follows it."""

    def by_path(settings, scratch):
        session = EditSession(client, folder, vg.keep_partial, scratch)  # removes `scratch` when the edit ends
        session.submit_paths(settings, vg.attention_maps)
        return session

    def inline(settings, pixels, mattes):
        session = EditSession(client, folder, vg.keep_partial)
        session.submit(settings, pixels, mattes, vg.attention_maps)
        return session

    return _send(scene, vg, source, request, client, by_path, inline)


def _send(scene, vg, source, request: jobspec.EditRequest, client, by_path, inline):
    """Export the job and send it: by path when the engine shares this disk and the source strip is plain
    (`by_path(settings, scratch)`, which takes over the folder of rendered mattes), else with rendered
    pixels (`inline(settings, frames, mattes)`). A path request the engine refuses as a bad job (it may
    not see our disk after all: a forwarded port looks local) is sent again with pixels, whose answer is
    the one that counts. Returns what the send returned."""
    frames = export.frame_range(source)
    settings = jobspec.settings(request, scene.render.resolution_x, scene.render.resolution_y)
    prefs = preferences(bpy.context)
    local = shares_disk(client.address) and (prefs is None or prefs.media_transfer == "AUTO")
    run = export.plain_run(scene, source, frames) if local else None
    if run is not None:
        scratch = Path(tempfile.mkdtemp(prefix="videograin-export-"))
        try:
            mattes = [_matte_run(scene, region, frames, run, scratch / f"matte-{i}") for i, region in enumerate(vg.regions)]
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        try:
            return by_path(jobspec.with_files(settings, run, mattes), scratch)
        except EngineError as exc:
            if exc.code != "bad_job":
                raise
    # The renders are read back into memory for the request: their folder goes at once.
    with tempfile.TemporaryDirectory(prefix="videograin-export-") as work:
        work = Path(work)
        pixels = [export.read_bmp(p) for p in export.render_strip(scene, source, frames, work / "frames")]
        mattes = [[export.read_bmp(p) for p in _render_matte(scene, region, frames, work / f"matte-{i}")]
                  for i, region in enumerate(vg.regions)]
    return inline(settings, pixels, mattes)


def _matte_run(scene, region, frames: range, source: jobspec.FileRun, folder: Path) -> jobspec.FileRun:
    """A region's mattes as files: a plain matte strip's own, when they line up with the source's, else
    rendered into `folder`."""
    if region.matte_source == "STRIP":
        run = export.plain_run(scene, referenced_strip(region, "strip"), frames)
        if run is not None and jobspec.aligned(run, source):
            return run
    return export.run_of_files(_render_matte(scene, region, frames, folder))


def _render_matte(scene, region, frames: range, folder: Path) -> list[Path]:
    if region.matte_source == "MASK":
        return export.render_mask(scene, region.mask, frames, folder)
    if region.matte_source == "IMAGE":
        return export.render_image(scene, region.image, frames, folder)
    return export.render_strip(scene, referenced_strip(region, "strip"), frames, folder, grey=True)


def tick(scene_name: str) -> float | None:
    """Timer callback: take in the engine's messages; returns None (stop) once the job has ended."""
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
    preview = session.take_preview()
    if preview is not None:
        _show_preview(scene_name, preview)
    if still_running:
        return TICK_SECONDS
    del _sessions[scene_name]
    session.close()
    vg.running = False
    if not vg.keep_preview:
        _drop_preview(scene_name)
    if session.state == DONE:
        (_finish_track if isinstance(session, TrackSession) else _finish)(scene, session)
    else:
        vg.status, vg.error = session.state.capitalize(), ("" if session.state == "cancelled" else session.message)
    return None


def _finish(scene, session: EditSession) -> None:
    vg = scene.videograin
    key, name = session.source
    source = timeline.find_strip(scene, key, name)
    if source is None:
        vg.status = f"Done, but the source strip is gone: the frames are in {session.result_folder}"
        return
    strip = timeline.insert_result_strip(scene, source, session.frame_paths(), f"{source.name} edit")
    vg.result_strip = strip.name
    vg.status, vg.progress = f"Done: '{strip.name}' on channel {strip.channel}, {session.message}", 100.0
    if session.summary.get("random_weights"):
        vg.status += " (random-weight model: not an edit)"
    if (session.result_folder / "attention").is_dir():
        folder = session.result_folder
        vg.attention_folder = bpy.path.relpath(str(folder)) if bpy.data.filepath else str(folder)
        vg.attention_start = source.frame_final_start
        _show_attention(scene)


# -- checking the job -------------------------------------------------------------------------

class VIDEOGRAIN_OT_check(bpy.types.Operator):
    """Check the job Edit would send, in seconds and without starting it: the engine's warnings and errors,
    and the picture of the region layout the model will see at the playhead's frame"""

    bl_idname = "videograin.check"
    bl_label = "Check"

    wait: bpy.props.BoolProperty(name="Wait", default=False, options={"SKIP_SAVE"},
                                 description="Wait for an engine that has not answered yet (scripts)")

    def execute(self, context):
        scene = context.scene
        vg = scene.videograin
        _clear_check(vg)
        job = _job_to_send(self, scene)
        if job is None:
            return {"CANCELLED"}
        source, request = job
        client = _ready_engine(self, vg, self.wait)
        if client is None:
            return {"CANCELLED"}
        frames = export.frame_range(source)
        shown = check_report.clip_frame(scene.frame_current, frames)
        vg.error, vg.status = "", "Checking the job"
        # The engine answers a check at once (SPEC.md §3.8): waiting here costs what the export costs.
        try:
            reply, layout = _send(
                scene, vg, source, request, client,
                by_path=lambda settings, scratch: _check_paths(client, settings, scratch, shown),
                inline=lambda settings, pixels, mattes: client.check(settings, pixels, mattes, layout_frames=[shown]),
            )
        except EngineError as exc:
            return _fail(self, vg, exc.message)
        except RuntimeError as exc:  # Blender could not render the frames or mattes
            return _fail(self, vg, f"Exporting the frames failed: {exc}")
        finally:
            client.close()
        view = check_report.read_reply(reply)
        vg.check_status, vg.check_ok, vg.check_estimate = view.headline, view.ok, view.estimate
        vg.check_frame = frames.start + shown
        for finding in view.findings:
            item = vg.check_findings.add()
            item.code, item.message, item.error = finding.code, finding.message, finding.error
        _show_layout(context, layout)
        vg.status = f"Checked: the layout of frame {vg.check_frame} is in the image '{check_report.LAYOUT_IMAGE}'"
        self.report({"INFO"} if view.ok else {"WARNING"}, view.headline)
        return {"FINISHED"}


def _check_paths(client, settings, scratch: Path, shown: int):
    """A check of media the engine reads from our disk; the mattes rendered for it go once it answers."""
    try:
        return client.check(settings, layout_frames=[shown])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _clear_check(vg) -> None:
    vg.check_status, vg.check_ok, vg.check_estimate = "", False, ""
    vg.check_findings.clear()


def _show_layout(context, png: bytes) -> None:
    """The layout picture in its image datablock, packed into the .blend (no file is written), and in
    every Image Editor of the screen."""
    image = bpy.data.images.get(check_report.LAYOUT_IMAGE) or bpy.data.images.new(check_report.LAYOUT_IMAGE, 1, 1)
    # New packed data is read when the source turns to FILE; `reload()` on data packed from memory would
    # look for a file and complain.
    image.source = "GENERATED"
    image.pack(data=png, data_len=len(png))
    image.source = "FILE"
    for area in context.screen.areas if context.screen is not None else ():
        if area.type == "IMAGE_EDITOR":
            area.spaces.active.image = image
            area.tag_redraw()


# -- tracking a region's matte ----------------------------------------------------------------

class VIDEOGRAIN_OT_track_matte(bpy.types.Operator):
    """Track the region through the source strip from its mask or painted image at the playhead (or from
    every keyed frame of an animated mask): the tracked mattes become the region's matte strip"""

    bl_idname = "videograin.track_matte"
    bl_label = "Track Matte"

    region: bpy.props.IntProperty(name="Region", default=-1, options={"SKIP_SAVE"},
                                  description="Index of the region to track (-1: the active region)")
    wait: bpy.props.BoolProperty(name="Wait", default=False, options={"SKIP_SAVE"},
                                 description="Run until the tracking is done, failed or cancelled (scripts)")

    def execute(self, context):
        scene = context.scene
        vg = scene.videograin
        index = self.region if self.region >= 0 else vg.active_region
        if not 0 <= index < len(vg.regions):
            return _fail(self, vg, "Add a region first, with a mask or a painted image to track.")
        source = _free_to_start(self, scene)
        if source is None:
            return {"CANCELLED"}
        region = vg.regions[index]
        name = region_name(region, index)
        if region.matte_source == "STRIP":
            return _fail(self, vg, f"Region '{name}' takes its mattes from a strip: Track Matte starts from a mask "
                                   "or a painted image (choose Mask or Image).")
        if not _matte_ready(region):
            what = region.matte_source.lower()
            return _fail(self, vg, f"Region '{name}' has no {what} to track: choose or draw one.")
        frames = export.frame_range(source)
        keyed = export.keyed_frames(region.mask) if region.matte_source == "MASK" else []
        what = f"the mask '{region.mask.name}'" if region.matte_source == "MASK" else f"the image '{region.image.name}'"
        try:
            marks = keyframes.keyframe_frames(scene.frame_current, keyed, frames, what)
            folder = results_folder(scene, source, f"{name} matte")
            keys = _render_keyframes(scene, region, name, marks, frames)
        except EngineError as exc:
            return _fail(self, vg, exc.message)
        except RuntimeError as exc:  # Blender could not render the keyframes
            return _fail(self, vg, f"Exporting the keyframes failed: {exc}")
        client = _ready_engine(self, vg, self.wait)
        if client is None:
            shutil.rmtree(keys.scratch, ignore_errors=True)
            return {"CANCELLED"}
        vg.error, vg.status = "", "Exporting frames"
        _drop_preview(scene.name)
        try:
            session = _start_track(scene, vg, source, name, keys, client, folder)
        except EngineError as exc:
            client.close()
            return _fail(self, vg, exc.message)
        except RuntimeError as exc:  # Blender could not render the frames or the keyframes
            client.close()
            return _fail(self, vg, f"Exporting the frames failed: {exc}")
        session.source = (timeline.stamp(source), source.name)
        session.region = region_key(region)
        return _launch(self, scene, session, self.wait)


def region_name(region, index: int) -> str:
    return region.phrase.strip() or f"region {index + 1}"


@dataclass
class Keyframes:
    """A region's keyframes, rendered: clip index → grey matte, and → its file in `scratch`."""

    mattes: dict[int, np.ndarray]
    files: dict[int, Path]
    scratch: Path


def _render_keyframes(scene, region, name: str, marks: list[int], frames: range) -> Keyframes:
    """The region's mask (or painted image) at each of `marks`, checked not to be empty before anything
    goes to the engine."""
    scratch = Path(tempfile.mkdtemp(prefix="videograin-export-"))
    try:
        if region.matte_source == "MASK":
            files = export.render_mask(scene, region.mask, marks, scratch / "keyframes")
        else:
            files = export.render_image(scene, region.image, range(len(marks)), scratch / "keyframes")
        keys = Keyframes({}, {}, scratch)
        for mark, path in zip(marks, files):
            matte = export.read_bmp(path)
            if matte.max() < 128:
                raise EngineError("bad_job", f"Region '{name}': its {region.matte_source.lower()} is empty on frame "
                                             f"{mark}: draw the region there (white = the region).")
            keys.mattes[mark - frames.start], keys.files[mark - frames.start] = matte, path
        return keys
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise


def _start_track(scene, vg, source, name: str, keys: Keyframes, client, folder: Path) -> TrackSession:
    """Export the source and start tracking: by path when the engine shares this disk and the strip is
    plain (the keyframes too), else with pixels, as an edit does (`_start`). Takes `keys.scratch` over."""
    frames = export.frame_range(source)
    try:
        prefs = preferences(bpy.context)
        local = shares_disk(client.address) and (prefs is None or prefs.media_transfer == "AUTO")
        run = export.plain_run(scene, source, frames) if local else None
    except BaseException:
        shutil.rmtree(keys.scratch, ignore_errors=True)
        raise
    if run is not None:
        session = TrackSession(client, folder, scratch=keys.scratch)  # removes the scratch when the tracking ends
        try:
            paths = {index: str(path) for index, path in keys.files.items()}
            session.track_paths(run, paths, vg.tracker, vg.tracker_model, name)
            return session
        except EngineError as exc:
            if exc.code != "bad_job":
                raise
    shutil.rmtree(keys.scratch, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="videograin-export-") as work:
        pixels = [export.read_bmp(p) for p in export.render_strip(scene, source, frames, Path(work) / "frames")]
    session = TrackSession(client, folder)
    session.track(pixels, keys.mattes, vg.tracker, vg.tracker_model, name)
    return session


def _finish_track(scene, session: TrackSession) -> None:
    """The tracked mattes as a muted image strip above the source, the region's matte from now on, shown
    over the source in the region's colour by an overlay strip (replacing the region's last one)."""
    vg = scene.videograin
    key, name = session.source
    source = timeline.find_strip(scene, key, name)
    found = [(index, region) for index, region in enumerate(vg.regions) if region.key == session.region]
    if source is None or not found:
        gone = "source strip" if source is None else "region"
        vg.status = f"Tracked, but the {gone} is gone: the mattes are in {session.result_folder}"
        return
    index, region = found[0]
    label = region_name(region, index)
    matte = timeline.insert_result_strip(scene, source, session.frame_paths(), f"{label} matte")
    matte.mute = True  # a matte is for the edit, never for the picture
    old = referenced_strip(region, "overlay")
    if old is not None and timeline.strips_of(scene).get(old.name) == old:  # not moved into a meta strip
        timeline.strips_of(scene).remove(old)
    overlay = timeline.insert_overlay(scene, matte, tuple(region.color), f"{label} matte overlay")
    region.matte_source, region.strip, region.overlay = "STRIP", matte.name, overlay.name
    vg.show_mattes = True  # shows the new overlay with the others
    vg.status = f"Tracked: '{matte.name}' on channel {matte.channel} is the matte of '{label}', {session.message}"
    vg.progress = 100.0


# -- attention maps ---------------------------------------------------------------------------

def attention_of(scene_name: str, index: int):
    """The map of phrase `index` (the regions', then the background's) on the current frame, from the
    scene's last edit (`bpy.types.ImagePreview`), or None."""
    previews = _previews.get("attention")
    return previews.get(f"{scene_name}\n{index}") if previews is not None else None


def _show_attention(scene) -> None:
    """Load the scene's attention maps of the current frame into the panel's previews (and drop those of
    the frame before): one small PNG per phrase."""
    previews = _previews.get("attention")
    if previews is None:
        return
    for key in [key for key in previews if key.startswith(f"{scene.name}\n")]:
        del previews[key]
    vg = scene.videograin
    if not vg.attention_folder:
        return
    folder = Path(bpy.path.abspath(vg.attention_folder))
    frame = scene.frame_current - vg.attention_start
    phrases = [region.phrase for region in vg.regions] + [vg.background_phrase]
    for index, phrase in enumerate(phrases):
        path = attention_map(folder, phrase, frame)
        if phrase.strip() and frame >= 0 and path.is_file():
            previews.load(f"{scene.name}\n{index}", str(path), "IMAGE")


@bpy.app.handlers.persistent
def _frame_changed(scene, *_args) -> None:
    if scene.videograin.attention_folder:
        _show_attention(scene)


# -- step previews ----------------------------------------------------------------------------

def preview_of(scene_name: str):
    """The scene's latest step preview (`bpy.types.ImagePreview`), or None."""
    previews = _previews.get("steps")
    return previews.get(scene_name) if previews is not None else None


def _show_preview(scene_name: str, rgb: np.ndarray) -> None:
    previews = _previews["steps"]
    preview = previews.get(scene_name) or previews.new(scene_name)
    height, width = rgb.shape[:2]
    rgba = np.ones((height, width, 4), np.float32)
    rgba[..., :3] = rgb[::-1, :, :3] / 255.0  # previews store rows bottom-up
    preview.image_size = (width, height)
    preview.image_pixels_float.foreach_set(rgba.ravel())


def _drop_preview(scene_name: str) -> None:
    previews = _previews.get("steps")
    if previews is not None and scene_name in previews:
        del previews[scene_name]


class VIDEOGRAIN_OT_cancel(bpy.types.Operator):
    """Stop the running edit or tracking; nothing is added to the timeline"""

    bl_idname = "videograin.cancel"
    bl_label = "Cancel"

    def execute(self, context):
        session = _sessions.get(context.scene.name)
        if session is None:
            self.report({"WARNING"}, "No edit or tracking is running")
            return {"CANCELLED"}
        session.cancel()
        context.scene.videograin.status = "Cancelling"
        return {"FINISHED"}


# -- the local engine -------------------------------------------------------------------------

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
            return _fail(self, vg, exc.message)
        _engine["local"], _last_log["local"] = engine, engine.log_path
        vg.connection_file, vg.error = str(engine.connection_file), ""
        if not self.wait:
            vg.status = "Engine starting"
            bpy.app.timers.register(functools.partial(_engine_tick, context.scene.name), first_interval=0.5)
            return {"FINISHED"}
        watch = engine_watch(vg.connection_file)
        watch.wait(WATCH_TIMEOUT_S + 1.0)
        if not watch.alive:
            return _fail(self, vg, watch.message)
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
        engine_watch(str(engine.connection_file), restart=True)  # check it now, not at the next retry
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
        watch = engine_watch(vg.connection_file, restart=True)
        if self.wait:
            watch.wait(WATCH_TIMEOUT_S + 1.0)
        if watch.state in (SILENT, ABSENT):
            return _fail(self, vg, watch.message)
        vg.error, vg.status = "", watch.message
        self.report({"INFO"}, vg.status)
        return {"FINISHED"}


# -- regions ----------------------------------------------------------------------------------

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
    VIDEOGRAIN_OT_check,
    VIDEOGRAIN_OT_track_matte,
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
    """Stop every job on the engine: the add-on goes, or another file opens (this one's timers die). The
    previews (steps, attention maps) go with them."""
    for session in _sessions.values():
        session.abandon()
    _sessions.clear()
    _close_watches()
    for previews in _previews.values():
        previews.clear()


@bpy.app.handlers.persistent
def _file_opened(*_args) -> None:
    """A file saved mid-edit opens with no edit behind it: say so, and let Edit run again. Its engines
    are checked from now on."""
    for scene in bpy.data.scenes:
        vg = scene.videograin
        if vg.running:
            vg.running, vg.status = False, "The last edit or tracking was interrupted when its file closed"
        if vg.connection_file:
            engine_watch(vg.connection_file)
        if vg.attention_folder:
            _show_attention(scene)


def _redraw_panels() -> float:
    """Keep the engine's state in the sidebar current while nothing else redraws it."""
    for window in getattr(bpy.context.window_manager, "windows", ()):
        for area in window.screen.areas:
            if area.type == "SEQUENCE_EDITOR":
                area.tag_redraw()
    return 1.0


HANDLERS = ((bpy.app.handlers.load_pre, _abandon_edits), (bpy.app.handlers.load_post, _file_opened),
            (bpy.app.handlers.frame_change_post, _frame_changed))


def register() -> None:
    for cls in classes:
        bpy.utils.register_class(cls)
    for handlers, handler in HANDLERS:
        handlers.append(handler)
    _previews["steps"] = bpy.utils.previews.new()
    _previews["attention"] = bpy.utils.previews.new()
    bpy.app.timers.register(_redraw_panels, first_interval=1.0, persistent=True)


def unregister() -> None:
    if bpy.app.timers.is_registered(_redraw_panels):
        bpy.app.timers.unregister(_redraw_panels)
    for handlers, handler in HANDLERS:
        if handler in handlers:
            handlers.remove(handler)
    _abandon_edits()
    stop_engine()
    for name in list(_previews):
        bpy.utils.previews.remove(_previews.pop(name))
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
