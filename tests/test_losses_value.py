"""Tests for posttrain.losses.value and the house rules of posttrain.losses (imports, docstrings)."""

import ast
import inspect
import pathlib
import sys

import torch

import posttrain.losses as L
from posttrain.losses.value import clipped_value_loss

D = torch.float64


def close(a, b, rtol=1e-9, atol=1e-12):
    torch.testing.assert_close(torch.as_tensor(a, dtype=D), torch.as_tensor(b, dtype=D), rtol=rtol, atol=atol)


def test_clipped_value_loss_hand_worked():
    """ε = 0.2. Token 0: V = 1, V_old = 1.5, R = 0 → (V−R)² = 1; V_clip = 1.5 − 0.2 = 1.3 → 1.69 > 1,
    clipped: ½·1.69 = 0.845, gradient 0. Token 1: V = 1.6, V_old = 1.5, R = 2.1 → (−0.5)² = 0.25,
    V_clip = 1.6 (inside) → ½·0.25 = 0.125, gradient (V − R)/2 = −0.25 (token mean over 2).
    Loss = (0.845 + 0.125)/2 = 0.485, value_clip_frac = 0.5."""
    v = torch.tensor([[9.0, 1.0, 1.6]], dtype=D, requires_grad=True)
    v_old = torch.tensor([[0.0, 1.5, 1.5]], dtype=D)
    ret = torch.tensor([[5.0, 0.0, 2.1]], dtype=D)
    m = torch.tensor([[0, 1, 1]], dtype=torch.bool)
    loss, met = clipped_value_loss(v, v_old, ret, m, clip_range=0.2)
    close(loss, 0.485)
    close(met["value_loss"], 0.485)
    close(met["value_clip_frac"], 0.5)
    (g,) = torch.autograd.grad(loss, v)
    close(g, [[0.0, 0.0, -0.25]])
    # no clipping: ½ MSE = (0.5 + 0.125)/2, gradient (V − R)/2
    loss_nc, met_nc = clipped_value_loss(v, v_old, ret, m, clip_range=None)
    close(loss_nc, 0.3125)
    close(torch.autograd.grad(loss_nc, v)[0], [[0.0, 0.5, -0.25]])
    close(met_nc["value_clip_frac"], 0.0)
    # aggregation and normaliser are forwarded
    close(clipped_value_loss(v, v_old, ret, m, agg="seq-mean-token-sum")[0], 0.97)
    close(clipped_value_loss(v, v_old, ret, m, normaliser=4)[0], 0.2425)


def test_explained_variance():
    """R = [1, 2, 3, 4] (Var = 1.25): V = R → 1; V = mean(R) → 0; V = R + [0.5, −0.5, 0.5, −0.5]
    → Var(R − V) = 0.25 → 1 − 0.25/1.25 = 0.8. Masked-out tokens are ignored; Var(R) = 0 → nan."""
    ret = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0]], dtype=D)
    m = torch.tensor([[0, 1, 1, 1, 1]], dtype=torch.bool)
    ev = lambda v: clipped_value_loss(v, v, ret, m)[1]["explained_variance"]  # noqa: E731
    close(ev(ret.clone()), 1.0)
    close(ev(torch.tensor([[100.0, 2.5, 2.5, 2.5, 2.5]], dtype=D)), 0.0)
    close(ev(ret + torch.tensor([[-50.0, 0.5, -0.5, 0.5, -0.5]], dtype=D)), 0.8)
    flat = torch.ones(1, 5, dtype=D)
    assert torch.isnan(clipped_value_loss(flat, flat, flat, m)[1]["explained_variance"])


# ------------------------------------------------------------------------------------- house rules

LOSSES_DIR = pathlib.Path(L.__file__).parent


def test_losses_import_only_torch_math_stdlib_and_themselves():
    allowed_stdlib = set(sys.stdlib_module_names)
    for path in sorted(LOSSES_DIR.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                ok = (top == "torch" or top in allowed_stdlib or name.startswith("posttrain.losses")
                      or name == "__future__")
                assert ok, f"{path.name} imports {name}"


def test_every_public_function_has_a_paper_docstring():
    """Each exported loss / estimator has a docstring naming a source (a year) and its formula."""
    for name in L.__all__:
        obj = getattr(L, name)
        if not callable(obj) or isinstance(obj, dict):
            continue
        doc = inspect.getdoc(obj) or ""
        assert doc, name
        if name.endswith("_loss") or name in ("gae", "rloo_advantages", "grpo_advantages", "kl_penalised_rewards",
                                              "kl_loss_term", "AdaptiveKLController"):
            assert any(str(y) in doc for y in range(1990, 2030)), name


def test_registry_functions_take_scalars_keyword_only():
    fns = [s.fn for s in L.PREFERENCE_LOSSES.values()] + list(L.POLICY_LOSSES.values()) + [
        L.sft_loss, L.bradley_terry_loss, L.kwise_ranking_loss, L.clipped_value_loss, L.kl_loss_term]
    for fn in fns:
        for p in inspect.signature(fn).parameters.values():
            if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD:
                assert p.name.endswith(("logps", "logprobs", "advantages", "mask", "values", "returns",
                                        "rewards", "ranking", "labels", "r_chosen", "r_rejected")), (fn, p.name)


def test_float32_inputs_stay_float32():
    """No silent up-casting: float32 inputs (bool masks, float64 side inputs) give float32 losses/metrics."""
    f = torch.float32
    gen = torch.Generator().manual_seed(0)
    B, T = 4, 5
    lp = -torch.rand(B, T, generator=gen).to(f)
    old = lp + 0.05
    m = torch.ones(B, T, dtype=torch.bool)
    outs = [L.sft_loss(lp, m), L.clipped_value_loss(lp, old, old, m), L.kl_loss_term(lp, old, m, beta=0.1),
            L.bradley_terry_loss(lp[:, 0], lp[:, 1]), L.kwise_ranking_loss(lp, torch.argsort(lp, dim=1))]
    adv64 = torch.randn(B, dtype=D, generator=gen)
    outs += [fn(lp, old, adv64, m, **({"clip_eps_high": 0.2} if n == "cispo" else {}))
             for n, fn in L.POLICY_LOSSES.items()]
    c, r = lp.sum(1), old.sum(1)
    for spec in L.PREFERENCE_LOSSES.values():
        if spec.paired:
            outs.append(spec.fn(c, r, r, c, chosen_lengths=torch.full((B,), 5.0, dtype=D),
                                rejected_lengths=torch.full((B,), 5.0, dtype=D), beta=0.1))
        else:
            outs.append(spec.fn(c, r, torch.tensor([True, False, True, False]), beta=0.1, reference_point=0.0))
    for loss, met in outs:
        assert loss.dtype == f
        assert all(v.dtype == f for v in met.values()), met
