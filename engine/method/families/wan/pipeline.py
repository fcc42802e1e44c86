"""The VideoGrain edit on Wan 2.1 / 2.2 (text-to-video and VACE), as a diffusers pipeline.

1. The clip (4k + 1 frames) is encoded by Wan's causal video VAE into T = k + 1 latent frames.
2. It is inverted along the flow ODE with the source prompt: Euler steps from σ = 0 up the sampler's own
   σ schedule, the transformer's velocity evaluated at the lower end of each step (the mirror of the
   sampling step), no guidance and no modulation.
3. The target is sampled back down the same σ schedule with classifier-free guidance and ST-Layout
   attention in every block (processors.py): both legs take the same Euler steps, so with guidance 1 and
   no modulation the edit retraces the inversion and gives the source back.
4. Outside every matte the latents are the source's inverted latents at the same σ (blending).

λ over the steps: the reference's ((t − 1)/1000)^5 with t the DDPM timestep becomes the same expression of
the flow sampler's timestep t = 1000·σ, i.e. ≈ σ^5: both fall from about 1 at the first step to 0 at the
clean end, and the first `modulation.steps` steps (15 of 50 by default) are modulated, as in the reference.

VACE checkpoints: the source clip with its mattes goes in as VACE's masked-video context (the mattes are
where the model regenerates), and control maps (depth, pose, canny, your frames) take the source's place
inside the mattes, as VACE composes control with inpainting.

Long clips: passes over latent frames with anchor latent frames (method/passes.py); every pass attends at
its latent frames' own positions in the clip, and the whole clip's latents are decoded once at the end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Collection

import numpy as np
import torch
from diffusers import (
    AutoencoderKLWan,
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    WanTransformer3DModel,
    WanVACEPipeline,
)

from videograin.engine.config import ModulationConfig
from videograin.engine.method.families.wan.grid import latent_frames, latent_of_frame, union_per_latent_frame
from videograin.engine.method.families.wan.processors import WanAttentionContext, install_processors
from videograin.engine.method.layout import (
    RegionLayout,
    nearest_masks,
    phrase_token_indices,
    token_regions,
)
from videograin.engine.method.passes import (
    EditResult,
    FrameCallback,
    InversionSource,
    PassInversion,
    PassTotals,
    StepReports,
    plan_passes,
)
from videograin.engine.metrics.attention_maps import AttentionMaps
from videograin.engine.metrics.leakage import LeakageMeter
from videograin.engine.progress import ProgressCallback, ProgressEvent, no_progress

TEXT_LENGTH = 512  # umT5 tokens Wan's cross-attention reads (padding zeroed, as diffusers' Wan pipelines do)


@dataclass
class _Texts:
    invert: torch.Tensor  # (1, L, C) the source prompt
    edit: torch.Tensor  # (G, L, C): the negative prompt then the target (phrase embeddings swapped in)


class WanVideoGrainPipeline(DiffusionPipeline):
    """Components passed in, as in diffusers' `WanPipeline` / `WanVACEPipeline` (whose model folders load
    straight into it); ST-Layout behaviour comes from attention processors."""

    family = "wan"
    _optional_components = ["transformer", "transformer_2"]  # as in WanPipeline: Wan 2.2 may ship either
    model_cpu_offload_seq = "text_encoder->transformer->transformer_2->vae"

    def __init__(self, tokenizer, text_encoder, vae: AutoencoderKLWan, scheduler,
                 transformer: WanTransformer3DModel | None = None, transformer_2: WanTransformer3DModel | None = None,
                 boundary_ratio: float | None = None) -> None:
        super().__init__()
        self.register_modules(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler,
                              transformer=transformer, transformer_2=transformer_2)
        self.register_to_config(boundary_ratio=boundary_ratio)
        # The names diffusers' Wan pipelines use: VACE's context builders below read them.
        self.vae_scale_factor_temporal = 2 ** sum(vae.temperal_downsample)
        self.vae_scale_factor_spatial = 2 ** len(vae.temperal_downsample)

    @property
    def denoiser(self) -> WanTransformer3DModel:
        """The network that denoises (every family has one): its dtype is the edit's precision."""
        return self.transformer

    @property
    def is_vace(self) -> bool:
        return "vace_layers" in self.transformer.config

    @property
    def size_multiple(self) -> int:
        """Working sizes must be multiples of this: the VAE's 8× times the transformer's patch."""
        return self.vae_scale_factor_spatial * self.transformer.config.patch_size[1]

    # -- building blocks -------------------------------------------------------------------------

    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> torch.Tensor:
        inputs = self.tokenizer(prompt, padding="max_length", max_length=TEXT_LENGTH, truncation=True,
                                add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
        device = self._execution_device
        hidden = self.text_encoder(inputs.input_ids.to(device), inputs.attention_mask.to(device)).last_hidden_state
        hidden = hidden * inputs.attention_mask.to(device)[..., None]  # Wan was trained with zeros past the text
        return hidden.to(self.transformer.dtype)

    def encode_target(self, prompt: str, phrases: list[str], swap: bool) -> torch.Tensor:
        """The target prompt's embedding; with `swap`, each phrase encoded alone overwrites its tokens."""
        target = self.encode_prompt(prompt)
        for phrase in filter(None, phrases) if swap else ():  # a region with no phrase has no tokens
            positions = phrase_token_indices(self.tokenizer, prompt, phrase, TEXT_LENGTH)
            alone = phrase_token_indices(self.tokenizer, phrase, phrase, TEXT_LENGTH)
            target[0, positions] = self.encode_prompt(phrase)[0, alone]
        return target

    def _latent_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, self.vae.config.z_dim, 1, 1, 1)
        device = self._execution_device
        mean = torch.tensor(self.vae.config.latents_mean, device=device).view(shape)
        std = torch.tensor(self.vae.config.latents_std, device=device).view(shape)
        return mean, std

    @torch.no_grad()
    def encode_video(self, frames: np.ndarray) -> torch.Tensor:
        """(F, H, W, 3) uint8, F = 4k + 1 → normalised latents (1, C, k + 1, H/8, W/8) in float32."""
        pixels = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].to(self._execution_device, self.vae.dtype)
        latents = self.vae.encode(pixels / 127.5 - 1.0).latent_dist.mode().float()
        mean, std = self._latent_stats()
        return (latents - mean) / std

    @torch.no_grad()
    def decode_video(self, latents: torch.Tensor) -> np.ndarray:
        """Normalised latents (1, C, T, h, w) → (4T − 3, 8h, 8w, 3) uint8."""
        mean, std = self._latent_stats()
        pixels = self.vae.decode((latents.float() * std + mean).to(self.vae.dtype)).sample
        return ((pixels[0].float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 3, 0).cpu().numpy()

    @torch.no_grad()
    def vace_context(self, frames: np.ndarray, regenerate: np.ndarray, control_maps: np.ndarray | None) -> torch.Tensor:
        """VACE's masked-video context (1, 96, T, h, w): the clip kept outside the mattes and regenerated
        inside them, where control maps (when given) stand in for the source, and the mattes themselves."""
        device = self._execution_device
        video = frames if control_maps is None else np.where(regenerate[..., None], control_maps, frames)
        video = torch.from_numpy(video).permute(3, 0, 1, 2)[None].to(device, torch.float32) / 127.5 - 1.0
        mask = torch.from_numpy(regenerate).to(device, torch.float32)[None, None].expand(1, 3, -1, -1, -1)
        # diffusers' own builders of VACE's inactive/reactive latents and the mask folded into channels
        # ([[]]: no reference images, as its preprocessing hands them on).
        latents = WanVACEPipeline.prepare_video_latents(self, video, mask, [[]], None, device)
        masks = WanVACEPipeline.prepare_masks(self, mask, [[]], None)
        return torch.cat([latents, masks.to(latents.dtype)], dim=1).to(self.transformer.dtype)

    def _sampler(self, steps: int) -> FlowMatchEulerDiscreteScheduler:
        """Euler steps over the checkpoint's σ schedule (its flow shift), for both legs of the edit."""
        config = self.scheduler.config
        shift = config.get("flow_shift", config.get("shift", 1.0))
        sampler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=config.get("num_train_timesteps", 1000), shift=shift)
        sampler.set_timesteps(steps, device=self._execution_device)
        return sampler

    def _velocity(self, latents, timestep, text, guidance, context, context_scale) -> torch.Tensor:
        """The transformer's velocity for one pass, both guidance branches in one batch when `text` has two."""
        groups = text.shape[0]
        boundary = self.config.boundary_ratio
        expert = self.transformer
        if boundary is not None and self.transformer_2 is not None and timestep < boundary * 1000:
            expert = self.transformer_2  # Wan 2.2: the low-noise expert
        extra = {}
        if context is not None:
            layers = len(expert.config.vace_layers)
            extra = {"control_hidden_states": context.expand(groups, -1, -1, -1, -1),
                     "control_hidden_states_scale": torch.full((layers,), context_scale, device=context.device)}
        velocity = expert(
            hidden_states=latents.to(expert.dtype).expand(groups, -1, -1, -1, -1),
            timestep=timestep.expand(groups), encoder_hidden_states=text, return_dict=False, **extra,
        )[0].float()
        if groups == 2:
            unconditional, conditional = velocity.chunk(2)
            velocity = unconditional + guidance * (conditional - unconditional)
        return velocity

    # -- one pass ----------------------------------------------------------------------------------

    def invert_pass(self, ctx: WanAttentionContext, latents: torch.Tensor, text: torch.Tensor, context, context_scale,
                    steps: int, step_done: Callable[[int], None]) -> PassInversion:
        """Up the σ schedule from the clean latents with the source prompt; `source[i]` holds the latents at
        the sampler's σ_i (`source[steps]` the clean ones), for blending."""
        sigmas = self._sampler(steps).sigmas.tolist()
        ctx.cross_groups, ctx.self_groups, ctx.cross_strength, ctx.self_strength = (), (), 0.0, 0.0
        source = {steps: latents}
        for done, i in enumerate(reversed(range(steps))):
            lower = torch.tensor(sigmas[i + 1] * 1000.0, device=latents.device)
            velocity = self._velocity(latents, lower, text, None, context, context_scale)
            latents = latents + (sigmas[i] - sigmas[i + 1]) * velocity
            source[i] = latents
            step_done(done)
        return PassInversion(latents, source)

    def edit_pass(self, ctx: WanAttentionContext, inversion: PassInversion, texts: _Texts, context, context_scale,
                  steps: int, guidance: float, modulation: ModulationConfig, keep: torch.Tensor | None,
                  step_done: Callable[[int, torch.Tensor], None]) -> torch.Tensor:
        """Guided sampling down the σ schedule with ST-Layout attention; `keep` (1, 1, T, h, w) is 1 where
        the edit is kept, 0 where the source's latents at the same σ are blended in."""
        sampler = self._sampler(steps)
        guided = texts.edit.shape[0] == 2
        ctx.cross_groups = (1,) if guided else (0,)
        # The reference modulates self-attention in one branch; with one branch there is only that one.
        ctx.self_groups = {"unconditional": (0,), "conditional": (1,) if guided else (0,),
                           "both": (0, 1) if guided else (0,)}[modulation.self_branch]
        latents = inversion.latents
        for i, t in enumerate(sampler.timesteps):
            if ctx.attention_maps is not None:
                ctx.attention_maps.active = i < modulation.modulated_steps(steps)
            ctx.cross_strength = modulation.strength(modulation.cross, int(t), i, steps)
            ctx.self_strength = modulation.strength(modulation.self_, int(t), i, steps)
            velocity = self._velocity(latents, t, texts.edit, guidance, context, context_scale)
            predicted = latents - sampler.sigmas[i] * velocity  # the clean latents this step points at
            latents = sampler.step(velocity, t, latents).prev_sample
            if keep is not None:
                latents = latents * keep + inversion.source[i + 1] * (1 - keep)
            step_done(i, predicted)
        if ctx.attention_maps is not None:
            ctx.attention_maps.active = False
        return latents

    def preview_image(self, predicted: torch.Tensor) -> np.ndarray:
        """The first frame of the predicted clean latents, through the VAE (one latent frame is cheap)."""
        return self.decode_video(predicted[:, :, :1])[0]

    def _rotary_at(self, ids: list[int], count: int, height: int, width: int):
        """The rotary embedding of a pass's latent frames at their positions in the whole clip (None when the
        pass is the whole clip in order: the transformer's own is then the same)."""
        if ids == list(range(count)):
            return None
        shape = torch.empty(1, 1, count, height, width, device="meta")  # the rope reads only the shape
        device = self._execution_device  # the rope's tables stay on the CPU while the model is offloaded
        return tuple(f.unflatten(1, (count, -1))[:, ids].flatten(1, 2).to(device) for f in self.transformer.rope(shape))

    # -- the edit --------------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self, frames: np.ndarray, masks: np.ndarray, prompt: str, source_prompt: str, phrases: list[str],
        background_phrase: str | None = None, control_maps: np.ndarray | None = None, control_scale: float = 1.0,
        steps: int = 50, guidance: float = 5.0, seed: int = 0, modulation: ModulationConfig | None = None,
        window: int | None = None, negative_prompt: str = "", phrase_embeddings: bool = True, blend: bool = True,
        inversions: InversionSource | None = None, passes: Collection[int] | None = None,
        progress: ProgressCallback = no_progress, cancelled: Callable[[], bool] = lambda: False,
        measure_leakage: bool = False, attention_maps: bool = False, preview_every: int = 5,
        on_frame: FrameCallback | None = None,
    ) -> EditResult:
        """Edit `frames` (F, H, W, 3) uint8 at the working size, F = 4k + 1 (grid.pad_clip pads a clip);
        `masks` (K, F, H, W) bool, one per phrase. `window`: clip frames per pass (passes hold whole latent
        frames). The flow sampler is deterministic: `seed` changes nothing."""
        if control_maps is not None and not self.is_vace:
            raise ValueError("control maps need a VACE checkpoint (WanVACEPipeline); this Wan model takes none")
        modulation = modulation or ModulationConfig()
        device, count = self._execution_device, latent_frames(len(frames))
        union = union_per_latent_frame(masks)
        grid = (frames.shape[1] // self.size_multiple, frames.shape[2] // self.size_multiple)
        ctx = WanAttentionContext(
            layout=RegionLayout(union, grid[1], grid[0], background_is_region=bool(background_phrase),
                                rules=modulation.layout, size=modulation.size, levels=(1,), modulate_finest=True),
            token_regions=token_regions(self.tokenizer, prompt, phrases, background_phrase, TEXT_LENGTH),
            leakage=LeakageMeter(len(phrases) + 1) if measure_leakage else None,
            attention_maps=AttentionMaps(len(phrases) + 1, count, [grid]) if attention_maps else None,
        )
        install_processors((self.transformer, self.transformer_2), ctx)
        plan, anchors = plan_passes(count, count if window is None else max(2, latent_frames(window)))
        if passes is not None and set(passes) != set(range(len(plan))):
            raise ValueError("a Wan edit decodes its whole clip at once: its passes run in one process")
        kept = [ids if number == 0 else ids[: len(ids) - anchors] for number, ids in enumerate(plan)]
        target = self.encode_target(prompt, [*phrases, *([background_phrase] if background_phrase else [])],
                                    phrase_embeddings)
        texts = _Texts(self.encode_prompt(source_prompt),
                       torch.cat([self.encode_prompt(negative_prompt), target]) if guidance > 1.0 else target)

        reports = StepReports(progress, cancelled, steps, len(plan), preview_every, self.preview_image)
        progress(ProgressEvent("encode", 0, len(frames)))
        clean = self.encode_video(frames)
        progress(ProgressEvent("encode", len(frames), len(frames)))
        context = None
        if self.is_vace:  # the mattes come at the source's size: VACE's mask is at the working size
            regenerate = nearest_masks(masks, frames.shape[2], frames.shape[1]).any(0)
            context = self.vace_context(frames, regenerate, control_maps)
        keep = None
        if blend and not background_phrase:  # a background with a phrase is edited, not kept
            inside = nearest_masks(union, clean.shape[-1], clean.shape[-2]).any(0)
            keep = torch.from_numpy(inside).to(device, torch.float32)[None, None]
        final, cached = torch.empty_like(clean), 0
        for number, ids in enumerate(plan):
            ctx.frame_ids, ctx.anchors = torch.tensor(ids), anchors
            ctx.rotary = self._rotary_at(ids, count, *clean.shape[-2:])
            pass_context = None if context is None else context[:, :, ids]

            reports.check_cancel()
            compute = lambda: self.invert_pass(  # noqa: E731
                ctx, clean[:, :, ids], texts.invert, pass_context, control_scale, steps, reports.inverted(number))
            if inversions is None:
                inversion = compute()
            else:
                inversion, hit = inversions({"pass_frames": ids, "pass_anchors": anchors}, compute)
                cached += hit
            latents = self.edit_pass(ctx, inversion, texts, pass_context, control_scale, steps, guidance, modulation,
                                     None if keep is None else keep[:, :, ids], reports.edited(number))
            final[:, :, kept[number]] = latents[:, :, : len(kept[number])]
        progress(ProgressEvent("decode", 0, len(frames)))
        decoded = self.decode_video(final)
        for index, image in enumerate(decoded if on_frame is not None else ()):
            on_frame(index, image)
        progress(ProgressEvent("decode", len(frames), len(frames)))
        totals = PassTotals([background_phrase, *phrases], ctx.leakage, ctx.attention_maps, cached)
        leakage, maps = totals.measurements()
        if maps is not None:  # each clip frame shows its latent frame's map
            held = [latent_of_frame(frame) for frame in range(len(frames))]
            maps = {phrase: (modulated[held], plain[held]) for phrase, (modulated, plain) in maps.items()}
        return EditResult(decoded, leakage, cached, attention_maps=maps, totals=totals,
                          leakage_whole_run=totals.whole_run_leakage())
