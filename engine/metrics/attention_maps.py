"""Where each phrase acts: its cross-attention map per frame, with ST-Layout modulation and without.

For a phrase, the map at a pixel is the attention mass its tokens receive from that pixel's query,
averaged over heads and over the cross-attention layers of the two middle UNet resolutions (latent size
÷ 2 and ÷ 4: 32² and 16² for a 512² clip, where the maps are sharpest and most layout-like; the finest
level is noisy and the coarsest too blurred), over the modulated steps of the edit. Each layer's map is
resized to the ÷ 2 resolution before it is added. The plain map uses the same queries and keys without
the modulation: side by side, the two are the picture of what ST-Layout attention does (the paper's
Figure 7), honest even on random weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LEVELS = (2, 4)  # latent size divided by these


class AttentionMaps:
    """Accumulates per region bit (0 background, k + 1 region k) and clip frame, modulated and plain."""

    def __init__(self, num_bits: int, frames: int, sizes: list[tuple[int, int]]) -> None:
        """`sizes`: the (h, w) of the recorded levels, the first being the maps' own size."""
        self.sizes = sizes
        height, width = sizes[0]
        self.modulated = torch.zeros(num_bits, frames, height, width, dtype=torch.float64)
        self.plain = torch.zeros_like(self.modulated)
        self.counts = torch.zeros(frames, dtype=torch.float64)
        self.active = False  # set by the pipeline: True during the modulated steps of the edit

    def records(self, tokens_per_frame: int) -> tuple[int, int] | None:
        """The (h, w) of this level when it is recorded now, else None."""
        if not self.active:
            return None
        return next(((h, w) for h, w in self.sizes if h * w == tokens_per_frame), None)

    def add(self, size: tuple[int, int], frame_ids: torch.Tensor, token_regions: torch.Tensor,
            modulated: torch.Tensor, plain: torch.Tensor) -> None:
        """modulated / plain: (F, heads, N, T) probabilities of one layer's conditional branch."""
        ids = frame_ids.cpu()
        for bit in range(len(self.modulated)):
            tokens = ((token_regions >> bit) & 1 == 1).to(modulated.device)
            if not tokens.any():
                continue
            for maps, probs in ((self.modulated, modulated), (self.plain, plain)):
                mass = probs[..., tokens].sum(-1).mean(1).float()  # (F, N): over the phrase's tokens, heads
                mass = F.interpolate(mass.view(-1, 1, *size), self.sizes[0], mode="bilinear", align_corners=False)
                maps[bit, ids] += mass[:, 0].double().cpu()
        self.counts[ids] += 1

    def __add__(self, other: AttentionMaps) -> AttentionMaps:
        """The sums of two accumulators over the same clip (passes recorded apart)."""
        summed = AttentionMaps(len(self.modulated), len(self.counts), self.sizes)
        summed.modulated, summed.plain = self.modulated + other.modulated, self.plain + other.plain
        summed.counts = self.counts + other.counts
        return summed

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(bits, F, h, w) modulated and plain maps, each averaged over what was recorded."""
        counts = self.counts.clamp(min=1)[None, :, None, None]
        return (self.modulated / counts).float(), (self.plain / counts).float()
