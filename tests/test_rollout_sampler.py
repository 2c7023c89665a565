"""posttrain.rollout.sampler: batched KV-cache sampling (native and HF backends).

The reference for every check is the model itself: ``model.generate(do_sample=False)`` for greedy tokens and
one full forward pass over the generated (left-padded) batch for log-probs.
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from posttrain.models.logprobs import sequence_logprobs
from posttrain.models.presets import default_tokenizer
from posttrain.rollout.sampler import _filter_logits, _sample, generate, native_supported, sample_n

BACKENDS = ["native", "static", "hf"]
PAD = 1
# Unequal prompts -> a left-padded batch (lengths 7, 2, 4, 11, 1, 5).
PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [20, 21, 22, 23], [30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40],
           [41], [50, 51, 52, 53, 54]]


def _llama(vocab=97, dtype=torch.float32, seed=0, init=0.2, kv_heads=2):
    """A tiny Llama (GQA: 4 query heads, 2 KV heads) with peaked next-token distributions (init 0.2)."""
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=128,
                      initializer_range=init, pad_token_id=PAD, eos_token_id=0, bos_token_id=None,
                      tie_word_embeddings=False)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).to(dtype).eval()


@pytest.fixture(scope="module")
def model():
    return _llama()


@pytest.fixture(scope="module")
def tokenizer():
    return default_tokenizer()


@pytest.fixture(scope="module")
def tok_model(tokenizer):
    return _llama(vocab=len(tokenizer), seed=1)


def _reference_logprobs(model, r, temperature=1.0):
    """log p(x_t | x_<t) from ONE full forward pass over the rollout, masked to the completion. [B, P+T]"""
    with torch.no_grad():
        logits = model(input_ids=r.input_ids, attention_mask=r.attention_mask,
                       position_ids=r.position_ids).logits.double() / temperature  # [B, P+T, V]
    lp = torch.zeros(r.input_ids.shape, dtype=torch.float64)
    lp[:, 1:] = logits[:, :-1].log_softmax(-1).gather(-1, r.input_ids[:, 1:, None]).squeeze(-1)
    return lp * r.completion_mask


def _hf_greedy(model, r, max_new_tokens, eos):
    P = r.prompt_len
    with torch.no_grad():
        return model.generate(r.input_ids[:, :P], attention_mask=r.attention_mask[:, :P], do_sample=False,
                              max_new_tokens=max_new_tokens, pad_token_id=PAD, eos_token_id=eos)


def _check_layout(r, stop_ids):
    """Invariants of every rollout: masks, padding after the stop, zero log-probs off the mask."""
    P = r.prompt_len
    comp = r.completion_mask[:, P:]
    assert not r.completion_mask[:, :P].any()
    for i in range(r.batch_size):
        n = int(r.completion_lengths[i])
        assert comp[i, :n].all() and not comp[i, n:].any()  # contiguous from the start of the completion
        assert r.input_ids[i, P + n:].eq(PAD).all()
        assert r.completion_ids[i] == r.input_ids[i, P:P + n].tolist()
        hit = [t in stop_ids for t in r.completion_ids[i]]
        assert bool(r.finished[i]) == any(hit)
        if any(hit):  # stopped at the FIRST stop token, which is included
            assert hit.index(True) == n - 1
    assert r.attention_mask[:, P:].bool().eq(comp).all()
    assert r.logprobs[~r.completion_mask].eq(0).all() and r.sampling_logprobs[~r.completion_mask].eq(0).all()
    assert r.num_generated_tokens == int(comp.sum())
    expected_pos = (r.attention_mask.cumsum(-1) - 1).clamp(min=0) * r.attention_mask
    assert torch.equal(r.position_ids, expected_pos)


@pytest.mark.parametrize("backend", BACKENDS)
def test_greedy_equals_hf_generate_on_left_padded_batch(model, backend):
    r = generate(model, PROMPTS, max_new_tokens=12, temperature=0.0, stop_token_ids=[], pad_token_id=PAD,
                 backend=backend)
    assert r.prompt_len == 11 and r.input_ids.shape == (6, 11 + 12)
    assert r.prompt_lengths.tolist() == [len(p) for p in PROMPTS]
    ref = _hf_greedy(model, r, 12, eos=None)
    assert torch.equal(r.input_ids, ref)
    assert r.sampling_logprobs.eq(0).all()  # greedy = a point mass
    assert not r.finished.any()
    _check_layout(r, set())


@pytest.fixture
def count_compactions(monkeypatch):
    """Counts batch compactions (KV cache reduced to the live rows) in either backend."""
    from posttrain.rollout import sampler

    calls = []
    for cls in (sampler._NativeDecoder, sampler._HFDecoder):
        original = cls.select
        monkeypatch.setattr(cls, "select", lambda self, rows, _o=original: (calls.append(rows.numel()),
                                                                              _o(self, rows))[1])
    return calls


@pytest.mark.parametrize("backend", BACKENDS)
def test_greedy_with_stop_tokens_equals_hf_generate(model, backend, count_compactions):
    """Rows stop at different steps (and the batch is compacted once half of it has stopped); the tokens,
    including the padding after each stop, are HF's token for token."""
    free = generate(model, PROMPTS, max_new_tokens=12, temperature=0.0, stop_token_ids=[], pad_token_id=PAD)
    P = free.prompt_len
    # stop tokens: what rows 0, 1, 2 emit at steps 1, 2, 4 (they may stop earlier if it occurs before)
    stops = sorted({int(free.input_ids[0, P + 1]), int(free.input_ids[1, P + 2]), int(free.input_ids[2, P + 4])})
    r = generate(model, PROMPTS, max_new_tokens=12, temperature=0.0, stop_token_ids=stops, pad_token_id=PAD,
                 backend=backend)
    assert r.finished[:3].all()
    assert r.completion_lengths[0] <= 2 and r.completion_lengths[1] <= 3 and r.completion_lengths[2] <= 5
    if backend == "static":
        assert not count_compactions  # fixed shapes: the batch is never compacted
    else:
        assert count_compactions and count_compactions[0] <= 3  # 6 rows -> at most the 3 live ones
    ref = _hf_greedy(model, r, 12, eos=stops)
    assert torch.equal(r.input_ids, ref[:, :r.input_ids.shape[1]])
    assert ref.shape[1] == r.input_ids.shape[1]  # both exit when every row has stopped (or at 12 tokens)
    _check_layout(r, set(stops))


