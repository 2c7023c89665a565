"""SFT's measurable effect on the toy world (slow: builds/reuses the world, then ~1-2 min of SFT on 2 cores).

The world's base model was only pretrained: asked a factual question it continues / rambles and answers
(gold helpfulness) in well under 20% of the eval prompts. After SFT on the world's instruction data it
answers >= 80% of the factual prompts whose facts the instruction data covers (``seen``). Elicitation: the
``unseen`` facts are stated only in pretraining prose; SFT never shows their answers, yet the SFT model
answers those questions correctly far more often than the base model: SFT teaches the answer *format* and
elicits knowledge planted in pretraining.

Measured (world content hash d521375447c4, 300 steps × 16, lr 2e-3, 24 s on 2 cores; 4 samples per prompt at
T = 1): helpful on seen facts 0.07 -> 0.97, on unseen facts 0.04 -> 0.73; unseen facts answered correctly
0.04 -> 0.47.

Sampling at temperature 1 (4 samples per prompt; under greedy decoding the base model, pretrained with
document-start positions, states the asked fact in ~60% of seen-fact prompts), the world's eval prompt sets (``posttrain.world.evaluate.eval_prompts``) and gold judges
(``posttrain.world.gold``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SFT_STEPS, SFT_LR, SFT_BATCH = 300, 2e-3, 16
SAMPLES = 4  # samples per prompt, temperature 1 (the "in under 20% of samples")


def _respond(model_dir: Path, prompts: list) -> list[str]:
    from posttrain.config import GenerationConfig
    from posttrain.models.load import load_causal_lm
    from posttrain.stages.common import generate_samples

    model, tok = load_causal_lm(str(model_dir), device="cpu", dtype="fp32")
    rows = generate_samples(model, tok, prompts, GenerationConfig(max_new_tokens=40, temperature=1.0),
                            max_prompt_len=64, seed=0, step=0, batch_size=64)
    return [r["completion"] for r in rows]


def _rates(model_dir: Path, prompts: list) -> tuple[float, float]:
    from posttrain.world.gold import is_correct_fact, is_helpful

    prompts = [p for p in prompts for _ in range(SAMPLES)]
    responses = _respond(model_dir, prompts)
    helpful = sum(is_helpful(p, r) for p, r in zip(prompts, responses)) / len(prompts)
    correct = sum(is_correct_fact(p, r) for p, r in zip(prompts, responses)) / len(prompts)
    return helpful, correct


@pytest.mark.slow
def test_sft_teaches_answering_and_elicits_pretraining_knowledge(tmp_path):
    from posttrain.config import DataConfig, SFTConfig
    from posttrain.stages.sft import run
    from posttrain.world.build import build_world
    from posttrain.world.evaluate import eval_prompts

    world = build_world(os.environ.get("POSTTRAIN_WORLD"))
    seen, unseen = eval_prompts(world.root, "fact_seen"), eval_prompts(world.root, "fact_unseen")
    base_seen, _ = _rates(world.base_model, seen)
    base_unseen_help, base_unseen = _rates(world.base_model, unseen)

    summary = run(SFTConfig(model=str(world.base_model),
                            data=DataConfig(train=str(world.sft_train), eval=str(world.sft_eval), max_len=96,
                                            max_prompt_len=48),
                            output_dir=str(tmp_path / "sft"), max_steps=SFT_STEPS, lr=SFT_LR,
                            batch_size=SFT_BATCH, warmup_steps=10, min_lr_ratio=0.1, progress=False,
                            sample_prompts=4))
    model_dir = Path(summary["model_dir"])
    sft_seen, _ = _rates(model_dir, seen)
    sft_unseen_help, sft_unseen = _rates(model_dir, unseen)
    print(f"helpful on factual prompts: base {base_seen:.2f} -> sft {sft_seen:.2f} (seen facts), "
          f"{base_unseen_help:.2f} -> {sft_unseen_help:.2f} (unseen); unseen facts answered correctly: "
          f"base {base_unseen:.2f} -> sft {sft_unseen:.2f}; eval loss {summary['eval']['loss']:.3f}; "
          f"SFT {summary['train_time_s']:.0f}s")
    assert (base_seen + base_unseen_help) / 2 < 0.2
    assert sft_seen >= 0.8
    assert sft_unseen >= base_unseen + 0.15  # elicitation: these answers are never shown in the SFT data
