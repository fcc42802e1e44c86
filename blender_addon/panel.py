"""The "VideoGrain" tab of the sequencer's sidebar: one small panel per concern (the engine, the edit and
its run, the settings), so a new tool is a new panel rather than a longer draw()."""

from __future__ import annotations

import textwrap
import time

import bpy

from . import check_report, operators
from .engine_link import ABSENT, ALIVE, CONNECTING, SILENT

STATE_ICONS = {ALIVE: "CHECKMARK", CONNECTING: "TIME", SILENT: "ERROR", ABSENT: "UNLINKED"}
LABEL_CHARS = 48  # labels do not wrap by themselves


def wrapped(layout, text: str, icon: str = "NONE") -> None:
    for index, line in enumerate(textwrap.wrap(text, LABEL_CHARS)):
        layout.label(text=line, icon=icon if index == 0 else "BLANK1")


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
            watch = operators.engine_watch(vg.connection_file)
            box = layout.box()
            wrapped(box, watch.message, STATE_ICONS[watch.state])
            if watch.alive and watch.last_heard is not None:
                heard = f"heard {time.monotonic() - watch.last_heard:.0f} s ago"
                box.label(text=f"{heard}, ping {watch.ping_s * 1000:.0f} ms" if watch.ping_s else heard, icon="BLANK1")
        log = operators.engine_log()
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


def draw_regions(context, layout, vg) -> None:
    layout.label(text="Regions")
    row = layout.row()
    row.template_list("VIDEOGRAIN_UL_regions", "", vg, "regions", vg, "active_region", rows=3)
    column = row.column(align=True)
    column.operator("videograin.region_add", text="", icon="ADD")
    column.operator("videograin.region_remove", text="", icon="REMOVE")
    if not 0 <= vg.active_region < len(vg.regions):
        return
    region = vg.regions[vg.active_region]
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
        row.enabled = not vg.running
        row.operator("videograin.track_matte", icon="TRACKING").region = vg.active_region
    if any(region.overlay_key for region in vg.regions):
        layout.prop(vg, "show_mattes")


def draw_run(context, layout, vg) -> None:
    row = layout.row(align=True)
    row.scale_y = 1.4
    row.enabled = not vg.running
    row.operator("videograin.edit", icon="SHADERFX")
    row.operator("videograin.check", icon="VIEWZOOM")
    if vg.running:
        layout.progress(factor=vg.progress / 100.0, text=f"{vg.phase} {vg.step}/{vg.total}")
        layout.operator("videograin.cancel", icon="CANCEL")
    preview = operators.preview_of(context.scene.name)
    if preview is not None:
        layout.template_icon(icon_value=preview.icon_id, scale=8.0)
    if vg.status:
        wrapped(layout, vg.status, "INFO")
    if vg.error:
        wrapped(layout, vg.error, "ERROR")
    if vg.check_status:
        draw_check(context, layout.box(), vg)


def draw_check(context, box, vg) -> None:
    """The last Check: its verdict, each error and warning as the engine words it, the estimate, and
    where the layout picture is."""
    box.label(text="Check", icon="CHECKMARK" if vg.check_ok else "CANCEL")
    wrapped(box, vg.check_status)
    for finding in vg.check_findings:
        wrapped(box, finding.message, "CANCEL" if finding.error else "ERROR")
    if vg.check_estimate:
        wrapped(box, vg.check_estimate, "TIME")
    shown = context.screen is not None and any(area.type == "IMAGE_EDITOR" for area in context.screen.areas)
    where = "shown in the Image Editor" if shown else "open it in an Image Editor"
    wrapped(box, f"Layout of frame {vg.check_frame}: '{check_report.LAYOUT_IMAGE}', {where}", "IMAGE_DATA")


class VIDEOGRAIN_PT_edit(VideograinPanel, bpy.types.Panel):
    bl_label = "Edit"
    bl_order = 1

    def draw(self, context):
        layout = self.layout
        scene = context.scene
        vg = scene.videograin
        if scene.sequence_editor:
            layout.prop_search(vg, "source_strip", scene.sequence_editor, _strips_name(context), text="Source")
        layout.prop(vg, "prompt")
        layout.prop(vg, "source_prompt")
        layout.prop(vg, "background_phrase")
        draw_regions(context, layout, vg)
        draw_run(context, layout, vg)


class VIDEOGRAIN_PT_attention(VideograinPanel, bpy.types.Panel):
    """Where each region's phrase attends on the current frame, from the last edit run with Attention Maps."""

    bl_label = "Attention Maps"
    bl_parent_id = "VIDEOGRAIN_PT_edit"

    @classmethod
    def poll(cls, context):
        return bool(context.scene.videograin.attention_folder)

    def draw(self, context):
        scene = context.scene
        vg = scene.videograin
        phrases = [region.phrase for region in vg.regions] + [vg.background_phrase]
        for index, phrase in enumerate(phrases):
            if not phrase.strip():
                continue
            box = self.layout.box()
            box.label(text=phrase if index < len(vg.regions) else f"{phrase} (background)")
            preview = operators.attention_of(scene.name, index)
            if preview is not None:
                box.template_icon(icon_value=preview.icon_id, scale=6.0)
            else:
                box.label(text=f"No map on frame {scene.frame_current}", icon="INFO")


class VIDEOGRAIN_PT_settings(VideograinPanel, bpy.types.Panel):
    bl_label = "Settings"
    bl_parent_id = "VIDEOGRAIN_PT_edit"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        vg = context.scene.videograin
        for name in ("steps", "guidance", "seed", "cross_strength", "self_strength", "control_type", "control_scale",
                     "working_size", "model", "attention_maps", "tracker", "tracker_model", "keep_partial",
                     "keep_preview"):
            self.layout.prop(vg, name)


def _strips_name(context) -> str:
    return "strips_all" if hasattr(context.scene.sequence_editor, "strips_all") else "sequences_all"


classes = (VIDEOGRAIN_UL_regions, VIDEOGRAIN_PT_engine, VIDEOGRAIN_PT_edit, VIDEOGRAIN_PT_attention,
           VIDEOGRAIN_PT_settings)


def register() -> None:
    for cls in classes:
        bpy.utils.register_class(cls)


def unregister() -> None:
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