@pytest.mark.parametrize("backend", BACKENDS)
def test_sampling_logprobs_match_full_forward(model, backend, count_compactions):
    """Temperature 1, no top-k/p: the recorded log-probs equal a full forward over the sampled batch within
    1e-5 (float32): max and mean |diff| reported. Several stop tokens end rows at random steps (so the
    compacted-batch path is exercised)."""
    g = torch.Generator().manual_seed(0)
    stops = [0] + list(range(2, 97, 5))
    r = generate(model, PROMPTS * 2, max_new_tokens=16, temperature=1.0, stop_token_ids=stops,
                 pad_token_id=PAD, generator=g, backend=backend)
    _check_layout(r, set(stops))
    assert r.finished.any()
    assert bool(count_compactions) == (backend != "static")  # compacted, except with fixed shapes
    ref = _reference_logprobs(model, r)
    diff = (r.logprobs.double() - ref)[r.completion_mask].abs()
    print(f"{backend}: max |diff| {diff.max():.2e}, mean {diff.mean():.2e} over {diff.numel()} tokens")
    assert diff.max() < 1e-5 and diff.mean() < 1e-6
    assert torch.equal(r.sampling_logprobs, r.logprobs)  # no filtering: same distribution
    # and the library's own sequence_logprobs (training-time recomputation) agrees
    with torch.no_grad():
        lib = sequence_logprobs(model, r.input_ids, r.attention_mask, position_ids=r.position_ids)["logprobs"]
    assert (lib.double() * r.completion_mask - r.logprobs.double()).abs().max() < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_temperature_scaled_logprobs_and_top_k_sampling_logprobs(model, backend):
    """temperature 0.7 + top_k 5: ``logprobs`` = log softmax(z / 0.7) (no filter) from a full forward;
    ``sampling_logprobs`` = the same renormalised over the 5 kept tokens: slp - lp = -log(mass of the top 5)."""
    g = torch.Generator().manual_seed(1)
    r = generate(model, PROMPTS, max_new_tokens=8, temperature=0.7, top_k=5, stop_token_ids=[],
                 pad_token_id=PAD, generator=g, backend=backend)
    ref = _reference_logprobs(model, r, temperature=0.7)
    m = r.completion_mask
    assert (r.logprobs.double() - ref)[m].abs().max() < 1e-5
    with torch.no_grad():
        logits = model(input_ids=r.input_ids, attention_mask=r.attention_mask,
                       position_ids=r.position_ids).logits.double() / 0.7
    top5_mass = logits[:, :-1].softmax(-1).topk(5, dim=-1).values.sum(-1)  # [B, P+T-1]
    expected = torch.zeros_like(ref)
    expected[:, 1:] = -top5_mass.log()
    assert ((r.sampling_logprobs - r.logprobs).double() - expected)[m].abs().max() < 1e-5
    # every sampled token is one of the 5 most likely at its step
    ranks = (logits[:, :-1] > logits[:, :-1].gather(-1, r.input_ids[:, 1:, None])).sum(-1)  # [B, P+T-1]
    assert ranks[m[:, 1:]].max() < 5


