"""ST-Layout attention on Wan 2.1 (issue: multi-grained editing on a video diffusion transformer).

Every test runs the tiny random Wan model, saved with `save_pretrained` in a folder laid out like a hub
checkpoint (model_index.json naming `WanPipeline` / `WanVACEPipeline`) and loaded back through the real
`from_pretrained` path; random weights make no edit, so the tests check the mechanics.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from diffusers.models.transformers.transformer_wan import WanAttnProcessor

from videograin.engine.config import ModulationConfig, parse_settings
from videograin.engine.errors import JobError
from videograin.engine.families import WAN, family_warnings, model_family
from videograin.engine.method.attention import modulated_attention
from videograin.engine.method.families.wan.grid import pad_clip, padded_length, union_per_latent_frame
from videograin.engine.method.families.wan.pipeline import WanVideoGrainPipeline
from videograin.engine.method.families.wan.processors import WanAttentionContext, WanLayoutAttnProcessor, rotate
from videograin.engine.method.layout import RegionLayout, region_bit
from videograin.engine.models import get_pipeline, wan_tiny_pipeline

PROMPT = "an iron man and a spider man jog under cherry blossoms"
PHRASES = ["iron man", "spider man", "cherry blossoms"]


def _save_as_hub_checkpoint(pipe, folder: Path, class_name: str) -> Path:
    pipe.save_pretrained(folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["_class_name"] = class_name  # what a downloaded Wan-AI/... folder says
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


@pytest.fixture(scope="module")
def wan_folder(tmp_path_factory) -> Path:
    return _save_as_hub_checkpoint(wan_tiny_pipeline(), tmp_path_factory.mktemp("wan") / "t2v", "WanPipeline")


@pytest.fixture(scope="module")
def wan_pipe(wan_folder) -> WanVideoGrainPipeline:
    return get_pipeline(str(wan_folder), None, torch.device("cpu"))


def _clip(frames: int = 5, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Random frames and three mattes: left and right halves of the top, and the bottom half."""
    video = (np.random.default_rng(0).random((frames, size, size, 3)) * 255).astype(np.uint8)
    masks = np.zeros((3, frames, size, size), bool)
    half = size // 2
    masks[0, :, :half, :half] = masks[1, :, :half, half:] = masks[2, :, half:] = True
    return video, masks


def test_the_family_comes_from_model_index(wan_folder, tmp_path):
    assert model_family(str(wan_folder)).name == WAN and not model_family(str(wan_folder)).vace
    vace = _save_as_hub_checkpoint(wan_tiny_pipeline(vace=True), tmp_path / "vace", "WanVACEPipeline")
    assert model_family(str(vace)).vace
    renamed = tmp_path / "stable-diffusion-looking-name"
    wan_folder.rename(renamed)  # the name says nothing: the folder's model_index.json decides
    try:
        assert model_family(str(renamed)).name == WAN
    finally:
        renamed.rename(wan_folder)


def test_saved_wan_loads_back_through_from_pretrained(wan_pipe):
    assert isinstance(wan_pipe, WanVideoGrainPipeline) and wan_pipe.transformer.config.num_layers == 2
    assert wan_pipe.size_multiple == 16


def test_union_per_latent_frame_keeps_a_thin_matte_that_moves_fast():
    # A one-token-wide bar (16 px) that jumps a token to the right every frame: each latent frame's regions
    # must hold it wherever it was during the four frames that latent frame holds.
    frames, size = 9, 128
    masks = np.zeros((1, frames, size, size), bool)
    for f in range(frames):
        masks[0, f, :, 16 * (f % 8) : 16 * (f % 8) + 16] = True
    union = union_per_latent_frame(masks)
    assert union.shape == (1, 3, size, size)
    layout = RegionLayout(union, 8, 8, background_is_region=False, levels=(1,), modulate_finest=True)
    level = layout.level(64, torch.device("cpu"))
    assert level.modulated
    columns = (level.regions.view(3, 8, 8)[:, 0, :] == region_bit(0)).numpy()
    assert columns[0].tolist() == [True] + [False] * 7  # latent frame 0: frame 0 alone
    assert columns[1].tolist() == [False, True, True, True, True, False, False, False]  # frames 1-4
    assert columns[2].tolist() == [True] + [False] * 4 + [True] * 3  # frames 5-8: columns 5, 6, 7 and 0


