"""Tests for posttrain.losses.preference (DPO family, KTO) and its registry."""

import dataclasses
import math

import pytest
import torch

from posttrain.losses.preference import (
    PREFERENCE_LOSSES,
    LossSpec,
    apo_down_loss,
    apo_zero_loss,
    cdpo_loss,
    chosen_nll_term,
    dpo_loss,
    hinge_loss,
    ipo_loss,
    kto_loss,
    kto_reference_point,
    orpo_loss,
    robust_dpo_loss,
    simpo_loss,
    slic_loss,
)

D = torch.float64
PAIRED = [n for n, s in PREFERENCE_LOSSES.items() if s.paired]


def close(a, b, rtol=1e-9, atol=1e-12):
    torch.testing.assert_close(torch.as_tensor(a, dtype=D), torch.as_tensor(b, dtype=D), rtol=rtol, atol=atol)


def t(*xs, grad=False):
    return torch.tensor(xs, dtype=D, requires_grad=grad)


def sig(x):
    return 1 / (1 + math.exp(-x))


def softplus(x):  # −log σ(x)
    return math.log1p(math.exp(-x))


def call(name, c, r, rc, rr, lc=None, lr=None, beta=0.1, **kw):
    spec = PREFERENCE_LOSSES[name]
    lc = torch.full_like(c, 2.0) if lc is None else lc
    lr = torch.full_like(r, 2.0) if lr is None else lr
    if not spec.needs_reference:
        rc = rr = None
    return spec.fn(c, r, rc, rr, chosen_lengths=lc, rejected_lengths=lr, beta=beta, **kw)


# ---------------------------------------------------------------------------------------- registry

def test_registry_contents_and_spec():
    expected = {"dpo", "cdpo", "robust_dpo", "ipo", "hinge", "slic", "simpo", "orpo", "apo_zero", "apo_down", "kto"}
    assert expected == set(PREFERENCE_LOSSES)
    assert not PREFERENCE_LOSSES["kto"].paired and PREFERENCE_LOSSES["kto"].needs_reference
    assert {n for n in PAIRED if not PREFERENCE_LOSSES[n].needs_reference} == {"slic", "simpo", "orpo"}
    spec = PREFERENCE_LOSSES["dpo"]
    assert isinstance(spec, LossSpec) and spec.doc
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.needs_reference = False  # type: ignore[misc]
    assert PREFERENCE_LOSSES["dpo"].variant_kwargs == ()
    assert PREFERENCE_LOSSES["cdpo"].variant_kwargs == ("label_smoothing",)
    assert PREFERENCE_LOSSES["simpo"].variant_kwargs == ("gamma",)
    assert PREFERENCE_LOSSES["ipo"].variant_kwargs == ("length_average",)
    assert PREFERENCE_LOSSES["kto"].variant_kwargs == ("desirable_weight", "undesirable_weight")


@pytest.mark.parametrize("name", PAIRED)
def test_every_paired_loss_shares_the_signature_and_metrics(name):
    gen = torch.Generator().manual_seed(0)
    c, r, rc, rr = (-torch.rand(4, dtype=D, generator=gen) * 5 for _ in range(4))
    c.requires_grad_(True)
    loss, met = call(name, c, r, rc, rr, lc=t(1, 2, 3, 4), lr=t(4, 3, 2, 1))
    assert loss.dim() == 0 and torch.isfinite(loss)
    for k in ("rewards/chosen", "rewards/rejected", "margin", "accuracy"):
        assert k in met
    assert all(v.dim() == 0 and not v.requires_grad for v in met.values())
    (g,) = torch.autograd.grad(loss, c)
    assert torch.all(torch.isfinite(g))


@pytest.mark.parametrize("name", PAIRED)
def test_micro_batch_split_with_global_normaliser(name):
    """Σ over micro-batches of fn(..., normaliser=B_global) == fn on the whole batch."""
    gen = torch.Generator().manual_seed(1)
    c, r, rc, rr = (-torch.rand(5, dtype=D, generator=gen) * 5 for _ in range(4))
    lc, lr = t(1, 2, 3, 4, 5), t(5, 1, 2, 2, 3)
    full, _ = call(name, c, r, rc, rr, lc, lr)
    parts = sum(call(name, c[s], r[s], rc[s], rr[s], lc[s], lr[s], normaliser=5)[0]
                for s in (slice(0, 2), slice(2, 5)))
    close(parts, full)


