"""Cross-attention leakage, reported over the modulated steps and levels (what the attention maps show)
with the whole run's figure beside it (metrics/leakage.py)."""

from __future__ import annotations

import pytest
import torch

from videograin.engine.config import ModulationConfig
from videograin.engine.inputs.job import load_job
from videograin.engine.metrics.leakage import LeakageMeter, describe_leakage
from videograin.engine.runner import edit_clip


def test_the_meter_keeps_the_modulated_layers_apart_from_the_whole_run():
    meter = LeakageMeter(2)
    pixels = torch.tensor([[2, 2, 0, 0]])  # (F=1, N=4): region bit 1 holds the first two pixels
    tokens = torch.tensor([0, 2])  # token 1 is the region's phrase
    gathered = torch.tensor([[0.5, 0.5], [0.5, 0.5], [1.0, 0.0], [1.0, 0.0]])[None, None]  # all mass inside
    spread = torch.tensor([[0.5, 0.5]] * 4)[None, None]  # half of it outside
    meter.add(gathered, pixels, tokens, modulated=True)
    meter.add(spread, pixels, tokens, modulated=False)
    assert meter.shares("modulated") == {1: pytest.approx(0.0)}
    assert meter.shares("whole_run") == {1: pytest.approx(1 - 2.0 / 3.0)}  # inside 1 + 1 of 1 + 2 in all
    summed = meter + meter
    assert summed.shares("whole_run") == meter.shares("whole_run") and summed.shares() == meter.shares()
    assert LeakageMeter(2).shares() == {}


def test_an_edit_reports_both_figures_named(demo_job, tiny_pipe):
    job = load_job(demo_job)  # 5 steps
    # The reference rules: 2 modulated steps of 5, and the finest level never modulated.
    job.settings.modulation = ModulationConfig(decay=0.0, steps=2)
    result = edit_clip(job, tiny_pipe, measure_leakage=True)
    assert set(result.leakage) == set(result.leakage_whole_run) == {"iron man", "spider man", "cherry blossoms"}
    for phrase, share in result.leakage.items():  # where the modulation acted, the words stay home
        assert share < result.leakage_whole_run[phrase], (phrase, share, result.leakage_whole_run[phrase])
    # Every step and level modulated: the two figures are the same sums.
    job.settings.modulation = ModulationConfig(decay=0.0, layout="area", steps=5)
    every = edit_clip(job, tiny_pipe, measure_leakage=True)
    assert every.leakage == pytest.approx(every.leakage_whole_run, rel=1e-12)
    # Nothing modulated: no modulated figure, the whole run's still.
    job.settings.modulation = ModulationConfig(enabled=False)
    off = edit_clip(job, tiny_pipe, measure_leakage=True)
    assert off.leakage == {} and set(off.leakage_whole_run) == set(result.leakage)
    lines = describe_leakage(off.leakage, off.leakage_whole_run)
    assert "over the modulated steps and levels, as the attention maps show it: none" in lines[1]
    assert lines[2].startswith("  over the whole run") and "iron man: " in lines[2]
    assert "attention blind to the regions scores 1 − the region's share of the frame" in lines[3]