def test_clips_pad_to_four_k_plus_one():
    assert [padded_length(n) for n in (1, 2, 5, 6, 9, 81)] == [1, 5, 5, 9, 9, 81]
    clip = np.arange(6)[:, None]
    assert pad_clip(clip)[:, 0].tolist() == [0, 1, 2, 3, 4, 5, 5, 5, 5]


def test_processor_equals_the_literal_equation(wan_pipe):
    attn = wan_pipe.transformer.blocks[0].attn1
    torch.manual_seed(1)
    frames, grid = 2, 4
    tokens = frames * grid
    hidden = torch.randn(1, tokens, attn.inner_dim)
    masks = np.zeros((2, frames, 2, 2), bool)
    masks[0, :, :, 0], masks[1, :, :, 1] = True, True
    layout = RegionLayout(masks, 2, 2, background_is_region=False, levels=(1,), modulate_finest=True)
    ctx = WanAttentionContext(layout=layout, frame_ids=torch.arange(frames), self_groups=(0,), self_strength=0.4)
    cos, sin = wan_pipe.transformer.rope(torch.empty(1, 1, frames, 4, 4))
    with torch.no_grad():
        got = WanLayoutAttnProcessor(ctx)(attn, hidden, rotary_emb=(cos, sin))
        # The same layer by hand: projections, norms, rotary, then the paper's equation, literally.
        q = rotate(attn.norm_q(attn.to_q(hidden)).unflatten(2, (attn.heads, -1)), cos, sin).transpose(1, 2)
        k = rotate(attn.norm_k(attn.to_k(hidden)).unflatten(2, (attn.heads, -1)), cos, sin).transpose(1, 2)
        v = attn.to_v(hidden).unflatten(2, (attn.heads, -1)).transpose(1, 2)
        regions, size, _ = ctx.level(grid, torch.device("cpu"))
        positive = (regions[:, None] & regions[None, :]) != 0
        strength = (0.4 * size)[:, None]
        expected = modulated_attention(q, k, v, positive, strength).transpose(1, 2).flatten(2)
        expected = attn.to_out[0](expected)
    assert (got - expected).abs().max() < 1e-5


def test_without_modulation_the_transformer_is_diffusers_own(wan_pipe):
    transformer = wan_pipe.transformer
    torch.manual_seed(2)
    latents = torch.randn(2, 16, 2, 4, 4)
    text = torch.randn(2, 512, 32)
    timestep = torch.tensor([500.0, 500.0])
    with torch.no_grad():
        transformer.set_attn_processor(WanAttnProcessor())
        theirs = transformer(latents, timestep, text, return_dict=False)[0]
        ctx = WanAttentionContext(frame_ids=torch.arange(2))
        transformer.set_attn_processor(WanLayoutAttnProcessor(ctx))
        ours = transformer(latents, timestep, text, return_dict=False)[0]
    assert (ours - theirs).abs().max() < 1e-5


def _leakage(pipe, strength: float) -> dict[str, float]:
    video, masks = _clip()
    # Constant λ at every step: no decay, every step modulated (so the whole run is the modulated part).
    modulation = ModulationConfig(cross=strength, self_=0.0, decay=0.0, until=1.0)
    return pipe(video, masks[:2], PROMPT, "two men jog", PHRASES[:2], background_phrase=PHRASES[2], steps=2,
                guidance=5.0, modulation=modulation, measure_leakage=True, blend=False).leakage_whole_run


def test_modulation_cuts_cross_attention_leakage_at_least_in_half(wan_pipe):
    plain, modulated = _leakage(wan_pipe, 0.0), _leakage(wan_pipe, 0.9)
    for phrase in PHRASES:
        assert modulated[phrase] * 2 <= plain[phrase], (phrase, plain[phrase], modulated[phrase])


def test_blending_keeps_the_source_latents_outside_every_matte(wan_pipe, monkeypatch):
    video, masks = _clip()
    masks[:, :, :, 24:] = False  # the right quarter is in no matte
    finals, cleans = [], []
    edit_pass, encode = WanVideoGrainPipeline.edit_pass, WanVideoGrainPipeline.encode_video
    monkeypatch.setattr(WanVideoGrainPipeline, "edit_pass", lambda *a, **k: finals.append(edit_pass(*a, **k)) or finals[-1])
    monkeypatch.setattr(WanVideoGrainPipeline, "encode_video", lambda *a, **k: cleans.append(encode(*a, **k)) or cleans[-1])
    wan_pipe(video, masks[:2], PROMPT, "two men jog", PHRASES[:2], steps=2, guidance=5.0)
    outside = (slice(None), slice(None), slice(None), slice(None), slice(3, None))  # latent columns 3 (of 4)
    torch.testing.assert_close(finals[0][outside], cleans[0][outside], rtol=0, atol=0)
    assert not torch.equal(finals[0][..., :3], cleans[0][..., :3])  # inside, the edit is its own


