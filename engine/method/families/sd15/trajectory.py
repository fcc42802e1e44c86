"""Flow-guided trajectory attention (FLATTEN, ICLR 2024), as the reference VideoGrain runs it.

Trajectories. At each attention resolution (h, w) the forward flow of the working size (H, W) is
resampled as the reference does it (nearest sampling, which takes the top-left pixel of each patch),
scaled by w/W and h/H, and rounded: patch (t, y, x) links to (t + 1, y + dy, x + dx) when that lies
inside the frame and the patch is not occluded (more than half of its pixels marked in
`ClipFlow.occluded_forward`), so a trajectory never crosses an occlusion; the reference has no occlusion
masks and keeps every in-frame link. Where several patches land on one target, the one whose unrounded
landing point is closest to the target's centre keeps the link, ties going to the first in raster
order (the reference picks at random). Chains of links are the trajectories: every token belongs to
exactly one, with at most one token per frame, and its id is the flat index t·h·w + y·w + x of its
first token. Rows and columns are kept apart everywhere (the reference enumerates a frame's pixels as
(i // H, i % H), right only for square frames).

Attention. With g the trajectory id of each token of a folded clip (frames × h·w, frame-major):

    out_i = Σ_j softmax_j(q_i·k_j / √d + M_ij) v_j,   M_ij = 0 if g_i = g_j else −∞

`trajectory_attention_reference` is that equation, literally (an N×N mask). M is block-diagonal once the
tokens are sorted by g, so each trajectory's block is a small attention of its own: the fast path
gathers the trajectories into padded rows (groups, L), bucketed by length to powers of two so padding
at most doubles the work, and runs SDPA with the padding masked, in O(N·longest) memory. A trajectory of
one token attends to itself only: its output is its value, exactly. In the reference, q and k are the
layer's own projections and v is the output of the full-frame self-attention.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from videograin.engine.config import FLOW_LEVELS as LEVELS
from videograin.engine.method.attention import CHUNK_BYTES
from videograin.engine.method.layout import level_size


def trajectory_ids(forward: torch.Tensor, occluded: torch.Tensor | None, height: int, width: int) -> torch.Tensor:
    """Trajectory id of every token at resolution (height, width): (F, height·width) long.

    forward: (F−1, H, W, 2) flow (dx, dy) in pixels of the working size; occluded: (F−1, H, W) bool or
    None. Vectorised, O(F·h·w) memory.
    """
    frames, tokens = forward.shape[0] + 1, height * width
    total = frames * tokens
    device = forward.device
    if frames == 1:
        return torch.arange(tokens, device=device)[None]
    src_height, src_width = forward.shape[1:3]
    field = F.interpolate(forward.permute(0, 3, 1, 2).float(), size=(height, width), mode="nearest")
    field = field * torch.tensor([width / src_width, height / src_height], device=device).view(1, 2, 1, 1)
    step = torch.round(field)
    ys, xs = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
    tx, ty = xs + step[:, 0].long(), ys + step[:, 1].long()
    linked = (tx >= 0) & (tx < width) & (ty >= 0) & (ty < height)
    if occluded is not None:
        # A patch is occluded when most of its pixels are.
        linked &= F.interpolate(occluded[:, None].float(), size=(height, width), mode="area")[:, 0] <= 0.5
    t = torch.arange(1, frames, device=device).view(-1, 1, 1)
    linked = linked.flatten()
    source = torch.arange((frames - 1) * tokens, device=device)[linked]
    target = (t * tokens + ty * width + tx).flatten()[linked]
    miss = (field - step).square().sum(1).flatten()[linked]
    # Conflicts: the closest landing point wins, then the lowest source index.
    best = torch.full((total,), float("inf"), device=device).scatter_reduce(0, target, miss, "amin")
    closest = miss == best[target]
    winner = torch.full((total,), total, device=device).scatter_reduce(0, target[closest], source[closest], "amin")
    root = torch.arange(total, device=device)
    has_link = winner < total
    root[has_link] = winner[has_link]
    # Pointer jumping: each pass doubles the distance followed, so ⌈log2 F⌉ passes reach every start.
    while True:
        jumped = root[root]
        if torch.equal(jumped, root):
            return root.view(frames, tokens)
        root = jumped


class Trajectories:
    """Trajectory ids of a clip at the UNet resolutions that use trajectory attention.

    `levels` name them as the reference's `flatten_res` does: latent size divided by 1, 2, 4 or 8.
    """

    def __init__(
        self,
        forward: torch.Tensor,
        occluded: torch.Tensor | None,
        latent_height: int,
        latent_width: int,
        levels: tuple[int, ...] = (1,),
    ) -> None:
        if any(level not in LEVELS for level in levels):
            raise ValueError(f"trajectory levels must be among {LEVELS}, got {levels}")
        self._ids: dict[int, torch.Tensor] = {}
        for level in levels:
            height, width = level_size(latent_height, latent_width, level)
            self._ids[height * width] = trajectory_ids(forward, occluded, height, width)
        self._plans: dict[tuple, TrajectoryPlan] = {}

    def ids(self, tokens_per_frame: int) -> torch.Tensor | None:
        """(F, tokens) trajectory ids at that resolution, or None where it has no trajectory attention."""
        return self._ids.get(tokens_per_frame)

    def plan(
        self, tokens_per_frame: int, frame_ids: torch.Tensor, device: torch.device, anchors: int = 0
    ) -> TrajectoryPlan | None:
        """The fast path's layout for a pass holding the clip frames `frame_ids` (folded frame-major).

        The last `anchors` frames are a long clip's anchors: their tokens keep to trajectories among
        themselves, as anchors attend only among themselves in full-frame attention, so their output is
        the same in every pass.
        """
        ids = self._ids.get(tokens_per_frame)
        if ids is None:
            return None
        key = (tokens_per_frame, tuple(frame_ids.tolist()), anchors, str(device))
        if key not in self._plans:
            groups = ids[frame_ids.cpu()].clone()
            if anchors:
                groups[-anchors:] = -1 - groups[-anchors:]  # ids are ≥ 0: anchors' never meet the others'
            self._plans[key] = plan_groups(groups.flatten().to(device))
        return self._plans[key]


@dataclass
class TrajectoryPlan:
    """Tokens gathered by group: per bucket, (groups, L) token indices and which slots are real."""

    tokens: int
    buckets: list[tuple[torch.Tensor, torch.Tensor]]


def plan_groups(groups: torch.Tensor) -> TrajectoryPlan:
    """Bucket the groups of `groups` (N,) by length (powers of two) into padded rows of token indices."""
    order = torch.argsort(groups, stable=True)
    _, counts = torch.unique_consecutive(groups[order], return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    buckets = []
    length, longest = 1, int(counts.max()) if len(counts) else 0
    while length // 2 < longest:
        chosen = (counts > length // 2) & (counts <= length)
        if chosen.any():
            offsets = torch.arange(length, device=groups.device)
            valid = offsets < counts[chosen, None]
            # Padding slots point at the group's first token; they are masked out of the keys.
            slots = starts[chosen, None] + torch.where(valid, offsets, 0)
            buckets.append((order[slots], valid))
        length *= 2
    return TrajectoryPlan(len(groups), buckets)


def trajectory_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    groups: torch.Tensor | TrajectoryPlan,
    scale: float | None = None,
) -> torch.Tensor:
    """Each token attends to the tokens of its own group: (B, heads, N, d) each, groups (N,) any ints.

    Equals `trajectory_attention_reference` up to float rounding, in O(N·longest group) memory.
    """
    plan = groups if isinstance(groups, TrajectoryPlan) else plan_groups(groups)
    batch, heads, tokens, dim = query.shape
    if plan.tokens != tokens:
        raise ValueError(f"the trajectory plan covers {plan.tokens} tokens, the sequence has {tokens}")
    scale = dim**-0.5 if scale is None else scale
    out = torch.empty_like(value)
    budget = CHUNK_BYTES["cuda" if query.is_cuda else "cpu"]
    for index, valid in plan.buckets:
        length = index.shape[1]
        if length == 1:  # softmax over one key is exactly 1
            out.index_copy_(2, index[:, 0], value.index_select(2, index[:, 0]))
            continue
        per_chunk = max(1, budget // (batch * heads * length * length * 4))
        for rows, real in zip(index.split(per_chunk), valid.split(per_chunk)):
            flat = rows.flatten()
            q, k, v = (_gather(x, flat, rows.shape) for x in (query, key, value))
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask=real[None, :, None, :], scale=scale)
            kept = real.flatten()
            out.index_copy_(2, flat[kept], attended.view(batch, heads, -1, value.shape[-1])[:, :, kept])
    return out


def _gather(x: torch.Tensor, flat: torch.Tensor, rows: torch.Size) -> torch.Tensor:
    """(B, H, N, d) → (B·H, groups, L, d): the tokens of `flat`, a (groups, L) layout flattened."""
    return x.index_select(2, flat).view(x.shape[0] * x.shape[1], *rows, x.shape[-1])


def trajectory_attention_reference(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, groups: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """The equation, literally: softmax(QKᵀ·scale + M) V with M = 0 within a group, −∞ across (N×N)."""
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    same = groups[:, None] == groups[None, :]
    scores = (query @ key.transpose(-1, -2)) * scale
    return torch.softmax(scores.masked_fill(~same, float("-inf")), dim=-1) @ value
