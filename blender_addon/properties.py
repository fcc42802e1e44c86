"""What the add-on stores: each source strip's edit on the strip (`strip.videograin`), the scene's engine
and view settings (`scene.videograin`), and the add-on's preferences."""

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

from . import timeline, watches

MATTE_SOURCES = [
    ("MASK", "Mask", "A mask datablock, painted in the mask editor"),
    ("STRIP", "Strip", "An image-sequence or movie strip of mattes (white = region)"),
    ("IMAGE", "Image", "A painted still image, used for every frame"),
]
TRACKERS = [
    ("flow", "Optical Flow", "Follow the keyframes along optical flow, re-cut to each frame's colours (no weights)"),
    ("sam2", "SAM 2", "Segment Anything 2's video model, the keyframes as prompts (engine needs its weights)"),
]
# Numbered: .blend files store an enum's number, and files saved before "auto" existed hold 0-3.
CONTROL_TYPES = [
    ("auto", "Model Default", "What the engine's model takes by default: canny edges on SD-1.5, none on Wan", "", 4),
    ("canny", "Canny edges", "Edges of the source frames (no extra weights)", "", 0),
    ("depth", "Depth", "A depth estimator's maps (engine needs its weights)", "", 1),
    ("pose", "Pose", "A pose estimator's skeletons (engine needs its weights)", "", 2),
    ("none", "None", "No ControlNet (or no VACE control on Wan)", "", 3),
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


def _remember_datablocks(self, context) -> None:
    self.mask_name = self.mask.name if self.mask is not None else ""
    self.image_name = self.image.name if self.image is not None else ""


def restore_datablocks(region) -> None:
    """Point a region at its mask or image again after Blender dropped the pointer: a strip pasted from
    the sequencer's copy buffer carries its edit, but not the datablocks the edit points at."""
    if region.mask is None and region.mask_name:
        region.mask = bpy.data.masks.get(region.mask_name)
    if region.image is None and region.image_name:
        region.image = bpy.data.images.get(region.image_name)


class VIDEOGRAIN_PG_region(bpy.types.PropertyGroup):
    phrase: StringProperty(name="Phrase", description="Words of the prompt that describe this region")
    matte_source: EnumProperty(name="Matte", items=MATTE_SOURCES, default="MASK")
    mask: PointerProperty(name="Mask", type=bpy.types.Mask, update=_remember_datablocks)
    mask_name: StringProperty(options={"HIDDEN"})
    strip: strip_reference("Matte Strip", "The strip holding this region's mattes", "strip")
    strip_key: StringProperty(options={"HIDDEN"})
    strip_name: StringProperty(options={"HIDDEN"})
    image: PointerProperty(name="Image", type=bpy.types.Image, update=_remember_datablocks)
    image_name: StringProperty(options={"HIDDEN"})
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


class VIDEOGRAIN_PG_take(bpy.types.PropertyGroup):
    """One result strip of a strip's edit: the take stack keeps every one, the latest shown."""

    strip: strip_reference("Take", "A result strip of this edit", "strip")
    strip_key: StringProperty(options={"HIDDEN"})
    strip_name: StringProperty(options={"HIDDEN"})
    prompt: StringProperty(name="Prompt", description="The prompt this take was edited with")
    summary: StringProperty(name="Summary", description="What the engine said of it")


class VIDEOGRAIN_PG_edit(bpy.types.PropertyGroup):
    """A source strip's edit, stored on the strip (`strip.videograin`): it goes with the strip through
    renames, moves, copy and paste, and a duplicate carries a copy of it."""

    enabled: BoolProperty(name="Has an Edit", default=False)
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
    control_type: EnumProperty(name="Control", items=CONTROL_TYPES, default="auto")
    control_scale: FloatProperty(name="Control Scale", default=1.0, min=0.0, max=2.0)
    working_size: IntProperty(name="Working Size", default=512, min=64, max=2048, step=64, description="Longest side while editing")
    model: StringProperty(name="Model", description="Model for this edit (empty: the engine's)")
    keep_partial: BoolProperty(name="Keep Partial Results", default=False)
    attention_maps: BoolProperty(
        name="Attention Maps", default=False,
        description="Bring back where each phrase attends, shown per region for the current frame")
    tracker: EnumProperty(name="Tracker", items=TRACKERS, default="flow", description="How Track Matte follows a region")
    tracker_model: StringProperty(
        name="Tracker Model", description="SAM 2 weights: a hub id or a folder on the engine's disk (empty: the default)")
    # The results: every take, the latest last.
    takes: CollectionProperty(type=VIDEOGRAIN_PG_take)
    # Live state of this strip's job, written by the tick that follows it.
    status: StringProperty(name="Status", default="")
    error: StringProperty(name="Error", default="")
    running: BoolProperty(name="Running", default=False)
    phase: StringProperty(name="Phase", default="")
    step: IntProperty(name="Step", default=0)
    total: IntProperty(name="Total", default=0)
    progress: FloatProperty(name="Progress", subtype="PERCENTAGE", min=0.0, max=100.0, default=0.0)
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

    @property
    def result_strip(self) -> str:
        """The name of the latest take's strip ("" when there is none)."""
        return self.takes[-1].strip if len(self.takes) else ""


# What copying an edit to another strip leaves behind: that strip's results, job and check are its own.
NOT_COPIED = {"takes", "status", "error", "running", "phase", "step", "total", "progress", "check_status",
              "check_ok", "check_estimate", "check_frame", "check_findings", "attention_folder", "attention_start"}


def copy_edit(source, target) -> None:
    """`source`'s edit (prompts, regions with their mattes, settings) onto `target`, a strip's edit."""
    for name in [p.identifier for p in source.bl_rna.properties if p.identifier not in ("rna_type", "name")]:
        if name in NOT_COPIED:
            continue
        if name in source:  # stored: copied as stored (regions, datablock pointers, enum values alike)
            target[name] = source[name]
        elif name in target:  # never set on the source: the default
            del target[name]
    target.enabled = True


def _show_mattes(self, context) -> None:
    for strip in timeline.all_strips_of(self.id_data) if self.id_data.sequence_editor else ():
        for region in strip.videograin.regions:
            overlay = referenced_strip(region, "overlay")
            if overlay is not None:
                overlay.mute = not self.show_mattes


def _watch_engine(self, context) -> None:
    watches.engine_watch(self.connection_file, restart=True)


class VIDEOGRAIN_PG_settings(bpy.types.PropertyGroup):
    """The scene's: which engine edits its strips, and what the panels show of every edit."""

    engine_python: StringProperty(
        name="Engine Python", default=sys.executable if "blender" not in sys.executable.lower() else "python3",
        description="Python with videograin installed, used to start a local engine",
    )
    engine_args: StringProperty(name="Engine Arguments", default="", description="Extra `videograin serve` arguments, e.g. --model PATH")
    connection_file: StringProperty(name="Connection File", subtype="FILE_PATH", description="An engine's connection file",
                                    update=_watch_engine)
    keep_preview: BoolProperty(name="Keep Preview", default=False, description="Keep the last step preview in the panel after the edit")
    show_mattes: BoolProperty(
        name="Show Mattes", default=True, update=_show_mattes,
        description="Tracked mattes in their region's colour over the source (they render too: turn off before rendering)")
    # What concerns no one strip: the engine, and the strips Edit Selected refused (with why).
    status: StringProperty(name="Status", default="")
    error: StringProperty(name="Error", default="")
    refused: CollectionProperty(type=VIDEOGRAIN_PG_finding)


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


def strip_type():
    """The strips' RNA type: `Strip` from Blender 4.4, `Sequence` before."""
    return getattr(bpy.types, "Strip", None) or bpy.types.Sequence


classes = (VIDEOGRAIN_PG_region, VIDEOGRAIN_PG_finding, VIDEOGRAIN_PG_take, VIDEOGRAIN_PG_edit,
           VIDEOGRAIN_PG_settings, VIDEOGRAIN_AP_preferences)


def register() -> None:
    for cls in classes:
        bpy.utils.register_class(cls)
    bpy.types.Scene.videograin = PointerProperty(type=VIDEOGRAIN_PG_settings)
    strip_type().videograin = PointerProperty(type=VIDEOGRAIN_PG_edit)


def unregister() -> None:
    del strip_type().videograin
    del bpy.types.Scene.videograin
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
