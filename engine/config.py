"""Edit settings as plain dataclasses, parsed from the job file's mapping (or a protocol `submit`).

Only settings live here: paths are resolved and media read by `inputs.job`.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from videograin.engine.errors import JobError

CONTROL_TYPES = ("canny", "frames", "depth", "pose", "none")

# ControlNet 1.1 checkpoints matching each control type; used when the job names none.
DEFAULT_CONTROLNETS = {
    "canny": "lllyasviel/control_v11p_sd15_canny",
    "frames": "lllyasviel/control_v11f1p_sd15_depth",
    "depth": "lllyasviel/control_v11f1p_sd15_depth",
    "pose": "lllyasviel/control_v11p_sd15_openpose",
}
DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"


@dataclass
class ModulationConfig:
    """ST-Layout attention strengths and their timestep schedule.

    λ = weight · size · ((t − 1) / 1000) ** decay for the first `until` share of denoising steps,
    0 afterwards (the late steps refine freely). `size` is 1 − the query region's area share.
    """

    enabled: bool = True
    cross: float = 1.0
    self_: float = 0.3
    until: float = 0.3
    decay: float = 5.0

    def strength(self, weight: float, timestep: int, step_index: int, num_steps: int) -> float:
        """λ before the per-query size factor, for denoising step `step_index` at DDPM `timestep`."""
        if not self.enabled or step_index >= round(self.until * num_steps):
            return 0.0
        return weight * (max(timestep - 1, 0) / 1000.0) ** self.decay


@dataclass
class ControlConfig:
    type: str = "canny"
    scale: float = 1.0
    # `frames`: folder/video of maps; `depth` / `pose`: local folder of estimator weights.
    path: str | None = None
    low_threshold: int = 100
    high_threshold: int = 200


@dataclass
class SourceConfig:
    path: str = ""
    start: int = 0
    count: int | None = None
    stride: int = 1
    width: int = 512
    height: int = 512


@dataclass
class RegionConfig:
    phrase: str
    mask: str | None = None  # folder or video; None when masks arrive inline (protocol)


@dataclass
class EditSettings:
    source_prompt: str
    prompt: str
    regions: list[RegionConfig]
    background_phrase: str | None = None
    source: SourceConfig = field(default_factory=SourceConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    modulation: ModulationConfig = field(default_factory=ModulationConfig)
    steps: int = 50
    guidance: float = 7.5
    seed: int = 0
    model: str = DEFAULT_MODEL
    controlnet: str | None = None
    # Frames per UNet pass; None lets the engine pick the longest pass that fits the device.
    window: int | None = None

    @property
    def controlnet_id(self) -> str | None:
        if self.control.type == "none":
            return None
        return self.controlnet or DEFAULT_CONTROLNETS[self.control.type]

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["modulation"]["self"] = data["modulation"].pop("self_")
        data["background"] = {"phrase": data.pop("background_phrase")}
        return data


def find_phrase(prompt: str, phrase: str) -> tuple[int, int]:
    """Character span of `phrase` in `prompt` (case-insensitive, whole words), or a JobError."""
    if not phrase or not phrase.strip():
        raise JobError("a region has an empty phrase: give it the words of the prompt that describe it")
    match = re.search(rf"(?<!\w){re.escape(phrase.strip())}(?!\w)", prompt, flags=re.IGNORECASE)
    if match is None:
        raise JobError(f"phrase '{phrase}' does not occur in the prompt '{prompt}': each phrase must be words of it")
    return match.span()


def _build(cls: type, data: Any, where: str, renames: dict[str, str] | None = None) -> Any:
    """Instantiate dataclass `cls` from a mapping, rejecting unknown keys and wrong types by name."""
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise JobError(f"'{where}' must be a mapping, got {type(data).__name__}")
    renames = renames or {}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        name = renames.get(key, key)
        if name not in fields:
            known = ", ".join(sorted(renames.get(f, f) for f in fields))
            raise JobError(f"unknown setting '{where}.{key}' (known: {known})")
        kwargs[name] = _coerce(value, fields[name].type, f"{where}.{key}")
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise JobError(f"'{where}' is incomplete: {exc}") from None


def _coerce(value: Any, annotation: str, where: str) -> Any:
    """Check a scalar against its annotation (`from __future__` makes annotations strings)."""
    if value is None:
        if "None" in annotation:
            return None
        raise JobError(f"'{where}' must not be empty")
    for name, kind in (("bool", bool), ("int", int), ("float", float), ("str", str)):
        if annotation.startswith(name):
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                return float(value)
            if kind is not bool and isinstance(value, bool) or not isinstance(value, kind):
                raise JobError(f"'{where}' must be {name}, got {value!r}")
            return value
    return value


def parse_settings(data: Any) -> EditSettings:
    """Validate a job mapping (YAML job file or protocol `submit` header) into `EditSettings`."""
    if not isinstance(data, dict):
        raise JobError("the job must be a mapping of settings")
    data = dict(data)
    for required in ("prompt", "source_prompt", "regions"):
        if required not in data:
            raise JobError(f"the job has no '{required}'")
    regions = data.pop("regions")
    if not isinstance(regions, list) or not regions:
        raise JobError("'regions' must be a non-empty list of {phrase, mask}")
    parsed_regions = [_build(RegionConfig, r, f"regions[{i}]") for i, r in enumerate(regions)]
    background = data.pop("background", None) or {}
    if not isinstance(background, dict) or set(background) - {"phrase"}:
        raise JobError("'background' takes only 'phrase'")
    nested = {
        "source": (SourceConfig, None),
        "control": (ControlConfig, None),
        "modulation": (ModulationConfig, {"self": "self_"}),
    }
    parts = {key: _build(cls, data.pop(key, None), key, renames) for key, (cls, renames) in nested.items()}
    settings = _build(EditSettings, {**data, "regions": [], **{"background_phrase": background.get("phrase")}}, "job")
    settings.regions = parsed_regions
    for key, value in parts.items():
        setattr(settings, key, value)
    _check_values(settings)
    return settings


def _check_values(s: EditSettings) -> None:
    if not s.prompt.strip():
        raise JobError("'prompt' is empty: write the target prompt that names every region")
    if s.control.type not in CONTROL_TYPES:
        raise JobError(f"control.type '{s.control.type}' is not one of {', '.join(CONTROL_TYPES)}")
    if s.control.type in ("frames", "depth", "pose") and not s.control.path:
        what = "a folder or video of control maps" if s.control.type == "frames" else "a local estimator folder"
        raise JobError(f"control.type '{s.control.type}' needs control.path: {what}")
    if not 1 <= s.steps <= 1000:
        raise JobError(f"'steps' must be between 1 and 1000, got {s.steps}")
    if s.guidance < 1.0:
        raise JobError(f"'guidance' must be at least 1.0, got {s.guidance}")
    src = s.source
    if src.width % 8 or src.height % 8 or min(src.width, src.height) < 64:
        raise JobError(f"working size {src.width}x{src.height} must be multiples of 8, at least 64")
    if src.stride < 1 or src.start < 0 or (src.count is not None and src.count < 1):
        raise JobError("source.start must be >= 0, source.stride >= 1 and source.count >= 1")
    if s.window is not None and s.window < 1:
        raise JobError("'window' must be at least 1 frame")
    if not 0.0 <= s.modulation.until <= 1.0:
        raise JobError("modulation.until is a share of the steps, between 0 and 1")
    phrases = [r.phrase for r in s.regions] + ([s.background_phrase] if s.background_phrase else [])
    if len({p.lower() for p in phrases}) != len(phrases):
        raise JobError("two regions share the same phrase: give each region its own words")
    for phrase in phrases:
        find_phrase(s.prompt, phrase)
