"""ST-Layout attention as a diffusers attention processor.

Installed on the UNet (modulated) and the ControlNet (full-frame only), it replaces each attention
layer's core while keeping the layer's own projections:
- self-attention is full-frame: the frames of a batch group attend to the keys/values of all of them;
- with λ > 0, self-attention pairs of the same region label are pulled together and others pushed
  apart, and cross-attention pulls each region's phrase tokens into its own pixels only.
The pipeline steers every processor through one shared `AttentionContext`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from videograin.engine.method.attention import layout_attention, modulated_probs, plain_attention
from videograin.engine.method.layout import RegionLayout
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
    conditional_groups: tuple[int, ...] = ()  # blocks whose text is the target prompt
    layout: RegionLayout | None = None
    token_labels: torch.Tensor | None = None  # (77,) region label of each prompt token
    cross_strength: float = 0.0
    self_strength: float = 0.0
    leakage: LeakageMeter | None = None
    backend: str = "auto"
    _token_labels_on: dict = field(default_factory=dict)

    def level(self, tokens_per_frame: int, device: torch.device):
        level = self.layout.level(tokens_per_frame, device)
        ids = self.frame_ids.to(device)
        return level.labels[ids], level.size[ids]

    def text_labels(self, device: torch.device) -> torch.Tensor:
        key = str(device)
        if key not in self._token_labels_on:
            self._token_labels_on[key] = self.token_labels.to(device)
        return self._token_labels_on[key]


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    batch, tokens, channels = x.shape
    return x.view(batch, tokens, heads, channels // heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    batch, heads, tokens, dim = x.shape
    return x.transpose(1, 2).reshape(batch, tokens, heads * dim)


class STLayoutAttnProcessor:
    """Full-frame self-attention and, when `modulate`, ST-Layout modulation of self and cross attention."""

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
        labels = strength = None
        if self.modulate and ctx.self_strength > 0:
            labels, size = ctx.level(tokens, query.device)
            labels, strength = labels.flatten(), ctx.self_strength * size.flatten()
        split = (ctx.frames - ctx.anchors) * tokens
        if ctx.anchors and split > 0:
            everything, window, anchors = slice(None), slice(0, split), slice(split, None)
            out = torch.cat(
                [
                    self._attend(q[:, :, window], k, v, labels, strength, window, everything),
                    self._attend(q[:, :, anchors], k[:, :, anchors], v[:, :, anchors], labels, strength, anchors, anchors),
                ],
                dim=2,
            )
        else:
            out = self._attend(q, k, v, labels, strength, slice(None), slice(None))
        return _merge_heads(out).reshape(batch, tokens, channels)

    def _attend(self, q, k, v, labels, strength, rows: slice, keys: slice):
        """Self-attention of query `rows` over `keys` (slices of the folded sequence)."""
        if labels is None:
            return plain_attention(q, k, v)
        return layout_attention(q, k, v, labels[rows], labels[keys], strength[rows], backend=self.context.backend)

    def _cross(self, query, key, value, heads):
        ctx = self.context
        q, k, v = _split_heads(query, heads), _split_heads(key, heads), _split_heads(value, heads)
        out = torch.empty_like(q)
        tokens = q.shape[2]
        for group in range(q.shape[0] // ctx.frames):
            rows = slice(group * ctx.frames, (group + 1) * ctx.frames)
            conditional = self.modulate and group in ctx.conditional_groups and ctx.layout is not None
            if conditional and (ctx.cross_strength > 0 or ctx.leakage is not None):
                labels, size = ctx.level(tokens, q.device)
                text = ctx.text_labels(q.device)
                strength = (ctx.cross_strength * size)[:, None, :, None]  # (F, 1, N, 1)
                if ctx.leakage is not None:
                    # The meter needs the probabilities themselves; cross-attention is small enough.
                    positive = (labels[:, :, None] == text[None, None, :])[:, None]
                    probs = modulated_probs(q[rows], k[rows], positive, strength)
                    out[rows] = probs @ v[rows]
                    ctx.leakage.add(probs, labels, text)
                else:
                    out[rows] = layout_attention(
                        q[rows], k[rows], v[rows], labels, text, strength[:, 0, :, 0], backend=ctx.backend
                    )
            else:
                out[rows] = plain_attention(q[rows], k[rows], v[rows])
        return _merge_heads(out)


def install_processors(unet, controlnet, context: AttentionContext) -> None:
    """Swap ST-Layout processors into the UNet (modulated) and the ControlNet (full-frame only)."""
    unet.set_attn_processor(STLayoutAttnProcessor(context, modulate=True))
    if controlnet is not None:
        controlnet.set_attn_processor(STLayoutAttnProcessor(context, modulate=False))
