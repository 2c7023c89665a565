"""posttrain.models.logprobs: gather − logsumexp log-probs, entropies, token-space alignment."""

from __future__ import annotations

import math

import pytest
import torch

from posttrain.models.logprobs import (
    position_ids_from_mask, sequence_logprobs, token_entropy, token_logprobs,
)
from posttrain.models.presets import build_preset

ROWS = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14], [20, 21, 22, 23, 24], [30, 31]]


def _naive_logprobs(logits, labels):
    return torch.log_softmax(logits.double(), -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)


def _naive_entropy(logits):
    logp = torch.log_softmax(logits.double(), -1)
    return -(logp.exp() * logp).sum(-1)


def _pad(rows, pad_id, side):
    T = max(map(len, rows))
    ids = torch.full((len(rows), T), pad_id)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(T - len(r), T) if side == "left" else slice(0, len(r))
        ids[i, sl] = torch.tensor(r)
        mask[i, sl] = 1
    return ids, mask


@pytest.fixture(scope="module")
def tiny64():
    model, tok = build_preset("tiny", seed=3)
    return model.to(torch.float64), tok


def test_hand_worked_logprobs_and_entropy():
    """Logits z = [0, ln 3] → p = [1/4, 3/4]: log p(1) = ln 0.75, log p(0) = ln 0.25,
    H = −(¼ ln ¼ + ¾ ln ¾) = 0.5623351446188083. Uniform over 4 → H = ln 4."""
    z = torch.tensor([[[0.0, math.log(3.0)], [0.0, math.log(3.0)]]], dtype=torch.float64)  # [1, 2, 2]
    lp = token_logprobs(z, torch.tensor([[1, 0]]))
    torch.testing.assert_close(lp, torch.tensor([[math.log(0.75), math.log(0.25)]], dtype=torch.float64),
                               rtol=1e-12, atol=0)
    h = token_entropy(z)
    torch.testing.assert_close(h, torch.full((1, 2), 0.5623351446188083, dtype=torch.float64),
                               rtol=1e-12, atol=0)
    u = torch.zeros(1, 1, 4, dtype=torch.float64)
    torch.testing.assert_close(token_entropy(u), torch.full((1, 1), math.log(4.0), dtype=torch.float64),
                               rtol=1e-12, atol=0)


