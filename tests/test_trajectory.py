"""Flow trajectories per attention resolution, and attention along them (fast path vs the literal one)."""

from __future__ import annotations

import pytest
import torch
from test_flow import translated_clip

from videograin.engine.inputs.flow import FlowConfig, clip_flow
from videograin.engine.method.families.sd15 import trajectory as trajectory_module
from videograin.engine.method.families.sd15.trajectory import (
    Trajectories,
    plan_groups,
    trajectory_attention,
    trajectory_attention_reference,
    trajectory_ids,
)
from videograin.engine.method.layout import level_size


def constant_flow(frames: int, height: int, width: int, dx: float, dy: float) -> torch.Tensor:
    return torch.tensor([dx, dy], dtype=torch.float32).expand(frames - 1, height, width, 2).contiguous()


def assert_partition(ids: torch.Tensor) -> None:
    """Every token has an id; no trajectory holds two tokens of one frame; ids are first tokens."""
    frames, tokens = ids.shape
    for frame in ids:
        assert len(torch.unique(frame)) == tokens
    flat = ids.flatten()
    assert (flat[flat] == flat).all()  # a trajectory's id is the index of its own first token
    assert (flat <= torch.arange(frames * tokens)).all()


def assert_follows(ids: torch.Tensor, height: int, width: int, sx: int, sy: int) -> tuple[int, int]:
    """(links found, links expected): token (y, x) of frame t continues at (y + sy, x + sx) of t + 1."""
    grid = ids.view(-1, height, width)
    ys, xs = slice(max(0, -sy), min(height, height - sy)), slice(max(0, -sx), min(width, width - sx))
    ty, tx = slice(ys.start + sy, ys.stop + sy), slice(xs.start + sx, xs.stop + sx)
    same = grid[1:, ty, tx] == grid[:-1, ys, xs]
    # Tokens whose source would lie outside the frame start trajectories of their own.
    entering = torch.ones(grid.shape[1:], dtype=torch.bool)
    entering[ty, tx] = False
    own_index = torch.arange(1, grid.shape[0])[:, None] * height * width + entering.flatten().nonzero()[:, 0]
    assert (grid[1:][:, entering] == own_index).all()
    return int(same.sum()), same.numel()


