"""Region layout: phrases to tokens, mattes to labels at every attention resolution."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from videograin.engine.config import find_phrase
from videograin.engine.errors import JobError
from videograin.engine.method.layout import (
    BACKGROUND_BIT,
    RegionLayout,
    label_map,
    phrase_token_indices,
    region_bit,
    token_regions,
)


def test_phrase_tokens_are_the_phrase_inside_the_prompt(tiny_pipe):
    tokenizer = tiny_pipe.tokenizer
    prompt = "A woman and an Iron Man run"
    ids = tokenizer(prompt, padding="max_length", max_length=77).input_ids
    positions = phrase_token_indices(tokenizer, prompt, "iron man")
    assert tokenizer.decode([ids[i] for i in positions]).replace(" ", "") == "ironman"
    # "man" must not be found inside "woman": whole words only.
    positions_man = phrase_token_indices(tokenizer, prompt, "man")
    assert positions_man[0] > positions[0]


@pytest.mark.parametrize("phrase", ["batman", "ron", ""])
def test_phrase_not_in_prompt_is_a_job_error(phrase):
    with pytest.raises(JobError, match="phrase|empty"):
        find_phrase("an iron man runs", phrase)


def test_phrase_beyond_the_encoder_window_is_refused(tiny_pipe):
    prompt = "word " * 40 + "iron man"
    with pytest.raises(JobError, match="beyond the 77 tokens"):
        phrase_token_indices(tiny_pipe.tokenizer, prompt, "iron man")


def test_token_regions_mark_background_and_regions(tiny_pipe):
    regions = token_regions(tiny_pipe.tokenizer, "a cat on grass", ["cat"], "grass")
    assert set(regions.tolist()) == {0, BACKGROUND_BIT, region_bit(0)}
    assert (regions == region_bit(0)).sum() == 3 and (regions == BACKGROUND_BIT).sum() == 5  # characters


def test_later_region_wins_in_the_label_map():
    masks = np.zeros((2, 1, 4, 4), bool)
    masks[0, 0, :, :3] = True
    masks[1, 0, :, 2:] = True
    labels = label_map(masks)[0]
    assert labels[0].tolist() == [1, 1, 2, 2]


def _wire_masks(size: int = 512, frames: int = 2) -> np.ndarray:
    """Region 0: a 3-px vertical wire on the 64-px grid (x = 128..130); region 1: the right half,
    overlapping region 0 on a 3-px strip at x = 256..258 that region 0 also covers."""
    masks = np.zeros((2, frames, size, size), bool)
    masks[0, :, :, 128:131] = True
    masks[0, :, :, 256:259] = True
    masks[1, :, :, 256:] = True
    return masks


@pytest.mark.parametrize("tokens", [64 * 64, 32 * 32, 16 * 16, 8 * 8])
def test_reference_rules_keep_a_wire_on_the_grid_at_every_level_and_allow_overlaps(tokens):
    layout = RegionLayout(_wire_masks(), 64, 64, background_is_region=False)
    level = layout.level(tokens, torch.device("cpu"))
    side = int(tokens**0.5)
    regions = level.regions[0].reshape(side, side)
    column = lambda x: regions[:, x * side // 512]  # noqa: E731  the cell holding pixel column x
    assert (column(128) == region_bit(0)).all()  # the wire survives nearest sampling
    assert (column(256) == region_bit(0) | region_bit(1)).all()  # both regions, overlapping
    assert (column(448) == region_bit(1)).all()
    assert (column(0) == 0).all()  # no matte and no background phrase: positive with nothing
    # The area vote of the `area` rules loses the 3-px wire (3/8 of a cell at best) at every level.
    area = RegionLayout(_wire_masks(), 64, 64, background_is_region=False, rules="area").level(tokens, torch.device("cpu"))
    assert not (area.regions[0] == region_bit(0)).any()


def test_reference_rules_leave_the_finest_level_alone_and_background_needs_a_phrase():
    masks = _wire_masks(frames=1)
    assert not RegionLayout(masks, 64, 64, False).level(64 * 64, torch.device("cpu")).modulated
    assert RegionLayout(masks, 64, 64, False).level(32 * 32, torch.device("cpu")).modulated
    assert RegionLayout(masks, 64, 64, False, rules="area").level(64 * 64, torch.device("cpu")).modulated
    with_phrase = RegionLayout(masks, 64, 64, background_is_region=True).level(8 * 8, torch.device("cpu"))
    assert (with_phrase.regions[0].reshape(8, 8)[:, 0] == BACKGROUND_BIT).all()


def test_size_factors_are_the_reference_formulas():
    # 2 frames of 4x4 cells: region 0 covers 4 cells in frame 0 and 8 in frame 1; region 1 overlaps
    # region 0 on 2 cells of frame 1 and covers 6 cells there.
    masks = np.zeros((2, 2, 4, 4), bool)
    masks[0, 0, 0, :] = True
    masks[0, 1, :2, :] = True
    masks[1, 1, 1:3, 2:] = True
    masks[1, 1, 3, :2] = True
    layout = RegionLayout(masks, 4, 4, background_is_region=False)
    level = layout._build(4, 4)
    regions = level.regions
    n, f = 16, 2
    # A cell of region 0 only, in frame 1: it shares a region with region 0's 4 + 8 cells (clip) and
    # with the 8 cells of region 0 in its own frame.
    assert regions[1, 0] == region_bit(0)
    assert level.self_size[1, 0] == pytest.approx(1 - 12 / (n * f**2))
    assert level.cross_size[1, 0] == pytest.approx(1 - 8 / n)
    # A cell in both regions, frame 1: the areas of region 0 (12 cells in the clip, 8 in its frame) and
    # region 1 (6 cells) add up, the 2 overlapping cells counted twice: 18 in the clip, 14 in its frame.
    assert regions[1, 6] == region_bit(0) | region_bit(1)
    assert level.self_size[1, 6] == pytest.approx(1 - 18 / (n * f**2))
    assert level.cross_size[1, 6] == pytest.approx(1 - 14 / n)
    # A cell in no region: size 1 (it has no positive pair).
    assert regions[0, 15] == 0 and level.self_size[0, 15] == 1 and level.cross_size[0, 15] == 1
    # The clip rule counts each cell sharing a region once: 12 + 6 − 2 = 16 cells of the clip.
    clip = RegionLayout(masks, 4, 4, background_is_region=False, size="clip")._build(4, 4)
    assert clip.self_size[1, 6] == clip.cross_size[1, 6] == pytest.approx(1 - 16 / (n * f))


def _published_size_factors(layouts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The published code's size factors, transcribed loop for loop: `layouts` (F, S, h, w) 0/1 at one
    resolution, one map per region (the background's too when it is a region). Returns (cross, self),
    each (F, h·w)."""
    frames, regions, h, w = layouts.shape
    flat = layouts.reshape(frames, regions, h * w).astype(np.float64)
    cross = np.zeros((frames, h * w))
    for i in range(frames):
        pairs = np.zeros((h * w, h * w))  # per frame: how many regions query x and key y share
        for s in range(regions):
            pairs += flat[i, s].reshape(1, -1) * flat[i, s].reshape(-1, 1)
        cross[i] = 1 - pairs.sum(-1) / (h * w)
    clip = flat.transpose(1, 0, 2).reshape(regions, frames * h * w)  # "f s res -> s (f res)"
    pairs = np.zeros((frames * h * w, frames * h * w))
    for s in range(regions):
        pairs += clip[s].reshape(1, -1) * clip[s].reshape(-1, 1)
    self_ = 1 - pairs.sum(-1) / ((h * frames) * (w * frames))
    return cross, self_.reshape(frames, h * w)


