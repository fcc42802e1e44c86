"""Edit settings as plain dataclasses, parsed from the job file's mapping (or a protocol `submit`).

Only settings live here: paths are resolved and media read by `inputs.job`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

from videograin.engine.errors import JobError, excerpt

CONTROL_TYPES = ("auto", "canny", "frames", "depth", "pose", "none")

# ControlNet 1.1 checkpoints matching each control type; used when the job names none.
DEFAULT_CONTROLNETS = {
    "canny": "lllyasviel/control_v11p_sd15_canny",
    "frames": "lllyasviel/control_v11f1p_sd15_depth",
    "depth": "lllyasviel/control_v11f1p_sd15_depth",
    "pose": "lllyasviel/control_v11p_sd15_openpose",
}
DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"


# Region layout rules (`modulation.layout`):
# - reference: as the published code runs it: mattes resampled by nearest neighbour to every attention
#   resolution, overlapping regions allowed (a pair is positive when it shares any region), pixels in no
#   matte negative to everything unless the background has a phrase, no modulation at the finest level.
# - area: area vote per cell, one region per cell (the later region wins), the background always a region,
#   every level modulated.
LAYOUT_RULES = ("reference", "area")
# Size factors (`modulation.size`), per query of N cells per frame, F frames:
# - reference, as the published code computes them: the areas of the query's regions summed (a query in
#   two regions adds both, so a cell in both counts twice): cross = 1 − Σ areas within the query's frame
#   / N (below 0, reversing the pull, where the query's regions together cover more than its frame);
#   self = 1 − Σ areas over the clip / (N·F²).
# - clip: both 1 − (cells of the clip sharing any region with the query, each counted once) / (N·F).
SIZE_RULES = ("reference", "clip")
# Which classifier-free-guidance branch's self-attention is modulated (`modulation.self_branch`). The
# published code modulates only the unconditional one (it runs its controller on the first `heads` slices
# of the batch); this looks accidental, but it is what produced the paper's results.
SELF_BRANCHES = ("unconditional", "conditional", "both")
CONTROLNET_ATTENTION = ("frame", "full")
FLOW_METHODS = ("dis", "farneback", "raft", "frames", "none")
FLOW_PRESETS = ("ultrafast", "fast", "medium")  # OpenCV DIS presets, fastest first
FLOW_LEVELS = (1, 2, 4, 8)  # latent size divided by these: the UNet's four attention resolutions
# The negative prompt of the reference's configs, given to the ControlNet's unconditional branch.
REFERENCE_NEGATIVE_PROMPT = "ugly, blurry, low res, unrealistic, unaesthetic"
MAX_REGIONS = 62  # region sets are bit masks in an int64, with bit 0 for the background
TRACKERS = ("flow", "sam2", "sam3")  # how a region's keyframe mattes are tracked (inputs/mattes.py)
MAX_FACTOR = 1000.0  # upper bound of guidance, control scale and modulation weights: far past any useful value
MAX_INT = 2**63 - 1  # integer settings fit 64 bits (seeds, counts), as torch and msgpack take them


@dataclass
class ModulationConfig:
    """ST-Layout attention strengths, their timestep schedule and the layout rules behind them.

    λ = weight · size · ((t − 1) / 1000) ** decay for the first `steps` denoising steps (the reference's
    fixed 15), or the first `until` share of them when `until` is set; 0 afterwards, so the late steps
    refine freely. `size` is the per-query size factor of `size`.
    """

    enabled: bool = True
    cross: float = 1.0
    self_: float = 0.3
    steps: int = 15
    until: float | None = None
    decay: float = 5.0
    layout: str = "reference"
    size: str = "reference"
    self_branch: str = "unconditional"

    def modulated_steps(self, num_steps: int) -> int:
        return round(self.until * num_steps) if self.until is not None else min(self.steps, num_steps)

    def strength(self, weight: float, timestep: int, step_index: int, num_steps: int) -> float:
        """λ before the per-query size factor, for denoising step `step_index` at DDPM `timestep`."""
        if not self.enabled or step_index >= self.modulated_steps(num_steps):
            return 0.0
        return weight * (max(timestep - 1, 0) / 1000.0) ** self.decay


@dataclass
class FlowConfig:
    """Optical flow of the source clip (inputs/flow.py has the methods and the supplied-flow format),
    for FLATTEN-style trajectory attention and the warp-error metric.

    `levels`: the attention resolutions, as divisors of the latent size (1 = 64² for a 512² clip), whose
    full-frame self-attention output goes through attention along flow trajectories ([1] in every
    reference config, [1, 2] or [1, 2, 4] in some); [] or method `none` turns it off.
    """

    method: str = "dis"
    path: str | None = None  # `frames`: folder of supplied flow; `raft`: optional weights file
    preset: str = "medium"  # DIS preset
    levels: list[int] = field(default_factory=lambda: [1])

    @property
    def trajectories(self) -> bool:
        return self.method != "none" and bool(self.levels)

    def for_metrics(self) -> FlowConfig:
        """The flow the warp-error metric follows: this one, or DIS when the job asks for none."""
        return self if self.method != "none" else FlowConfig(method="dis")

    def check(self) -> None:
        """Raise one JobError naming the setting to fix."""
        for key, value, allowed in (("flow.method", self.method, FLOW_METHODS), ("flow.preset", self.preset, FLOW_PRESETS)):
            if value not in allowed:
                raise JobError(f"'{key}' is '{value}'; it must be one of {', '.join(allowed)}")
        if self.method == "frames" and not self.path:
            raise JobError("'flow.method' frames needs 'flow.path': a folder with forward/ and backward/ flow files")
        if any(level not in FLOW_LEVELS for level in self.levels):
            raise JobError(f"'flow.levels' are divisors of the latent size: 1, 2, 4 or 8, got {self.levels}")


@dataclass
class ControlConfig:
    # auto: the model family's own default: a canny ControlNet on SD-1.5; none on Wan (VACE already keeps
    # the clip outside the mattes, and a text-to-video checkpoint takes no control).
    type: str = "auto"
    scale: float = 1.0
    # `frames`: folder/video of maps; `depth` / `pose`: local folder of estimator weights.
    path: str | None = None
    low_threshold: int = 100
    high_threshold: int = 200

    def for_family(self, family: str) -> ControlConfig:
        """This control with `auto` made the family's default (family: "sd15" or "wan")."""
        if self.type != "auto":
            return self
        return dataclasses.replace(self, type="canny" if family == "sd15" else "none")


