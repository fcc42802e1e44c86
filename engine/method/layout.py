"""Region layout: which pixel belongs to which region, at every attention resolution, and which prompt
tokens belong to which region.

Labels: 0 is the background (pixels in no matte), k + 1 is region k. Where mattes overlap, the region
listed later wins, as a later layer paints over an earlier one. Text tokens outside every phrase get
label -1, which matches no pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from videograin.engine.config import find_phrase
from videograin.engine.errors import JobError

NO_REGION = -1


def phrase_token_indices(tokenizer, prompt: str, phrase: str) -> list[int]:
    """Positions of the phrase's tokens in the encoded prompt (position 0 is the start token)."""
    start, end = find_phrase(prompt, phrase)

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False).input_ids

    before, span = len(ids(prompt[:start])), ids(prompt[start:end])
    if ids(prompt)[before : before + len(span)] != span:
        raise JobError(f"phrase '{phrase}' tokenizes differently inside the prompt; rephrase around it")
    first = before + 1
    if first + len(span) > tokenizer.model_max_length - 1:
        raise JobError(
            f"phrase '{phrase}' lies beyond the {tokenizer.model_max_length} tokens the text encoder reads; "
            "shorten the prompt"
        )
    return list(range(first, first + len(span)))


def token_labels(tokenizer, prompt: str, phrases: list[str | None]) -> torch.Tensor:
    """Label per prompt token: phrases[l] marks label l (phrases[0] is the background's, may be None)."""
    labels = torch.full((tokenizer.model_max_length,), NO_REGION, dtype=torch.long)
    for label, phrase in enumerate(phrases):
        if phrase:
            labels[phrase_token_indices(tokenizer, prompt, phrase)] = label
    return labels


def label_map(masks: np.ndarray) -> np.ndarray:
    """(K, F, H, W) bool mattes → (F, H, W) int labels; later regions win where mattes overlap."""
    labels = np.zeros(masks.shape[1:], dtype=np.int64)
    for k, mask in enumerate(masks):
        labels[mask] = k + 1
    return labels


def resize_labels(labels: np.ndarray, num_labels: int, width: int, height: int) -> np.ndarray:
    """Resize a label map by area vote, so thin regions keep their share instead of aliasing away."""
    votes = np.stack(
        [
            np.stack([cv2.resize((f == l).astype(np.float32), (width, height), interpolation=cv2.INTER_AREA) for f in labels])
            for l in range(num_labels)
        ]
    )
    return votes.argmax(0)


@dataclass
class LayoutLevel:
    """The layout at one attention resolution, flattened per frame like the UNet's tokens."""

    labels: torch.Tensor  # (F, N) long
    size: torch.Tensor  # (F, N) float: 1 − area share (over the clip) of each query's region


class RegionLayout:
    """Per-frame region labels at the latent resolution and every coarser UNet resolution."""

    def __init__(self, latent_labels: np.ndarray, num_labels: int) -> None:
        self.num_labels = num_labels
        self.height, self.width = latent_labels.shape[1:]
        self._one_hot = F.one_hot(torch.from_numpy(latent_labels), num_labels).permute(0, 3, 1, 2).float()
        self._levels: dict[tuple[int, str], LayoutLevel] = {}

    @classmethod
    def from_masks(cls, masks: np.ndarray, latent_width: int, latent_height: int) -> "RegionLayout":
        num_labels = masks.shape[0] + 1
        return cls(resize_labels(label_map(masks), num_labels, latent_width, latent_height), num_labels)

    def level(self, tokens_per_frame: int, device: torch.device) -> LayoutLevel:
        key = (tokens_per_frame, str(device))
        if key not in self._levels:
            self._levels[key] = self._build(tokens_per_frame, device)
        return self._levels[key]

    def _build(self, tokens: int, device: torch.device) -> LayoutLevel:
        height, width = self.height, self.width
        # UNet downsampling halves each side, rounding up (stride-2 convs with padding).
        while height * width > tokens and height > 1 and width > 1:
            height, width = -(-height // 2), -(-width // 2)
        if height * width != tokens:
            raise ValueError(f"no UNet resolution of a {self.width}x{self.height} latent has {tokens} tokens")
        votes = F.adaptive_avg_pool2d(self._one_hot, (height, width))
        labels = votes.argmax(1).flatten(1)
        share = torch.bincount(labels.flatten(), minlength=self.num_labels).float() / labels.numel()
        return LayoutLevel(labels.to(device), (1.0 - share)[labels].to(device))
