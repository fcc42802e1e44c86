"""Cross-attention leakage: how much of a region's text attention lands outside its region.

For region bit l with phrase tokens T_l, leakage_l = 1 − (attention mass of T_l on pixels whose region
set holds l) / (attention mass of T_l on all pixels), summed over frames, heads, layers and steps. 0 means
the phrase only ever shapes its own pixels; an unguided model scores about 1 − area share.

Two figures, each summed over its own share of the run:
- `modulated`: the layers and steps where ST-Layout attention modulated the cross-attention (the first
  `modulation.steps` steps, at the resolutions the layout modulates). This is what the attention maps
  show, and what the modulation is answerable for.
- `whole_run`: every layer and step of the edit, the free late steps and the unmodulated finest level
  included, where the phrase's words spread again by design.
"""

from __future__ import annotations

import torch

SCOPES = ("modulated", "whole_run")


class LeakageMeter:
    def __init__(self, num_bits: int) -> None:
        # One row per scope of SCOPES.
        self.inside = torch.zeros(len(SCOPES), num_bits, dtype=torch.float64)
        self.total = torch.zeros(len(SCOPES), num_bits, dtype=torch.float64)

    def add(self, probs: torch.Tensor, pixel_regions: torch.Tensor, token_regions: torch.Tensor,
            modulated: bool) -> None:
        """probs (F, H, N, T) attention of N pixels over T tokens; region sets: pixels (F, N), tokens (T,).
        `modulated`: whether ST-Layout attention modulated this layer at this step."""
        rows = [SCOPES.index("whole_run")] + ([SCOPES.index("modulated")] if modulated else [])
        for bit in range(self.total.shape[1]):
            tokens = (token_regions >> bit) & 1 == 1
            if not tokens.any():
                continue
            mass = probs[..., tokens].sum(-1).sum(1).double().cpu()  # (F, N), summed over heads
            inside = mass[((pixel_regions >> bit) & 1 == 1).cpu()].sum()
            for row in rows:
                self.total[row, bit] += mass.sum()
                self.inside[row, bit] += inside

    def __add__(self, other: LeakageMeter) -> LeakageMeter:
        """The sums of two meters (passes measured apart)."""
        summed = LeakageMeter(self.total.shape[1])
        summed.inside, summed.total = self.inside + other.inside, self.total + other.total
        return summed

    def shares(self, scope: str = "modulated") -> dict[int, float]:
        """Leakage per region bit that has phrase tokens (bit 0: the background, k + 1: region k), over
        `scope` (SCOPES); {} for `modulated` when nothing was modulated."""
        inside, total = self.inside[SCOPES.index(scope)], self.total[SCOPES.index(scope)]
        return {b: 1.0 - float(inside[b] / total[b]) for b in range(len(total)) if total[b] > 0}


def describe_leakage(modulated: dict[str, float] | None, whole_run: dict[str, float] | None) -> list[str]:
    """The two figures per phrase as lines for a terminal, each named by what it sums over."""
    if not modulated and not whole_run:
        return []
    shown = lambda shares: ", ".join(f"{p}: {s:.3f}" for p, s in shares.items()) if shares else "none"  # noqa: E731
    return [
        "cross-attention leakage (share of each phrase's attention outside its region):",
        f"  over the modulated steps and levels, as the attention maps show it: {shown(modulated)}",
        f"  over the whole run, free late steps and the unmodulated finest level included: {shown(whole_run)}",
        "  (attention blind to the regions scores 1 − the region's share of the frame: 0.9 for a region a tenth "
        "of the frame; the heat maps are scaled to each phrase's peak, so they show where it gathers, not how much)",
    ]