def test_anchor_latent_frames_are_identical_in_every_pass(wan_pipe, monkeypatch):
    video, masks = _clip(frames=17)  # 5 latent frames
    results = []
    edit_pass = WanVideoGrainPipeline.edit_pass

    def recording(self, ctx, *args, **kwargs):
        latents = edit_pass(self, ctx, *args, **kwargs)
        results.append((ctx.frame_ids.tolist(), ctx.anchors, latents))
        return latents

    monkeypatch.setattr(WanVideoGrainPipeline, "edit_pass", recording)
    wan_pipe(video, masks, PROMPT, "two men jog", PHRASES[:2], background_phrase=PHRASES[2], steps=2, guidance=5.0,
             window=9)  # 3 latent frames a pass
    assert len(results) >= 2
    anchors = {}
    for ids, count, latents in results:
        for position, frame in enumerate(ids[len(ids) - count :], start=len(ids) - count):
            anchors.setdefault(frame, []).append(latents[:, :, position])
    assert anchors and all(len(copies) == len(results) for copies in anchors.values())
    for copies in anchors.values():
        for copy in copies[1:]:
            assert torch.equal(copy, copies[0])


def test_control_on_text_to_video_is_refused_with_the_fix(wan_folder):
    settings = parse_settings({"prompt": "a cat", "source_prompt": "a dog", "regions": [{"phrase": "cat"}],
                               "control": {"type": "canny"}, "source": {"width": 64, "height": 64}})
    with pytest.raises(JobError, match="VACE"):
        family_warnings(settings, model_family(str(wan_folder)))
    settings.control.type = "auto"
    settings.inject_step = 3
    warnings = family_warnings(settings, model_family(str(wan_folder)), frames=6)
    assert any("inject_step" in w for w in warnings) and any("padded to 9" in w for w in warnings)


def test_a_working_size_off_sixteen_is_refused_with_the_nearest(wan_folder):
    settings = parse_settings({"prompt": "a cat", "source_prompt": "a dog", "regions": [{"phrase": "cat"}],
                               "source": {"width": 840, "height": 480}})
    with pytest.raises(JobError, match="use 848x480"):
        family_warnings(settings, model_family(str(wan_folder)))


def test_vace_takes_control_maps_as_context(tmp_path):
    pipe = get_pipeline("wan-vace-tiny", None, torch.device("cpu"))
    video, masks = _clip()
    control = 255 - video
    with torch.no_grad():
        plain = pipe.vace_context(video, masks.any(0), None)
        steered = pipe.vace_context(video, masks.any(0), control)
    assert plain.shape == (1, 96, 2, 4, 4)
    assert not torch.equal(plain, steered)
    source_size = masks[:2].repeat(2, axis=2).repeat(2, axis=3)  # mattes come at the source's size
    result = pipe(video, source_size, PROMPT, "two men jog", PHRASES[:2], control_maps=control, steps=1, guidance=5.0)
    assert result.frames.shape == video.shape


def test_edit_command_runs_end_to_end_on_a_wan_folder(wan_folder, demo_job, tmp_path):
    from videograin.engine.cli import main

    data = yaml.safe_load(demo_job.read_text())
    data.pop("control")
    data.update(model=str(wan_folder), guidance=5.0, steps=2)
    data["source"].update(width=64, height=64)
    job = demo_job.with_name("wan.yaml")
    job.write_text(yaml.safe_dump(data))
    assert main(["edit", str(job), "--out", str(tmp_path / "out"), "--device", "cpu"]) == 0
    report = json.loads((tmp_path / "out" / "result.json").read_text())
    frames = sorted((tmp_path / "out" / "frames").iterdir())
    assert report["frames"] == len(frames) == 4  # 4 source frames: padded to 5 for Wan, padding dropped
    assert set(report["leakage"]) == {"iron man", "spider man", "cherry blossoms"}