@pytest.mark.parametrize("name", ["dpo", "cdpo", "robust_dpo", "simpo"])
def test_identical_chosen_and_rejected_give_log2(name):
    """h = 0 ⇒ −(1−ε) log σ(0) − ε log σ(0) = log 2 (cDPO), ((1−ε) − ε) log 2/(1 − 2ε) = log 2 (rDPO);
    SimPO with γ = 0 likewise."""
    c = t(-3.0, -7.5)
    kw = {"label_smoothing": 0.2} if name in ("cdpo", "robust_dpo") else {}
    if name == "simpo":
        kw = {"gamma": 0.0}
    loss, met = call(name, c, c.clone(), t(-2.0, -1.0), t(-2.0, -1.0), beta=0.7, **kw)
    close(loss, math.log(2))
    close(met["accuracy"], 0.5)


# --------------------------------------------------------------------------------------------- DPO

def test_dpo_hand_worked():
    """π_c = −1, π_r = −5, ref_c = −2, ref_r = −3, β = 0.1:
    logratios 1 and −2, h = 3, loss = −log σ(0.3) = log(1 + e^−0.3) ≈ 0.554355;
    rewards/chosen 0.1, rewards/rejected −0.2, margin 0.3, accuracy 1;
    d L / d π_c = −β σ(−βh) = −0.1·σ(−0.3), d L / d π_r = +0.1·σ(−0.3)."""
    c, r = t(-1.0, grad=True), t(-5.0, grad=True)
    loss, met = dpo_loss(c, r, t(-2.0), t(-3.0), chosen_lengths=t(3), rejected_lengths=t(3), beta=0.1)
    close(loss, softplus(0.3))
    close(loss, 0.5543552444685888)
    close(met["rewards/chosen"], 0.1)
    close(met["rewards/rejected"], -0.2)
    close(met["margin"], 0.3)
    close(met["accuracy"], 1.0)
    gc, gr = torch.autograd.grad(loss, (c, r))
    close(gc, [-0.1 * sig(-0.3)])
    close(gr, [0.1 * sig(-0.3)])


def test_dpo_beta_to_zero_limit():
    """L(β) = log 2 − βh/2 + β²h²/8 + O(β⁴); with β = 1e-4, h = 3:
    (L − log 2)/β = −1.5 + βh²/8 = −1.5 + 1.125e-4;
    the gradient / β tends to ∓½."""
    beta = 1e-4
    c, r = t(-1.0, grad=True), t(-5.0)
    loss, _ = dpo_loss(c, r, t(-2.0), t(-3.0), chosen_lengths=t(1), rejected_lengths=t(1), beta=beta)
    close(loss, math.log(2) - beta * 3 / 2 + beta ** 2 * 9 / 8, rtol=1e-12)
    (g,) = torch.autograd.grad(loss, c)
    close(g / beta, [-1 / (1 + math.exp(beta * 3))])  # −σ(−βh): within 1.5e-4 of the limit −½
    assert abs(g.item() / beta + 0.5) < 1e-4


