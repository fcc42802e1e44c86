"""What a job may ask: numbers finite and in range, named when refused; error messages that quote a
bounded excerpt of what they refuse."""

from __future__ import annotations

import pytest

from videograin.engine.config import parse_settings
from videograin.engine.errors import JobError, excerpt
from videograin.engine.inputs.job import load_job


def test_an_excerpt_is_bounded_whatever_the_value():
    bomb: list = [0]
    for _ in range(30):
        bomb = [bomb] * 30  # what a YAML alias bomb builds: 30**30 leaves, as shared references
    assert len(excerpt(bomb)) <= 80 and len(excerpt("x" * 10**7)) <= 80 and len(excerpt(10**5000)) <= 80


@pytest.mark.parametrize("key, value", [
    ("guidance", float("nan")), ("guidance", float("inf")), ("control.scale", float("nan")),
    ("modulation.cross", float("-inf")), ("modulation.self", float("nan")), ("modulation.decay", float("inf")),
    ("modulation.until", float("nan")), ("control.scale", -1.0), ("guidance", 1e9), ("seed", 2**70),
])
def test_numbers_are_finite_and_in_range_and_named(key, value):
    settings = {"source_prompt": "a", "prompt": "an iron man", "regions": [{"phrase": "iron man"}]}
    if "." in key:
        section, name = key.split(".")
        settings[section] = {name: value}
    else:
        settings[key] = value
    with pytest.raises(JobError, match=f"'{key}' must"):
        parse_settings(settings)


def test_a_yaml_alias_bomb_is_refused_with_a_short_message(tmp_path):
    levels = ["&a0 [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    levels += [f"&a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]  # 9**10 leaves, 400 bytes
    job = tmp_path / "job.yaml"
    job.write_text(f"source_prompt: a\nprompt: an iron man\nguidance: [{', '.join(levels)}]\n"
                   "regions: [{phrase: iron man, mask: m}]\n")
    with pytest.raises(JobError) as refused:
        load_job(job)
    assert "'guidance' must be float" in str(refused.value) and len(str(refused.value)) < 200