def _wan_job(demo_job: Path, model: str) -> Path:
    data = yaml.safe_load(demo_job.read_text())
    data.pop("control")
    data.update(model=model, guidance=5.0, steps=2)
    job = demo_job.with_name(f"wan-{Path(model).name}.yaml")
    job.write_text(yaml.safe_dump(data))
    return job


def test_edit_on_a_wan_engine_matches_the_in_process_frames(demo_job, tmp_path):
    from conformance import start_engine

    from videograin.engine.cli import main
    from videograin.protocol.client import EngineClient

    process, _, connection = start_engine(tmp_path / "engine", "--model", "wan-tiny")
    try:
        client = EngineClient(str(connection))
        try:
            welcome = client.hello(client="test")
        finally:
            client.close()
        assert welcome["family"] == {"name": "wan", "vace": False, "frames": "4k+1", "size_multiple": 16}
        job = _wan_job(demo_job, "wan-tiny")
        unnamed = job.with_name("no-model.yaml")  # edited with the engine's model, loaded by its family's rules
        unnamed.write_text(yaml.safe_dump({k: v for k, v in yaml.safe_load(job.read_text()).items() if k != "model"}))
        assert main(["edit", str(unnamed), "--out", str(tmp_path / "engine-out"), "--engine", str(connection)]) == 0
    finally:
        process.kill()
        process.wait()
    assert main(["edit", str(job), "--out", str(tmp_path / "here"), "--device", "cpu"]) == 0
    for name in ("00000.png", "00003.png"):
        ours, theirs = (tmp_path / folder / "frames" / name for folder in ("here", "engine-out"))
        assert ours.read_bytes() == theirs.read_bytes()


def test_timeline_round_trip_on_wan(tmp_path):
    pytest.importorskip("opentimelineio")
    import opentimelineio as otio
    from test_timeline import build_media, build_timeline

    from videograin.engine.cli import main

    build_media(tmp_path / "project")
    path = tmp_path / "project" / "cut.otio"
    otio.adapters.write_to_file(build_timeline(tmp_path / "project"), str(path))
    out = tmp_path / "out" / "cut_edited.otio"
    assert main(["timeline", str(path), "--out", str(out), "--device", "cpu", "--model", "wan-tiny"]) == 0
    timeline = otio.adapters.read_from_file(str(out))
    edited = [track for track in timeline.tracks if track.name == "videograin"]
    assert len(edited) == 1 and len(list(edited[0].find_clips())) == 2
    for clip in edited[0].find_clips():
        frames = Path(clip.media_reference.target_url_base.removeprefix("file:"))
        report = json.loads((frames.parent / "result.json").read_text())
        assert report["settings"]["model"] == "wan-tiny"
        assert report["frames"] == clip.media_reference.end_frame() - clip.media_reference.start_frame + 1


def test_wan22_two_experts_split_the_steps_at_the_boundary():
    # Wan 2.2 A14B: a high-noise expert above boundary_ratio · 1000 and a low-noise one below it.
    high = wan_tiny_pipeline()
    low = wan_tiny_pipeline(seed=1)
    pipe = WanVideoGrainPipeline(tokenizer=high.tokenizer, text_encoder=high.text_encoder, vae=high.vae,
                                 scheduler=high.scheduler, transformer=high.transformer,
                                 transformer_2=low.transformer, boundary_ratio=0.9)
    calls = []
    for name, expert in (("high", pipe.transformer), ("low", pipe.transformer_2)):
        expert.register_forward_pre_hook(lambda module, args, kwargs, name=name: calls.append(name) and None,
                                         with_kwargs=True)
    video, masks = _clip()
    pipe(video, masks[:2], PROMPT, "two men jog", PHRASES[:2], steps=4, guidance=1.0, blend=False)
    assert "high" in calls and "low" in calls
    edit = calls[4:]  # after the 4 inversion steps
    assert edit == sorted(edit, key=["high", "low"].index)  # the high-noise expert first, then the other