def test_dpo_gradient_on_two_token_toy_policy():
    """Policy: two independent positions, each a categorical over a 2-token vocabulary with logits θ[t].
    log π(y) = Σ_t log softmax(θ_t)[y_t], so ∇_θt log π(y) = onehot(y_t) − softmax(θ_t).
    y_w = (0, 1), y_l = (1, 1). DPO: ∇L = −β σ(−βh) (∇ log π(y_w) − ∇ log π(y_l)).
    Position 1 has the same token in both ⇒ its gradient cancels exactly; at position 0 the gradient
    raises θ[0,0] (chosen token) and lowers θ[0,1]."""
    beta = 0.5
    theta = torch.tensor([[0.2, -0.4], [1.0, 0.3]], dtype=D, requires_grad=True)
    theta_ref = torch.tensor([[0.0, 0.0], [0.5, 0.5]], dtype=D)
    yw, yl = [0, 1], [1, 1]

    def seq_logp(th, y):
        lsm = torch.log_softmax(th, dim=-1)
        return (lsm[0, y[0]] + lsm[1, y[1]]).reshape(1)

    c, r = seq_logp(theta, yw), seq_logp(theta, yl)
    rc, rr = seq_logp(theta_ref, yw), seq_logp(theta_ref, yl)
    loss, _ = dpo_loss(c, r, rc, rr, chosen_lengths=t(2), rejected_lengths=t(2), beta=beta)
    (g,) = torch.autograd.grad(loss, theta)

    p = torch.softmax(theta.detach(), dim=-1)
    eye = torch.eye(2, dtype=D)
    grad_lp = lambda y: torch.stack([eye[y[0]] - p[0], eye[y[1]] - p[1]])  # noqa: E731
    h = ((c - rc) - (r - rr)).item()
    expect = -beta * sig(-beta * h) * (grad_lp(yw) - grad_lp(yl))
    close(g, expect)
    close(g[1], [0.0, 0.0], atol=1e-15)
    assert g[0, 0] < 0 < g[0, 1]


# ----------------------------------------------------------------------------------- cDPO / rDPO

def test_cdpo_is_expected_dpo_under_label_flips_and_rdpo_is_unbiased():
    """cDPO(c, r) = (1−ε)·DPO(c, r) + ε·DPO(r, c);
    rDPO: (1−ε)·rDPO(c, r) + ε·rDPO(r, c) = DPO(c, r) (Chowdhury et al. 2024's unbiasedness)."""
    gen = torch.Generator().manual_seed(2)
    c, r, rc, rr = (-torch.rand(6, dtype=D, generator=gen) * 4 for _ in range(4))
    eps, beta = 0.2, 0.3
    L = dict(chosen_lengths=torch.ones(6, dtype=D), rejected_lengths=torch.ones(6, dtype=D), beta=beta)
    dpo_cr = dpo_loss(c, r, rc, rr, **L)[0]
    dpo_rc = dpo_loss(r, c, rr, rc, **L)[0]
    close(cdpo_loss(c, r, rc, rr, label_smoothing=eps, **L)[0], (1 - eps) * dpo_cr + eps * dpo_rc)
    rd_cr = robust_dpo_loss(c, r, rc, rr, label_smoothing=eps, **L)[0]
    rd_rc = robust_dpo_loss(r, c, rr, rc, label_smoothing=eps, **L)[0]
    close((1 - eps) * rd_cr + eps * rd_rc, dpo_cr)
    close(cdpo_loss(c, r, rc, rr, label_smoothing=0.0, **L)[0], dpo_cr)
    close(robust_dpo_loss(c, r, rc, rr, label_smoothing=0.0, **L)[0], dpo_cr)


def test_cdpo_rdpo_hand_worked_and_range():
    """h = 3, β = 0.1, ε = 0.1: cDPO = 0.9·log(1+e^−0.3) + 0.1·log(1+e^0.3);
    rDPO = (0.9·log(1+e^−0.3) − 0.1·log(1+e^0.3)) / 0.8."""
    args = (t(-1.0), t(-5.0), t(-2.0), t(-3.0))
    kw = dict(chosen_lengths=t(1), rejected_lengths=t(1), beta=0.1, label_smoothing=0.1)
    close(cdpo_loss(*args, **kw)[0], 0.9 * softplus(0.3) + 0.1 * softplus(-0.3))
    close(robust_dpo_loss(*args, **kw)[0], (0.9 * softplus(0.3) - 0.1 * softplus(-0.3)) / 0.8)
    with pytest.raises(ValueError, match="label_smoothing"):
        cdpo_loss(*args, **{**kw, "label_smoothing": 0.5})
    with pytest.raises(ValueError, match="label_smoothing"):
        robust_dpo_loss(*args, **{**kw, "label_smoothing": -0.1})


# --------------------------------------------------------------------------------------------- IPO

