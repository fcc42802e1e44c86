"""Scene settings under `scene.videograin`: what the panel shows and the operators read."""

from __future__ import annotations

import sys

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

MATTE_SOURCES = [
    ("MASK", "Mask", "A mask datablock, painted in the mask editor"),
    ("STRIP", "Strip", "An image-sequence or movie strip of mattes (white = region)"),
    ("IMAGE", "Image", "A painted still image, used for every frame"),
]
CONTROL_TYPES = [
    ("canny", "Canny edges", "Edges of the source frames (no extra weights)"),
    ("depth", "Depth", "A depth estimator's maps (engine needs its weights)"),
    ("pose", "Pose", "A pose estimator's skeletons (engine needs its weights)"),
    ("none", "None", "No ControlNet"),
]


class VIDEOGRAIN_PG_region(bpy.types.PropertyGroup):
    phrase: StringProperty(name="Phrase", description="Words of the prompt that describe this region")
    matte_source: EnumProperty(name="Matte", items=MATTE_SOURCES, default="MASK")
    mask: PointerProperty(name="Mask", type=bpy.types.Mask)
    strip: StringProperty(name="Matte Strip", description="Name of the strip holding this region's mattes")
    image: PointerProperty(name="Image", type=bpy.types.Image)
    color: FloatVectorProperty(name="Colour", subtype="COLOR", size=3, min=0.0, max=1.0, default=(1.0, 0.3, 0.2))


class VIDEOGRAIN_PG_settings(bpy.types.PropertyGroup):
    engine_python: StringProperty(
        name="Engine Python", default=sys.executable if "blender" not in sys.executable.lower() else "python3",
        description="Python with videograin installed, used to start a local engine",
    )
    engine_args: StringProperty(name="Engine Arguments", default="", description="Extra `videograin serve` arguments, e.g. --model PATH")
    connection_file: StringProperty(name="Connection File", subtype="FILE_PATH", description="An engine's connection file")
    source_strip: StringProperty(name="Source", description="Strip to edit (empty: the active strip)")
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
    # Live state, written by the timer that drives an edit.
    status: StringProperty(name="Status", default="")
    error: StringProperty(name="Error", default="")
    running: BoolProperty(name="Running", default=False)
    phase: StringProperty(name="Phase", default="")
    step: IntProperty(name="Step", default=0)
    total: IntProperty(name="Total", default=0)
    progress: FloatProperty(name="Progress", subtype="PERCENTAGE", min=0.0, max=100.0, default=0.0)


classes = (VIDEOGRAIN_PG_region, VIDEOGRAIN_PG_settings)


def register() -> None:
    for cls in classes:
        bpy.utils.register_class(cls)
    bpy.types.Scene.videograin = PointerProperty(type=VIDEOGRAIN_PG_settings)


def unregister() -> None:
    del bpy.types.Scene.videograin
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