@pytest.mark.parametrize("background", [False, True])
@pytest.mark.parametrize("side", [8, 4, 2])
def test_reference_size_factors_match_the_published_code_where_mattes_overlap(background, side):
    # 3 frames of 8x8 latent cells, three mattes overlapping in pairs and all three in places.
    rng = np.random.default_rng(7)
    masks = np.zeros((3, 3, 8, 8), bool)
    masks[0, :, :5, :5] = True
    masks[1, :, 3:, 2:7] = True
    masks[2] = rng.random((3, 8, 8)) < 0.4
    assert (masks[0] & masks[1] & masks[2]).any()
    layout = RegionLayout(masks, 8, 8, background_is_region=background)
    level = layout.level(side * side, torch.device("cpu"))
    # The published code resamples the latent-size maps to each resolution by nearest neighbour; the
    # background, when it is a region, is the map of the cells in no matte.
    maps = masks.transpose(1, 0, 2, 3)
    if background:
        maps = np.concatenate([maps, ~maps.any(1, keepdims=True)], 1)
    small = torch.nn.functional.interpolate(torch.from_numpy(maps).float(), (side, side), mode="nearest").numpy()
    cross, self_ = _published_size_factors(small)
    np.testing.assert_allclose(level.cross_size.numpy(), cross, rtol=0, atol=1e-6)
    np.testing.assert_allclose(level.self_size.numpy(), self_, rtol=0, atol=1e-6)


def test_levels_follow_unet_resolutions_and_area_shares():
    masks = np.zeros((1, 2, 80, 48), bool)  # latent 10x6 -> 5x3 -> 3x2 -> 2x1 (odd sizes round up)
    masks[:, :, :40] = True
    layout = RegionLayout(masks, 6, 10, background_is_region=True, rules="area", size="clip")
    for tokens in (60, 15, 6, 2):
        level = layout.level(tokens, torch.device("cpu"))
        assert level.regions.shape == (2, tokens)
        inside = level.regions == region_bit(0)
        assert torch.allclose(level.self_size[inside], 1 - inside.float().mean())
    with pytest.raises(ValueError):
        layout.level(7, torch.device("cpu"))
