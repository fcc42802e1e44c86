"""Scene settings under `scene.videograin` and the add-on's preferences: what the panel shows and the
operators read."""

from __future__ import annotations

import sys
import uuid

import bpy
from bpy.props import (
    BoolProperty,
    CollectionProperty,
    EnumProperty,
    FloatProperty,
    FloatVectorProperty,
    IntProperty,
    PointerProperty,
    StringProperty,
)

from . import timeline

MATTE_SOURCES = [
    ("MASK", "Mask", "A mask datablock, painted in the mask editor"),
    ("STRIP", "Strip", "An image-sequence or movie strip of mattes (white = region)"),
    ("IMAGE", "Image", "A painted still image, used for every frame"),
]
TRACKERS = [
    ("flow", "Optical Flow", "Follow the keyframes along optical flow, re-cut to each frame's colours (no weights)"),
    ("sam2", "SAM 2", "Segment Anything 2's video model, the keyframes as prompts (engine needs its weights)"),
]
CONTROL_TYPES = [
    ("canny", "Canny edges", "Edges of the source frames (no extra weights)"),
    ("depth", "Depth", "A depth estimator's maps (engine needs its weights)"),
    ("pose", "Pose", "A pose estimator's skeletons (engine needs its weights)"),
    ("none", "None", "No ControlNet"),
]
MEDIA_TRANSFERS = [
    ("AUTO", "Files When Local", ("An engine on this machine reads plain image sequences and movies from disk; "
                                  "anything else is rendered and sent")),
    ("INLINE", "Always Send Pixels", "Render every frame and send the pixels, for an engine behind a port forward"),
]


def strip_reference(name: str, description: str, key: str):
    """A strip chosen by name that stays chosen when the strip is renamed: the name shown is read from the
    strip stamped with the stored key (`timeline.stamp`). Stores `<key>_key` and `<key>_name` beside it."""

    def get(self) -> str:
        strip = timeline.find_strip(self.id_data, getattr(self, f"{key}_key"), getattr(self, f"{key}_name"))
        return strip.name if strip is not None else getattr(self, f"{key}_name")

    def set(self, value: str) -> None:
        sed = self.id_data.sequence_editor
        strip = timeline.all_strips_of(self.id_data).get(value) if value and sed is not None else None
        setattr(self, f"{key}_key", timeline.stamp(strip) if strip is not None else "")
        setattr(self, f"{key}_name", value)

    return StringProperty(name=name, description=description, get=get, set=set)


def referenced_strip(owner, key: str):
    """The strip a `strip_reference` names, or None (unset, or the strip is gone)."""
    return timeline.find_strip(owner.id_data, getattr(owner, f"{key}_key"), getattr(owner, f"{key}_name"))


class VIDEOGRAIN_PG_region(bpy.types.PropertyGroup):
    phrase: StringProperty(name="Phrase", description="Words of the prompt that describe this region")
    matte_source: EnumProperty(name="Matte", items=MATTE_SOURCES, default="MASK")
    mask: PointerProperty(name="Mask", type=bpy.types.Mask)
    strip: strip_reference("Matte Strip", "The strip holding this region's mattes", "strip")
    strip_key: StringProperty(options={"HIDDEN"})
    strip_name: StringProperty(options={"HIDDEN"})
    image: PointerProperty(name="Image", type=bpy.types.Image)
    color: FloatVectorProperty(name="Colour", subtype="COLOR", size=3, min=0.0, max=1.0, default=(1.0, 0.3, 0.2))
    # Tracking: the region's identity while its matte is tracked (its index may change meanwhile), and
    # the strip that shows its tracked matte over the source.
    key: StringProperty(options={"HIDDEN"})
    overlay: strip_reference("Matte Overlay", "The strip showing this region's tracked matte in colour", "overlay")
    overlay_key: StringProperty(options={"HIDDEN"})
    overlay_name: StringProperty(options={"HIDDEN"})


class VIDEOGRAIN_PG_finding(bpy.types.PropertyGroup):
    """A warning or error of the last Check (SPEC.md §3.8)."""

    code: StringProperty(name="Code")
    message: StringProperty(name="Message")
    error: BoolProperty(name="Error", description="The edit would fail on it (else a warning)")


def region_key(region) -> str:
    """The region's key, given the first time it is asked for."""
    if not region.key:
        region.key = uuid.uuid4().hex
    return region.key


def _show_mattes(self, context) -> None:
    for region in self.regions:
        overlay = referenced_strip(region, "overlay")
        if overlay is not None:
            overlay.mute = not self.show_mattes


def _watch_engine(self, context) -> None:
    from . import operators  # operators imports this module

    operators.engine_watch(self.connection_file, restart=True)


