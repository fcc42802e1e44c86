"""Running a validated job: working-size inputs, the edit, and results at the source size.

`edit_clip` is shared by every caller (the engine server streams its frames); `edit_in_process` and
`edit_on_engine` run a job to a results folder, here or on a running engine (the CLI's `edit`). Its
three stages stand alone for a pool that spreads passes over processes (serving/ray_pool.py):
`prepare_clip` once, `edit_passes` per pass wherever it runs, `finish_edit` over the merged result.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Collection

import numpy as np
import torch

from videograin.engine.cache import InversionCache, job_key
from videograin.engine.config import EditSettings
from videograin.engine.errors import JobError
from videograin.engine.families import SD15, WAN, family_warnings, model_family
from videograin.engine.inputs.control import control_maps
from videograin.engine.inputs.flow import ClipFlow, clip_flow
from videograin.engine.inputs.job import EditJob
from videograin.engine.inputs.media import (
    contact_sheet,
    current_umask,
    heatmap_overlays,
    resize,
    slug,
    write_atomic,
    write_mp4,
    write_png,
)
from videograin.engine.method.families.sd15.pipeline import VideoGrainPipeline
from videograin.engine.method.families.sd15.trajectory import Trajectories
from videograin.engine.method.families.wan.grid import pad_clip
from videograin.engine.method.families.wan.pipeline import WanVideoGrainPipeline
from videograin.engine.method.passes import EditResult, FrameCallback
from videograin.engine.metrics.warp import warp_error
from videograin.engine.models import RANDOM_MODELS, get_pipeline, resolve_device
from videograin.engine.progress import (
    ProgressBars,
    ProgressCallback,
    ProgressEvent,
    no_progress,
)
from videograin.protocol.client import EngineClient, EngineError, frame_image

RANDOM_WEIGHTS_BANNER = "RANDOM WEIGHTS - NOT AN EDIT"
log = logging.getLogger(__name__)
Pipeline = VideoGrainPipeline | WanVideoGrainPipeline


@dataclass
class PreparedClip:
    """A job's inputs at the working size (`prepare_clip`): made once, shared by every pass of its edit,
    wherever the passes run. Plain arrays and tensors, so it travels between processes."""

    settings: EditSettings
    masks: np.ndarray  # (K, F, H, W) bool at the source size: the layout resizes them per resolution
    source_size: tuple[int, int]
    frames: np.ndarray  # (F, h, w, 3) uint8 at the working size
    control: np.ndarray | None
    flow: ClipFlow
    trajectories: Trajectories | None
    family: str = "sd15"
    length: int | None = None  # the clip's own frame count when `frames` are padded (Wan: to 4k + 1)


def prepare_clip(job: EditJob, pipe: Pipeline) -> PreparedClip:
    """Working-size frames, control maps, the source's flow and (SD-1.5) its trajectories; for Wan, every
    per-frame input padded to the 4k + 1 frames its VAE takes."""
    s = job.settings
    family = pipe.family
    for warning in family_warnings(s, model_family(s.model), len(job.frames)):
        log.warning(warning)
    width, height = s.source.width, s.source.height
    frames = resize(job.frames, width, height)
    # Mattes stay at source size: the layout resizes them straight to each attention resolution.
    masks_small = resize(job.masks.reshape(-1, *job.masks.shape[2:]).astype(np.uint8), width, height, nearest=True)
    supplied = None if job.control_maps is None else resize(job.control_maps, width, height)
    control = control_maps(s.control.for_family(family), frames,
                           masks_small.reshape(len(job.masks), -1, height, width) > 0, supplied)
    flow = source_flow(job, frames, pipe.device)
    trajectories = None
    if family == SD15 and s.flow.trajectories:
        trajectories = Trajectories(
            torch.from_numpy(flow.forward), torch.from_numpy(flow.occluded_forward),
            height // pipe.vae_scale_factor, width // pipe.vae_scale_factor, tuple(s.flow.levels),
        )
    if family == WAN:
        return PreparedClip(s, pad_clip(job.masks, axis=1), job.source_size, pad_clip(frames),
                            None if control is None else pad_clip(control), flow, None, family, len(frames))
    return PreparedClip(s, job.masks, job.source_size, frames, control, flow, trajectories, family)


def edit_clip(
    job: EditJob,
    pipe: Pipeline,
    progress: ProgressCallback = no_progress,
    cancelled: Callable[[], bool] = lambda: False,
    measure_leakage: bool = False,
    on_frame: FrameCallback | None = None,
    cache: InversionCache | None = None,
    attention_maps: bool = False,
    preview_every: int = 5,
) -> EditResult:
    """Run the edit at the working size; frames, returned and handed to `on_frame` as each is decoded,
    are back at the source size. With `cache`, inversions are looked up and kept there."""
    clip = prepare_clip(job, pipe)
    result = edit_passes(
        clip, pipe, progress=progress, cancelled=cancelled, measure_leakage=measure_leakage, cache=cache,
        attention_maps=attention_maps, preview_every=preview_every,
        on_frame=None if on_frame is None else lambda index, image: on_frame(index, to_source(clip, image[None])[0]),
    )
    return finish_edit(clip, result)


def edit_passes(
    clip: PreparedClip,
    pipe: Pipeline,
    passes: Collection[int] | None = None,
    window: int | None = None,
    progress: ProgressCallback = no_progress,
    cancelled: Callable[[], bool] = lambda: False,
    measure_leakage: bool = False,
    on_frame: FrameCallback | None = None,
    cache: InversionCache | None = None,
    attention_maps: bool = False,
    preview_every: int = 5,
) -> EditResult:
    """The edit of a prepared clip at the working size: every pass, or only `passes` (frames with their
    `indices`, to merge with `merge_passes`). `window` overrides the settings' (a pool fixes it once for
    all its workers)."""
    s = clip.settings
    inversions = None
    if cache is not None:
        # Exactly what inversion depends on (cache.py); the pipeline adds the pass's frames and anchors.
        material = {
            "model": s.model, "controlnet": s.controlnet_id, "dtype": str(pipe.denoiser.dtype), "device": pipe.device.type,
            "frames": clip.frames, "control": clip.control, "control_scale": s.control.scale,
            "source_prompt": s.source_prompt, "steps": s.steps, "controlnet_attention": s.controlnet_attention,
            "inject_step": s.inject_step, "guided": s.guidance > 1.0, "trajectories": None if clip.trajectories is None
            else {"forward": clip.flow.forward, "occluded": clip.flow.occluded_forward, "levels": s.flow.levels},
        }
        if clip.family != SD15:  # keys of SD-1.5 entries stay what they were
            material = {**material, "family": clip.family, "controlnet": None, "controlnet_attention": None,
                        "inject_step": None, "masks": clip.masks if pipe.is_vace else None}

        def inversions(pass_material: dict, compute):
            return cache.fetch(job_key({**material, **pass_material}), pipe.device, compute)
    family_options = {}
    if clip.family == SD15:
        family_options = {"controlnet_attention": s.controlnet_attention, "inject_step": s.inject_step,
                          "trajectories": clip.trajectories}
    result = pipe(
        clip.frames,
        clip.masks,
        prompt=s.prompt,
        source_prompt=s.source_prompt,
        phrases=[r.phrase for r in s.regions],
        background_phrase=s.background_phrase,
        control_maps=clip.control,
        control_scale=s.control.scale,
        steps=s.steps,
        guidance=s.guidance,
        seed=s.seed,
        modulation=s.modulation,
        window=window or s.window,
        negative_prompt=s.negative_prompt,
        phrase_embeddings=s.phrase_embeddings,
        blend=s.blend,
        inversions=inversions,
        passes=passes,
        preview_every=preview_every,
        progress=progress,
        cancelled=cancelled,
        measure_leakage=measure_leakage,
        attention_maps=attention_maps,
        on_frame=on_frame if on_frame is None or clip.length is None
        else lambda index, image: on_frame(index, image) if index < clip.length else None,
        **family_options,
    )
    if clip.length is not None:  # the padding frames are dropped
        result.frames = result.frames[: clip.length]
        result.attention_maps = result.attention_maps and {
            phrase: (modulated[: clip.length], plain[: clip.length])
            for phrase, (modulated, plain) in result.attention_maps.items()
        }
    return result


def to_source(clip: PreparedClip, images: np.ndarray) -> np.ndarray:
    """Working-size frames back at the source size."""
    return resize(images, *clip.source_size)


def finish_edit(clip: PreparedClip, result: EditResult) -> EditResult:
    """A whole clip's edit at the working size → its frames at the source size, and the warp error over
    all of them (once, on the merged frames when passes ran apart)."""
    return EditResult(to_source(clip, result.frames), result.leakage, result.cached_passes,
                      warp_error(result.frames, clip.flow), result.attention_maps,
                      leakage_whole_run=result.leakage_whole_run)


def source_flow(job: EditJob, frames: np.ndarray, device) -> ClipFlow:
    """The source clip's optical flow at the working size: for trajectory attention and the warp-error
    metric (DIS when the job asks for no flow: the metric still needs one)."""
    return clip_flow(frames, job.settings.flow.for_metrics(), job.indices, job.source_length, str(device))


def check_empty_folder(out: Path) -> None:
    """Refuse a destination that holds anything: results never overwrite files."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise JobError(f"output folder '{out}' is not empty: choose a new folder, results never overwrite files")


