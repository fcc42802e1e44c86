"""Cross-attention leakage: how much of a region's text attention lands outside its region.

For region label l with phrase tokens T_l, leakage_l = 1 − (attention mass of T_l on pixels labelled l)
/ (attention mass of T_l on all pixels), summed over frames, heads, layers and recorded steps.
0 means the phrase only ever shapes its own pixels; an unguided model scores about 1 − area share.
"""

from __future__ import annotations

import torch


class LeakageMeter:
    def __init__(self, num_labels: int) -> None:
        self.inside = torch.zeros(num_labels, dtype=torch.float64)
        self.total = torch.zeros(num_labels, dtype=torch.float64)

    def add(self, probs: torch.Tensor, pixel_labels: torch.Tensor, token_labels: torch.Tensor) -> None:
        """probs (F, H, N, T) attention of N pixels over T tokens; pixel_labels (F, N); token_labels (T,)."""
        for label in range(len(self.total)):
            tokens = token_labels == label
            if not tokens.any():
                continue
            mass = probs[..., tokens].sum(-1).sum(1).double().cpu()  # (F, N), summed over heads
            self.total[label] += mass.sum()
            self.inside[label] += mass[(pixel_labels == label).cpu()].sum()

    def shares(self) -> dict[int, float]:
        """Leakage per label that has phrase tokens."""
        return {l: 1.0 - float(self.inside[l] / self.total[l]) for l in range(len(self.total)) if self.total[l] > 0}