@pytest.mark.parametrize("backend", BACKENDS)
def test_top_k_1_equals_greedy(model, backend):
    greedy = generate(model, PROMPTS, max_new_tokens=10, temperature=0.0, stop_token_ids=[5], pad_token_id=PAD,
                      backend=backend)
    g = torch.Generator().manual_seed(7)
    top1 = generate(model, PROMPTS, max_new_tokens=10, temperature=1.0, top_k=1, stop_token_ids=[5],
                    pad_token_id=PAD, generator=g, backend=backend)
    assert torch.equal(top1.input_ids, greedy.input_ids)
    assert top1.sampling_logprobs.eq(0).all()  # one kept token: probability 1
    assert (top1.logprobs - greedy.logprobs).abs().max() < 1e-6  # both log softmax(z) at temperature 1


def test_backends_agree_in_float64():
    """In float64 the native decoder and the HF forward differ only by summation order."""
    m = _llama(dtype=torch.float64, seed=2)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = generate(m, PROMPTS, max_new_tokens=10, stop_token_ids=[0, 9], pad_token_id=PAD, generator=g1,
                 backend="native")
    b = generate(m, PROMPTS, max_new_tokens=10, stop_token_ids=[0, 9], pad_token_id=PAD, generator=g2,
                 backend="hf")
    assert torch.equal(a.input_ids, b.input_ids)
    assert a.logprobs.dtype == torch.float64
    print(f"float64 native vs hf: max |diff| {(a.logprobs - b.logprobs).abs().max():.2e}")
    assert (a.logprobs - b.logprobs).abs().max() < 1e-12


def test_static_steps_equal_dynamic_steps_in_float64():
    """The fixed-shape step (whole cache, later slots masked, no compaction) gives the dynamic native
    step's samples and log-probs up to summation order, with rows stopping at different steps."""
    m = _llama(dtype=torch.float64, seed=4)
    out = {}
    for backend in ("native", "static"):
        g = torch.Generator().manual_seed(5)
        out[backend] = generate(m, PROMPTS * 2, max_new_tokens=14, stop_token_ids=[0, 3, 9, 17], pad_token_id=PAD,
                                generator=g, backend=backend)
    a, b = out["native"], out["static"]
    assert a.finished.any() and not a.finished.all()
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.completion_mask, b.completion_mask)
    assert (a.logprobs - b.logprobs).abs().max() < 1e-12


