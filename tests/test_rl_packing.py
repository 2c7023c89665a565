"""Prefix sharing in `posttrain rl` (``share_prompt``): a group's G completions in one packed row
``[prompt, y_1, …, y_G]`` give the same log-probs, entropies and gradients as the padded ``[G, P + C]``
layout, and the stage trains the same with it on or off."""

import json

import pytest
import torch

from posttrain.stages.rl_algos import forward_policy, pack_groups


def _model(kind: str):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    kw = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, attn_implementation="sdpa")
    torch.manual_seed(0)
    model = (LlamaForCausalLM(LlamaConfig(**kw)) if kind == "llama" else Qwen2ForCausalLM(Qwen2Config(**kw)))
    return model.double()


def _rollout_batch(G: int = 3, groups: int = 2, P: int = 5, C: int = 6, seed: int = 0) -> dict:
    """A micro-batch shaped like a rollout's: prompts left-padded to P (a different length per group, the
    same within a group), completions right-padded to C (a different length per row, >= 1)."""
    g = torch.Generator().manual_seed(seed)
    rows_ids, rows_am = [], []
    for k in range(groups):
        plen = P - k  # group k's prompt has P - k real tokens
        prompt = torch.randint(1, 97, (plen,), generator=g)
        for j in range(G):
            clen = C - (j + k) % C  # 1..C real completion tokens
            comp = torch.randint(1, 97, (clen,), generator=g)
            ids = torch.cat([torch.zeros(P - plen, dtype=torch.long), prompt, comp,
                             torch.zeros(C - clen, dtype=torch.long)])
            am = torch.cat([torch.zeros(P - plen), torch.ones(plen + clen), torch.zeros(C - clen)]).long()
            rows_ids.append(ids)
            rows_am.append(am)
    ids, am = torch.stack(rows_ids), torch.stack(rows_am)  # [b, P + C]
    pos = (am.cumsum(-1) - 1).clamp(min=0) * am
    cm = am.clone()
    cm[:, :P] = 0
    return {"input_ids": ids, "attention_mask": am, "position_ids": pos, "completion_mask": cm.double()}


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_packed_groups_give_the_padded_logprobs_entropy_and_gradients(kind):
    """float64: every log-prob and entropy of a real completion-span position agrees to 1e-12,
    and the gradient of a loss over the completion tokens to float32 rounding — with left-padded prompts of different
    lengths per group and completions of different lengths per row."""
    model = _model(kind)
    G, P = 3, 5
    mb = _rollout_batch(G=G, P=P)
    packed = pack_groups(mb, G, P, torch.float64)
    assert packed is not None
    b, T = mb["input_ids"].shape
    assert packed["input_ids"].shape == (b // G, P + G * (T - P))
    assert packed["num_tokens"] < int(mb["attention_mask"].sum())  # the prompt counted once per group

    def run(batch):
        model.zero_grad()
        res = forward_policy(model, batch, temperature=0.7, with_entropy=True)
        m = batch["completion_mask"]
        ((res["logprobs"] * m).sum() + (res["entropy"] * m).sum() * 0.1).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        return res["logprobs"].detach(), res["entropy"].detach(), grads

    lp_a, ent_a, g_a = run(mb)
    seen = []
    hook = model.lm_head.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
    lp_b, ent_b, g_b = run({**mb, "packed": packed})
    hook.remove()
    assert seen == [packed["input_ids"].shape[1] - (P - 1)]  # the head from the last prompt column on
    real = mb["attention_mask"].bool()
    valid = torch.zeros_like(real)
    valid[:, 1:] = real[:, 1:] & real[:, :-1]
    valid[:, :P] = False  # the padded layout computes no logits before the completions (model_logits)
    assert valid.sum() > 0 and (lp_a[:, :P] == 0).all()
    torch.testing.assert_close(lp_b[valid], lp_a[valid], rtol=0, atol=1e-12)
    torch.testing.assert_close(ent_b[valid], ent_a[valid], rtol=0, atol=1e-12)
    assert (lp_b[~valid & (torch.arange(T) >= P)] == 0).all() and (lp_a[~valid] == 0).all()
    # HF's RMSNorm computes in float32 even in a float64 model (``hidden_states.to(torch.float32)``), so
    # gradients through it are float32-accurate whatever the layout: the gradient of the same loss summed
    # in another order differs by ~1e-7 relative (measured: 1.8e-7 for the padded layout against itself).
    for n in g_a:
        scale = float(g_a[n].abs().max())
        torch.testing.assert_close(g_b[n], g_a[n], rtol=0, atol=1e-6 * scale, msg=n)


def test_pack_groups_refuses_rows_that_are_not_whole_groups():
    mb = _rollout_batch(G=3, P=5)
    assert pack_groups(mb, 3, 5) is not None
    assert pack_groups(mb, 4, 5) is None  # 6 rows are not whole groups of 4
    assert pack_groups(mb, 1, 5) is None  # nothing to share
    swapped = {k: v[[0, 1, 3, 2, 4, 5]] for k, v in mb.items()}  # row 2 (group 0) swapped with row 3 (group 1)
    assert pack_groups(swapped, 3, 5) is None


def test_packed_mask_lets_a_completion_see_its_prompt_and_itself_only():
    """Hand-checked layout for G = 2, one prompt of 2 real tokens (+1 pad), completions of 2 and 1 tokens
    (width 2): packed row [pad, p1, p2, a1, a2, b1, pad]."""
    ids = torch.tensor([[0, 5, 6, 7, 8], [0, 5, 6, 9, 0]])
    am = torch.tensor([[0, 1, 1, 1, 1], [0, 1, 1, 1, 0]])
    pos = (am.cumsum(-1) - 1).clamp(min=0) * am
    packed = pack_groups({"input_ids": ids, "attention_mask": am, "position_ids": pos}, 2, 3)
    assert packed["input_ids"].tolist() == [[0, 5, 6, 7, 8, 9, 0]]
    assert packed["position_ids"].tolist() == [[0, 0, 1, 2, 3, 2, 0]]
    sees = (packed["attention_mask"][0, 0] == 0).int().tolist()
    assert sees == [[1, 0, 0, 0, 0, 0, 0],   # padding sees itself
                    [0, 1, 0, 0, 0, 0, 0],
                    [0, 1, 1, 0, 0, 0, 0],
                    [0, 1, 1, 1, 0, 0, 0],   # a1: the prompt and itself
                    [0, 1, 1, 1, 1, 0, 0],   # a2
                    [0, 1, 1, 0, 0, 1, 0],   # b1: the prompt and itself, not a1 / a2
                    [0, 0, 0, 0, 0, 0, 1]]
    assert packed["index"].tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 5, 6]]
    assert packed["num_tokens"] == 5


