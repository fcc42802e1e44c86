"""ST-Layout attention as an attention processor for Wan's transformer blocks.

Wan's self-attention already spans every latent frame of the clip (one sequence of T·h·w tokens with 3D
RoPE): it is full-frame by construction, so the processor only adds the modulation. It keeps each layer's
own projections, RMS norms and rotary embedding (diffusers' `WanAttnProcessor` does the same steps), and:
- self-attention: with λ > 0, token pairs that share a region are pulled together and others pushed
  apart over the whole clip; a long clip's anchor latent frames attend only among themselves, at their
  own positions in the clip, so they come out the same in every pass;
- cross-attention: each region's phrase tokens (umT5 positions) are pulled into its own tokens and
  pushed out of the others, and the leakage meter and attention maps read the probabilities when on.
The pipeline steers every processor through one shared `WanAttentionContext`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from videograin.engine.method.attention import anchored_attention, layout_attention, modulated_probs, plain_attention
from videograin.engine.method.layout import RegionLayout
from videograin.engine.metrics.attention_maps import AttentionMaps
from videograin.engine.metrics.leakage import LeakageMeter


@dataclass
class WanAttentionContext:
    """What the current transformer call needs to know, set by the pipeline before each call.

    The batch holds one copy of the pass's latent video per guidance branch (unconditional first). The
    last `anchors` latent frames of a pass are anchors of a long clip."""

    layout: RegionLayout | None = None  # per latent frame, on the token grid
    token_regions: torch.Tensor | None = None  # (L,) region set of each text token
    frame_ids: torch.Tensor | None = None  # clip latent-frame index of each latent frame of the pass
    anchors: int = 0
    # The rotary embedding of the pass's tokens at their positions in the whole clip; None when the pass
    # is the whole clip in order (the transformer's own embedding is then the same).
    rotary: tuple[torch.Tensor, torch.Tensor] | None = None
    cross_groups: tuple[int, ...] = ()  # batch rows whose cross-attention is modulated (the target text)
    self_groups: tuple[int, ...] = ()  # batch rows whose self-attention is modulated
    cross_strength: float = 0.0
    self_strength: float = 0.0
    leakage: LeakageMeter | None = None
    attention_maps: AttentionMaps | None = None  # per latent frame, on the token grid
    backend: str = "auto"

    def level(self, tokens_per_frame: int, device: torch.device):
        """Region sets and size factors of the pass's tokens, flattened frame-major as Wan orders them."""
        level = self.layout.level(tokens_per_frame, device)
        ids = self.frame_ids.to(device)
        return level.regions[ids].flatten(), level.self_size[ids].flatten(), level.cross_size[ids].flatten()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's rotary embedding on (B, N, heads, d): pairs of channels turned by each position's angles."""
    even, odd = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = even * cos - odd * sin
    out[..., 1::2] = even * sin + odd * cos
    return out.type_as(x)


class WanLayoutAttnProcessor:
    """Wan attention with ST-Layout modulation where the context asks for it."""

    def __init__(self, context: WanAttentionContext) -> None:
        self.context = context

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        if attn.add_k_proj is not None:
            raise ValueError("image-to-video Wan checkpoints (an image encoder's tokens) are not supported")
        is_cross = encoder_hidden_states is not None
        source = encoder_hidden_states if is_cross else hidden_states
        query, key = attn.norm_q(attn.to_q(hidden_states)), attn.norm_k(attn.to_k(source))
        query, key, value = (x.unflatten(2, (attn.heads, -1)) for x in (query, key, attn.to_v(source)))
        if not is_cross:
            rotary = self.context.rotary or rotary_emb
            if rotary is not None:
                query, key = rotate(query, *rotary), rotate(key, *rotary)
        q, k, v = (x.transpose(1, 2) for x in (query, key, value))  # (B, heads, N, d)
        out = self._cross(q, k, v) if is_cross else self._self(q, k, v)
        out = out.transpose(1, 2).flatten(2).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))

    def _tokens_per_frame(self, tokens: int) -> int:
        return tokens // len(self.context.frame_ids)

    def _self(self, q, k, v):
        ctx = self.context
        tokens = q.shape[2]
        per_frame = self._tokens_per_frame(tokens)
        split = (len(ctx.frame_ids) - ctx.anchors) * per_frame if ctx.anchors else tokens
        if not (ctx.self_strength > 0 and ctx.layout is not None and ctx.self_groups):
            return anchored_attention(q, k, v, split, backend=ctx.backend)  # both branches in one call
        regions, size, _ = ctx.level(per_frame, q.device)
        strength = ctx.self_strength * size
        outputs = []
        for group in range(q.shape[0]):
            rows = slice(group, group + 1)
            modulated = group in ctx.self_groups
            outputs.append(anchored_attention(
                q[rows], k[rows], v[rows], split, regions if modulated else None,
                strength if modulated else None, backend=ctx.backend,
            ))
        return torch.cat(outputs)

    def _cross(self, q, k, v):
        ctx = self.context
        out = torch.empty_like(q)
        per_frame = self._tokens_per_frame(q.shape[2])
        for group in range(q.shape[0]):
            rows = slice(group, group + 1)
            if group not in ctx.cross_groups or ctx.layout is None:
                out[rows] = plain_attention(q[rows], k[rows], v[rows])
                continue
            regions, _, size = ctx.level(per_frame, q.device)
            text = ctx.token_regions.to(q.device)
            strength = ctx.cross_strength * size
            maps = ctx.attention_maps.records(per_frame) if ctx.attention_maps is not None else None
            if ctx.leakage is not None or maps is not None:
                self._measured_cross(q[rows], k[rows], v[rows], out[rows], regions, text, strength, per_frame, maps)
            elif ctx.cross_strength > 0:
                out[rows] = layout_attention(q[rows], k[rows], v[rows], regions, text, strength, backend=ctx.backend)
            else:
                out[rows] = plain_attention(q[rows], k[rows], v[rows])
        return out

    def _measured_cross(self, q, k, v, out, regions, text, strength, per_frame, maps) -> None:
        """The modulated cross-attention one latent frame at a time, its probabilities read by the leakage
        meter and the attention maps (`maps`: the grid's (h, w) while they record; a whole clip's
        probabilities would be T·h·w × L per head)."""
        ctx = self.context
        for index, start in enumerate(range(0, q.shape[2], per_frame)):
            rows = slice(start, start + per_frame)
            positive = ((regions[rows, None] & text[None, :]) != 0)[None, None]
            probs = modulated_probs(q[:, :, rows], k, positive, strength[rows][None, None, :, None])
            out[:, :, rows] = (probs @ v).to(out.dtype)
            if ctx.leakage is not None:
                ctx.leakage.add(probs, regions[None, rows], text, modulated=ctx.cross_strength > 0)
            if maps is not None:
                plain = modulated_probs(q[:, :, rows], k, positive, 0.0)
                ctx.attention_maps.add(maps, ctx.frame_ids[index : index + 1], text, probs, plain)


def install_processors(transformers, context: WanAttentionContext) -> None:
    """ST-Layout processors on every attention layer of the transformer(s) (Wan 2.2 has two experts)."""
    for transformer in transformers:
        if transformer is not None:
            transformer.set_attn_processor(WanLayoutAttnProcessor(context))
