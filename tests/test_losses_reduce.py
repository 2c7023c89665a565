"""Tests for posttrain.losses.reduce: masked reductions and aggregation modes."""

import math

import pytest
import torch

from posttrain.losses.reduce import (
    AGG_MODES,
    aggregate,
    batch_mean,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
    num_units,
)

D = torch.float64
RTOL = 1e-9


def close(a, b, rtol=RTOL, atol=1e-12):
    torch.testing.assert_close(torch.as_tensor(a, dtype=D), torch.as_tensor(b, dtype=D), rtol=rtol, atol=atol)


L = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=D)
M = torch.tensor([[0, 1, 1], [1, 0, 0]], dtype=torch.bool)


def test_aggregate_modes_hand_worked():
    """l = [[1,2,3],[4,5,6]], m = [[0,1,1],[1,0,0]]:
    token-mean              = (2+3+4)/3            = 3
    seq-mean-token-sum      = ((2+3) + 4)/2        = 4.5
    seq-mean-token-mean     = (2.5 + 4)/2          = 3.25
    seq-mean-token-sum-norm = (5 + 4)/(2·C), C = 4 = 1.125
    """
    close(aggregate(L, M, "token-mean"), 3.0)
    close(aggregate(L, M, "seq-mean-token-sum"), 4.5)
    close(aggregate(L, M, "seq-mean-token-mean"), 3.25)
    close(aggregate(L, M, "seq-mean-token-sum-norm", constant_normaliser=4), 1.125)


def test_padding_rows_do_not_count_as_sequences():
    """Appending a fully masked row [7, 8, 9] changes nothing; num_units counts 3 tokens / 2 sequences."""
    Lp = torch.cat([L, torch.tensor([[7.0, 8.0, 9.0]], dtype=D)])
    Mp = torch.cat([M, torch.zeros(1, 3, dtype=torch.bool)])
    for mode in AGG_MODES:
        kw = {"constant_normaliser": 4} if mode == "seq-mean-token-sum-norm" else {}
        close(aggregate(Lp, Mp, mode, **kw), aggregate(L, M, mode, **kw))
    assert num_units(Mp, "token-mean").item() == 3
    for mode in AGG_MODES[1:]:
        assert num_units(Mp, mode).item() == 2


def test_normaliser_replaces_local_denominator():
    """normaliser=6 for token-mean: (2+3+4)/6 = 1.5; normaliser=3 for seq-mean-token-sum: 9/3 = 3."""
    close(aggregate(L, M, "token-mean", normaliser=6), 1.5)
    close(aggregate(L, M, "seq-mean-token-sum", normaliser=torch.tensor(3.0)), 3.0)
    close(aggregate(L, M, "seq-mean-token-mean", normaliser=3), 6.5 / 3)
    close(aggregate(L, M, "seq-mean-token-sum-norm", normaliser=3, constant_normaliser=4), 9 / 12)


def _ragged_mask(B, T, gen):
    m = torch.zeros(B, T, dtype=torch.bool)
    for b in range(B):
        start = int(torch.randint(0, T - 1, (1,), generator=gen))
        end = int(torch.randint(start + 1, T + 1, (1,), generator=gen))
        m[b, start:end] = True
    return m


@pytest.mark.parametrize("mode", AGG_MODES)
def test_micro_batch_split_equals_global_batch(mode):
    """Σ_k aggregate(l_k, m_k, normaliser=Σ_k num_units(m_k)) == aggregate(l, m) for any split of the
    batch, in value and in gradient, including a micro-batch with an extra all-padding row."""
    gen = torch.Generator().manual_seed(0)
    B, T = 7, 6
    x = torch.randn(B, T, dtype=D, generator=gen, requires_grad=True)
    m = _ragged_mask(B, T, gen)
    kw = {"constant_normaliser": 5.0} if mode == "seq-mean-token-sum-norm" else {}
    full = aggregate(x ** 2, m, mode, **kw)
    (g_full,) = torch.autograd.grad(full, x)

    chunks = [(0, 3), (3, 5), (5, 7)]
    parts = []
    for a, b in chunks:
        xs, ms = x[a:b] ** 2, m[a:b]
        if b == 7:  # pad this micro-batch with a row of pure padding
            xs = torch.cat([xs, torch.full((1, T), 99.0, dtype=D)])
            ms = torch.cat([ms, torch.zeros(1, T, dtype=torch.bool)])
        parts.append((xs, ms))
    N = sum(num_units(ms, mode) for _, ms in parts)
    total = sum(aggregate(xs, ms, mode, normaliser=N, **kw) for xs, ms in parts)
    (g_split,) = torch.autograd.grad(total, x)
    close(total, full)
    close(g_split, g_full)


