"""The terminal's progress bars: honest counts, rates and ETAs, driven by a fake clock."""

from __future__ import annotations

import io
import re

from videograin.engine.progress import ProgressBars, ProgressEvent

# (seconds since the previous event, event) for an edit of 8 frames, 4 steps, then a second pass whose
# inversion comes from the cache (every step reported at once).
TIMELINE = [
    (0.0, ProgressEvent("load", 0, 1)), (18.0, ProgressEvent("load", 1, 1)),
    (0.0, ProgressEvent("encode", 0, 8)), (3.0, ProgressEvent("encode", 8, 8)),
    *[(30.0 if i == 0 else 27.0, ProgressEvent("invert", i + 1, 4, None, 0, 2)) for i in range(4)],
    *[(0.5, ProgressEvent("edit", i + 1, 4, None, 0, 2)) for i in range(4)],
    (2.0, ProgressEvent("decode", 4, 8)),
    (0.01, ProgressEvent("invert", 4, 4, None, 1, 2)),
    *[(0.5, ProgressEvent("edit", i + 1, 4, None, 1, 2)) for i in range(4)],
    (2.0, ProgressEvent("decode", 8, 8)),
]
FASTEST = {"encode": 8 / 3.0, "invert": 1 / 27.0, "edit": 1 / 0.5, "decode": 4 / 2.0}  # per second


def _lines() -> list[str]:
    now = [0.0]
    out = io.StringIO()
    bars = ProgressBars(file=out, clock=lambda: now[0])
    for wait, event in TIMELINE:
        now[0] += wait
        bars(event)
    bars.close()
    return [line for line in re.split(r"[\r\n]+", out.getvalue()) if line.strip()]


def _phase_lines(lines: list[str]) -> dict[str, list[list[str]]]:
    """Each counted phase's bars (a new bar starts at every change of the line's label)."""
    phases: dict[str, list[list[str]]] = {}
    label = None
    for line in lines:
        name = line.split(":")[0].strip()
        if name != label:
            phases.setdefault(name.split(" ")[0], []).append([])
            label = name
        phases[name.split(" ")[0]][-1].append(line)
    return phases


def test_the_first_line_of_a_phase_shows_nothing_done_and_no_rate():
    phases = _phase_lines(_lines())
    assert set(phases) == {"load", "encode", "invert", "edit", "decode"}
    for name in ("invert", "edit"):
        for bar in phases[name]:
            assert re.search(r"\| 0/4 steps$", bar[0]), bar[0]
    assert re.search(r"\| 0/8 frames$", phases["encode"][0][0])
    assert re.search(r"\| 4/8 frames$", phases["decode"][1][0])  # the second pass's decode goes on from 4
    # Load is one piece of work: no count, no step, its time once done.
    load = [line.strip() for line in phases["load"][0]]
    assert load == ["load", "load: ...", "load: done in 18.0 s", "load: done in 18.0 s"]


def test_rates_never_beat_the_time_the_work_took_and_the_eta_waits_for_a_second_step():
    phases = _phase_lines(_lines())
    rates = 0
    for name, bars in phases.items():
        for bar in bars:
            for index, line in enumerate(bar):
                for value, unit in re.findall(r"([\d.]+) (s/step|s/frame|steps/s|frames/s)", line):
                    rate = float(value) if unit.endswith("/s") else 1 / float(value)
                    assert rate <= FASTEST[name] * 1.06, (line, FASTEST[name])  # the display rounds to 0.1
                    rates += 1
                if "ETA" in line:
                    done = [int(n) for n in re.findall(r"(\d+)/\d+ (?:steps|frames)", line)][0]
                    assert index >= 2 and done >= 2, line  # after the bar's opening line and its first update
    assert rates >= 12
    # The first inversion step (with warm-up) gives the first rate; the ETA uses the steady 27 s ones.
    invert = phases["invert"][0]
    assert "30.0 s/step" in invert[1] and "ETA" not in invert[1]
    assert "27.0 s/step, ETA 0:54" in invert[2]
    # A cached inversion reports its steps at once: nothing was timed, so no rate.
    assert not re.search(r"/s|s/", " ".join(phases["invert"][1]))


def test_a_track_bar_counts_steps_over_regions_not_clip_frames():
    out = io.StringIO()
    bars = ProgressBars(file=out, clock=lambda: 0.0)
    for step in range(33):  # two regions of an 8-frame clip, both ways
        bars(ProgressEvent("track", step, 32))
    bars.close()
    last = [line for line in re.split(r"[\r\n]+", out.getvalue()) if line.strip()][-1]
    assert "32/32 steps" in last and "a step: one frame of one region, one way" in last and "frames" not in last
