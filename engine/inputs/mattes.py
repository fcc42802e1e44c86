"""Keyframe mattes tracked through a clip: a region marked on a few frames gets a matte on every frame.

A region gives keyframes, each a frame index in the clip and a matte (white = the region); a tracker
fills in every other frame. One interface, `track_mattes(frames, regions, ...)`, three trackers:

- `flow` (default, no weights): the keyframe's matte carried frame by frame along optical flow
  (`inputs/flow.py`, DIS), forward from each keyframe and backward from the next, and each carried matte
  refined against the frame's colours with a graph cut (`cv2.grabCut`, initialised from the carried
  matte: its core is sure, a band around its edge is open). Refinement is what keeps the matte: chaining
  flow alone erodes a matte by a few % per frame, and the pixels a moving region uncovers have no flow
  to carry them. Between two keyframes the two carried mattes are blended by their signed distance
  fields, weighted by nearness, so the matte morphs from one keyframe to the next. Small islands and
  holes are then removed. Flow and cut run at a reduced working size (`TrackSettings.size`), which is
  what makes it fast; the result is scaled back by its signed distance, so its edge stays smooth.
  Keyframes come back exactly as painted. Weak spot: a region whose colours match its surroundings
  (grey texture on grey texture); a cut that would halve or double the matte is then refused and the
  carried matte kept, which drifts as flow alone does (the crossing blobs in grey: IoU 0.57 for the blob
  behind, from one keyframe, where the coloured clip gives 1.0). A region fully hidden for a while is lost from a keyframe before it: give
  one after it too.
- `sam2`: transformers' SAM 2 video model (`Sam2VideoModel`, a hub id or local folder), prompted with
  the keyframe mattes as mask prompts, propagated forward and backward from them on the given device.
  The frames and mask prompts are prepared here as `Sam2VideoProcessor` prepares them (resize to the
  model's square input, ImageNet normalisation; masks resized with antialiasing, ≥ 0.5): transformers'
  processor classes need torchvision, which this project does not install (PyPI's torchvision wheels are
  CUDA builds that do not load beside the CPU torch build used here), and the model itself needs only
  torch.
- `sam3`: not available; `SAM3_UNSUPPORTED` says exactly why.

Regions stay exclusive: where tracked mattes overlap, the region listed later wins (`layout.label_map`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from videograin.engine.config import TRACKERS, FlowConfig
from videograin.engine.errors import CancelledError, JobError, ModelUnavailableError
from videograin.engine.inputs.flow import clip_flow, warp
from videograin.engine.progress import ProgressCallback, ProgressEvent, no_progress

DEFAULT_SAM2 = "facebook/sam2.1-hiera-large"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# A refined matte's area must stay within these shares of the carried one's, else the carried one is kept.
REFINE_AREA = (0.6, 1.6)


@dataclass
class Keyframe:
    frame: int  # index in the clip being tracked (the edited frames of a job)
    matte: np.ndarray  # (H, W) bool, the clip's size


@dataclass
class RegionTrack:
    """One region to track: its keyframes, and which tracker follows it."""

    keyframes: list[Keyframe]
    tracker: str = "flow"
    model: str | None = None  # sam2: hub id or local folder (default DEFAULT_SAM2)
    name: str = "region"  # for messages: the region's phrase


@dataclass
class TrackSettings:
    """How the `flow` tracker works. Measured by `videograin bench --track` (two regions, 24 frames of
    crossing blobs, two shared cores): the defaults track 720p at 14 frames/s from one keyframe and 11
    from keyframes at both ends (1080p: 11 and 8) with mean IoU 0.98–0.99; working at 640 with DIS
    `medium` and a 320-pixel cut, 2 iterations, gains 0.5–0.8 IoU points at a fifth of the speed."""

    size: int = 360  # long side of the working size for flow and refinement (never above the clip's)
    preset: str = "ultrafast"  # DIS preset
    band: float = 0.02  # width of the open band around a carried matte's edge, as a share of the long side
    iterations: int = 1  # grabCut iterations per frame
    cut_size: int = 128  # long side, in pixels, of the box around a matte that grabCut sees
    island: float = 0.02  # components (and holes) smaller than this share of the matte's area are removed
    refine: bool = True


def track_mattes(
    frames: np.ndarray,
    regions: list[RegionTrack],
    device: str = "cpu",
    progress: ProgressCallback = no_progress,
    cancelled: Callable[[], bool] = lambda: False,
    settings: TrackSettings | None = None,
) -> np.ndarray:
    """Mattes on every frame for every region: (K, F, H, W) bool, exclusive (the later region wins).

    frames: (F, H, W, 3) RGB uint8. Progress events have phase "track"; `step` counts frames tracked
    so far summed over regions (and, for `flow`, over both directions), out of `total`. `cancelled` is
    polled between frames; a cancel raises CancelledError.
    """
    check_keyframes(frames, regions)
    settings = settings or TrackSettings()
    units = [_units(region, len(frames)) for region in regions]
    done = [0]

    def advance() -> None:
        if cancelled():
            raise CancelledError("tracking was cancelled")
        done[0] += 1
        progress(ProgressEvent("track", done[0], sum(units)))

    progress(ProgressEvent("track", 0, sum(units)))
    mattes = np.zeros((len(regions), *frames.shape[:3]), bool)
    flow_regions = [k for k, r in enumerate(regions) if r.tracker == "flow"]
    if flow_regions:
        mattes[flow_regions] = track_flow(frames, [regions[k].keyframes for k in flow_regions], settings, advance)
    for model in dict.fromkeys(r.model or DEFAULT_SAM2 for r in regions if r.tracker == "sam2"):
        chosen = [k for k, r in enumerate(regions) if r.tracker == "sam2" and (r.model or DEFAULT_SAM2) == model]
        mattes[chosen] = track_sam2(frames, [regions[k].keyframes for k in chosen], model, device, advance)
    return exclusive(mattes)


def _units(region: RegionTrack, count: int) -> int:
    return 2 * count if region.tracker == "flow" else count


def check_keyframes(frames: np.ndarray, regions: list[RegionTrack]) -> None:
    """One JobError that says what to fix: tracker, keyframe frame, size or emptiness."""
    if frames.ndim != 4 or frames.shape[3] != 3 or frames.dtype != np.uint8 or not len(frames):
        raise JobError("tracking needs RGB uint8 frames (F, H, W, 3)")
    count, height, width = frames.shape[:3]
    for region in regions:
        name = f"region '{region.name}'"
        if region.tracker not in TRACKERS:
            raise JobError(f"{name}: track is '{region.tracker}'; it must be one of {', '.join(TRACKERS)}")
        if region.tracker == "sam3":
            raise ModelUnavailableError(SAM3_UNSUPPORTED)
        if not region.keyframes:
            raise JobError(f"{name}: tracking needs at least one keyframe (frame + matte)")
        seen = set()
        for key in region.keyframes:
            if not 0 <= key.frame < count:
                raise JobError(
                    f"{name}: keyframe frame {key.frame} is outside the clip: frames are numbered 0 to {count - 1} "
                    "in the edited clip (after source.start / stride / count)"
                )
            if key.frame in seen:
                raise JobError(f"{name}: two keyframes on frame {key.frame}; give each frame one matte")
            seen.add(key.frame)
            if key.matte.shape != (height, width):
                raise JobError(
                    f"{name}: the keyframe matte of frame {key.frame} is {key.matte.shape[1]}x{key.matte.shape[0]}; "
                    f"it must be the source's size, {width}x{height}"
                )
            if not key.matte.any():
                raise JobError(f"{name}: the keyframe matte of frame {key.frame} is empty; paint the region white")


def exclusive(mattes: np.ndarray) -> np.ndarray:
    """(K, F, H, W) bool with each pixel in at most one matte: the later region wins (layout.label_map)."""
    covered = np.zeros(mattes.shape[1:], bool)
    out = np.zeros_like(mattes)
    for k in range(len(mattes) - 1, -1, -1):
        out[k] = mattes[k] & ~covered
        covered |= mattes[k]
    return out


# --- flow ----------------------------------------------------------------------------------------------


def track_flow(
    frames: np.ndarray, keyframes: list[list[Keyframe]], settings: TrackSettings, advance: Callable[[], None]
) -> np.ndarray:
    """(K, F, H, W) bool: each region's keyframes carried along DIS flow, refined, blended, cleaned."""
    count, height, width = frames.shape[:3]
    scale = min(1.0, settings.size / max(height, width))
    small_w, small_h = max(8, round(width * scale)), max(8, round(height * scale))
    small = np.stack([cv2.resize(f, (small_w, small_h), interpolation=cv2.INTER_AREA) for f in frames])
    flow = clip_flow(small, FlowConfig(method="dis", preset=settings.preset))
    band = max(2, round(settings.band * max(small_w, small_h)))
    out = np.zeros((len(keyframes), count, height, width), bool)
    for k, keys in enumerate(keyframes):
        keys = sorted(keys, key=lambda key: key.frame)
        starts = {key.frame: _shrink(key.matte, small_w, small_h) for key in keys}
        # Forward: frame t comes from frame t - 1 (backward flow t → t - 1); backward: from t + 1.
        ahead = _carry(small, starts, flow.backward, flow.occluded_backward, range(count), -1, settings, band, advance)
        behind = _carry(
            small, starts, flow.forward, flow.occluded_forward, range(count - 1, -1, -1), +1, settings, band, advance
        )
        frames_with_keys = sorted(starts)
        reach = 0.1 * max(small_w, small_h)
        for t in range(count):
            before = max((f for f in frames_with_keys if f <= t), default=None)
            after = min((f for f in frames_with_keys if f >= t), default=None)
            # Nearer keyframe weighs more; a chain that lost the region (empty) has nothing to say.
            w = 1.0 if before is None else 0.0 if after is None or after == before else (t - before) / (after - before)
            if w < 1 and not ahead[t].any():
                w = 1.0
            if w > 0 and not behind[t].any():
                w = 0.0
            distance = sum(
                weight * signed_distance(chain[t], reach) for weight, chain in ((1 - w, ahead), (w, behind)) if weight
            )
            shape = distance > 0
            cleaned = _clean(shape, settings.island)
            if cleaned is not shape:
                distance = signed_distance(cleaned, reach)
            out[k, t] = _grow(distance, width, height)
        for key in keys:  # a keyframe is what the user painted
            out[k, key.frame] = key.matte
    return out


