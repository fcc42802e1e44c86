"""The "VideoGrain" tab of the sequencer's sidebar: one small panel per concern (the engine, the active
strip's edit and its run, its settings, the queue of shots), so a new tool is a new panel rather than a
longer draw()."""

from __future__ import annotations

import textwrap
import time

import bpy

from . import check_report, edit_ops, engine_ops, jobs, previews, runs, shots, timeline
from .engine_link import ABSENT, ALIVE, CONNECTING, SILENT

STATE_ICONS = {ALIVE: "CHECKMARK", CONNECTING: "TIME", SILENT: "ERROR", ABSENT: "UNLINKED"}
LABEL_CHARS = 48  # labels do not wrap by themselves
COPY_CHOICES = 8  # strips offered to copy an edit from


def wrapped(layout, text: str, icon: str = "NONE") -> None:
    for index, line in enumerate(textwrap.wrap(text, LABEL_CHARS)):
        layout.label(text=line, icon=icon if index == 0 else "BLANK1")


def active_strip(context):
    sed = context.scene.sequence_editor
    return sed.active_strip if sed is not None else None


class VideograinPanel:
    bl_space_type = "SEQUENCE_EDITOR"
    bl_region_type = "UI"
    bl_category = "VideoGrain"


class VIDEOGRAIN_PT_engine(VideograinPanel, bpy.types.Panel):
    bl_label = "Engine"
    bl_order = 0

    def draw(self, context):
        layout = self.layout
        vg = context.scene.videograin
        layout.prop(vg, "connection_file")
        row = layout.row(align=True)
        row.operator("videograin.start_engine")
        row.operator("videograin.stop_engine", text="", icon="X")
        row.operator("videograin.check_engine", text="", icon="FILE_REFRESH")
        layout.prop(vg, "engine_python")
        layout.prop(vg, "engine_args")

        if vg.connection_file:
            watch = jobs.engine_watch(vg.connection_file)
            box = layout.box()
            wrapped(box, watch.message, STATE_ICONS[watch.state])
            if watch.alive and watch.last_heard is not None:
                heard = f"heard {time.monotonic() - watch.last_heard:.0f} s ago"
                box.label(text=f"{heard}, ping {watch.ping_s * 1000:.0f} ms" if watch.ping_s else heard, icon="BLANK1")
        if vg.error:
            wrapped(layout, vg.error, "ERROR")
        log = engine_ops.engine_log()
        if log is not None:
            row = layout.row(align=True)
            row.label(text=f"Log: {log.name}", icon="TEXT")
            row.operator("wm.path_open", text="", icon="FILE_FOLDER").filepath = str(log.parent)


class VIDEOGRAIN_UL_regions(bpy.types.UIList):
    def draw_item(self, context, layout, data, item, icon, active_data, active_property, index=0):
        row = layout.row(align=True)
        row.prop(item, "color", text="")
        row.prop(item, "phrase", text="", emboss=False)
        row.label(text=item.matte_source.title())
        track = row.row(align=True)
        track.enabled = not data.running and item.matte_source != "STRIP"
        track.operator("videograin.track_matte", text="", icon="TRACKING").region = index


def draw_regions(context, layout, edit) -> None:
    layout.label(text="Regions")
    row = layout.row()
    row.template_list("VIDEOGRAIN_UL_regions", "", edit, "regions", edit, "active_region", rows=3)
    column = row.column(align=True)
    column.operator("videograin.region_add", text="", icon="ADD")
    column.operator("videograin.region_remove", text="", icon="REMOVE")
    if not 0 <= edit.active_region < len(edit.regions):
        return
    region = edit.regions[edit.active_region]
    layout.prop(region, "matte_source", expand=True)
    if region.matte_source == "MASK":
        row = layout.row(align=True)
        row.prop(region, "mask", text="")
        row.operator("videograin.mask_new", text="", icon="ADD")
    elif region.matte_source == "STRIP" and context.scene.sequence_editor:
        layout.prop_search(region, "strip", context.scene.sequence_editor, _strips_name(context), text="")
    elif region.matte_source == "IMAGE":
        layout.template_ID(region, "image", open="image.open")
    if region.matte_source != "STRIP":
        row = layout.row(align=True)
        row.enabled = not edit.running
        row.operator("videograin.track_matte", icon="TRACKING").region = edit.active_region
    if any(region.overlay_key for region in edit.regions):
        layout.prop(context.scene.videograin, "show_mattes")


