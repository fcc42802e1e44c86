"""The VideoGrain edit as a diffusers pipeline: DDIM inversion of the clip, then a guided, ControlNet-
conditioned DDIM sampling with ST-Layout attention, all frames of a pass denoised as one batch.

What the published code does beyond the attention equation, and this pipeline with it (each has a
setting that turns it off, see config.py): each phrase's embedding is encoded alone and overwrites its
tokens in the target prompt's embedding; the ControlNet attends per frame and its unconditional branch
reads the negative prompt; the up blocks' features recorded while inverting are injected into the first
`inject_step` edit steps; outside every region the latents are the source's at the same noise level
(blending); and at the resolutions the flow settings name, self-attention is followed by attention along
optical-flow trajectories.

Long clips: when the clip has more frames than one pass holds (`window`), a few anchor frames, evenly
spread over the clip, join every pass. Each pass's frames attend to their own frames and the anchors;
anchors attend only among themselves, so they are identical in every pass and tie all passes to the
same appearance. Passes are therefore independent: each is inverted, edited and decoded in turn, and
its frames are handed on (in clip order) while the next pass runs. `passes=` runs only some of them (on
another process or machine, serving/ray_pool.py); their results carry what merging needs (`merge_passes`).
"""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass, field
from typing import Callable, Collection, Mapping, Sequence

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

from videograin.engine.config import REFERENCE_NEGATIVE_PROMPT, ModulationConfig
from videograin.engine.errors import CancelledError
from videograin.engine.method.attention import CHUNK_BYTES
from videograin.engine.method.injection import FeatureInjection, Features
from videograin.engine.method.layout import (
    BACKGROUND_BIT,
    RegionLayout,
    level_size,
    phrase_token_indices,
    token_regions,
)
from videograin.engine.method.processors import AttentionContext, install_processors
from videograin.engine.method.trajectory import Trajectories
from videograin.engine.metrics.attention_maps import LEVELS as MAP_LEVELS
from videograin.engine.metrics.attention_maps import AttentionMaps
from videograin.engine.metrics.leakage import LeakageMeter
from videograin.engine.progress import ProgressCallback, ProgressEvent, no_progress

VAE_BATCH = 4  # frames per VAE call: bounds memory at high resolution
# Step previews skip the VAE: a linear map from SD-1.x latents to RGB (the approximation image tools use
# for live previews, e.g. ComfyUI's latent2rgb factors), at the latent size, doubled.
LATENT_RGB = torch.tensor([[0.3512, 0.2297, 0.3227], [0.3250, 0.4974, 0.2350],
                           [-0.2829, 0.1762, 0.2721], [-0.2120, -0.2616, -0.7177]])
PREVIEW_SCALE = 2
FrameCallback = Callable[[int, np.ndarray], None]


@dataclass
class EditResult:
    frames: np.ndarray  # (F, H, W, 3) uint8 at the working size
    leakage: dict[str, float] | None  # per phrase, when measured: over the modulated steps and levels
    cached_passes: int = 0  # passes whose inversion came from the inversion cache
    warp_error: float | None = None  # ×10³, under the source's flow (metrics/warp.py), when measured
    # phrase -> (modulated, plain) cross-attention maps (F, h, w) in [0, 1] (metrics/attention_maps.py)
    attention_maps: dict[str, tuple[np.ndarray, np.ndarray]] | None = None
    indices: list[int] | None = None  # clip index of each frame when only some passes ran; None: all, in order
    totals: PassTotals | None = None  # the sums behind the measurements, for `merge_passes`
    leakage_whole_run: dict[str, float] | None = None  # per phrase, over every step and level (metrics/leakage.py)


@dataclass
class PassTotals:
    """What an edit's measurements are summed from: results of passes run apart add up (`+`)."""

    names: list[str | None]  # region bit -> phrase (bit 0: the background phrase, or None)
    leakage: LeakageMeter | None = None
    attention_maps: AttentionMaps | None = None
    cached_passes: int = 0

    def __add__(self, other: PassTotals) -> PassTotals:
        return PassTotals(
            self.names, None if self.leakage is None else self.leakage + other.leakage,
            None if self.attention_maps is None else self.attention_maps + other.attention_maps,
            self.cached_passes + other.cached_passes,
        )

    def measurements(self) -> tuple[dict[str, float] | None, dict[str, tuple[np.ndarray, np.ndarray]] | None]:
        """Leakage per phrase and attention maps per phrase, as `EditResult` has them."""
        leakage = maps = None
        if self.leakage is not None:
            leakage = {self.names[bit]: share for bit, share in self.leakage.shares().items()}
        if self.attention_maps is not None:
            modulated, plain = (_unit(m) for m in self.attention_maps.result())
            maps = {name: (modulated[bit], plain[bit]) for bit, name in enumerate(self.names) if name}
        return leakage, maps

    def whole_run_leakage(self) -> dict[str, float] | None:
        """Leakage per phrase over every step and level, beside `measurements`' modulated figure."""
        if self.leakage is None:
            return None
        return {self.names[bit]: share for bit, share in self.leakage.shares("whole_run").items()}


