"""`videograin eval` and its metrics: warp error under the source's flow, CLIP-T / CLIP-F on a tiny
random CLIP saved and loaded through from_pretrained, leakage from result.json, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from videograin.engine.config import FlowConfig
from videograin.engine.inputs.flow import clip_flow
from videograin.engine.metrics.warp import warp_error


def _texture(height: int, width: int) -> np.ndarray:
    rng = np.random.default_rng(3)
    import cv2

    return cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), (5, 5), 0)


def test_warp_error_is_low_for_a_steady_edit_and_high_for_flicker():
    texture = _texture(80, 120)
    source = np.stack([np.roll(texture, 2 * t, axis=1) for t in range(5)])  # pans 2 px a frame
    flow = clip_flow(source, FlowConfig())
    steady = warp_error(255 - source, flow)  # an "edit" that moves exactly with the source
    flicker = np.stack([np.clip(f.astype(int) + (40 if t % 2 else -40), 0, 255) for t, f in enumerate(255 - source)])
    flickering = warp_error(flicker.astype(np.uint8), flow)
    assert steady < 1.0 and flickering > 100 * max(steady, 0.1)  # ±40 levels a frame: about 295
    assert warp_error(source[:1], clip_flow(source[:1], FlowConfig())) is None


def _tiny_clip(folder: Path) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from videograin.engine.models import _byte_level_tokenizer

    config = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         vocab_size=1000, max_position_embeddings=77, bos_token_id=512, eos_token_id=513, pad_token_id=513),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(folder)
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=_byte_level_tokenizer(),
    )
    processor.save_pretrained(folder)
    return folder


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "videograin", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def two_results(tmp_path_factory):
    from videograin.engine.demo import write_demo_inputs

    folder = tmp_path_factory.mktemp("eval")
    job = write_demo_inputs(folder / "input", frames=4, size=64, steps=3)
    outs = []
    for name, seed in (("a", 0), ("b", 1)):
        data = job.read_text().replace("seed: 0", f"seed: {seed}")
        (folder / f"{name}.yaml").write_text(data.replace("path: frames", f"path: {folder / 'input' / 'frames'}")
                                             .replace("mask: masks", f"mask: {folder / 'input' / 'masks'}"))
        run = _cli("edit", str(folder / f"{name}.yaml"), "--out", str(folder / name), "--device", "cpu")
        assert run.returncode == 0, run.stderr
        outs.append(folder / name)
    return outs


def test_eval_reports_warp_error_clip_scores_and_leakage(two_results, tmp_path):
    first, second = two_results
    clip = _tiny_clip(tmp_path / "clip")
    run = _cli("eval", str(first), "--against", str(second), "--clip", str(clip), "--device", "cpu",
               "--json", str(tmp_path / "figures.json"))
    assert run.returncode == 0, run.stderr
    assert "warp error" in run.stdout and "CLIP-T" in run.stdout
    assert "leakage 'iron man' (modulated)" in run.stdout and "leakage 'iron man' (whole run)" in run.stdout
    figures = json.loads((tmp_path / "figures.json").read_text())
    recorded = json.loads((first / "result.json").read_text())
    assert len(figures) == 2 and figures[0]["warp_error_from"] == "source"
    # Recomputed from the source at the working size (64², as the edit ran): the edit's own figure.
    assert figures[0]["warp_error"] == pytest.approx(recorded["warp_error"], rel=1e-6)
    assert figures[0]["leakage"] == recorded["leakage"]
    assert figures[0]["leakage_whole_run"] == recorded["leakage_whole_run"] != recorded["leakage"]
    for column in figures:
        assert -100 <= column["clip_t"] <= 100 and -100 <= column["clip_f"] <= 100
    again = _cli("eval", str(first), "--clip", str(clip), "--device", "cpu")
    assert again.returncode == 0 and f"{figures[0]['clip_t']:.4g}" in again.stdout  # deterministic


def test_eval_of_bad_folders_is_one_clear_error(two_results, tmp_path):
    cases = {
        tmp_path / "missing": "is not a folder",
        tmp_path / "empty": "has no result.json",
        tmp_path / "badjson": "is not readable JSON",
        tmp_path / "noframes": "has no frames/ folder",
    }
    (tmp_path / "empty").mkdir()
    (tmp_path / "badjson").mkdir()
    (tmp_path / "badjson" / "result.json").write_text("{oops")
    (tmp_path / "noframes").mkdir()
    (tmp_path / "noframes" / "result.json").write_text(json.dumps({"settings": {"prompt": "x"}}))
    # A demo's folder: its results are one level down, and the error says where.
    (tmp_path / "demo" / "result").mkdir(parents=True)
    (tmp_path / "demo" / "result" / "result.json").write_text("{}")
    cases[tmp_path / "demo"] = f"the results are in '{tmp_path / 'demo' / 'result'}' (`videograin eval"
    for folder, message in cases.items():
        run = _cli("eval", str(folder))
        assert run.returncode == 2 and message in run.stderr, (folder, run.stderr)
    run = _cli("eval", str(two_results[0]), "--clip", str(tmp_path / "no-clip"))
    assert run.returncode == 2 and "CLIP weights" in run.stderr and "videograin eval --clip" in run.stderr