@dataclass
class SourceConfig:
    path: str = ""
    start: int = 0
    count: int | None = None
    stride: int = 1
    width: int = 512
    height: int = 512


@dataclass
class KeyframeConfig:
    frame: int  # index in the edited clip (after source.start / stride / count), from 0
    mask: str  # image file: the region's matte on that frame


@dataclass
class RegionConfig:
    # Words of the prompt; "" (or left out): a region with no words, which takes part only in
    # self-attention grouping (its features stay apart), as the reference's empty phrases do.
    phrase: str = ""
    mask: str | None = None  # folder or video; None when masks arrive inline (protocol) or are tracked
    # Instead of `mask`: mattes on a few frames, tracked through the clip by `track` (inputs/mattes.py).
    keyframes: list[KeyframeConfig] = field(default_factory=list)
    track: str = "flow"
    tracker_model: str | None = None  # sam2: hub id or local folder


@dataclass
class BackgroundConfig:
    phrase: str | None = None  # pixels in no matte; with a phrase the background is a region of its own


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
    flow: FlowConfig = field(default_factory=FlowConfig)
    # Each region's phrase encoded alone overwrites its tokens in the target prompt's embedding.
    phrase_embeddings: bool = True
    negative_prompt: str = REFERENCE_NEGATIVE_PROMPT
    controlnet_attention: str = "frame"  # frame: each frame on its own (reference); full: full-frame
    # Edit steps that take the up blocks' self-attention queries/keys and resnet features recorded while
    # inverting the same timestep (plug-and-play injection); 0 turns it off.
    inject_step: int = 0
    # Outside every region the latents are the source's inverted latents at the same timestep.
    blend: bool = True

    @property
    def controlnet_id(self) -> str | None:
        """The ControlNet an SD-1.5 model loads for this job (Wan models take none)."""
        kind = self.control.for_family("sd15").type
        if kind == "none":
            return None
        return self.controlnet or DEFAULT_CONTROLNETS[kind]

    @property
    def phrases(self) -> list[str]:
        """Every phrase of the job: the regions' that have one, then the background's when it has one."""
        background = [self.background_phrase] if self.background_phrase else []
        return [r.phrase for r in self.regions if r.phrase] + background

    def to_dict(self) -> dict[str, Any]:
        """The job file's mapping (its own keys, nested as in a job file)."""
        data = dataclasses.asdict(self)
        data["modulation"]["self"] = data["modulation"].pop("self_")
        data["background"] = {"phrase": data.pop("background_phrase")}
        return data