def engine_waiting(context) -> str:
    """What to say instead of a step count while the engine does not answer ("" while it does)."""
    vg = context.scene.videograin
    watch = jobs.engine_watch(vg.connection_file)
    if watch.alive:
        return ""
    heard = f" (last heard {time.monotonic() - watch.last_heard:.0f} s ago)" if watch.last_heard is not None else ""
    return f"Waiting for the engine{heard}"


def draw_run(context, layout, strip) -> None:
    edit = strip.videograin
    row = layout.row(align=True)
    row.scale_y = 1.4
    row.enabled = not edit.running
    row.operator("videograin.edit", icon="SHADERFX")
    row.operator("videograin.check", icon="VIEWZOOM")
    layout.operator("videograin.edit_selected", icon="SEQ_STRIP_DUPLICATE")
    if edit.running:
        waiting = engine_waiting(context)
        if waiting:
            layout.label(text=waiting, icon="TIME")
        else:
            layout.progress(factor=edit.progress / 100.0, text=f"{edit.phase} {edit.step}/{edit.total}")
        layout.operator("videograin.cancel", icon="CANCEL")
    preview = previews.preview_of(strip.get(timeline.KEY, ""))
    if preview is not None:
        layout.template_icon(icon_value=preview.icon_id, scale=8.0)
    if edit.status:
        wrapped(layout, edit.status, "INFO")
    if edit.error:
        wrapped(layout, edit.error, "ERROR")
    if edit.check_status:
        draw_check(context, layout.box(), edit)
    takes = edit_ops.own_takes(strip)
    if takes:
        draw_takes(layout.box(), edit, takes)


def draw_check(context, box, edit) -> None:
    """The last Check: its verdict, each error and warning as the engine words it, the estimate, and
    where the layout picture is."""
    box.label(text="Check", icon="CHECKMARK" if edit.check_ok else "CANCEL")
    wrapped(box, edit.check_status)
    for finding in edit.check_findings:
        wrapped(box, finding.message, "CANCEL" if finding.error else "ERROR")
    if edit.check_estimate:
        wrapped(box, edit.check_estimate, "TIME")
    shown = context.screen is not None and any(area.type == "IMAGE_EDITOR" for area in context.screen.areas)
    where = "shown in the Image Editor" if shown else "open it in an Image Editor"
    wrapped(box, f"Layout of frame {edit.check_frame}: '{check_report.LAYOUT_IMAGE}', {where}", "IMAGE_DATA")


def draw_takes(box, edit, takes: list) -> None:
    """The take stack, newest first: each take's strip, shown or muted, and its prompt."""
    box.label(text="Takes", icon="RENDERLAYERS")
    for index, strip in reversed(takes):
        take = edit.takes[index]
        row = box.row(align=True)
        row.operator("videograin.take_show", text=strip.name, icon="HIDE_ON" if strip.mute else "HIDE_OFF",
                     depress=not strip.mute).index = index
        row.label(text=take.prompt)


def draw_no_edit(context, layout, strip) -> None:
    """A strip with no edit: start one, or copy another strip's."""
    wrapped(layout, f"'{strip.name}' has no edit", "INFO")
    layout.operator("videograin.edit_new", icon="ADD")
    others = [s for s in timeline.all_strips_of(context.scene) if s.videograin.enabled and s != strip]
    if others:
        layout.label(text="Or copy the edit of:")
        for other in others[:COPY_CHOICES]:
            layout.operator("videograin.edit_new", text=other.name, icon="DUPLICATE").copy_from = other.name


class VIDEOGRAIN_PT_edit(VideograinPanel, bpy.types.Panel):
    bl_label = "Edit"
    bl_order = 1

    def draw(self, context):
        layout = self.layout
        strip = active_strip(context)
        if strip is None:
            layout.label(text="Select the strip to edit", icon="INFO")
            return
        edit = strip.videograin
        if not edit.enabled:
            draw_no_edit(context, layout, strip)
            return
        layout.label(text=strip.name, icon="SEQUENCE")
        layout.prop(edit, "prompt")
        layout.prop(edit, "source_prompt")
        layout.prop(edit, "background_phrase")
        draw_regions(context, layout, edit)
        draw_run(context, layout, strip)


