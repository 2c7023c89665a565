"""LM head only where the loss looks: ``python benchmarks/head_bench.py [--vocab 512 32000] [--rounds 3]``.

posttrain computes logits only from the last prompt position on (``posttrain.models.logprobs.model_logits``,
HF's ``logits_to_keep``): a loss over completions never reads the logits of earlier prompt positions. This
times one SFT forward + backward (the code of ``posttrain.stages.sft.sft_loss_fn``) of the ``small`` preset's body with a
vocabulary of each given size, batch 8 × (32 prompt + 32 completion tokens), fp32, with the head on every
position (``from_position=1``, what a plain ``model(...)`` call does) and on the completion span (the
default), alternately in one process; best of ``--rounds`` medians. The head's share of the FLOPs grows with
the vocabulary (256 × V weights against the body's 4.4M), as in real small models (Qwen2.5-0.5B: 136M of
its 494M parameters are the tied embedding).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def _model(vocab: int):
    from transformers import AutoModelForCausalLM

    from posttrain.models.presets import default_tokenizer, preset_config

    cfg = preset_config("small", default_tokenizer())
    cfg.vocab_size = vocab
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg).float()


def _batch(vocab: int, B: int = 8, P: int = 32, C: int = 32) -> dict:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, min(vocab, 512), (B, P + C), generator=g)
    loss_mask = torch.zeros(B, P + C)
    loss_mask[:, P:] = 1
    return {"input_ids": ids, "attention_mask": torch.ones(B, P + C, dtype=torch.long), "loss_mask": loss_mask}


def _step_ms(model, batch, steps: int, whole: bool) -> float:
    """Median ms of the SFT loss's forward + backward (the code of ``sft_loss_fn``, with ``from_position``
    1 for the head on every position, or the loss mask's first target as posttrain does)."""
    from posttrain.losses.sft import sft_loss
    from posttrain.models.logprobs import first_target, sequence_logprobs

    mask = batch["loss_mask"]
    start = 1 if whole else first_target(mask)
    times = []
    for _ in range(steps):
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        lp = sequence_logprobs(model, batch["input_ids"], batch["attention_mask"], from_position=start)
        loss, _ = sft_loss(lp["logprobs"], mask, normaliser=float(mask.sum()))
        loss.backward()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times[2:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vocab", type=int, nargs="+", default=[512, 32000])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=12)
    args = ap.parse_args()
    print(f"small preset body, batch 8 x (32 + 32) tokens, fp32, {torch.get_num_threads()} threads; "
          f"SFT forward+backward ms/step (best of {args.rounds} medians)")
    print("| vocabulary | head on every position | head from the last prompt position | speed-up |")
    print("|---|---|---|---|")
    for V in args.vocab:
        model, batch = _model(V), _batch(V)
        whole, span = [], []
        for _ in range(args.rounds):
            whole.append(_step_ms(model, batch, args.steps, whole=True))
            span.append(_step_ms(model, batch, args.steps, whole=False))
        print(f"| {V} | {min(whole):.1f} | {min(span):.1f} | {min(whole) / min(span):.2f}x |", flush=True)


if __name__ == "__main__":
    main()
