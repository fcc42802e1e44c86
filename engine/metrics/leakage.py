"""Cross-attention leakage: how much of a region's text attention lands outside its region.

For region bit l with phrase tokens T_l, leakage_l = 1 − (attention mass of T_l on pixels whose region
set holds l) / (attention mass of T_l on all pixels), summed over frames, heads, layers and recorded
steps. 0 means the phrase only ever shapes its own pixels; an unguided model scores about 1 − area share.
"""

from __future__ import annotations

import torch


class LeakageMeter:
    def __init__(self, num_bits: int) -> None:
        self.inside = torch.zeros(num_bits, dtype=torch.float64)
        self.total = torch.zeros(num_bits, dtype=torch.float64)

    def add(self, probs: torch.Tensor, pixel_regions: torch.Tensor, token_regions: torch.Tensor) -> None:
        """probs (F, H, N, T) attention of N pixels over T tokens; region sets: pixels (F, N), tokens (T,)."""
        for bit in range(len(self.total)):
            tokens = (token_regions >> bit) & 1 == 1
            if not tokens.any():
                continue
            mass = probs[..., tokens].sum(-1).sum(1).double().cpu()  # (F, N), summed over heads
            self.total[bit] += mass.sum()
            self.inside[bit] += mass[((pixel_regions >> bit) & 1 == 1).cpu()].sum()

    def __add__(self, other: LeakageMeter) -> LeakageMeter:
        """The sums of two meters (passes measured apart)."""
        summed = LeakageMeter(len(self.total))
        summed.inside, summed.total = self.inside + other.inside, self.total + other.total
        return summed

    def shares(self) -> dict[int, float]:
        """Leakage per region bit that has phrase tokens (bit 0: the background, k + 1: region k)."""
        return {b: 1.0 - float(self.inside[b] / self.total[b]) for b in range(len(self.total)) if self.total[b] > 0}