def _carry(
    frames: np.ndarray,
    starts: dict[int, np.ndarray],
    flows: np.ndarray,
    occluded: np.ndarray,
    order: range,
    step: int,
    settings: TrackSettings,
    band: int,
    advance: Callable[[], None],
) -> dict[int, np.ndarray]:
    """The mattes carried in `order` from the latest keyframe passed (none before the first).

    `flows[i]` / `occluded[i]` relate frames i and i + 1; frame t's matte comes from frame t + step,
    pulled by flows[min(t, t + step)] (the flow from frame t to frame t + step)."""
    carried: dict[int, np.ndarray] = {}
    previous = None
    for t in order:
        if t in starts:
            previous = starts[t]
        elif previous is not None:
            pair = min(t, t + step)
            pulled = warp(previous.astype(np.float32), flows[pair]) >= 0.5
            if settings.refine and pulled.any():
                refined = _refine(frames[t], pulled, occluded[pair], band, settings.iterations, settings.cut_size)
                # The cut moves an edge; when it halves or doubles the matte, the colours cannot tell the
                # region from its surroundings, and the carried matte is the better guess.
                if REFINE_AREA[0] <= np.count_nonzero(refined) / np.count_nonzero(pulled) <= REFINE_AREA[1]:
                    pulled = refined
            previous = _clean(pulled, settings.island)
        if previous is not None:
            carried[t] = previous
        advance()
    return carried