def merge_passes(frames: Mapping[int, np.ndarray], totals: Sequence[PassTotals]) -> EditResult:
    """One result from passes run apart (`passes=`) that together make the clip: their frames by clip
    index, and their totals, summed before leakage and attention maps are normalised, as in one run."""
    summed = functools.reduce(operator.add, totals)
    leakage, maps = summed.measurements()
    return EditResult(np.stack([frames[i] for i in range(len(frames))]), leakage, summed.cached_passes,
                      attention_maps=maps, totals=summed, leakage_whole_run=summed.whole_run_leakage())


@dataclass
class PassInversion:
    """What inverting one pass yields that its edit reuses."""

    latents: torch.Tensor  # (F, 4, h, w): the pass's frames inverted to the first edit timestep
    # noise level (timestep; 0 = the clean encoding) -> the pass's source latents there, for blending
    source: dict[int, torch.Tensor] = field(default_factory=dict)
    features: dict[int, Features] = field(default_factory=dict)  # timestep -> recorded injection features


# Given a pass (its frame ids and anchor count) and the function that inverts it, an inversion and
# whether it was found rather than computed.
InversionSource = Callable[[dict, Callable[[], PassInversion]], tuple[PassInversion, bool]]


@dataclass
class _Texts:
    """Text embeddings, one per guidance branch (unconditional first)."""

    invert: torch.Tensor  # the source prompt, alone: inversion needs no guidance
    record: torch.Tensor  # "" + the source prompt: inversion steps that record both branches' features
    edit: torch.Tensor  # UNet: "" + the target prompt (phrase embeddings swapped in)
    controlnet_edit: torch.Tensor  # ControlNet: the negative prompt + the target prompt as written


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

    def encode_target(self, prompt: str, phrases: list[str], swap: bool) -> torch.Tensor:
        """The target prompt's embedding; with `swap`, each phrase encoded alone overwrites its tokens
        (as the published code does), so a region's words are not coloured by the rest of the prompt."""
        target = self.encode_prompt(prompt)
        if swap:
            for phrase in phrases:
                positions = phrase_token_indices(self.tokenizer, prompt, phrase)
                alone = self.encode_prompt(phrase)
                target[0, positions] = alone[0, 1 : 1 + len(positions)]
        return target

    @torch.no_grad()
    def encode_frames(self, frames: np.ndarray, needed: set[int] | None = None) -> torch.Tensor:
        """Latents of the frames, `VAE_BATCH` at a time. With `needed`, only the batches holding those
        frames are encoded (the others are left zero): the batches are the whole clip's, so these latents
        are the whole clip's bit for bit."""
        sections = np.array_split(np.arange(len(frames)), max(1, -(-len(frames) // VAE_BATCH)))
        encoded = {}
        for number, ids in enumerate(sections):
            if needed is None or not needed.isdisjoint(ids.tolist()):
                batch = frames[ids[0] : ids[-1] + 1]
                pixels = torch.from_numpy(batch).permute(0, 3, 1, 2).to(self.device, self.vae.dtype) / 127.5 - 1.0
                encoded[number] = self.vae.encode(pixels).latent_dist.mean * self.vae.config.scaling_factor
        blank = torch.zeros_like(next(iter(encoded.values()))[:1])
        latents = [encoded.get(number, blank.expand(len(ids), -1, -1, -1)) for number, ids in enumerate(sections)]
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

    def _predict_noise(self, latents, timestep, text, controlnet_text, control, control_scale, guidance) -> torch.Tensor:
        """ε for one pass: `text` / `controlnet_text` hold one embedding per group (unconditional first).
        With two groups and `guidance` None, the conditional group's ε alone (inversion steps that only
        record the unconditional branch's features)."""
        groups, frames = text.shape[0], latents.shape[0]
        model_input = latents.repeat(groups, 1, 1, 1)
        embeddings = text.repeat_interleave(frames, dim=0)
        extra = {}
        if control is not None:
            down, mid = self.controlnet(
                model_input, timestep, encoder_hidden_states=controlnet_text.repeat_interleave(frames, dim=0),
                controlnet_cond=control.repeat(groups, 1, 1, 1), conditioning_scale=control_scale, return_dict=False,
            )
            extra = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
        noise = self.unet(model_input, timestep, encoder_hidden_states=embeddings, **extra).sample
        if groups == 2:
            unconditional, conditional = noise.chunk(2)
            noise = conditional if guidance is None else unconditional + guidance * (conditional - unconditional)
        return noise

    # -- one pass ----------------------------------------------------------------------------------

    def invert_pass(
        self, ctx: AttentionContext, latents: torch.Tensor, texts: _Texts, control: torch.Tensor | None,
        control_scale: float, steps: int, record: set[int], keep_source: bool, step_done: Callable[[int], None],
    ) -> PassInversion:
        """DDIM inversion of one pass with the source prompt: no guidance, no modulation. Timesteps in
        `record` also run the unconditional branch and record injection features."""
        inverse = DDIMInverseScheduler.from_config(self.scheduler.config)
        inverse.set_timesteps(steps, device=self.device)
        ctx.cross_groups, ctx.self_groups, ctx.cross_strength, ctx.self_strength = (), (), 0.0, 0.0
        result = PassInversion(latents, {0: latents} if keep_source else {})
        for i, t in enumerate(inverse.timesteps):
            recording = ctx.injection is not None and int(t) in record
            if recording:
                ctx.injection.record(int(t))
            text = texts.record if recording else texts.invert
            noise = self._predict_noise(latents, t, text, text, control, control_scale, None)
            latents = inverse.step(noise, t, latents).prev_sample
            if keep_source:
                result.source[int(t)] = latents
            step_done(i)
        if ctx.injection is not None:
            result.features = ctx.injection.recorded
            ctx.injection.recorded = {}
            ctx.injection.idle()
        result.latents = latents
        return result

    def edit_pass(
        self, ctx: AttentionContext, inversion: PassInversion, texts: _Texts, control: torch.Tensor | None,
        control_scale: float, steps: int, guidance: float, modulation: ModulationConfig, inject_step: int,
        keep: torch.Tensor | None, generator: torch.Generator, step_done: Callable[[int, torch.Tensor], None],
    ) -> torch.Tensor:
        """Guided sampling of one pass from its inverted latents with ST-Layout attention; `keep` (F, 1,
        h, w) is 1 where the edit is kept, 0 where the source's latents are blended in."""
        sampler = DDIMScheduler.from_config(self.scheduler.config)
        sampler.set_timesteps(steps, device=self.device)
        guided = guidance > 1.0
        ctx.cross_groups = (1,) if guided else (0,)
        ctx.self_groups = {
            "unconditional": (0,) if guided else (),
            "conditional": (1,) if guided else (0,),
            "both": (0, 1) if guided else (0,),
        }[modulation.self_branch]
        mapped_steps = modulation.modulated_steps(steps)
        if ctx.injection is not None:
            ctx.injection.recorded = inversion.features
        latents = inversion.latents
        timesteps = [int(t) for t in sampler.timesteps]
        for i, t in enumerate(sampler.timesteps):
            ctx.cross_strength = modulation.strength(modulation.cross, int(t), i, steps)
            ctx.self_strength = modulation.strength(modulation.self_, int(t), i, steps)
            if ctx.injection is not None:
                ctx.injection.inject(int(t)) if i < inject_step else ctx.injection.idle()
            if ctx.attention_maps is not None:
                ctx.attention_maps.active = i < mapped_steps
            noise = self._predict_noise(latents, t, texts.edit, texts.controlnet_edit, control, control_scale, guidance)
            stepped = sampler.step(noise, t, latents, generator=generator)
            latents = stepped.prev_sample
            if keep is not None:
                source = inversion.source[timesteps[i + 1] if i + 1 < steps else 0]
                latents = latents * keep + source * (1 - keep)
            step_done(i, stepped.pred_original_sample)
        if ctx.injection is not None:
            ctx.injection.recorded = {}
            ctx.injection.idle()
        if ctx.attention_maps is not None:
            ctx.attention_maps.active = False
        return latents

    @staticmethod
    def preview_image(latents: torch.Tensor) -> np.ndarray:
        """A quick RGB look at one frame's latents (4, h, w), without the VAE: (2h, 2w, 3) uint8."""
        rgb = torch.einsum("chw,cr->hwr", latents.float().cpu(), LATENT_RGB)
        image = ((rgb.clamp(-1, 1) + 1) * 127.5).round().byte().numpy()
        return image.repeat(PREVIEW_SCALE, 0).repeat(PREVIEW_SCALE, 1)

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
        negative_prompt: str = REFERENCE_NEGATIVE_PROMPT,
        phrase_embeddings: bool = True,
        controlnet_attention: str = "frame",
        inject_step: int = 0,
        blend: bool = True,
        trajectories: Trajectories | None = None,
        inversions: InversionSource | None = None,
        passes: Collection[int] | None = None,
        progress: ProgressCallback = no_progress,
        cancelled: Callable[[], bool] = lambda: False,
        measure_leakage: bool = False,
        attention_maps: bool = False,
        preview_every: int = 5,
        on_frame: FrameCallback | None = None,
    ) -> EditResult:
        """Edit `frames` (F, H, W, 3) uint8 at the working size; `masks` (K, F, H, W) bool, one per phrase.

        `trajectories`: the clip's flow trajectories at the resolutions that get trajectory attention
        (trajectory.py). `inversions`: where a pass's inversion may come from instead of being computed
        (the inversion cache). `passes`: run only these passes (numbers in `plan_passes` order; pass 0
        brings the anchors' frames) and return their frames with their clip `indices`."""
        modulation = modulation or ModulationConfig()
        height, width = frames.shape[1:3]
        latent_w, latent_h = width // self.vae_scale_factor, height // self.vae_scale_factor
        layout = RegionLayout(
            masks, latent_w, latent_h, background_is_region=bool(background_phrase), rules=modulation.layout,
            size=modulation.size,
        )
        ctx = AttentionContext(
            layout=layout,
            token_regions=token_regions(self.tokenizer, prompt, phrases, background_phrase),
            trajectories=trajectories,
            leakage=LeakageMeter(len(phrases) + 1) if measure_leakage else None,
            attention_maps=AttentionMaps(
                len(phrases) + 1, len(frames), [level_size(latent_h, latent_w, n) for n in MAP_LEVELS]
            ) if attention_maps else None,
        )
        install_processors(self.unet, self.controlnet, ctx, controlnet_full_frame=controlnet_attention == "full")
        window = window or longest_pass(len(frames), latent_w * latent_h, self.device)
        plan, anchors = plan_passes(len(frames), window)
        # Anchors come out identical in every pass: the first pass's are kept.
        kept = [ids if number == 0 else ids[: len(ids) - anchors] for number, ids in enumerate(plan)]
        chosen = range(len(plan)) if passes is None else sorted(set(passes))
        if not set(chosen) <= set(range(len(plan))):
            raise ValueError(f"passes {sorted(passes)} are not among the clip's {len(plan)} passes")
        indices = sorted(index for number in chosen for index in kept[number])
        control = self._control_tensor(control_maps)
        guided = guidance > 1.0
        phrases_all = [*phrases, *([background_phrase] if background_phrase else [])]
        source_text = self.encode_prompt(source_prompt)
        unconditional = self.encode_prompt("")
        target = self.encode_target(prompt, phrases_all, phrase_embeddings)
        texts = _Texts(
            invert=source_text,
            record=torch.cat([unconditional, source_text]) if guided else source_text,
            edit=torch.cat([unconditional, target]) if guided else target,
            controlnet_edit=torch.cat([self.encode_prompt(negative_prompt), self.encode_prompt(prompt)]) if guided
            else self.encode_prompt(prompt),
        )
        sampler = DDIMScheduler.from_config(self.scheduler.config)
        sampler.set_timesteps(steps)
        record = {int(t) for t in sampler.timesteps[:inject_step]}

        def check_cancel() -> None:
            if cancelled():
                raise CancelledError("the edit was cancelled")

        encoded: list[torch.Tensor] = []
        needed = None if passes is None else {i for n in chosen for i in plan[n]}

        def latents() -> torch.Tensor:
            """The latents of the frames the chosen passes hold, encoded when a pass first needs inverting
            (never when all are cached)."""
            if not encoded:
                progress(ProgressEvent("encode", 0, len(frames)))
                encoded.append(self.encode_frames(frames, needed))
                progress(ProgressEvent("encode", len(frames), len(frames)))
            return encoded[0]

        keep = None
        if blend and not background_phrase:  # a background with a phrase is edited, not kept
            finest = layout.level(latent_w * latent_h, self.device)
            # Cells in some matte; the background's bit is set on the rest under `area` rules.
            keep = ((finest.regions & ~BACKGROUND_BIT) != 0).to(self.unet.dtype)
            keep = keep.reshape(len(frames), 1, latent_h, latent_w)

        decoded = _InOrderDecoder(self, indices, on_frame, progress)
        cached_passes = 0
        ctx.injection = FeatureInjection(self.unet) if inject_step else None
        try:
            for number in chosen:
                frame_ids = plan[number]
                ctx.frames, ctx.anchors, ctx.frame_ids = len(frame_ids), anchors, torch.tensor(frame_ids)
                pass_control = None if control is None else control[frame_ids]

                def inverted(i: int) -> None:
                    check_cancel()
                    progress(ProgressEvent("invert", i + 1, steps, None, number, len(plan)))

                def edited(i: int, predicted: torch.Tensor) -> None:
                    check_cancel()
                    preview = None
                    if number == 0 and (i == 0 or (i + 1) % preview_every == 0 or i + 1 == steps):
                        preview = self.preview_image(predicted[0])
                    progress(ProgressEvent("edit", i + 1, steps, preview, number, len(plan)))

                check_cancel()
                compute = lambda: self.invert_pass(  # noqa: E731
                    ctx, latents()[frame_ids], texts, pass_control, control_scale, steps, record,
                    keep is not None or inversions is not None, inverted,  # a cached inversion serves every edit
                )
                if inversions is None:
                    inversion = compute()
                else:
                    inversion, hit = inversions({"pass_frames": frame_ids, "pass_anchors": anchors}, compute)
                    if hit:
                        cached_passes += 1
                        progress(ProgressEvent("invert", steps, steps, None, number, len(plan)))
                # A generator per pass, so that passes run apart draw what they draw in one run.
                generator = torch.Generator().manual_seed(seed)
                result = self.edit_pass(
                    ctx, inversion, texts, pass_control, control_scale, steps, guidance, modulation, inject_step,
                    None if keep is None else keep[frame_ids], generator, edited,
                )
                decoded.add(kept[number], result[: len(kept[number])])
        finally:
            if ctx.injection is not None:
                ctx.injection.remove()
        totals = PassTotals([background_phrase, *phrases], ctx.leakage, ctx.attention_maps, cached_passes)
        leakage, maps = totals.measurements()
        return EditResult(decoded.frames(), leakage, cached_passes, attention_maps=maps,
                          indices=None if passes is None else indices, totals=totals,
                          leakage_whole_run=totals.whole_run_leakage())


def _unit(maps: torch.Tensor) -> np.ndarray:
    """Each phrase's maps over the clip scaled into [0, 1] together, so frames compare."""
    peak = maps.flatten(1).amax(1).clamp(min=1e-12)[:, None, None, None]
    return (maps / peak).numpy()


class _InOrderDecoder:
    """Decodes finished latents in clip order, `VAE_BATCH` consecutive frames of `indices` (the frames
    the run makes) at a time, so frames reach `on_frame` in index order as soon as they can. For a whole
    clip these are the batches a whole-clip decode would use."""

    def __init__(self, pipe: VideoGrainPipeline, indices: list[int], on_frame: FrameCallback | None,
                 progress: ProgressCallback) -> None:
        self.pipe, self.indices, self.on_frame, self.progress = pipe, indices, on_frame, progress
        self.count = len(indices)
        self.pending: dict[int, torch.Tensor] = {}
        self.images: list[np.ndarray] = []

    def add(self, frame_ids: list[int], latents: torch.Tensor) -> None:
        self.pending.update(zip(frame_ids, latents))
        # The sampler hands latents out channels-last; the VAE's kernels depend on the memory format.
        layout = torch.channels_last if latents.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        while len(self.images) < self.count:
            chunk = self.indices[len(self.images) : len(self.images) + VAE_BATCH]
            if any(i not in self.pending for i in chunk):
                return
            batch = torch.stack([self.pending.pop(i) for i in chunk]).contiguous(memory_format=layout)
            on_frame = None if self.on_frame is None else lambda index, image: self.on_frame(chunk[index], image)
            self.images.extend(self.pipe.decode_latents(batch, on_frame))
            self.progress(ProgressEvent("decode", len(self.images), self.count))

    def frames(self) -> np.ndarray:
        return np.stack(self.images)
