"""The edit as the published VideoGrain code runs it (issue: reference fidelity), on the tiny model.

Each test fails without the behaviour it names; the first one checks that with every one of them turned
off the pipeline gives the frames it gave before they existed (bit for bit on the machine that wrote them).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from videograin.engine.config import REFERENCE_NEGATIVE_PROMPT, ModulationConfig
from videograin.engine.inputs.job import EditJob, load_job
from videograin.engine.method.attention import plain_attention
from videograin.engine.method.families.sd15 import injection as injection_module
from videograin.engine.method.families.sd15.processors import (
    AttentionContext,
    STLayoutAttnProcessor,
    install_processors,
)
from videograin.engine.method.layout import BACKGROUND_BIT, RegionLayout, phrase_token_indices
from videograin.engine.runner import edit_clip

GOLDEN = "pre-reference-fidelity"  # tests/data/GOLDEN.npz and .json
PROMPT = "an iron man and a spider man are jogging under cherry blossoms"


def _edit(pipe, job: EditJob, **changes):
    for key, value in changes.items():
        setattr(job.settings, key, value)
    return edit_clip(job, pipe)


def test_everything_off_reproduces_the_frames_from_before(demo_job, tiny_pipe, stored_frames):
    """tests/data/pre-reference-fidelity.npz: `edit_clip` on this demo job (4 frames, 64², 5 steps), whole
    and in passes of 3, written by commit 12fe31d, before any of this existed.

    Bit for bit on the machine it reproduces on (its .json says which); elsewhere within 1 level on at most
    2% of the values. Why: float32 sums depend on the order the CPU kernels add in, and that order is
    chosen per machine. Measured here (AMD EPYC, 2 cores), with the inputs of each layer held fixed: the
    3×3 convolutions and linear layers give the same bits at 1, 2 and 16 threads, but the 1×1 convolutions
    (attention blocks' proj_in / proj_out, resnet shortcuts, post_quant_conv) do not, because PyTorch runs
    a 1×1 convolution of a batch under 16 through oneDNN's jit_1x1 kernel only with more than one thread and
    by im2col + an MKL product with one. That single change moves the last bit (1e-7 relative) of those
    layers; 5 inversion and 5 guided steps carry it to the decoded pixels, and rounding to uint8 flips the
    values lying that close to a half level: 130 of 49,152 by 1 level at one thread, 719 with every
    convolution off oneDNN. The VAE decode is not the cause (decoding the same latents another way moves
    1 or 2 values). The Intel Xeon of issue 26 (146 values, at any thread count, ISA capped or not) was not
    at hand; there the kernels themselves differ: oneDNN and MKL size their blocks by the processor's
    caches, and MKL picks its code path by vendor, which neither a thread count nor an ISA cap pins. A
    change of the method moves nearly every value by more than a level (the whole and windowed frames
    differ in 97% of values, by up to 238), so the tolerance still catches one."""
    job = load_job(demo_job)
    s = job.settings
    s.modulation = ModulationConfig(until=0.3, layout="area", size="clip", self_branch="both")
    s.negative_prompt, s.phrase_embeddings, s.controlnet_attention, s.inject_step, s.blend = "", False, "full", 0, False
    s.flow.method = "none"
    stored_frames(GOLDEN, "whole", edit_clip(job, tiny_pipe).frames)
    s.window = 3
    stored_frames(GOLDEN, "windowed", edit_clip(job, tiny_pipe).frames)


def test_the_defaults_are_the_reference_behaviour(demo_job, tiny_pipe):
    s = load_job(demo_job).settings
    m = s.modulation
    assert (m.steps, m.until, m.layout, m.size, m.self_branch) == (15, None, "reference", "reference", "unconditional")
    assert s.phrase_embeddings and s.blend and s.controlnet_attention == "frame"
    assert s.negative_prompt == REFERENCE_NEGATIVE_PROMPT and s.flow.levels == [1]


@pytest.mark.parametrize("steps", [25, 50, 100])
def test_a_fixed_fifteen_steps_are_modulated(steps):
    sampler = DDIMScheduler(steps_offset=1)
    sampler.set_timesteps(steps)
    m = ModulationConfig()
    strengths = [m.strength(1.0, int(t), i, steps) for i, t in enumerate(sampler.timesteps)]
    assert all(s > 0 for s in strengths[:15]) and not any(strengths[15:])
    assert ModulationConfig(until=0.3).modulated_steps(steps) == round(0.3 * steps)


def test_phrase_embeddings_are_the_phrases_encoded_alone(tiny_pipe):
    phrases = ["iron man", "spider man", "cherry blossoms"]
    swapped = tiny_pipe.encode_target(PROMPT, phrases, swap=True)
    whole = tiny_pipe.encode_prompt(PROMPT)
    changed = torch.zeros(77, dtype=torch.bool)
    for phrase in phrases:
        positions = phrase_token_indices(tiny_pipe.tokenizer, PROMPT, phrase)
        alone = tiny_pipe.encode_prompt(phrase)
        torch.testing.assert_close(swapped[0, positions], alone[0, 1 : 1 + len(positions)], rtol=0, atol=0)
        changed[positions] = True
    torch.testing.assert_close(swapped[0, ~changed], whole[0, ~changed], rtol=0, atol=0)
    assert not torch.equal(swapped, whole)


def _spy_text(module, calls: list):
    def hook(_module, args, kwargs):
        calls.append(kwargs["encoder_hidden_states"].clone())

    return module.register_forward_pre_hook(hook, with_kwargs=True)


def test_unet_reads_swapped_text_and_controlnet_the_negative_prompt(demo_job, tiny_pipe):
    job = load_job(demo_job)
    unet_text, controlnet_text = [], []
    hooks = [_spy_text(tiny_pipe.unet, unet_text), _spy_text(tiny_pipe.controlnet, controlnet_text)]
    try:
        edit_clip(job, tiny_pipe)
    finally:
        for hook in hooks:
            hook.remove()
    frames = len(job.frames)
    edit_unet, edit_controlnet = unet_text[-1], controlnet_text[-1]  # the last edit step
    phrases = [r.phrase for r in job.settings.regions] + [job.settings.background_phrase]
    expected_target = tiny_pipe.encode_target(job.settings.prompt, phrases, swap=True)[0]
    torch.testing.assert_close(edit_unet[0], tiny_pipe.encode_prompt("")[0], rtol=0, atol=0)
    torch.testing.assert_close(edit_unet[frames], expected_target, rtol=0, atol=0)
    torch.testing.assert_close(edit_controlnet[0], tiny_pipe.encode_prompt(REFERENCE_NEGATIVE_PROMPT)[0], rtol=0, atol=0)
    torch.testing.assert_close(edit_controlnet[frames], tiny_pipe.encode_prompt(job.settings.prompt)[0], rtol=0, atol=0)


def test_controlnet_self_attention_is_per_frame(tiny_pipe):
    controlnet = tiny_pipe.controlnet
    context = AttentionContext(frames=2, frame_ids=torch.arange(2))
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    text = torch.randn(2, 77, 32, generator=torch.Generator().manual_seed(1))
    control = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))

    def first_frame_residuals(lat):
        down, mid = controlnet(lat, 501, encoder_hidden_states=text, controlnet_cond=control, return_dict=False)
        return torch.cat([d[0].flatten() for d in down] + [mid[0].flatten()])

    other = latents.clone()
    other[1] = torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(3))
    try:
        install_processors(tiny_pipe.unet, controlnet, context, controlnet_full_frame=False)
        assert all(isinstance(p, AttnProcessor2_0) for p in controlnet.attn_processors.values())
        torch.testing.assert_close(first_frame_residuals(latents), first_frame_residuals(other), rtol=0, atol=0)
        install_processors(tiny_pipe.unet, controlnet, context, controlnet_full_frame=True)
        assert not torch.allclose(first_frame_residuals(latents), first_frame_residuals(other))
    finally:
        install_processors(tiny_pipe.unet, controlnet, context, controlnet_full_frame=False)


def _self_attention_case(self_groups):
    """One self-attention layer over 2 guidance groups of 2 frames of 4x4 tokens with identical inputs."""
    torch.manual_seed(0)
    attn = Attention(query_dim=16, heads=2, dim_head=8)
    masks = np.zeros((1, 2, 32, 32), bool)
    masks[0, :, :, :16] = True
    layout = RegionLayout(masks, 8, 8, background_is_region=True, rules="area")
    context = AttentionContext(frames=2, frame_ids=torch.arange(2), layout=layout, self_groups=self_groups,
                               self_strength=0.9)
    attn.set_processor(STLayoutAttnProcessor(context))
    hidden = torch.randn(2, 16, 16).repeat(2, 1, 1)  # (groups · frames, tokens, channels)
    return attn, hidden


def test_self_attention_modulates_only_the_unconditional_branch_by_default():
    attn, hidden = _self_attention_case(self_groups=(0,))  # what `unconditional` sets when guided
    out = attn(hidden)
    assert not torch.allclose(out[:2], out[2:])
    # The conditional block is plain full-frame attention.
    q, k, v = (attn.to_q(hidden[2:]), attn.to_k(hidden[2:]), attn.to_v(hidden[2:]))
    fold = lambda x: x.reshape(1, 32, 2, 8).transpose(1, 2)  # noqa: E731
    plain = plain_attention(fold(q), fold(k), fold(v)).transpose(1, 2).reshape(2, 16, 16)
    torch.testing.assert_close(out[2:], attn.to_out[0](plain))
    attn, hidden = _self_attention_case(self_groups=(0, 1))
    out = attn(hidden)
    torch.testing.assert_close(out[:2], out[2:])


def test_an_unguided_edit_modulates_the_self_attention_of_its_one_branch(demo_job, tiny_pipe, monkeypatch):
    # With guidance 1 there is no unconditional branch: the reference modulates the one branch there is.
    job = load_job(demo_job)
    job.settings.guidance, job.settings.modulation.self_branch = 1.0, "unconditional"
    modulated_self = []
    attend = STLayoutAttnProcessor._full_frame

    def spy(processor, q, k, v, regions, *args):
        modulated_self.append(regions is not None)
        return attend(processor, q, k, v, regions, *args)

    monkeypatch.setattr(STLayoutAttnProcessor, "_full_frame", spy)
    modulated = edit_clip(job, tiny_pipe).frames
    assert any(modulated_self)
    job.settings.modulation.self_ = 0.0
    assert not np.array_equal(modulated, edit_clip(job, tiny_pipe).frames)


def test_injected_features_reach_the_up_blocks_only_for_the_first_inject_steps(demo_job, tiny_pipe, monkeypatch):
    events: list[tuple[str, int, str, torch.Tensor]] = []
    swap = injection_module.FeatureInjection._swap

    def spy(self, name, tensor):
        result = swap(self, name, tensor)
        if self.mode is not None:
            events.append((self.mode, self.timestep, name, result.detach().clone()))
        return result

    monkeypatch.setattr(injection_module.FeatureInjection, "_swap", spy)
    job = load_job(demo_job)
    job.settings.steps = 5
    injected = _edit(tiny_pipe, job, inject_step=2).frames
    sampler = DDIMScheduler.from_config(tiny_pipe.scheduler.config)
    sampler.set_timesteps(5)
    first_two = [int(t) for t in sampler.timesteps[:2]]
    recorded = {(t, name): tensor for mode, t, name, tensor in events if mode == "record"}
    injections = [(t, name, tensor) for mode, t, name, tensor in events if mode == "inject"]
    names = {name for _, name, _ in injections}
    assert {"up_blocks.1.resnets.0", "up_blocks.1.resnets.1"} <= names  # resnets of the up path
    assert {n for n in names if n.endswith((".q", ".k"))}  # and self-attention queries / keys
    assert all(not n.startswith(("down_blocks", "mid_block")) for n in names)
    assert sorted({t for t, _, _ in injections}) == sorted(first_two)
    for t, name, tensor in injections:  # the very features recorded while inverting the same timestep
        torch.testing.assert_close(tensor, recorded[(t, name)], rtol=0, atol=0)
    events.clear()
    plain = _edit(tiny_pipe, job, inject_step=0).frames
    assert not events and not np.array_equal(plain, injected)


@pytest.mark.parametrize("rules", ["reference", "area"])
def test_blending_keeps_the_source_outside_every_region(rules, demo_job, tiny_pipe, monkeypatch):
    job = load_job(demo_job)
    job.settings.background_phrase = None  # no background phrase: the background is not a region
    job.settings.modulation.layout = rules  # `area` labels the background too: it must still be kept
    job.settings.prompt = "an iron man and a spider man are jogging"
    inversions, step_inputs, decoded = [], [], []
    invert, predict, decode = tiny_pipe.invert_pass, tiny_pipe._predict_noise, tiny_pipe.decode_latents

    def spy_invert(*args, **kwargs):
        inversions.append(invert(*args, **kwargs))
        return inversions[-1]

    def spy_predict(latents, timestep, text, *args):
        if text.shape[0] == 2:  # edit steps (guided)
            step_inputs.append((int(timestep), latents.clone()))
        return predict(latents, timestep, text, *args)

    def spy_decode(latents, *args):
        decoded.append(latents.clone())
        return decode(latents, *args)

    monkeypatch.setattr(tiny_pipe, "invert_pass", spy_invert)
    monkeypatch.setattr(tiny_pipe, "_predict_noise", spy_predict)
    monkeypatch.setattr(tiny_pipe, "decode_latents", spy_decode)
    blended = edit_clip(job, tiny_pipe).frames
    source = inversions[0].source
    layout = RegionLayout(job.masks, 8, 8, background_is_region=False, rules=rules)
    regions = layout.level(64, torch.device("cpu")).regions & ~BACKGROUND_BIT
    outside = (regions == 0).reshape(4, 1, 8, 8).expand(-1, 4, -1, -1)
    assert outside.any() and not outside.all()
    assert len(step_inputs) == job.settings.steps
    for timestep, latents in step_inputs[1:]:  # every step after the first starts from blended latents
        torch.testing.assert_close(latents[outside], source[timestep][outside], rtol=0, atol=0)
    # What is decoded is the source's own encoding outside the regions, i.e. its reconstruction there (the
    # random tiny VAE's mid-block attention is global, so decoded pixels are compared no further).
    final = decoded[-1]
    torch.testing.assert_close(final[outside], source[0][outside], rtol=0, atol=0)
    assert not torch.equal(final[~outside], source[0][~outside])
    assert not np.array_equal(_edit(tiny_pipe, job, blend=False).frames, blended)


def test_trajectory_attention_runs_while_inverting_and_editing(demo_job, tiny_pipe, monkeypatch):
    from videograin.engine.method.families.sd15 import processors

    calls = []
    real = processors.trajectory_attention

    def spy(q, k, v, plan):
        calls.append((q.shape[0], plan.tokens))
        return real(q, k, v, plan)

    monkeypatch.setattr(processors, "trajectory_attention", spy)
    job = load_job(demo_job)
    with_flow = edit_clip(job, tiny_pipe).frames
    tokens = 4 * 8 * 8  # 4 frames of the tiny UNet's finest level (64² working size → 8² latents)
    steps = job.settings.steps
    assert {c[1] for c in calls} == {tokens}  # level 1 only, the reference's flatten_res [1]
    assert sum(1 for c in calls if c[0] == 1) >= steps and sum(1 for c in calls if c[0] == 2) >= steps
    calls.clear()
    job.settings.flow.method = "none"
    assert not np.array_equal(edit_clip(job, tiny_pipe).frames, with_flow) and not calls


def test_passes_of_a_long_clip_compute_the_same_anchors_with_every_feature_on(tmp_path, tiny_pipe, monkeypatch):
    from videograin.engine.demo import write_demo_inputs

    job = load_job(write_demo_inputs(tmp_path / "input", frames=7, size=64, steps=4))
    job.settings.window, job.settings.inject_step = 4, 2  # anchors 0 and 6; trajectories, blending on
    job.settings.background_phrase, job.settings.prompt = None, "an iron man and a spider man are jogging"
    results = []
    edit = tiny_pipe.edit_pass

    def spy(ctx, *args, **kwargs):
        results.append((ctx.frame_ids.tolist(), ctx.anchors, edit(ctx, *args, **kwargs)))
        return results[-1][2]

    monkeypatch.setattr(tiny_pipe, "edit_pass", spy)
    frames = edit_clip(job, tiny_pipe).frames
    assert len(results) >= 2 and frames.shape[0] == 7
    anchors = [(ids[-n:], latents[-n:]) for ids, n, latents in results]
    for ids, latents in anchors[1:]:
        assert ids == anchors[0][0]
        torch.testing.assert_close(latents, anchors[0][1], rtol=0, atol=0)
