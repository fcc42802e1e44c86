"""Region layout: which regions each pixel belongs to, at every attention resolution, and which prompt
tokens belong to which region.

Region sets are bit masks (int64): bit 0 is the background, bit k + 1 is region k. A pair of tokens is
positive for ST-Layout attention when their sets share a bit, so overlapping regions are allowed; a
pixel in no region (set 0) is positive with nothing. Text tokens carry the bit of the phrase they
belong to, 0 for words outside every phrase.

Two sets of rules (`ModulationConfig.layout`):
- `reference`, as the published code runs it: each matte is resampled by nearest neighbour to the
  latent size, then by nearest neighbour to every coarser UNet resolution, so a thin structure that lies
  on the sampling grid survives at every level (and one between grid lines may vanish); pixels in no
  matte are a region (the background) only when the background has a phrase; the finest level
  (the latent size, 64² for 512²) is not modulated.
- `area`: each cell takes the region with the largest area in it (the later region wins where mattes
  overlap), the background is always a region, and every level is modulated.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from videograin.engine.config import find_phrase
from videograin.engine.errors import JobError

BACKGROUND_BIT = 1  # bit 0


def region_bit(region: int) -> int:
    """The bit of region `region` (0-based, in job order)."""
    return 1 << (region + 1)


def phrase_token_indices(tokenizer, prompt: str, phrase: str, max_length: int | None = None) -> list[int]:
    """Positions of the phrase's tokens in the encoded prompt, for any tokenizer: CLIP's (a start token at
    position 0) and umT5's SentencePiece (no start token; a word's first piece carries the space)."""
    start, end = find_phrase(prompt, phrase)
    max_length = max_length or tokenizer.model_max_length

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False).input_ids

    # The text before the phrase without its trailing space: SentencePiece would make that space a piece
    # of its own, which inside the prompt belongs to the phrase's first word.
    before, span = len(ids(prompt[:start].rstrip())), ids(prompt[start:end])
    if ids(prompt)[before : before + len(span)] != span:
        raise JobError(f"phrase '{phrase}' tokenizes differently inside the prompt; rephrase around it")
    first = before + _special_tokens_before_text(tokenizer)
    if first + len(span) > max_length - 1:
        raise JobError(
            f"phrase '{phrase}' lies beyond the {max_length} tokens the text encoder reads; shorten the prompt"
        )
    return list(range(first, first + len(span)))


def _special_tokens_before_text(tokenizer) -> int:
    """How many special tokens the tokenizer puts before the text (CLIP: 1, its start token; T5: 0)."""
    text = tokenizer("a", add_special_tokens=False).input_ids
    full = tokenizer("a").input_ids
    return next(i for i in range(len(full)) if full[i : i + len(text)] == text)


def token_regions(
    tokenizer, prompt: str, phrases: list[str], background_phrase: str | None, max_length: int | None = None
) -> torch.Tensor:
    """Region set (bit mask) of every prompt token: region k's phrase gets bit k + 1, the background's bit 0.
    A region with no phrase ("") marks no token: it still has its bit in the layout, for self-attention."""
    max_length = max_length or tokenizer.model_max_length
    regions = torch.zeros(max_length, dtype=torch.long)
    marked = [(background_phrase, BACKGROUND_BIT)] + [(p, region_bit(k)) for k, p in enumerate(phrases)]
    for phrase, bit in marked:
        if phrase:
            regions[phrase_token_indices(tokenizer, prompt, phrase, max_length)] |= bit
    return regions


def label_map(masks: np.ndarray) -> np.ndarray:
    """(K, F, H, W) bool mattes → (F, H, W) int labels, 0 = background; later regions win where mattes
    overlap (the `area` rules, and pictures of the layout)."""
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


def nearest_masks(masks: np.ndarray, width: int, height: int) -> np.ndarray:
    """(K, F, H, W) bool mattes → (K, F, height, width) by nearest-neighbour sampling (OpenCV's rule:
    destination cell i takes source pixel floor(i · H / height))."""
    flat = masks.reshape(-1, *masks.shape[2:]).astype(np.uint8)
    small = np.stack([cv2.resize(m, (width, height), interpolation=cv2.INTER_NEAREST) for m in flat])
    return small.reshape(*masks.shape[:2], height, width).astype(bool)


@dataclass
class LayoutLevel:
    """The layout at one attention resolution, flattened per frame like the UNet's tokens."""

    regions: torch.Tensor  # (F, N) int64 region sets
    self_size: torch.Tensor  # (F, N) float: the self-attention size factor of each query
    cross_size: torch.Tensor  # (F, N) float: the cross-attention size factor of each query
    modulated: bool  # False: this level is left alone (the finest level, under the reference rules)