def test_ipo_hand_worked_length_averaged_and_summed():
    """π_c = −4, ref_c = −6, |y_w| = 2 → averaged logratio 1 (sum 2); π_r = ref_r = −3, |y_l| = 3 → 0.
    β = τ = 0.25 → target 1/(2τ) = 2. Averaged: (1 − 2)² = 1; summed: (2 − 2)² = 0.
    Reported rewards use the same (averaged) log-ratios: β·1 = 0.25."""
    args = (t(-4.0), t(-3.0), t(-6.0), t(-3.0))
    kw = dict(chosen_lengths=t(2), rejected_lengths=t(3), beta=0.25)
    loss, met = ipo_loss(*args, **kw)
    close(loss, 1.0)
    close(met["rewards/chosen"], 0.25)
    close(ipo_loss(*args, **kw, length_average=False)[0], 0.0)


def test_ipo_minimum_at_margin_one_over_two_beta():
    """As a function of the averaged log-ratio difference h, L = (h − 1/(2β))²: zero loss and zero
    gradient at h = 1/(2β), and L = δ² at h = 1/(2β) ± δ."""
    beta = 0.4
    target = 1 / (2 * beta)
    lengths = t(4.0)
    ref_c, ref_r, rej = t(-10.0), t(-8.0), t(-8.0)
    for delta, expected in ((0.0, 0.0), (0.3, 0.09), (-0.3, 0.09)):
        c = (ref_c + (target + delta) * lengths).detach().requires_grad_(True)
        loss, _ = ipo_loss(c, rej, ref_c, ref_r, chosen_lengths=lengths, rejected_lengths=lengths, beta=beta)
        close(loss, expected)
        (g,) = torch.autograd.grad(loss, c)
        close(g, [2 * delta / 4.0], atol=1e-12)  # dL/dπ_c = 2(h − target)/|y_w|


# -------------------------------------------------------------------------------------- hinge / SLiC

def test_hinge_and_slic_hand_worked():
    """β = 0.5. Reference log-ratio difference h = 1 → max(0, 1 − 0.5) = 0.5, dL/dπ_c = −β = −0.5;
    h = 3 → 0 with zero gradient (margin satisfied). SLiC ignores the reference: h = π_c − π_r."""
    c = t(-1.0, -1.0, grad=True)
    r = t(-2.0, -4.0)
    rc, rr = t(-2.0, -1.0), t(-2.0, -1.0)
    kw = dict(chosen_lengths=t(1, 1), rejected_lengths=t(1, 1), beta=0.5)
    loss, _ = hinge_loss(c, r, rc, rr, **kw)
    close(loss, 0.5 / 2)
    (g,) = torch.autograd.grad(loss, c)
    close(g, [-0.25, 0.0])
    loss_s, _ = slic_loss(c, r, rc, rr, **kw)  # h = [1, 3] without reference too
    close(loss_s, 0.25)
    close(slic_loss(c, r, None, None, **kw)[0], loss_s)


# ------------------------------------------------------------------------------------------- SimPO

def test_simpo_hand_worked_and_length_invariance():
    """β = 2, γ = 0.5; π_c = −2 over 4 tokens → r_w = 2·(−0.5) = −1; π_r = −6 over 3 → r_l = −4;
    logits = −1 + 4 − 0.5 = 2.5 → loss = log(1 + e^−2.5). Doubling both sums and lengths changes nothing."""
    kw = dict(beta=2.0, gamma=0.5)
    loss, met = simpo_loss(t(-2.0), t(-6.0), None, None, chosen_lengths=t(4), rejected_lengths=t(3), **kw)
    close(loss, softplus(2.5))
    close(met["rewards/chosen"], -1.0)
    close(met["rewards/rejected"], -4.0)
    loss2, _ = simpo_loss(t(-4.0), t(-12.0), None, None, chosen_lengths=t(8), rejected_lengths=t(6), **kw)
    close(loss2, loss)


# -------------------------------------------------------------------------------------------- ORPO