class VIDEOGRAIN_PG_settings(bpy.types.PropertyGroup):
    engine_python: StringProperty(
        name="Engine Python", default=sys.executable if "blender" not in sys.executable.lower() else "python3",
        description="Python with videograin installed, used to start a local engine",
    )
    engine_args: StringProperty(name="Engine Arguments", default="", description="Extra `videograin serve` arguments, e.g. --model PATH")
    connection_file: StringProperty(name="Connection File", subtype="FILE_PATH", description="An engine's connection file",
                                    update=_watch_engine)
    source_strip: strip_reference("Source", "Strip to edit (empty: the active strip)", "source_strip")
    source_strip_key: StringProperty(options={"HIDDEN"})
    source_strip_name: StringProperty(options={"HIDDEN"})
    prompt: StringProperty(name="Prompt", description="Target prompt naming every region")
    source_prompt: StringProperty(name="Source Prompt", description="What the clip shows now (for inversion)")
    background_phrase: StringProperty(name="Background", description="Phrase for pixels in no region (optional)")
    regions: CollectionProperty(type=VIDEOGRAIN_PG_region)
    active_region: IntProperty(name="Active Region", default=0)
    steps: IntProperty(name="Steps", default=50, min=1, max=1000)
    guidance: FloatProperty(name="Guidance", default=7.5, min=1.0, max=30.0)
    seed: IntProperty(name="Seed", default=0, min=0)
    cross_strength: FloatProperty(name="Cross Modulation", default=1.0, min=0.0, max=1.0)
    self_strength: FloatProperty(name="Self Modulation", default=0.3, min=0.0, max=1.0)
    control_type: EnumProperty(name="Control", items=CONTROL_TYPES, default="canny")
    control_scale: FloatProperty(name="Control Scale", default=1.0, min=0.0, max=2.0)
    working_size: IntProperty(name="Working Size", default=512, min=64, max=2048, step=64, description="Longest side while editing")
    model: StringProperty(name="Model", description="Model for this edit (empty: the engine's)")
    keep_partial: BoolProperty(name="Keep Partial Results", default=False)
    keep_preview: BoolProperty(name="Keep Preview", default=False, description="Keep the last step preview in the panel after the edit")
    attention_maps: BoolProperty(
        name="Attention Maps", default=False,
        description="Bring back where each phrase attends, shown per region for the current frame")
    tracker: EnumProperty(name="Tracker", items=TRACKERS, default="flow", description="How Track Matte follows a region")
    tracker_model: StringProperty(
        name="Tracker Model", description="SAM 2 weights: a hub id or a folder on the engine's disk (empty: the default)")
    show_mattes: BoolProperty(
        name="Show Mattes", default=True, update=_show_mattes,
        description="Tracked mattes in their region's colour over the source (they render too: turn off before rendering)")
    # Live state, written by the timer that drives an edit.
    status: StringProperty(name="Status", default="")
    error: StringProperty(name="Error", default="")
    running: BoolProperty(name="Running", default=False)
    phase: StringProperty(name="Phase", default="")
    step: IntProperty(name="Step", default=0)
    total: IntProperty(name="Total", default=0)
    progress: FloatProperty(name="Progress", subtype="PERCENTAGE", min=0.0, max=100.0, default=0.0)
    result_strip: StringProperty(name="Result Strip", default="", description="Name of the strip the last edit added")
    # The last Check: its verdict, findings and estimate, and the timeline frame its layout picture shows
    # (empty check_status: no check yet, or the last one failed).
    check_status: StringProperty(name="Check", default="")
    check_ok: BoolProperty(name="Check OK", default=False)
    check_estimate: StringProperty(name="Estimate", default="")
    check_frame: IntProperty(name="Checked Frame", default=0)
    check_findings: CollectionProperty(type=VIDEOGRAIN_PG_finding)
    # The last edit's attention maps: its result folder (relative to the .blend when saved) and the
    # timeline frame of its first frame.
    attention_folder: StringProperty(options={"HIDDEN"})
    attention_start: IntProperty(options={"HIDDEN"})


class VIDEOGRAIN_AP_preferences(bpy.types.AddonPreferences):
    # The add-on's module: `bl_ext.<repository>.videograin` when installed, `videograin.blender_addon` in place.
    bl_idname = __package__

    results_folder: StringProperty(
        name="Results for Unsaved Files", subtype="DIR_PATH",
        description="Where edits of a .blend that was never saved go (a saved file keeps them beside it)",
    )
    media_transfer: EnumProperty(name="Media", items=MEDIA_TRANSFERS, default="AUTO")

    def draw(self, context):
        self.layout.prop(self, "results_folder")
        self.layout.prop(self, "media_transfer")


def preferences(context) -> VIDEOGRAIN_AP_preferences | None:
    """The add-on's preferences; None when it was registered by hand rather than enabled."""
    addon = context.preferences.addons.get(__package__)
    return addon.preferences if addon is not None else None


classes = (VIDEOGRAIN_PG_region, VIDEOGRAIN_PG_finding, VIDEOGRAIN_PG_settings, VIDEOGRAIN_AP_preferences)


def register() -> None:
    for cls in classes:
        bpy.utils.register_class(cls)
    bpy.types.Scene.videograin = PointerProperty(type=VIDEOGRAIN_PG_settings)


def unregister() -> None:
    del bpy.types.Scene.videograin
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
