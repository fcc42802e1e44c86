"""ST-Layout attention: the reference against an independent reading of the paper's formulas, and the
fast path against the reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import videograin.engine.method.attention as attention
from videograin.engine.method.attention import layout_attention, modulated_attention


def dense_formula(q, k, v, positive, lam, scale):
    """The paper's equation in float64 NumPy, one query row at a time, written from the text."""
    q, k, v, positive = (np.asarray(x, dtype=np.float64) for x in (q, k, v, positive))
    out = np.zeros((q.shape[0], v.shape[1]))
    for x in range(q.shape[0]):
        s = k @ q[x]
        m = np.where(positive[x] > 0, s.max() - s, -(s - s.min()))
        logits = (s + lam[x] * m) * scale
        weights = np.exp(logits - logits.max())
        out[x] = (weights / weights.sum()) @ v
    return out


@pytest.mark.parametrize("lam", [0.0, 0.3, 1.0])
def test_reference_follows_the_formula(lam):
    rng = np.random.default_rng(1)
    q, k, v = rng.normal(size=(9, 8)), rng.normal(size=(13, 8)), rng.normal(size=(13, 5))
    positive = rng.random((9, 13)) > 0.5
    lams = np.full(9, lam)
    expected = dense_formula(q, k, v, positive, lams, 8**-0.5)
    got = modulated_attention(*(torch.tensor(x) for x in (q, k, v)), torch.tensor(positive), lam)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-10)


def test_reference_per_query_strength_and_custom_scale():
    rng = np.random.default_rng(2)
    q, k, v = rng.normal(size=(6, 4)), rng.normal(size=(7, 4)), rng.normal(size=(7, 3))
    positive = rng.random((6, 7)) > 0.3
    lams = rng.random(6)
    expected = dense_formula(q, k, v, positive, lams, 0.7)
    got = modulated_attention(
        *(torch.tensor(x) for x in (q, k, v)), torch.tensor(positive), torch.tensor(lams)[:, None], scale=0.7
    )
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-10)


def test_modulation_moves_attention_to_positive_keys():
    rng = np.random.default_rng(3)
    q, k = torch.tensor(rng.normal(size=(5, 8))), torch.tensor(rng.normal(size=(10, 8)))
    positive = torch.zeros(5, 10, dtype=torch.bool)
    positive[:, :3] = True
    probs = lambda lam: torch.softmax(  # noqa: E731
        ((q @ k.T) + lam * torch.where(positive, (q @ k.T).amax(-1, True) - q @ k.T, -(q @ k.T - (q @ k.T).amin(-1, True)))) * 8**-0.5, -1
    )
    eye = torch.eye(10, dtype=torch.float64)
    share = lambda lam: (modulated_attention(q, k, eye, positive, lam)[:, :3].sum(-1))  # noqa: E731
    assert torch.all(share(0.8) > share(0.0) + 0.05)
    torch.testing.assert_close(modulated_attention(q, k, eye, positive, 0.8), probs(0.8))


def _case(seed, batch, heads, n, m, d, query_regions, key_regions):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, n, d, generator=g)
    k = torch.randn(batch, heads, m, d, generator=g)
    v = torch.randn(batch, heads, m, d, generator=g)
    return q, k, v, query_regions, key_regions


def _positive(query_regions, key_regions):
    return (query_regions[..., :, None] & key_regions[..., None, :]) != 0


def _self_case(seed=0):
    # Uneven region sets (bit masks) over 2 frames of 6x6 tokens: a big background, a small region
    # overlapping a third one, a single pixel, and pixels in no region at all.
    regions = torch.full((72,), 0b001)
    regions[5:9] = 0b010
    regions[7:12] = 0b110
    regions[40] = 0b100
    regions[60:] = 0
    return _case(seed, 2, 3, 72, 72, 16, regions, regions)


def _cross_case(seed=0):
    # 20 pixels over 77 tokens: tokens outside every phrase have no region; bit 3 has no pixels.
    pixels = torch.tensor([0b1] * 12 + [0b10] * 5 + [0b110] * 3)
    tokens = torch.zeros(77, dtype=torch.long)
    tokens[2:4], tokens[6], tokens[9:11] = 0b10, 0b100, 0b1000
    return _case(seed, 2, 4, 20, 77, 8, pixels, tokens)


@pytest.mark.parametrize("case", [_self_case, _cross_case], ids=["self", "cross"])
@pytest.mark.parametrize("lam", [0.0, 0.25, 0.9, "per-query"])
@pytest.mark.parametrize("backend", ["chunked", "flex"])
def test_fast_path_matches_reference(case, lam, backend):
    q, k, v, qlab, klab = case()
    if lam == "per-query":
        lam = torch.rand(q.shape[2], generator=torch.Generator().manual_seed(4))
    strength = torch.as_tensor(lam, dtype=torch.float32)
    positive = _positive(qlab, klab)
    expected = modulated_attention(q, k, v, positive, strength.reshape(-1, 1) if strength.ndim else strength)
    got = layout_attention(q, k, v, qlab, klab, strength, backend=backend)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_fast_path_in_many_chunks_matches_reference(monkeypatch):
    q, k, v, qlab, klab = _self_case(seed=5)
    monkeypatch.setitem(attention.CHUNK_BYTES, "cpu", 2 * 3 * 72 * 4 * 7)  # 7 query rows per chunk
    assert attention._chunk_rows(q, 72) == 7
    expected = modulated_attention(q, k, v, _positive(qlab, klab), 0.6)
    torch.testing.assert_close(layout_attention(q, k, v, qlab, klab, 0.6, backend="chunked"), expected, atol=1e-5, rtol=1e-5)


def test_fast_path_per_batch_regions():
    q, k, v, _, _ = _case(6, 2, 2, 10, 10, 8, None, None)
    regions = torch.tensor([[1] * 5 + [2] * 5, [2] * 2 + [1] * 8])
    expected = modulated_attention(q, k, v, _positive(regions, regions)[:, None], 0.5)
    torch.testing.assert_close(layout_attention(q, k, v, regions, regions, 0.5), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype,tolerance", [(torch.float16, 1e-3), (torch.bfloat16, 1e-2)])
def test_fast_path_on_gpu_low_precision(dtype, tolerance):
    # Same rounded inputs for both; bf16's own output rounding is ~4e-3 at 0.5, hence its wider bound.
    q, k, v, qlab, klab = (t.cuda() for t in _self_case(seed=7))
    q, k, v = (t.to(dtype) for t in (q, k, v))
    expected = modulated_attention(q.float(), k.float(), v.float(), _positive(qlab, klab), 0.5)
    got = layout_attention(q, k, v, qlab, klab, 0.5)
    torch.testing.assert_close(got.float(), expected, atol=tolerance, rtol=0)
