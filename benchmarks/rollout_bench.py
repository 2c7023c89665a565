"""Tokens/s of ``posttrain.rollout.generate`` vs Hugging Face ``model.generate`` on the same model and batch.

Sampling (temperature 1, no top-k / top-p), fp32, random prompts of ``--prompt-len`` tokens, no stop tokens
(both sides generate exactly ``new`` tokens per row, so the work is identical). Models are random-init
Llama-shaped presets: ``tiny`` (~0.26M params) and ``small`` (~4.7M) — the shapes of
``posttrain.models.presets`` with a 512-token vocabulary. Each cell is the best of ``--repeats`` runs after a
warm-up, the two sides interleaved, so both see the same background load.

    python benchmarks/rollout_bench.py                       # CPU, batch 8/32, 32/64 new tokens
    python benchmarks/rollout_bench.py --device cuda --models tiny,small,qwen2-0.5b
    # issue 9's GPU target (H200: 0.39B Qwen2 shape, batch 64, 128 prompt + 128 new tokens, bf16); the
    # static backend captures each decode step as a CUDA graph; --check-logprobs reports the sampling
    # log-probs' max / mean |diff| against one full forward of the policy:
    python benchmarks/rollout_bench.py --device cuda --dtype bf16 --models qwen2-0.5b --batch 64 \
        --prompt-len 128 --new 128 --backend static --check-logprobs

Measured (2-core CPU, fp32, torch 2.13, transformers 5.24, quiet machine; tok/s = generated tokens / wall):

    model   batch new  posttrain      HF  ratio
    tiny        8  32     14,490   6,309  2.30x
    tiny        8  64     15,532   6,439  2.41x
    tiny       32  32     30,646  16,162  1.90x
    tiny       32  64     31,615  15,613  2.02x
    small       8  32      3,355   2,492  1.35x
    small       8  64      3,951   2,471  1.60x
    small      32  32      5,754   4,446  1.29x
    small      32  64      6,118   4,289  1.43x

The tiny model is bound by per-token overhead (where the native decoder wins most); the small one at batch 32
is bound by matmul FLOPs and by the 32-token prefill, which both sides compute the same way.
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from posttrain.models.logprobs import sequence_logprobs
from posttrain.rollout.sampler import BACKENDS, generate, native_supported

SHAPES = {  # name -> (config class, model class, kwargs); mirrors posttrain.models.presets
    "tiny": (LlamaConfig, LlamaForCausalLM, dict(vocab_size=512, hidden_size=64, num_hidden_layers=3,
                                                 num_attention_heads=4, num_key_value_heads=4,
                                                 intermediate_size=256, tie_word_embeddings=False)),
    "small": (LlamaConfig, LlamaForCausalLM, dict(vocab_size=512, hidden_size=256, num_hidden_layers=6,
                                                  num_attention_heads=8, num_key_value_heads=4,
                                                  intermediate_size=704, tie_word_embeddings=False)),
    "qwen2-0.5b": (Qwen2Config, Qwen2ForCausalLM, dict(vocab_size=32000, hidden_size=896, num_hidden_layers=24,
                                                       num_attention_heads=14, num_key_value_heads=2,
                                                       intermediate_size=4864, tie_word_embeddings=True)),
}


def build(name: str, device: str, dtype: torch.dtype):
    cfg_cls, model_cls, kw = SHAPES[name]
    cfg = cfg_cls(**kw, max_position_embeddings=1024, pad_token_id=0, eos_token_id=1, bos_token_id=None)
    torch.manual_seed(0)
    model = model_cls(cfg).to(device=device, dtype=dtype).eval()
    return model


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_pair(fn_a, fn_b, repeats: int, device: str) -> tuple[float, float]:
    """Best wall time of each of two functions, runs interleaved (a, b, a, b, ...) after one warm-up each, so
    both see the same background load."""
    fn_a(), fn_b()
    best = [float("inf"), float("inf")]
    for _ in range(repeats):
        for k, fn in enumerate((fn_a, fn_b)):
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            best[k] = min(best[k], time.perf_counter() - t0)
    return best[0], best[1]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--models", default="tiny,small")
    ap.add_argument("--batch", default="8,32")
    ap.add_argument("--new", default="32,64")
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave as is)")
    ap.add_argument("--backend", default="auto", choices=BACKENDS, help="posttrain sampler backend")
    ap.add_argument("--check-logprobs", action="store_true",
                    help="also report the sampling log-probs' |diff| vs one full forward of the model")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = torch.float32 if args.dtype == "fp32" else torch.bfloat16
    print(f"device={args.device} dtype={args.dtype} threads={torch.get_num_threads()} "
          f"prompt_len={args.prompt_len} sampling T=1, best of {args.repeats}")
    header = f"{'model':<11} {'params':>7} {'batch':>5} {'new':>4} {'backend':>7} " \
             f"{'posttrain tok/s':>15} {'HF tok/s':>9} {'ratio':>6}"
    print(header)
    print("-" * len(header))
    for name in args.models.split(","):
        model = build(name, args.device, dtype)
        n_params = sum(p.numel() for p in model.parameters())
        for B in [int(b) for b in args.batch.split(",")]:
            g = torch.Generator(device=args.device).manual_seed(0)
            prompts = torch.randint(2, model.config.vocab_size, (B, args.prompt_len), generator=g,
                                    device=args.device)
            prompt_lists = prompts.tolist()
            mask = torch.ones_like(prompts)
            for new in [int(n) for n in args.new.split(",")]:
                backend = args.backend if args.backend != "auto" else (
                    "native" if native_supported(model, args.prompt_len + new) else "hf")

                def ours():
                    r = generate(model, prompt_lists, max_new_tokens=new, temperature=1.0,
                                 stop_token_ids=[], pad_token_id=0, generator=g, backend=backend)
                    assert r.num_generated_tokens == B * new
                    return r

                def hf():
                    with torch.inference_mode():
                        out = model.generate(prompts, attention_mask=mask, do_sample=True, temperature=1.0,
                                             top_k=0, top_p=1.0, max_new_tokens=new, min_new_tokens=new,
                                             pad_token_id=0, eos_token_id=None)
                    assert out.shape == (B, args.prompt_len + new)

                t_ours, t_hf = time_pair(ours, hf, args.repeats, args.device)
                tps_ours, tps_hf = B * new / t_ours, B * new / t_hf
                print(f"{name:<11} {n_params / 1e6:>6.2f}M {B:>5} {new:>4} {backend:>7} "
                      f"{tps_ours:>15,.0f} {tps_hf:>9,.0f} {tps_ours / tps_hf:>5.2f}x", flush=True)
                if args.check_logprobs:
                    r = ours()
                    with torch.inference_mode():
                        full = sequence_logprobs(model, r.input_ids, r.attention_mask,
                                                 position_ids=r.position_ids)["logprobs"]
                    diff = (full.float() - r.logprobs.float())[r.completion_mask].abs()
                    print(f"    sampling log-probs vs full forward ({args.dtype}): max |diff| {diff.max():.3e}, "
                          f"mean {diff.mean():.3e} over {diff.numel()} tokens", flush=True)


if __name__ == "__main__":
    main()