def test_cuda_graph_plumbing_with_a_stand_in_graph(monkeypatch):
    """The CUDA-graph path of the static decoder, run on the CPU with a stand-in graph whose replay re-runs
    the captured step and writes into the captured output tensor (what a real replay does): warm-up
    logits for the first step, then every step only through the input buffers — samples and log-probs equal
    the dynamic decoder's. The real capture needs a GPU (benchmarks/gpu_check.sh)."""
    from contextlib import contextmanager

    from posttrain.rollout import sampler

    capturing, graphs = [], []

    class StandInGraph:
        def replay(self):
            self.out.copy_(self.fn())

    @contextmanager
    def graph(g):
        capturing.append(g)
        yield
        capturing.pop()

    step_fixed, init = sampler._NativeDecoder._step_fixed, sampler._NativeDecoder.__init__

    def recorded(self):
        out = step_fixed(self)
        if capturing:
            capturing[-1].fn, capturing[-1].out = (lambda: step_fixed(self)), out
            graphs.append(capturing[-1])
        return out

    def init_on_gpu(self, *a, **k):
        init(self, *a, **k)
        if self.static:
            self.use_graph = True

    class Stream:
        def wait_stream(self, other):
            pass

    monkeypatch.setattr(sampler._NativeDecoder, "_step_fixed", recorded)
    monkeypatch.setattr(sampler._NativeDecoder, "__init__", init_on_gpu)
    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda: Stream())
    monkeypatch.setattr(torch.cuda, "stream", contextmanager(lambda s: (yield)))
    monkeypatch.setattr(torch.cuda, "CUDAGraph", StandInGraph)
    monkeypatch.setattr(torch.cuda, "graph", graph)
    m = _llama(dtype=torch.float64, seed=6)
    out = {}
    for backend in ("native", "static"):
        g = torch.Generator().manual_seed(8)
        out[backend] = generate(m, PROMPTS, max_new_tokens=10, stop_token_ids=[0, 9], pad_token_id=PAD,
                                generator=g, backend=backend)
    assert len(graphs) == 1  # captured once, replayed for every later step
    a, b = out["native"], out["static"]
    assert torch.equal(a.input_ids, b.input_ids)
    assert (a.logprobs - b.logprobs).abs().max() < 1e-12


def test_static_decoder_refuses_compaction(model):
    from posttrain.rollout.sampler import _NativeDecoder

    dec = _NativeDecoder(model, 4, 16, static=True)
    with pytest.raises(RuntimeError, match="no compaction"):
        dec.select(torch.tensor([0, 1]))


@pytest.mark.parametrize("backend", ["native", "static"])
def test_qwen2_with_biases_and_multi_query(backend):
    """Qwen2 (q/k/v biases) with one KV head: native greedy = HF generate; log-probs = full forward."""
    cfg = Qwen2Config(vocab_size=89, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=64,
                      initializer_range=0.2, pad_token_id=PAD, eos_token_id=0, bos_token_id=None,
                      tie_word_embeddings=True)
    torch.manual_seed(4)
    m = Qwen2ForCausalLM(cfg).eval()
    assert native_supported(m, 64)
    r = generate(m, PROMPTS, max_new_tokens=9, temperature=0.0, stop_token_ids=[], pad_token_id=PAD,
                 backend=backend)
    assert torch.equal(r.input_ids, _hf_greedy(m, r, 9, eos=None))
    g = torch.Generator().manual_seed(5)
    s = generate(m, PROMPTS, max_new_tokens=9, stop_token_ids=[], pad_token_id=PAD, generator=g, backend=backend)
    assert (s.logprobs.double() - _reference_logprobs(m, s))[s.completion_mask].abs().max() < 1e-5


def test_peft_model_uses_hf_backend_and_matches_generate(model):
    from peft import LoraConfig, get_peft_model

    base = _llama(seed=6)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                 init_lora_weights=False))
    assert not native_supported(peft_model, 64)
    with pytest.raises(ValueError, match="native"):
        generate(peft_model, PROMPTS, max_new_tokens=2, stop_token_ids=[], pad_token_id=PAD, backend="native")
    peft_model.train()  # generate switches to eval for the call and restores the mode
    r = generate(peft_model, PROMPTS, max_new_tokens=8, temperature=0.0, stop_token_ids=[], pad_token_id=PAD)
    assert peft_model.training
    peft_model.eval()
    assert torch.equal(r.input_ids, _hf_greedy(peft_model, r, 8, eos=None))


