"""The VideoGrain edit as a diffusers pipeline: DDIM inversion of the clip, then a guided, ControlNet-
conditioned DDIM sampling with ST-Layout attention, all frames of a pass denoised as one batch.

Long clips: when the clip has more frames than one pass holds (`window`), a few anchor frames, evenly
spread over the clip, join every pass. Each pass's frames attend to their own frames and the anchors;
anchors attend only among themselves, so they are identical in every pass and tie all passes to the
same appearance. Every denoising step runs all passes before any latent moves on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    DDIMInverseScheduler,
    DDIMScheduler,
    DiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextModel, CLIPTokenizer

from videograin.engine.config import ModulationConfig
from videograin.engine.errors import CancelledError
from videograin.engine.method.attention import CHUNK_BYTES
from videograin.engine.method.layout import RegionLayout, token_labels
from videograin.engine.method.processors import AttentionContext, install_processors
from videograin.engine.metrics.leakage import LeakageMeter
from videograin.engine.progress import ProgressCallback, ProgressEvent, no_progress

VAE_BATCH = 4  # frames per VAE call: bounds memory at high resolution
FrameCallback = Callable[[int, np.ndarray], None]


@dataclass
class EditResult:
    frames: np.ndarray  # (F, H, W, 3) uint8 at the working size
    leakage: dict[str, float] | None  # per phrase, when measured


def plan_passes(num_frames: int, window: int) -> tuple[list[list[int]], int]:
    """Split clip frames into passes of at most `window` frames; anchors come last in each pass.

    Returns the passes (clip frame indices) and the number of anchors per pass (0 for one pass).
    """
    if num_frames <= window:
        return [list(range(num_frames))], 0
    if window < 2:
        raise ValueError("a window must hold at least 2 frames to share anchors")
    anchors_count = max(1, window // 4)
    anchors = sorted(set(np.linspace(0, num_frames - 1, anchors_count).round().astype(int).tolist()))
    rest = [i for i in range(num_frames) if i not in anchors]
    per_pass = window - len(anchors)
    return [rest[i : i + per_pass] + anchors for i in range(0, len(rest), per_pass)], len(anchors)


# Device memory one frame of a pass takes per latent pixel, both guidance branches, UNet + ControlNet
# activations in fp16 (an estimate from the SD-1.5 layer shapes: the skip connections kept for the up
# path dominate). The fast attention path adds a fixed chunk budget on top, never an N×N matrix.
BYTES_PER_LATENT_PIXEL = 24 * 1024


def longest_pass(num_frames: int, latent_pixels: int, device: torch.device) -> int:
    """Frames per pass that fit the device: all of them on CPU, what free memory allows on CUDA."""
    if device.type != "cuda":
        return num_frames
    free, _ = torch.cuda.mem_get_info(device)
    usable = free * 0.8 - CHUNK_BYTES["cuda"]
    return max(2, min(num_frames, int(usable // (BYTES_PER_LATENT_PIXEL * latent_pixels))))


class VideoGrainPipeline(DiffusionPipeline):
    """Components passed in, as in diffusers; ST-Layout behaviour comes from attention processors."""

    _optional_components = ["controlnet"]
    model_cpu_offload_seq = "text_encoder->controlnet->unet->vae"

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: DDIMScheduler,
        controlnet: ControlNetModel | None = None,
    ) -> None:
        super().__init__()
        self.register_modules(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler, controlnet=controlnet
        )
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)

    # -- building blocks -------------------------------------------------------------------------

    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> torch.Tensor:
        ids = self.tokenizer(
            prompt, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids
        return self.text_encoder(ids.to(self.device))[0].to(self.unet.dtype)

    @torch.no_grad()
    def encode_frames(self, frames: np.ndarray) -> torch.Tensor:
        latents = []
        for batch in np.array_split(frames, max(1, -(-len(frames) // VAE_BATCH))):
            pixels = torch.from_numpy(batch).permute(0, 3, 1, 2).to(self.device, self.vae.dtype) / 127.5 - 1.0
            latents.append(self.vae.encode(pixels).latent_dist.mean * self.vae.config.scaling_factor)
        return torch.cat(latents).to(self.unet.dtype)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, on_frame: FrameCallback | None = None) -> np.ndarray:
        """Decode to (F, H, W, 3) uint8, `VAE_BATCH` frames at a time, handing each frame on as it is ready."""
        frames = []
        for batch in latents.split(VAE_BATCH):
            pixels = self.vae.decode(batch.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
            images = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
            for image in images:
                if on_frame is not None:
                    on_frame(len(frames), image)
                frames.append(image)
        return np.stack(frames)

    def _control_tensor(self, control_maps: np.ndarray | None) -> torch.Tensor | None:
        if control_maps is None or self.controlnet is None:
            return None
        return torch.from_numpy(control_maps).permute(0, 3, 1, 2).to(self.device, self.controlnet.dtype) / 255.0

    def _predict_noise(self, latents, timestep, text, control, control_scale, guidance) -> torch.Tensor:
        """ε for one pass: text holds one embedding per group (unconditional first when guided)."""
        groups, frames = text.shape[0], latents.shape[0]
        model_input = latents.repeat(groups, 1, 1, 1)
        embeddings = text.repeat_interleave(frames, dim=0)
        extra = {}
        if control is not None:
            down, mid = self.controlnet(
                model_input, timestep, encoder_hidden_states=embeddings,
                controlnet_cond=control.repeat(groups, 1, 1, 1), conditioning_scale=control_scale, return_dict=False,
            )
            extra = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
        noise = self.unet(model_input, timestep, encoder_hidden_states=embeddings, **extra).sample
        if groups == 2:
            unconditional, conditional = noise.chunk(2)
            noise = unconditional + guidance * (conditional - unconditional)
        return noise

    def _predict_clip(self, ctx, latents, timestep, text, control, control_scale, guidance, passes, anchors):
        noise = torch.empty_like(latents)
        for number, frame_ids in enumerate(passes):
            ctx.frames, ctx.anchors = len(frame_ids), anchors
            ctx.frame_ids = torch.tensor(frame_ids)
            part = self._predict_noise(
                latents[frame_ids], timestep, text,
                None if control is None else control[frame_ids], control_scale, guidance,
            )
            # Anchors come out identical in every pass: keep the first pass's.
            keep = len(frame_ids) if number == 0 else len(frame_ids) - anchors
            noise[frame_ids[:keep]] = part[:keep]
        return noise

    # -- the edit --------------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        frames: np.ndarray,
        masks: np.ndarray,
        prompt: str,
        source_prompt: str,
        phrases: list[str],
        background_phrase: str | None = None,
        control_maps: np.ndarray | None = None,
        control_scale: float = 1.0,
        steps: int = 50,
        guidance: float = 7.5,
        seed: int = 0,
        modulation: ModulationConfig | None = None,
        window: int | None = None,
        progress: ProgressCallback = no_progress,
        cancelled: Callable[[], bool] = lambda: False,
        measure_leakage: bool = False,
        preview_every: int = 5,
        on_frame: FrameCallback | None = None,
    ) -> EditResult:
        """Edit `frames` (F, H, W, 3) uint8 at the working size; `masks` (K, F, H, W) bool, one per phrase."""
        modulation = modulation or ModulationConfig()
        height, width = frames.shape[1:3]
        latent_w, latent_h = width // self.vae_scale_factor, height // self.vae_scale_factor
        layout = RegionLayout.from_masks(masks, latent_w, latent_h)
        ctx = AttentionContext(
            layout=layout,
            token_labels=token_labels(self.tokenizer, prompt, [background_phrase, *phrases]),
            leakage=LeakageMeter(layout.num_labels) if measure_leakage else None,
        )
        install_processors(self.unet, self.controlnet, ctx)
        window = window or longest_pass(len(frames), latent_w * latent_h, self.device)
        passes, anchors = plan_passes(len(frames), window)
        control = self._control_tensor(control_maps)
        generator = torch.Generator().manual_seed(seed)

        def check_cancel() -> None:
            if cancelled():
                raise CancelledError("the edit was cancelled")

        progress(ProgressEvent("encode", 0, 1))
        latents = self.encode_frames(frames)
        progress(ProgressEvent("encode", 1, 1))

        # DDIM inversion with the source prompt: no guidance, no modulation.
        inverse = DDIMInverseScheduler.from_config(self.scheduler.config)
        inverse.set_timesteps(steps, device=self.device)
        source_text = self.encode_prompt(source_prompt)
        ctx.conditional_groups = ()
        for i, t in enumerate(inverse.timesteps):
            check_cancel()
            noise = self._predict_clip(ctx, latents, t, source_text, control, control_scale, 1.0, passes, anchors)
            latents = inverse.step(noise, t, latents).prev_sample
            progress(ProgressEvent("invert", i + 1, steps))

        # Guided sampling from the inverted latents with ST-Layout attention.
        sampler = DDIMScheduler.from_config(self.scheduler.config)
        sampler.set_timesteps(steps, device=self.device)
        target = self.encode_prompt(prompt)
        guided = guidance > 1.0
        text = torch.cat([self.encode_prompt(""), target]) if guided else target
        ctx.conditional_groups = (1,) if guided else (0,)
        for i, t in enumerate(sampler.timesteps):
            check_cancel()
            ctx.cross_strength = modulation.strength(modulation.cross, int(t), i, steps)
            ctx.self_strength = modulation.strength(modulation.self_, int(t), i, steps)
            noise = self._predict_clip(ctx, latents, t, text, control, control_scale, guidance, passes, anchors)
            stepped = sampler.step(noise, t, latents, generator=generator)
            latents = stepped.prev_sample
            preview = None
            if (i + 1) % preview_every == 0 or i + 1 == steps:
                preview = self.decode_latents(stepped.pred_original_sample[:1])[0]
            progress(ProgressEvent("edit", i + 1, steps, preview))

        progress(ProgressEvent("decode", 0, 1))
        edited = self.decode_latents(latents, on_frame)
        progress(ProgressEvent("decode", 1, 1))
        leakage = None
        if ctx.leakage is not None:
            names = [background_phrase, *phrases]
            leakage = {names[label]: share for label, share in ctx.leakage.shares().items()}
        return EditResult(edited, leakage)