def _counts_sharing(regions: torch.Tensor) -> torch.Tensor:
    """For every token, how many tokens of the whole clip share a region with it (each counted once)."""
    patterns, inverse = torch.unique(regions, return_inverse=True)
    shares = (patterns[:, None] & patterns[None, :]) != 0  # (U, U): two region sets overlap
    histogram = F.one_hot(inverse, len(patterns)).sum(1)  # (F, U): tokens of each set per frame
    per_clip = (histogram @ shares.long()).sum(0)  # (U,): tokens of the clip sharing a region with set u
    return per_clip[inverse]


def _region_area_sums(regions: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For every token, the areas of its regions summed, within its frame and over the clip: a token
    in two regions adds both areas, so a token that shares both with it counts twice (the published
    code's Σ over regions of mask · mask)."""
    member = torch.stack([(regions >> bit) & 1 for bit in range(bits)])  # (B, F, N) 0/1
    per_frame = (member * member.sum(2, keepdim=True)).sum(0)
    per_clip = (member * member.sum((1, 2), keepdim=True)).sum(0)
    return per_frame, per_clip


def level_size(latent_height: int, latent_width: int, level: int) -> tuple[int, int]:
    """(h, w) of the UNet resolution `level` (1, 2, 4, 8): each halving rounds up, as stride-2 convs do."""
    height, width = latent_height, latent_width
    for _ in range(level.bit_length() - 1):
        height, width = -(-height // 2), -(-width // 2)
    return height, width


class RegionLayout:
    """Region sets per frame at the latent resolution and every coarser UNet resolution (or, for a
    transformer, on its one token grid: `levels=(1,)`, `modulate_finest=True`)."""

    def __init__(
        self, masks: np.ndarray, latent_width: int, latent_height: int, background_is_region: bool,
        rules: str = "reference", size: str = "reference", levels: tuple[int, ...] = (1, 2, 4, 8),
        modulate_finest: bool = False,
    ) -> None:
        """`masks` (K, F, H, W) bool at any size; `background_is_region`: the background has a phrase.
        `levels`: the attention resolutions, as divisors of the latent size; `modulate_finest`: modulate the
        latent size itself too (the reference leaves the UNet's finest level alone)."""
        self.rules, self.size_rule = rules, size
        self.levels, self.modulate_finest = levels, modulate_finest
        self.width, self.height = latent_width, latent_height
        self.num_regions = masks.shape[0]
        self.background_is_region = background_is_region or rules == "area"
        if rules == "area":
            labels = resize_labels(label_map(masks), self.num_regions + 1, latent_width, latent_height)
            self._latent = F.one_hot(torch.from_numpy(labels), self.num_regions + 1).permute(0, 3, 1, 2).float()
        else:
            self._latent = torch.from_numpy(nearest_masks(masks, latent_width, latent_height)).float()
        self._levels: dict[tuple[int, str], LayoutLevel] = {}

    def level_size(self, tokens_per_frame: int) -> tuple[int, int]:
        """(height, width) of the UNet resolution with this many tokens per frame."""
        for level in self.levels:
            height, width = level_size(self.height, self.width, level)
            if height * width == tokens_per_frame:
                return height, width
        raise ValueError(f"no attention resolution of a {self.width}x{self.height} latent has {tokens_per_frame} tokens")

    def level(self, tokens_per_frame: int, device: torch.device) -> LayoutLevel:
        key = (tokens_per_frame, str(device))
        if key not in self._levels:
            level = self._build(*self.level_size(tokens_per_frame))
            self._levels[key] = LayoutLevel(
                level.regions.to(device), level.self_size.to(device), level.cross_size.to(device), level.modulated
            )
        return self._levels[key]

    def _regions_at(self, height: int, width: int) -> torch.Tensor:
        """(F, h·w) region sets at one resolution."""
        if self.rules == "area":
            votes = F.adaptive_avg_pool2d(self._latent, (height, width))
            return (1 << votes.argmax(1)).flatten(1)  # label l (0 = background) is bit l
        masks = F.interpolate(self._latent, (height, width), mode="nearest").bool()  # (K, F, h, w)
        regions = torch.zeros(masks.shape[1:], dtype=torch.long)
        for k, mask in enumerate(masks):
            regions[mask] |= region_bit(k)
        if self.background_is_region:
            regions[regions == 0] = BACKGROUND_BIT
        return regions.flatten(1)

    def _build(self, height: int, width: int) -> LayoutLevel:
        regions = self._regions_at(height, width)
        frames, tokens = regions.shape
        if self.size_rule == "clip":
            self_size = cross_size = 1.0 - _counts_sharing(regions).float() / regions.numel()
        else:
            # The published code divides the clip sum by N·F² (not N·F) for self-attention.
            per_frame, per_clip = _region_area_sums(regions, self.num_regions + 1)
            self_size = 1.0 - per_clip.float() / (tokens * frames**2)
            cross_size = 1.0 - per_frame.float() / tokens
        finest = (height, width) == (self.height, self.width)
        modulated = self.rules == "area" or self.modulate_finest or not finest
        return LayoutLevel(regions, self_size, cross_size, modulated=modulated)
