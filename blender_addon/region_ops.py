"""Regions of the active strip's edit: add one (a phrase of the prompt and its matte), remove one, and a
new mask datablock to paint a region in."""

from __future__ import annotations

import colorsys

import bpy

from . import jobs


def _active_edit(operator, context):
    """The active strip's edit, or None after saying why not."""
    scene = context.scene
    strip = jobs.named_or_active(scene, "")
    if strip is None or not strip.videograin.enabled:
        jobs.fail(operator, scene.videograin, "Select a strip with an edit (New Edit starts one).")
        return None
    return strip


class VIDEOGRAIN_OT_region_add(bpy.types.Operator):
    """Add a region: a phrase of the prompt (or none: it still groups with itself) and its matte"""

    bl_idname = "videograin.region_add"
    bl_label = "Add Region"

    def execute(self, context):
        strip = _active_edit(self, context)
        if strip is None:
            return {"CANCELLED"}
        edit = strip.videograin
        region = edit.regions.add()
        region.color = colorsys.hsv_to_rgb((len(edit.regions) * 0.37) % 1.0, 0.7, 1.0)
        edit.active_region = len(edit.regions) - 1
        return {"FINISHED"}


class VIDEOGRAIN_OT_region_remove(bpy.types.Operator):
    """Remove the active region"""

    bl_idname = "videograin.region_remove"
    bl_label = "Remove Region"

    def execute(self, context):
        strip = _active_edit(self, context)
        if strip is None:
            return {"CANCELLED"}
        edit = strip.videograin
        if not 0 <= edit.active_region < len(edit.regions):
            return {"CANCELLED"}
        edit.regions.remove(edit.active_region)
        edit.active_region = max(0, edit.active_region - 1)
        return {"FINISHED"}


class VIDEOGRAIN_OT_mask_new(bpy.types.Operator):
    """Create a mask datablock for the active region, ready to paint in the mask editor"""

    bl_idname = "videograin.mask_new"
    bl_label = "New Mask"

    def execute(self, context):
        strip = _active_edit(self, context)
        if strip is None:
            return {"CANCELLED"}
        edit = strip.videograin
        if not 0 <= edit.active_region < len(edit.regions):
            return jobs.fail(self, edit, "Add a region first.")
        region = edit.regions[edit.active_region]
        mask = bpy.data.masks.new(name=f"VideoGrain {region.phrase or 'region'}")
        mask.layers.new(name="matte")
        mask.frame_start, mask.frame_end = strip.frame_final_start, strip.frame_final_end - 1
        region.matte_source, region.mask = "MASK", mask
        return {"FINISHED"}


classes = (VIDEOGRAIN_OT_region_add, VIDEOGRAIN_OT_region_remove, VIDEOGRAIN_OT_mask_new)

register, unregister = bpy.utils.register_classes_factory(classes)