@pytest.mark.parametrize("height, width", [(512, 512), (384, 512)])
def test_exact_flow_gives_exact_trajectories_at_every_level(height, width):
    # (70, −38) px per frame: 8.75/4.75 latent cells, far from a rounding tie at every level.
    dx, dy = 70, -38
    forward = constant_flow(5, height, width, dx, dy)
    trajectories = Trajectories(forward, None, height // 8, width // 8, levels=(1, 2, 4, 8))
    for level in (1, 2, 4, 8):
        h, w = level_size(height // 8, width // 8, level)
        assert (h, w) == (height // (8 * level), width // (8 * level))
        ids = trajectories.ids(h * w)
        assert ids.shape == (5, h * w)
        assert_partition(ids)
        found, expected = assert_follows(ids, h, w, round(dx * w / width), round(dy * h / height))
        assert found == expected > 0


def test_estimated_flow_gives_the_shift_at_every_level():
    """DIS on a translated texture (non-square 512×384 working size) → trajectories at 64/32/16/8 cells."""
    height, width, dx, dy = 384, 512, 22, -13  # 2.75/1.625 cells at the finest level: no rounding tie
    flow = clip_flow(translated_clip(4, height, width, dx, dy), FlowConfig())
    forward, occluded = torch.from_numpy(flow.forward), torch.from_numpy(flow.occluded_forward)
    for level in (1, 2, 4, 8):
        h, w = level_size(48, 64, level)
        ids = trajectory_ids(forward, occluded, h, w)
        assert_partition(ids)
        found, expected = assert_follows(ids, h, w, round(dx * w / width), round(dy * h / height))
        assert found >= 0.97 * expected


def test_occlusion_ends_a_trajectory():
    forward = constant_flow(3, 64, 64, 8, 0)  # one 8-px cell per frame at 8×8
    occluded = torch.zeros(2, 64, 64, dtype=torch.bool)
    occluded[0, 16:24, 16:20] = True  # half a cell: still linked
    occluded[0, 32:40, 32:40] = True  # a whole cell of frame 0: its link is cut
    ids = trajectory_ids(forward, occluded, 8, 8)
    cell = lambda t, y, x: ids[t, y * 8 + x]
    assert cell(1, 2, 3) == cell(0, 2, 2)
    assert cell(1, 4, 5) == 64 + 4 * 8 + 5  # starts afresh
    assert cell(2, 4, 6) == cell(1, 4, 5)  # and goes on from there
    assert_partition(ids)


def test_conflicts_go_to_the_closest_landing_point_then_raster_order():
    forward = torch.zeros(1, 24, 32, 2)  # 2 frames, 3×4 cells of 8 px
    forward[0, 0:8, 0:8, 0] = 8 * 0.8  # cell (0, 0) lands on (0, 1), 0.2 cells off
    forward[0, 0:8, 16:24, 0] = -8 * 0.9  # cell (0, 2) lands on (0, 1), 0.1 cells off: it wins
    forward[0, 16:24, 0:8, 0] = 8.0  # cell (2, 0) lands exactly on (2, 1): first in raster order, it wins
    forward[0, 16:24, 16:24, 0] = -8.0  # cell (2, 2) lands exactly on (2, 1) too
    forward[0, 0:8, 8:16, 1] = -8.0  # the cells in the way leave the frame
    forward[0, 16:24, 8:16, 1] = 8.0
    ids = trajectory_ids(forward, None, 3, 4)
    assert ids[1, 1] == 2 and ids[1, 9] == 8
    assert ids[1, 0] == 12 and ids[1, 2] == 12 + 2  # nothing lands where the winners were
    assert_partition(ids)
    assert torch.equal(ids, trajectory_ids(forward, None, 3, 4))  # deterministic


def test_a_single_frame_has_singleton_trajectories():
    ids = trajectory_ids(torch.zeros(0, 64, 64, 2), None, 8, 8)
    assert torch.equal(ids, torch.arange(64)[None])


def test_levels_without_trajectories_answer_none():
    trajectories = Trajectories(constant_flow(3, 128, 96, 1, 0), None, 16, 12, levels=(1, 2))
    assert trajectories.ids(16 * 12) is not None and trajectories.ids(8 * 6) is not None
    assert trajectories.ids(4 * 3) is None
    assert trajectories.plan(4 * 3, torch.arange(3), torch.device("cpu")) is None
    with pytest.raises(ValueError, match="levels"):
        Trajectories(constant_flow(3, 128, 96, 1, 0), None, 16, 12, levels=(3,))


def random_groups(tokens: int, seed: int) -> torch.Tensor:
    """Group ids of every length from 1 to 16 (any integers, not contiguous), shuffled."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 17, (tokens,), generator=g)
    groups = torch.repeat_interleave(torch.arange(tokens) * 7 - 50, lengths)[:tokens]
    return groups[torch.randperm(tokens, generator=g)]


@pytest.mark.parametrize("seed", [0, 1])
def test_fast_path_equals_the_literal_equation(seed):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, 3, 600, 16, generator=g) for _ in range(3))
    groups = random_groups(600, seed)
    fast = trajectory_attention(q, k, v, groups)
    literal = trajectory_attention_reference(q, k, v, groups)
    assert torch.allclose(fast, literal, atol=1e-5, rtol=0)
    scaled = trajectory_attention(q, k, v, groups, scale=0.3)
    assert torch.allclose(scaled, trajectory_attention_reference(q, k, v, groups, scale=0.3), atol=1e-5, rtol=0)


def test_fast_path_in_small_chunks(monkeypatch):
    monkeypatch.setitem(trajectory_module.CHUNK_BYTES, "cpu", 4096)
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 300, 8, generator=g) for _ in range(3))
    groups = random_groups(300, 3)
    fast = trajectory_attention(q, k, v, groups)
    assert torch.allclose(fast, trajectory_attention_reference(q, k, v, groups), atol=1e-5, rtol=0)


def test_a_pass_holding_some_frames_attends_within_what_it_holds():
    """A window of a long clip: its frames' tokens, folded frame-major, grouped by the clip's trajectories."""
    height, width = 128, 96
    trajectories = Trajectories(constant_flow(8, height, width, 8, 8), None, height // 8, width // 8)
    tokens = (height // 8) * (width // 8)
    frame_ids = torch.tensor([0, 2, 3, 7])  # e.g. a window plus an anchor
    plan = trajectories.plan(tokens, frame_ids, torch.device("cpu"))
    assert plan is trajectories.plan(tokens, frame_ids, torch.device("cpu"))  # cached per pass
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 4 * tokens, 8, generator=g) for _ in range(3))
    groups = trajectories.ids(tokens)[frame_ids].flatten()
    fast = trajectory_attention(q, k, v, plan)
    assert torch.allclose(fast, trajectory_attention_reference(q, k, v, groups), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="tokens"):
        trajectory_attention(q[:, :, :-1], k[:, :, :-1], v[:, :, :-1], plan)


def test_anchors_keep_to_themselves_so_every_pass_agrees_on_them():
    height, width = 64, 64
    trajectories = Trajectories(constant_flow(10, height, width, 0, 0), None, 8, 8)  # still: one trajectory per cell
    g = torch.Generator().manual_seed(1)
    anchor_q, anchor_k, anchor_v = (torch.randn(1, 2, 2 * 64, 8, generator=g) for _ in range(3))
    outputs = []
    for window in ([1, 2, 3], [4, 6, 7]):
        frame_ids = torch.tensor([*window, 0, 9])  # anchors 0 and 9 come last, as in the pipeline
        plan = trajectories.plan(64, frame_ids, torch.device("cpu"), anchors=2)
        q, k, v = (torch.cat([torch.randn(1, 2, 3 * 64, 8, generator=g), a], 2) for a in (anchor_q, anchor_k, anchor_v))
        outputs.append(trajectory_attention(q, k, v, plan)[:, :, 3 * 64 :])
    assert torch.equal(outputs[0], outputs[1])
    alone = trajectory_attention_reference(anchor_q, anchor_k, anchor_v, trajectories.ids(64)[[0, 9]].flatten())
    assert torch.allclose(outputs[0], alone, atol=1e-5, rtol=0)


def test_singletons_return_their_value_exactly():
    v = torch.randn(1, 2, 5, 4)
    q, k = torch.randn(1, 2, 5, 4) * 100, torch.randn(1, 2, 5, 4) * 100
    assert torch.equal(trajectory_attention(q, k, v, torch.arange(5)), v)


def test_half_precision_on_cpu():
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 4, 500, 40, generator=g) for _ in range(3))
    groups = random_groups(500, 5)
    half = trajectory_attention(q.half(), k.half(), v.half(), groups)
    assert half.dtype == torch.float16 and torch.isfinite(half).all()
    assert torch.allclose(half.float(), trajectory_attention_reference(q, k, v, groups), atol=1e-2, rtol=0)


def test_plan_buckets_bound_the_padding():
    groups = random_groups(1000, 7)
    plan = plan_groups(groups)
    real = sum(int(valid.sum()) for _, valid in plan.buckets)
    padded = sum(valid.numel() for _, valid in plan.buckets)
    assert real == 1000 and padded < 2 * real
    seen = torch.cat([index[valid] for index, valid in plan.buckets])
    assert torch.equal(torch.sort(seen).values, torch.arange(1000))
    for index, valid in plan.buckets:
        member_groups = groups[index]
        assert (member_groups == member_groups[:, :1]).all()  # a row holds one group (padding repeats it)
