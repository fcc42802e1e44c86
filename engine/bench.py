"""`videograin bench`: where the time and memory of an edit go, and how fast frames stream.

- edit (default): per-phase time, mean step time, peak GPU memory and RAM for a synthetic clip of a
  given frame count and size, plus the modulated / plain attention time ratio on identical shapes.
  `--model sd15-random` has the full SD-1.5 + ControlNet shapes with random weights: real timings,
  meaningless pictures.
- `--track`: matte tracking (inputs/mattes.py): `flow` frames/s and IoU at 720p and 1080p on a
  synthetic clip with known mattes, and SAM 2 when its weights are here.
- `--stream`: 1080p frames through protocol v1 (sign, send, receive, verify, view) over loopback,
  next to a plain memory copy of the same frame.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from videograin.engine.config import EditSettings, RegionConfig, SourceConfig
from videograin.engine.demo import DEMO_PROMPT, synthetic_clip
from videograin.engine.inputs.job import EditJob
from videograin.engine.method.attention import layout_attention, plain_attention
from videograin.engine.models import default_dtype, get_pipeline, resolve_device
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


def attention_ratio(frames: int, size: int, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Modulated vs plain full-frame self-attention at the UNet's finest level (SD-1.5: 8 heads of 40)."""
    tokens = frames * (size // 8) ** 2
    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(2, 8, tokens, 40, generator=g).to(device, dtype) for _ in range(3))
    labels = (torch.arange(tokens) % (size // 8) > (size // 16)).long().to(device)  # two half-frame regions
    strength = torch.full((tokens,), 0.3, device=device)
    plain = time_call(lambda: plain_attention(q, k, v), device)
    modulated = time_call(lambda: layout_attention(q, k, v, labels, labels, strength), device)
    return {"tokens": tokens, "plain_s": plain, "modulated_s": modulated, "ratio": modulated / plain}


def bench_edit(args: argparse.Namespace) -> dict[str, Any]:
    device = resolve_device(args.device)
    dtype = default_dtype(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    pipe = get_pipeline(args.model, "random-controlnet", device)
    _sync(device)
    phases: dict[str, float] = {"load": time.perf_counter() - started}
    marks: list[tuple[str, float]] = []

    def progress(event: ProgressEvent) -> None:
        _sync(device)
        marks.append((event.phase, time.perf_counter()))

    clip, mattes = synthetic_clip(args.frames, args.size, args.size)
    settings = EditSettings(
        source_prompt="two men are jogging", prompt=DEMO_PROMPT, background_phrase="cherry blossoms",
        regions=[RegionConfig("iron man"), RegionConfig("spider man")],
        source=SourceConfig(width=args.size, height=args.size), steps=args.steps, model=args.model, window=args.window,
    )
    edit_started = time.perf_counter()
    edit_clip(EditJob(settings, clip, mattes), pipe, progress=progress)
    _sync(device)
    total = time.perf_counter() - edit_started
    # A phase runs from the previous phase's last event to its own last event.
    previous = edit_started
    for phase in dict.fromkeys(phase for phase, _ in marks):
        end = max(t for p, t in marks if p == phase)
        phases[phase], previous = end - previous, end
    steps = {phase: phases[phase] / args.steps for phase in ("invert", "edit")}
    report = {
        "model": args.model, "device": str(device), "device_name": _device_name(device), "dtype": str(dtype),
        "frames": args.frames, "size": args.size, "steps": args.steps, "window": args.window,
        "edit_s": total, "phases_s": phases, "step_s": steps,
        "peak_gpu_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        "peak_ram_mib": _peak_ram_mib(),
        "attention": attention_ratio(args.frames, args.size, device, dtype),
        "torch": torch.__version__, "python": platform.python_version(),
    }
    if args.model != "sd15-random":
        report["note"] = "tiny model: pipeline overheads, not SD-1.5 speed; use --model sd15-random for that"
    return report


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()


def bench_stream(args: argparse.Namespace) -> dict[str, Any]:
    import zmq

    from videograin.protocol import wire

    frame = np.random.default_rng(0).integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
    key = wire.new_key().encode()
    limits = wire.Limits()
    copy_target = np.empty_like(frame)
    copy_s = time_call(lambda: np.copyto(copy_target, frame), torch.device("cpu"), repeats=50)
    report: dict[str, Any] = {"frame_bytes": frame.nbytes, "memcpy_frames_per_s": 1 / copy_s}
    context = zmq.Context()
    for transport, address in (("tcp", "tcp://127.0.0.1:0"), ("ipc", f"ipc:///tmp/videograin-bench-{id(frame)}")):
        router, dealer = context.socket(zmq.ROUTER), context.socket(zmq.DEALER)
        if transport == "tcp":
            address = f"tcp://127.0.0.1:{router.bind_to_random_port('tcp://127.0.0.1')}"
        else:
            router.bind(address)
        dealer.connect(address)
        dealer.send_multipart(wire.pack(key, {"type": "ping", "id": "hi"}))
        peer = router.recv_multipart()[0]
        for signed in (True, False):
            started = time.perf_counter()
            for index in range(args.stream_frames):
                descriptor, buffer = wire.raw_image(frame, 0)
                header = {"type": "frame", "id": str(index), "job": "bench", "index": index, "image": descriptor}
                frames = wire.pack(key, header, [buffer]) if signed else [b"", b"", buffer]
                router.send_multipart([peer, *frames], copy=False)
                received = dealer.recv_multipart(copy=False)
                if signed:
                    message = wire.unpack(key, received, limits)
                    wire.decode_raw(message.header["image"], message.parts, limits)
            elapsed = time.perf_counter() - started
            report[f"{transport}_{'signed' if signed else 'unsigned'}_frames_per_s"] = args.stream_frames / elapsed
        router.close(linger=0)
        dealer.close(linger=0)
    context.term()
    report["mib_per_s_tcp_signed"] = report["tcp_signed_frames_per_s"] * frame.nbytes / 2**20
    return report


def bench_track(args: argparse.Namespace) -> dict[str, Any]:
    from videograin.engine.inputs.mattes import bench_track as track

    return {**track(device=args.device), "cpu": _device_name(torch.device("cpu"))}


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
    report = bench_stream(args) if args.stream else bench_track(args) if args.track else bench_edit(args)
    _print(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


def add_parser(sub) -> None:
    bench = sub.add_parser("bench", help="time and memory of an edit (or of frame streaming)")
    bench.add_argument("--model", default="tiny", choices=["tiny", "sd15-random"])
    bench.add_argument("--device", default="auto")
    bench.add_argument("--frames", type=int, default=4)
    bench.add_argument("--size", type=int, default=64, help="working size (square), multiple of 8")
    bench.add_argument("--steps", type=int, default=5, help="inversion steps = edit steps")
    bench.add_argument("--window", type=int, default=None, help="frames per pass (default: the engine picks)")
    bench.add_argument("--stream", action="store_true", help="benchmark 1080p frame streaming instead")
    bench.add_argument("--stream-frames", type=int, default=100)
    bench.add_argument("--track", action="store_true", help="benchmark matte tracking (flow at 720p/1080p, SAM 2)")
    bench.add_argument("--json", metavar="PATH", help="also write the report as JSON here")
    bench.set_defaults(run=cmd_bench)