def test_masked_reductions_ignore_garbage_and_empty_masks():
    """nan / inf at masked positions never leak; an empty mask gives 0, not nan."""
    x = torch.tensor([[1.0, float("nan"), 3.0], [float("inf"), 2.0, -float("inf")]], dtype=D)
    m = torch.tensor([[1, 0, 1], [0, 1, 0]], dtype=torch.bool)
    close(masked_sum(x, m), 6.0)
    close(masked_mean(x, m), 2.0)
    close(masked_sum(x, m, dim=1), [4.0, 2.0])
    close(masked_mean(x, m, dim=1), [2.0, 2.0])
    close(masked_mean(x, torch.zeros_like(m)), 0.0)
    close(aggregate(torch.where(m, x, 0.0), torch.zeros_like(m), "token-mean"), 0.0)


def test_fractional_mask_weights():
    """Weights w = [0.5, 1, 0] on l = [2, 4, 6]: Σ l·w / Σ w = (1 + 4)/1.5 = 10/3."""
    w = torch.tensor([[0.5, 1.0, 0.0]], dtype=D)
    close(aggregate(torch.tensor([[2.0, 4.0, 6.0]], dtype=D), w, "token-mean"), 10 / 3)


def test_masked_var_and_whiten_match_torch_on_selected_entries():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 5, dtype=D, generator=gen)
    m = _ragged_mask(4, 5, gen)
    sel = x[m]
    close(masked_var(x, m), sel.var(unbiased=True))
    close(masked_var(x, m, unbiased=False), sel.var(unbiased=False))
    w = masked_whiten(x, m, eps=0.0)
    close(w[m].mean(), 0.0, atol=1e-12)
    close(w[m].var(unbiased=True), 1.0)
    assert torch.all(w[~m] == 0)
    w2 = masked_whiten(x, m, shift_mean=False, eps=0.0)
    close(w2[m].mean(), sel.mean())
    # along a dim: each row separately
    full = torch.ones(4, 5, dtype=torch.bool)
    close(masked_var(x, full, dim=1), x.var(dim=1, unbiased=True))
    close(masked_whiten(x, full, dim=1, eps=0.0).var(dim=1), torch.ones(4, dtype=D))
    # one entry: unbiased variance defined as 0
    close(masked_var(torch.tensor([3.0], dtype=D), torch.tensor([True])), 0.0)


def test_batch_mean():
    close(batch_mean(torch.tensor([1.0, 2.0, 6.0], dtype=D)), 3.0)
    close(batch_mean(torch.tensor([1.0, 2.0, 6.0], dtype=D), normaliser=6), 1.5)


def test_errors():
    with pytest.raises(ValueError, match="unknown aggregation mode"):
        aggregate(L, M, "mean")
    with pytest.raises(ValueError, match="constant_normaliser"):
        aggregate(L, M, "seq-mean-token-sum-norm")
    with pytest.raises(ValueError, match="constant_normaliser"):
        aggregate(L, M, "token-mean", constant_normaliser=3)
    with pytest.raises(ValueError, match="shape"):
        aggregate(L, M[:, :2], "token-mean")
    with pytest.raises(ValueError, match="unknown aggregation mode"):
        num_units(M, "sum")


def test_num_units_dtype_and_value():
    assert num_units(M, "token-mean").dtype.is_floating_point
    assert math.isclose(num_units(M.to(D), "seq-mean-token-mean").item(), 2.0)
