"""The "VideoGrain" tab of the sequencer's sidebar."""

from __future__ import annotations

import textwrap

import bpy

from .operators import PREVIEW_IMAGE


class VIDEOGRAIN_UL_regions(bpy.types.UIList):
    def draw_item(self, context, layout, data, item, icon, active_data, active_property, index=0):
        row = layout.row(align=True)
        row.prop(item, "color", text="")
        row.prop(item, "phrase", text="", emboss=False)
        row.label(text=item.matte_source.title())


class VIDEOGRAIN_PT_panel(bpy.types.Panel):
    bl_space_type = "SEQUENCE_EDITOR"
    bl_region_type = "UI"
    bl_category = "VideoGrain"
    bl_label = "VideoGrain"

    def draw(self, context):
        layout = self.layout
        vg = context.scene.videograin

        box = layout.box()
        box.label(text="Engine", icon="PLUGIN")
        box.prop(vg, "connection_file")
        row = box.row(align=True)
        row.operator("videograin.start_engine")
        row.operator("videograin.stop_engine", text="", icon="X")
        row.operator("videograin.check_engine", text="", icon="FILE_REFRESH")
        box.prop(vg, "engine_python")
        box.prop(vg, "engine_args")

        if context.scene.sequence_editor:
            layout.prop_search(vg, "source_strip", context.scene.sequence_editor, _strips_name(context), text="Source")
        layout.prop(vg, "prompt")
        layout.prop(vg, "source_prompt")
        layout.prop(vg, "background_phrase")

        layout.label(text="Regions")
        row = layout.row()
        row.template_list("VIDEOGRAIN_UL_regions", "", vg, "regions", vg, "active_region", rows=3)
        column = row.column(align=True)
        column.operator("videograin.region_add", text="", icon="ADD")
        column.operator("videograin.region_remove", text="", icon="REMOVE")
        if 0 <= vg.active_region < len(vg.regions):
            region = vg.regions[vg.active_region]
            layout.prop(region, "matte_source", expand=True)
            if region.matte_source == "MASK":
                row = layout.row(align=True)
                row.prop(region, "mask", text="")
                row.operator("videograin.mask_new", text="", icon="ADD")
            elif region.matte_source == "STRIP" and context.scene.sequence_editor:
                layout.prop_search(region, "strip", context.scene.sequence_editor, _strips_name(context), text="")
            else:
                layout.template_ID(region, "image", open="image.open")

        settings = layout.column(heading="Settings")
        for name in ("steps", "guidance", "seed", "cross_strength", "self_strength", "control_type", "control_scale",
                     "working_size", "model", "keep_partial"):
            settings.prop(vg, name)

        row = layout.row(align=True)
        row.scale_y = 1.4
        row.enabled = not vg.running
        row.operator("videograin.edit", icon="SHADERFX")
        if vg.running:
            layout.progress(factor=vg.progress / 100.0, text=f"{vg.phase} {vg.step}/{vg.total}")
            layout.operator("videograin.cancel", icon="CANCEL")
            preview = bpy.data.images.get(PREVIEW_IMAGE)
            if preview is not None:
                preview.preview_ensure()
                layout.template_icon(icon_value=preview.preview.icon_id, scale=8.0)
        if vg.status:
            layout.label(text=vg.status, icon="INFO")
        if vg.error:
            for line in textwrap.wrap(vg.error, 48):  # labels do not wrap by themselves
                layout.label(text=line, icon="ERROR")


def _strips_name(context) -> str:
    return "strips_all" if hasattr(context.scene.sequence_editor, "strips_all") else "sequences_all"


classes = (VIDEOGRAIN_UL_regions, VIDEOGRAIN_PT_panel)


def register() -> None:
    for cls in classes:
        bpy.utils.register_class(cls)


def unregister() -> None:
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