def test_sliding_window_shorter_than_sequence_falls_back():
    cfg = Qwen2Config(vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, use_sliding_window=True, sliding_window=8,
                      max_window_layers=0, max_position_embeddings=64)
    m = Qwen2ForCausalLM(cfg)
    assert not native_supported(m, 20)


def test_stop_at_eos(model):
    """Row 0's greedy token at step 3 is made the eos: that row has exactly 4 completion tokens (the eos
    included), then padding with mask 0; the other rows run on."""
    free = generate(model, PROMPTS, max_new_tokens=10, temperature=0.0, stop_token_ids=[], pad_token_id=PAD)
    P = free.prompt_len
    row0 = free.input_ids[0, P:].tolist()
    eos = row0[3]
    first = row0.index(eos)  # 3 unless the same token occurred before
    r = generate(model, PROMPTS, max_new_tokens=10, temperature=0.0, stop_token_ids=[eos], pad_token_id=PAD)
    assert r.completion_ids[0] == row0[:first + 1] and r.completion_ids[0][-1] == eos
    assert bool(r.finished[0]) and int(r.completion_lengths[0]) == first + 1
    assert r.completion_mask[0, P:].tolist() == [True] * (first + 1) + [False] * (r.completion_len - first - 1)
    assert r.input_ids[0, P + first + 1:].eq(PAD).all()
    assert r.logprobs[0, P + first] < 0 and r.logprobs[0, P + first + 1:].eq(0).all()
    _check_layout(r, {eos})


def test_early_exit_when_all_rows_stop(model):
    """Every row stops at its first token when all tokens are stop tokens: T = 1 however large max_new."""
    r = generate(model, PROMPTS, max_new_tokens=50, stop_token_ids=range(97), pad_token_id=PAD,
                 generator=torch.Generator().manual_seed(0))
    assert r.completion_len == 1 and r.finished.all() and r.completion_lengths.tolist() == [1] * 6


