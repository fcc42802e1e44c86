"""`videograin check`: a job validated without weights, its warnings, its layout picture, and the same
verdict as `edit` on every bad job."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from test_edit import _rewrite

from videograin.engine import check
from videograin.engine.cli import main
from videograin.engine.config import parse_settings
from videograin.engine.inputs.job import EditJob, load_job
from videograin.engine.inputs.media import write_png
from videograin.engine.method.layout import RegionLayout, region_bit

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "two-runners" / "job.yaml"
CPU = torch.device("cpu")


def _findings(report: check.CheckReport, code: str) -> list[str]:
    return [f.message for f in report.warnings if f.code == code]


def _job(masks: np.ndarray, phrases: list[str], size: int = 64, **settings) -> EditJob:
    """An in-memory job over mattes (K, F, H, W) bool, on a plain grey clip of the mattes' size."""
    frames = np.full((*masks.shape[1:], 3), 120, np.uint8)
    parsed = parse_settings({
        "source_prompt": "a scene", "prompt": "a scene with " + " and ".join(phrases), "model": "tiny",
        "regions": [{"phrase": p} for p in phrases], "source": {"width": size, "height": size}, **settings,
    })
    return EditJob(parsed, frames, masks)


# -- the example job, with no model files on the machine -------------------------------------------------

def _picture_cell(picture: np.ndarray, level: int, column: int, row: int, col: int, h: int, w: int) -> np.ndarray:
    """The colour layout.png shows for cell (row, col) of resolution `level` (0 = finest) of a frame column."""
    cell_h = check.CELL  # the example's frames are square
    top = (18 + check.GAP) + (cell_h + check.GAP) * (1 + level) + check.GAP
    left = check.MARGIN + column * (check.CELL + check.GAP)
    y = top + int((row + 0.5) * cell_h / h)
    x = left + int((col + 0.5) * check.CELL / w)
    return picture[y, x]


