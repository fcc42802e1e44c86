"""Which model family a job's model belongs to, and what each family accepts of a job.

The family comes from the model folder's `model_index.json` (its pipeline class: `StableDiffusion*`,
`WanPipeline`, `WanVACEPipeline`, ...), never from the model's name; the random-weight stand-ins are named
in RANDOM_MODELS. Nothing here imports torch: `videograin check` and the CLI use it before any model loads.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from videograin.engine.config import EditSettings, FlowConfig
from videograin.engine.errors import JobError, ModelUnavailableError

SD15, WAN = "sd15", "wan"
# Random-weight stand-ins, built in code (engine/models.py): name -> (family, VACE?).
RANDOM_MODELS = {
    "tiny": (SD15, False), "sd15-random": (SD15, False),
    "wan-tiny": (WAN, False), "wan-vace-tiny": (WAN, True), "wan-1.3b-random": (WAN, False),
}
# Pipeline classes of model_index.json, by family. Image-to-video Wan (an image encoder's tokens in every
# cross-attention) is not supported.
PIPELINE_CLASSES = {
    "WanPipeline": (WAN, False), "WanVACEPipeline": (WAN, True), "WanVideoToVideoPipeline": (WAN, False),
}


@dataclass(frozen=True)
class ModelFamily:
    name: str  # SD15 or WAN
    vace: bool = False  # a Wan VACE checkpoint: takes masked-video context and control maps

    @property
    def size_multiple(self) -> int:
        """Working sizes are multiples of this: SD's VAE 8×; Wan's VAE 8× times its 2×2 patches."""
        return 16 if self.name == WAN else 8


def model_family(model: str) -> ModelFamily:
    """The family of a random stand-in's name, or of a model folder / hub id from its model_index.json
    (a model that is nowhere to be read is taken for SD-1.5, whose loading then says how to fetch it)."""
    if model in RANDOM_MODELS:
        return ModelFamily(*RANDOM_MODELS[model])
    index = _model_index(model)
    if index is None:
        return ModelFamily(SD15)
    name = index.get("_class_name", "")
    if name in PIPELINE_CLASSES:
        return ModelFamily(*PIPELINE_CLASSES[name])
    if name.startswith("StableDiffusion"):
        return ModelFamily(SD15)
    raise ModelUnavailableError(
        f"model '{model}' is a {name or 'pipeline of unknown class'}: videograin edits with Stable Diffusion 1.5 "
        "(StableDiffusion*) and Wan 2.1 / 2.2 text-to-video or VACE (WanPipeline, WanVACEPipeline) checkpoints"
    )


def _model_index(model: str) -> dict | None:
    """model_index.json of a local folder, or of a hub id already in the Hugging Face cache."""
    folder = Path(model).expanduser()
    path = folder / "model_index.json" if folder.is_dir() else None
    if path is None and "/" in model and not folder.exists():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(model, "model_index.json")
            path = Path(cached) if isinstance(cached, str) else None
        except Exception:  # a malformed id: loading will say what is wrong
            path = None
    if path is None or not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelUnavailableError(f"'{path}' cannot be read: {exc}") from None


def capabilities(model: str) -> dict:
    """What a model's family accepts, for the protocol's `welcome`: its family, whether it is VACE (control
    maps), the clip lengths it takes as they are (others are padded) and the working-size multiple."""
    try:
        family = model_family(model)
    except ModelUnavailableError:  # the engine says so when it loads the model; a hello still gets an answer
        return {"name": "unknown", "vace": False, "frames": "any", "size_multiple": 8}
    return {"name": family.name, "vace": family.vace, "frames": "4k+1" if family.name == WAN else "any",
            "size_multiple": family.size_multiple}


def family_warnings(settings: EditSettings, family: ModelFamily, frames: int | None = None) -> list[str]:
    """Raise one JobError for what the family refuses; return warnings for what it ignores or changes.
    `frames`: the clip's length, when known (Wan pads it to 4k + 1)."""
    s = settings
    warnings: list[str] = []
    width, height = s.source.width, s.source.height
    multiple = family.size_multiple
    if width % multiple or height % multiple:
        near = tuple(max(multiple, int(side / multiple + 0.5) * multiple) for side in (width, height))
        raise JobError(f"working size {width}x{height} is not a multiple of {multiple} on this model: "
                       f"use {near[0]}x{near[1]} (source.width / source.height)")
    if family.name != WAN:
        return warnings
    if s.controlnet:
        raise JobError("'controlnet' is for SD-1.5: a Wan model takes control maps through VACE; remove it")
    if s.control.type not in ("auto", "none") and not family.vace:
        raise JobError(f"control.type '{s.control.type}' needs a Wan VACE checkpoint (e.g. "
                       "Wan-AI/Wan2.1-VACE-1.3B-diffusers), which takes control maps; this model is text-to-video: "
                       "remove 'control' or point 'model' at a VACE checkpoint")
    if s.controlnet_attention != "frame":
        warnings.append("'controlnet_attention' applies to SD-1.5's ControlNet: ignored on Wan")
    if s.inject_step:
        warnings.append("'inject_step' (UNet feature injection) applies to SD-1.5: ignored on Wan")
    if s.flow.method != "none" and s.flow.levels != FlowConfig().levels:
        warnings.append("'flow.levels' (trajectory attention at UNet resolutions) applies to SD-1.5: ignored on "
                        "Wan, whose self-attention already spans every latent frame")
    if frames is not None and (frames - 1) % 4:
        padded = 1 + math.ceil((frames - 1) / 4) * 4
        warnings.append(f"Wan takes 4k + 1 frames: the {frames}-frame clip is padded to {padded} by repeating its "
                        "last frame, and the padding is dropped from the result")
    return warnings