def check_output_folder(out: Path, job: EditJob) -> None:
    """Refuse a destination that holds anything, or that is the user's source media."""
    check_empty_folder(out)
    media = [Path(job.settings.source.path)] + [Path(r.mask) for r in job.settings.regions if r.mask]
    for path in media:
        if path.exists() and path.resolve() in (out.resolve(), *out.resolve().parents):
            raise JobError(f"output folder '{out}' would be inside the job's media '{path}'")


def write_results(
    out: Path, job: EditJob, result: EditResult, random_weights: bool, extra: dict | None = None,
    show_plain_maps: bool = False,
) -> None:
    """Write frames, MP4 preview, contact sheet, attention maps (when the result has them) and
    result.json into a staging folder, then move it into place in one rename: `out` holds all results
    or none. `show_plain_maps` adds each phrase's unmodulated maps to the contact sheet."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    try:
        staging.chmod(0o777 & ~current_umask())
        for index, frame in enumerate(result.frames):
            write_png(staging / "frames" / f"{index:05d}.png", frame)
        write_mp4(staging / "preview.mp4", result.frames)
        banner = RANDOM_WEIGHTS_BANNER if random_weights else None
        rows = [("source", job.frames), ("edit", result.frames)]
        for phrase, (modulated, plain) in (result.attention_maps or {}).items():
            overlays = heatmap_overlays(job.frames, modulated)
            for index, overlay in enumerate(overlays):
                write_png(staging / "attention" / slug(phrase) / f"{index:05d}.png", overlay)
            if show_plain_maps:
                rows.append((f"{phrase}: plain", heatmap_overlays(job.frames, plain)))
            rows.append((f"{phrase}: modulated" if show_plain_maps else phrase, overlays))
        sheet = contact_sheet(rows, banner=banner, heat_legend=bool(result.attention_maps))
        write_png(staging / "contact_sheet.png", sheet)
        report = {
            "settings": job.settings.to_dict(),
            "frames": len(result.frames),
            "size": list(job.source_size),
            "leakage": result.leakage,
            "leakage_whole_run": result.leakage_whole_run,
            "warp_error": result.warp_error,
            "inversion_cached": result.cached_passes > 0,
            "random_weights": random_weights,
            "note": "random weights: the pictures are not an edit" if random_weights else None,
            "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **(extra or {}),
        }
        write_atomic(staging / "result.json", json.dumps(report, indent=2).encode())
        if out.exists():
            out.rmdir()  # empty (checked before the edit); rename cannot replace a non-empty folder anyway
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def preview_path(out: Path) -> Path:
    """Where the step previews go while an edit runs, for an image viewer to follow; removed after."""
    return out.parent / f".{out.name}.preview.png"


def edit_in_process(
    job: EditJob, out: Path, device_name: str, cache: InversionCache | None = None, attention_maps: bool = False,
    show_plain_maps: bool = False, pipe: Pipeline | None = None,
) -> dict:
    """Edit with progress bars and write the results to `out`; returns a summary. The job's model is
    loaded unless `pipe` is given: callers that edit many jobs (`videograin timeline`) load it once."""
    device = resolve_device(device_name)
    s = job.settings
    bars = ProgressBars(preview_path(out))
    started = time.perf_counter()
    if pipe is None:
        family_warnings(s, model_family(s.model), len(job.frames))  # refuse before the model loads
        bars(ProgressEvent("load", 0, 1))
        pipe = get_pipeline(s.model, s.controlnet_id, device)
        bars(ProgressEvent("load", 1, 1))
    try:
        result = edit_clip(job, pipe, progress=bars, measure_leakage=True, cache=cache, attention_maps=attention_maps)
    finally:
        bars.close()
        bars.preview_path.unlink(missing_ok=True)
    random_weights = s.model in RANDOM_MODELS
    extra = {"device": str(device), "seconds": time.perf_counter() - started}
    write_results(out, job, result, random_weights, extra, show_plain_maps=show_plain_maps)
    return {"random_weights": random_weights, "leakage": result.leakage, "warp_error": result.warp_error,
            "inversion_cached": result.cached_passes > 0, "leakage_whole_run": result.leakage_whole_run}


class EngineEdit:
    """A job submitted to a running engine (protocol v1): `take` gathers its stream, `finish` writes the
    results as an in-process edit would. Several can share one client (`client.poll` routes by job)."""

    def __init__(self, client: EngineClient, engine: dict, job: EditJob, out: Path,
                 bars: ProgressBars | None = None) -> None:
        self.client, self.engine, self.job, self.out, self.bars = client, engine, job, out, bars
        self.frames: dict[int, np.ndarray] = {}
        self.done: dict | None = None
        self.id = client.submit(job.settings.to_dict(), job.frames, job.masks, job.control_maps)

    def take(self, message) -> None:
        """One message of the job's stream; an `error` raises EngineError."""
        h = message.header
        if message.type == "error":
            raise EngineError(h["code"], h["message"])
        if message.type == "progress" and self.bars is not None:
            preview = frame_image(message, "preview") if "preview" in h else None
            self.bars(ProgressEvent(h["phase"], h["step"], h["total"], preview))
        elif message.type == "frame":
            self.frames[h["index"]] = frame_image(message)
        elif message.type == "done":
            self.done = h

    def finish(self) -> dict:
        """Write the results; returns the summary `edit_in_process` returns."""
        done = self.done
        frames = np.stack([self.frames[i] for i in sorted(self.frames)])
        # `done` says whether any pass came from the cache, not how many: one stands for "some".
        result = EditResult(frames, done["leakage"], int(done.get("inversion_cached", False)), done.get("warp_error"),
                            leakage_whole_run=done.get("leakage_whole_run"))
        write_results(self.out, self.job, result, done["random_weights"],
                      {"device": self.engine["device"], "seconds": done["seconds"], "engine": self.client.address})
        return {"random_weights": done["random_weights"], "leakage": result.leakage, "warp_error": result.warp_error,
                "inversion_cached": result.cached_passes > 0, "leakage_whole_run": result.leakage_whole_run}


def engine_default_model(connection_file: str) -> str:
    """The model a running engine edits with when a job names none (`welcome`'s models[0], SPEC.md §3.3)."""
    client = EngineClient(connection_file)
    try:
        return client.hello(client="videograin-cli")["models"][0]
    finally:
        client.close()


def edit_on_engine(connection_file: str, job: EditJob, out: Path) -> dict:
    """The same edit through a running engine (protocol v1), results written as in-process."""
    client = EngineClient(connection_file)
    bars = ProgressBars(preview_path(out))
    try:
        run = EngineEdit(client, client.hello(client="videograin-cli"), job, out, bars)
        try:
            for message in client.events(run.id):
                run.take(message)
        except KeyboardInterrupt:
            client.cancel(run.id)  # Ctrl-C stops the engine's work too, not only this process
            raise
    finally:
        bars.close()
        bars.preview_path.unlink(missing_ok=True)
        client.close()
    return run.finish()