class VIDEOGRAIN_PT_attention(VideograinPanel, bpy.types.Panel):
    """Where each region's phrase attends on the current frame, from the strip's last edit run with
    Attention Maps."""

    bl_label = "Attention Maps"
    bl_parent_id = "VIDEOGRAIN_PT_edit"

    @classmethod
    def poll(cls, context):
        strip = active_strip(context)
        return strip is not None and bool(strip.videograin.attention_folder)

    def draw(self, context):
        scene, strip = context.scene, active_strip(context)
        edit = strip.videograin
        for index, phrase in enumerate(previews.phrases_of(edit)):
            if not phrase.strip():
                continue
            box = self.layout.box()
            box.label(text=phrase if index < len(edit.regions) else f"{phrase} (background)")
            preview = previews.attention_of(scene, strip, index)
            if preview is not None:
                box.template_icon(icon_value=preview.icon_id, scale=6.0)
            else:
                box.label(text=f"No map on frame {scene.frame_current}", icon="INFO")


class VIDEOGRAIN_PT_settings(VideograinPanel, bpy.types.Panel):
    bl_label = "Settings"
    bl_parent_id = "VIDEOGRAIN_PT_edit"
    bl_options = {"DEFAULT_CLOSED"}

    @classmethod
    def poll(cls, context):
        strip = active_strip(context)
        return strip is not None and strip.videograin.enabled

    def draw(self, context):
        edit = active_strip(context).videograin
        for name in ("steps", "guidance", "seed", "cross_strength", "self_strength", "control_type", "control_scale",
                     "working_size", "model", "attention_maps", "tracker", "tracker_model", "keep_partial"):
            self.layout.prop(edit, name)
        self.layout.prop(context.scene.videograin, "keep_preview")


class VIDEOGRAIN_PT_queue(VideograinPanel, bpy.types.Panel):
    """Every shot sent, wherever the user works meanwhile: its state, progress and time to go, a cancel
    button each; and the strips Edit Selected refused, with why."""

    bl_label = "Queue"
    bl_order = 2

    def draw(self, context):
        layout = self.layout
        vg = context.scene.videograin
        queued = [shot for shot in runs.shots() if shot.scene == context.scene.name]
        if not queued and not len(vg.refused):
            wrapped(layout, "Nothing queued: Edit Selected sends every selected strip's edit")
            return
        waiting = engine_waiting(context) if any(shot.active for shot in queued) else ""
        if waiting:
            layout.label(text=waiting, icon="TIME")
        for shot in queued:
            strip = runs.strip_of(context.scene, shot)
            name = strip.name if strip is not None else shot.name  # renamed since the last tick, or gone
            box = layout.box()
            row = box.row(align=True)
            row.label(text=name + (" (tracking)" if shot.kind == "track" else ""), icon="SEQUENCE")
            if shot.active and strip is not None:
                row.operator("videograin.cancel", text="", icon="CANCEL").strip = name
                box.progress(factor=shot.session.progress, text=shots.describe(shot))
            else:
                wrapped(box, shots.describe(shot), "CHECKMARK" if shot.state == "done" else "ERROR")
        for refused in vg.refused:
            wrapped(layout, f"Refused '{refused.code}': {refused.message}", "CANCEL")
        row = layout.row(align=True)
        row.operator("videograin.cancel_all", icon="CANCEL")
        row.operator("videograin.queue_clear", icon="TRASH")


def _strips_name(context) -> str:
    return "strips_all" if hasattr(context.scene.sequence_editor, "strips_all") else "sequences_all"


classes = (VIDEOGRAIN_UL_regions, VIDEOGRAIN_PT_engine, VIDEOGRAIN_PT_edit, VIDEOGRAIN_PT_attention,
           VIDEOGRAIN_PT_settings, VIDEOGRAIN_PT_queue)

register, unregister = bpy.utils.register_classes_factory(classes)
