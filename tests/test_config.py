"""Job settings: parsing, defaults and the modulation schedule."""

from __future__ import annotations

import pytest

from videograin.engine.config import DEFAULT_CONTROLNETS, ModulationConfig, parse_settings
from videograin.engine.errors import JobError

BASE = {"prompt": "an iron man", "source_prompt": "a man", "regions": [{"phrase": "iron man", "mask": "m"}]}


def test_defaults_and_renamed_keys():
    s = parse_settings({**BASE, "modulation": {"self": 0.5}, "background": {"phrase": "man"}})
    assert s.modulation.self_ == 0.5 and s.background_phrase == "man"
    assert s.source.width == s.source.height == 512 and s.steps == 50
    assert s.controlnet_id == DEFAULT_CONTROLNETS["canny"]
    assert parse_settings({**BASE, "control": {"type": "none"}}).controlnet_id is None
    assert s.to_dict()["modulation"]["self"] == 0.5


def test_strength_follows_the_schedule():
    m = ModulationConfig()
    assert m.strength(1.0, 981, 0, 50) == pytest.approx((980 / 1000) ** 5)
    assert m.strength(0.3, 701, 14, 50) == pytest.approx(0.3 * 0.7**5)
    assert m.strength(1.0, 681, 15, 50) == 0.0  # past the first 15 steps
    assert ModulationConfig(until=0.5).strength(1.0, 681, 15, 50) > 0.0  # the first half
    assert ModulationConfig(enabled=False).strength(1.0, 981, 0, 50) == 0.0


@pytest.mark.parametrize(
    "change,message",
    [
        ({"regions": []}, "non-empty list"),
        ({"prompt": "  "}, "'prompt' is empty"),
        ({"source": {"width": 500}}, "multiples of 8"),
        ({"guidance": 0.5}, "at least 1.0"),
        ({"control": {"type": "depth"}}, "needs control.path"),
        ({"regions": [{"phrase": "a", "mask": "m"}, {"phrase": "A", "mask": "n"}]}, "same phrase"),
        ({"background": {"colour": 1}}, "unknown setting 'background.colour'"),
        ({"background": {"phrase": 3}}, "'background.phrase' must be str"),
        ({"background_phrase": "man"}, "write it as background"),
        ({"flow": {"levels": [3]}}, "'flow.levels'"),
        ({"flow": {"method": "frames"}}, "needs 'flow.path'"),
        ({"modulation": {"self_branch": "left"}}, "'modulation.self_branch' is 'left'"),
        ({"inject_step": 60}, "'inject_step' must be between 0 and the 50 steps"),
        ({"modulation": {"until": 1.5}}, "'modulation.until' is a share"),
        ({"steps": True}, "must be int"),
    ],
)
def test_bad_settings(change, message):
    with pytest.raises(JobError, match=message):
        parse_settings({**BASE, **change})
