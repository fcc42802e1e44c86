"""`videograin check`: everything `edit` validates, in seconds and without model weights, plus what the
model will see: a summary, warnings that say what to do, and a picture of the region layout.

The layout is `RegionLayout`'s, the same object the edit builds; token positions come from the model's
tokenizer alone (never its weights); models are looked up where `from_pretrained` would find them.
A job that `edit` refuses is refused here with the same error: at once when its settings or pixels are
wrong (nothing is written), in `errors` when they are right but the edit could not run (missing weights,
phrases beyond the text encoder's tokens), with the summary and the picture still made.
"""

from __future__ import annotations

import argparse
import colorsys
import json
import os
import sys
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
import torch

from videograin.engine.config import FLOW_LEVELS, EditSettings, region_name
from videograin.engine.errors import JobError, ModelUnavailableError
from videograin.engine.estimate import LONG_EDIT_S, Estimate, estimate_edit
from videograin.engine.families import SD15, WAN, ModelFamily, family_warnings, model_family
from videograin.engine.inputs.flow import read_flow
from videograin.engine.inputs.job import EditJob, load_job
from videograin.engine.inputs.mattes import iou
from videograin.engine.inputs.media import VIDEO_SUFFIXES, encode_png, probe_video, write_atomic
from videograin.engine.method.families.sd15.pipeline import longest_pass
from videograin.engine.method.families.wan.grid import latent_frames, latent_of_frame, pad_clip, union_per_latent_frame
from videograin.engine.method.families.wan.pipeline import TEXT_LENGTH
from videograin.engine.method.layout import RegionLayout, label_map, level_size, phrase_token_indices, region_bit
from videograin.engine.method.passes import plan_passes
from videograin.engine.models import (
    EDIT_WEIGHTS_HINT,
    RANDOM_MODELS,
    _byte_level_tokenizer,
    _how_to_get,
    _piece_tokenizer,
    resolve_device,
)