def _refine(
    image: np.ndarray, matte: np.ndarray, occluded: np.ndarray, band: int, iterations: int, cut_size: int
) -> np.ndarray:
    """Graph-cut the band around a carried matte's edge against the frame's colours.

    The matte's core (beyond `band` inside) is sure foreground, everything beyond `band` outside sure
    background; pixels without a consistent flow match were carried from nowhere, so they are never sure
    and stay open up to 4 bands out (a region uncovers more of itself in a frame than one band holds).
    The cut runs on the matte's box scaled to at most `cut_size` pixels on its long side: grabCut's cost
    grows with the pixels it sees, and the band only needs the edge to within a pixel or two."""
    if not matte.any():
        return matte
    ys, xs = np.nonzero(matte)
    pad = 5 * band
    y0, y1 = max(0, ys.min() - pad), min(matte.shape[0], ys.max() + pad + 1)
    x0, x1 = max(0, xs.min() - pad), min(matte.shape[1], xs.max() + pad + 1)
    inside = matte[y0:y1, x0:x1].astype(np.uint8)
    outward = cv2.distanceTransform(1 - inside, cv2.DIST_L2, 3)
    inward = cv2.distanceTransform(inside, cv2.DIST_L2, 3)
    unmatched = occluded[y0:y1, x0:x1].astype(np.uint8)
    near_unmatched = cv2.distanceTransform(1 - unmatched, cv2.DIST_L2, 3) <= band if unmatched.any() else unmatched > 0
    core = (inward > band) & ~near_unmatched
    open_ = ((outward <= band) | ((outward <= 4 * band) & near_unmatched)) & ~core
    if core.all() or not open_.any():
        return matte
    labels = np.full(inside.shape, cv2.GC_BGD, np.uint8)
    labels[open_] = cv2.GC_PR_BGD
    labels[open_ & (inside > 0)] = cv2.GC_PR_FGD
    labels[core] = cv2.GC_FGD
    crop = image[y0:y1, x0:x1]
    scale = min(1.0, cut_size / max(crop.shape[:2]))
    if scale < 1:
        size = (max(2, round(crop.shape[1] * scale)), max(2, round(crop.shape[0] * scale)))
        crop = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
        labels = cv2.resize(labels, size, interpolation=cv2.INTER_NEAREST)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.grabCut(np.ascontiguousarray(crop), labels, None, bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK)
    chosen = ((labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)).astype(np.float32)
    if scale < 1:
        chosen = cv2.resize(chosen, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
    out = np.zeros_like(matte)
    out[y0:y1, x0:x1] = core | (open_ & (chosen >= 0.5))
    return out


def signed_distance(matte: np.ndarray, limit: float) -> np.ndarray:
    """Pixels to the matte's edge, positive inside, negative outside, clipped to ±limit (float32): shapes
    blend by their nearby edges, not by how far away the rest of the frame is."""
    inside = matte.astype(np.uint8)
    distance = cv2.distanceTransform(inside, cv2.DIST_L2, 3) - cv2.distanceTransform(1 - inside, cv2.DIST_L2, 3)
    return np.clip(distance, -limit, limit).astype(np.float32)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean arrays (1.0 when both are empty)."""
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 1.0


def _shrink(matte: np.ndarray, width: int, height: int) -> np.ndarray:
    return cv2.resize(matte.astype(np.float32), (width, height), interpolation=cv2.INTER_AREA) >= 0.5


def _grow(distance: np.ndarray, width: int, height: int) -> np.ndarray:
    """A matte at (width, height) from a signed distance field at the working size."""
    if distance.shape == (height, width):
        return distance > 0
    return cv2.resize(distance, (width, height), interpolation=cv2.INTER_LINEAR) > 0


def _clean(matte: np.ndarray, share: float) -> np.ndarray:
    """Drop components, and fill holes, smaller than `share` of the matte's area (a hole touching the
    frame's border is background seen past the region, not a hole); `matte` itself when nothing changes."""
    area = np.count_nonzero(matte)
    if not area:
        return matte
    limit = max(4, share * area)
    out = matte
    for value in (True, False):  # islands of the matte, then holes (islands of the rest)
        _, labels, stats, _ = cv2.connectedComponentsWithStats((out == value).astype(np.uint8), connectivity=8)
        x, y, w, h, size = stats.T
        flip = size < limit
        if not value:
            flip &= (x > 0) & (y > 0) & (x + w < out.shape[1]) & (y + h < out.shape[0])
        flip[0] = False  # label 0 is the other kind
        if flip.any():
            out = np.where(flip[labels], not value, out)
    return out


# --- SAM 2 ---------------------------------------------------------------------------------------------


SAM2_HINT = "set the region's tracker_model to that folder (or keep the hub id: it then loads from the cache)"
SAM3_UNSUPPORTED = (
    "track: sam3 is not available. In transformers 5.24, text-prompted tracking (a noun in, tracked "
    "instances out) is Sam3VideoModel with Sam3VideoProcessor, and both need torchvision (the detector's "
    "roi_align, NMS and masks_to_boxes), which this engine does not install: PyPI's torchvision wheels are "
    "CUDA builds that do not load beside the CPU torch build. Sam3TrackerVideoModel needs no torchvision "
    "but takes points, boxes or masks, not text. Use track: sam2 (keyframe mattes as mask prompts) or flow"
)


def track_sam2(
    frames: np.ndarray,
    keyframes: list[list[Keyframe]],
    model_name: str,
    device: str,
    advance: Callable[[], None],
) -> np.ndarray:
    """(K, F, H, W) bool from transformers' SAM 2 video model: each region in a session of its own, its
    keyframe mattes as mask prompts, propagated forward from its first keyframe, then backward."""
    import torch
    import torch.nn.functional as F
    from transformers import Sam2VideoModel
    from transformers.models.sam2_video.modeling_sam2_video import Sam2VideoInferenceSession

    from videograin.engine.models import from_pretrained, resolve_device

    target = resolve_device(device)
    if target.type == "cuda" and not torch.cuda.is_available():
        raise JobError(f"device '{device}' is not available on this machine: use cpu or auto")
    # bfloat16 on a GPU, as SAM 2 is run there; float32 on the CPU, where half precision is slow.
    dtype = torch.bfloat16 if target.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    model = from_pretrained(Sam2VideoModel, model_name, "SAM 2", hint=SAM2_HINT).to(target, dtype).eval()
    count, height, width = frames.shape[:3]
    side = model.config.image_size
    side = side[0] if isinstance(side, (list, tuple)) else side
    pixels = _sam2_pixels(frames, side)
    out = np.zeros((len(keyframes), count, height, width), bool)
    with torch.inference_mode():
        for k, keys in enumerate(keyframes):
            keys = sorted(keys, key=lambda key: key.frame)
            session = Sam2VideoInferenceSession(
                video=pixels, video_height=height, video_width=width, inference_device=target,
                inference_state_device=target, video_storage_device="cpu", dtype=dtype,
            )
            obj = session.obj_id_to_idx(1)
            for key in keys:
                prompt = torch.from_numpy(key.matte).float()[None, None]
                prompt = F.interpolate(prompt, (side, side), mode="bilinear", antialias=True, align_corners=False)
                session.add_mask_inputs(obj, key.frame, (prompt >= 0.5).float())
                session.obj_with_new_inputs = [1]
                model(inference_session=session, frame_idx=key.frame)
            first, seen = keys[0].frame, set()
            for reverse in (False, True):
                for output in model.propagate_in_video_iterator(session, start_frame_idx=first, reverse=reverse):
                    if output.frame_idx in seen:
                        continue
                    seen.add(output.frame_idx)
                    logits = F.interpolate(output.pred_masks[:1].float(), (height, width), mode="bilinear", align_corners=False)
                    out[k, output.frame_idx] = (logits[0, 0] > 0).cpu().numpy()
                    advance()
            for key in keys:  # a keyframe is what the user painted
                out[k, key.frame] = key.matte
    return out


def _sam2_pixels(frames: np.ndarray, side: int):
    """Frames as SAM 2 reads them: (F, 3, side, side) float32, resized with antialiasing, ImageNet-normalised."""
    import torch
    import torch.nn.functional as F

    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    chunks = []
    for start in range(0, len(frames), 16):  # a few frames at a time: full-size float copies are large
        batch = torch.from_numpy(frames[start : start + 16]).permute(0, 3, 1, 2).float().div(255)
        batch = F.interpolate(batch, (side, side), mode="bilinear", antialias=True, align_corners=False)
        chunks.append((batch - mean) / std)
    return torch.cat(chunks)


# --- a synthetic clip with known mattes (tests and `videograin bench --track`) ---------------------------


def _texture(height: int, width: int, rng: np.random.Generator, palette: np.ndarray) -> np.ndarray:
    """Smooth-to-fine random texture in the colours of `palette` (3 RGB rows: low, mid, high)."""
    level = np.zeros((height, width), np.float32)
    for cell, amplitude in ((24, 1.0), (6, 0.7), (2, 0.4)):
        noise = rng.random((height // cell + 3, width // cell + 3)).astype(np.float32)
        big = cv2.resize(noise, ((width // cell + 3) * cell, (height // cell + 3) * cell), interpolation=cv2.INTER_CUBIC)
        level += amplitude * big[cell : cell + height, cell : cell + width]
    level = (level - level.min()) / (level.max() - level.min())
    low, mid, high = (palette[i].astype(np.float32) for i in range(3))
    image = np.where(level[..., None] < 0.5, low + (mid - low) * (2 * level[..., None]), mid + (high - mid) * (2 * level[..., None] - 1))
    return np.clip(image, 0, 255).astype(np.uint8)


def crossing_blobs(frames: int = 24, width: int = 192, height: int = 144, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two textured blobs crossing a slowly panning textured backdrop, the second passing in front of the
    first: (F, H, W, 3) uint8 frames and (2, F, H, W) bool mattes of what is visible of each."""
    rng = np.random.default_rng(seed)
    pan = max(1, width // 160)  # backdrop pixels per frame
    backdrop = _texture(height, width + pan * frames, rng, np.array([[40, 70, 40], [90, 120, 80], [150, 170, 120]]))
    palettes = (np.array([[120, 20, 20], [200, 80, 40], [250, 200, 120]]), np.array([[20, 30, 110], [60, 120, 200], [170, 220, 250]]))
    radius = (0.16 * width, 0.22 * height)
    textures = [_texture(height, width, rng, palette) for palette in palettes]
    clip = np.empty((frames, height, width, 3), np.uint8)
    mattes = np.zeros((2, frames, height, width), bool)
    for f in range(frames):
        s = f / max(frames - 1, 1)
        clip[f] = backdrop[:, pan * f : pan * f + width]
        centres = (
            (width * (0.22 + 0.5 * s), height * (0.36 + 0.06 * np.sin(3 * s))),
            (width * (0.78 - 0.5 * s), height * (0.64 - 0.04 * s)),
        )
        for k, ((cx, cy), texture) in enumerate(zip(centres, textures)):
            ax, ay = radius[0] * (1 + 0.1 * np.sin(4 * s + k)), radius[1] * (1 - 0.08 * np.sin(3 * s + k))
            shape = np.zeros((height, width), np.uint8)
            cv2.ellipse(shape, (round(cx * 16), round(cy * 16)), (round(ax * 16), round(ay * 16)), 20 * s + 15 * k, 0, 360, 1, -1, cv2.LINE_8, 4)
            # The blob's texture moves with it: shift its patch by the centre's offset.
            shift = np.float32([[1, 0, cx - width / 2], [0, 1, cy - height / 2]])
            moved = cv2.warpAffine(texture, shift, (width, height), borderMode=cv2.BORDER_REFLECT)
            inside = shape > 0
            clip[f][inside] = moved[inside]
            mattes[k, f] = inside
        mattes[0, f] &= ~mattes[1, f]  # the second blob is in front
    return clip, mattes


def bench_track(
    frames: int = 24,
    sizes: tuple[tuple[int, int], ...] = ((1280, 720), (1920, 1080)),
    sam2_model: str = DEFAULT_SAM2,
    device: str = "auto",
    repeats: int = 2,
) -> dict:
    """Frames/s (best of `repeats`) and mean IoU of tracking the crossing blobs (two regions), from one keyframe and from
    keyframes at both ends: `flow` with the default settings and with slower, finer ones (the accuracy
    the defaults give up), then SAM 2 when its weights are here."""
    import time

    def run(clip, truth, tracker, keys, **kwargs) -> dict:
        regions = [RegionTrack([Keyframe(f, truth[k, f]) for f in keys], tracker, sam2_model) for k in range(2)]
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            tracked = track_mattes(clip, regions, **kwargs)
            best = min(best, time.perf_counter() - started)
        ious = [np.mean([iou(tracked[k, f], truth[k, f]) for f in range(len(clip))]) for k in range(2)]
        return {"frames_per_s": len(clip) / best, "iou": [round(float(v), 4) for v in ious]}

    finer = TrackSettings(size=640, preset="medium", cut_size=320, iterations=2)
    import os

    report: dict = {"frames": frames, "regions": 2, "threads": os.cpu_count(), "settings": vars(TrackSettings()),
                    "finer": vars(finer)}
    for width, height in sizes:
        clip, truth = crossing_blobs(frames, width, height)
        for name, keys in (("one_keyframe", [0]), ("both_ends", [0, frames - 1])):
            report[f"flow_{width}x{height}_{name}"] = run(clip, truth, "flow", keys)
            report[f"flow_finer_{width}x{height}_{name}"] = run(clip, truth, "flow", keys, settings=finer)
    clip, truth = crossing_blobs(frames, *sizes[0])
    try:
        report[f"sam2_{sizes[0][0]}x{sizes[0][1]}_one_keyframe"] = run(clip, truth, "sam2", [0], device=device)
    except ModelUnavailableError as exc:
        report["sam2"] = f"skipped: {exc}"
    return report
