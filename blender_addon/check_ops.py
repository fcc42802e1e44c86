"""Check: the job Edit would send for a strip, checked by the engine without running it (SPEC.md §3.8):
its errors and warnings, its estimate, and the picture of the region layout at the playhead's frame,
kept on the strip's edit. Edit Selected checks each strip the same way before it queues any."""

from __future__ import annotations

import shutil
from pathlib import Path

import bpy

from . import check_report, export, jobs
from .engine_link import EngineError


class VIDEOGRAIN_OT_check(bpy.types.Operator):
    """Check the job Edit would send, in seconds and without starting it: the engine's warnings and errors,
    and the picture of the region layout the model will see at the playhead's frame"""

    bl_idname = "videograin.check"
    bl_label = "Check"

    strip: bpy.props.StringProperty(name="Strip", default="", options={"SKIP_SAVE"},
                                    description="The strip to check (empty: the active strip)")
    wait: bpy.props.BoolProperty(name="Wait", default=False, options={"SKIP_SAVE"},
                                 description="Wait for an engine that has not answered yet (scripts)")

    def execute(self, context):
        scene = context.scene
        source = jobs.named_or_active(scene, self.strip)
        if source is None:
            return jobs.fail(self, scene.videograin, "Select the strip to check.")
        edit = source.videograin
        _clear_check(edit)
        problem = jobs.edit_problem(source)
        if problem:
            return jobs.fail(self, edit, problem)
        client = jobs.ready_engine(self, edit, scene.videograin.connection_file, self.wait)
        if client is None:
            return {"CANCELLED"}
        edit.error, edit.status = "", "Checking the job"
        try:
            view = check_strip(scene, source, client, context)
        except EngineError as exc:
            return jobs.fail(self, edit, exc.message)
        except RuntimeError as exc:  # Blender could not render the frames or mattes
            return jobs.fail(self, edit, f"Exporting the frames failed: {exc}")
        finally:
            client.close()
        edit.status = f"Checked: the layout of frame {edit.check_frame} is in the image '{check_report.LAYOUT_IMAGE}'"
        self.report({"INFO"} if view.ok else {"WARNING"}, view.headline)
        return {"FINISHED"}


def check_strip(scene, source, client, context=None) -> check_report.CheckView:
    """Check the strip's job on `client`'s engine; its verdict, findings and layout picture go onto the
    strip's edit (and the picture into the image 'VideoGrain Layout'). EngineError when the engine refuses
    the request itself."""
    edit = source.videograin
    _clear_check(edit)
    frames = export.frame_range(source)
    shown = check_report.clip_frame(scene.frame_current, frames)
    # The engine answers a check at once (SPEC.md §3.8): waiting here costs what the export costs.
    reply, layout = jobs.send(
        scene, edit, source, jobs.request_of(edit), client,
        by_path=lambda settings, scratch: _check_paths(client, settings, scratch, shown),
        inline=lambda settings, pixels, mattes: client.check(settings, pixels, mattes, layout_frames=[shown]),
    )
    view = check_report.read_reply(reply)
    edit.check_status, edit.check_ok, edit.check_estimate = view.headline, view.ok, view.estimate
    edit.check_frame = frames.start + shown
    for finding in view.findings:
        item = edit.check_findings.add()
        item.code, item.message, item.error = finding.code, finding.message, finding.error
    _show_layout(context or bpy.context, layout)
    return view


def _check_paths(client, settings, scratch: Path, shown: int):
    """A check of media the engine reads from our disk; the mattes rendered for it go once it answers."""
    try:
        return client.check(settings, layout_frames=[shown])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _clear_check(edit) -> None:
    edit.check_status, edit.check_ok, edit.check_estimate = "", False, ""
    edit.check_findings.clear()


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


def register() -> None:
    bpy.utils.register_class(VIDEOGRAIN_OT_check)


def unregister() -> None:
    bpy.utils.unregister_class(VIDEOGRAIN_OT_check)