def region_name(region: RegionConfig, index: int) -> str:
    """How messages name region `index` (0-based): by its phrase, or by its number when it has none."""
    return f"region '{region.phrase}'" if region.phrase else f"region {index + 1} (no phrase)"


def find_phrase(prompt: str, phrase: str) -> tuple[int, int]:
    """Character span of `phrase` in `prompt` (case-insensitive, whole words), or a JobError."""
    if not phrase or not phrase.strip():
        raise JobError("an empty phrase names no words of the prompt")
    match = re.search(rf"(?<!\w){re.escape(phrase.strip())}(?!\w)", prompt, flags=re.IGNORECASE)
    if match is None:
        raise JobError(f"phrase {excerpt(phrase)} does not occur in the prompt {excerpt(prompt)}: each phrase must be "
                       "words of it")
    return match.span()


def _build(cls: type, data: Any, where: str, renames: dict[str, str] | None = None) -> Any:
    """Instantiate dataclass `cls` from a mapping at job-file key `where` ("" for the top level),
    rejecting unknown keys and wrong types by their job-file names."""
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise JobError(f"'{where}' must be a mapping of settings, got {type(data).__name__}")
    renames = renames or {}
    shown = {value: key for key, value in renames.items()}  # field name -> job-file key
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        name = renames.get(key, key)
        dotted = f"{where}.{key}" if where else str(key)
        if name not in fields:
            known = ", ".join(sorted(shown.get(f, f) for f in fields))
            raise JobError(f"unknown setting {excerpt(dotted)} (known here: {known})")
        kwargs[name] = _coerce(value, fields[name].type, dotted)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        missing = [shown.get(f.name, f.name) for f in fields.values() if f.name not in kwargs
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        raise JobError(f"'{where or 'the job'}' needs {', '.join(missing) or exc}") from None


def _coerce(value: Any, annotation: str, where: str) -> Any:
    """Check a value against its annotation (`from __future__` makes annotations strings)."""
    if value is None:
        if "None" in annotation:
            return None
        raise JobError(f"'{where}' must not be empty")
    if annotation.startswith("list["):
        if not isinstance(value, list):
            raise JobError(f"'{where}' must be a list, got {excerpt(value)}")
        return [_coerce(item, annotation[5:-1], f"{where}[{i}]") for i, item in enumerate(value)]
    for name, kind in (("bool", bool), ("int", int), ("float", float), ("str", str)):
        if annotation.startswith(name):
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                return float(value)
            if kind is not bool and isinstance(value, bool) or not isinstance(value, kind):
                raise JobError(f"'{where}' must be {name}, got {excerpt(value)}")
            if kind is float and not math.isfinite(value):  # NaN passes every comparison's range check
                raise JobError(f"'{where}' must be a finite number, got {value}")
            if kind is int and not -MAX_INT <= value <= MAX_INT:
                raise JobError(f"'{where}' must be an integer of at most 64 bits, got {excerpt(value)}")
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
    if len(regions) > MAX_REGIONS:  # before building them
        raise JobError(f"{len(regions)} regions: at most {MAX_REGIONS} are supported")
    parsed_regions = [_build(RegionConfig, r, f"regions[{i}]") for i, r in enumerate(regions)]
    for i, region in enumerate(parsed_regions):
        if not region.phrase.strip():
            region.phrase = ""  # blank: no words
        keys = [_build(KeyframeConfig, k, f"regions[{i}].keyframes[{j}]") for j, k in enumerate(region.keyframes)]
        region.keyframes = keys
    background = _build(BackgroundConfig, data.pop("background", None), "background")
    nested = {
        "source": (SourceConfig, None),
        "control": (ControlConfig, None),
        "modulation": (ModulationConfig, {"self": "self_"}),
        "flow": (FlowConfig, None),
    }
    parts = {key: _build(cls, data.pop(key, None), key, renames) for key, (cls, renames) in nested.items()}
    if "background_phrase" in data:  # the field's name inside, not a job-file key
        raise JobError("unknown setting 'background_phrase': write it as background: {phrase: ...}")
    settings = _build(EditSettings, {**data, "regions": []}, "", {"background": "background_phrase"})
    settings.regions = parsed_regions
    settings.background_phrase = background.phrase
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
    for key, value, low in (("guidance", s.guidance, 1.0), ("control.scale", s.control.scale, 0.0),
                            ("modulation.cross", s.modulation.cross, 0.0), ("modulation.self", s.modulation.self_, 0.0),
                            ("modulation.decay", s.modulation.decay, 0.0)):
        if not low <= value <= MAX_FACTOR:
            raise JobError(f"'{key}' must be at least {low} and at most {MAX_FACTOR:g}, got {value}")
    src = s.source
    if src.width % 8 or src.height % 8 or min(src.width, src.height) < 64:
        raise JobError(f"working size {src.width}x{src.height} must be multiples of 8, at least 64")
    if src.stride < 1 or src.start < 0 or (src.count is not None and src.count < 1):
        raise JobError("source.start must be >= 0, source.stride >= 1 and source.count >= 1")
    if s.window is not None and s.window < 2:
        # Passes share anchor frames, so a pass holds at least one frame of its own and one anchor.
        raise JobError(f"'window' must be at least 2 frames (passes share anchor frames), got {s.window}: "
                       "leave it out to fit it to the device")
    m = s.modulation
    if m.until is not None and not 0.0 <= m.until <= 1.0:
        raise JobError("'modulation.until' is a share of the steps, between 0 and 1 (or null: use modulation.steps)")
    if m.steps < 0:
        raise JobError("'modulation.steps' is a number of denoising steps, at least 0")
    for key, value, allowed in (
        ("modulation.layout", m.layout, LAYOUT_RULES),
        ("modulation.size", m.size, SIZE_RULES),
        ("modulation.self_branch", m.self_branch, SELF_BRANCHES),
        ("controlnet_attention", s.controlnet_attention, CONTROLNET_ATTENTION),
    ):
        if value not in allowed:
            raise JobError(f"'{key}' is '{value}'; it must be one of {', '.join(allowed)}")
    s.flow.check()
    if not 0 <= s.inject_step <= s.steps:
        raise JobError(f"'inject_step' must be between 0 and the {s.steps} steps, got {s.inject_step}")
    if len(s.regions) > MAX_REGIONS:
        raise JobError(f"{len(s.regions)} regions: at most {MAX_REGIONS} are supported")
    for k, region in enumerate(s.regions):
        _check_region(region, region_name(region, k))
    phrases = s.phrases
    if len({p.lower() for p in phrases}) != len(phrases):
        raise JobError("two regions share the same phrase: give each region its own words")
    for phrase in phrases:
        find_phrase(s.prompt, phrase)


def _check_region(region: RegionConfig, name: str) -> None:
    if region.mask and region.keyframes:
        raise JobError(f"{name} gives both mask and keyframes: give mask (mattes on every frame) or keyframes (tracked)")
    if region.track not in TRACKERS:
        raise JobError(f"{name}: track is '{region.track}'; it must be one of {', '.join(TRACKERS)}")
    if not region.keyframes and (region.track != "flow" or region.tracker_model):
        raise JobError(f"{name}: track and tracker_model apply to keyframes; give keyframes: [{{frame, mask}}, ...]")
    if region.tracker_model and region.track == "flow":
        raise JobError(f"{name}: tracker_model names SAM weights; track: flow needs none (or set track: sam2)")
    for key in region.keyframes:
        if key.frame < 0:
            raise JobError(f"{name}: keyframe frame {key.frame} is negative; frames of the edited clip count from 0")