def test_stop_strings(tok_model, tokenizer):
    """The stop string is the text of completion tokens 2..3 of row 0: generation of that row stops at the
    token that completes it (the string is in the decoded completion, but not without its last token)."""
    prompts = [tokenizer.encode(t) for t in ["The river starts", "Numbers help us", "A good question"]]
    free = generate(tok_model, prompts, max_new_tokens=12, temperature=0.0, stop_token_ids=[],
                    pad_token_id=tokenizer.pad_token_id, tokenizer=tokenizer)
    row0 = free.completion_ids[0]
    stop = tokenizer.decode(row0[2:4])
    assert stop.strip(), stop
    r = generate(tok_model, prompts, max_new_tokens=12, temperature=0.0, stop_token_ids=[],
                 pad_token_id=tokenizer.pad_token_id, stop_strings=[stop], tokenizer=tokenizer)
    ids = r.completion_ids[0]
    assert bool(r.finished[0]) and len(ids) <= 4
    assert stop in tokenizer.decode(ids) and stop not in tokenizer.decode(ids[:-1])
    assert ids == row0[:len(ids)]
    assert r.completion_texts[0] == tokenizer.decode(ids, skip_special_tokens=True)
    for i in (1, 2):  # rows without the string run to max_new_tokens
        text = tokenizer.decode(free.completion_ids[i])
        if stop not in text:
            assert r.completion_ids[i] == free.completion_ids[i] and not r.finished[i]
    with pytest.raises(ValueError, match="tokenizer"):
        generate(tok_model, prompts, max_new_tokens=2, stop_token_ids=[], pad_token_id=0, stop_strings=["x"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_seeded_generator_is_reproducible(model, backend):
    kw = dict(max_new_tokens=12, temperature=1.0, top_p=0.9, stop_token_ids=[0, 3], pad_token_id=PAD,
              backend=backend)
    a = generate(model, PROMPTS, generator=torch.Generator().manual_seed(11), **kw)
    b = generate(model, PROMPTS, generator=torch.Generator().manual_seed(11), **kw)
    c = generate(model, PROMPTS, generator=torch.Generator().manual_seed(12), **kw)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.logprobs, b.logprobs)
    assert not torch.equal(a.input_ids, c.input_ids)


def test_sample_n_groups_rows_contiguously(model):
    r = sample_n(model, PROMPTS[:2], 3, max_new_tokens=6, stop_token_ids=[], pad_token_id=PAD,
                 generator=torch.Generator().manual_seed(0))
    assert r.group_size == 3 and r.batch_size == 6
    assert r.prompt_index.tolist() == [0, 0, 0, 1, 1, 1]
    P = r.prompt_len
    for i in range(6):
        prompt = PROMPTS[i // 3]
        assert r.input_ids[i, P - len(prompt):P].tolist() == prompt
    assert len({tuple(r.completion_ids[i]) for i in range(3)}) > 1  # independent samples per group


@pytest.mark.parametrize("backend", BACKENDS)
def test_sample_n_prefills_each_prompt_once(backend, monkeypatch):
    """``sample_n`` prefills one row per prompt and repeats its KV cache for the group: same samples and
    log-probs (float64, summation order only) as ``generate`` on the repeated prompts, which prefills every row."""
    from posttrain.rollout import sampler

    prefill_rows = []
    for cls in (sampler._NativeDecoder, sampler._HFDecoder):
        original = cls.prefill
        monkeypatch.setattr(cls, "prefill", lambda self, ids, *a, _o=original: (prefill_rows.append(ids.shape[0]),
                                                                                _o(self, ids, *a))[1])
    m = _llama(dtype=torch.float64, seed=6)
    kw = dict(max_new_tokens=9, stop_token_ids=[0, 9], pad_token_id=PAD, backend=backend)
    shared = sample_n(m, PROMPTS, 3, generator=torch.Generator().manual_seed(8), **kw)
    full = generate(m, [p for p in PROMPTS for _ in range(3)], generator=torch.Generator().manual_seed(8), **kw)
    assert prefill_rows == [len(PROMPTS), 3 * len(PROMPTS)]
    assert shared.finished.any() and not shared.finished.all()  # rows stop at different steps
    assert torch.equal(shared.input_ids, full.input_ids) and torch.equal(shared.completion_mask, full.completion_mask)
    assert (shared.logprobs - full.logprobs).abs().max() < 1e-12
    assert (shared.logprobs - _reference_logprobs(m, shared)).abs().max() < 1e-12


def test_max_new_tokens_zero_and_argument_checks(model):
    r = generate(model, PROMPTS, max_new_tokens=0, stop_token_ids=[], pad_token_id=PAD)
    assert r.completion_len == 0 and r.num_generated_tokens == 0 and r.completion_ids == [[]] * 6
    for bad in (dict(temperature=-1.0), dict(top_p=0.0), dict(top_k=-1), dict(backend="vllm")):
        with pytest.raises(ValueError):
            generate(model, PROMPTS, max_new_tokens=2, stop_token_ids=[], pad_token_id=PAD, **bad)
    with pytest.raises(ValueError, match="at least one token"):
        generate(model, [[1, 2], []], max_new_tokens=2, stop_token_ids=[], pad_token_id=PAD)


# ----------------------------------------------------------------------------------------------------
# the sampling distribution, by hand


def test_top_k_and_top_p_filters_by_hand():
    """p = [0.5, 0.3, 0.15, 0.05].
    top_p = 0.75: the mass strictly above each token is 0, 0.5, 0.8, 0.95 -> keep the first two (the
    smallest set whose mass reaches 0.75); renormalised 0.625 / 0.375.
    top_k = 3 then top_p = 0.9: renormalised over 0.95 -> 0.5263, 0.3158, 0.1579; mass above: 0, 0.526,
    0.842 (< 0.9) -> all three kept."""
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]], dtype=torch.float64).log()
    kept = _filter_logits(logits, 0, 0.75).softmax(-1)
    assert torch.allclose(kept, torch.tensor([[0.625, 0.375, 0.0, 0.0]], dtype=torch.float64), rtol=0, atol=1e-12)
    kept = _filter_logits(logits, 3, 0.9).softmax(-1)
    assert torch.allclose(kept, torch.tensor([[0.5, 0.3, 0.15, 0.0]], dtype=torch.float64) / 0.95, atol=1e-12)
    kept = _filter_logits(logits, 1, 1.0).softmax(-1)
    assert kept.tolist() == [[1.0, 0.0, 0.0, 0.0]]
    # the most likely token survives any top_p
    assert _filter_logits(logits, 0, 1e-9).softmax(-1).tolist() == [[1.0, 0.0, 0.0, 0.0]]