def test_orpo_hand_worked():
    """Chosen: 2 tokens, sum 2·ln ½ → P = ½, odds 1, log odds 0; NLL = ln 2.
    Rejected: 3 tokens, sum 3·ln 0.2 → P = 0.2, odds ¼, log odds −ln 4.
    L_OR = −log σ(ln 4) = −log(4/5) = ln 1.25; λ = 0.1 → L = ln 2 + 0.1·ln 1.25."""
    c, r = t(2 * math.log(0.5), grad=True), t(3 * math.log(0.2))
    loss, met = orpo_loss(c, r, None, None, chosen_lengths=t(2), rejected_lengths=t(3), beta=0.1)
    close(loss, math.log(2) + 0.1 * math.log(1.25))
    close(met["log_odds_ratio"], math.log(4))
    close(met["nll"], math.log(2))
    close(met["or_loss"], math.log(1.25))
    close(met["rewards/chosen"], 0.0)
    close(met["rewards/rejected"], -0.1 * math.log(4))
    # gradient: d/dπ_c [−π_c/2] = −½; d/dπ_c L_OR = −σ(−ln4)·d logodds_c/dπ_c,
    # d logodds/d mean = 1/(1 − P) = 2, d mean/dπ_c = ½ → −(1/5)·2·½ = −0.2 → total −0.5 − 0.02
    (g,) = torch.autograd.grad(loss, c)
    close(g, [-0.52])


def test_orpo_log_odds_stable_near_probability_one():
    """Mean log-prob −1e-10 (P ≈ 1 − 1e-10): log odds = −1e-10 − log(1 − e^{−1e-10}) ≈ 23.02585093."""
    c = t(-2e-10)
    r = t(-2e-10)
    loss, met = orpo_loss(c, r, None, None, chosen_lengths=t(2), rejected_lengths=t(2), beta=1.0)
    assert torch.isfinite(loss)
    close(met["rewards/chosen"], -1e-10 - math.log(-math.expm1(-1e-10)))


# --------------------------------------------------------------------------------------------- RPO

def test_rpo_nll_term_hand_worked_and_with_global_normaliser():
    """Chosen sums 2·ln ½ over 2 tokens and 3·ln 0.2 over 3 tokens: per-token NLLs ln 2 and ln 5, mean
    (ln 2 + ln 5)/2 = ln √10; d/dπ_c of −π_c/(|y|·B) is −1/4 and −1/6. With a global normaliser of 4
    (this micro-batch is half the pairs) the two halves' terms sum to the full batch's."""
    c = t(2 * math.log(0.5), 3 * math.log(0.2), grad=True)
    nll = chosen_nll_term(c, t(2, 3))
    close(nll, 0.5 * math.log(10))
    (g,) = torch.autograd.grad(nll, c)
    close(g, [-1 / 4, -1 / 6])
    x = t(-1.0, -4.0, -9.0, -2.0)
    lengths = t(1, 2, 3, 4)
    whole = chosen_nll_term(x, lengths)
    halves = chosen_nll_term(x[:2], lengths[:2], normaliser=4) + chosen_nll_term(x[2:], lengths[2:], normaliser=4)
    close(halves, float(whole))
    close(whole, (1 + 2 + 3 + 0.5) / 4)


# --------------------------------------------------------------------------------------------- APO

def test_apo_hand_worked_and_gradient_directions():
    """β = 0.1, chosen logratio 1 (r_w = 0.1), rejected logratio −2 (r_l = −0.2).
    APO-zero: 1 − σ(0.1) + σ(−0.2); dL/dπ_c = −β σ'(r_w) < 0 (chosen up), dL/dπ_r = β σ'(r_l) > 0 (down).
    APO-down: 1 + σ(0.1) − σ(0.3); dL/dπ_c = β(σ'(r_w) − σ'(r_w − r_l)), dL/dπ_r = β σ'(r_w − r_l) > 0.
    At π = π_ref both equal 1."""
    dsig = lambda x: sig(x) * (1 - sig(x))  # noqa: E731
    kw = dict(chosen_lengths=t(1), rejected_lengths=t(1), beta=0.1)
    c, r = t(-1.0, grad=True), t(-5.0, grad=True)
    rc, rr = t(-2.0), t(-3.0)
    loss, met = apo_zero_loss(c, r, rc, rr, **kw)
    close(loss, 1 - sig(0.1) + sig(-0.2))
    close(met["margin"], 0.3)
    gc, gr = torch.autograd.grad(loss, (c, r))
    close(gc, [-0.1 * dsig(0.1)])
    close(gr, [0.1 * dsig(-0.2)])
    loss, _ = apo_down_loss(c, r, rc, rr, **kw)
    close(loss, 1 + sig(0.1) - sig(0.3))
    gc, gr = torch.autograd.grad(loss, (c, r))
    close(gc, [0.1 * (dsig(0.1) - dsig(0.3))])
    close(gr, [0.1 * dsig(0.3)])
    assert gc > 0  # APO-down pushes the chosen likelihood down here
    same = t(-3.0)
    for fn in (apo_zero_loss, apo_down_loss):
        close(fn(same, same, same, same, **kw)[0], 1.0)


