"""ST-Layout modulated attention: the literal reference and the fast path that matches it.

The paper's modulation, with S = QKᵀ and a boolean condition map R (True = positive pair):

    A = softmax((S + λ·M) / √d),   M = R ⊙ (max(S) − S) − (1 − R) ⊙ (S − min(S))

max/min taken over the keys of each query row. Because they are per row, S + λ·M equals
(1 − λ)·S + λ·(max − min)·R plus a per-row constant that softmax ignores, so the fast path needs only
the per-row range of S and the region sets that generate R (R[x, y] = the region sets of x and y share
a region, see layout.py): it never stores an N×M matrix.
"""

from __future__ import annotations

import logging
from functools import lru_cache

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

# Bytes of scores one chunk of the fast path may hold at once.
CHUNK_BYTES = {"cpu": 256 * 2**20, "cuda": 2 * 2**30}


def modulated_probs(
    query: torch.Tensor,
    key: torch.Tensor,
    positive: torch.Tensor,
    strength: float | torch.Tensor,
    scale: float | None = None,
) -> torch.Tensor:
    """The paper's attention probabilities, literally: softmax((S + λ·M)·scale), shape (..., N, M)."""
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    scores = query @ key.transpose(-1, -2)
    row_max = scores.amax(-1, keepdim=True)
    row_min = scores.amin(-1, keepdim=True)
    pos = positive.to(scores.dtype)
    modulation = pos * (row_max - scores) - (1 - pos) * (scores - row_min)
    return torch.softmax((scores + strength * modulation) * scale, dim=-1)


def modulated_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    positive: torch.Tensor,
    strength: float | torch.Tensor,
    scale: float | None = None,
) -> torch.Tensor:
    """The paper's equation, literally: query (..., N, d), key/value (..., M, d), positive (..., N, M) bool.

    `strength` is λ: a number, or a tensor broadcastable to (..., N, 1) for a per-query λ.
    This is the reference that every faster path is tested against; it materialises S.
    """
    return modulated_probs(query, key, positive, strength, scale) @ value


def score_row_range(query: torch.Tensor, key: torch.Tensor, chunk: int) -> torch.Tensor:
    """max − min of QKᵀ along each query row, (B, H, N), computed `chunk` query rows at a time."""
    ranges = []
    for rows in query.split(chunk, dim=-2):
        scores = rows @ key.transpose(-1, -2)
        ranges.append((scores.amax(-1) - scores.amin(-1)).float())
    return torch.cat(ranges, dim=-1)


def layout_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    query_regions: torch.Tensor,
    key_regions: torch.Tensor,
    strength: float | torch.Tensor,
    scale: float | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Modulated attention with R[x, y] = (query_regions[x] & key_regions[y]) != 0, in O(N) extra memory.

    query (B, H, N, d); key, value (B, H, M, d); region sets (int64 bit masks) query_regions (B, N) or
    (N,), key_regions (B, M) or (M,); strength λ: a number or (B, N) / (N,) per query. backend: "auto"
    (flex_attention on CUDA, chunked SDPA elsewhere), "flex" or "chunked". Equals `modulated_attention`
    up to float rounding.
    """
    batch, heads, tokens, dim = query.shape
    scale = dim**-0.5 if scale is None else scale
    query_regions = query_regions.expand(batch, tokens)
    key_regions = key_regions.expand(batch, key.shape[-2])
    lam = torch.as_tensor(strength, dtype=torch.float32, device=query.device).expand(batch, tokens)
    chunk = _chunk_rows(query, key.shape[-2])
    # Row range of the raw scores; λ·range is the bias that positive pairs receive.
    amplitude = lam[:, None, :] * score_row_range(query, key, chunk)  # (B, H, N)
    keep = 1.0 - lam  # (B, N): the temperature (1 − λ) on the scores
    if backend == "auto":
        backend = "flex" if query.is_cuda else "chunked"
    if backend == "flex":
        try:
            return _flex_layout_attention(query, key, value, query_regions, key_regions, keep, amplitude, scale)
        except Exception as exc:  # a compile failure must not lose the user's job: fall back, say so once
            _warn_once(f"flex_attention unavailable ({type(exc).__name__}: {exc}); using chunked SDPA")
    return _chunked_layout_attention(query, key, value, query_regions, key_regions, keep, amplitude, scale, chunk)


def _chunk_rows(query: torch.Tensor, keys: int) -> int:
    batch, heads = query.shape[:2]
    budget = CHUNK_BYTES["cuda" if query.is_cuda else "cpu"]
    return max(1, min(query.shape[-2], budget // max(1, batch * heads * keys * 4)))


def _chunked_layout_attention(query, key, value, query_regions, key_regions, keep, amplitude, scale, chunk):
    outputs = []
    for start in range(0, query.shape[-2], chunk):
        rows = slice(start, start + chunk)
        positive = (query_regions[:, rows, None] & key_regions[:, None, :]) != 0  # (B, n, M)
        bias = (amplitude[:, :, rows, None] * scale) * positive[:, None]  # (B, H, n, M)
        scaled_query = query[:, :, rows] * keep[:, None, rows, None].to(query.dtype)
        outputs.append(
            F.scaled_dot_product_attention(scaled_query, key, value, attn_mask=bias.to(query.dtype), scale=scale)
        )
    return torch.cat(outputs, dim=-2)


def _flex_layout_attention(query, key, value, query_regions, key_regions, keep, amplitude, scale):
    from torch.nn.attention.flex_attention import flex_attention

    bias = (amplitude * scale).to(query.dtype)
    keep = keep.to(query.dtype)

    def score_mod(score, b, h, q_idx, kv_idx):
        # flex_attention passes the already scaled score; the bias is pre-scaled to match.
        positive = (query_regions[b, q_idx] & key_regions[b, kv_idx]) != 0
        return score * keep[b, q_idx] + torch.where(positive, bias[b, h, q_idx], 0.0)

    attend = _compiled_flex() if query.is_cuda else flex_attention
    return attend(query, key, value, score_mod=score_mod, scale=scale)


@lru_cache(maxsize=1)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


@lru_cache(maxsize=None)
def _warn_once(message: str) -> None:
    log.warning(message)


def anchored_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    split: int,
    regions: torch.Tensor | None = None,
    strength: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Self-attention over one sequence (B, H, N, d) whose tokens from `split` on are a long clip's
    anchors: the tokens before `split` attend to every token, anchors only to anchors, so anchors come out
    the same in every pass. With `regions` (N,) and per-query `strength` (N,): ST-Layout modulated."""

    def attend(rows: slice, keys: slice) -> torch.Tensor:
        if regions is None:
            return plain_attention(query[:, :, rows], key[:, :, keys], value[:, :, keys])
        return layout_attention(query[:, :, rows], key[:, :, keys], value[:, :, keys], regions[rows], regions[keys],
                                strength[rows], backend=backend)

    if 0 < split < query.shape[2]:
        return torch.cat([attend(slice(0, split), slice(None)), attend(slice(split, None), slice(split, None))], dim=2)
    return attend(slice(None), slice(None))


def plain_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Unmodulated attention, the ablation baseline (fused SDPA kernels where the device has them)."""
    return F.scaled_dot_product_attention(query, key, value)
