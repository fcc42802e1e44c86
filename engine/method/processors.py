"""ST-Layout attention as a diffusers attention processor.

Installed on the UNet (and, with `controlnet_attention: full`, on the ControlNet), it replaces each
attention layer's core while keeping the layer's own projections:
- self-attention is full-frame: the frames of a batch group attend to the keys/values of all of them;
- with λ > 0, self-attention pairs that share a region are pulled together and others pushed apart, and
  cross-attention pulls each region's phrase tokens into its own pixels only (layout.py has the rules);
- at the resolutions named by the flow settings, the full-frame output then goes through attention along
  optical-flow trajectories (trajectory.py), queries and keys being the layer's own, as FLATTEN does;
- in the up blocks, queries and keys may be recorded or injected (injection.py).
The pipeline steers every processor through one shared `AttentionContext`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from videograin.engine.method.attention import layout_attention, modulated_probs, plain_attention
from videograin.engine.method.injection import FeatureInjection
from videograin.engine.method.layout import RegionLayout
from videograin.engine.method.trajectory import Trajectories, TrajectoryPlan, trajectory_attention
from videograin.engine.metrics.attention_maps import AttentionMaps
from videograin.engine.metrics.leakage import LeakageMeter


@dataclass
class AttentionContext:
    """What the current UNet call needs to know about its batch, set by the pipeline before each call.

    A batch is `groups` blocks of `frames` consecutive frames (with classifier-free guidance: the
    unconditional block, then the conditional one). Within a block, the last `anchors` frames are
    anchors of a long clip: they attend only among themselves, the other frames attend to all.
    """

    frames: int = 1
    frame_ids: torch.Tensor | None = None  # clip index of each frame in a block, for the layout
    anchors: int = 0
    cross_groups: tuple[int, ...] = ()  # blocks whose cross-attention is modulated (the target text)
    self_groups: tuple[int, ...] = ()  # blocks whose self-attention is modulated
    layout: RegionLayout | None = None
    token_regions: torch.Tensor | None = None  # (77,) region set of each prompt token
    cross_strength: float = 0.0
    self_strength: float = 0.0
    trajectories: Trajectories | None = None  # flow trajectories at the resolutions that follow them
    injection: FeatureInjection | None = None
    leakage: LeakageMeter | None = None
    attention_maps: AttentionMaps | None = None
    backend: str = "auto"
    _on_device: dict = field(default_factory=dict)

    def text_regions(self, device: torch.device) -> torch.Tensor:
        key = str(device)
        if key not in self._on_device:
            self._on_device[key] = self.token_regions.to(device)
        return self._on_device[key]

    def trajectory_plan(self, tokens_per_frame: int, device: torch.device) -> TrajectoryPlan | None:
        """How this block's tokens gather into trajectories, or None at resolutions without trajectory
        attention. Anchors keep to trajectories among anchors, so they stay the same in every pass."""
        if self.trajectories is None:
            return None
        return self.trajectories.plan(tokens_per_frame, self.frame_ids, device, anchors=self.anchors)


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    batch, tokens, channels = x.shape
    return x.view(batch, tokens, heads, channels // heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    batch, heads, tokens, dim = x.shape
    return x.transpose(1, 2).reshape(batch, tokens, heads * dim)


class STLayoutAttnProcessor:
    """Full-frame self-attention and, when `modulate`, ST-Layout modulation, trajectory attention and
    feature injection."""

    def __init__(self, context: AttentionContext, modulate: bool = True) -> None:
        self.context = context
        self.modulate = modulate

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        residual = hidden_states
        query = attn.to_q(hidden_states)
        is_cross = encoder_hidden_states is not None
        source = encoder_hidden_states if is_cross else hidden_states
        key, value = attn.to_k(source), attn.to_v(source)
        if is_cross:
            out = self._cross(query, key, value, attn.heads)
        else:
            if self.modulate and self.context.injection is not None:
                query, key = self.context.injection.exchange(attn, query, key)
            out = self._self(query, key, value, attn.heads)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor

    def _self(self, query, key, value, heads):
        ctx = self.context
        batch, tokens, channels = query.shape
        groups = batch // ctx.frames
        # Fold the frames of each block into one sequence: every frame sees every frame.
        fold = lambda x: _split_heads(x.reshape(groups, ctx.frames * tokens, channels), heads)  # noqa: E731
        q, k, v = fold(query), fold(key), fold(value)
        modulated: list[int] = []
        if self.modulate and ctx.self_strength > 0:
            level = ctx.layout.level(tokens, query.device)
            if level.modulated:
                modulated = [g for g in range(groups) if g in ctx.self_groups]
                ids = ctx.frame_ids.to(query.device)
                regions = level.regions[ids].flatten()
                strength = ctx.self_strength * level.self_size[ids].flatten()
        if not modulated:
            out = self._full_frame(q, k, v, None, None)
        elif len(modulated) == groups:
            out = self._full_frame(q, k, v, regions, strength)
        else:  # one guidance branch modulated, the other plain; slices are views, not copies
            out = torch.cat([
                self._full_frame(q[g : g + 1], k[g : g + 1], v[g : g + 1],
                                 *((regions, strength) if g in modulated else (None, None)))
                for g in range(groups)
            ])
        # FLATTEN, as the reference runs it: the layer's own queries and keys (injected ones included),
        # the full-frame output as values, along the flow trajectories.
        plan = ctx.trajectory_plan(tokens, query.device) if self.modulate else None
        if plan is not None:
            out = trajectory_attention(q, k, out, plan)
        return _merge_heads(out).reshape(batch, tokens, channels)

    def _full_frame(self, q, k, v, regions, strength):
        """Full-frame attention of folded blocks; with anchors, anchors attend only among themselves."""
        split = (self.context.frames - self.context.anchors) * q.shape[2] // self.context.frames
        if self.context.anchors and split > 0:
            everything, window, anchors = slice(None), slice(0, split), slice(split, None)
            return torch.cat(
                [
                    self._attend(q[:, :, window], k, v, regions, strength, window, everything),
                    self._attend(q[:, :, anchors], k[:, :, anchors], v[:, :, anchors], regions, strength, anchors, anchors),
                ],
                dim=2,
            )
        return self._attend(q, k, v, regions, strength, slice(None), slice(None))

    def _attend(self, q, k, v, regions, strength, rows: slice, keys: slice):
        """Self-attention of query `rows` over `keys` (slices of the folded sequence)."""
        if regions is None:
            return plain_attention(q, k, v)
        return layout_attention(q, k, v, regions[rows], regions[keys], strength[rows], backend=self.context.backend)

    def _cross(self, query, key, value, heads):
        ctx = self.context
        q, k, v = _split_heads(query, heads), _split_heads(key, heads), _split_heads(value, heads)
        out = torch.empty_like(q)
        tokens = q.shape[2]
        for group in range(q.shape[0] // ctx.frames):
            rows = slice(group * ctx.frames, (group + 1) * ctx.frames)
            conditional = self.modulate and group in ctx.cross_groups and ctx.layout is not None
            maps = ctx.attention_maps.records(tokens) if conditional and ctx.attention_maps is not None else None
            measured = ctx.leakage is not None or maps is not None
            if conditional and (ctx.cross_strength > 0 or measured):
                level = ctx.layout.level(tokens, q.device)
                ids = ctx.frame_ids.to(q.device)
                regions, size = level.regions[ids], level.cross_size[ids]
                text = ctx.text_regions(q.device)
                weight = ctx.cross_strength if level.modulated else 0.0
                strength = (weight * size)[:, None, :, None]  # (F, 1, N, 1)
                if measured:
                    # The meters need the probabilities themselves; cross-attention is small enough.
                    positive = ((regions[:, :, None] & text[None, None, :]) != 0)[:, None]
                    probs = modulated_probs(q[rows], k[rows], positive, strength)
                    out[rows] = probs @ v[rows]
                    if ctx.leakage is not None:
                        ctx.leakage.add(probs, regions, text, modulated=weight > 0)
                    if maps is not None:
                        plain = modulated_probs(q[rows], k[rows], positive, 0.0)
                        ctx.attention_maps.add(maps, ctx.frame_ids, text, probs, plain)
                    continue
                if level.modulated:
                    out[rows] = layout_attention(
                        q[rows], k[rows], v[rows], regions, text, strength[:, 0, :, 0], backend=ctx.backend
                    )
                    continue
            out[rows] = plain_attention(q[rows], k[rows], v[rows])
        return _merge_heads(out)


def install_processors(unet, controlnet, context: AttentionContext, controlnet_full_frame: bool) -> None:
    """Swap ST-Layout processors into the UNet; the ControlNet attends per frame (diffusers' own
    processor, as the published code does) or full-frame without modulation."""
    unet.set_attn_processor(STLayoutAttnProcessor(context, modulate=True))
    if controlnet is not None:
        controlnet.set_attn_processor(
            STLayoutAttnProcessor(context, modulate=False) if controlnet_full_frame else AttnProcessor2_0()
        )
