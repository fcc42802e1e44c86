"""How long an edit will take and how much memory it will need, before it runs: measured `videograin bench`
runs (BENCHMARKS.md) scaled to the job's passes, frames, size and steps. An estimate, and said to be one.

A denoising step's time grows with the tokens of its pass (frames × latent pixels): linearly for the
convolutions and per-token layers, quadratically for full-frame self-attention, which is
`attention_share` of the measured step. Memory grows linearly: the attention works in fixed-size chunks.
Loading counts too: a process's start-up and the model's build or read come before the first step, and
for small jobs they are most of the time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from videograin.engine.families import WAN, model_family
from videograin.engine.method.attention import CHUNK_BYTES
from videograin.engine.method.families.sd15.pipeline import BYTES_PER_LATENT_PIXEL

GIB = 2**30
# SD-1.5's UNet (860 M) + ControlNet (361 M) + VAE (84 M) + CLIP text tower (123 M) parameters.
SD15_PARAMETERS = 1.43e9
LONG_EDIT_S = 60.0  # the CLI announces its estimate before an edit longer than this
# A process's imports of torch, diffusers and transformers before anything runs: `videograin --help`, which
# imported them, took 3.9 s on 2 quiet cores (BENCHMARKS.md, "Start-up").
STARTUP_S = 3.9


@dataclass(frozen=True)
class BenchRun:
    """One measured `videograin bench` run: what an estimate scales from."""

    command: str
    tokens: int  # frames × latent pixels of the benched pass
    pixels: int  # working-size pixels of all benched frames (what the VAE encodes and decodes)
    invert_step_s: float
    edit_step_s: float
    vae_s: float  # encode + decode of the benched frames
    load_s: float  # building or reading the model, after the start-up's imports
    memory_gib: float  # peak RAM
    base_memory_gib: float  # the part that does not grow with the clip: weights and the runtime
    attention_share: float  # share of a step spent in full-frame self-attention at `tokens`


# BENCHMARKS.md, "CPU (2 cores, 24 GiB, Python 3.11.7, torch 2.13.0+cpu)".
CPU_RUNS = {
    # Real SD-1.5 weights have these shapes: they run at this speed. The attention share: the bench's
    # full-frame attention at 2,048 tokens (0.065 s for 2 batches) in SD-1.5's 16 self-attention layers,
    # the coarser ones weighted by (tokens ÷ 4^level)² × channels, is 0.19 s of the 3.1 s inversion step.
    "sd15": BenchRun(
        "videograin bench --model sd15-random --device cpu --frames 2 --size 256 --steps 2",
        tokens=2 * 32 * 32, pixels=2 * 256 * 256, invert_step_s=3.1, edit_step_s=6.6, vae_s=3.1 + 4.3, load_s=18.3,
        memory_gib=6.7, base_memory_gib=SD15_PARAMETERS * 4 / GIB + 0.48, attention_share=0.06,
    ),
    # 0.27 s in all, of which 4 × (0.023 + 0.037) s are steps; the rest is the VAE. The attention share:
    # the same model on 8 frames at 512² (32,768 tokens, NOTES §8) took 22-27 s per inversion step.
    # Base memory: 511 MiB at 512 tokens and 579 MiB at 2,048 (8 frames at 64² and 128²) put it at 0.48 GiB.
    # Load: the bench's `load` (building the random weights) was 0.31 s even at load average 15.
    "tiny": BenchRun(
        "videograin bench --model tiny --device cpu --steps 4",
        tokens=4 * 8 * 8, pixels=4 * 64 * 64, invert_step_s=0.023, edit_step_s=0.037, vae_s=0.03, load_s=0.31,
        memory_gib=0.5, base_memory_gib=0.48, attention_share=0.058,
    ),
}


@dataclass
class Estimate:
    device: str
    seconds: float | None  # None: no measured figures for this device
    phases_s: dict[str, float]
    peak_memory_gib: float | None
    memory: str  # what the memory figure counts: "RAM" or "GPU memory"
    basis: str  # where the figures come from

    def as_dict(self) -> dict[str, Any]:
        return {"device": self.device, "seconds": self.seconds, "phases_s": self.phases_s,
                "peak_memory_gib": self.peak_memory_gib, "memory": self.memory, "basis": self.basis,
                "text": self.line()}

    def line(self) -> str:
        time_part = f"about {duration(self.seconds)}" if self.seconds is not None else "time unknown"
        memory_part = f", peak {self.memory} about {self.peak_memory_gib:.1f} GiB" if self.peak_memory_gib else ""
        return f"{time_part} on {self.device}{memory_part} (an estimate: {self.basis})"


def duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"


def benched_shapes(model: str) -> str:
    """Which benched shapes a model has: the tiny random model, SD-1.5 (random or real weights), Wan."""
    if model == "tiny":
        return "tiny"
    return "wan" if model_family(model).name == WAN else "sd15"


def estimate_edit(
    model: str, device: torch.device, pass_frames: list[int], latent_pixels: int, working_pixels: int, steps: int
) -> Estimate:
    """The edit of passes of `pass_frames` frames each (anchors included), `steps` inversion and as many
    edit steps, on `device`, in a process of its own: start-up and loading included (an engine that holds
    the model already saves the `load` phase)."""
    family = benched_shapes(model)
    if device.type == "cuda":
        return _cuda_estimate(family, device, max(pass_frames), latent_pixels)
    run = CPU_RUNS.get(family)
    if run is None:
        return Estimate(str(device), None, {}, None, "RAM", f"no CPU figures measured for {model} yet (BENCHMARKS.md)")

    def step(measured: float, tokens: int) -> float:
        ratio = tokens / run.tokens
        return measured * ((1 - run.attention_share) * ratio + run.attention_share * ratio**2)

    tokens = [frames * latent_pixels for frames in pass_frames]
    phases = {
        "load": STARTUP_S + run.load_s,
        "vae": run.vae_s * sum(pass_frames) * working_pixels / run.pixels,
        "invert": steps * sum(step(run.invert_step_s, t) for t in tokens),
        "edit": steps * sum(step(run.edit_step_s, t) for t in tokens),
    }
    memory = run.base_memory_gib + (run.memory_gib - run.base_memory_gib) * max(tokens) / run.tokens
    return Estimate(str(device), sum(phases.values()), phases, memory, "RAM",
                    f"scaled from `{run.command}`, BENCHMARKS.md")


def _cuda_estimate(family: str, device: torch.device, frames: int, latent_pixels: int) -> Estimate:
    """No GPU run is measured yet: memory from the pass planner's own model (fp16 weights, the activations
    `longest_pass` reserves per frame, the attention chunk budget), time unknown."""
    basis = "no GPU figures measured yet (BENCHMARKS.md, 'GPU: still to measure')"
    if family != "sd15":
        return Estimate(str(device), None, {}, None, "GPU memory", basis)
    memory = SD15_PARAMETERS * 2 + BYTES_PER_LATENT_PIXEL * latent_pixels * frames + CHUNK_BYTES["cuda"]
    return Estimate(str(device), None, {}, memory / GIB, "GPU memory",
                    f"{basis}; memory from the pass planner's model, not measured")