VAE_SCALE = 8  # SD-1.x VAEs, and the random models' four-block VAE, shrink frames 8× into latents
ATTENTION_LEVELS = FLOW_LEVELS  # the UNet's attention resolutions: latent size ÷ 1, 2, 4, 8
FLICKER_IOU = 0.5  # neighbouring frames of a matte overlapping less than this are reported
SPLIT_PIECES = 3  # a phrase word read as this many tokens or more is reported
PICTURE_FRAMES = 4  # frames shown in layout.png, spread over the clip
CELL = 256  # width of one frame in layout.png
MARGIN = 120  # row labels
GAP = 4  # between frames and rows
CHECK_FILES = ("layout.png", "check.json")
PIPELINE_PARTS = {SD15: ("unet", "vae", "text_encoder", "tokenizer", "scheduler"),
                  WAN: ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")}
# Files a tokenizer folder needs: CLIP's BPE, or umT5's SentencePiece (either form).
TOKENIZER_FILES = {SD15: (("vocab.json", "merges.txt"),), WAN: (("spiece.model",), ("tokenizer.json",))}


@dataclass
class Finding:
    code: str
    message: str


@dataclass
class CheckReport:
    summary: dict[str, Any]
    warnings: list[Finding] = field(default_factory=list)
    errors: list[Finding] = field(default_factory=list)  # what would make `edit` refuse the job
    layout: np.ndarray | None = None  # RGB picture of the layout

    def as_dict(self) -> dict[str, Any]:
        """The report as the `check` reply and check.json carry it (layout.png aside)."""
        return {"ok": not self.errors, "summary": self.summary,
                "warnings": [vars(f) for f in self.warnings], "errors": [vars(f) for f in self.errors]}


# -- weights, found without loading them -------------------------------------------------------------

def locate_weights(name: str, what: str, index_file: str, parts: tuple[str, ...]) -> str:
    """Where `from_pretrained` would find these weights: "local folder", "Hugging Face cache" or
    "download" (not here; `edit` fetches them); ModelUnavailableError with the loader's message when
    `edit` would fail. `parts`: the sub-folders that must hold a config and weights ("." for the folder)."""
    local = Path(name).expanduser()
    if local.exists():
        missing = _missing(local, index_file, parts)
        if missing:
            raise ModelUnavailableError(f"{what} weights in '{local}' cannot be loaded: {missing}")
        return "local folder"
    snapshot = _cached_folder(name, index_file)
    if snapshot is not None and not _missing(snapshot, index_file, parts):
        return "Hugging Face cache"
    if os.environ.get("HF_HUB_OFFLINE") not in (None, "", "0"):
        reason = "HF_HUB_OFFLINE is set and it is not cached"
        raise ModelUnavailableError(_how_to_get(name, what, reason, EDIT_WEIGHTS_HINT))
    return "download"


def _missing(folder: Path, index_file: str, parts: tuple[str, ...]) -> str:
    """What a diffusers folder lacks, in words ("" when complete)."""
    if not (folder / index_file).is_file():
        return f"it has no {index_file} (a diffusers folder, as `hf download` writes it, has one)"
    for part in parts:
        sub = folder / part
        if not sub.is_dir():
            return f"it has no {part}/ folder"
        if part not in ("tokenizer", "scheduler") and not any(
            p.suffix in (".safetensors", ".bin") for p in sub.iterdir()
        ):
            return f"{part if part != '.' else 'it'} holds no weights (.safetensors or .bin)"
    return ""


def _cached_folder(name: str, file: str) -> Path | None:
    """The folder of the Hugging Face cache that holds `file` of repository `name`, if it is cached."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(name, file)
    except ValueError:  # not a hub id at all
        return None
    return Path(found).parent if isinstance(found, str) else None


_TOKENIZERS: dict[str, Any] = {}


def load_tokenizer(model: str, family: str = SD15):
    """The model's tokenizer alone (its `tokenizer/` folder, local or cached), or None when it is not on
    this machine. Kept once found: the engine answers `check` requests on its protocol loop."""
    if model in RANDOM_MODELS:
        return _piece_tokenizer() if family == WAN else _byte_level_tokenizer()
    if model not in _TOKENIZERS:
        from transformers import AutoTokenizer, CLIPTokenizer

        local = Path(model).expanduser()
        forms = TOKENIZER_FILES[family]
        folder = local / "tokenizer" if local.exists() else _cached_folder(model, f"tokenizer/{forms[0][0]}")
        # Without its files, transformers builds an empty tokenizer instead of failing: look first.
        if folder is None or not any(all((folder / name).is_file() for name in form) for form in forms):
            return None
        _TOKENIZERS[model] = (CLIPTokenizer if family == SD15 else AutoTokenizer).from_pretrained(str(folder))
    return _TOKENIZERS[model]


# -- the check -----------------------------------------------------------------------------------------

def run_check(path: str | Path, model: str | None = None, device: str = "auto") -> CheckReport:
    """Check a job file; JobError when its settings or pixels are wrong (as `edit` raises it)."""
    job = load_job(path)
    if model:
        job.settings.model = model
    return check_job(job, resolve_device(device))


def check_job(job: EditJob, device: torch.device, layout_frames: list[int] | None = None) -> CheckReport:
    """Everything `edit` would find wrong with a loaded job, and what the model will see of it.
    `layout_frames`: the clip frames layout.png shows (default: `picture_frames`); JobError when one is
    not a frame of the clip."""
    s = job.settings
    picks = picture_frames(len(job.frames)) if layout_frames is None else chosen_frames(layout_frames, len(job.frames))
    report = CheckReport({})
    frames = len(job.frames)
    family = model_family(s.model)
    for warning in family_warnings(s, family, frames):  # refusals raise JobError, as `edit` does
        report.warnings.append(Finding("model_family", warning))
    latent_w, latent_h = s.source.width // VAE_SCALE, s.source.height // VAE_SCALE
    report.summary["clip"] = {
        "frames": frames, "source_size": list(job.source_size), "working_size": [s.source.width, s.source.height],
        "latent_size": [latent_w, latent_h], "fps": _fps(s.source.path),
    }
    if family.name == WAN:
        report.summary["clip"]["latent_frames"] = latent_frames(pad_clip(np.arange(frames)).size)
    report.summary["model"] = _check_models(s, family, report)
    _check_inputs(job, report)
    tokens = _check_tokens(s, family, report)

    window = _window(s, frames, device) if family.name == SD15 else s.window or frames
    try:
        passes, anchors = plan_passes(frames, window)
    except ValueError as exc:  # the edit fails the same way, once its model is loaded
        report.errors.append(Finding("bad_job", f"'window' {window}: {exc}; or leave it null to fit the device"))
        passes, anchors = [list(range(frames))], 0
    report.summary["passes"] = {"window": window, "passes": len(passes), "anchors": anchors,
                                "frames_per_pass": [len(p) for p in passes],
                                "chosen": "job" if s.window else str(device)}
    if len(passes) > 1:
        report.warnings.append(Finding("clip_longer_than_pass", (
            f"the clip's {frames} frames need {len(passes)} passes of at most {window} frames: frames of different "
            f"passes see each other only through {anchors} shared anchor frames, so appearance may drift between "
            "passes. Use a larger 'window' where the device's memory allows, or edit a shorter clip."
        )))

    layout, sizes, layout_masks = _layout(job, family)
    maps = {size: layout.level(size[0] * size[1], torch.device("cpu")) for size in sizes}
    report.summary["resolutions"] = [{"size": [w, h], "modulated": maps[h, w].modulated} for h, w in sizes]
    report.summary["regions"] = [
        _region_summary(job, k, tokens.get(region.phrase) if region.phrase else [], maps, report, layout_masks[k],
                        family)
        for k, region in enumerate(s.regions)
    ]
    report.summary["background"] = {
        "phrase": s.background_phrase, "tokens": tokens.get(s.background_phrase),
        "is_region": layout.background_is_region, "area": _shares(~job.masks.any(0)),
    }
    report.summary["overlaps"] = _overlaps(job, report)
    m = s.modulation
    report.summary["modulation"] = {
        "enabled": m.enabled, "steps": m.modulated_steps(s.steps) if m.enabled else 0, "of": s.steps,
        "layout": m.layout, "size": m.size, "self_branch": m.self_branch,
    }
    report.summary["estimate"] = _estimate(s, passes, device).as_dict()
    report.layout = layout_picture(job, maps, picks, latent_of_frame if family.name == WAN else int)
    return report


def _layout(job: EditJob, family: ModelFamily) -> tuple[RegionLayout, list[tuple[int, int]], np.ndarray]:
    """The layout the edit builds, the (h, w) of its attention grids and the mattes at its frames: the
    UNet's four resolutions over clip frames (SD-1.5), or Wan's one token grid over latent frames, each the
    union of its frames' mattes (the clip padded to 4k + 1 as the edit pads it)."""
    s = job.settings
    background = bool(s.background_phrase)
    if family.name == WAN:
        masks = union_per_latent_frame(pad_clip(job.masks, axis=1))
        grid_w, grid_h = s.source.width // family.size_multiple, s.source.height // family.size_multiple
        layout = RegionLayout(masks, grid_w, grid_h, background, rules=s.modulation.layout, size=s.modulation.size,
                              levels=(1,), modulate_finest=True)
        return layout, [(grid_h, grid_w)], masks
    latent_w, latent_h = s.source.width // VAE_SCALE, s.source.height // VAE_SCALE
    layout = RegionLayout(job.masks, latent_w, latent_h, background, rules=s.modulation.layout, size=s.modulation.size)
    return layout, [level_size(latent_h, latent_w, level) for level in ATTENTION_LEVELS], job.masks


def _check_models(s: EditSettings, family: ModelFamily, report: CheckReport) -> dict[str, Any]:
    """Model and ControlNet where the loader would find them; random models need nothing."""
    controlnet = s.controlnet_id if family.name == SD15 else None
    kind = {"family": family.name, "vace": family.vace}
    if s.model in RANDOM_MODELS:
        return {"name": s.model, **kind, "weights": "random weights", "controlnet": None, "controlnet_weights": None}
    found = {"name": s.model, **kind, "weights": None, "controlnet": controlnet, "controlnet_weights": None}
    what = "Wan" if family.name == WAN else "Stable Diffusion"
    checks = [("weights", s.model, what, "model_index.json", PIPELINE_PARTS[family.name])]
    if controlnet is not None:
        checks.append(("controlnet_weights", s.controlnet_id, "ControlNet", "config.json", (".",)))
    for key, name, what, index_file, parts in checks:
        try:
            found[key] = locate_weights(name, what, index_file, parts)
        except ModelUnavailableError as exc:
            report.errors.append(Finding(exc.code, str(exc)))
            found[key] = "missing"
            continue
        if found[key] == "download":
            report.warnings.append(Finding("weights_download", (
                f"{what} weights '{name}' are not on this machine: `edit` downloads them from the Hugging Face "
                f"hub first (several GB), and fails without network. Fetch them now: `hf download {name}`."
            )))
    return found


def _check_inputs(job: EditJob, report: CheckReport) -> None:
    """Control estimators and flow as the edit would read them, without running them."""
    s = job.settings
    if s.control.type in ("depth", "pose"):
        folder = Path(s.control.path or "")
        configs = ("preprocessor_config.json", "processor_config.json")
        if not (folder / "config.json").is_file() or not any((folder / name).is_file() for name in configs):
            report.errors.append(Finding("model_unavailable", (
                f"the {s.control.type} estimator in '{folder}' cannot be loaded (no config.json and processor "
                "config there); give control.path a local folder with a transformers model and its processor config"
            )))
    if s.flow.method == "frames":
        indices, length = job.indices or list(range(len(job.frames))), job.source_length or len(job.frames)
        try:
            read_flow(Path(s.flow.path), indices, length, s.source.width, s.source.height)
        except JobError as exc:
            report.errors.append(Finding(exc.code, str(exc)))
    elif s.flow.method == "raft" and find_spec("torchvision") is None:
        report.errors.append(Finding("model_unavailable", (
            f"flow method 'raft' needs torchvision built for torch {torch.__version__.split('+')[0]} (pip install "
            "the torchvision release paired with it) and RAFT-Large weights; or use flow.method 'dis', which "
            "needs no weights"
        )))


def _check_tokens(s: EditSettings, family: ModelFamily, report: CheckReport) -> dict[str, list[int]]:
    """Each phrase's token positions in the prompt, as the edit computes them; {} without a tokenizer."""
    tokenizer = load_tokenizer(s.model, family.name)
    length = TEXT_LENGTH if family.name == WAN else None
    report.summary["model"]["tokenizer"] = (
        "byte-level (random model: every character is a token)" if s.model in RANDOM_MODELS
        else "found" if tokenizer is not None else "not found: token positions unknown"
    )
    if tokenizer is None:
        report.warnings.append(Finding("tokenizer_missing", (
            f"the tokenizer of '{s.model}' is not on this machine, so the phrases' token positions are unknown "
            "and a phrase the text encoder cannot read is not caught here; fetch the model and check again"
        )))
        return {}
    positions = {}
    for phrase in s.phrases:
        try:
            positions[phrase] = phrase_token_indices(tokenizer, s.prompt, phrase, length)
        except JobError as exc:
            report.errors.append(Finding(exc.code, str(exc)))
    phrases = list(positions)
    for i, first in enumerate(phrases):
        for second in phrases[i + 1:]:
            shared = sorted(set(positions[first]) & set(positions[second]))
            if shared:
                report.warnings.append(Finding("phrase_tokens_shared", (
                    f"phrases '{first}' and '{second}' share the prompt's tokens {_ranges(shared)}: each phrase "
                    "takes its first occurrence in the prompt, so both regions pull on the same words; give "
                    "each region words of its own"
                )))
    if s.model not in RANDOM_MODELS:
        for phrase in phrases:
            for word in phrase.split():
                pieces = tokenizer.tokenize(word)
                if len(pieces) >= SPLIT_PIECES:
                    shown = "|".join(p.removesuffix("</w>").removeprefix("▁") for p in pieces)
                    report.warnings.append(Finding("phrase_split", (
                        f"'{word}' of phrase '{phrase}' is read as {len(pieces)} pieces ({shown}): the text encoder "
                        "has no word for it, and its region's attention spreads over fragments; prefer common words"
                    )))
    return positions


def _region_summary(
    job: EditJob, k: int, tokens: list[int] | None, maps: dict, report: CheckReport, at_layout: np.ndarray,
    family: ModelFamily,
) -> dict[str, Any]:
    """Area, empty frames, flicker and, per attention resolution, the frames where the region has no cell
    (`at_layout`: the matte at the layout's frames: clip frames, or Wan's latent frames)."""
    phrase = job.settings.regions[k].phrase
    name = region_name(job.settings.regions[k], k)
    matte = job.masks[k]
    painted = matte.any((1, 2))
    painted_layout = at_layout.any((1, 2))
    unit = "latent frames" if family.name == WAN else "frames"
    empty = np.flatnonzero(~painted).tolist()
    if empty:
        report.warnings.append(Finding("region_empty_frames", (
            f"{name} is empty on frame{'s' if len(empty) > 1 else ''} {_ranges(empty)} of {len(painted)}: "
            "there its words attend nowhere and its pixels are not edited; paint it there, unless it is out of shot"
        )))
    cells, lost = [], {}
    for (h, w), level in maps.items():
        present = ((level.regions & region_bit(k)) != 0).reshape(len(at_layout), -1).any(1).numpy()
        if (painted_layout & ~present).any():
            lost[h, w] = np.flatnonzero(painted_layout & ~present).tolist()
        if present.any():
            cells.append(f"{w}x{h}")
    if lost:
        s = job.settings
        cell = max(max(s.source.width // w, s.source.height // h) for h, w in lost)
        where = ", ".join(f"{w}x{h} ({len(frames)} of {len(at_layout)} {unit})" for (h, w), frames in lost.items())
        report.warnings.append(Finding("region_vanishes", (
            f"{name} vanishes from the layout at {where}: its matte falls between the cells there, so "
            f"the attention there sees nothing of it (its words are pushed out of every pixel); widen it to at "
            f"least {cell} px at the working size, one cell of the coarsest of these resolutions"
        )))
    flicker = _flicker(matte)
    if flicker:
        pairs = ", ".join(f"{a}-{a + 1} ({iou:.2f})" for a, iou in flicker[:5])
        report.warnings.append(Finding("matte_flickers", (
            f"the matte of {name} jumps between neighbouring frames: overlap (IoU) below {FLICKER_IOU} at frames "
            f"{pairs}{' ...' if len(flicker) > 5 else ''}; the edit will flicker with it. Check those mattes "
            "(a fast or tiny object may do this honestly)"
        )))
    return {"phrase": phrase, "tokens": tokens, "area": _shares(matte), "empty_frames": empty, "cells": cells,
            "vanishes": {f"{w}x{h}": frames for (h, w), frames in lost.items()},
            "flicker": [[a, a + 1, round(iou, 3)] for a, iou in flicker]}


def _shares(masks: np.ndarray) -> dict[str, float]:
    """Min, mean and max over frames of the share of each frame's pixels in `masks` (F, H, W)."""
    share = masks.mean((1, 2))
    return {"min": float(share.min()), "mean": float(share.mean()), "max": float(share.max())}


def _flicker(matte: np.ndarray) -> list[tuple[int, float]]:
    """(frame, IoU with the next frame) where both are painted and overlap less than FLICKER_IOU."""
    low = []
    for a in range(len(matte) - 1):
        first, second = matte[a], matte[a + 1]
        if first.any() and second.any():  # an empty frame is reported as such
            overlap = iou(first, second)
            if overlap < FLICKER_IOU:
                low.append((a, overlap))
    return low


def _overlaps(job: EditJob, report: CheckReport) -> list[dict[str, Any]]:
    """Pixels two mattes share; under the reference rules they belong to both regions, under the area
    rules to the later region (`label_map`, the rule the layout applies)."""
    s = job.settings
    labels = label_map(job.masks)
    found = []
    for i in range(len(job.masks)):
        for j in range(i + 1, len(job.masks)):
            shared = job.masks[i] & job.masks[j]
            pixels = int(shared.sum())
            if not pixels:
                continue
            wins = int((shared & (labels == j + 1)).sum())
            found.append({"regions": [i, j], "pixels": pixels, "frames": int(shared.any((1, 2)).sum()),
                          "area_winner": j, "area_pixels": wins})
            wins_text = f"region {j + 1} wins over region {i + 1} on {wins} pixels"
            rule = (f"under the reference rules they belong to both; the area rules would resolve them: {wins_text}"
                    if s.modulation.layout == "reference" else f"{wins_text} (area rules: the later region wins)")
            report.warnings.append(Finding("regions_overlap", (
                f"{region_name(s.regions[i], i)} and {region_name(s.regions[j], j)} share {pixels} pixels on "
                f"{found[-1]['frames']} frames: {rule}. If they should not touch, fix the mattes"
            )))
    return found


def _ranges(numbers: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    spans: list[list[int]] = []
    for number in numbers:
        if spans and number == spans[-1][1] + 1:
            spans[-1][1] = number
        else:
            spans.append([number, number])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def _fps(path: str) -> float | None:
    """Frame rate of a video source; None for a folder of frames or frames sent inline, which have none."""
    if Path(path).suffix.lower() not in VIDEO_SUFFIXES:
        return None
    return float(probe_video(Path(path), "source").rate) or None


# -- the picture -------------------------------------------------------------------------------------

BACKGROUND_COLOUR = (110, 110, 110)


def region_colour(k: int) -> tuple[int, int, int]:
    """A bright colour per region, hues spread by the golden ratio so neighbours in job order differ."""
    r, g, b = colorsys.hsv_to_rgb((0.02 + k * 0.618034) % 1.0, 0.85, 1.0)
    return round(r * 255), round(g * 255), round(b * 255)


def _colour_sets(sets: np.ndarray, regions: int) -> np.ndarray:
    """Region sets (h, w) int64 as RGB: a region's colour, the mean of them where cells hold several,
    grey for the background region, black for cells in no region."""
    total = np.zeros((*sets.shape, 3), np.float32)
    count = np.zeros(sets.shape, np.float32)
    for k in range(regions):
        inside = (sets & region_bit(k)) != 0
        total[inside] += region_colour(k)
        count[inside] += 1
    image = total / np.maximum(count, 1)[..., None]
    image[(sets == 1)] = BACKGROUND_COLOUR  # the background's bit alone
    return image.round().astype(np.uint8)


def _text(image: np.ndarray, text: str, x: int, y: int, colour=(255, 255, 255), scale: float = 0.45) -> None:
    cv2.putText(image, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)


def picture_frames(frames: int) -> list[int]:
    """The clip frames layout.png shows: up to PICTURE_FRAMES, first and last included."""
    return sorted(set(np.linspace(0, frames - 1, min(PICTURE_FRAMES, frames)).round().astype(int).tolist()))


def chosen_frames(frames: list[int], length: int) -> list[int]:
    """The clip frames a caller asked layout.png to show, as its columns: in clip order, each once.
    JobError when one is not a frame of the clip, or there are none or too many."""
    if not 1 <= len(frames) <= PICTURE_FRAMES:
        raise JobError(f"'layout_frames' names {len(frames)} frames: give 1 to {PICTURE_FRAMES} (or none, for "
                       "frames spread over the clip)")
    outside = [f for f in frames if not 0 <= f < length]
    if outside:
        raise JobError(f"'layout_frames' {outside} are not frames of the clip: its frames are 0 to {length - 1}")
    return sorted(set(frames))


def layout_picture(job: EditJob, maps: dict, picks: list[int], layout_frame: Callable[[int], int] = int) -> np.ndarray:
    """Frames `picks` of the clip: the source with each region in its colour, and below it the region
    sets of every attention resolution (`maps`: (h, w) -> LayoutLevel), one cell per block.
    `layout_frame`: the layout's frame that holds a clip frame (Wan: its latent frame)."""
    s = job.settings
    width, height = job.source_size
    cell_w, cell_h = CELL, max(1, round(CELL * height / width))
    regions = len(s.regions)
    full_width = MARGIN + (cell_w + GAP) * len(picks)

    def row(label: str, note: str = "", rows: int = cell_h) -> np.ndarray:
        strip = np.zeros((rows + GAP, full_width, 3), np.uint8)
        _text(strip, label, 6, 18)
        _text(strip, note, 6, 36, (180, 180, 180), 0.4)
        return strip

    def place(strip: np.ndarray, column: int, image: np.ndarray) -> None:
        x = MARGIN + column * (cell_w + GAP)
        strip[GAP:, x:x + cell_w] = image

    header = row("", rows=18)
    source = row("source")
    for column, frame in enumerate(picks):
        _text(header, f"frame {frame}", MARGIN + column * (cell_w + GAP) + 4, 18)
        image = cv2.resize(job.frames[frame], (cell_w, cell_h), interpolation=cv2.INTER_AREA).astype(np.float32)
        mattes = [cv2.resize(m.astype(np.uint8), (cell_w, cell_h), interpolation=cv2.INTER_NEAREST)
                  for m in job.masks[:, frame]]
        for k, matte in enumerate(mattes):
            image[matte > 0] = 0.45 * image[matte > 0] + 0.55 * np.array(region_colour(k), np.float32)
        image = image.round().astype(np.uint8)
        for k, matte in enumerate(mattes):  # outlines on top, so overlapping mattes both show
            contours, _ = cv2.findContours(matte, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(image, contours, -1, region_colour(k), 1)
        place(source, column, image)
    rows = [header, source]
    for (h, w), level in maps.items():
        strip = row(f"{w}x{h}", "" if level.modulated else "not modulated")
        sets = level.regions.reshape(-1, h, w).numpy()
        for column, frame in enumerate(picks):
            panel = cv2.resize(_colour_sets(sets[layout_frame(frame)], regions), (cell_w, cell_h),
                               interpolation=cv2.INTER_NEAREST)
            if cell_w // w >= 8:  # cells large enough to see: outline them
                panel[:, (np.arange(w) * cell_w) // w] //= 2
                panel[(np.arange(h) * cell_h) // h, :] //= 2
            place(strip, column, panel)
        rows.append(strip)
    rows.append(_legend(s, full_width, [level.regions for level in maps.values()]))
    return np.concatenate(rows, 0)


def _legend(s: EditSettings, width: int, sets: list[torch.Tensor]) -> np.ndarray:
    """Each region's colour and phrase, then the colours the label maps use besides."""
    entries = [(region_colour(k), f"{k + 1} {r.phrase or '(no phrase)'}") for k, r in enumerate(s.regions)]
    if any(level.eq(1).any() for level in sets):
        entries.append((BACKGROUND_COLOUR, f"background: {s.background_phrase or 'no phrase'}"))
    if any(level.eq(0).any() for level in sets):
        entries.append(((0, 0, 0), "no region"))
    # A set with more than one region bit (bit 0, the background, is never shared).
    if any(((level & (level - 1)) != 0).any() for level in sets):
        entries.append(((200, 200, 200), "mixed colour: a cell in several regions"))
    columns = 3
    legend = np.full((6 + 24 * -(-len(entries) // columns), width, 3), 24, np.uint8)
    for index, (colour, text) in enumerate(entries):
        x, y = 6 + (index % columns) * (width // columns), 6 + (index // columns) * 24
        cv2.rectangle(legend, (x, y), (x + 14, y + 14), colour, -1)
        cv2.rectangle(legend, (x, y), (x + 14, y + 14), (200, 200, 200), 1)
        _text(legend, text[:40], x + 20, y + 12)
    return legend


# -- command line --------------------------------------------------------------------------------------

def format_report(report: CheckReport) -> str:
    """The summary as a table for the terminal."""
    summary = report.summary
    clip, model, passes = summary["clip"], summary["model"], summary["passes"]
    fps = f"{clip['fps']:.3g} fps" if clip["fps"] else "fps unknown (frames folder)"
    lines = [
        f"clip        {clip['frames']} frames, {_size(clip['source_size'])} source, edited at "
        f"{_size(clip['working_size'])} (latent {_size(clip['latent_size'])}), {fps}",
        f"model       {model['name']}: {model['weights']}",
    ]
    if model["controlnet"]:
        lines.append(f"controlnet  {model['controlnet']}: {model['controlnet_weights']}")
    lines.append(f"tokenizer   {model['tokenizer']}")
    window = "from the job" if passes["chosen"] == "job" else f"fits {passes['chosen']}"
    anchors = f", {passes['anchors']} anchors in each" if passes["anchors"] else ""
    lines.append(f"passes      {passes['passes']} of {'/'.join(map(str, passes['frames_per_pass']))} frames "
                 f"(window {passes['window']}, {window}){anchors}")
    levels = [f"{_size(r['size'])}{'' if r['modulated'] else ' (not modulated)'}" for r in summary["resolutions"]]
    lines.append(f"attention   {', '.join(levels)}")
    modulation = summary["modulation"]
    steps = f"steps 1-{modulation['steps']} of {modulation['of']}" if modulation["steps"] else "no step"
    lines.append(f"modulated   {steps} ({modulation['layout']} layout, {modulation['size']} size factors)")
    lines.append("regions     #  phrase            tokens         area % min/mean/max  cells at")
    for k, region in enumerate(summary["regions"]):
        area = region["area"]
        phrase = region["phrase"] or "(no phrase)"
        lines.append(f"            {k + 1:<2} {phrase[:17]:<17} {_tokens(region['tokens']):<14} "
                     f"{100 * area['min']:5.1f} {100 * area['mean']:5.1f} {100 * area['max']:5.1f}   "
                     f"{_cells(region, clip['frames'])}")
    background = summary["background"]
    what = "a region of its own" if background["is_region"] else "no region: kept from the source when blend is on"
    lines.append(f"background  {background['phrase'] or 'no phrase'} ({_tokens(background['tokens'])}): {what}; "
                 f"{100 * background['area']['mean']:.1f} % of a frame on average")
    for overlap in summary["overlaps"]:
        i, j = overlap["regions"]
        lines.append(f"overlap     regions {i + 1} and {j + 1} share {overlap['pixels']} px on {overlap['frames']} "
                     f"frames; area rules: region {j + 1} wins over region {i + 1} on {overlap['area_pixels']} px")
    lines.append(f"estimate    {summary['estimate']['text']}")
    return "\n".join(lines)


def _cells(region: dict[str, Any], frames: int) -> str:
    """The resolutions where a region has cells on every frame it is painted on, on some of them only, and
    on none, each resolution named once: '16x16, 8x8; 4x4 on 5 of 8 frames; none at 2x2'."""
    lost, painted = region["vanishes"], frames - len(region["empty_frames"])
    parts = [", ".join(size for size in region["cells"] if size not in lost)]
    parts += [f"{size} on {painted - len(lost[size])} of {painted} frames" for size in region["cells"] if size in lost]
    nowhere = [size for size in lost if size not in region["cells"]]
    parts.append(f"none at {', '.join(nowhere)}" if nowhere else "")
    return "; ".join(part for part in parts if part) or "none"


def _size(size: list[int]) -> str:
    return f"{size[0]}x{size[1]}"


def _tokens(tokens: list[int] | None) -> str:
    if tokens is None:
        return "tokens ?"
    return f"tokens {_ranges(tokens)}" if tokens else "no tokens"


def check_out_folder(out: Path) -> None:
    """`check --out`: a new or empty folder, or one holding a previous check's files (which it replaces)."""
    if out.exists() and (not out.is_dir() or any(p.name not in CHECK_FILES for p in out.iterdir())):
        raise JobError(f"'{out}' holds other files: give check a new folder, or one it wrote before")


def write_check(out: Path, report: CheckReport) -> None:
    check_out_folder(out)
    write_atomic(out / "layout.png", encode_png(report.layout))
    write_atomic(out / "check.json", json.dumps(report.as_dict(), indent=2).encode())


def _latent_pixels(s: EditSettings) -> int:
    return (s.source.width // VAE_SCALE) * (s.source.height // VAE_SCALE)


def _window(s: EditSettings, frames: int, device: torch.device) -> int:
    """Frames per pass: the job's, or the longest the device holds, as the pipeline picks it."""
    return s.window or longest_pass(frames, _latent_pixels(s), device)


def _estimate(s: EditSettings, passes: list[list[int]], device: torch.device) -> Estimate:
    return estimate_edit(s.model, device, [len(p) for p in passes], _latent_pixels(s),
                         s.source.width * s.source.height, s.steps)


def announce_estimate(job: EditJob, device_name: str) -> None:
    """Before a long edit, say how long it will take (the CLI's `edit`)."""
    device = resolve_device(device_name)
    passes, _ = plan_passes(len(job.frames), _window(job.settings, len(job.frames), device))
    estimate = _estimate(job.settings, passes, device)
    if estimate.seconds is not None and estimate.seconds > LONG_EDIT_S:
        print(f"this edit takes {estimate.line()}; `videograin check` validates the job in seconds", flush=True)


def cmd_check(args: argparse.Namespace) -> int:
    if args.out:
        check_out_folder(Path(args.out))
    report = run_check(args.job, args.model, args.device)
    print(format_report(report))
    for finding in report.warnings:
        print(f"warning [{finding.code}]: {finding.message}")
    for finding in report.errors:
        print(f"error [{finding.code}]: {finding.message}", file=sys.stderr)
    if args.out:
        write_check(Path(args.out), report)
        print(f"wrote {args.out}/layout.png, {args.out}/check.json")
    if report.errors:
        count = len(report.errors)
        print(f"{count} error{'s' if count > 1 else ''}: `edit` would refuse this job", file=sys.stderr)
        return 2
    return 0
