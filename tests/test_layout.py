"""Region layout: phrases to tokens, mattes to labels at every attention resolution."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from videograin.engine.config import find_phrase
from videograin.engine.errors import JobError
from videograin.engine.method.layout import NO_REGION, RegionLayout, label_map, phrase_token_indices, token_labels


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


def test_token_labels_mark_background_and_regions(tiny_pipe):
    labels = token_labels(tiny_pipe.tokenizer, "a cat on grass", ["grass", "cat"])
    assert set(labels.tolist()) == {NO_REGION, 0, 1}
    assert (labels == 1).sum() == 3 and (labels == 0).sum() == 5  # characters of "cat", "grass"


def test_later_region_wins_where_mattes_overlap():
    masks = np.zeros((2, 1, 4, 4), bool)
    masks[0, 0, :, :3] = True
    masks[1, 0, :, 2:] = True
    labels = label_map(masks)[0]
    assert labels[0].tolist() == [1, 1, 2, 2]


def test_levels_follow_unet_resolutions_and_area_shares():
    labels = np.zeros((2, 10, 6), np.int64)  # odd sizes: 10x6 -> 5x3 -> 3x2 -> 2x1
    labels[:, :5] = 1
    layout = RegionLayout(labels, num_labels=2)
    for tokens in (60, 15, 6, 2):
        level = layout.level(tokens, torch.device("cpu"))
        assert level.labels.shape == (2, tokens)
        share = (level.labels == 1).float().mean()
        assert torch.allclose(level.size[level.labels == 1], 1 - share)
    with pytest.raises(ValueError):
        layout.level(7, torch.device("cpu"))
