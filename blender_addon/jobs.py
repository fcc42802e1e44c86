"""What an edit, a check and a tracking share: a strip's edit as a request, the checks done before the
engine is asked, where results go, the engine's client, and the two routes media take to the engine
(files it reads, or pixels rendered here)."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import bpy

from . import export, jobspec, timeline, watches
from .engine_link import EngineError, connect, shares_disk
from .properties import preferences, referenced_strip, restore_datablocks


def fail(operator, holder, message: str) -> set[str]:
    """Say why an operator stopped: on `holder` (a strip's edit, or the scene's settings) and to the user."""
    holder.error, holder.status = message, ""
    operator.report({"ERROR"}, message)
    return {"CANCELLED"}


def named_or_active(scene, name: str):
    """The strip called `name`, else (no name) the active strip; None when there is no such strip."""
    if scene.sequence_editor is None:
        return None
    if name:
        return timeline.all_strips_of(scene).get(name)
    return scene.sequence_editor.active_strip


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


def request_of(edit) -> jobspec.EditRequest:
    return jobspec.EditRequest(
        prompt=edit.prompt, source_prompt=edit.source_prompt, phrases=[r.phrase for r in edit.regions],
        background_phrase=edit.background_phrase, steps=edit.steps, guidance=edit.guidance, seed=edit.seed,
        cross_strength=edit.cross_strength, self_strength=edit.self_strength, control_type=edit.control_type,
        control_scale=edit.control_scale, working_size=edit.working_size, model=edit.model,
    )


def matte_ready(region) -> bool:
    if region.matte_source == "MASK":
        return region.mask is not None
    if region.matte_source == "IMAGE":
        return region.image is not None
    return referenced_strip(region, "strip") is not None


def region_name(region, index: int) -> str:
    return region.phrase.strip() or f"region {index + 1}"


def edit_problem(strip) -> str:
    """Why the strip's edit cannot be sent as it is ("" when it can): no edit, a job already running on
    the strip, settings the engine would refuse, a region without its matte."""
    edit = strip.videograin
    if not edit.enabled:
        return f"'{strip.name}' has no edit: start one in the Edit panel."
    if edit.running:
        return f"An edit or a tracking of '{strip.name}' is already running: wait for it or cancel it."
    problems = jobspec.problems(request_of(edit))
    if problems:
        return problems[0]
    for index, region in enumerate(edit.regions):
        restore_datablocks(region)
        if not matte_ready(region):
            return f"Region '{region_name(region, index)}' has no matte: choose its {region.matte_source.lower()}."
    return ""


def wanted_connections() -> set[str]:
    return {scene.videograin.connection_file for scene in bpy.data.scenes}


def engine_watch(connection_file: str, restart: bool = False):
    return watches.engine_watch(connection_file, wanted_connections(), restart)


def ready_engine(operator, holder, connection_file: str, wait: bool):
    """A connected client, or None after reporting why not on `holder`; without `wait`, never waits for an
    engine that has not answered yet."""
    watch = engine_watch(connection_file)
    if wait:
        watch.wait(watches.WATCH_TIMEOUT_S + 1.0)
    if not watch.alive:
        fail(operator, holder, watch.message)
        return None
    try:
        return connect(connection_file)
    except EngineError as exc:
        fail(operator, holder, exc.message)
        return None


def send(scene, edit, source, request: jobspec.EditRequest, client, by_path, inline):
    """Export the strip's job and send it: by path when the engine shares this disk and the source strip
    is plain (`by_path(settings, scratch)`, which takes over the folder of rendered mattes), else with
    rendered pixels (`inline(settings, frames, mattes)`). A path request the engine refuses as a bad job
    (it may not see our disk after all: a forwarded port looks local) is sent again with pixels, whose
    answer is the one that counts. Returns what the send returned."""
    frames = export.frame_range(source)
    settings = jobspec.settings(request, scene.render.resolution_x, scene.render.resolution_y,
                                jobspec.size_multiple(client.capabilities))
    run = plain_run_if_local(scene, source, frames, client)
    if run is not None:
        scratch = Path(tempfile.mkdtemp(prefix="videograin-export-"))
        try:
            mattes = [_matte_run(scene, region, frames, run, scratch / f"matte-{i}")
                      for i, region in enumerate(edit.regions)]
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
        mattes = [[export.read_bmp(p) for p in render_matte(scene, region, frames, work / f"matte-{i}")]
                  for i, region in enumerate(edit.regions)]
    return inline(settings, pixels, mattes)


def plain_run_if_local(scene, source, frames: range, client) -> jobspec.FileRun | None:
    """The source's files, when the engine shares this disk, the preferences let it read files, and the
    strip shows them unchanged; None when it must be rendered and sent."""
    prefs = preferences(bpy.context)
    local = shares_disk(client.address) and (prefs is None or prefs.media_transfer == "AUTO")
    return export.plain_run(scene, source, frames) if local else None


def _matte_run(scene, region, frames: range, source: jobspec.FileRun, folder: Path) -> jobspec.FileRun:
    """A region's mattes as files: a plain matte strip's own, when they line up with the source's, else
    rendered into `folder`."""
    if region.matte_source == "STRIP":
        run = export.plain_run(scene, referenced_strip(region, "strip"), frames)
        if run is not None and jobspec.aligned(run, source):
            return run
    return export.run_of_files(render_matte(scene, region, frames, folder))


def render_matte(scene, region, frames: range, folder: Path) -> list[Path]:
    if region.matte_source == "MASK":
        return export.render_mask(scene, region.mask, frames, folder)
    if region.matte_source == "IMAGE":
        return export.render_image(scene, region.image, frames, folder)
    return export.render_strip(scene, referenced_strip(region, "strip"), frames, folder, grey=True)