def test_sampler_frequencies_and_logprobs():
    """40 000 draws (seeded) from p = [0.5, 0.3, 0.15, 0.05]: frequencies within 4 standard errors
    (sqrt(p(1-p)/n) <= 0.0025); with top_p = 0.75 tokens 2 and 3 never appear and the kept two follow
    0.625 / 0.375; recorded log-probs are log p (unfiltered) and log of the renormalised p (filtered)."""
    n = 40_000
    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = p.log().expand(n, 4).contiguous()
    g = torch.Generator().manual_seed(0)
    tok, lp, slp = _sample(logits, 1.0, 0, 1.0, g)
    freq = torch.bincount(tok, minlength=4).double() / n
    assert (freq - p.double()).abs().max() < 4 * math.sqrt(0.25 / n)
    assert torch.allclose(lp, p.log()[tok], atol=1e-6) and torch.equal(lp, slp)
    tok, lp, slp = _sample(logits, 1.0, 0, 0.75, g)
    freq = torch.bincount(tok, minlength=4).double() / n
    assert freq[2] == 0 and freq[3] == 0
    assert abs(freq[0] - 0.625) < 4 * math.sqrt(0.625 * 0.375 / n)
    assert torch.allclose(lp, p.log()[tok], atol=1e-6)
    assert torch.allclose(slp, torch.tensor([0.625, 0.375, 1.0, 1.0]).log()[tok], atol=1e-6)
    # temperature 2 on logits log p: sampling from p^(1/2) / Z
    tok, lp, _ = _sample(logits, 2.0, 0, 1.0, g)
    q = p.sqrt() / p.sqrt().sum()
    freq = torch.bincount(tok, minlength=4).double() / n
    assert (freq - q.double()).abs().max() < 4 * math.sqrt(0.25 / n)
    assert torch.allclose(lp, q.log()[tok], atol=1e-6)


def test_rollout_tensors_work_in_autograd(model):
    """The sampler runs in inference mode, but a training step must be able to use its tensors (embedding
    indices and masks are saved for backward); under the caller's own inference_mode they stay inference
    tensors (no copy)."""
    r = generate(model, PROMPTS, max_new_tokens=4, stop_token_ids=[], pad_token_id=PAD,
                 generator=torch.Generator().manual_seed(0))
    assert not any(t.is_inference() for t in (r.input_ids, r.attention_mask, r.completion_mask, r.logprobs))
    out = model(input_ids=r.input_ids, attention_mask=r.attention_mask, position_ids=r.position_ids).logits
    lp = out[:, :-1].log_softmax(-1).gather(-1, r.input_ids[:, 1:, None]).squeeze(-1)
    ratio = (lp - r.logprobs[:, 1:]).exp()
    (ratio * r.completion_mask[:, 1:]).sum().backward()
    assert model.lm_head.weight.grad is not None and model.lm_head.weight.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)
    with torch.inference_mode():
        r2 = generate(model, PROMPTS, max_new_tokens=2, stop_token_ids=[], pad_token_id=PAD)
    assert r2.input_ids.is_inference()