def test_example_job_is_checked_without_weights_and_pictured(tmp_path):
    out = tmp_path / "check"

    def videograin_check(*args: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty-hf-home")}  # no model files
        return subprocess.run([sys.executable, "-m", "videograin", "check", str(EXAMPLE), "--device", "cpu", *args],
                              capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)

    run = videograin_check("--out", str(out))
    # The job is right, but `edit` would stop at once: SD-1.5 and its ControlNet are not on this machine.
    assert run.returncode == 2, run.stderr
    assert "error [model_unavailable]" in run.stderr
    assert "hf download stable-diffusion-v1-5/stable-diffusion-v1-5" in run.stderr
    assert "8 frames, 128x128 source, edited at 512x512" in run.stdout
    assert "tokenizer   not found: token positions unknown" in run.stdout
    assert "warning [tokenizer_missing]" in run.stdout
    assert "estimate" in run.stdout and "an estimate" in run.stdout
    report = json.loads((out / "check.json").read_text())
    assert report["ok"] is False and [r["phrase"] for r in report["summary"]["regions"]] == ["iron man", "spider man"]

    # layout.png: frames 0, 2, 5, 7; under them every attention resolution of the layout the edit builds.
    picture = cv2.cvtColor(cv2.imread(str(out / "layout.png")), cv2.COLOR_BGR2RGB)
    job = load_job(EXAMPLE)
    picks = check.picture_frames(8)
    assert picks == [0, 2, 5, 7] and picture.shape[1] == check.MARGIN + 4 * (check.CELL + check.GAP)
    layout = RegionLayout(job.masks, 64, 64, background_is_region=True)
    for level, divisor in enumerate((1, 2, 4, 8)):
        h = w = 64 // divisor
        sets = layout.level(h * w, CPU).regions.reshape(8, h, w)
        for column, frame in enumerate(picks):
            for row, col in [(h // 2, c) for c in range(w)]:  # the row through both runners
                shown = _picture_cell(picture, level, column, row, col, h, w)
                value = int(sets[frame, row, col])
                expected = (check.region_colour(0) if value == region_bit(0) else check.region_colour(1)
                            if value == region_bit(1) else check.BACKGROUND_COLOUR)
                assert np.abs(shown.astype(int) - expected).max() <= 1, (divisor, frame, row, col, value, shown)

    tiny = videograin_check("--model", "tiny")
    assert tiny.returncode == 0, tiny.stderr
    assert "tokens 3-9" in tiny.stdout  # 'iron man', one byte-level token per character


# -- warnings ------------------------------------------------------------------------------------------

def test_a_thin_wire_is_reported_where_the_label_maps_lose_it():
    size = 512
    masks = np.zeros((2, 3, size, size), bool)
    masks[0, :, 100:400, 200:400] = True  # a body
    masks[1, :, :, 16:19] = True  # a 3-px wire: columns 16-18 hold a multiple of 8 and 16, not of 32 or 64
    job = _job(masks, ["robot", "wire"], size=size)
    report = check.check_job(job, CPU)
    wire = report.summary["regions"][1]
    # The reference rules sample the latent (64²) every 8 px, then every 2nd, 4th and 8th latent cell.
    assert set(wire["vanishes"]) == {"16x16", "8x8"} and wire["cells"] == ["64x64", "32x32"]
    layout = RegionLayout(job.masks, 64, 64, background_is_region=False)
    lost = {f"{64 // d}x{64 // d}" for d in (1, 2, 4, 8)
            if not ((layout.level((64 // d) ** 2, CPU).regions & region_bit(1)) != 0).any()}
    assert set(wire["vanishes"]) == lost
    (message,) = _findings(report, "region_vanishes")
    assert "'wire'" in message and "16x16 (3 of 3 frames), 8x8 (3 of 3 frames)" in message and "32x32" not in message
    assert "at least 64 px" in message  # one 8x8 cell of a 512² frame
    assert not report.summary["regions"][0]["vanishes"]


def test_the_summary_names_each_resolution_once():
    """Cells everywhere the region is painted, on some frames only, or nowhere: never one size twice."""
    size = 512
    masks = np.zeros((2, 3, size, size), bool)
    masks[0, :, 100:400, 200:400] = True
    masks[1, :2, :, 16:19] = True  # lost at 16x16 and 8x8 (see above)
    masks[1, 2, :, 32:35] = True  # column 32: a multiple of 32, not of 64: kept at 16x16 on this frame
    report = check.check_job(_job(masks, ["robot", "wire"], size=size), CPU)
    line = next(row for row in check.format_report(report).splitlines() if " wire " in row)
    assert line.endswith("64x64, 32x32; 16x16 on 1 of 3 frames; none at 8x8"), line


def test_empty_frames_and_a_flickering_matte_are_reported():
    masks = np.zeros((3, 6, 64, 64), bool)
    masks[0, :, 20:40, 20:40] = True
    masks[0, 2:4] = False  # empty on frames 2 and 3
    for f in range(6):  # jumps from one side to the other every frame
        masks[1, f, 10:30, (4, 40)[f % 2]:(4, 40)[f % 2] + 20] = True
    masks[2, :, 44:60, 44:60] = True  # steady
    report = check.check_job(_job(masks, ["cat", "ball", "box"]), CPU)
    (empty,) = _findings(report, "region_empty_frames")
    assert "'cat' is empty on frames 2-3 of 6" in empty
    (flicker,) = _findings(report, "matte_flickers")
    assert "'ball'" in flicker and "0-1 (0.00)" in flicker
    assert report.summary["regions"][1]["flicker"][0] == [0, 1, 0.0] and not report.summary["regions"][2]["flicker"]
    assert not report.errors


def test_overlaps_say_how_each_rule_resolves_them():
    masks = np.zeros((2, 2, 64, 64), bool)
    masks[0, :, 10:30, 10:30] = True
    masks[1, :, 20:40, 20:40] = True  # 10 × 10 pixels shared on each frame
    report = check.check_job(_job(masks, ["cat", "dog"]), CPU)
    (overlap,) = report.summary["overlaps"]
    assert overlap == {"regions": [0, 1], "pixels": 200, "frames": 2, "area_winner": 1, "area_pixels": 200}
    (message,) = _findings(report, "regions_overlap")
    assert "share 200 pixels" in message and "belong to both" in message
    assert "region 2 wins over region 1 on 200" in message


def test_phrase_tokens_split_into_pieces_or_shared_between_phrases(tmp_path, demo_job):
    """A real CLIP BPE tokenizer (vocab + merges on disk, loaded as the edit loads it) that knows 'iron' and
    'man' as words, and 'spiderman' only letter by letter."""
    tokenizer = check._byte_level_tokenizer()
    vocab = tokenizer.get_vocab()
    merges = ["i r", "ir o", "iro n</w>", "m a", "ma n</w>"]
    for merge in merges:
        vocab[merge.replace(" ", "")] = len(vocab)
    folder = tmp_path / "model" / "tokenizer"
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    job = load_job(_rewrite(demo_job, prompt="an iron man and a spiderman", regions__1__phrase="spiderman",
                            background={"phrase": None}))
    job.settings.model = str(tmp_path / "model")
    report = check.check_job(job, CPU)
    assert report.summary["model"]["tokenizer"] == "found"
    # 'an' is two tokens (1-2), 'iron man' two words the tokenizer knows (3-4), 'and a' four (5-8).
    assert [r["tokens"] for r in report.summary["regions"]] == [[3, 4], list(range(9, 16))]
    (split,) = _findings(report, "phrase_split")
    assert "'spiderman'" in split and "7 pieces (s|p|i|d|e|r|man)" in split
    assert {e.code for e in report.errors} == {"model_unavailable"}  # a tokenizer is not a model (nor a ControlNet)
    job.settings.regions[1].phrase = "man"  # found first inside 'iron man'
    (shared,) = _findings(check.check_job(job, CPU), "phrase_tokens_shared")
    assert "'iron man' and 'man' share the prompt's tokens 4" in shared


def test_a_clip_longer_than_one_pass_is_reported(demo_job):
    job = load_job(demo_job)
    job.settings.window = 3
    report = check.check_job(job, CPU)
    assert report.summary["passes"]["passes"] > 1 and report.summary["passes"]["chosen"] == "job"
    (message,) = _findings(report, "clip_longer_than_pass")
    assert "need 2 passes of at most 3 frames" in message


def test_the_picture_shows_the_frames_asked_for(demo_job):
    from videograin.engine.errors import JobError

    job = load_job(demo_job)  # 4 frames of 64²: every frame is a column by default
    spread = check.check_job(job, CPU).layout
    assert spread.shape[1] == check.MARGIN + 4 * (check.CELL + check.GAP)
    legend_top = 18 + check.GAP + (check.CELL + check.GAP) * (1 + len(check.ATTENTION_LEVELS))

    def column(picture: np.ndarray, index: int) -> np.ndarray:
        left = check.MARGIN + index * (check.CELL + check.GAP)
        return picture[:legend_top, left:left + check.CELL]

    report = check.check_job(job, CPU, layout_frames=[3, 1])
    assert report.layout.shape[1] == check.MARGIN + 2 * (check.CELL + check.GAP)
    assert np.array_equal(column(report.layout, 0), column(spread, 1))  # in clip order
    assert np.array_equal(column(report.layout, 1), column(spread, 3))
    for frames, words in [([4], r"\[4\] are not frames of the clip: its frames are 0 to 3"),
                          ([], "names 0 frames: give 1 to 4"), ([0] * 5, "names 5 frames")]:
        with pytest.raises(JobError, match=words):
            check.check_job(job, CPU, layout_frames=frames)


# -- one table of bad jobs for check and edit ----------------------------------------------------------

def _zero_mattes(job_path: Path) -> None:
    for matte in (job_path.parent / "masks" / "left").iterdir():
        write_png(matte, np.zeros((64, 64), np.uint8))


def _empty_model_folder(job_path: Path) -> None:
    (job_path.parent / "model").mkdir()
    _rewrite(job_path, model=str(job_path.parent / "model"))


BAD_JOBS = {
    "phrase not in the prompt": ({"regions__0__phrase": "batman"}, None, "bad_job"),
    "matte folder missing": ({"regions__1__mask": "missing"}, None, "bad_job"),
    "empty matte": ({}, _zero_mattes, "bad_job"),
    "unknown setting": ({"colour": "red"}, None, "bad_job"),
    "more frames asked than exist": ({"source__count": 9}, None, "bad_job"),
    "window of one frame (passes share anchors)": ({"window": 1}, None, "bad_job"),
    "phrase beyond the text encoder's 77 tokens": (
        {"prompt": "a " * 70 + "an iron man and a spider man are jogging under cherry blossoms"}, None, "bad_job"),
    "model folder without weights": ({"control": {"type": "none"}}, _empty_model_folder, "model_unavailable"),
    "model neither here nor cached (offline)": ({"model": "someone/not-cached", "control": {"type": "none"}}, None,
                                                "model_unavailable"),
    "depth estimator folder without a model": ({"control": {"type": "depth", "path": "estimator"}},
                                               lambda job: (job.parent / "estimator").mkdir(), "model_unavailable"),
    "supplied flow folder without flow": ({"flow": {"method": "frames", "path": "flow"}},
                                          lambda job: (job.parent / "flow").mkdir(), "bad_job"),
}


def _verdict(capsys, *argv: str) -> str | None:
    """The error code the command stops with, None when it succeeds."""
    status = main(list(argv))
    stderr = capsys.readouterr().err
    if status == 0:
        return None
    assert status == 2
    return re.search(r"error \[(\w+)\]", stderr).group(1)


@pytest.mark.parametrize("name", [None, *BAD_JOBS], ids=["good job", *BAD_JOBS])
def test_check_and_edit_refuse_the_same_jobs(name, demo_job, tmp_path, capsys):
    changes, prepare, code = BAD_JOBS[name] if name else ({}, None, None)
    _rewrite(demo_job, steps=2, **changes)
    if prepare:
        prepare(demo_job)
    out = tmp_path / "edit"
    assert _verdict(capsys, "check", str(demo_job), "--device", "cpu") == code
    assert _verdict(capsys, "edit", str(demo_job), "--out", str(out), "--device", "cpu") == code
    assert out.exists() == (code is None)


def test_a_bad_job_writes_no_check_either(demo_job, tmp_path, capsys):
    out, busy = tmp_path / "check", tmp_path / "busy"
    _rewrite(demo_job, regions__0__phrase="batman")
    assert _verdict(capsys, "check", str(demo_job), "--out", str(out)) == "bad_job"
    assert not out.exists()
    _rewrite(demo_job, regions__0__phrase="iron man")
    busy.mkdir()
    (busy / "mine.txt").write_text("keep")
    assert _verdict(capsys, "check", str(demo_job), "--out", str(busy)) == "bad_job"
    assert [p.name for p in busy.iterdir()] == ["mine.txt"]
    assert _verdict(capsys, "check", str(demo_job), "--out", str(out)) is None
    assert _verdict(capsys, "check", str(demo_job), "--out", str(out)) is None  # a previous check's folder is reused
    assert sorted(p.name for p in out.iterdir()) == ["check.json", "layout.png"]


# -- the estimate ----------------------------------------------------------------------------------------

def test_the_edit_announces_a_long_estimate_only(demo_job, capsys):
    job = load_job(EXAMPLE)
    job.settings.model = "tiny"
    check.announce_estimate(job, "cpu")
    assert "this edit takes about" in capsys.readouterr().out  # 8 frames at 512², 50 + 50 steps
    check.announce_estimate(load_job(demo_job), "cpu")
    assert capsys.readouterr().out == ""


def test_the_estimate_counts_loading_and_is_where_the_readme_figures_come_from():
    """Loading is a phase of every estimate (for a small tiny job it is nearly all of it); the tiny model's
    figures reproduce the measurement they were fitted to (BENCHMARKS.md: 22-27 s per inversion step on the
    example at 512²), and README's figures for the example are the estimate's."""
    from videograin.engine.estimate import CPU_RUNS, STARTUP_S

    small = check._estimate(load_job(EXAMPLE).settings, [list(range(4))], CPU)  # SD-1.5 shapes
    assert small.phases_s["load"] == STARTUP_S + CPU_RUNS["sd15"].load_s
    job = load_job(EXAMPLE)
    job.settings.model, job.settings.steps = "tiny", 5
    job.settings.source.width = job.settings.source.height = 64
    small = check._estimate(job.settings, [list(range(4))], CPU)
    assert small.phases_s["load"] == STARTUP_S + CPU_RUNS["tiny"].load_s
    assert small.seconds == pytest.approx(sum(small.phases_s.values()))
    assert small.phases_s["load"] > 5 * (small.seconds - small.phases_s["load"])

    example = load_job(EXAMPLE)
    passes = [list(range(len(example.frames)))]
    real = check._estimate(example.settings, passes, CPU)
    example.settings.model = "tiny"
    tiny = check._estimate(example.settings, passes, CPU)
    assert 22 <= tiny.phases_s["invert"] / example.settings.steps <= 27
    assert 45 * 60 <= tiny.seconds <= 75 * 60
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert (f"estimates the example job at about an hour with `--model tiny` and about "
            f"{round(real.seconds / 3600)} h with SD-1.5") in readme


def test_full_frame_attention_makes_long_passes_cost_more_than_their_frames():
    from videograin.engine.estimate import estimate_edit

    one = estimate_edit("sd15-random", CPU, [8], 64 * 64, 512 * 512, 50)
    two = estimate_edit("sd15-random", CPU, [16], 64 * 64, 512 * 512, 50)
    halves = estimate_edit("sd15-random", CPU, [8, 8], 64 * 64, 512 * 512, 50)
    assert two.phases_s["invert"] > 2 * one.phases_s["invert"] and halves.seconds < two.seconds
    assert two.peak_memory_gib > one.peak_memory_gib == halves.peak_memory_gib
    assert "an estimate" in one.line()



# -- the reference client's check (what an editor's panel calls) -----------------------------------------

def test_the_reference_client_checks_a_job_inline_and_by_paths(tiny_engine, demo_job):
    from videograin.engine.demo import DEMO_PROMPT, synthetic_clip
    from videograin.engine.inputs.media import decode_png
    from videograin.protocol.client import EngineClient, EngineError

    client = EngineClient(tiny_engine)
    try:
        client.hello()
        clip, mattes = synthetic_clip(3, 64, 64)
        settings = {"source_prompt": "two men", "prompt": DEMO_PROMPT, "source": {"width": 64, "height": 64},
                    "regions": [{"phrase": "iron man"}, {"phrase": "spider man"}]}
        reply, png = client.check(settings, clip, mattes)
        assert reply["ok"] and reply["summary"]["clip"]["frames"] == 3 and reply["summary"]["model"]["name"] == "tiny"
        assert decode_png(png).shape[1] == check.MARGIN + 3 * (check.CELL + check.GAP)
        _, png = client.check(settings, clip, mattes, layout_frames=[2])
        assert decode_png(png).shape[1] == check.MARGIN + check.CELL + check.GAP
        with pytest.raises(EngineError, match=r"bad_job.*its frames are 0 to 2"):
            client.check(settings, clip, mattes, layout_frames=[3])
        job = load_job(demo_job)  # the same job by paths, read by the engine
        by_paths = {**settings, "source": {"path": job.settings.source.path, "width": 64, "height": 64},
                    "regions": [{"phrase": r.phrase, "mask": r.mask} for r in job.settings.regions]}
        jobs = [j["job"] for j in client.status()]
        reply, _ = client.check(by_paths)
        assert reply["summary"]["clip"]["frames"] == 4 and [j["job"] for j in client.status()] == jobs  # none queued
        with pytest.raises(EngineError, match="bad_job"):
            client.check({**settings, "prompt": "two robots"}, clip, mattes)
    finally:
        client.close()
