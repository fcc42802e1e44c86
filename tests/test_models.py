"""Model loading through the real `from_pretrained` path, on tiny components the tests save themselves."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from videograin.engine.demo import synthetic_clip
from videograin.engine.errors import ModelUnavailableError
from videograin.engine.method.families.sd15.pipeline import VideoGrainPipeline
from videograin.engine.models import get_pipeline, load_pipeline, tiny_pipeline


def test_saved_tiny_pipeline_loads_back_and_edits_the_same(tmp_path):
    saved = tiny_pipeline(seed=3)
    saved.save_pretrained(tmp_path / "tiny")
    assert (tmp_path / "tiny" / "unet" / "diffusion_pytorch_model.safetensors").exists()
    loaded = load_pipeline(str(tmp_path / "tiny"), None, torch.float32)
    assert isinstance(loaded, VideoGrainPipeline) and loaded.controlnet is not None
    frames, masks = synthetic_clip(2, 64, 64)
    run = lambda pipe: pipe(frames, masks, "an iron man and a spider man", "two men", ["iron man", "spider man"], steps=2).frames  # noqa: E731
    np.testing.assert_array_equal(run(loaded), run(saved))


def test_controlnet_loads_from_its_own_folder(tmp_path):
    pipe = tiny_pipeline()
    pipe.controlnet.save_pretrained(tmp_path / "cn")
    pipe.controlnet = None
    pipe.register_modules(controlnet=None)
    pipe.save_pretrained(tmp_path / "sd")
    loaded = load_pipeline(str(tmp_path / "sd"), str(tmp_path / "cn"), torch.float32)
    assert loaded.controlnet is not None
    assert load_pipeline(str(tmp_path / "sd"), None, torch.float32).controlnet is None


def test_missing_weights_fail_fast_with_instructions(tmp_path):
    started = time.perf_counter()
    with pytest.raises(ModelUnavailableError, match="hf download someone/no-such-model"):
        get_pipeline("someone/no-such-model", None, torch.device("cpu"))
    with pytest.raises(ModelUnavailableError, match="cannot be loaded"):
        load_pipeline(str(tmp_path), None, torch.float32)  # a folder without weights
    assert time.perf_counter() - started < 30


def test_random_model_names_build_without_files():
    pipe = get_pipeline("tiny", "any-controlnet", torch.device("cpu"))
    assert pipe.controlnet is not None and pipe.unet.dtype == torch.float32
    assert get_pipeline("tiny", None, torch.device("cpu")).controlnet is None


def test_frames_above_the_vae_size_go_through_tiles(monkeypatch):
    pipe = get_pipeline("tiny", None, torch.device("cpu"))
    native = pipe.vae.config.sample_size
    tiled = []
    original = type(pipe.vae)._tiled_encode
    monkeypatch.setattr(type(pipe.vae), "_tiled_encode", lambda vae, x: tiled.append(x.shape) or original(vae, x))
    pipe.encode_frames(np.zeros((1, native, native, 3), np.uint8))
    assert tiled == []  # at the native size: one pass, exactly as without tiling
    latents = pipe.encode_frames(np.zeros((1, native * 2, native + 8, 3), np.uint8))
    assert len(tiled) == 1 and latents.shape[-2:] == (native * 2 // 8, (native + 8) // 8)