# ------------------------------------------------------------------------------------------- the stage
@pytest.fixture
def prompts_file(tmp_path):
    rows = [{"prompt": [{"role": "user", "content": f"What is {a} plus {b}?"}]} for a in range(4) for b in range(4)]
    p = tmp_path / "prompts.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(p)


def _vowels(prompts, completions, **_):
    return [float(sum(ch in "aeiou" for ch in c.lower())) for c in completions]


def _cfg(prompts_file, out, *extra):
    from posttrain.config import RLConfig, load_config

    return load_config(RLConfig, None, [
        "model=preset:tiny", f"data.train={prompts_file}", f"output_dir={out}", "max_steps=1", "lr=1e-2",
        "generation.max_new_tokens=8", "prompts_per_step=2", "group_size=4", "batch_size=8", "progress=false",
        "sample_every=0", "num_threads=1", "algo=grpo", "beta=0.04", *extra])


def test_grpo_trains_the_same_with_and_without_prefix_sharing(prompts_file, tmp_path):
    """One GRPO step with the KL loss (so the reference forward is packed too): same samples, same loss
    and the same updated weights within fp32 rounding; the packed micro-batches are really used."""
    from transformers import AutoModelForCausalLM

    from posttrain.engine import Run
    from posttrain.stages.rl import RLTrainer, load, run

    cfg = _cfg(prompts_file, tmp_path / "probe", "share_prompt=true")
    ld = load(cfg, reward=_vowels)
    loop = RLTrainer(cfg, Run.open(cfg, "rl"), ld.policy, ld.tokenizer, ld.prompts, ld.reward, ref_model=ld.ref)
    batch = loop.rollout(0)
    mb = loop._microbatch(batch.tensors, torch.arange(8))
    assert "packed" in mb and mb["packed"]["input_ids"].shape[0] == 2

    for flag in ("true", "false"):
        run(_cfg(prompts_file, tmp_path / flag, f"share_prompt={flag}"), reward=_vowels)
    ma, mb_ = ([json.loads(x) for x in open(tmp_path / f / "metrics.jsonl")] for f in ("true", "false"))
    assert ma[0]["reward_mean"] == mb_[0]["reward_mean"]
    for key in ("loss", "grad_norm", "entropy"):
        assert abs(ma[0][key] - mb_[0][key]) <= 1e-6 * max(1.0, abs(mb_[0][key])), key
    # Adam's first update is ≈ lr·sign(g): float32 rounding of near-zero gradient elements moves a few of
    # them (measured: < 0.1% of the elements by > 1e-6, at most 5e-5 = 0.5% of lr); a wrong mask or gather
    # would move most elements by ~lr = 1e-2.
    wa = AutoModelForCausalLM.from_pretrained(tmp_path / "true" / "model").state_dict()
    wb = AutoModelForCausalLM.from_pretrained(tmp_path / "false" / "model").state_dict()
    for k in wa:
        d = (wa[k] - wb[k]).abs()
        assert float(d.max()) < 1e-4 and float((d > 1e-6).float().mean()) < 0.005, k


def test_auto_packs_only_when_it_computes_less(prompts_file, tmp_path):
    """``share_prompt=auto`` compares the forward cost of the two layouts (hand-worked): for the small
    preset's shape (4.7M params, 6 layers, hidden 256), 2 groups of 4 with 32 prompt + 32 completion
    columns cost 2·4.7M·512 + 4·6·256·8·64² ≈ 5.01 GFLOP padded and 2·4.7M·320 + 4·6·256·2·160² ≈ 3.32
    packed (pays); with a 2-token prompt and 62 completion columns packing saves 12 positions but attends
    over 2·250² instead of 8·64² pairs (does not pay); beyond 4096 packed positions it never packs."""
    from posttrain.engine import Run
    from posttrain.stages.rl import RLTrainer, load

    cfg = _cfg(prompts_file, tmp_path / "run")
    ld = load(cfg, reward=_vowels)
    loop = RLTrainer(cfg, Run.open(cfg, "rl"), ld.policy, ld.tokenizer, ld.prompts, ld.reward, ref_model=ld.ref)
    assert loop.pack_mode == "auto"
    loop.cost_shape = (4_700_000, 6, 256)
    assert loop._packing_pays((8, 64), 32)
    assert not loop._packing_pays((8, 64), 2)
    assert not loop._packing_pays((8, 2048), 1024)  # 1024 + 4·1024 > 4096 positions
