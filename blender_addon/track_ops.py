"""Track Matte: a region of a strip's edit, followed through the strip from its mask or painted image at
the playhead (or from every keyed frame of an animated mask). The tracked mattes come back as a muted
matte strip, the region's from then on, shown over the source in the region's colour."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import bpy
import numpy as np

from . import export, jobs, keyframes, previews, runs, timeline
from .engine_link import EngineError
from .properties import referenced_strip, region_key, restore_datablocks
from .session import TrackSession
from .shots import Shot


class VIDEOGRAIN_OT_track_matte(bpy.types.Operator):
    """Track the region through the source strip from its mask or painted image at the playhead (or from
    every keyed frame of an animated mask): the tracked mattes become the region's matte strip"""

    bl_idname = "videograin.track_matte"
    bl_label = "Track Matte"

    region: bpy.props.IntProperty(name="Region", default=-1, options={"SKIP_SAVE"},
                                  description="Index of the region to track (-1: the active region)")
    strip: bpy.props.StringProperty(name="Strip", default="", options={"SKIP_SAVE"},
                                    description="The strip whose region to track (empty: the active strip)")
    wait: bpy.props.BoolProperty(name="Wait", default=False, options={"SKIP_SAVE"},
                                 description="Run until the tracking is done, failed or cancelled (scripts)")

    def execute(self, context):
        scene = context.scene
        source = jobs.named_or_active(scene, self.strip)
        if source is None or not source.videograin.enabled:
            return jobs.fail(self, scene.videograin, "Select a strip with an edit: Track Matte follows its regions.")
        edit = source.videograin
        index = self.region if self.region >= 0 else edit.active_region
        if not 0 <= index < len(edit.regions):
            return jobs.fail(self, edit, "Add a region first, with a mask or a painted image to track.")
        if edit.running:
            return jobs.fail(self, edit, f"An edit or a tracking of '{source.name}' is already running: wait for it "
                                         "or cancel it.")
        region = edit.regions[index]
        name = jobs.region_name(region, index)
        if region.matte_source == "STRIP":
            return jobs.fail(self, edit, f"Region '{name}' takes its mattes from a strip: Track Matte starts from a "
                                         "mask or a painted image (choose Mask or Image).")
        restore_datablocks(region)
        if not jobs.matte_ready(region):
            what = region.matte_source.lower()
            return jobs.fail(self, edit, f"Region '{name}' has no {what} to track: choose or draw one.")
        frames = export.frame_range(source)
        keyed = export.keyed_frames(region.mask) if region.matte_source == "MASK" else []
        what = f"the mask '{region.mask.name}'" if region.matte_source == "MASK" else f"the image '{region.image.name}'"
        try:
            marks = keyframes.keyframe_frames(scene.frame_current, keyed, frames, what)
            folder = jobs.results_folder(scene, source, f"{name} matte")
            keys = _render_keyframes(scene, region, name, marks, frames)
        except EngineError as exc:
            return jobs.fail(self, edit, exc.message)
        except RuntimeError as exc:  # Blender could not render the keyframes
            return jobs.fail(self, edit, f"Exporting the keyframes failed: {exc}")
        client = jobs.ready_engine(self, edit, scene.videograin.connection_file, self.wait)
        if client is None:
            shutil.rmtree(keys.scratch, ignore_errors=True)
            return {"CANCELLED"}
        edit.error, edit.status = "", "Exporting frames"
        key = timeline.own_key(scene, source)
        previews.drop_preview(key)
        try:
            session = _start_track(scene, edit, source, name, keys, client, folder)
        except EngineError as exc:
            client.close()
            return jobs.fail(self, edit, exc.message)
        except RuntimeError as exc:  # Blender could not render the frames or the keyframes
            client.close()
            return jobs.fail(self, edit, f"Exporting the frames failed: {exc}")
        shot = Shot(scene.name, key, source.name, session, scene.videograin.connection_file, _finish_track,
                    kind="track", region=region_key(region))
        runs.launch(scene, shot)
        if self.wait:
            runs.wait_for([key])
            if edit.error:
                self.report({"ERROR"}, edit.error)
                return {"CANCELLED"}
        return {"FINISHED"}


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


def _start_track(scene, edit, source, name: str, keys: Keyframes, client, folder: Path) -> TrackSession:
    """Export the source and start tracking: by path when the engine shares this disk and the strip is
    plain (the keyframes too), else with pixels, as an edit does (`jobs.send`). Takes `keys.scratch` over."""
    frames = export.frame_range(source)
    try:
        run = jobs.plain_run_if_local(scene, source, frames, client)
    except BaseException:
        shutil.rmtree(keys.scratch, ignore_errors=True)
        raise
    if run is not None:
        session = TrackSession(client, folder, scratch=keys.scratch)  # removes the scratch when the tracking ends
        try:
            paths = {index: str(path) for index, path in keys.files.items()}
            session.track_paths(run, paths, edit.tracker, edit.tracker_model, name)
            return session
        except EngineError as exc:
            if exc.code != "bad_job":
                raise
    shutil.rmtree(keys.scratch, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="videograin-export-") as work:
        pixels = [export.read_bmp(p) for p in export.render_strip(scene, source, frames, Path(work) / "frames")]
    session = TrackSession(client, folder)
    session.track(pixels, keys.mattes, edit.tracker, edit.tracker_model, name)
    return session


def _finish_track(scene, shot: Shot) -> None:
    """The tracked mattes as a muted image strip above the source, the region's matte from now on, shown
    over the source in the region's colour by an overlay strip (replacing the region's last one)."""
    session = shot.session
    source = runs.strip_of(scene, shot)
    edit = source.videograin
    found = [(index, region) for index, region in enumerate(edit.regions) if region.key == shot.region]
    if not found:
        edit.status = f"Tracked, but the region is gone: the mattes are in {session.result_folder}"
        return
    index, region = found[0]
    label = jobs.region_name(region, index)
    matte = timeline.insert_result_strip(scene, source, session.frame_paths(), f"{label} matte")
    matte.mute = True  # a matte is for the edit, never for the picture
    old = referenced_strip(region, "overlay")
    if old is not None and timeline.strips_of(scene).get(old.name) == old:  # not moved into a meta strip
        timeline.strips_of(scene).remove(old)
    overlay = timeline.insert_overlay(scene, matte, tuple(region.color), f"{label} matte overlay")
    region.matte_source, region.strip, region.overlay = "STRIP", matte.name, overlay.name
    scene.videograin.show_mattes = True  # shows the new overlay with the others
    edit.status = f"Tracked: '{matte.name}' on channel {matte.channel} is the matte of '{label}', {session.message}"
    edit.progress = 100.0


def register() -> None:
    bpy.utils.register_class(VIDEOGRAIN_OT_track_matte)


def unregister() -> None:
    bpy.utils.unregister_class(VIDEOGRAIN_OT_track_matte)