@pytest.mark.parametrize("name", [n for n in PAIRED if n != "apo_down"])
def test_gradient_pushes_chosen_up_and_rejected_down(name):
    """At a point where no margin is satisfied (all log-ratios 0), every loss but APO-down has
    dL/dπ_c < 0 and dL/dπ_r > 0."""
    c, r = t(-3.0, grad=True), t(-3.0, grad=True)
    kw = {"gamma": 0.5} if name == "simpo" else {}
    loss, _ = call(name, c, r, t(-3.0), t(-3.0), beta=0.5, **kw)
    gc, gr = torch.autograd.grad(loss, (c, r))
    assert gc.item() < 0 < gr.item()


# --------------------------------------------------------------------------------------------- KTO

def test_kto_hand_worked():
    """policy [−1, −2], ref [−2, −1] → r = [1, −1]; labels [desirable, undesirable]; β = 0.5,
    z0 = 0.25, λ_D = 1, λ_U = 2:
    ℓ_0 = 1·(1 − σ(0.5·(1 − 0.25))) = 1 − σ(0.375), ℓ_1 = 2·(1 − σ(0.5·(0.25 + 1))) = 2(1 − σ(0.625)).
    rewards/chosen = β·1 = 0.5, rewards/rejected = −0.5."""
    pol = t(-1.0, -2.0, grad=True)
    loss, met = kto_loss(pol, t(-2.0, -1.0), torch.tensor([True, False]), beta=0.5, reference_point=0.25,
                         desirable_weight=1.0, undesirable_weight=2.0)
    close(loss, ((1 - sig(0.375)) + 2 * (1 - sig(0.625))) / 2)
    close(met["rewards/chosen"], 0.5)
    close(met["rewards/rejected"], -0.5)
    close(met["kl"], 0.25)
    close(met["num_desirable"], 1.0)
    (g,) = torch.autograd.grad(loss, pol)
    ds = lambda x: sig(x) * (1 - sig(x))  # noqa: E731
    close(g, [-0.5 * ds(0.375) / 2, 2 * 0.5 * ds(0.625) / 2])


def test_kto_reference_point_and_no_gradient_through_it():
    """z0 = max(0, mean(π − ref)): diffs [1, −2] → mean −0.5 → 0; diffs [1, 0.5] → 0.75. Detached."""
    close(kto_reference_point(t(-1.0, -3.0), t(-2.0, -1.0)), 0.0)
    pk = t(-1.0, -1.0, grad=True)
    z0 = kto_reference_point(pk, t(-2.0, -1.5))
    close(z0, 0.75)
    assert not z0.requires_grad
    zt = torch.tensor(0.3, dtype=D, requires_grad=True)
    pol = t(-1.0, grad=True)
    loss, _ = kto_loss(pol, t(-1.5), torch.tensor([True]), beta=1.0, reference_point=zt)
    loss.backward()
    assert zt.grad is None and pol.grad is not None


def test_kto_all_one_label_and_normaliser():
    pol, ref = t(-1.0, -2.0, -3.0), t(-1.0, -1.0, -1.0)
    labels = torch.ones(3, dtype=torch.bool)
    loss, met = kto_loss(pol, ref, labels, beta=1.0, reference_point=0.0)
    close(met["rewards/rejected"], 0.0)  # empty group → 0, not nan
    close(loss, sum(1 - sig(x) for x in (0.0, -1.0, -2.0)) / 3)
    loss6, _ = kto_loss(pol, ref, labels, beta=1.0, reference_point=0.0, normaliser=6)
    close(loss6, loss / 2)


def test_reference_required_where_declared():
    with pytest.raises(ValueError, match="reference"):
        dpo_loss(t(-1.0), t(-2.0), None, None, chosen_lengths=t(1), rejected_lengths=t(1), beta=0.1)
