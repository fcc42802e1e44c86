"""`videograin bench`: where the time and memory of an edit go, and how fast frames stream.

- edit (default): per-phase time, mean step time, peak GPU memory and RAM for a synthetic clip of a
  given frame count and size, plus the modulated / plain attention time ratio on identical shapes.
  `--model sd15-random` has the full SD-1.5 + ControlNet shapes with random weights: real timings,
  meaningless pictures.
- `--features`: the reference's features off and on; flow time per frame; trajectory attention against
  the full-frame attention it follows.
- `--reedit`: an edit and a second prompt on the same clip, the inversion taken from the cache; time to
  the first step preview of each.
- `--timeline`: the OpenTimelineIO round trip's own cost over 20 shots.
- `--stream`: 1080p frames through protocol v1 (sign, send, receive, verify, view) over loopback, with
  part MACs, with whole-message HMAC and unsigned, on plain tcp, on tcp inside CurveZMQ and on ipc,
  next to a plain memory copy of the same frame.
- `--blender`: the Blender add-on's export and import frames/s at 720p and 1080p, measured in Blender
  as a Python module (bpy) in a subprocess, so that bpy and torch never share a process.
- `--track`: matte tracking (inputs/mattes.py): `flow` frames/s and IoU at 720p and 1080p on a
  synthetic clip with known mattes, and SAM 2 when its weights are here.
- `--ray N`: one clip in passes on 1 and on N Ray workers (a local cluster), and in this process: edit
  time, and the time to the first frame (pass by pass) next to the time the whole clip takes.
- `--decode`: reading 1080p H.264 and ProRes 422 HQ movies to RGB frames, PyAV (what the engine reads
  with) against OpenCV's VideoCapture, frames/s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from videograin.engine.config import EditSettings, RegionConfig, SourceConfig
from videograin.engine.demo import DEMO_PROMPT, synthetic_clip
from videograin.engine.inputs.job import EditJob
from videograin.engine.method.attention import layout_attention, plain_attention
from videograin.engine.method.families.wan.grid import latent_frames, padded_length
from videograin.engine.method.passes import plan_passes
from videograin.engine.models import default_dtype, device_name, get_pipeline, resolve_device
from videograin.engine.progress import ProgressEvent
from videograin.engine.runner import edit_clip


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_ram_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def time_call(fn, device: torch.device, repeats: int = 5) -> float:
    """Median seconds of `fn()` after one warm-up call."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def attention_shape(pipe, frames: int, width: int, height: int) -> tuple[int, int, int, int]:
    """(tokens, heads, head size, row length) of the largest full-frame self-attention of an edit: SD-1.5's
    finest UNet level (8 heads of 40), or Wan's whole-clip token grid."""
    if pipe.family == "wan":
        config = pipe.transformer.config
        columns = width // pipe.size_multiple
        rows = latent_frames(padded_length(frames)) * (height // pipe.size_multiple)
        return rows * columns, config.num_attention_heads, config.attention_head_dim, columns
    return frames * (width // 8) * (height // 8), 8, 40, width // 8


def attention_ratio(shape: tuple[int, int, int, int], device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Modulated vs plain self-attention on `shape` (attention_shape), both guidance branches."""
    tokens, heads, dim, row = shape
    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(2, heads, tokens, dim, generator=g).to(device, dtype) for _ in range(3))
    labels = (torch.arange(tokens) % row > row // 2).long().to(device)  # two half-frame regions
    strength = torch.full((tokens,), 0.3, device=device)
    plain = time_call(lambda: plain_attention(q, k, v), device)
    modulated = time_call(lambda: layout_attention(q, k, v, labels, labels, strength), device)
    return {"tokens": tokens, "plain_s": plain, "modulated_s": modulated, "ratio": modulated / plain}


def _settings(args: argparse.Namespace, **changes) -> EditSettings:
    settings = EditSettings(
        source_prompt="two men are jogging", prompt=DEMO_PROMPT, background_phrase="cherry blossoms",
        regions=[RegionConfig("iron man"), RegionConfig("spider man")],
        source=SourceConfig(width=args.size[0], height=args.size[1]), steps=args.steps, model=args.model,
        window=args.window,
    )
    for key, value in changes.items():
        setattr(settings, key, value)
    return settings


def timed_edit(pipe, job: EditJob, device: torch.device, **options) -> dict[str, Any]:
    """One edit, timed: seconds in all, per phase (a phase runs from the previous phase's last event to
    its own last event) and to the first step preview."""
    marks: list[tuple[str, float]] = []
    first_preview: list[float] = []

    def progress(event: ProgressEvent) -> None:
        _sync(device)
        marks.append((event.phase, time.perf_counter()))
        if event.preview is not None and not first_preview:
            first_preview.append(time.perf_counter())

    started = time.perf_counter()
    result = edit_clip(job, pipe, progress=progress, **options)
    _sync(device)
    phases, previous = {}, started
    for phase in dict.fromkeys(phase for phase, _ in marks):
        end = max(t for p, t in marks if p == phase)
        phases[phase], previous = end - previous, end
    return {"edit_s": time.perf_counter() - started, "phases_s": phases,
            "first_preview_s": first_preview[0] - started if first_preview else None,
            "cached_passes": result.cached_passes}


def _load(args: argparse.Namespace) -> tuple[Any, torch.device, float]:
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    pipe = get_pipeline(args.model, "random-controlnet", device)
    _sync(device)
    return pipe, device, time.perf_counter() - started


def bench_edit(args: argparse.Namespace) -> dict[str, Any]:
    pipe, device, load_s = _load(args)
    clip, mattes = synthetic_clip(args.frames, *args.size)
    timed = timed_edit(pipe, EditJob(_settings(args), clip, mattes), device)
    phases = {"load": load_s, **timed["phases_s"]}
    report = {
        "model": args.model, "device": str(device), "device_name": device_name(device),
        "dtype": str(pipe.denoiser.dtype), "frames": args.frames, "size": args.size, "steps": args.steps,
        "window": args.window, "edit_s": timed["edit_s"], "phases_s": phases,
        "step_s": {phase: phases[phase] / args.steps for phase in ("invert", "edit")},
        "first_preview_s": timed["first_preview_s"],
        "peak_gpu_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        "peak_ram_mib": _peak_ram_mib(),
        "attention": attention_ratio(attention_shape(pipe, args.frames, *args.size), device, pipe.denoiser.dtype),
        "torch": torch.__version__, "python": platform.python_version(),
    }
    if pipe.family == "wan":
        report["transformer_pass_tflop"] = wan_pass_tflop(pipe, attention_shape(pipe, args.frames, *args.size)[0])
    if "tiny" in args.model:
        report["note"] = "tiny model: pipeline overheads, not a real model's speed; use sd15-random or wan-1.3b-random"
    return report


def wan_pass_tflop(pipe, tokens: int, text_tokens: int = 512) -> float:
    """Tera floating-point operations of one transformer pass (one guidance branch) on `tokens` tokens:
    2 per weight and token in the linear layers, plus QKᵀ and attention × V (2 · 2 · N · M · width per
    layer) for the self- (M = N) and cross-attention (M = text tokens)."""
    config = pipe.transformer.config
    width = config.num_attention_heads * config.attention_head_dim
    linear = 2 * tokens * sum(p.numel() for name, p in pipe.transformer.blocks.named_parameters() if p.ndim == 2)
    attention = 4 * tokens * (tokens + text_tokens) * width * config.num_layers
    return (linear + attention) / 1e12


def bench_features(args: argparse.Namespace) -> dict[str, Any]:
    """What the reference's features cost: the same edit with all of them off, with each alone, then
    with all on (trajectory attention at its default levels, injection in the first half of the steps,
    blending, the reference's conditioning and modulation schedule); plus flow time per frame and
    trajectory attention against the full-frame attention it follows, on the edit's shapes."""
    from videograin.engine.config import REFERENCE_NEGATIVE_PROMPT, FlowConfig, ModulationConfig
    from videograin.engine.inputs.flow import clip_flow
    from videograin.engine.method.families.sd15.trajectory import Trajectories, trajectory_attention

    pipe, device, _ = _load(args)
    clip, mattes = synthetic_clip(args.frames, *args.size)
    off = dict(flow=FlowConfig(method="none"), inject_step=0, blend=False, phrase_embeddings=False, negative_prompt="",
               controlnet_attention="full",
               modulation=ModulationConfig(until=0.3, layout="area", size="clip", self_branch="both"))
    features = {
        "trajectories": dict(flow=FlowConfig()),
        "injection": dict(inject_step=args.steps // 2),
        "blending": dict(blend=True),
        "conditioning": dict(phrase_embeddings=True, negative_prompt=REFERENCE_NEGATIVE_PROMPT,
                             controlnet_attention="frame"),
        "modulation_schedule": dict(modulation=ModulationConfig()),
    }
    every = {key: value for change in features.values() for key, value in change.items()}
    timed = lambda changes: timed_edit(pipe, EditJob(_settings(args, **changes), clip, mattes), device)["edit_s"]  # noqa: E731
    timed(off)  # warm-up: the first edit in a process pays one-time costs
    base = timed(off)
    alone = {name: timed({**off, **change}) / base - 1 for name, change in features.items()}
    on = timed({**off, **every})
    started = time.perf_counter()
    flow = clip_flow(clip, FlowConfig())
    flow_s = (time.perf_counter() - started) / max(1, args.frames - 1)
    latent_w, latent_h = args.size[0] // 8, args.size[1] // 8
    trajectories = Trajectories(torch.from_numpy(flow.forward), torch.from_numpy(flow.occluded_forward), latent_h,
                                latent_w)
    plan = trajectories.plan(latent_w * latent_h, torch.arange(args.frames), device)
    dtype = default_dtype(device)
    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(2, 8, args.frames * latent_w * latent_h, 40, generator=g).to(device, dtype) for _ in range(3))
    return {
        "model": args.model, "device": str(device), "device_name": device_name(device), "frames": args.frames,
        "size": args.size, "steps": args.steps, "edit_features_off_s": base, "edit_features_on_s": on,
        "features_overhead": on / base - 1, "overhead_alone": alone,
        "flow_s_per_frame": flow_s,
        "trajectory_attention_s": time_call(lambda: trajectory_attention(q, k, v, plan), device),
        "full_frame_attention_s": time_call(lambda: plain_attention(q, k, v), device),
        "load_average": os.getloadavg()[0],
    }


def bench_reedit(args: argparse.Namespace) -> dict[str, Any]:
    """An edit, then a second with another prompt on the same clip: the inversion cache serves it."""
    from videograin.engine.cache import InversionCache

    pipe, device, _ = _load(args)
    clip, mattes = synthetic_clip(args.frames, *args.size)
    # A warm-up edit of one step first: the first run in a process pays one-time costs (kernel selection,
    # allocations) that would flatter the re-edit.
    timed_edit(pipe, EditJob(_settings(args, steps=1), clip, mattes), device)
    with tempfile.TemporaryDirectory() as folder:
        cache = InversionCache(Path(folder))
        first = timed_edit(pipe, EditJob(_settings(args), clip, mattes), device, cache=cache, preview_every=1)
        walking = DEMO_PROMPT.replace("jogging", "walking")
        second = timed_edit(pipe, EditJob(_settings(args, prompt=walking), clip, mattes), device, cache=cache,
                            preview_every=1)
    return {
        "model": args.model, "device": str(device), "frames": args.frames, "size": args.size, "steps": args.steps,
        "first_edit_s": first["edit_s"], "reedit_s": second["edit_s"], "reedit_share": second["edit_s"] / first["edit_s"],
        "reedit_cached_passes": second["cached_passes"],
        "first_preview_s": first["first_preview_s"], "reedit_first_preview_s": second["first_preview_s"],
    }


def bench_stream(args: argparse.Namespace) -> dict[str, Any]:
    """1080p frames over loopback in each signing form, one frame in flight at a time, on three channels:
    plain tcp (HMAC mode), tcp inside CurveZMQ (CURVE mode, SPEC.md §1.1: every byte encrypted as well)
    and ipc. Every channel and form takes its turn in each round, so that load from elsewhere on the
    machine falls on all of them alike; each figure is the median round."""
    import zmq

    from videograin.protocol import wire

    frame = np.random.default_rng(0).integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
    key = wire.new_key().encode()
    limits = wire.Limits()
    cpu = torch.device("cpu")
    copy_target = np.empty_like(frame)
    copy_s = time_call(lambda: np.copyto(copy_target, frame), cpu, repeats=50)
    buffer = wire.raw_image(frame, 0)[1]
    # `signed`: every byte authenticated as the engine streams (part MACs where this side has them);
    # `hmac`: the whole-message HMAC of every message (SPEC.md §2.2); `unsigned`: the transport alone.
    signed = wire.PART_MACS[0] if wire.PART_MACS else None
    forms = {"signed": signed, "hmac": None, "unsigned": None}
    report: dict[str, Any] = {
        "frame_bytes": frame.nbytes, "signing": signed or "hmac-sha256", "memcpy_frames_per_s": 1 / copy_s,
        "hmac_ms_per_frame": 1000 * time_call(lambda: wire.sign(key, [buffer]), cpu, repeats=10),
    }
    if signed:
        nonce = bytes(wire.NONCE_BYTES)
        report["part_mac_ms_per_frame"] = 1000 * time_call(lambda: wire.part_tags(key, nonce, [buffer]), cpu, repeats=10)
    rounds = 5
    per_round = max(1, args.stream_frames // rounds)
    context = zmq.Context()
    channels = {name: _stream_channel(context, name, key) for name in ("tcp", "curve", "ipc")}
    rates: dict[str, list[float]] = {f"{name}_{form}": [] for name in channels for form in forms}
    for _ in range(rounds):
        for name, (router, dealer, peer) in channels.items():
            for form, part_mac in forms.items():
                started = time.perf_counter()
                for index in range(per_round):
                    descriptor, buffer = wire.raw_image(frame, 0)
                    header = {"type": "frame", "id": str(index), "job": "bench", "index": index, "image": descriptor}
                    frames = [b"", b"", buffer] if form == "unsigned" else wire.pack(key, header, [buffer], part_mac)
                    router.send_multipart([peer, *frames], copy=False)
                    received = dealer.recv_multipart(copy=False)
                    if form != "unsigned":
                        message = wire.unpack(key, received, limits)
                        wire.decode_raw(message.header["image"], message.parts, limits)
                rates[f"{name}_{form}"].append(per_round / (time.perf_counter() - started))
    for sockets in channels.values():
        for sock in sockets[:2]:
            sock.close(linger=0)
    context.term()
    for name, values in rates.items():
        report[f"{name}_frames_per_s"] = float(np.median(values))
    for name in channels:
        for form in ("signed", "hmac"):
            report[f"{name}_{form}_over_unsigned"] = report[f"{name}_{form}_frames_per_s"] / report[f"{name}_unsigned_frames_per_s"]
    # What CURVE mode costs next to HMAC mode, both signing as the engine does, and the encryption alone.
    report["curve_signed_over_tcp_signed"] = report["curve_signed_frames_per_s"] / report["tcp_signed_frames_per_s"]
    report["curve_unsigned_over_tcp_unsigned"] = report["curve_unsigned_frames_per_s"] / report["tcp_unsigned_frames_per_s"]
    report["mib_per_s_tcp_signed"] = report["tcp_signed_frames_per_s"] * frame.nbytes / 2**20
    report["mib_per_s_curve_signed"] = report["curve_signed_frames_per_s"] * frame.nbytes / 2**20
    return report


def _stream_channel(context, name: str, key: bytes) -> tuple[Any, Any, bytes]:
    """A connected ROUTER and DEALER over `tcp`, `curve` (tcp with CurveZMQ) or `ipc`, and the dealer's
    routing id as the router sees it."""
    import zmq

    from videograin.protocol import wire

    router, dealer = context.socket(zmq.ROUTER), context.socket(zmq.DEALER)
    if name == "curve":
        server_public, server_secret = zmq.curve_keypair()
        router.curve_secretkey, router.curve_publickey, router.curve_server = server_secret, server_public, True
        dealer.curve_publickey, dealer.curve_secretkey = zmq.curve_keypair()
        dealer.curve_serverkey = server_public
    if name == "ipc":
        address = f"ipc:///tmp/videograin-bench-{os.getpid()}"
        router.bind(address)
    else:
        address = f"tcp://127.0.0.1:{router.bind_to_random_port('tcp://127.0.0.1')}"
    dealer.connect(address)
    dealer.send_multipart(wire.pack(key, {"type": "ping", "id": "hi"}))
    return router, dealer, router.recv_multipart()[0]


TIMELINE_SHOTS = 20


def bench_timeline(args: argparse.Namespace) -> dict[str, Any]:
    """The OpenTimelineIO round trip's own cost next to the edits it drives: a 20-shot timeline
    (image-sequence clips, one matte from a track, one from a path) through `videograin timeline`'s three
    stages, the time of each shot's edit subtracted from the whole."""
    with tempfile.TemporaryDirectory(prefix="videograin-bench-timeline-") as scratch:
        return _bench_timeline(args, Path(scratch))


def _bench_timeline(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    import opentimelineio as otio
    import yaml

    from videograin.engine.inputs.media import write_png
    from videograin.engine.timeline import command

    frames = args.frames
    clip, mattes = synthetic_clip(TIMELINE_SHOTS * frames, *args.size)
    for index in range(len(clip)):
        write_png(folder / "frames" / f"f.{index:04d}.png", clip[index])
        write_png(folder / "iron" / f"i.{index:04d}.png", mattes[0, index].astype(np.uint8) * 255)
        write_png(folder / "spider" / f"{index:04d}.png", mattes[1, index].astype(np.uint8) * 255)
    rate = 24.0

    def sequence(name: str, prefix: str):
        return otio.schema.ImageSequenceReference(
            f"{name}/", prefix, ".png", start_frame=0, rate=rate, frame_zero_padding=4,
            available_range=otio.opentime.TimeRange(
                otio.opentime.RationalTime(0, rate), otio.opentime.RationalTime(len(clip), rate)
            ),
        )

    timeline = otio.schema.Timeline("bench")
    shots = otio.schema.Track("V1", kind=otio.schema.TrackKind.Video)
    matte_track = otio.schema.Track("iron man", kind=otio.schema.TrackKind.Video)
    for shot in range(TIMELINE_SHOTS):
        trim = otio.opentime.TimeRange(
            otio.opentime.RationalTime(shot * frames, rate), otio.opentime.RationalTime(frames, rate)
        )
        job = {
            "source_prompt": "two men are jogging", "prompt": DEMO_PROMPT, "background": {"phrase": "cherry blossoms"},
            "regions": [{"phrase": "iron man"}, {"phrase": "spider man", "mask": "spider"}],
            "source": {"width": args.size[0], "height": args.size[1]}, "steps": args.steps, "seed": shot, "model": args.model,
        }
        edited = otio.schema.Clip(f"shot{shot:02d}", sequence("frames", "f."), trim)
        edited.markers.append(otio.schema.Marker("videograin", trim, comment=yaml.safe_dump(job)))
        shots.append(edited)
        matte_track.append(otio.schema.Clip(f"matte{shot:02d}", sequence("iron", "i."), trim))
    timeline.tracks.extend([shots, matte_track])
    path = folder / "bench.otio"
    otio.adapters.write_to_file(timeline, str(path))

    marks = [time.perf_counter()]
    plan = command.plan(path, folder / "out.otio", model=args.model)
    marks.append(time.perf_counter())
    command.edit_shots(plan, device=args.device)
    marks.append(time.perf_counter())
    command.finish(plan)
    marks.append(time.perf_counter())
    plan.close()
    plan_s, stage_s, finish_s = (float(d) for d in np.diff(marks))
    # Each shot's edit as `videograin edit` does it (read the job, edit, write its results folder); the
    # rest is the round trip: reading and validating the timeline, hashing, conforming, writing it.
    edits_s = sum(item.seconds for item in plan.edited)
    overhead = plan_s + (stage_s - edits_s) + finish_s
    return {
        "model": args.model, "device": args.device, "device_name": device_name(resolve_device(args.device)),
        "shots": TIMELINE_SHOTS, "frames_per_shot": frames, "size": args.size, "steps": args.steps,
        "stages_s": {"plan": plan_s, "edit_shots": stage_s, "finish": finish_s},
        "shot_edits_s": edits_s, "overhead_s": overhead, "overhead_share": overhead / edits_s,
        "torch": torch.__version__, "python": platform.python_version(),
    }


def bench_blender(args: argparse.Namespace) -> dict[str, Any]:
    """Run `videograin.blender_addon.throughput` with a Python that has bpy (this one by default)."""
    with tempfile.TemporaryDirectory(prefix="videograin-bench-") as folder:
        report = Path(folder) / "blender.json"
        command = [args.blender_python, "-m", "videograin.blender_addon.throughput",
                   "--frames", str(args.blender_frames), "--json", str(report)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"the Blender bench failed ({' '.join(command)}):\n{done.stderr[-2000:]}")
        return json.loads(report.read_text())


def bench_track(args: argparse.Namespace) -> dict[str, Any]:
    from videograin.engine.inputs.mattes import bench_track as track

    return {**track(device=args.device), "cpu": device_name(torch.device("cpu"))}


def bench_ray(args: argparse.Namespace) -> dict[str, Any]:
    """The same clip (`--window` frames per pass, 4 by default) edited in this process, then on a
    local Ray cluster by 1 worker and by N. Each pool edits the clip once first, so that every worker
    has loaded the model; the second edit is timed from submit to the first frame and to `done`."""
    import ray

    from videograin.engine.serving.ray_pool import RayPool, RayWorker, require_ray
    from videograin.engine.serving.worker import Job

    require_ray()
    clip, mattes = synthetic_clip(args.frames, *args.size)
    window = args.window or 4
    settings = _settings(args, window=window)
    job = EditJob(settings, clip, mattes)
    device = resolve_device(args.device)
    pipe = get_pipeline(args.model, settings.controlnet_id, device)
    report: dict[str, Any] = {
        "model": args.model, "frames": args.frames, "size": args.size, "steps": args.steps, "window": window,
        "passes": len(plan_passes(args.frames, window)[0]),
    }
    edit_clip(job, pipe)  # warm-up, as the pools have
    frames_at: list[float] = []
    started = time.perf_counter()
    edit_clip(job, pipe, on_frame=lambda index, image: frames_at.append(time.perf_counter()))
    report["in_process"] = {
        "device": str(device), "device_name": device_name(device), "threads": torch.get_num_threads(),
        "first_frame_s": frames_at[0] - started, "edit_s": time.perf_counter() - started,
    }

    def timed(pool: RayPool) -> dict[str, float]:
        worker = RayWorker(pool, None, threading.Event())
        worker.start()
        run = Job("bench", job, len(clip), None)
        started, first, done = time.perf_counter(), None, None
        worker.submit(run)
        while done is None:
            for kind, _, payload in worker.events():
                if kind == "frame" and first is None:
                    first = time.perf_counter() - started
                elif kind in ("failed", "cancelled"):
                    raise RuntimeError(f"the benchmark's edit ended: {payload}")
                elif kind == "done":
                    done = time.perf_counter() - started
            time.sleep(0.005)
        worker.close()
        return {"first_frame_s": first, "edit_s": done}

    started_ray = not ray.is_initialized()
    if started_ray:  # each CPU worker holds one CPU: the cluster has at least N
        ray.init(num_cpus=max(args.ray, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False)
    try:
        for workers in dict.fromkeys((1, args.ray)):
            pool = RayPool(workers)
            try:
                timed(pool)  # every worker loads the model
                report[f"ray_{workers}"] = {"workers": pool.described, **timed(pool)}
            finally:
                pool.close()
    finally:
        if started_ray:
            ray.shutdown()
    one, many = report["ray_1"]["edit_s"], report[f"ray_{args.ray}"]["edit_s"]
    report["speedup"] = one / many
    report["load_average"] = os.getloadavg()[0]  # other work on the machine takes the workers' CPUs too
    report["torch"], report["ray"], report["python"] = torch.__version__, ray.__version__, platform.python_version()
    return report


def bench_decode(args: argparse.Namespace) -> dict[str, Any]:
    """Frames/s reading a 1080p clip to RGB: PyAV as the engine reads (exact frames, the file's colour
    matrix, accurate rounding), PyAV decoding only, and OpenCV's VideoCapture (BGR converted to RGB)."""
    import av
    import cv2

    from videograin.engine.inputs.media import read_sequence, write_movie

    count = args.decode_frames
    ramp = np.linspace(0, 255, 1920, dtype=np.float32)
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 48, (1080, 1920 + 4 * count), dtype=np.uint8)
    frames = np.empty((count, 1080, 1920, 3), np.uint8)
    for k in range(count):  # a moving texture over colour ramps: the encoder has real work
        frames[k, ..., 0] = ramp + texture[:, 4 * k : 4 * k + 1920] / 2
        frames[k, ..., 1] = ramp[::-1] / 2 + texture[:, 4 * k : 4 * k + 1920]
        frames[k, ..., 2] = (k * 5) % 256
    report: dict[str, Any] = {"frames": count, "size": "1920x1080"}
    with tempfile.TemporaryDirectory(prefix="videograin-bench-decode-") as scratch:
        for codec, suffix in (("h264", "mp4"), ("prores", "mov")):
            path = Path(scratch) / f"clip.{suffix}"
            write_movie(path, frames, 24.0, codec)
            started = time.perf_counter()
            read_sequence(path, list(range(count)), "bench")
            pyav = time.perf_counter() - started
            started = time.perf_counter()
            with av.open(str(path)) as container:
                container.streams.video[0].thread_type = "AUTO"
                decoded = sum(1 for _ in container.decode(video=0))
            decode_only = time.perf_counter() - started
            started = time.perf_counter()
            capture, read = cv2.VideoCapture(str(path)), 0
            while True:
                ok, image = capture.read()
                if not ok:
                    break
                cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
                read += 1
            capture.release()
            opencv = time.perf_counter() - started
            report[codec] = {
                "file_mb": path.stat().st_size / 2**20,
                "pyav_rgb_fps": count / pyav,
                "pyav_decode_only_fps": decoded / decode_only,
                "opencv_rgb_fps": read / opencv,
                "opencv_frames_read": read,
            }
    report["load_average"] = os.getloadavg()[0]  # the machine may be shared: read the figures with it
    report["av"], report["ffmpeg"] = av.__version__, av.library_versions["libavcodec"]
    report["opencv"] = cv2.__version__
    return report


def _print(report: dict[str, Any], indent: str = "") -> None:
    for key, value in report.items():
        if isinstance(value, dict):
            print(f"{indent}{key}:")
            _print(value, indent + "  ")
        elif isinstance(value, float):
            print(f"{indent}{key}: {value:.4g}")
        else:
            print(f"{indent}{key}: {value}")


def cmd_bench(args: argparse.Namespace) -> int:
    if args.ray is not None:
        report = bench_ray(args)
    else:
        modes = {"timeline": bench_timeline, "stream": bench_stream, "features": bench_features,
                 "reedit": bench_reedit, "blender": bench_blender, "track": bench_track, "decode": bench_decode}
        report = next((run for name, run in modes.items() if getattr(args, name)), bench_edit)(args)
    _print(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0