def test_check_draws_the_layout_on_wans_token_grid_and_warns_where_a_matte_vanishes():
    from videograin.engine.check import check_job, run_check
    from videograin.engine.config import EditSettings, RegionConfig, SourceConfig
    from videograin.engine.inputs.job import EditJob

    example = Path(__file__).parents[1] / "examples" / "two-runners" / "wan-job.yaml"
    report = run_check(example, model="wan-tiny", device="cpu")
    assert report.summary["model"]["family"] == "wan" and report.summary["clip"]["latent_frames"] == 3
    assert report.summary["resolutions"] == [{"size": [32, 32], "modulated": True}]  # 512² / 16
    assert any("padded to 9" in w.message for w in report.warnings) and not report.errors
    assert report.layout is not None and report.layout.ndim == 3

    video, masks = _clip(frames=5, size=64)
    masks[0] = False
    masks[0, :, :, 20:22] = True  # 2 px wide, between the token grid's sampling columns (0, 16, 32, 48)
    settings = EditSettings("two men jog", PROMPT, [RegionConfig("iron man"), RegionConfig("spider man")],
                            source=SourceConfig(width=64, height=64), model="wan-tiny")
    report = check_job(EditJob(settings, video, masks[:2]), torch.device("cpu"))
    vanishes = [w.message for w in report.warnings if w.code == "region_vanishes"]
    assert len(vanishes) == 1 and "'iron man'" in vanishes[0] and "2 of 2 latent frames" in vanishes[0]


def test_cross_attention_processor_equals_the_literal_equation(wan_pipe):
    attn = wan_pipe.transformer.blocks[0].attn2
    torch.manual_seed(3)
    frames = 2
    hidden, text = torch.randn(1, frames * 4, attn.inner_dim), torch.randn(1, 6, attn.inner_dim)
    masks = np.zeros((2, frames, 2, 2), bool)
    masks[0, :, 0], masks[1, :, 1] = True, True
    layout = RegionLayout(masks, 2, 2, background_is_region=False, levels=(1,), modulate_finest=True)
    words = torch.tensor([0, region_bit(0), region_bit(0), 0, region_bit(1), 0])
    ctx = WanAttentionContext(layout=layout, token_regions=words, frame_ids=torch.arange(frames), cross_groups=(0,),
                              cross_strength=0.8)
    with torch.no_grad():
        got = WanLayoutAttnProcessor(ctx)(attn, hidden, encoder_hidden_states=text)
        q = attn.norm_q(attn.to_q(hidden)).unflatten(2, (attn.heads, -1)).transpose(1, 2)
        k = attn.norm_k(attn.to_k(text)).unflatten(2, (attn.heads, -1)).transpose(1, 2)
        v = attn.to_v(text).unflatten(2, (attn.heads, -1)).transpose(1, 2)
        regions, _, size = ctx.level(4, torch.device("cpu"))
        positive = (regions[:, None] & words[None, :]) != 0
        expected = modulated_attention(q, k, v, positive, (0.8 * size)[:, None]).transpose(1, 2).flatten(2)
        expected = attn.to_out[0](expected)
    assert (got - expected).abs().max() < 1e-5


def test_attention_maps_per_clip_frame_gather_inside_their_regions(wan_pipe):
    video, masks = _clip(frames=6)  # padded to 9 inside: maps come back for every clip frame given
    modulation = ModulationConfig(cross=0.9, self_=0.0, decay=0.0, until=1.0)
    result = wan_pipe(pad_clip(video), pad_clip(masks[:2], axis=1), PROMPT, "two men jog", PHRASES[:2],
                      background_phrase=PHRASES[2], steps=2, guidance=5.0, modulation=modulation, attention_maps=True)
    modulated, plain = result.attention_maps["iron man"]
    assert modulated.shape == plain.shape == (9, 2, 2)  # the 32² clip's 2×2 token grid, per clip frame
    inside = masks[0, 0, ::16, ::16]  # the top-left token
    assert modulated[:, inside].mean() / modulated.mean() > plain[:, inside].mean() / plain.mean()


def test_a_vace_job_with_control_edits_through_the_cli_at_another_working_size(tmp_path):
    from videograin.engine.cli import main
    from videograin.engine.demo import write_demo_inputs

    job = write_demo_inputs(tmp_path / "input", frames=6, size=128, steps=2, model="wan-vace-tiny")
    data = yaml.safe_load(job.read_text())
    data["control"], data["source"] = {"type": "canny"}, {**data["source"], "width": 64, "height": 64}
    job.write_text(yaml.safe_dump(data))  # mattes and frames at 128², the edit at 64², canny through VACE
    assert main(["edit", str(job), "--out", str(tmp_path / "out"), "--device", "cpu"]) == 0
    assert len(list((tmp_path / "out" / "frames").iterdir())) == 6