def test_matches_naive_log_softmax_and_chunking_changes_nothing():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 11, 50, generator=g, dtype=torch.float64) * 4
    labels = torch.randint(0, 50, (3, 11), generator=g)
    ref = _naive_logprobs(logits, labels)
    ref_h = _naive_entropy(logits)
    full = token_logprobs(logits, labels)
    torch.testing.assert_close(full, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(token_entropy(logits), ref_h, rtol=1e-10, atol=1e-12)
    for c in (1, 3, 11, 64):
        torch.testing.assert_close(token_logprobs(logits, labels, chunk_size=c), full, rtol=0, atol=1e-14)
        torch.testing.assert_close(token_entropy(logits, chunk_size=c), ref_h, rtol=1e-10, atol=1e-12)


def test_gradient_is_onehot_minus_softmax():
    """d/dz log softmax(z)_y = onehot(y) − softmax(z)."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 7, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 7, (2, 4), generator=g)
    token_logprobs(logits, labels, chunk_size=2).sum().backward()
    expected = torch.nn.functional.one_hot(labels, 7).double() - logits.detach().softmax(-1)
    torch.testing.assert_close(logits.grad, expected, rtol=1e-10, atol=1e-12)


def test_ignore_index_labels_give_zero_and_minus_inf_logits_give_finite_entropy():
    logits = torch.tensor([[[0.0, -math.inf, 1.0], [2.0, 0.0, -math.inf]]], dtype=torch.float64)
    lp = token_logprobs(logits, torch.tensor([[-100, 0]]))
    assert lp[0, 0].item() == 0.0
    assert lp[0, 1].item() == pytest.approx(2.0 - math.log(math.exp(2.0) + 1.0), abs=1e-14)
    h = token_entropy(logits)
    assert torch.isfinite(h).all()
    p = 1 / (1 + math.e)  # two-way softmax over logits {0, 1}
    assert h[0, 0].item() == pytest.approx(-(p * math.log(p) + (1 - p) * math.log(1 - p)), abs=1e-14)


def test_bf16_logits_are_reduced_in_float32():
    g = torch.Generator().manual_seed(2)
    logits = (torch.randn(2, 5, 300, generator=g) * 3).to(torch.bfloat16)
    labels = torch.randint(0, 300, (2, 5), generator=g)
    lp = token_logprobs(logits, labels)
    assert lp.dtype == torch.float32
    torch.testing.assert_close(lp.double(), _naive_logprobs(logits.double(), labels), rtol=1e-6, atol=1e-6)


def test_sequence_logprobs_equals_float64_reference_with_temperature(tiny64):
    """Position t holds log_softmax(logits[t−1] / τ)[x_t]; position 0 holds 0."""
    model, _ = tiny64
    ids = torch.tensor([ROWS[0], [40, 41, 42, 43, 44, 45, 46]])
    mask = torch.ones_like(ids)
    tau = 0.7
    out = sequence_logprobs(model, ids, mask, temperature=tau, with_entropy=True)
    logits = model(ids).logits.double() / tau  # [B, T, V]
    ref = torch.zeros(ids.shape, dtype=torch.float64)
    ref[:, 1:] = _naive_logprobs(logits[:, :-1], ids[:, 1:])
    ref_h = torch.zeros(ids.shape, dtype=torch.float64)
    ref_h[:, 1:] = _naive_entropy(logits[:, :-1])
    assert out["logprobs"].dtype == torch.float64
    torch.testing.assert_close(out["logprobs"], ref, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(out["entropy"], ref_h, rtol=1e-6, atol=1e-12)
    assert (out["logprobs"][:, 0] == 0).all() and (out["logprobs"][:, 1:] < 0).all()
    chunked = sequence_logprobs(model, ids, mask, temperature=tau, with_entropy=True, chunk_size=2)
    torch.testing.assert_close(chunked["logprobs"], out["logprobs"], rtol=0, atol=1e-13)
    torch.testing.assert_close(chunked["entropy"], out["entropy"], rtol=0, atol=1e-13)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_equals_each_row_alone(side):
    model, tok = build_preset("tiny", seed=5)  # float32
    ids, mask = _pad(ROWS, tok.pad_token_id, side)
    out = sequence_logprobs(model, ids, mask, with_entropy=True)
    for i, row in enumerate(ROWS):
        alone = sequence_logprobs(model, torch.tensor([row]), torch.ones(1, len(row), dtype=torch.long),
                                  with_entropy=True)
        m = mask[i].bool()
        torch.testing.assert_close(out["logprobs"][i][m], alone["logprobs"][0], rtol=0, atol=1e-5)
        torch.testing.assert_close(out["entropy"][i][m], alone["entropy"][0], rtol=0, atol=1e-5)
        assert (out["logprobs"][i][~m] == 0).all() and (out["entropy"][i][~m] == 0).all()


def test_position_ids_from_mask_and_explicit_position_ids(tiny64):
    model, tok = tiny64
    ids, mask = _pad(ROWS, tok.pad_token_id, "left")
    pos = position_ids_from_mask(mask)
    assert pos[3].tolist() == [0, 0, 0, 0, 0, 0, 1]
    assert pos[0].tolist() == list(range(7))
    default = sequence_logprobs(model, ids, mask)["logprobs"]
    explicit = sequence_logprobs(model, ids, mask, position_ids=pos)["logprobs"]
    assert torch.equal(default, explicit)


def test_gradients_flow_to_the_model(tiny64):
    model, _ = tiny64
    ids = torch.tensor([ROWS[0]])
    lp = sequence_logprobs(model, ids, torch.ones_like(ids))["logprobs"]
    lp.sum().backward()
    grad = model.model.embed_tokens.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="chunk_size"):
        token_logprobs(torch.zeros(1, 2, 3), torch.zeros(1, 2, dtype=torch.long), chunk_size=0)
    model, _ = build_preset("tiny")
    with pytest.raises(ValueError, match="temperature"):
        sequence_logprobs(model, torch.tensor([[5, 6]]), torch.ones(1, 2), temperature=0.0)


def test_gathered_logprobs_from_shared_rows_equal_the_padded_batch():
    """Rows of a left-padded batch whose logits live in a smaller table ``[N, V]`` (``index`` [B, T] picks
    the row of each position, shared rows serve several positions, as a packed prompt does): the result is
    :func:`sequence_logprobs` of the padded batch — log-probs, entropies and gradients — at temperature 0.7."""
    from posttrain.models.logprobs import gathered_logprobs

    g = torch.Generator().manual_seed(4)
    B, T, V, N, tau = 3, 6, 11, 9, 0.7
    table = torch.randn(N, V, generator=g, dtype=torch.float64, requires_grad=True)  # [N, V]
    index = torch.randint(0, N, (B, T), generator=g)  # [B, T]; rows repeat across b
    index[1, :3] = index[0, :3]  # a shared prefix
    ids = torch.randint(0, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[2, :2] = 0  # left padding
    out = gathered_logprobs(table, index, ids, mask, temperature=tau, with_entropy=True)
    padded = table[index]  # [B, T, V]: the layout sequence_logprobs would have received

    class Fixed:
        def __call__(self, **_):
            return type("Out", (), {"logits": padded})()

    ref = sequence_logprobs(Fixed(), ids, mask, temperature=tau, with_entropy=True)
    torch.testing.assert_close(out["logprobs"], ref["logprobs"], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(out["entropy"], ref["entropy"], rtol=1e-12, atol=1e-14)
    assert (out["logprobs"][2, :3] == 0).all() and (out["logprobs"][2, 3:] < 0).all()
    w = torch.randn(B, T, generator=g, dtype=torch.float64)
    g_out, = torch.autograd.grad((out["logprobs"] * w).sum() + out["entropy"].sum(), table)
    g_ref, = torch.autograd.grad((ref["logprobs"] * w).sum() + ref["entropy"].sum(), table)
    torch.testing.assert_close(g_out, g_ref, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="temperature"):
        gathered_logprobs(table, index, ids, mask, temperature=0.0)


def test_first_target_by_hand():
    from posttrain.models.logprobs import first_target

    assert first_target(torch.tensor([[0, 0, 1, 1], [0, 0, 0, 1]])) == 2  # the earliest column of any row
    assert first_target(torch.tensor([[1, 1, 0], [0, 1, 1]])) == 1  # column 0 is never a target
    assert first_target(torch.zeros(2, 5)) == 1


class _NoKeep(torch.nn.Module):
    """A wrapper whose forward has no ``logits_to_keep`` (like a policy+value module): full logits."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False, **_):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)


@pytest.mark.parametrize("start", [1, 3, 6])
def test_from_position_computes_the_head_only_where_used(tiny64, start):
    """from_position = s: positions t ≥ s hold the full forward's log-probs and entropies (float64, 1e-12),
    positions < s hold 0; the LM head sees only positions ≥ s − 1 (a hook records its input: T − s + 1 of
    the T = 7 positions); a model without ``logits_to_keep`` gives the same numbers from its full logits."""
    from posttrain.models.logprobs import takes_logits_to_keep

    model, _ = tiny64
    ids = torch.tensor([ROWS[0], [40, 41, 42, 43, 44, 45, 46]])
    mask = torch.ones_like(ids)
    full = sequence_logprobs(model, ids, mask, temperature=0.7, with_entropy=True)
    seen = []
    hook = model.lm_head.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
    try:
        part = sequence_logprobs(model, ids, mask, temperature=0.7, with_entropy=True, from_position=start)
    finally:
        hook.remove()
    assert takes_logits_to_keep(model) and not takes_logits_to_keep(_NoKeep(model))
    assert seen == [7 - start + 1]
    for k in ("logprobs", "entropy"):
        torch.testing.assert_close(part[k][:, start:], full[k][:, start:], rtol=0, atol=1e-12)
        assert (part[k][:, :start] == 0).all()
        wrapped = sequence_logprobs(_NoKeep(model), ids, mask, temperature=0.7, with_entropy=True,
                                    from_position=start)[k]
        torch.testing.assert_close(wrapped, part[k], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="from_position"):
        sequence_logprobs(model, ids, mask, from_position=7)


def test_takes_logits_to_keep_sees_through_ddp_and_compile_wrappers(tiny64):
    """The check unwraps ``.module`` (DDP) and ``._orig_mod`` (torch.compile) to the HF model's forward."""
    from types import SimpleNamespace

    from posttrain.models.logprobs import takes_logits_to_keep

    model, _ = tiny64
    assert takes_logits_to_keep(SimpleNamespace(module=model))
    assert takes_logits_to_keep(SimpleNamespace(_orig_mod=SimpleNamespace(module=model)))
    assert not takes_logits_to_keep(SimpleNamespace(module=_NoKeep(model)))
